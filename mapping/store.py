"""The connection rows: one per SignalR connection, in the partition of its user (azure-data-tables, async).

Callers see ConnectionEntity values, presence changes and typed errors only; the table layer
(`mapping.table`) holds the client and translates Azure errors. Every row write follows the expiry
index's rule (`mapping.expiry`, E1: the index entry first) and the presence protocol's
(`mapping.presence`, P2: one query reads the user's partition, rows, presence row and room
memberships, and one transaction conditional on that read changes a row and decides presence
together; with presence events off it decides nothing, but still serialises connects with joins).

Table requests per event: connect 3 (read, index entry, transaction), disconnect 2 (read,
transaction; 1 with presence events off), setStatus 3, a client message 0-2 (refreshes at most once
per quarter lease: index entry, row; a connection this instance has not refreshed within half a
lease reads its user first, as a lapsed lease made live again is a presence change).
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from mapping.clock import Clock, moment_of, utc_now
from mapping.contention import Attempts, UserTurns, repeat
from mapping.cursor import check_limit, decode_cursor, encode_cursor
from mapping.entity import ConnectionEntity, status_fields
from mapping.errors import BatchRejectedError, ConflictError, RowChangedError, StorageError
from mapping.expiry import ExpiryIndex
from mapping.grace import adoptable
from mapping.keys import (
    BOOKKEEPING_PREFIX,
    connection_key,
    normalize_user_name,
    unescape_key,
    user_key,
)
from mapping.lease import Lease
from mapping.membership import Membership, is_membership_key
from mapping.presence import (
    PRESENCE_ROW,
    PresenceChange,
    PresenceState,
    Recorded,
    decide,
    derive,
    presence_write,
    recorded_from,
)
from mapping.settings import Settings
from mapping.status import parse_status
from mapping.table import MAX_BATCH, Operation, Table, create, delete, etag_of, merge

logger = logging.getLogger(__name__)

_REFRESH_MEMORY = 100_000  # connections whose last refresh time an instance remembers


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    """What connecting did: the row written, and the presence change to announce, if any."""

    entity: ConnectionEntity
    presence: PresenceChange | None = None
    rooms: tuple[str, ...] = ()  # the user's rooms, whose groups the new connection joins

    @property
    def came_online(self) -> bool:
        """Return whether this connect announces the user online with their first live connection."""
        return self.presence is not None and self.presence.state.online and self.presence.state.connections == 1


@dataclass(frozen=True, slots=True)
class DisconnectOutcome:
    """What disconnecting did: the user's name (normalised), whether a row went, and the presence change."""

    user_name: str
    removed: bool
    presence: PresenceChange | None = None

    @property
    def went_offline(self) -> bool:
        """Return whether this disconnect announces the user offline."""
        return self.presence is not None and not self.presence.state.online


@dataclass(frozen=True, slots=True)
class TouchOutcome:
    """What a client message's write did (a refresh, a status): whether the row is there, what to announce, and,
    when it made a lapsed lease live again, the user's rooms (the connection may have missed a join: rooms R3)."""

    found: bool
    presence: PresenceChange | None = None
    rooms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OnlineUser:
    """A user with at least one live connection."""

    user: str
    connections: int


@dataclass(frozen=True, slots=True)
class UsersPage:
    """One page of online users, and the cursor of the next page (None on the last)."""

    users: list[OnlineUser]
    next: str | None


@dataclass(frozen=True, slots=True)
class UserView:
    """One user's partition as read by one query: connection rows by RowKey, and the recorded presence."""

    partition: str
    rows: dict[str, ConnectionEntity] = field(default_factory=dict)
    presence: Recorded = field(default_factory=Recorded)
    rooms: dict[str, Membership] = field(default_factory=dict)  # the user's rooms, by name

    def name(self) -> str:
        """Return the user's name as received: from a row, else as last written to the presence row."""
        for row in self.rows.values():
            if row.user_name:
                return row.user_name
        return self.presence.user_name or unescape_key(self.partition)

    def live(self, lease: Lease, *, now: datetime) -> list[ConnectionEntity]:
        """Return the open connections holding a live lease at `now`, oldest first (not those a grace holds)."""
        rows = [row for row in self.rows.values() if lease.is_live(row.last_seen, now) and row.ended_at is None]
        return sorted(rows, key=lambda row: (row.connected_at, row.connection_id))

    def state(
        self, lease: Lease, *, now: datetime, ended_at: datetime | None = None, rows: Mapping[str, ConnectionEntity]
    ) -> PresenceState:
        """Return the presence `rows` (this partition's rows after a change) give at `now` (P3)."""
        return derive(rows.values(), lease=lease, now=now, recorded=self.presence, ended_at=ended_at)

    def state_now(self, lease: Lease, *, now: datetime) -> PresenceState:
        """Return the presence the rows give at `now`, last seen at the latest LastSeen if not yet recorded."""
        ended_at = max((row.last_seen for row in self.rows.values()), default=None)
        return self.state(lease, now=now, ended_at=ended_at, rows=self.rows)


@dataclass(frozen=True, slots=True)
class UserPresence:
    """What `GET /api/users/{user}` tells: the user's presence state, live connections and rooms."""

    user: str
    state: PresenceState
    connections: list[ConnectionEntity]
    rooms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Settled:
    """What settling a user did (the sweep): rows deleted and refreshed, and the presence to announce."""

    deleted: int = 0
    refreshed: int = 0
    change: PresenceChange | None = None
    online: bool = False
    recorded: Recorded = field(default_factory=Recorded)


class ConnectionStore:
    """The user -> connections map in one Azure table; one instance (and one client) per process."""

    def __init__(self, settings: Settings, *, clock: Clock = utc_now, **table_options: Any) -> None:
        self.settings = settings
        self.clock = clock
        self.table = Table(settings, **table_options)
        self.lease = Lease.of(settings)
        self.index = ExpiryIndex(self.table, width=self.lease.bucket_width, shards=settings.index_shards)
        self._refreshed: OrderedDict[tuple[str, str], datetime] = OrderedDict()
        self.turns = UserTurns()  # this instance's events of one user, one at a time (mapping.contention)

    # -- connection events ----------------------------------------------------------------------

    async def connect(
        self,
        user_name: str,
        connection_id: str,
        *,
        hub: str | None = None,
        user_agent: str = "",
        now: datetime | None = None,
    ) -> ConnectOutcome:
        """Write the row of a connection that opened; say whether the user came online with it."""
        entity = ConnectionEntity.new(
            user_name, connection_id, hub=hub or self.settings.hub, user_agent=user_agent, now=self.now(now)
        )
        # With presence events off too: the write is conditional on the user's read, so a join racing this
        # connect sees the new connection or is seen by it (rooms R2).
        outcome = await self._connect_deciding(entity)
        self._remember_refresh(entity.partition_key, entity.row_key, entity.last_seen)
        return outcome if self.settings.presence_events else replace(outcome, presence=None)

    async def disconnect(self, user_name: str, connection_id: str, *, now: datetime | None = None) -> DisconnectOutcome:
        """Delete a connection's row (a missing row is fine); say whether that left the user offline."""
        name = normalize_user_name(user_name)
        partition, row = user_key(name), connection_key(connection_id)
        self._refreshed.pop((partition, row), None)
        if not self.settings.presence_events:
            return DisconnectOutcome(name, removed=await self._delete_reporting(partition, row))
        moment = self.now(now)
        writer = uuid.uuid4().hex
        attempts = Attempts()
        tried = False
        async with self.turns.turn(partition):
            for _attempt in attempts.tries():
                view = await self.read_user(partition)
                attempts.read(view)
                if view.presence.writer == writer:
                    return DisconnectOutcome(
                        name, removed=True, presence=view.presence.announced_as(name, rooms=view.rooms)
                    )
                if row not in view.rows:
                    # Gone: a repeated event, or our own delete that committed and was answered with an error.
                    return DisconnectOutcome(name, removed=tried, presence=attempts.announce(view, name, None))
                after = {key: entity for key, entity in view.rows.items() if key != row}
                state = view.state(self.lease, now=moment, ended_at=moment, rows=after)
                version = decide(view.presence, state, now=moment)
                operations = [
                    delete(partition, row),
                    presence_write(
                        partition, view.presence, writer=writer, user_name=name, state=state, version=version
                    ),
                ]
                tried = True
                try:
                    await self.transact(operations, action="disconnect", singly=attempts.singly)
                except ConflictError:
                    await attempts.failed(view, _attempt, deciding=version is not None)
                    continue
                change = PresenceChange.of(name, state, version, rooms=view.rooms) if version is not None else None
                return DisconnectOutcome(name, removed=True, presence=attempts.announce(view, name, change))
            raise StorageError("disconnect: the user's connections kept changing; try again")

    async def touch(self, user_name: str, connection_id: str, *, now: datetime | None = None) -> TouchOutcome:
        """Refresh a connection's `LastSeen` (at most once per quarter lease); a lapsed lease made live is announced."""
        partition, row = user_key(user_name), connection_key(connection_id)
        moment = self.now(now)
        last = self._refreshed.get((partition, row))
        if last is not None and moment - last < self.lease.refresh_every:
            return TouchOutcome(True)
        if not self.settings.presence_events or (last is not None and moment - last < self.lease.surely_live_within):
            # This instance refreshed the row less than half a lease ago: it is live for every reader,
            # so moving LastSeen on changes no presence decision.
            return await self._refresh_blindly(partition, row, moment)
        return await self._refresh_deciding(partition, row, normalize_user_name(user_name), moment)

    async def set_status(
        self, user_name: str, connection_id: str, status: object, *, now: datetime | None = None
    ) -> TouchOutcome:
        """Record a connection's status (None or "" clears it) and refresh its lease; say what to announce.

        With presence events on, the user's presence is announced even when unchanged (a repeat), so a
        client that retries after an error is sure to hear the outcome.
        """
        text = parse_status(status)
        name = normalize_user_name(user_name)
        partition, row = user_key(name), connection_key(connection_id)
        moment = self.now(now)
        if not self.settings.presence_events:
            patch = {"PartitionKey": partition, "RowKey": row, **status_fields(text, moment)}
            try:
                await self.table.write(merge(patch), action="set a status")
            except RowChangedError:
                return TouchOutcome(False)
            return TouchOutcome(True)

        def row_write(existing: ConnectionEntity | None, bucket: str, view: UserView) -> _RowWrite | None:
            if existing is None:
                return None  # not mapped (or swept): a status needs a connection to hold it
            patch = {
                "PartitionKey": partition,
                "RowKey": row,
                "LastSeen": moment,
                "IndexBucket": bucket,
                **status_fields(text, moment),
            }
            stored = replace(existing, last_seen=moment, index_bucket=bucket, status=text, status_at=moment)
            return _RowWrite(stored, [merge(patch, etag=existing.etag)])

        written = await self._write_live_row(partition, row, name, moment, row_write, action="set a status")
        if written.entity is None:
            return TouchOutcome(False, written.change)
        self._remember_refresh(partition, row, moment)
        presence = written.change or written.view.presence.announced_as(name, rooms=written.view.rooms)
        return TouchOutcome(True, presence, self._rooms_if_revived(written, row, moment))

    # -- readers --------------------------------------------------------------------------------

    async def presence_of(self, user_name: str, *, now: datetime | None = None) -> UserPresence:
        """Return a user's presence as their rows give it now (one query), with their connections and rooms."""
        name = normalize_user_name(user_name)
        moment = self.now(now)
        view = await self.read_user(user_key(name))
        return UserPresence(
            name, view.state_now(self.lease, now=moment), view.live(self.lease, now=moment), tuple(sorted(view.rooms))
        )

    async def connections_of(self, user_name: str, *, now: datetime | None = None) -> list[ConnectionEntity]:
        """Return the live connections of a user (case-insensitive), oldest first."""
        rows = await self.table.query(
            "PartitionKey eq @pk and LastSeen gt @cutoff",
            {"pk": user_key(user_name), "cutoff": self._cutoff(now)},
            action="read connections",
        )
        entities = [ConnectionEntity.from_table(row, etag=etag_of(row)) for row in rows]
        entities = [entity for entity in entities if entity.ended_at is None]  # closed, held by a grace
        return sorted(entities, key=lambda entity: (entity.connected_at, entity.connection_id))

    async def online_users(
        self, *, limit: int = 100, cursor: str | None = None, now: datetime | None = None
    ) -> UsersPage:
        """Return a page of users with live connections, in key order, and the cursor of the next page."""
        check_limit(limit)
        after = decode_cursor(cursor) if cursor else None
        query = "LastSeen gt @cutoff" if after is None else "PartitionKey gt @after and LastSeen gt @cutoff"
        parameters: dict[str, Any] = {"cutoff": self._cutoff(now)}
        if after is not None:
            parameters["after"] = after
        users: list[OnlineUser] = []
        keys: list[str] = []
        pages = self.table.pages(query, parameters, action="list online users", select=["PartitionKey", "UserName"])
        async for page in pages:
            for row in page:
                if keys and keys[-1] == row["PartitionKey"]:
                    users[-1] = OnlineUser(users[-1].user, users[-1].connections + 1)
                    continue
                if len(users) == limit:
                    return UsersPage(users, next=encode_cursor(keys[-1]))
                keys.append(row["PartitionKey"])
                users.append(OnlineUser(str(row.get("UserName") or ""), 1))
        return UsersPage(users, next=None)

    async def read_user(self, partition: str) -> UserView:
        """Read a user's connection rows and presence row with one query (P2)."""
        rows: dict[str, ConnectionEntity] = {}
        rooms: dict[str, Membership] = {}
        presence = Recorded()
        for row in await self.table.query("PartitionKey eq @pk", {"pk": partition}, action="read a user"):
            key = str(row["RowKey"])
            if key == PRESENCE_ROW:
                presence = recorded_from(row, etag=etag_of(row))
            elif is_membership_key(key):
                membership = Membership.from_table(row, etag=etag_of(row))
                rooms[membership.room] = membership
            elif not key.startswith(BOOKKEEPING_PREFIX):
                rows[key] = ConnectionEntity.from_table(row, etag=etag_of(row))
        return UserView(partition, rows, presence, rooms)

    # -- the sweep's step -----------------------------------------------------------------------

    async def settle(
        self,
        view: UserView,
        *,
        user_name: str,
        gone: Mapping[str, str],
        alive: Mapping[str, str],
        now: datetime,
        gone_known_alive_until: datetime | None = None,
    ) -> Settled:
        """Delete the `gone` rows, refresh the `alive` ones (RowKey -> ETag judged) and decide the user's presence.

        Rows that changed since they were judged are left alone (their newer index entry covers them).
        A conflict reads the user again and applies what still holds (P2, P4). A user left offline was
        last seen at their rows' latest LastSeen, or `gone_known_alive_until` when the service vouched
        for the `gone` rows later than that (a reconciling sweep's listing).
        """
        writer = uuid.uuid4().hex
        attempts = Attempts()
        deciding = self.settings.presence_events
        async with self.turns.turn(view.partition):
            for _attempt in attempts.tries():
                attempts.read(view)
                if view.presence.writer == writer:
                    return Settled(
                        online=bool(view.presence.online), recorded=view.presence, change=repeat(view, user_name)
                    )
                doomed = [key for key, etag in gone.items() if key in view.rows and view.rows[key].etag == etag]
                renewed = [key for key, etag in alive.items() if key in view.rows and view.rows[key].etag == etag]
                after = {
                    key: replace(row, last_seen=now) if key in renewed else row
                    for key, row in view.rows.items()
                    if key not in doomed
                }
                ends = [row.ended_at or row.last_seen for row in view.rows.values()]  # a disconnect ends it
                if doomed and gone_known_alive_until is not None:
                    ends.append(gone_known_alive_until)
                state = view.state(self.lease, now=now, ended_at=max(ends, default=None), rows=after)
                version = decide(view.presence, state, now=now) if deciding else None
                try:
                    await self._apply(
                        view,
                        doomed,
                        renewed,
                        name=user_name,
                        state=state,
                        version=version,
                        writer=writer,
                        now=now,
                        singly=attempts.singly,
                    )
                except ConflictError:
                    await attempts.failed(view, _attempt, deciding=version is not None)
                    view = await self.read_user(view.partition)
                    continue
                change = PresenceChange.of(user_name, state, version, rooms=view.rooms) if version is not None else None
                announced = attempts.announce(view, user_name, change)
                return Settled(len(doomed), len(renewed), announced, state.online, view.presence)
            raise StorageError("sweep: the user's connections kept changing; left for the next run")

    async def close(self) -> None:
        """Close the table client and any credential; the next call opens them again."""
        await self.table.close()

    def now(self, now: datetime | None = None) -> datetime:
        """Return `now` in UTC when given (callers pin the time), else the store's clock's current time."""
        return moment_of(now, self.clock)

    def bucket_width(self) -> timedelta:
        """Return the width of the expiry index's time buckets."""
        return self.lease.bucket_width

    # -- internals ------------------------------------------------------------------------------

    async def _connect_deciding(self, entity: ConnectionEntity) -> ConnectOutcome:
        def row_write(existing: ConnectionEntity | None, bucket: str, view: UserView) -> _RowWrite:
            if existing is None:
                # A connection that opens while a grace holds an ended one takes its place (a page reload):
                # its status and count carry over, so presence does not change (mapping.grace).
                ended = adoptable(view, self.lease, entity.last_seen)
                stored = replace(entity, index_bucket=bucket)
                if ended is None:
                    return _RowWrite(stored, [create(stored.to_table())])
                stored = replace(stored, status=ended.status, status_at=ended.status_at, adopted=ended.row_key)
                return _RowWrite(
                    stored,
                    [create(stored.to_table()), delete(view.partition, ended.row_key, etag=ended.etag)],
                    ended.row_key,
                )
            # A repeated connected event keeps the first ConnectedAt (and any status set since).
            stored = replace(
                existing, last_seen=entity.last_seen, user_agent=entity.user_agent, index_bucket=bucket, etag=None
            )
            return _RowWrite(stored, [merge(_refresh_fields(stored), etag=existing.etag)])

        written = await self._write_live_row(
            entity.partition_key, entity.row_key, entity.user_name, entity.last_seen, row_write, action="connect"
        )
        return ConnectOutcome(written.entity or entity, written.change, tuple(sorted(written.view.rooms)))

    async def _refresh_deciding(self, partition: str, row: str, name: str, moment: datetime) -> TouchOutcome:
        def row_write(existing: ConnectionEntity | None, bucket: str, view: UserView) -> _RowWrite | None:
            if existing is None:
                return None  # gone: a refresh never brings a row back
            patch = {"PartitionKey": partition, "RowKey": row, "LastSeen": moment, "IndexBucket": bucket}
            return _RowWrite(
                replace(existing, last_seen=moment, index_bucket=bucket), [merge(patch, etag=existing.etag)]
            )

        written = await self._write_live_row(partition, row, name, moment, row_write, action="refresh")
        if written.entity is not None:
            self._remember_refresh(partition, row, moment)
        else:
            self._refreshed.pop((partition, row), None)
        return TouchOutcome(written.entity is not None, written.change, self._rooms_if_revived(written, row, moment))

    def _rooms_if_revived(self, written: _Written, row: str, moment: datetime) -> tuple[str, ...]:
        """Return the user's rooms when the write made a lapsed lease live again, else nothing."""
        before = written.view.rows.get(row)
        if written.entity is None or before is None or self.lease.is_live(before.last_seen, moment):
            return ()
        return tuple(sorted(written.view.rooms))

    async def _write_live_row(
        self,
        partition: str,
        row: str,
        name: str,
        moment: datetime,
        row_write: Callable[[ConnectionEntity | None, str, UserView], _RowWrite | None],
        *,
        action: str,
    ) -> _Written:
        """Write a row live at `moment` (connect, revival, status) with the presence decision (P2-P4).

        `row_write` gives the row after the write and the write itself, or None to decline (the row being
        gone); the result says which row was written (None: declined), the change to announce, and the
        view the decision was made on.
        """
        writer = uuid.uuid4().hex
        attempts = Attempts()
        async with self.turns.turn(partition):
            for _attempt in attempts.tries():
                view = await self.read_user(partition)
                attempts.read(view)
                existing = view.rows.get(row)
                if view.presence.writer == writer:
                    return _Written(existing, view.presence.announced_as(name, rooms=view.rooms), view)
                planned = row_write(existing, self.index.bucket(moment, partition), view)
                if planned is None:
                    return _Written(None, attempts.announce(view, name, None), view)
                stored = planned.stored
                after = {key: entity for key, entity in view.rows.items() if key != planned.replaces}
                state = view.state(self.lease, now=moment, rows={**after, row: stored})
                version = decide(view.presence, state, now=moment) if self.settings.presence_events else None
                await self._entry_first(attempts, partition, row, moment, version=version)
                if existing is None:
                    attempts.pending = False  # our row is not there: no attempt of ours committed
                operations = [
                    *planned.operations,
                    presence_write(
                        partition, view.presence, writer=writer, user_name=name, state=state, version=version
                    ),
                ]
                try:
                    await self.transact(operations, action=action, singly=attempts.singly)
                except ConflictError:
                    await attempts.failed(view, _attempt, deciding=version is not None)
                    continue
                change = PresenceChange.of(name, state, version, rooms=view.rooms) if version is not None else None
                return _Written(stored, attempts.announce(view, name, change), view)
            raise StorageError(f"{action}: the user's connections kept changing; try again")

    async def _entry_first(
        self, attempts: Attempts, partition: str, row: str, moment: datetime, *, version: int | None
    ) -> None:
        """Write the row's index entry before the row write (E1): once, and again only to flag it (E5)."""
        flagged = version is not None
        if attempts.indexed is None or (flagged and not attempts.indexed):
            await self.index.write(partition, row, moment, announces=flagged)
            attempts.indexed = flagged

    async def _refresh_blindly(self, partition: str, row: str, moment: datetime) -> TouchOutcome:
        bucket = await self.index.write(partition, row, moment)
        patch = {"PartitionKey": partition, "RowKey": row, "LastSeen": moment, "IndexBucket": bucket}
        try:
            # No ETag: `If-Match: *`, so a missing row fails and never reappears.
            await self.table.write(merge(patch), action="touch")
        except RowChangedError:
            self._refreshed.pop((partition, row), None)
            return TouchOutcome(False)
        self._remember_refresh(partition, row, moment)
        return TouchOutcome(True)

    async def _apply(
        self,
        view: UserView,
        doomed: Sequence[str],
        renewed: Sequence[str],
        *,
        name: str,
        state: PresenceState,
        version: int | None,
        writer: str,
        now: datetime,
        singly: bool = False,
    ) -> None:
        """Write a sweep's verdicts on one user: index entries first (E1), then the rows with the presence write."""
        partition = view.partition
        bucket = self.index.bucket(now, partition)
        if renewed:
            await self.index.write_many(
                [self.index.entry(partition, key, now, announces=version is not None) for key in renewed]
            )
        operations: list[Operation] = [delete(partition, key, etag=view.rows[key].etag) for key in doomed]
        operations += [
            merge(
                {"PartitionKey": partition, "RowKey": key, "LastSeen": now, "IndexBucket": bucket},
                etag=view.rows[key].etag,
            )
            for key in renewed
        ]
        if self.settings.presence_events and (operations or version is not None):
            operations.append(
                presence_write(partition, view.presence, writer=writer, user_name=name, state=state, version=version)
            )
        # A user with more rows than one transaction holds: the presence write goes with the last chunk.
        chunks = [operations[i : i + MAX_BATCH] for i in range(0, len(operations), MAX_BATCH)]
        for chunk in chunks:
            await self.transact(chunk, action="sweep a user", singly=singly)

    async def transact(self, operations: Sequence[Operation], *, action: str, singly: bool = False) -> None:
        """Run a transaction, or one call at a time when the service refuses this partition's transactions."""
        if not singly:
            try:
                await self.table.transact(operations, action=action)
                return
            except BatchRejectedError:
                logger.info("%s: a transaction the service cannot carry; one call at a time", action)
        for operation in operations:
            await self.table.write(operation, action=action)

    async def _delete_reporting(self, partition: str, row: str) -> bool:
        # Presence off: a transaction, unlike delete_entity, tells whether the row existed.
        try:
            await self.transact([delete(partition, row)], action="disconnect")
        except RowChangedError:
            return False
        return True

    def _remember_refresh(self, partition: str, row: str, moment: datetime) -> None:
        self._refreshed[(partition, row)] = moment
        self._refreshed.move_to_end((partition, row))
        while len(self._refreshed) > _REFRESH_MEMORY:
            self._refreshed.popitem(last=False)

    def _cutoff(self, now: datetime | None) -> datetime:
        return self.lease.live_after(self.now(now))


@dataclass(frozen=True, slots=True)
class _RowWrite:
    """A row as it will be, the writes that make it so, and the ended row it replaces (a reload), if any."""

    stored: ConnectionEntity
    operations: list[Operation]
    replaces: str | None = None


@dataclass(frozen=True, slots=True)
class _Written:
    """What a row write with a presence decision did: the row written, the change, the view decided on."""

    entity: ConnectionEntity | None
    change: PresenceChange | None
    view: UserView


def _refresh_fields(entity: ConnectionEntity) -> dict[str, Any]:
    return {
        "PartitionKey": entity.partition_key,
        "RowKey": entity.row_key,
        "LastSeen": entity.last_seen,
        "UserAgent": entity.user_agent,
        **({"IndexBucket": entity.index_bucket} if entity.index_bucket else {}),
    }
