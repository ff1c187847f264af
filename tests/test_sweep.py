"""The age-based sweep against a real Azurite: what goes, what stays, and rows that change meanwhile."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from conftest import Azurite, table_rows
from mapping.store import ConnectionStore
from mapping.sweep import sweep

TTL = timedelta(seconds=600)


def ago(seconds: float) -> datetime:
    """Return a UTC time `seconds` in the past."""
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def test_sweep_removes_expired_rows_and_keeps_live_ones(store: ConnectionStore, azurite: Azurite) -> None:
    """Only rows whose LastSeen is older than the TTL are deleted."""
    await store.connect("alice", "old", now=ago(TTL.total_seconds() + 1))
    await store.connect("alice", "new")
    await store.connect("bob", "old", now=ago(TTL.total_seconds() * 10))
    await store.connect("carol", "almost", now=ago(TTL.total_seconds() - 30))
    result = await sweep(store)
    assert (result.expired, result.deleted, result.skipped) == (2, 2, 0)
    rows = await table_rows(azurite, store.settings.table_name)
    assert sorted((r["PartitionKey"], r["RowKey"]) for r in rows) == [("alice", "new"), ("carol", "almost")]


async def test_sweep_deletes_a_partition_of_more_than_a_hundred_rows(store: ConnectionStore, azurite: Azurite) -> None:
    """A user with 250 expired rows is cleared in batches of at most 100, their live row kept."""
    stale = ago(TTL.total_seconds() + 60)
    await asyncio.gather(*(store.connect("crowd", f"c{i:03d}", now=stale) for i in range(250)))
    await store.connect("crowd", "alive")
    result = await sweep(store)
    assert (result.expired, result.deleted) == (250, 250)
    rows = await table_rows(azurite, store.settings.table_name)
    assert [r["RowKey"] for r in rows] == ["alive"]


async def test_sweep_follows_continuation_across_pages(store: ConnectionStore, azurite: Azurite) -> None:
    """More expired rows than one query page (1,000) across many partitions are all removed."""
    stale = ago(TTL.total_seconds() * 3)
    await asyncio.gather(*(store.connect(f"user{i % 150}", f"c{i}", now=stale) for i in range(1100)))
    result = await sweep(store)
    assert result.deleted == 1100
    assert await table_rows(azurite, store.settings.table_name) == []


async def test_a_row_removed_by_a_disconnect_meanwhile_is_skipped(store: ConnectionStore, azurite: Azurite) -> None:
    """When a disconnect deletes a row between the sweep's read and its batch, the rest of the batch still goes."""
    stale = ago(TTL.total_seconds() + 5)
    for i in range(5):
        await store.connect("erin", f"c{i}", now=stale)
    [page] = [page async for page in store.expired_pages()]
    await store.disconnect("erin", "c2")
    outcome = await store.delete_unchanged(page)
    assert (outcome.deleted, outcome.skipped) == (4, 1)
    assert await table_rows(azurite, store.settings.table_name) == []


async def test_a_row_refreshed_meanwhile_survives(store: ConnectionStore, azurite: Azurite) -> None:
    """A row touched after the sweep read it has a new ETag, so the conditional delete leaves it."""
    stale = ago(TTL.total_seconds() + 5)
    await store.connect("frank", "quiet", now=stale)
    await store.connect("frank", "talking", now=stale)
    [page] = [page async for page in store.expired_pages()]
    assert await store.touch("frank", "talking") is True
    outcome = await store.delete_unchanged(page)
    assert (outcome.deleted, outcome.skipped) == (1, 1)
    assert [c.connection_id for c in await store.connections_of("frank")] == ["talking"]


async def test_sweep_of_an_empty_table_does_nothing(store: ConnectionStore) -> None:
    """A sweep with nothing expired reports zeros."""
    await store.connect("gina", "c1")
    result = await sweep(store)
    assert (result.expired, result.deleted, result.skipped) == (0, 0, 0)
    assert len(await store.connections_of("gina")) == 1
