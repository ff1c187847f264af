// The TypeScript declarations (presence.d.ts) compile against the real @microsoft/signalr types, strictly.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const tsc = path.resolve(here, "..", "..", "node_modules", "typescript", "bin", "tsc");
const options = ["--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--skipLibCheck"];

function compile(file) {
  return spawnSync(process.execPath, [tsc, ...options, path.join(here, "types", file)], { encoding: "utf8" });
}

test("the declarations describe the library as used", () => {
  const result = compile("usage.ts");
  assert.equal(result.status, 0, result.stdout + result.stderr);
});

test("the declarations refuse wrong calls", () => {
  const result = compile("bad.ts");
  assert.notEqual(result.status, 0);
  for (const line of ["bad.ts(6", "bad.ts(7", "bad.ts(8", "bad.ts(9", "bad.ts(10"]) assert.ok(result.stdout.includes(line), result.stdout);
});
