"""Smoke runs of the benchmarks: they keep working, and their figures hold the cost bounds (no timings asserted)."""

from __future__ import annotations

import pytest

from bench.__main__ import SMOKE, measure_cell
from bench.sweep_scale import measure
from bench.workload import CLIENT_KINDS, EVENTS, IMPLS, Event
from testkit.azurite import Azurite


async def test_sweep_benchmark_smoke() -> None:
    """At two small sizes both sweeps delete every stale row; the index sweep reads about two entities per stale row."""
    results = await measure([100, 400], stale=15)
    assert [(r.live_rows, r.kind) for r in results] == [
        (100, "full scan (old)"),
        (100, "expiry index (new)"),
        (400, "full scan (old)"),
        (400, "expiry index (new)"),
    ]
    assert all(r.deleted == 15 for r in results)
    for result in results:
        if result.kind.startswith("expiry"):
            assert result.entities_read <= 2 * 15 + 5
            assert result.scanned == result.entities_read
        else:
            assert result.scanned == result.live_rows + 15


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("event", [event for event in EVENTS if event.kind in CLIENT_KINDS], ids=lambda e: e.name)
async def test_client_event_cells_run_and_check_their_answers(
    azurite: Azurite, restored_environment: None, event: Event, impl: str
) -> None:
    """A smoke cell of join, setStatus and leave runs for each implementation, each answer checked as it goes."""
    sample = await measure_cell(azurite.connection_string, SMOKE, event, 4, impl, 1)
    assert sample.ops > 0
