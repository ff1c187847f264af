"""Drive one operation at a fixed concurrency and summarise its latencies and throughput."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One measured cell: an event, an implementation, a concurrency, and what it achieved."""

    event: str
    impl: str
    concurrency: int
    round: int
    ops: int
    seconds: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    def to_json(self) -> dict[str, Any]:
        """Return the sample as a JSON-ready dict."""
        return asdict(self)


async def drive(
    op: Callable[[int], Awaitable[object]], *, concurrency: int, first: int, max_ops: int, max_seconds: float
) -> tuple[list[float], float]:
    """Run `op(first)`, `op(first + 1)`, ... from `concurrency` callers until `max_ops` ran or time is up.

    Returns the latency of each operation (seconds) and the wall time of the whole run.
    """
    latencies: list[float] = []
    next_index = first
    end_index = first + max_ops
    start = time.perf_counter()
    deadline = start + max_seconds

    async def caller() -> None:
        nonlocal next_index
        while next_index < end_index and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            began = time.perf_counter()
            await op(index)
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def summarise(
    event: str, impl: str, concurrency: int, latencies: list[float], seconds: float, *, round_: int = 1
) -> Sample:
    """Turn raw latencies into a Sample (milliseconds, operations per second)."""
    ordered = sorted(latencies)
    return Sample(
        event=event,
        impl=impl,
        concurrency=concurrency,
        round=round_,
        ops=len(ordered),
        seconds=round(seconds, 4),
        throughput=round(len(ordered) / seconds, 2) if seconds > 0 else 0.0,
        p50_ms=round(_percentile(ordered, 50) * 1000, 3),
        p90_ms=round(_percentile(ordered, 90) * 1000, 3),
        p99_ms=round(_percentile(ordered, 99) * 1000, 3),
        mean_ms=round(statistics.fmean(ordered) * 1000, 3) if ordered else 0.0,
        max_ms=round(ordered[-1] * 1000, 3) if ordered else 0.0,
    )


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
