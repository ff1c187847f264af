"""A room's roster: its member index read as a snapshot of presence pairs, and the copies that keep it current.

Every member-index row (`mapping.rooms.index`) carries a copy of its member's presence pair, so the
presence of a room's members is one partition query (1,000 rows a page), not one read per member.
Invariants (each named by the test that checks it):

C1. A copy is a pair as recorded (P1): a snapshot entry and a presence message of one version state the
    same thing, so a client merges the two by version alone.
    (test_audience: test_a_snapshot_then_changes_converge_by_version)
C2. Every announcement of a pair, new or repeated, first writes the pair onto the user's rooms' index rows, then puts
    it on the presence feed (`mapping.presence.feed` F2); an event whose copies or put fail raises, so its
    announcement is lost with them and made again (P5: the sweep's repeat, or the client's retry). A copy reads the
    row with the room's tally (one query) and writes only over a lower version, on the ETag read (two requests a
    room), so no slow writer sets a newer copy back; a copy set back by other means is put right by the sweep that
    repeats the user's pair.
    (test_audience: test_the_sweep_puts_a_set_back_copy_right)
C3. A row flagged pending (a join or leave in flight, or stopped half way) is checked against the user's
    partition; the reader clears the flag, or deletes the row of a user who is not a member, only once
    the flag is older than any join or leave can run, and only on the ETag it read.
    (test_audience: test_a_pending_row_is_verified_and_cleared_only_when_stale)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from mapping.keys import parse_room
from mapping.presence.feed import UNQUEUED, occupancy_message, presence_message
from mapping.presence.state import PresenceChange, PresenceState
from mapping.presence.store import ConnectionStore
from mapping.rooms.batch import Batching
from mapping.rooms.index import STALE_INDEX_ROW, IndexedMember, MemberIndex
from mapping.rooms.tally import TallyChange
from mapping.storage.client import gather_bounded

logger = logging.getLogger(__name__)

_ROOM_WRITES = 16  # copies written at once
_VERIFY_READS = 16  # pending rows checked at once


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One member in a snapshot: the user's name and their presence pair (version 0: never decided)."""

    user: str
    pair: PresenceChange

    @classmethod
    def of(cls, name: str, pair: PresenceChange | None) -> RosterEntry:
        """A member's snapshot entry: their recorded pair, or offline at version 0 if nothing was ever decided."""
        return cls(name, pair or PresenceChange.of(name, PresenceState(False), 0))

    def to_json(self) -> dict[str, object]:
        """Return the snapshot entry's JSON: the pair as a presence message states it."""
        return self.pair.to_json()


@dataclass(frozen=True, slots=True)
class Published:
    """What a publish did beyond the copies: the rooms' tallies to announce, and the rooms that hear it batched."""

    tallies: tuple[TallyChange, ...] = ()
    batched: frozenset[str] = frozenset()

    def unbatched(self, change: PresenceChange) -> PresenceChange:
        """Return the change with only the rooms that hear it at once (a big room hears it in its next batch)."""
        return replace(change, rooms=tuple(room for room in change.rooms if room not in self.batched))


class Roster:
    """Reads rooms' member indexes as presence snapshots, and copies presence pairs onto them."""

    def __init__(self, store: ConnectionStore) -> None:
        self.store = store
        settings = store.settings
        batching = (
            Batching(settings.room_batch_above, settings.room_batch_seconds) if store.later is not UNQUEUED else None
        )
        self.index = MemberIndex(store.table, clock=store.now, batching=batching, turns=store.turns)

    async def publish(self, change: PresenceChange, *, guarded: bool = False) -> Published:
        """Copy a pair onto the index rows of the change's rooms (C2), queue the flushes of big rooms the copies marked
        (batch B1), then put the pair and the rooms' occupied or vacated tallies on the presence feed (feed F2); return
        the tallies the copies changed (or, guarded, told again) and the rooms that hear the pair in a batch; raise
        StorageError if any copy, queueing or put failed."""

        async def copy(room: str) -> None:
            await self._copy(change, room, repeat=guarded)

        if change.rooms:
            await gather_bounded(change.rooms, copy, limit=_ROOM_WRITES)
        delay = timedelta(seconds=self.store.settings.room_batch_seconds)
        for flush in self.index.flushes:
            await self.store.later.schedule(flush.to_body(), delay=delay)
        await self.store.feed.put(presence_message(change, at=self.store.now()))
        await put_tallies(self.store, self.index.changes)
        return Published(tuple(self.index.changes), frozenset(self.index.batched))

    async def snapshot(self, room: str, *, now: datetime | None = None) -> AsyncIterator[list[RosterEntry]]:
        """Yield a room's members with their presence pairs, one index page at a time (C3: pending rows checked)."""
        room, moment = parse_room(room), self.store.now(now)
        async for rows in self.index.pages(room, action="read a roster"):
            entries = await self._entries(room, rows, moment)
            yield [entry for entry in entries if entry is not None]

    async def _entries(self, room: str, rows: list[IndexedMember], moment: datetime) -> list[RosterEntry | None]:
        """Return each row's entry: a settled row's copy as it is, a pending one checked (C3); None: no member."""

        async def verified(indexed: IndexedMember) -> RosterEntry | None:
            return await self._verified(room, indexed, moment)

        checked = iter(await gather_bounded([row for row in rows if row.pending], verified, limit=_VERIFY_READS))
        return [next(checked) if row.pending else RosterEntry.of(row.user_name, row.pair) for row in rows]

    async def _verified(self, room: str, indexed: IndexedMember, moment: datetime) -> RosterEntry | None:
        """Check a pending row against the user's partition (C3); clear or delete it once it is stale."""
        view = await self.store.read_user(indexed.user_key)
        member = room in view.rooms
        if moment - indexed.touched_at >= STALE_INDEX_ROW and indexed.etag is not None:
            await self.index.settle(room, indexed, member=member, pair=view.presence.announced_as(view.name()))
        if not member:
            return None
        return RosterEntry.of(view.name(), view.presence.announced_as(view.name()))

    async def _copy(self, change: PresenceChange, room: str, *, repeat: bool) -> None:
        if not await self.index.copy(room, change, repeat=repeat) and not repeat:
            logger.info("room %s: no roster row to copy %s's presence to", room, change.user)


async def put_tallies(store: ConnectionStore, changes: list[TallyChange]) -> None:
    """Put each room that became occupied or vacated (or is told again) on the presence feed (feed F2)."""
    moment = store.now()
    for change in changes:
        if change.occupied or change.vacated:
            tally = change.after
            message = occupancy_message(
                change.room,
                occupied=change.occupied,
                members=tally.members,
                online=tally.online,
                version=tally.version,
                at=moment,
            )
            await store.feed.put(message)
