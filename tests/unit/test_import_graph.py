"""The import graph of mapping/: sub-packages without circles, each importing only what its docstring allows, one
alone importing Azure Functions and one alone the storage SDKs; prints the module count and the import floors."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

MAPPING = Path(__file__).resolve().parents[2] / "mapping"
SUB_PACKAGES = sorted(path.parent.name for path in MAPPING.glob("*/__init__.py"))
FACES = {"registration", "blueprint"}  # public import paths kept over mapping.functions
STORAGE_SDKS = ("azure.data.tables", "azure.storage.queue", "azure.core.exceptions")
FLOORS_BEFORE = 17  # the floors of mapping/'s 44 flat modules before the sub-packages (issue 29)


def _modules() -> dict[str, Path]:
    """Every module of mapping/ by dotted name, the package faces (`__init__.py`) aside."""
    return {
        ".".join(("mapping", *path.relative_to(MAPPING).with_suffix("").parts)): path
        for path in sorted(MAPPING.rglob("*.py"))
        if path.name != "__init__.py"
    }


def _imported(path: Path) -> Iterator[str]:
    """The modules a file imports, TYPE_CHECKING imports included (a `from package import module` names the module)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@cache
def _graph() -> dict[str, set[str]]:
    """Each mapping module and the mapping modules it imports."""
    modules = _modules()
    return {name: {dep for dep in _imported(path) if dep in modules and dep != name} for name, path in modules.items()}


def _unit(module: str) -> str:
    """The sub-package a module belongs to, or the top-level module itself."""
    return module.split(".")[1]


def _floors() -> dict[str, int]:
    """Each module's floor: 1 for a module importing no other mapping module, else one above its highest import."""
    graph = _graph()
    floors: dict[str, int] = {}

    def floor(module: str) -> int:
        if module not in floors:
            floors[module] = 0  # a circle would recurse; the circle test names it
            floors[module] = 1 + max((floor(dep) for dep in graph[module]), default=0)
        return floors[module]

    for module in graph:
        floor(module)
    return floors


def _allowed(sub_package: str) -> set[str]:
    """What a sub-package's docstring says it may import (`May import: a, b, ...`; `everything` for all)."""
    docstring = ast.get_docstring(ast.parse((MAPPING / sub_package / "__init__.py").read_text(encoding="utf-8"))) or ""
    match = re.search(r"May import:? ([^.]+)\.", " ".join(docstring.split()))
    assert match, f"mapping/{sub_package}/__init__.py says what it may import"
    if "everything" in match.group(1):
        return {_unit(module) for module in _graph()}
    return {word for word in re.findall(r"[a-z_]+", match.group(1)) if word not in {"and", "the"}}


def test_the_mapping_package_has_sub_packages_by_concept() -> None:
    """mapping/ holds the five sub-packages of the house (functions, signalr, storage, presence, rooms)."""
    assert SUB_PACKAGES == ["functions", "presence", "rooms", "signalr", "storage"]


def test_no_circle_between_sub_packages_or_top_level_modules() -> None:
    """The graph of sub-packages and top-level modules (their modules' imports merged) has no circle."""
    units: dict[str, set[str]] = {}
    for module, deps in _graph().items():
        units.setdefault(_unit(module), set()).update(_unit(dep) for dep in deps if _unit(dep) != _unit(module))
    done: set[str] = set()

    def visit(unit: str, path: tuple[str, ...]) -> None:
        assert unit not in path, f"an import circle: {' -> '.join((*path, unit))}"
        if unit in done:
            return
        for dep in sorted(units[unit]):
            visit(dep, (*path, unit))
        done.add(unit)

    for unit in sorted(units):
        visit(unit, ())


@pytest.mark.parametrize("sub_package", SUB_PACKAGES)
def test_a_sub_package_imports_only_what_its_docstring_allows(sub_package: str) -> None:
    """Each sub-package's modules import only the packages and modules its `__init__` docstring names."""
    allowed = _allowed(sub_package) | {sub_package}
    used = {_unit(dep) for module, deps in _graph().items() if _unit(module) == sub_package for dep in deps}
    assert used - allowed == set()


@pytest.mark.parametrize(
    ("owner", "prefixes"),
    [("functions", ("azure.functions",)), ("storage", STORAGE_SDKS)],
    ids=["functions", "storage"],
)
def test_one_sub_package_alone_imports_an_sdk(owner: str, prefixes: tuple[str, ...]) -> None:
    """Azure Functions is imported by mapping/functions alone, the storage SDKs by mapping/storage alone."""
    importers = {
        _unit(module)
        for module, path in _modules().items()
        if any(name == prefix or name.startswith(prefix + ".") for name in _imported(path) for prefix in prefixes)
    }
    assert importers == {owner}


def test_the_floors_go_down(capsys: pytest.CaptureFixture[str]) -> None:
    """The modules stand on fewer import floors than the flat package's 17; the count and floors are printed."""
    floors = _floors()
    assert all(floor > 0 for floor in floors.values())
    by_floor: dict[int, list[str]] = {}
    for module, floor in floors.items():
        by_floor.setdefault(floor, []).append(module.removeprefix("mapping."))
    with capsys.disabled():
        print(f"\nmapping/: {len(floors)} modules on {max(floors.values())} import floors")
        for floor in sorted(by_floor, reverse=True):
            print(f"  floor {floor:2}: {', '.join(sorted(by_floor[floor]))}")
    assert max(floors.values()) < FLOORS_BEFORE


def test_the_faces_only_hand_names_on() -> None:
    """mapping.registration and mapping.blueprint import from mapping.functions and define nothing of their own."""
    for face in FACES:
        tree = ast.parse((MAPPING / f"{face}.py").read_text(encoding="utf-8"))
        kinds = {type(node).__name__ for node in tree.body} - {"Expr", "ImportFrom", "Assign"}
        assert kinds == set()
        assert _graph()[f"mapping.{face}"] <= {f"mapping.functions.{face}"}
