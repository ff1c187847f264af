"""The connection rows: one per SignalR connection, in the partition of its user (azure-data-tables, async).

Callers see ConnectionEntity values, presence changes and typed errors only; the table layer
(`mapping.storage.table`) holds the client and translates Azure errors. Every row write follows the expiry
index's rule (`mapping.presence.expiry`, E1: the index entry first) and the presence protocol's
(`mapping.presence.state`, P2: one query reads the user's partition, rows, presence row and room
memberships, and one transaction conditional on that read changes a row and decides presence
together; with presence events off it decides nothing, but still serialises connects with joins).

Table requests per event: connect 3 (read, index entry, transaction), disconnect 2 (read,
transaction; 1 with presence events off), setStatus 3, a client message 0-2 (refreshes at most once
per quarter lease: index entry, row; a connection this instance has not refreshed within half a
lease reads its user first, as a lapsed lease made live again is a presence change).

The events' write loop is `mapping.presence.write_loop`, the readers `mapping.presence.readers`, the sweep's step on one
user `mapping.presence.settle`, and what an instance remembers of its refreshes `mapping.presence.lease`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from mapping.errors import RowChangedError
from mapping.keys import BLOCKED_ROW, connection_key, normalize_user_name, user_key
from mapping.presence import readers
from mapping.presence.expiry import ExpiryIndex
from mapping.presence.feed import NO_FEED, UNQUEUED, Feed, Sender
from mapping.presence.lease import Lease, RefreshMemory
from mapping.presence.readers import UserPresence, UsersPage
from mapping.presence.rows import Clock, ConnectionEntity, status_fields, utc_now
from mapping.presence.state import PresenceChange, decide, parse_status, presence_write
from mapping.presence.user_view import UserView
from mapping.presence.write_loop import Attempts, Commit, Done, RowWrite, UserWrites, Written, write_live_row
from mapping.settings import Settings
from mapping.storage.table import Table, create, delete, merge, upsert


class ConnectionProbe(Protocol):
    """The service's word on one connection, for a call from a connection that has no row (its `connected` failed or
    is late): True, it is open; False, it is gone; None, nobody can say."""

    async def alive(self, hub: str, connection_id: str) -> bool | None:
        """Return whether the service has the connection open (None: unknown)."""
        ...


class _Unprobed:
    """No service to ask (the store alone, tests): nobody can say."""

    async def alive(self, hub: str, connection_id: str) -> bool | None:
        """Return None."""
        return None


UNPROBED = _Unprobed()

_ROWS_A_TRANSACTION = 99  # and the presence row: a transaction takes at most 100 operations


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    """What connecting did: the row written, and the presence change to announce, if any."""

    entity: ConnectionEntity
    presence: PresenceChange | None = None
    rooms: tuple[str, ...] = ()  # the user's rooms, whose groups the new connection joins
    blocked: bool = False  # the user is blocked: nothing was written, the connection is to be closed
    over_cap: bool = False  # the user has USER_MAX_CONNECTIONS live connections: nothing written, to be closed
    # (connection id, room) of the user's older connections a revoked room's group may still hold (rooms R4)
    lingering: tuple[tuple[str, str], ...] = ()

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
    unchanged: bool = False  # a status as it was, with a fresh lease: nothing written, the caller alone is answered


class ConnectionStore:
    """The user -> connections map in one Azure table; one instance (and one client) per process."""

    def __init__(self, settings: Settings, *, clock: Clock = utc_now, **table_options: Any) -> None:
        self.settings = settings
        self.clock = clock
        self.table = Table(settings, **table_options)
        self.lease = Lease.of(settings)
        self.index = ExpiryIndex(self.table, width=self.lease.bucket_width, shards=settings.index_shards)
        self.writes = UserWrites(self.table, self.index, self.lease, settings, clock=clock)  # the one write loop
        self.turns = self.writes.turns  # this instance's events of one user, one at a time
        self.refreshes = RefreshMemory()  # what this instance refreshed, and when
        self.probe: ConnectionProbe = UNPROBED  # the service's word on a connection (mapping.functions.runtime sets it)
        self.feed: Feed = NO_FEED  # the presence feed for backends (mapping.functions.runtime sets it when it is on)
        # The delayed queue big rooms' flushes wait on (mapping.rooms.batch); without one no room is batched.
        self.later: Sender = UNQUEUED

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
        if outcome.blocked or outcome.over_cap:
            return outcome
        self.refreshes.remember(entity.partition_key, entity.row_key, entity.last_seen)
        return outcome if self.settings.presence_events else replace(outcome, presence=None)

    async def disconnect(self, user_name: str, connection_id: str, *, now: datetime | None = None) -> DisconnectOutcome:
        """Delete a connection's row (a missing row is fine); say whether that left the user offline."""
        name = normalize_user_name(user_name)
        partition, row = user_key(name), connection_key(connection_id)
        self.refreshes.forget(partition, row)
        if not self.settings.presence_events:
            return DisconnectOutcome(name, removed=await self._delete_reporting(partition, row))
        return await self._end_rows(name, [row], moment=self.now(now), action="disconnect")

    async def disconnect_all(
        self, user_name: str, connection_ids: list[str], *, now: datetime | None = None, view: UserView | None = None
    ) -> DisconnectOutcome:
        """Delete the rows of many connections of one user with one presence decision (an operator's disconnect: no
        grace, one announcement), 99 rows a transaction, deciding first on `view` when given (the user's partition
        as just read); say whether that left the user offline."""
        name = normalize_user_name(user_name)
        rows = sorted({connection_key(connection) for connection in connection_ids})
        for row in rows:
            self.refreshes.forget(user_key(name), row)
        outcome = DisconnectOutcome(name, removed=False)
        for start in range(0, max(len(rows), 1), _ROWS_A_TRANSACTION):
            chunk = rows[start : start + _ROWS_A_TRANSACTION]
            if not self.settings.presence_events:
                removed = [await self._delete_reporting(user_key(name), row) for row in chunk]
                outcome = DisconnectOutcome(name, removed=outcome.removed or any(removed))
                continue
            ended = await self._end_rows(name, chunk, moment=self.now(now), action="disconnect a user", view=view)
            view = None  # the next chunk reads again
            outcome = DisconnectOutcome(name, outcome.removed or ended.removed, ended.presence or outcome.presence)
        return outcome

    async def _end_rows(
        self, name: str, rows: list[str], *, moment: datetime, action: str, view: UserView | None = None
    ) -> DisconnectOutcome:
        """Delete a user's `rows` (those still there) in one transaction with the presence decision (P2)."""
        partition = user_key(name)

        async def step(view: UserView, attempts: Attempts) -> Done[DisconnectOutcome] | Commit[DisconnectOutcome]:
            if attempts.mine(view):
                return Done(DisconnectOutcome(name, True, view.presence.announced_as(name, rooms=view.rooms)))
            present = [row for row in rows if row in view.rows]
            if not present:
                # Gone: a repeated event, or our own delete that committed and was answered with an error.
                return Done(DisconnectOutcome(name, attempts.tried, attempts.announce(view, name, None)))
            after = {key: entity for key, entity in view.rows.items() if key not in present}
            state = view.state(self.lease, now=moment, ended_at=moment, rows=after)
            version = decide(view.presence, state, now=moment)
            operations = [
                *(delete(partition, row) for row in present),
                presence_write(
                    partition, view.presence, writer=attempts.writer, user_name=name, state=state, version=version
                ),
            ]
            change = PresenceChange.of(name, state, version, rooms=view.rooms) if version is not None else None
            outcome = DisconnectOutcome(name, True, attempts.announce(view, name, change))
            return Commit(operations, outcome, deciding=version is not None)

        return await self.writes.write(partition, step, action=action, view=view)

    async def touch(self, user_name: str, connection_id: str, *, now: datetime | None = None) -> TouchOutcome:
        """Refresh a connection's `LastSeen` (at most once per quarter lease); a lapsed lease made live is announced."""
        partition, row = user_key(user_name), connection_key(connection_id)
        moment = self.now(now)
        last = self.refreshes.last(partition, row)
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
        client that retries after an error is sure to hear the outcome; but a status the connection has already,
        set again within a quarter lease, writes nothing and is answered to the caller alone (`unchanged`): a lost
        announcement of the first is repeated by the sweep (P5).
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

        riding: dict[str, Any] = {}  # the call budget's level, published with the row's write (budget B2)

        def row_write(existing: ConnectionEntity | None, bucket: str, view: UserView) -> RowWrite | None:
            if existing is None or view.blocked:
                return None  # not mapped (or swept), or blocked: a status needs a connection to hold it
            if (
                existing.status == text
                and view.presence.status == text  # and the user's as recorded: another tab's may be the latest
                and moment - existing.last_seen < self.lease.refresh_every
            ):
                return RowWrite(existing, [])  # the status it has, and a fresh lease: only the caller hears (R5)
            patch = {
                "PartitionKey": partition,
                "RowKey": row,
                "LastSeen": moment,
                "IndexBucket": bucket,
                **status_fields(text, moment),
            }
            riding.clear()
            riding.update(self.writes.budgets.riding(partition, row, now=moment))
            patch.update(riding)
            stored = replace(existing, last_seen=moment, index_bucket=bucket, status=text, status_at=moment)
            return RowWrite(stored, [merge(patch, etag=existing.etag)])

        written = await write_live_row(self.writes, partition, row, name, moment, row_write, action="set a status")
        if written.entity is None:
            return TouchOutcome(False, written.change)
        recorded = written.view.presence.announced_as(name, rooms=written.view.rooms)
        if written.unchanged:  # nothing written: the status it had
            return TouchOutcome(True, recorded, unchanged=True)
        self.writes.budgets.rode(partition, row, riding)
        self.refreshes.remember(partition, row, moment)
        presence = written.change or recorded
        return TouchOutcome(True, presence, self._rooms_if_revived(written, row, moment))

    async def set_blocked(self, user_name: str, blocked: bool) -> bool:
        """Block or unblock a user (the block row, committed on the presence row's ETag, so a connect racing it is
        decided on one side of it); return whether this call changed it."""
        name = normalize_user_name(user_name)
        partition = user_key(name)

        async def step(view: UserView, attempts: Attempts) -> Done[bool] | Commit[bool]:
            if view.blocked == blocked:
                return Done(attempts.tried)  # as wanted (an attempt of ours answered with an error may have done it)
            row = {"PartitionKey": partition, "RowKey": BLOCKED_ROW, "BlockedAt": self.now()}
            change = upsert(row) if blocked else delete(partition, BLOCKED_ROW)
            touch = presence_write(partition, view.presence, writer=attempts.writer, user_name=name)
            return Commit([change, touch], True)

        return await self.writes.write(partition, step, action="block" if blocked else "unblock")

    async def is_blocked(self, user_name: str) -> bool:
        """Return whether an operator blocked the user (one point query of the block row)."""
        rows = await self.table.query(
            "PartitionKey eq @pk and RowKey eq @rk",
            {"pk": user_key(user_name), "rk": BLOCKED_ROW},
            action="read a block",
            select=["RowKey"],
        )
        return bool(rows)

    # -- readers (mapping.presence.readers, mapping.presence.user_view) ---------------------------------------------

    async def presence_of(self, user_name: str, *, now: datetime | None = None) -> UserPresence:
        """Return a user's presence as their rows give it now (one query), with their connections and rooms."""
        return await readers.presence_of(self.table, self.lease, user_name, now=self.now(now))

    async def connections_of(self, user_name: str, *, now: datetime | None = None) -> list[ConnectionEntity]:
        """Return the live connections of a user (case-insensitive), oldest first."""
        return await readers.connections_of(self.table, self.lease, user_name, now=self.now(now))

    async def online_users(
        self, *, limit: int = 100, cursor: str | None = None, now: datetime | None = None
    ) -> UsersPage:
        """Return a page of users with live connections, in key order, and the cursor of the next page."""
        return await readers.online_users(self.table, self.lease, limit=limit, cursor=cursor, now=self.now(now))

    async def read_user(self, partition: str) -> UserView:
        """Read a user's connection rows, presence row and memberships with one query (P2)."""
        return await self.writes.read_user(partition)

    async def close(self) -> None:
        """Close the table client and any credential; the next call opens them again."""
        await self.table.close()

    def now(self, now: datetime | None = None) -> datetime:
        """Return `now` in UTC when given (callers pin the time), else the store's clock's current time."""
        return self.writes.now(now)

    def bucket_width(self) -> timedelta:
        """Return the width of the expiry index's time buckets."""
        return self.lease.bucket_width

    # -- internals ------------------------------------------------------------------------------

    async def _connect_deciding(self, entity: ConnectionEntity) -> ConnectOutcome:
        cap = self.settings.user_max_connections

        def over_cap(existing: ConnectionEntity | None, view: UserView) -> bool:
            return existing is None and cap is not None and len(view.live(self.lease, now=entity.last_seen)) >= cap

        def row_write(existing: ConnectionEntity | None, bucket: str, view: UserView) -> RowWrite | None:
            if view.blocked or over_cap(existing, view):
                return None  # blocked by an operator, or as many connections as USER_MAX_CONNECTIONS: not mapped
            if existing is None:
                # A connection that opens while a grace holds an ended one takes its place (a page reload):
                # its status and count carry over, so presence does not change (mapping.presence.grace, G1).
                ended = view.adoptable(self.lease, now=entity.last_seen)
                stored = replace(entity, index_bucket=bucket)
                if ended is None:
                    return RowWrite(stored, [create(stored.to_table())])
                stored = replace(stored, status=ended.status, status_at=ended.status_at, adopted=ended.row_key)
                return RowWrite(
                    stored,
                    [create(stored.to_table()), delete(view.partition, ended.row_key, etag=ended.etag)],
                    ended.row_key,
                )
            # A repeated connected event keeps the first ConnectedAt (and any status set since).
            stored = replace(
                existing, last_seen=entity.last_seen, user_agent=entity.user_agent, index_bucket=bucket, etag=None
            )
            return RowWrite(stored, [merge(_refresh_fields(stored), etag=existing.etag)])

        written = await write_live_row(
            self.writes,
            entity.partition_key,
            entity.row_key,
            entity.user_name,
            entity.last_seen,
            row_write,
            action="connect",
        )
        if written.view.blocked:
            return ConnectOutcome(entity, blocked=True)
        if written.entity is None and over_cap(None, written.view):
            return ConnectOutcome(entity, over_cap=True)
        view = written.view
        return ConnectOutcome(
            written.entity or entity, written.change, tuple(sorted(view.rooms)), lingering=tuple(view.lingering())
        )

    async def _refresh_deciding(self, partition: str, row: str, name: str, moment: datetime) -> TouchOutcome:
        def row_write(existing: ConnectionEntity | None, bucket: str, view: UserView) -> RowWrite | None:
            if existing is None or view.blocked:
                return None  # gone (a refresh never brings a row back), or blocked (never revived)
            patch = {"PartitionKey": partition, "RowKey": row, "LastSeen": moment, "IndexBucket": bucket}
            return RowWrite(
                replace(existing, last_seen=moment, index_bucket=bucket), [merge(patch, etag=existing.etag)]
            )

        written = await write_live_row(self.writes, partition, row, name, moment, row_write, action="refresh")
        if written.entity is not None:
            self.refreshes.remember(partition, row, moment)
        else:
            self.refreshes.forget(partition, row)
        return TouchOutcome(written.entity is not None, written.change, self._rooms_if_revived(written, row, moment))

    def _rooms_if_revived(self, written: Written, row: str, moment: datetime) -> tuple[str, ...]:
        """Return the user's rooms when the write made a lapsed lease live again, else nothing."""
        before = written.view.rows.get(row)
        if written.entity is None or before is None or self.lease.is_live(before.last_seen, moment):
            return ()
        return tuple(sorted(written.view.rooms))

    async def _refresh_blindly(self, partition: str, row: str, moment: datetime) -> TouchOutcome:
        bucket = await self.index.write(partition, row, moment)
        patch = {"PartitionKey": partition, "RowKey": row, "LastSeen": moment, "IndexBucket": bucket}
        try:
            # No ETag: `If-Match: *`, so a missing row fails and never reappears.
            await self.table.write(merge(patch), action="touch")
        except RowChangedError:
            self.refreshes.forget(partition, row)
            return TouchOutcome(False)
        self.refreshes.remember(partition, row, moment)
        return TouchOutcome(True)

    async def _delete_reporting(self, partition: str, row: str) -> bool:
        # Presence off: a transaction, unlike delete_entity, tells whether the row existed.
        try:
            await self.writes.transact([delete(partition, row)], action="disconnect")
        except RowChangedError:
            return False
        return True


def _refresh_fields(entity: ConnectionEntity) -> dict[str, Any]:
    return {
        "PartitionKey": entity.partition_key,
        "RowKey": entity.row_key,
        "LastSeen": entity.last_seen,
        "UserAgent": entity.user_agent,
        **({"IndexBucket": entity.index_bucket} if entity.index_bucket else {}),
    }
