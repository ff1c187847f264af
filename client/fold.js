// User names as the server compares them: NFC, stripped, casefolded, NFC again (mapping/keys.py: user_key).
import { FOLD_LONGER, FOLD_RUNS, SPACES } from "./casefold.js";

const folds = new Map();
for (const [first, last, step, delta] of FOLD_RUNS) {
  for (let point = first; point <= last; point += step) folds.set(point, String.fromCodePoint(point + delta));
}
for (const [point, text] of FOLD_LONGER) folds.set(point, text);
const spaces = new Set(SPACES);

export const MAX_NAME_LENGTH = 256;
const LONE_SURROGATE = /[\uD800-\uDFFF]/u; // with the u flag, only a surrogate outside a pair matches

/** Strip what Python's str.strip strips (not String.prototype.trim's set: it keeps U+FEFF, strips U+001C-U+001F). */
function strip(text) {
  const points = [...text];
  let start = 0;
  let end = points.length;
  while (start < end && spaces.has(points[start].codePointAt(0))) start += 1;
  while (end > start && spaces.has(points[end - 1].codePointAt(0))) end -= 1;
  return points.slice(start, end).join("");
}

/** Return the name as the server stores it for display (NFC, stripped), or throw a TypeError or RangeError. */
export function normalizeUserName(name, what = "user name") {
  if (typeof name !== "string") throw new TypeError(`${what} must be a string`);
  if (LONE_SURROGATE.test(name)) throw new RangeError(`${what} is not valid Unicode (a lone surrogate)`);
  const normalized = strip(name.normalize("NFC"));
  if (!normalized) throw new RangeError(`${what} must not be empty`);
  if ([...normalized].length > MAX_NAME_LENGTH) {
    throw new RangeError(`${what} must be at most ${MAX_NAME_LENGTH} characters`);
  }
  return normalized;
}

/** Return the key two names share exactly when the server takes them for one user (Python's casefold). */
export function foldUserName(name) {
  let folded = "";
  for (const char of normalizeUserName(name)) folded += folds.get(char.codePointAt(0)) ?? char;
  return folded.normalize("NFC");
}
