// For tests/infra/test_client_fold.py: print, as JSON, foldUserName("#" + c + "#") for every code point c it changes.
import { foldUserName } from "../fold.js";

const changed = {};
for (let point = 0; point <= 0x10ffff; point += 1) {
  if (point >= 0xd800 && point <= 0xdfff) continue;
  const name = `#${String.fromCodePoint(point)}#`;
  const folded = foldUserName(name);
  if (folded !== name) changed[point] = folded;
}
process.stdout.write(JSON.stringify(changed));
