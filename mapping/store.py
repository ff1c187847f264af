"""The connection rows: one per SignalR connection, in the partition of its user (azure-data-tables, async).

Callers see ConnectionEntity values, presence changes and typed errors only; the table layer
(`mapping.table`) holds the client and translates Azure errors. Every row write follows the expiry
index's rule (`mapping.expiry`, E1: the index entry first) and, with presence events on, the
presence protocol's (`mapping.presence`, P2: one query reads the user's rows and presence row, one
transaction conditional on that read changes a row and decides presence together).

Table requests per event with presence on: first connect 3 (read, index entry, transaction), other
connects 3, disconnect 2 (read, transaction), a client message 0-2 (refreshes at most once per
quarter lease: index entry, row; a connection this instance has not refreshed within half a lease
reads its user first, as a lapsed lease made live again is a presence change).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from mapping.clock import Clock, moment_of, utc_now
from mapping.entity import ConnectionEntity
from mapping.errors import BatchRejectedError, ConflictError, InvalidRequestError, RowChangedError, StorageError
from mapping.expiry import ExpiryIndex
from mapping.keys import connection_key, normalize_user_name, user_key
from mapping.lease import Lease
from mapping.presence import PRESENCE_ROW, PresenceChange, Recorded, decide, presence_write, recorded_from
from mapping.settings import Settings
from mapping.table import MAX_BATCH, Operation, Table, create, delete, merge

logger = logging.getLogger(__name__)

MAX_PAGE_LIMIT = 1000
_CURSOR_PREFIX = "u1."
_REFRESH_MEMORY = 100_000  # connections whose last refresh time an instance remembers
_ATTEMPTS = 10  # reads and transactions per event before a conflict storm is reported
_BACKOFF_SECONDS = 0.005  # the first conflict waits up to this long, doubling with every further one


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    """What connecting did: the row written, and the presence change to announce, if any."""

    entity: ConnectionEntity
    presence: PresenceChange | None = None

    @property
    def came_online(self) -> bool:
        """Return whether this connect announces the user online."""
        return self.presence is not None and self.presence.online


@dataclass(frozen=True, slots=True)
class DisconnectOutcome:
    """What disconnecting did: the user's name (normalised), whether a row went, and the presence change."""

    user_name: str
    removed: bool
    presence: PresenceChange | None = None

    @property
    def went_offline(self) -> bool:
        """Return whether this disconnect announces the user offline."""
        return self.presence is not None and not self.presence.online


@dataclass(frozen=True, slots=True)
class TouchOutcome:
    """What a client message's refresh did: whether the row is there, and a presence change (a revival)."""

    found: bool
    presence: PresenceChange | None = None


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

    def online(self, lease: Lease, *, now: datetime, without: str | None = None) -> bool:
        """Return whether a row other than `without` holds a live lease at `now`."""
        return any(lease.is_live(row.last_seen, now) for key, row in self.rows.items() if key != without)


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
        self.index = ExpiryIndex(self.table, width=self.lease.bucket_width)
        self._refreshed: OrderedDict[tuple[str, str], datetime] = OrderedDict()

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
        if not self.settings.presence_events:
            bucket = await self.index.write(entity.partition_key, entity.row_key, entity.last_seen)
            entity = replace(entity, index_bucket=bucket)
            await self._create_or_refresh(entity)
            self._remember_refresh(entity.partition_key, entity.row_key, entity.last_seen)
            return ConnectOutcome(entity)
        outcome = await self._connect_deciding(entity)
        self._remember_refresh(entity.partition_key, entity.row_key, entity.last_seen)
        return outcome

    async def disconnect(self, user_name: str, connection_id: str, *, now: datetime | None = None) -> DisconnectOutcome:
        """Delete a connection's row (a missing row is fine); say whether that left the user offline."""
        name = normalize_user_name(user_name)
        partition, row = user_key(name), connection_key(connection_id)
        self._refreshed.pop((partition, row), None)
        if not self.settings.presence_events:
            return DisconnectOutcome(name, removed=await self._delete_reporting(partition, row))
        moment = self.now(now)
        writer = uuid.uuid4().hex
        attempts = _Attempts()
        tried = False
        for _attempt in range(_ATTEMPTS):
            view = await self.read_user(partition)
            attempts.read(view)
            if view.presence.writer == writer:
                return DisconnectOutcome(name, removed=True, presence=view.presence.announced_as(name))
            if row not in view.rows:
                # Gone: a repeated event, or our own delete that committed and was answered with an error.
                return DisconnectOutcome(name, removed=tried, presence=attempts.announce(view, name, None))
            online = view.online(self.lease, now=moment, without=row)
            version = decide(view.presence, online=online, now=moment)
            operations = [
                delete(partition, row),
                presence_write(partition, view.presence, writer=writer, user_name=name, online=online, version=version),
            ]
            tried = True
            try:
                await self._transact(operations, action="disconnect", singly=attempts.singly)
            except ConflictError:
                await attempts.failed(view, _attempt, deciding=version is not None)
                continue
            change = PresenceChange(name, online, version) if version is not None else None
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

    # -- readers --------------------------------------------------------------------------------

    async def connections_of(self, user_name: str, *, now: datetime | None = None) -> list[ConnectionEntity]:
        """Return the live connections of a user (case-insensitive), oldest first."""
        rows = await self.table.query(
            "PartitionKey eq @pk and LastSeen gt @cutoff",
            {"pk": user_key(user_name), "cutoff": self._cutoff(now)},
            action="read connections",
        )
        entities = [ConnectionEntity.from_table(row, etag=_etag(row)) for row in rows]
        return sorted(entities, key=lambda entity: (entity.connected_at, entity.connection_id))

    async def online_users(
        self, *, limit: int = 100, cursor: str | None = None, now: datetime | None = None
    ) -> UsersPage:
        """Return a page of users with live connections, in key order, and the cursor of the next page."""
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE_LIMIT}")
        after = _decode_cursor(cursor) if cursor else None
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
                    return UsersPage(users, next=_encode_cursor(keys[-1]))
                keys.append(row["PartitionKey"])
                users.append(OnlineUser(str(row.get("UserName") or ""), 1))
        return UsersPage(users, next=None)

    async def read_user(self, partition: str) -> UserView:
        """Read a user's connection rows and presence row with one query (P2)."""
        rows: dict[str, ConnectionEntity] = {}
        presence = Recorded()
        for row in await self.table.query("PartitionKey eq @pk", {"pk": partition}, action="read a user"):
            if row["RowKey"] == PRESENCE_ROW:
                presence = recorded_from(row, etag=_etag(row))
            else:
                rows[str(row["RowKey"])] = ConnectionEntity.from_table(row, etag=_etag(row))
        return UserView(partition, rows, presence)

    # -- the sweep's step -----------------------------------------------------------------------

    async def settle(
        self,
        view: UserView,
        *,
        user_name: str,
        gone: Mapping[str, str],
        alive: Mapping[str, str],
        now: datetime,
    ) -> Settled:
        """Delete the `gone` rows, refresh the `alive` ones (RowKey -> ETag judged) and decide the user's presence.

        Rows that changed since they were judged are left alone (their newer index entry covers them).
        A conflict reads the user again and applies what still holds (P2, P4).
        """
        writer = uuid.uuid4().hex
        attempts = _Attempts()
        deciding = self.settings.presence_events
        for _attempt in range(_ATTEMPTS):
            attempts.read(view)
            if view.presence.writer == writer:
                return Settled(
                    online=bool(view.presence.online), recorded=view.presence, change=_repeat(view, user_name)
                )
            doomed = [key for key, etag in gone.items() if key in view.rows and view.rows[key].etag == etag]
            renewed = [key for key, etag in alive.items() if key in view.rows and view.rows[key].etag == etag]
            after = UserView(
                view.partition,
                {
                    key: replace(row, last_seen=now) if key in renewed else row
                    for key, row in view.rows.items()
                    if key not in doomed
                },
                view.presence,
            )
            online = after.online(self.lease, now=now)
            version = decide(view.presence, online=online, now=now) if deciding else None
            try:
                await self._apply(
                    view,
                    doomed,
                    renewed,
                    name=user_name,
                    online=online,
                    version=version,
                    writer=writer,
                    now=now,
                    singly=attempts.singly,
                )
            except ConflictError:
                await attempts.failed(view, _attempt, deciding=version is not None)
                view = await self.read_user(view.partition)
                continue
            change = PresenceChange(user_name, online, version) if version is not None else None
            return Settled(len(doomed), len(renewed), attempts.announce(view, user_name, change), online, view.presence)
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
        written = [entity]

        def row_write(existing: ConnectionEntity | None, bucket: str) -> Operation:
            # A repeated connected event keeps the first ConnectedAt.
            stored = replace(
                entity, connected_at=existing.connected_at if existing else entity.connected_at, index_bucket=bucket
            )
            written[0] = stored
            if existing is None:
                return create(stored.to_table())
            return merge(_refresh_fields(stored), etag=existing.etag)

        _, change = await self._write_live_row(
            entity.partition_key, entity.row_key, entity.user_name, entity.last_seen, row_write, action="connect"
        )
        return ConnectOutcome(written[0], change)

    async def _refresh_deciding(self, partition: str, row: str, name: str, moment: datetime) -> TouchOutcome:
        def row_write(existing: ConnectionEntity | None, bucket: str) -> Operation | None:
            if existing is None:
                return None  # gone: a refresh never brings a row back
            patch = {"PartitionKey": partition, "RowKey": row, "LastSeen": moment, "IndexBucket": bucket}
            return merge(patch, etag=existing.etag)

        found, change = await self._write_live_row(partition, row, name, moment, row_write, action="refresh")
        if found:
            self._remember_refresh(partition, row, moment)
        else:
            self._refreshed.pop((partition, row), None)
        return TouchOutcome(found, change)

    async def _write_live_row(
        self,
        partition: str,
        row: str,
        name: str,
        moment: datetime,
        row_write: Callable[[ConnectionEntity | None, str], Operation | None],
        *,
        action: str,
    ) -> tuple[bool, PresenceChange | None]:
        """Write a row live at `moment` (connect, revival) with the presence decision (P2-P4).

        Returns whether the row was written (False: `row_write` declined, the row being gone) and the change
        to announce.
        """
        writer = uuid.uuid4().hex
        attempts = _Attempts()
        for _attempt in range(_ATTEMPTS):
            view = await self.read_user(partition)
            attempts.read(view)
            if view.presence.writer == writer:
                return True, view.presence.announced_as(name)
            existing = view.rows.get(row)
            operation = row_write(existing, self.index.bucket(moment))
            if operation is None:
                return False, attempts.announce(view, name, None)
            version = decide(view.presence, online=True, now=moment)
            await self._entry_first(attempts, partition, row, moment, version=version)
            if existing is None:
                attempts.pending = False  # our row is not there: no attempt of ours committed
            operations = [
                operation,
                presence_write(partition, view.presence, writer=writer, user_name=name, online=True, version=version),
            ]
            try:
                await self._transact(operations, action=action, singly=attempts.singly)
            except ConflictError:
                await attempts.failed(view, _attempt, deciding=version is not None)
                continue
            change = PresenceChange(name, True, version) if version is not None else None
            return True, attempts.announce(view, name, change)
        raise StorageError(f"{action}: the user's connections kept changing; try again")

    async def _entry_first(
        self, attempts: _Attempts, partition: str, row: str, moment: datetime, *, version: int | None
    ) -> None:
        """Write the row's index entry before the row write (E1): once, and again only to flag it (E5)."""
        flagged = version is not None
        if attempts.indexed is None or (flagged and not attempts.indexed):
            await self.index.write(partition, row, moment, announces_online=flagged)
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
        online: bool,
        version: int | None,
        writer: str,
        now: datetime,
        singly: bool = False,
    ) -> None:
        """Write a sweep's verdicts on one user: index entries first (E1), then the rows with the presence write."""
        partition = view.partition
        bucket = self.index.bucket(now)
        if renewed:
            await self.index.write_many(
                [
                    self.index.entry(partition, key, now, announces_online=version is not None and online)
                    for key in renewed
                ]
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
                presence_write(partition, view.presence, writer=writer, user_name=name, online=online, version=version)
            )
        # A user with more rows than one transaction holds: the presence write goes with the last chunk.
        chunks = [operations[i : i + MAX_BATCH] for i in range(0, len(operations), MAX_BATCH)]
        for chunk in chunks:
            await self._transact(chunk, action="sweep a user", singly=singly)

    async def _transact(self, operations: Sequence[Operation], *, action: str, singly: bool = False) -> None:
        """Run a transaction, or one call at a time when the service refuses this partition's transactions."""
        if not singly:
            try:
                await self.table.transact(operations, action=action)
                return
            except BatchRejectedError:
                logger.info("%s: a transaction the service cannot carry; one call at a time", action)
        for operation in operations:
            await self.table.write(operation, action=action)

    async def _create_or_refresh(self, entity: ConnectionEntity) -> None:
        # Presence off. A repeated connected event keeps the first ConnectedAt.
        for _attempt in range(3):
            try:
                await self.table.write(create(entity.to_table()), action="connect")
                return
            except ConflictError:
                pass
            try:
                await self.table.write(merge(_refresh_fields(entity)), action="connect")
                return
            except RowChangedError:
                continue  # deleted between the two calls: create it again
        raise StorageError("connect: the row kept changing; try again")

    async def _delete_reporting(self, partition: str, row: str) -> bool:
        # Presence off: a transaction, unlike delete_entity, tells whether the row existed.
        try:
            await self._transact([delete(partition, row)], action="disconnect")
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


class _Attempts:
    """The memory of one read-decide-write loop (P4): whether a failed attempt may have recorded a change, and
    whether the service refuses this partition's transactions (a conflict although nothing had changed)."""

    def __init__(self) -> None:
        self.pending = False
        self.singly = False
        self.indexed: bool | None = None  # the entry written so far: none, plain, or announcing online (E5)
        self._failed: UserView | None = None

    def announce(self, view: UserView, name: str, change: PresenceChange | None) -> PresenceChange | None:
        """Return the change to announce: this attempt's, else the recorded pair if an earlier one may have
        committed (P4)."""
        return change or (_repeat(view, name) if self.pending else None)

    def read(self, view: UserView) -> None:
        """Note a fresh read; identical to the one a failed transaction was built on: the refusal was not a race."""
        if self._failed is not None and _same(self._failed, view):
            # Azurite answers 404 (or 400) to a transaction whose keys it cannot parse (U+2028, U+00AD, ...).
            logger.info("a transaction was refused with nothing changed: one call at a time for this user")
            self.singly = True

    async def failed(self, view: UserView, attempt: int, *, deciding: bool) -> None:
        """Note a transaction that met a conflict, and wait a little before reading again."""
        self.pending = self.pending or deciding
        self._failed = view
        await _back_off(attempt)


def _same(first: UserView, second: UserView) -> bool:
    return first.presence.etag == second.presence.etag and {k: r.etag for k, r in first.rows.items()} == {
        k: r.etag for k, r in second.rows.items()
    }


async def _back_off(attempt: int) -> None:
    """Wait a random while after a conflict, so writers racing on one partition spread out."""
    await asyncio.sleep(random.uniform(0, _BACKOFF_SECONDS * 2**attempt))  # noqa: S311 - jitter, not a secret


def _refresh_fields(entity: ConnectionEntity) -> dict[str, Any]:
    return {
        "PartitionKey": entity.partition_key,
        "RowKey": entity.row_key,
        "LastSeen": entity.last_seen,
        "UserAgent": entity.user_agent,
        **({"IndexBucket": entity.index_bucket} if entity.index_bucket else {}),
    }


def _repeat(view: UserView, user_name: str) -> PresenceChange | None:
    """The recorded pair, announced again after an outcome that could not be told apart (P4)."""
    return view.presence.announced_as(user_name)


def _etag(row: Any) -> str | None:
    metadata = getattr(row, "metadata", None) or {}
    etag = metadata.get("etag")
    return str(etag) if etag else None


def _encode_cursor(partition_key: str) -> str:
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(partition_key.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    if not cursor.startswith(_CURSOR_PREFIX) or len(cursor) > 2048:
        raise InvalidRequestError("next is not a cursor this API returned")
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        after = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not after:
        raise InvalidRequestError("next is not a cursor this API returned")
    return after
