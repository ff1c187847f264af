// User names fold as the server folds them (Python's str.casefold), not as toLocaleLowerCase would.
import assert from "node:assert/strict";
import { test } from "node:test";

import { UNICODE_VERSION } from "../casefold.js";
import { foldUserName, normalizeUserName } from "../presence.js";

test("full case folding: the cases where lower-casing differs", () => {
  const cases = [
    ["Straße", "strasse"], // ß folds to ss; toLowerCase keeps ß
    ["STRAẞE", "strasse"], // capital sharp s
    ["ΟΔΥΣΣΕΥΣ", "οδυσσευσ"], // final sigma: toLowerCase gives ς at the end
    ["οδυσσευς", "οδυσσευσ"],
    ["ﬁle", "file"], // a ligature unfolds
    ["İstanbul", "i\u0307stanbul"], // dotted capital I: i and a combining dot, whatever the locale
    ["ıi", "ıi"], // dotless i stays itself (no Turkish tailoring on the server either)
    ["ꭰꮿ", "ᎠᏯ"], // Cherokee small letters fold to the capitals
    ["ǅ", "ǆ"], // a title-case digraph
  ];
  for (const [name, folded] of cases) assert.equal(foldUserName(name), folded, name);
  assert.notEqual("Straße".toLowerCase(), foldUserName("Straße"));
});

test("names are NFC-normalised and stripped as Python strips them", () => {
  assert.equal(foldUserName("Cafe\u0301"), "café");
  assert.equal(normalizeUserName(" \u001f ada \u3000"), "ada"); // Python strips U+001F, JavaScript's trim does not
  assert.equal(normalizeUserName("\ufeffada"), "\ufeffada"); // and keeps U+FEFF, which trim would strip
});

test("bad names throw", () => {
  assert.throws(() => foldUserName(3), TypeError);
  assert.throws(() => foldUserName("   "), RangeError);
  assert.throws(() => foldUserName("a\ud800"), RangeError);
  assert.throws(() => foldUserName("x".repeat(257)), RangeError);
  assert.equal(foldUserName("😀".repeat(256)), "😀".repeat(256)); // characters, not UTF-16 units
});

test("the folding data names its Unicode version", () => {
  assert.match(UNICODE_VERSION, /^\d+\.\d+\.\d+$/);
});
