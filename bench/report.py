"""Write the results: latest.json (raw), latest.md (tables) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(results: dict[str, Any], out: Path) -> None:
    """Write latest.json, latest.md and the plots into `out`."""
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
