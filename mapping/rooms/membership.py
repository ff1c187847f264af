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
    that finds its work done does its group actions again, and within a minute of the change its
    announcement too (R5), so a client that retries after an error ends with both.
    (test_rooms: test_a_repeated_join_adds_and_announces_again)
R4. Who may join: a member stays one (memberships from before rooms were closed stay); anyone else is admitted when
    `ROOMS_OPEN` opens the room, a grant row `%~g<room>` is in their partition (the join's own read finds it: no
    extra request), or the app's policy says so; a refused join writes nothing. A revoke deletes the grant and the
    membership and writes a revocation `%~q<room>` in the same transaction; the user's connections that opened before
    it may still be in the room's group (the revoke's own removal, or a connect's group action in flight, may be
    lost), so every later read that finds it removes them again: the revoke itself, the user's next connect,
    sendToRoom or sync, and the sweep's visit of the user, which deletes it once no such connection is left. A grant
    or a join of the room deletes it in their transaction. (test_access: test_a_revoke_lost_before_the_group_
    removal_is_redone_by_the_next_connect_and_the_sweep; test_crash_points: test_every_access_crash_point_ends_...)
R5. A call that changes nothing of long standing costs only its caller: a join of a room the user has been in for
    over a minute answers the caller its group action and snapshot, and a leave of a room the user is not in (and did
    not leave within the minute, by the index row's flag) answers the caller alone: the room hears nothing. Sooner,
    both repeat the announcement, as the client's retry after an error needs (R3). (test_budget: test_calls_that_
    change_nothing_cost_only_the_caller)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from mapping.errors import InvalidRequestError, RefusedError, StorageError
from mapping.keys import (
    GRANT_PREFIX,
    REVOKED_PREFIX,
    check_limit,
    connection_key,
    decode_cursor,
    encode_cursor,
    grant_key,
    membership_key,
    normalize_user_name,
    parse_room,
    revoked_key,
    user_key,
)
from mapping.presence.rows import Membership, RoomMark
from mapping.presence.state import PresenceChange, PresenceState, presence_write
from mapping.presence.store import ConnectionStore
from mapping.presence.user_view import UserView
from mapping.presence.write_loop import Attempts, Commit, Done
from mapping.rooms.index import STALE_INDEX_ROW, IndexedMember, MemberIndex
from mapping.rooms.policy import SETTINGS_DECIDE, AccessPolicy, Claims, asked
from mapping.rooms.tally import Tally, TallyChange
from mapping.storage.client import gather_bounded
from mapping.storage.table import Operation, create, delete, upsert

logger = logging.getLogger(__name__)

MAX_ROOMS_PER_USER = 100
# A join of a room one is in, or a leave of one one is not in, this soon after the change is announced again (R5).
REPEAT_ANNOUNCED = timedelta(minutes=1)
_AFTER = timedelta(milliseconds=1)  # a leave's time is at least this after its join's (feed F1: versions grow)
_MEMBER_READS = 16  # member partitions read at once when listing a room


_Check = Callable[[UserView], Awaitable[None]]  # raises RefusedError when the user may not enter


@dataclass(frozen=True, slots=True)
class RoomChange:
    """A join or leave as done: who, which room, and the connections its group actions apply to."""

    user: str
    room: str
    joined: bool
    connections: tuple[str, ...]
    changed_at: datetime  # when the membership changed: a repeat names the change it repeats (feed F1)
    presence: PresenceChange | None = None  # the user's recorded pair, for the room's members
    # False: it changed nothing of long standing (a member joining, a non-member leaving), so only the caller hears
    # (R5); True also for a repeat soon after a change, whose announcement an error may have lost
    announce: bool = True
    tallies: tuple[TallyChange, ...] = ()  # the room's tally as its index writes changed it (tally T1)


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
    tallies: tuple[TallyChange, ...] = ()  # the room's counts as corrected by settling a stale row: to announce


@dataclass(frozen=True, slots=True)
class Standing:
    """What a user may reach by themselves: their rooms, and whether an operator blocked them."""

    rooms: frozenset[str]
    blocked: bool
    revoked: frozenset[str] = frozenset()  # rooms a server took the user out of, whose groups may still hold them


class Rooms:
    """Joining, leaving and listing rooms, in the connection store's table."""

    def __init__(self, store: ConnectionStore) -> None:
        self.store = store
        self.index = MemberIndex(store.table, clock=store.now, turns=store.turns)

    async def join(
        self,
        user_name: str,
        room: str,
        *,
        policy: AccessPolicy = SETTINGS_DECIDE,
        claims: Claims | None = None,
        now: datetime | None = None,
    ) -> RoomChange:
        """Make the user a member of `room` (at most 100 rooms each) when it is open, granted or the policy admits them
        (R4; else RefusedError, nothing written); a member already is left as is."""
        name, room = normalize_user_name(user_name), parse_room(room)
        admitted: list[bool] = []  # the policy's answer, asked once whatever the retries

        async def admits(view: UserView) -> bool:
            if self.store.settings.opens(room) or room in view.grants:
                return True
            if not admitted:
                admitted.append(await _policy_admits(policy, name, room, claims))
            return admitted[0]

        async def check(view: UserView) -> None:
            # A blocked user is refused as such, without asking the policy.
            _check_not_blocked_or_closed(view, room, admitted=view.blocked or room in view.rooms or await admits(view))
            cap = self.store.settings.room_max_members
            # The joiner's own row (an earlier attempt's) is not counted: a retry is never refused by itself.
            others = 0
            if room not in view.rooms and cap is not None:
                others = await self.index.count(room, up_to=cap, excluding=view.partition)
            if cap is not None and others >= cap:
                raise RefusedError("this room is full", room=room, refused=True, full=True)

        return await self._enter(name, room, check, now=now, action="join")

    async def grant(self, user_name: str, room: str, *, now: datetime | None = None) -> RoomChange:
        """Grant `room` to the user and make them a member at once (a server's call); granting again does no harm."""
        name, room = normalize_user_name(user_name), parse_room(room)
        return await self._enter(name, room, _anyone, now=now, action="grant a room", granting=True)

    async def _enter(
        self, name: str, room: str, check: _Check, *, now: datetime | None, action: str, granting: bool = False
    ) -> RoomChange:
        """The write loop of a join or a grant: the membership (and the grant) with the presence row's touch (R2)."""
        partition = user_key(name)

        async def step(view: UserView, attempts: Attempts) -> Done[RoomChange] | Commit[RoomChange]:
            await check(view)
            # Each attempt's own time: a retried join commits no older a change than it is (feed F1).
            moment = self.store.now(now)
            membership = Membership(room, moment)
            change = self._change(view, name, room, joined=True, moment=moment)
            if (member := view.rooms.get(room)) is not None:
                change = replace(change, changed_at=member.joined_at)  # a grant or a repeat restates the join
            operations: list[Operation] = []
            if granting and room not in view.grants:
                operations.append(upsert(RoomMark(room, moment).to_table(partition, prefix=GRANT_PREFIX)))
            if (revoked := view.revoked.get(room)) is not None:
                operations.append(delete(partition, revoked_key(room), etag=revoked.etag))  # a member again (R4)
            then: Callable[[], Awaitable[None]] | None = None
            if room not in view.rooms:
                if len(view.rooms) >= MAX_ROOMS_PER_USER:
                    raise InvalidRequestError(f"a user may be in at most {MAX_ROOMS_PER_USER} rooms")
                # R1: the member index first, flagged pending, with the pair this decision is made on (roster C1).
                written = await self.index.joining(membership, partition, name, recorded=view.presence)
                operations.append(create(membership.to_table(partition)))

                async def then() -> None:
                    await self.index.confirm(room, partition, written)

            if not operations:
                joined_at = view.rooms[room].joined_at
                return Done(replace(change, announce=moment - joined_at < REPEAT_ANNOUNCED or attempts.tried))
            operations.append(_presence_touch(view, name, attempts))
            return Commit(operations, change, then=then)

        return await self._counted(self.store.writes.write(partition, step, action=action))

    async def _counted(self, done: Awaitable[RoomChange]) -> RoomChange:
        """Return a join's, leave's or revoke's change with the tally changes its index writes made (tally T1)."""
        mark = len(self.index.changes)
        change = await done
        return replace(change, tallies=tuple(self.index.changes[mark:]))

    async def tally(self, room: str) -> Tally:
        """Return a room's tally: its members and online members (one table request; tally T1)."""
        return await self.index.tally(parse_room(room))

    async def check_visible(
        self, user_name: str, room: str, *, policy: AccessPolicy = SETTINGS_DECIDE, claims: Claims | None = None
    ) -> None:
        """Raise RefusedError unless the user may see the room: a member, or one a join would admit (R4); one read of
        the user's partition."""
        name, room = normalize_user_name(user_name), parse_room(room)
        view = await self.store.read_user(user_key(name))
        admitted = room in view.rooms or self.store.settings.opens(room) or room in view.grants
        if not admitted and not view.blocked:
            admitted = await _policy_admits(policy, name, room, claims)
        _check_not_blocked_or_closed(view, room, admitted=admitted)

    async def leave(self, user_name: str, room: str, *, now: datetime | None = None) -> RoomChange:
        """End the user's membership of `room`; leaving a room one is not in does no harm."""
        name, room = normalize_user_name(user_name), parse_room(room)
        partition, moment = user_key(name), self.store.now(now)
        flagged: datetime | None = None  # when this leave flagged the index row: its change's time (feed F1)

        async def step(view: UserView, attempts: Attempts) -> Done[RoomChange] | Commit[RoomChange]:
            nonlocal flagged
            # R1: the index row stays; a reader of the room deletes it once it is stale.
            change = self._change(view, name, room, joined=False, moment=moment, lapsed_too=True)
            membership = view.rooms.get(room)
            if membership is None:
                if flagged is not None or attempts.tried:
                    return Done(replace(change, changed_at=flagged or moment))
                left_at = await self._left_lately(room, view)
                return Done(replace(change, announce=left_at is not None, changed_at=left_at or moment))
            if flagged is None:
                # Roster C3: readers check the flagged row until it is settled. After its join, whatever the clocks.
                flagged = max(self.store.now(now), membership.joined_at + _AFTER)
                await self.index.leaving(room, partition, flagged)
            ending = delete(partition, membership_key(room), etag=membership.etag)
            return Commit([ending, _presence_touch(view, name, attempts)], replace(change, changed_at=flagged))

        return await self._counted(self.store.writes.write(partition, step, action="leave"))

    async def _left_lately(self, room: str, view: UserView) -> datetime | None:
        """When a leave flagged the user's index row of the room, if lately (its announcement may be lost: R5)."""
        indexed = await self.index.read(room, view.partition)
        moment = self.store.now()
        if indexed is None or indexed.pending_at is None or moment - indexed.pending_at >= REPEAT_ANNOUNCED:
            return None
        # A join flags its row at its own time; only a leave's flag comes after the join.
        return indexed.pending_at if indexed.pending_at > indexed.joined_at else None

    async def revoke(self, user_name: str, room: str, *, now: datetime | None = None) -> RoomChange:
        """Take the user out of `room` and revoke its grant (a server's call): the membership and the grant end, and a
        revocation names the connections the room's group may still hold (R4); revoking again does no harm."""
        name, room = normalize_user_name(user_name), parse_room(room)
        partition, moment = user_key(name), self.store.now(now)
        flagged: datetime | None = None  # when this revoke flagged the index row: its change's time (feed F1)

        async def step(view: UserView, attempts: Attempts) -> Done[RoomChange] | Commit[RoomChange]:
            nonlocal flagged
            change = self._change(view, name, room, joined=False, moment=moment, lapsed_too=True)
            operations: list[Operation] = []
            if room not in view.rooms:
                change = replace(change, announce=False)  # no member: the room hears nothing (R5)
            if (grant := view.grants.get(room)) is not None:
                operations.append(delete(partition, grant_key(room), etag=grant.etag))
            if (membership := view.rooms.get(room)) is not None:
                if flagged is None:
                    flagged = max(self.store.now(now), membership.joined_at + _AFTER)
                    await self.index.leaving(room, partition, flagged)  # roster C3, as a leave
                operations.append(delete(partition, membership_key(room), etag=membership.etag))
                operations.append(upsert(RoomMark(room, flagged).to_table(partition, prefix=REVOKED_PREFIX)))
                change = replace(change, changed_at=flagged)
            if not operations:  # nothing to revoke: the room hears nothing, unless a revoke of ours is recent (R5)
                revoked = view.revoked.get(room)
                recent = revoked is not None and moment - revoked.at < REPEAT_ANNOUNCED
                changed_at = flagged or (revoked.at if revoked is not None else moment)
                return Done(replace(change, announce=recent or attempts.tried, changed_at=changed_at))
            return Commit([*operations, _presence_touch(view, name, attempts)], change)

        return await self._counted(self.store.writes.write(partition, step, action="revoke a room"))

    async def standing(self, user_name: str) -> Standing:
        """Return the user's rooms, whether they are blocked and their revoked rooms: one query of their partition
        (which also tells the connections' call budgets: budget B1)."""
        view = await self.store.read_user(user_key(user_name))
        return Standing(frozenset(view.rooms), view.blocked, frozenset(view.revoked.keys() - view.rooms.keys()))

    async def members(
        self, room: str, *, limit: int = 100, cursor: str | None = None, now: datetime | None = None
    ) -> MembersPage:
        """Return a page of a room's members in key order, each with their presence now (R1: verified); a stale row
        deleted on the way corrects the room's tally: the page holds the corrected counts, to announce."""
        page = await self._members_page(parse_room(room), limit=check_limit(limit), cursor=cursor, now=now)
        return replace(page, tallies=tuple(self.index.changes))

    async def _members_page(self, room: str, *, limit: int, cursor: str | None, now: datetime | None) -> MembersPage:
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
        # Since its last join or leave (touched_at): a leave's flag stays for its repeat (R5) until then.
        if moment - indexed.touched_at >= STALE_INDEX_ROW and indexed.etag is not None:
            await self.index.settle(room, indexed, member=False, pair=None)

    def _change(
        self, view: UserView, name: str, room: str, *, joined: bool, moment: datetime, lapsed_too: bool = False
    ) -> RoomChange:
        rows = view.rows.values() if lapsed_too else view.live(self.store.lease, now=moment)
        rows = [row for row in rows if row.ended_at is None]  # closed: a grace holds it for presence only
        pair = view.presence.announced_as(name, rooms=(room,))
        return RoomChange(name, room, joined, tuple(row.connection_id for row in rows), moment, pair)


async def settle_revocations(store: ConnectionStore, view: UserView, *, gone: set[str]) -> list[tuple[str, str]]:
    """The sweep's step on a user's revocations (R4): return (connection id, room) for each connection that may
    still be in a revoked room's group (not among the `gone` row keys the sweep deleted), and delete, on their ETags,
    the revocations no such connection is left for; best effort."""
    lingering = [(c, room) for c, room in view.lingering() if connection_key(c) not in gone]
    still_held = {room for _, room in lingering}
    for mark in [mark for room, mark in view.revoked.items() if room not in still_held]:
        spent = delete(view.partition, revoked_key(mark.room), etag=mark.etag)
        try:
            await store.table.write(spent, action="settle a revoke")
        except StorageError as error:  # changed since (a join, a grant) or storage failed: the next visit
            logger.info("a revocation stays for the next visit: %s", error)
    return lingering


async def _policy_admits(policy: AccessPolicy, name: str, room: str, claims: Claims | None) -> bool:
    """Whether the app's policy admits the user to the room (fail closed: `mapping.rooms.policy`)."""
    return await asked(policy.may_join(name, room, dict(claims or {})), what="may_join") is True


def _check_not_blocked_or_closed(view: UserView, room: str, *, admitted: bool) -> None:
    """Raise RefusedError for a blocked user, or one the room does not admit (R4)."""
    if view.blocked:
        raise RefusedError("this user is blocked", room=room)
    if not admitted:
        raise RefusedError("this room is closed to you", room=room, refused=True)


async def _anyone(view: UserView) -> None:
    """A grant's admission: a server's call may make anyone a member."""


def _presence_touch(view: UserView, name: str, attempts: Attempts) -> Operation:
    """The presence row's write that makes a membership change conditional on `view` (R2): its state unchanged."""
    return presence_write(view.partition, view.presence, writer=attempts.writer, user_name=name)
