"""The command line the sweep-at-scale benchmarks share: the sizes, the output folder, a report from saved figures."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testkit.azurite import ROOT


def arguments(doc: str, *, results: str) -> argparse.ArgumentParser:
    """The options both benchmarks take; `results` names the folder under bench/results and its JSON file."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--stale", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / results)
    parser.add_argument("--report-only", action="store_true", help=f"rewrite the report from {results}.json")
    return parser


def saved(out: Path, results: str, measurement: Callable[..., Any]) -> list[Any]:
    """The measurements an earlier run saved in `out`/`results`.json."""
    return [measurement(**entry) for entry in json.loads((out / f"{results}.json").read_text())]


def quiet_logging(logger: logging.Logger, *, library_level: int) -> None:
    """The benchmark's own progress at INFO; the SDK's and the app's logs at `library_level` and above."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    for noisy in ("azure", "mapping"):
        logging.getLogger(noisy).setLevel(library_level)
