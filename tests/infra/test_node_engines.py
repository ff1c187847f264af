"""The Node.js the README asks for is the one every pinned npm package (Azurite and its dependencies included) runs on:
`npm ci` warns EBADENGINE for none of them on that version or a later one."""

from __future__ import annotations

import json
import re

import pytest

from testkit.azurite import ROOT

Version = tuple[int, int, int]

_COMPARATOR = re.compile(r"(>=|<=|>|<|=|\^|~)?\s*v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:-[0-9A-Za-z.-]+)?")


def readme_minimum() -> Version:
    """Return the Node.js version the README's quick start asks for (`Node.js 20.6+`)."""
    match = re.search(r"Node\.js (\d+)(?:\.(\d+))?\+", (ROOT / "README.md").read_text())
    assert match, "README.md names no `Node.js <version>+`"
    return int(match[1]), int(match[2] or 0), 0


def _bounds(op: str, parts: list[str | None]) -> list[tuple[str, Version]]:
    """Return one npm comparator (a partial version allowed: `4.x`, `>= 0.8`) as plain comparisons."""
    given = [int(p) for p in parts if p is not None and p not in "xX*"]
    if not given:  # `*`, `x`: any version
        return []
    full = [*given, 0, 0][:3]
    lower: Version = (full[0], full[1], full[2])
    # the first version past a partial one, `^` and `~`
    if op == "^":
        index = next((i for i, n in enumerate(full) if n != 0), len(given) - 1)
        index = min(index, len(given) - 1)
    elif op == "~":
        index = min(1, len(given) - 1)
    else:
        index = len(given) - 1
    bumped = [*full[:index], full[index] + 1, 0, 0][:3]
    upper: Version = (bumped[0], bumped[1], bumped[2])
    exact = len(given) == 3
    if op in ("^", "~") or (op in ("", "=") and not exact):
        return [(">=", lower), ("<", upper)]
    if op in ("", "="):
        return [("=", lower)]
    if op == ">" and not exact:
        return [(">=", upper)]
    if op == "<=" and not exact:
        return [("<", upper)]
    return [(op, lower)]


def satisfies(version: Version, spec: str) -> bool:
    """Return whether `version` satisfies an npm engines range (the forms the lock file uses)."""
    for alternative in spec.split("||"):
        text = alternative.strip()
        if text in ("", "*"):
            return True
        comparisons: list[tuple[str, Version]] = []
        for match in _COMPARATOR.finditer(text):
            comparisons += _bounds(match[1] or "", [match[2], match[3], match[4]])
        checks = {
            ">=": lambda v, b: v >= b,
            "<=": lambda v, b: v <= b,
            ">": lambda v, b: v > b,
            "<": lambda v, b: v < b,
            "=": lambda v, b: v == b,
        }
        if all(checks[op](version, bound) for op, bound in comparisons):
            return True
    return False


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ((20, 6, 0), "^18.19.0 || >=20.6.0", True),
        ((20, 5, 9), "^18.19.0 || >=20.6.0", False),
        ((18, 20, 0), "^18.19.0 || >=20.6.0", True),
        ((20, 20, 2), ">=22.0.0", False),
        ((22, 0, 0), ">= 0.8", True),
        ((20, 6, 0), "4.x || >=6.0.0", True),
        ((4, 9, 0), "4.x || >=6.0.0", True),
        ((5, 0, 0), "4.x || >=6.0.0", False),
        ((20, 6, 0), "<=0.11.8 || >0.11.10", True),
        ((20, 6, 0), ">=9.3.0 || >=8.10.0 <9.0.0", True),
        ((20, 6, 0), "^12.22.0 || ^14.17.0 || >=16.0.0", True),
        ((20, 6, 0), "^4.7 || >=6.9 || >=7.3", True),
        ((20, 6, 0), ">=0.8.x", True),
        ((20, 6, 0), "*", True),
        ((20, 6, 0), ">=0.6.11 <=0.7.0 || >=0.7.3", True),
        ((0, 7, 1), ">=0.6.11 <=0.7.0 || >=0.7.3", False),
    ],
)
def test_engine_ranges_are_read_as_npm_reads_them(version: Version, spec: str, expected: bool) -> None:
    """The range reader knows the forms package-lock.json holds (partial versions, x, ^, ||, spaces after >=)."""
    assert satisfies(version, spec) is expected


def test_package_json_asks_for_the_readme_node() -> None:
    """package.json's engines say what the README says, so `npm ci` on an older Node warns about the project itself."""
    major, minor, patch = readme_minimum()
    engines = json.loads((ROOT / "package.json").read_text())["engines"]
    assert engines == {"node": f">={major}.{minor}.{patch}"}


def test_every_locked_package_runs_on_the_readme_node_and_later() -> None:
    """No package in package-lock.json asks for a newer Node than the README (Azurite 3.36 and later ask for 21 or 22,
    hence the pin on 3.35.0), nor excludes a later major."""
    minimum = readme_minimum()
    lock = json.loads((ROOT / "package-lock.json").read_text())
    refused = {
        f"{path or 'the project'} {entry.get('version', '')}: {engines['node']} on {'.'.join(map(str, version))}"
        for path, entry in lock["packages"].items()
        if isinstance(engines := entry.get("engines"), dict) and "node" in engines
        for version in (minimum, (minimum[0], 99, 0), (22, 0, 0), (24, 0, 0))
        if version >= minimum and not satisfies(version, engines["node"])
    }
    assert not refused, sorted(refused)
