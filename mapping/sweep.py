"""Stale-row removal: the timer function is the TTL that Table Storage does not have.

The sweep reads only the expiry index's buckets that began before its cutoff (a key-range query,
never a filter on a property across the table), so its cost follows the stale rows, not the table:
every row older than the cutoff, plus at most the rows of the one bucket that straddles it.
For each entry it reads the row the entry names and acts on what it finds (see the invariants in
`mapping.store`):

- no row, or a row whose LastSeen moved to a later bucket: the entry is dropped;
- with a SignalR connection configured, every row past half its lease is checked with the service
  (`HEAD .../connections/{id}`): alive → LastSeen is refreshed; gone → the row is deleted; unknown →
  kept for the next sweep, unless LastSeen is older than MAPPING_MAX_AGE_SECONDS, then deleted;
- without one, a row past its lease is deleted (age-based).

Deletes and refreshes are conditional on the row's ETag. The sweep stops at its time budget and the
next run resumes where it stopped (the entries it did not reach are still there). With presence
events on, every user whose rows it deleted gets a presence decision (see `mapping.store`): when that
leaves the user without a live connection, the change to offline is reported with its version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mapping.entity import as_utc, utc_now
from mapping.liveness import Liveness, SignalRLiveness
from mapping.store import ConnectionStore, IndexEntry, PresenceChange, StoredConnection

logger = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET = timedelta(minutes=4)  # the Functions timeout in host.json is 5 minutes
_PRESENCE_CONCURRENCY = 16


@dataclass(slots=True)
class SweepResult:
    """What one sweep read and did."""

    entries_read: int = 0
    rows_read: int = 0
    checked: int = 0
    refreshed: int = 0
    deleted: int = 0
    kept: int = 0
    entries_dropped: int = 0
    presence: list[PresenceChange] = field(default_factory=list)
    complete: bool = True

    @property
    def offline_users(self) -> list[str]:
        """Return the users this sweep announces offline."""
        return [change.user for change in self.presence if not change.online]

    @property
    def entities_read(self) -> int:
        """Return the table entities the sweep read: index entries plus connection rows."""
        return self.entries_read + self.rows_read


async def sweep(
    store: ConnectionStore,
    *,
    liveness: SignalRLiveness | None = None,
    now: datetime | None = None,
    time_budget: timedelta = DEFAULT_TIME_BUDGET,
) -> SweepResult:
    """Remove stale connection rows (liveness-checked when `liveness` is given); report users gone offline."""
    moment = as_utc(now) if now else utc_now()
    ttl = store.settings.ttl
    cutoff = moment - (ttl / 2 if liveness else ttl)
    deadline = time.monotonic() + time_budget.total_seconds()
    result = SweepResult()
    emptied: dict[str, str] = {}
    async for entries in store.expiry_pages(before=cutoff):
        result.entries_read += len(entries)
        await _sweep_page(store, entries, liveness=liveness, now=moment, cutoff=cutoff, result=result, emptied=emptied)
        if time.monotonic() > deadline:
            result.complete = False
            logger.warning("sweep: time budget spent; the next run resumes")
            break
    if store.settings.presence_events:
        result.presence = await _settle_presence(store, emptied, now=moment)
    logger.info(
        "sweep: %d entries, %d rows read, %d checked, %d refreshed, %d deleted, %d kept, %d users offline%s",
        result.entries_read,
        result.rows_read,
        result.checked,
        result.refreshed,
        result.deleted,
        result.kept,
        len(result.offline_users),
        "" if result.complete else " (incomplete)",
    )
    return result


async def _sweep_page(
    store: ConnectionStore,
    entries: list[IndexEntry],
    *,
    liveness: SignalRLiveness | None,
    now: datetime,
    cutoff: datetime,
    result: SweepResult,
    emptied: dict[str, str],
) -> None:
    rows = await store.read_connections(entries)
    result.rows_read += sum(row is not None for row in rows)
    done: list[IndexEntry] = []
    stale: list[StoredConnection] = []
    candidates: list[tuple[IndexEntry, StoredConnection]] = []
    for entry, row in zip(entries, rows, strict=True):
        if row is None or row.entity.last_seen >= entry.bucket_start + store.bucket_width():
            done.append(entry)  # no row, or the row was refreshed into a later bucket
        elif row.entity.last_seen < cutoff:
            candidates.append((entry, row))
        # else: the entry's bucket straddles the cutoff and this row is not due yet; keep the entry
    verdicts = await _verdicts([row for _, row in candidates], store=store, liveness=liveness, now=now)
    result.checked += len(candidates) if liveness else 0
    for (entry, row), verdict in zip(candidates, verdicts, strict=True):
        if verdict is Liveness.ALIVE:
            if await store.refresh_unchanged(row, now=now):
                result.refreshed += 1
            done.append(entry)
        elif verdict is Liveness.GONE:
            stale.append(row)
            done.append(entry)
        else:
            result.kept += 1
    if stale:
        outcome = await store.delete_unchanged(stale)
        result.deleted += outcome.deleted
        emptied.update({row.partition_key: row.entity.user_name for row in stale})
    if done:
        result.entries_dropped += (await store.drop_index_entries(done)).deleted


async def _verdicts(
    rows: list[StoredConnection], *, store: ConnectionStore, liveness: SignalRLiveness | None, now: datetime
) -> list[Liveness]:
    if liveness is None:
        expired = now - store.settings.ttl
        return [Liveness.GONE if row.entity.last_seen < expired else Liveness.UNKNOWN for row in rows]
    answers = await asyncio.gather(*(liveness.check(row.entity.hub, row.entity.connection_id) for row in rows))
    too_old = now - store.settings.max_age
    return [
        Liveness.GONE if answer is Liveness.UNKNOWN and row.entity.last_seen < too_old else answer
        for row, answer in zip(rows, answers, strict=True)
    ]


async def _settle_presence(store: ConnectionStore, emptied: dict[str, str], *, now: datetime) -> list[PresenceChange]:
    slots = asyncio.Semaphore(_PRESENCE_CONCURRENCY)

    async def settle(user_name: str) -> PresenceChange | None:
        async with slots:
            return await store.settle_presence(user_name, now=now)

    changes = await asyncio.gather(*(settle(user_name) for user_name in emptied.values()))
    return [change for change in changes if change is not None]
