"""Rooms: memberships that belong to the user, kept in the table, and the SignalR groups that follow them.

A membership is two rows (`mapping.rooms.index`): `%~r<room>` in the user's partition, the truth, read
with the user's connections in one query; and the user's key in the room's partition `%~m<room>`,
the member index, which lists a room's members with one partition query. Invariants (each named by
the test that checks it):

R1. The member-index row is written before the membership row, and only a reader of the room deletes
    it: when the user's partition shows no membership, the row is older than any join can run
    (STALE_INDEX_ROW), and conditional on the ETag the reader read. So the index names every member,
    and perhaps someone who left or whose join stopped half way; readers keep only the members whose
    membership row is there. A join racing a leave or a reader cannot lose its index row: a write
    between the reader's read and delete fails the delete, and a fresh row is never deleted.
    (test_rooms: test_a_half_written_join_lists_nobody, test_a_leave_racing_a_join_keeps_the_member_listed,
    test_a_reader_clears_stale_index_rows_but_never_a_fresh_one)
R2. A membership row is created or deleted in one transaction with a write to the user's presence
    row, conditional on the ETag of the read the decision was made on (as presence P2). So joins are
    serialised with each other (the limit of 100 rooms holds) and with connects: a connection that
    opens during a join is added to the room's group by the one of the two that commits second.
    (test_rooms: test_concurrent_joins_keep_the_room_limit)
R3. The room's SignalR group follows the membership: a join adds every live connection of the user,
    a connect adds the new connection to the groups of all the user's rooms (SignalR forgets groups
    when a connection ends), and so does a lapsed lease made live again (its connection may have
    missed a join); a leave removes every connection that has a row, lapsed ones too. A join or leave
    that finds its work done does its group actions and its announcement again, so a client that
    retries after an error ends with both. (test_rooms: test_a_repeated_join_adds_and_announces_again)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from mapping.errors import InvalidRequestError, RefusedError
from mapping.keys import (
    BLOCKED_ROW,
    MEMBERSHIP_PREFIX,
    check_limit,
    decode_cursor,
    encode_cursor,
    membership_key,
    normalize_user_name,
    parse_room,
    user_key,
)
from mapping.presence.rows import Membership, is_membership_key
from mapping.presence.state import PresenceChange, PresenceState, presence_write
from mapping.presence.store import ConnectionStore
from mapping.presence.user_view import UserView
from mapping.presence.write_loop import Attempts, Commit, Done
from mapping.rooms.index import STALE_INDEX_ROW, IndexedMember, MemberIndex
from mapping.storage.client import gather_bounded
from mapping.storage.table import Operation, create, delete

logger = logging.getLogger(__name__)

MAX_ROOMS_PER_USER = 100
_MEMBER_READS = 16  # member partitions read at once when listing a room


@dataclass(frozen=True, slots=True)
class RoomChange:
    """A join or leave as done: who, which room, and the connections its group actions apply to."""

    user: str
    room: str
    joined: bool
    connections: tuple[str, ...]
    presence: PresenceChange | None = None  # the user's recorded pair, for the room's members


@dataclass(frozen=True, slots=True)
class RoomMember:
    """A member of a room with their presence as their rows give it now."""

    user: str
    state: PresenceState


@dataclass(frozen=True, slots=True)
class MembersPage:
    """One page of a room's members, and the cursor of the next page (None on the last)."""

    room: str
    members: list[RoomMember]
    next: str | None


@dataclass(frozen=True, slots=True)
class Standing:
    """What a user may reach by themselves: their rooms, and whether an operator blocked them."""

    rooms: frozenset[str]
    blocked: bool


class Rooms:
    """Joining, leaving and listing rooms, in the connection store's table."""

    def __init__(self, store: ConnectionStore) -> None:
        self.store = store
        self.index = MemberIndex(store.table)

    async def join(self, user_name: str, room: str, *, now: datetime | None = None) -> RoomChange:
        """Make the user a member of `room` (at most 100 rooms each); a member already is left as is."""
        name, room = normalize_user_name(user_name), parse_room(room)
        partition, moment = user_key(name), self.store.now(now)
        membership = Membership(room, moment)

        async def step(view: UserView, attempts: Attempts) -> Done[RoomChange] | Commit[RoomChange]:
            if view.blocked:
                raise RefusedError("this user is blocked", room=room)
            change = self._change(view, name, room, joined=True, moment=moment)
            if room in view.rooms:
                return Done(change)
            if len(view.rooms) >= MAX_ROOMS_PER_USER:
                raise InvalidRequestError(f"a user may be in at most {MAX_ROOMS_PER_USER} rooms")
            # R1: the member index first, flagged pending, with the pair this decision is made on (roster C1).
            written = await self.index.joining(membership, partition, name, recorded=view.presence)
            operations = [create(membership.to_table(partition)), _presence_touch(view, name, attempts)]
            return Commit(operations, change, then=lambda: self.index.confirm(room, partition, written))

        return await self.store.writes.write(partition, step, action="join")

    async def leave(self, user_name: str, room: str, *, now: datetime | None = None) -> RoomChange:
        """End the user's membership of `room`; leaving a room one is not in does no harm."""
        name, room = normalize_user_name(user_name), parse_room(room)
        partition, moment = user_key(name), self.store.now(now)
        flagged = False

        async def step(view: UserView, attempts: Attempts) -> Done[RoomChange] | Commit[RoomChange]:
            nonlocal flagged
            # R1: the index row stays; a reader of the room deletes it once it is stale.
            change = self._change(view, name, room, joined=False, moment=moment, lapsed_too=True)
            membership = view.rooms.get(room)
            if membership is None:
                return Done(change)
            if not flagged:
                # Roster C3: readers check the flagged row until it is settled.
                await self.index.leaving(room, partition, moment)
                flagged = True
            ending = delete(partition, membership_key(room), etag=membership.etag)
            return Commit([ending, _presence_touch(view, name, attempts)], change)

        return await self.store.writes.write(partition, step, action="leave")

    async def standing(self, user_name: str) -> Standing:
        """Return the user's rooms and whether they are blocked: one range query over the app's own rows of their
        partition from the block row to the membership rows (`%~b` to `%~r...`; the presence row between)."""
        rows = await self.store.table.query(
            "PartitionKey eq @pk and RowKey ge @first and RowKey lt @after",
            {"pk": user_key(user_name), "first": BLOCKED_ROW, "after": MEMBERSHIP_PREFIX[:-1] + "s"},
            action="read memberships",
            select=["RowKey", "Room"],
        )
        keys = [str(row["RowKey"]) for row in rows]
        rooms = {Membership.from_table(row).room for row in rows if is_membership_key(str(row["RowKey"]))}
        return Standing(frozenset(rooms), BLOCKED_ROW in keys)

    async def members(
        self, room: str, *, limit: int = 100, cursor: str | None = None, now: datetime | None = None
    ) -> MembersPage:
        """Return a page of a room's members in key order, each with their presence now (R1: verified)."""
        room, limit = parse_room(room), check_limit(limit)
        after = decode_cursor(cursor) if cursor else None
        moment = self.store.now(now)
        members: list[RoomMember] = []
        last_key = ""
        full = False
        async for rows in self.index.pages(room, action="list a room", after=after):
            if full:
                return MembersPage(room, members, next=encode_cursor(last_key) if rows else None)
            while rows and not full:
                chunk, rows = rows[: limit - len(members)], rows[limit - len(members) :]
                for indexed, member in zip(chunk, await self._verified(room, chunk, moment), strict=True):
                    if member is not None:
                        members.append(member)
                        last_key = indexed.user_key
                full = len(members) == limit
            if full and rows:
                return MembersPage(room, members, next=encode_cursor(last_key))
        return MembersPage(room, members, next=None)

    async def _verified(self, room: str, rows: list[IndexedMember], moment: datetime) -> list[RoomMember | None]:
        """Read each candidate's partition: a member (with presence) if their membership row is there, else None."""

        async def read(indexed: IndexedMember) -> RoomMember | None:
            view = await self.store.read_user(indexed.user_key)
            if room not in view.rooms:
                await self._clear_if_stale(room, indexed, moment)
                return None
            return RoomMember(view.name(), view.state_now(self.store.lease, now=moment))

        return await gather_bounded(rows, read, limit=_MEMBER_READS)

    async def _clear_if_stale(self, room: str, indexed: IndexedMember, moment: datetime) -> None:
        """Delete an index row with no membership once no join can be writing it (R1); best effort."""
        if moment - indexed.joined_at >= STALE_INDEX_ROW and indexed.etag is not None:
            await self.index.settle(room, indexed, member=False, pair=None)

    def _change(
        self, view: UserView, name: str, room: str, *, joined: bool, moment: datetime, lapsed_too: bool = False
    ) -> RoomChange:
        rows = view.rows.values() if lapsed_too else view.live(self.store.lease, now=moment)
        rows = [row for row in rows if row.ended_at is None]  # closed: a grace holds it for presence only
        pair = view.presence.announced_as(name, rooms=(room,))
        return RoomChange(name, room, joined, tuple(row.connection_id for row in rows), pair)


def _presence_touch(view: UserView, name: str, attempts: Attempts) -> Operation:
    """The presence row's write that makes a membership change conditional on `view` (R2): its state unchanged."""
    return presence_write(view.partition, view.presence, writer=attempts.writer, user_name=name)
