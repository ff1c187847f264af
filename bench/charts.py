"""The benchmarks' charts: matplotlib drawing to files, the axes the scale charts share, saving a figure."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """Return matplotlib's pyplot, drawing to files only (imported on use: `make test` imports the bench modules,
    and matplotlib comes with the bench's own requirements)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_axes(axes_and_labels: Iterable[tuple[Any, str]], *, xlabel: str) -> None:
    """Give each axis a logarithmic x, its labels, a legend and a light grid."""
    for axis, label in axes_and_labels:
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(label)
        axis.legend()
        axis.grid(alpha=0.3)


def save(figure: Any, title: str, path: Path, *, dpi: int = 110) -> None:
    """Title the figure, write it to `path` and free it."""
    figure.suptitle(title)
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
