"""A room membership's two rows: the truth in the user's partition, and its entry in the room's member index.

The index row also holds a copy of the member's presence pair (version and state; `mapping.rooms.roster`) and a
`Pending` flag: set by a join before it commits and by a leave before it commits, cleared by the join
that committed (on the ETag of its own write) or by a reader that verified the membership once the
flag is older than any join or leave can run. A row without the flag is the truth; a flagged one is
checked against the user's partition. Every write that changes what a row adds to the room's tally commits with the
tally (`mapping.rooms.tally`, T1): the row and the tally are read in one query, then written in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mapping.errors import BatchRejectedError, ConflictError, RowChangedError, StorageError
from mapping.keys import room_partition, user_key
from mapping.presence.rows import Membership
from mapping.presence.state import PresenceChange, Recorded, pair_fields, recorded_from
from mapping.presence.write_loop import UserTurns, back_off, timed_tries
from mapping.rooms.batch import Batching, Flush, mark_fields
from mapping.rooms.tally import TALLY_ROW, Tally, TallyChange, contribution, difference
from mapping.storage.table import Operation, Table, create, delete, etag_of, int64, int_value, merge

# Longer than any join or leave can run (host.json's functionTimeout is 5 minutes): an index row this old, flagged
# pending or without its membership, belongs to no join or leave in flight.
STALE_INDEX_ROW = timedelta(minutes=10)

logger = logging.getLogger(__name__)


# A room's tally is one row that every change of the room writes: its writers retry soon (a few round trips), or
# a burst of joins of one room waits on the back-off more than on the table.
_TALLY_BACKOFF = 0.02

_Plan = tuple[str, dict[str, Any]] | None  # ("merge" | "put" | "delete", fields) from the row as read; None: no write


@dataclass(frozen=True, slots=True)
class Written:
    """A counted write as done: the index row's new ETag (None: deleted or not written)."""

    etag: str | None


@dataclass(frozen=True, slots=True)
class IndexedMember:
    """A row of a room's member index as read: the user's key and name, when the join that wrote it began,
    whether it is flagged pending (and since when), the presence pair copied onto it, and its ETag."""

    user_key: str
    joined_at: datetime
    etag: str | None
    user_name: str = ""
    pending: bool = False
    pending_at: datetime | None = None
    pair: PresenceChange | None = None

    @classmethod
    def from_table(cls, row: Mapping[str, Any], *, etag: str | None) -> IndexedMember:
        """Build it from a row of the room's partition."""
        name = str(row.get("UserName") or "")
        pending_at = row.get("PendingAt")
        return cls(
            str(row["RowKey"]),
            _moment(row.get("JoinedAt")),
            etag,
            user_name=name,
            # A row written before the flag existed is unverified: it is checked like a pending one.
            pending=bool(row.get("Pending", True)),
            pending_at=_moment(pending_at) if isinstance(pending_at, datetime) else None,
            pair=recorded_from(row).announced_as(name) if name else None,
        )

    @property
    def touched_at(self) -> datetime:
        """Return when a join or leave last wrote the row (its freshness, for readers deciding what is stale)."""
        return max(self.joined_at, self.pending_at or self.joined_at)


class MemberIndex:
    """The rows of rooms' member indexes in the store's table: every read and write of a room's partition.

    The tally changes its writes committed (T1) are kept in `changes`, in order, for the caller to announce; one
    instance serves one invocation.
    """

    def __init__(
        self,
        table: Table,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batching: Batching | None = None,
        turns: UserTurns | None = None,
    ) -> None:
        self._table = table
        self._clock = clock
        self._batching = batching  # None: no room is batched (no queue to wait on)
        # This instance's writes of one room's tally in turn (the store's turns, keyed by the room's partition):
        # without them, concurrent joins of one room on one instance would mostly meet each other's ETags.
        self._turns = turns or UserTurns()
        self.changes: list[TallyChange] = []
        self.flushes: list[Flush] = []  # flushes its copies marked (batch B1), to be queued
        self.batched: set[str] = set()  # rooms its copies found big: their members hear the copies in a batch

    async def pages(self, room: str, *, action: str, after: str | None = None) -> AsyncIterator[list[IndexedMember]]:
        """Yield the rows of a room's member index in key order (those after the key `after`), a page at a time."""
        async for page in self._rows(room, action=action, after=after):
            yield [IndexedMember.from_table(row, etag=etag_of(row)) for row in page]

    async def _rows(
        self, room: str, *, action: str, after: str | None = None, select: list[str] | None = None
    ) -> AsyncIterator[list[Mapping[str, Any]]]:
        """Yield the member rows of a room's partition (its tally left out), a service page at a time."""
        query = "PartitionKey eq @pk" if after is None else "PartitionKey eq @pk and RowKey gt @after"
        parameters = {"pk": room_partition(room), **({"after": after} if after is not None else {})}
        async for page in self._table.pages(query, parameters, action=action, select=select):
            yield [row for row in page if row["RowKey"] != TALLY_ROW]

    async def count(self, room: str, *, up_to: int, excluding: str | None = None) -> int:
        """Return how many rows a room's member index has (the user key `excluding` left out), counting no further
        than `up_to` (one request a thousand rows; rows of joins in flight or left lately count too: a cap is held
        conservatively)."""
        counted = 0
        async for page in self._rows(room, action="count a room", select=["RowKey"]):
            counted += sum(row["RowKey"] != excluding for row in page)
            if counted >= up_to:
                break
        return counted

    async def tally(self, room: str) -> Tally:
        """Return a room's tally (T1): one point query; a room never counted has none yet, and is counted (T3)."""
        rows = await self._table.query(
            "PartitionKey eq @pk and RowKey eq @rk", {"pk": room_partition(room), "rk": TALLY_ROW}, action="count"
        )
        if rows:
            return Tally.from_row(rows[0])
        counted = await self._scanned(room)
        if counted.members:  # kept, so the next read is one request (T3); a counted write that won the race stands
            try:
                await self._table.write(create(counted.to_row(room)), action="count a room")
            except StorageError as error:
                logger.info("room %s: its tally is left to the next write: %s", room, error)
        return counted

    async def read(self, room: str, user_partition: str) -> IndexedMember | None:
        """Return the user's row of the room's index, if there is one."""
        rows = await self._table.query(
            "PartitionKey eq @pk and RowKey eq @rk",
            {"pk": room_partition(room), "rk": user_partition},
            action="read a roster row",
        )
        return IndexedMember.from_table(rows[0], etag=etag_of(rows[0])) if rows else None

    async def joining(
        self, membership: Membership, user_partition: str, user_name: str, *, recorded: Recorded
    ) -> str | None:
        """Write a joining member's row, flagged pending, with their recorded pair (R1, roster C1); return its ETag."""
        row = index_row(membership, user_partition, user_name, recorded=recorded)
        written = await self._counted(membership.room, user_partition, lambda _: ("put", row), action="join a room")
        return written.etag

    async def confirm(self, room: str, user_partition: str, etag: str | None) -> None:
        """Clear the pending flag of a committed join's row, on the ETag of its own write; best effort (a join's row
        counts as a member either way: the tally is not touched)."""
        if etag is None:
            return
        fields = {"PartitionKey": room_partition(room), "RowKey": user_partition, "Pending": False}
        try:
            await self._table.write(merge(fields, etag=etag), action="confirm a join")
        except StorageError as error:  # written since (a copy, a leave) or storage failed: readers check it
            logger.info("room %s: a join's index row stays pending: %s", room, error)

    async def leaving(self, room: str, user_partition: str, moment: datetime) -> None:
        """Flag the row of a membership about to end pending (a missing row is fine)."""
        fields = {"PartitionKey": room_partition(room), "RowKey": user_partition, **pending_fields(moment)}
        written = await self._counted(
            room, user_partition, lambda row: None if row is None else ("merge", fields), action="leave a room"
        )
        if written.etag is None:
            logger.info("room %s: no index row to flag for a leave", room)

    async def settle(self, room: str, indexed: IndexedMember, *, member: bool, pair: PresenceChange | None) -> None:
        """Clear a stale flag of a member (with their current pair), or delete a stale row of a non-member, on the
        ETag read (R1, roster C3); best effort."""
        fields: dict[str, Any] = {"PartitionKey": room_partition(room), "RowKey": indexed.user_key, "Pending": False}
        if pair is not None:
            fields.update(pair_fields(pair.state, pair.version))

        def plan(row: Mapping[str, Any] | None) -> _Plan:
            if row is None or etag_of(row) != indexed.etag:  # a join or leave wrote it meanwhile: the next reader
                return None
            return ("merge", fields) if member else ("delete", fields)

        try:
            await self._counted(room, indexed.user_key, plan, action="settle a member-index row")
        except StorageError as error:  # storage failed: the next reader
            logger.info("room %s: a stale member-index row stays: %s", room, error)

    async def copy(self, room: str, change: PresenceChange, *, repeat: bool = False) -> bool:
        """Copy a presence pair onto the member's row, over a lower version only (the row is read anyway, with the
        tally: a slow writer never sets a newer copy back); return False when there is no row or its copy is as new.
        A `repeat` (the sweep's, presence P5) announces the room's tally again and re-queues a big room's pending
        flush: either may have been lost with the event it repeats."""
        fields = {
            "PartitionKey": room_partition(room),
            "RowKey": user_key(change.user),
            **pair_fields(change.state, change.version),
        }

        def plan(row: Mapping[str, Any] | None) -> _Plan:
            if row is None or recorded_from(row).version >= change.version:
                return None
            return ("merge", fields)

        action = "copy presence to a roster"
        written = await self._counted(room, user_key(change.user), plan, action=action, repeat=repeat, batchable=True)
        return written.etag is not None

    async def _counted(
        self,
        room: str,
        user_partition: str,
        plan: Callable[[Mapping[str, Any] | None], _Plan],
        *,
        action: str,
        repeat: bool = False,
        batchable: bool = False,
    ) -> Written:
        """Write the user's index row as `plan` says from the row as read, with the room's tally when the row's
        contribution changes (T1); read both again when either changed meanwhile. A try whose transaction may have
        committed (a conflict answered) and a `repeat` record the tally as it stands, to be announced again."""
        async with self._turns.turn(room_partition(room)):
            return await self._counted_in_turn(
                room, user_partition, plan, action=action, repeat=repeat, batchable=batchable
            )

    async def _counted_in_turn(
        self,
        room: str,
        user_partition: str,
        plan: Callable[[Mapping[str, Any] | None], _Plan],
        *,
        action: str,
        repeat: bool,
        batchable: bool,
    ) -> Written:
        """`_counted`, in this instance's turn of the room."""
        told_again = repeat
        tried: Flush | None = None  # the flush a try marked, if its answer was a conflict
        refused_on: tuple[str | None, str | None] | None = None  # the read a transaction met a conflict on
        singly = False
        for attempt in timed_tries():
            row, tally_row = await self._read_with_tally(room, user_partition, action=action)
            self.batched.discard(room)
            # A conflict although nothing changed: the service refuses this pair's transaction (Azurite, docs/local.md).
            singly = singly or refused_on == (etag_of(row), etag_of(tally_row))
            # A big room hears the copy in its next flush; a pending row's member (a join or leave in flight, or
            # stopped half way) is heard at once, as the flush skips pending rows (batch B2).
            big = not singly and batchable and self._batching is not None and self._batching.big(tally_row)
            big = big and row is not None and not row.get("Pending", True)
            if big:
                self.batched.add(room)
            if tried is not None and (tally_row or {}).get("FlushDue") == tried.due:
                self.flushes.append(tried)  # a try answered with a conflict marked it after all: queue it (B1)
                tried = None
            planned = plan(row)
            if planned is None:
                if big and repeat and not await self._take_over(room, tally_row, action=action):
                    await back_off(attempt, most=_TALLY_BACKOFF)
                    continue
                return self._written(None, room, user_partition, tally_row, told_again=told_again)
            after = _after(row, *planned)
            delta = difference(row, after)
            operation = _operation(row, *planned)
            try:
                if delta == (0, 0) and not big:
                    etag = etag_of(row) if _unchanged(row, after) else await self._table.write(operation, action=action)
                    return self._written(etag, room, user_partition, tally_row, told_again=told_again)
                if singly:
                    return await self._counted_singly(room, user_partition, operation, delta, action=action)
                before = Tally.from_row(tally_row) if tally_row is not None else await self._scanned(room)
                counted = before.plus(delta, at=self._clock(), by=user_partition) if delta != (0, 0) else before
                fields = counted.to_row(room)
                flush = self._batching.flush_of(room, tally_row, now=self._clock()) if big and self._batching else None
                if big:  # batch B2: the copy and the tally in order, the row numbered by the tally's sequence
                    sequence = int64(int_value((tally_row or {}).get("Seq")) + 1)
                    fields["Seq"] = operation[1]["Seq"] = sequence
                    fields.update(mark_fields(flush) if flush else {})
                tally_write = merge(fields, etag=etag_of(tally_row)) if tally_row else create(fields)
                told_again = told_again or delta != (0, 0)  # a conflict may hide a commit: tell the tally again
                tried = flush
                etags = await self._table.transact([operation, tally_write], action=action)
            except BatchRejectedError:  # refused as malformed, nothing written (Azurite over some keys)
                singly = True
                continue
            except ConflictError:
                refused_on = (etag_of(row), etag_of(tally_row))
                await back_off(attempt, most=_TALLY_BACKOFF)
                continue
            if flush is not None:
                self.flushes.append(flush)
            if delta != (0, 0):
                self.changes.append(TallyChange(room, before, counted))
            elif told_again and tally_row is not None:
                self.changes.append(TallyChange.repeated(room, counted, user=user_partition))
            return Written(etags[0] if etags else None)
        raise RowChangedError(f"{action}: room {room} kept changing")

    async def _counted_singly(
        self, room: str, user_partition: str, operation: Operation, delta: tuple[int, int], *, action: str
    ) -> Written:
        """T1 where the service refuses the row's transaction with the tally (Azurite over some keys): the row, then
        the tally on its ETag. Not atomic: a crash between the two leaves the tally off by the row (docs/local.md)."""
        logger.info("room %s: a transaction the service cannot carry; the row, then the tally", room)
        etag = await self._table.write(operation, action=action)
        for attempt in timed_tries():
            _, tally_row = await self._read_with_tally(room, user_partition, action=action)
            if tally_row is None:  # T3: the scan counts the row just written
                counted = await self._scanned(room)
                before = Tally(counted.members - delta[0], counted.online - delta[1])
            else:
                before = Tally.from_row(tally_row)
            after = before.plus(delta, at=self._clock(), by=user_partition)
            fields = after.to_row(room)
            try:
                await self._table.write(
                    merge(fields, etag=etag_of(tally_row)) if tally_row else create(fields), action=action
                )
            except ConflictError:
                await back_off(attempt, most=_TALLY_BACKOFF)
                continue
            self.changes.append(TallyChange(room, before, after))
            return Written(etag)
        # Not a conflict: the caller's loop would read the row as written and count nothing.
        raise StorageError(f"{action}: room {room}: its tally kept changing after the row was written")

    async def _take_over(self, room: str, tally_row: Mapping[str, Any] | None, *, action: str) -> bool:
        """A repeat of a copy already written (the sweep's, presence P5) into a big room: queue the pending flush
        again (a duplicate is harmless, batch B2), or mark one if none is pending or the pending one is overdue, so a
        lost flush is taken over (batch B3); False on a conflict (read again: the mark may be ours)."""
        if self._batching is None or tally_row is None:
            return True
        flush = self._batching.flush_of(room, tally_row, now=self._clock())
        if flush is None:
            pending = self._batching.pending(room, tally_row)
            if pending is not None:
                self.flushes.append(pending)
            return True
        fields = {"PartitionKey": room_partition(room), "RowKey": TALLY_ROW, **mark_fields(flush)}
        try:
            await self._table.write(merge(fields, etag=etag_of(tally_row)), action=action)
        except ConflictError:
            return False
        self.flushes.append(flush)
        return True

    def _written(
        self, etag: str | None, room: str, user: str, tally_row: Mapping[str, Any] | None, *, told_again: bool
    ) -> Written:
        """A write that changed no tally: the tally as it stands is told again, with a repeat of `user`'s
        announcement, when it may not have been."""
        if told_again and tally_row is not None:
            self.changes.append(TallyChange.repeated(room, Tally.from_row(tally_row), user=user))
        return Written(etag)

    async def _read_with_tally(
        self, room: str, user_partition: str, *, action: str
    ) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
        """Read the user's index row and the room's tally in one query."""
        rows = await self._table.query(
            "PartitionKey eq @pk and ( RowKey eq @rk or RowKey eq @tally )",
            {"pk": room_partition(room), "rk": user_partition, "tally": TALLY_ROW},
            action=action,
        )
        by_key = {row["RowKey"]: row for row in rows}
        return by_key.get(user_partition), by_key.get(TALLY_ROW)

    async def _scanned(self, room: str) -> Tally:
        """Count a room that has no tally row by a scan of its index (T3; one request a thousand rows)."""
        members = online = 0
        async for page in self._rows(
            room, action="count a room", select=["RowKey", "Pending", "PendingAt", "JoinedAt", "Online"]
        ):
            for row in page:
                member, live = contribution(row)
                members, online = members + member, online + live
        return Tally(members, online, 0)


def _after(row: Mapping[str, Any] | None, kind: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Return the row as a planned write leaves it."""
    if kind == "delete":
        return None
    return {**(row or {}), **fields}


def _unchanged(row: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> bool:
    """Whether a planned merge leaves the row as it is (a retry that meets its own write)."""
    return row is not None and after is not None and all(_plain(row.get(k)) == _plain(v) for k, v in after.items())


def _plain(value: Any) -> Any:
    """Return a value as a read returns it (an Int64 property as its int)."""
    return int_value(value) if isinstance(value, tuple) else value


def _operation(row: Mapping[str, Any] | None, kind: str, fields: dict[str, Any]) -> Operation:
    """Return a planned write, conditional on the row as read (its ETag; its absence for a new row)."""
    etag = etag_of(row) if row is not None else None
    if kind == "delete":
        return delete(fields["PartitionKey"], fields["RowKey"], etag=etag)
    if row is None:
        return create(fields)
    return merge(fields, etag=etag)


def pending_fields(at: datetime) -> dict[str, Any]:
    """Return the properties that flag an index row pending since `at` (a join or leave about to commit)."""
    return {"Pending": True, "PendingAt": at}


def _moment(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def index_row(
    membership: Membership, user_partition: str, user_name: str, *, recorded: Recorded | None = None
) -> dict[str, Any]:
    """Return the row naming the member in the room's partition (the member index), flagged pending,
    with a copy of the member's recorded presence pair."""
    row: dict[str, Any] = {
        "PartitionKey": room_partition(membership.room),
        "RowKey": user_partition,
        "UserName": user_name,
        "JoinedAt": membership.joined_at,
        **pending_fields(membership.joined_at),
    }
    pair = recorded.announced_as(user_name) if recorded is not None else None
    if pair is not None:
        row.update(pair_fields(pair.state, pair.version))
    return row
