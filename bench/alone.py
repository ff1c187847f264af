"""Running one section of the bench alone (`python -m bench.<section>`): its command line, its logging, and where
its figures go."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
_QUIET = ("azure", "mapping", "local", "aiohttp")


def section_arguments(prog: str, doc: str | None, *, section: str, smoke: str | None = None) -> argparse.ArgumentParser:
    """Return the command line of a section run alone: `--out`, `--report`, and `--smoke` when it has a smoke size
    (`smoke` says what it is)."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    if smoke is not None:
        parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where to write {section}.json and .md (default bench/results/{section}/)",
    )
    parser.add_argument(
        "--report", type=Path, default=RESULTS, help="the report (latest.json, latest.md) to put the figures into"
    )
    return parser


def quiet_logging() -> None:
    """Log the section's progress with times; the SDKs and the app only their warnings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def destination(arguments: argparse.Namespace, section: str) -> tuple[Path, bool] | None:
    """Where a run's figures go and whether into the report too: a full run's to bench/results/<section>/ (or
    `--out`) and the report; a smoke run's nowhere unless `--out` asks, and never into the report."""
    smoke = bool(getattr(arguments, "smoke", False))
    if arguments.out is not None:
        return arguments.out, not smoke
    return None if smoke else (RESULTS / section, True)
