"""Figures the reliability tests record (events, faults, fuzzed inputs, rows lost, 500s) for docs/reliability.md.

The session writes them to a JSON file (`RELIABILITY_FIGURES`, default `.reliability/figures.json`);
`testkit/reliability_page.py` turns that file into the page.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = ROOT / ".reliability" / "figures.json"


class Figures:
    """Counters and values per section (storage faults, throttling, storm, fuzzing, security)."""

    def __init__(self) -> None:
        self.sections: defaultdict[str, dict[str, Any]] = defaultdict(dict)

    def add(self, section: str, name: str, amount: int | float = 1) -> None:
        """Add `amount` to a counter."""
        values = self.sections[section]
        values[name] = values.get(name, 0) + amount

    def put(self, section: str, name: str, value: Any) -> None:
        """Set a value (a rate, a bound, a configuration figure)."""
        self.sections[section][name] = value

    def write(self, path: Path | None = None) -> Path | None:
        """Write the figures as JSON (nothing when no reliability test ran); return the path written."""
        if not self.sections:
            return None
        target = path or Path(os.environ.get("RELIABILITY_FIGURES") or DEFAULT_PATH)
        target.parent.mkdir(parents=True, exist_ok=True)
        document = {"generated": datetime.now(UTC).isoformat(timespec="seconds"), "sections": dict(self.sections)}
        target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return target


FIGURES = Figures()
