"""The README and docs/ as a guide: every package has its row, every module its line, every link and anchor resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testkit.azurite import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```.*?```", re.S)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lowercase, no punctuation, hyphens for spaces, repeats numbered."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _subpackages() -> list[Path]:
    """The sub-packages of mapping/: its folders with an `__init__.py`."""
    return sorted(path.parent for path in (ROOT / "mapping").glob("*/__init__.py"))


def test_every_package_and_top_level_module_has_a_row_in_the_architecture_table() -> None:
    """Each sub-package of mapping/, and each top-level module but `__init__`, is named in the README's table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Architecture") :].split("\n## ", 1)[0]
    names = [f"mapping/{package.name}/" for package in _subpackages()]
    names += [f"mapping/{path.name}" for path in sorted((ROOT / "mapping").glob("*.py")) if path.name != "__init__.py"]
    assert [name for name in names if f"`{name}`" not in table] == []


def test_every_module_of_every_subpackage_is_named_in_the_architecture_page() -> None:
    """Each module of each sub-package of mapping/ has its line in docs/architecture.md, as a link to the file."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = [
        f"mapping/{package.name}/{path.name}"
        for package in _subpackages()
        for path in sorted(package.glob("*.py"))
        if path.name != "__init__.py"
    ]
    assert [module for module in modules if f"](../{module})" not in page] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    """Every relative link of the README and of docs/ names a file that exists, and a heading that it has."""
    broken = []
    for match in re.finditer(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text(encoding="utf-8"))):
        target = match.group(1)
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists() or (
            anchor and (destination.suffix != ".md" or anchor not in _anchors(destination))
        ):
            broken.append(target)
    assert broken == []
