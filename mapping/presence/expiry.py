"""The expiry index: what lets the sweep read only what may be stale, never the whole table.

An entry lives in partition `%~i<shard>.<bucket start, epoch seconds>` (`%~` never starts a user key: escaped
keys use `%` only as `%XX`), is keyed by a digest of the connection row's keys, and names that row. The shard is
a hash of the user's partition modulo `MAPPING_INDEX_SHARDS` (S), so one bucket's writes spread over S partitions
(Table Storage serves about 2,000 entities/s per partition) and a user's entries stay in one shard. With S = 1 the
partition is `%~x<bucket>`, as before shards existed. The sweep reads the buckets that began before its cutoff:
one key-range query per shard, concurrently, plus one over `%~x` and one over the shards at or above S, so an
index written with another S (a changed setting, an older deployment) is still read and nothing is orphaned.
Invariants (each named by the test that checks it):

E1. An entry is written *before* the row write that puts the row's LastSeen into its bucket, and the
    row records that bucket (`IndexBucket`). A crash between the two leaves an entry without a row,
    never a row without an entry. (test_store: test_every_connect_writes_its_index_entry_first)
E2. Entries are never trusted alone: the sweep reads the row's partition first. No row, or a row whose
    `IndexBucket` names a later bucket (refreshed since), means the entry is spent; only a row whose
    LastSeen is past the cutoff is acted on. Of several entries naming one row, all but the latest may
    go without reading the row: the latest covers it whether or not its row write happened.
    (test_sweep: test_a_row_refreshed_into_a_later_bucket_survives)
E3. An entry is dropped only after its row was dealt with (the user's transaction committed); a crash
    in between leaves the entry, which the next sweep reads again.
    (test_crash_points: every sweep crash point)
E4. Whether an entry is spent is read from the row (`IndexBucket`), never recomputed from today's
    bucket width, and whether a row is due is judged against today's lease: so changing
    MAPPING_TTL_SECONDS orphans no row and evicts no live one.
    (test_presence: test_lowering_the_lease_orphans_no_row, test_raising_the_lease_evicts_no_live_row)
E5. An entry written before a change that brings a user online carries `Online = true`: when the
    sweep reaches it, it repeats the user's presence (mapping.presence.state, P5).
    (test_presence: test_a_refused_first_connect_and_its_reconnect_end_announced_online)
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mapping.errors import BatchRejectedError, RowChangedError
from mapping.keys import AFTER_SHARDS, INDEX_PREFIX, SHARDED_PREFIX
from mapping.presence.rows import as_utc
from mapping.storage.table import MAX_BATCH, Operation, Table, delete, upsert

MAX_SHARDS = 999
_BUCKET_DIGITS = 12


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """An expiry-index entry: the connection row (by its keys) whose LastSeen fell in `bucket`."""

    bucket: str
    key: str
    user_key: str
    connection_key: str
    announces: bool = False

    @property
    def bucket_start(self) -> datetime:
        """Return the start of the entry's time bucket."""
        return bucket_start(self.bucket)


def bucket_start(partition: str) -> datetime:
    """Return the start of the time bucket an index partition (sharded or not) holds."""
    return datetime.fromtimestamp(int(partition[-_BUCKET_DIGITS:]), UTC)


class ExpiryIndex:
    """The expiry index in the app's table: entries by time bucket, each naming one connection row."""

    def __init__(self, table: Table, *, width: timedelta, shards: int = 1) -> None:
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards must be between 1 and {MAX_SHARDS}")
        self._table = table
        self.width = width
        self.shards = shards

    def _start(self, moment: datetime) -> int:
        width = int(self.width.total_seconds())
        return int(as_utc(moment).timestamp()) // width * width

    def bucket(self, moment: datetime, partition: str) -> str:
        """Return the index partition that holds `moment` for the user partition `partition`."""
        start = self._start(moment)
        if self.shards == 1:
            return f"{INDEX_PREFIX}{start:0{_BUCKET_DIGITS}d}"
        return f"{_shard_prefix(shard_of(partition, self.shards))}{start:0{_BUCKET_DIGITS}d}"

    def entry(self, partition: str, row: str, last_seen: datetime, *, announces: bool = False) -> Operation:
        """Return the write of the entry for a row whose LastSeen becomes `last_seen` (merged: a flag stays)."""
        entity: dict[str, Any] = {
            "PartitionKey": self.bucket(last_seen, partition),
            "RowKey": entry_key(partition, row),
            "UserKey": partition,
            "ConnectionKey": row,
        }
        if announces:
            entity["Online"] = True
        return upsert(entity)

    async def write(self, partition: str, row: str, last_seen: datetime, *, announces: bool = False) -> str:
        """Write the entry for a row before its LastSeen becomes `last_seen` (E1); return the bucket."""
        operation = self.entry(partition, row, last_seen, announces=announces)
        await self._table.write(operation, action="write the expiry index")
        return str(operation[1]["PartitionKey"])

    async def write_many(self, operations: Sequence[Operation]) -> None:
        """Write entries (from `entry`), one transaction per bucket and hundred."""
        by_bucket: dict[str, list[Operation]] = {}
        for operation in operations:
            by_bucket.setdefault(str(operation[1]["PartitionKey"]), []).append(operation)
        for chunk in (ops[i : i + MAX_BATCH] for ops in by_bucket.values() for i in range(0, len(ops), MAX_BATCH)):
            try:
                await self._table.transact(chunk, action="write the expiry index")
            except BatchRejectedError:
                for operation in chunk:
                    await self._table.write(operation, action="write the expiry index")

    def readers(self, *, before: datetime) -> list[AsyncIterator[list[IndexEntry]]]:
        """Return one reader per shard (and one for other layouts) of the pages of the buckets that began before
        `before`, each oldest first: they may be read concurrently."""
        upper = self._start(as_utc(before) + self.width)
        ranges = [(INDEX_PREFIX, f"{INDEX_PREFIX}{upper:0{_BUCKET_DIGITS}d}")]
        sharded = range(self.shards) if self.shards > 1 else range(0)
        ranges += [(_shard_prefix(s), f"{_shard_prefix(s)}{upper:0{_BUCKET_DIGITS}d}") for s in sharded]
        ranges.append((_shard_prefix(len(sharded)), AFTER_SHARDS))  # shards of a larger S, if any
        cutoff = datetime.fromtimestamp(upper, UTC)
        return [self._pages(lower, upper_key, cutoff=cutoff) for lower, upper_key in ranges]

    async def _pages(self, lower: str, upper: str, *, cutoff: datetime) -> AsyncIterator[list[IndexEntry]]:
        async for page in self._table.pages(
            "PartitionKey ge @lower and PartitionKey lt @upper",
            {"lower": lower, "upper": upper},
            action="read the expiry index",
        ):
            entries = [_index_entry(row) for row in page]
            yield [entry for entry in entries if entry.bucket_start < cutoff]

    async def drop(self, entries: Sequence[IndexEntry]) -> None:
        """Delete spent entries (missing ones are fine), one transaction per bucket and hundred (E3)."""
        by_bucket: dict[str, list[IndexEntry]] = {}
        for entry in entries:
            by_bucket.setdefault(entry.bucket, []).append(entry)
        for chunk in (ops[i : i + MAX_BATCH] for ops in by_bucket.values() for i in range(0, len(ops), MAX_BATCH)):
            await self._drop_chunk(chunk)

    async def _drop_chunk(self, chunk: list[IndexEntry]) -> None:
        pending = list(chunk)
        while pending:
            try:
                await self._table.transact(
                    [delete(entry.bucket, entry.key) for entry in pending], action="drop index entries"
                )
                return
            except RowChangedError as missing:  # already gone: leave it out and try the rest
                failed = missing.index if missing.index is not None and missing.index < len(pending) else 0
                pending.pop(failed)
            except BatchRejectedError:
                for entry in pending:
                    await self._table.write(delete(entry.bucket, entry.key), action="drop an index entry")
                return


def _shard_prefix(shard: int) -> str:
    return f"{SHARDED_PREFIX}{shard:03d}."


def shard_of(partition: str, shards: int) -> int:
    """Return the index shard of a user partition: the same on every instance, for every S."""
    return int.from_bytes(hashlib.sha256(partition.encode()).digest()[:8], "big") % shards


def entry_key(partition: str, row: str) -> str:
    """Return the RowKey of a connection row's index entries (the same in every bucket)."""
    return hashlib.sha256(f"{partition}\x00{row}".encode()).hexdigest()


def _index_entry(row: Mapping[str, Any]) -> IndexEntry:
    return IndexEntry(
        bucket=str(row["PartitionKey"]),
        key=str(row["RowKey"]),
        user_key=str(row.get("UserKey") or ""),
        connection_key=str(row.get("ConnectionKey") or ""),
        announces=row.get("Online") is True,
    )
