"""A smoke run of the sweep benchmark: it keeps working, and its figures hold the cost bound (no timings asserted)."""

from __future__ import annotations

from bench.sweep_scale import measure


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
