"""The Table Storage store of user -> connection rows (azure-data-tables, async).

Every storage detail lives here: the client, keys in filters, batches, and the translation of Azure
errors into `mapping.errors`. Callers see ConnectionEntity values and typed errors only.

Besides the connection rows, the table holds an expiry index so that the sweep reads only what may be
stale. An index entry lives in partition `%~x<bucket start, epoch seconds>` (`%~` never starts a user
key: escaped keys use `%` only as `%XX`), names one connection row by its keys, and says "this row's
LastSeen fell in this bucket when it was written". Invariants:

1. An index entry is written *before* the row write that sets LastSeen into its bucket (connect,
   refresh). So every row has an entry for the bucket of its current LastSeen; a crash between the two
   writes leaves only an entry without a row, never a row without an entry.
2. Entries are never trusted alone: before acting, the sweep reads the row. No row: the entry is
   dropped. Row's LastSeen in a later bucket (refreshed since): the entry is dropped, the later entry
   covers the row. Only a row whose LastSeen still lies in or before the entry's bucket is swept.
3. Row deletes and refreshes by the sweep are conditional on the ETag it read, so a row refreshed or
   replaced meanwhile is left alone (its newer entry, per 1, covers it).
4. An entry is dropped only after its row was dealt with; a crash in between leaves the entry, which
   the next sweep reads again (and, per 2, drops). So no live row is deleted, and no stale row is left
   without an entry that will bring it back to the sweep.

With presence events on, each user partition also holds a presence row (RowKey `%~p`, no LastSeen, so
no reader of connections sees it): the state last announced (`Online`) and its number (`Version`).
Presence messages carry that number, and the message with the highest number is the user's state:

5. Every change to a user's connection rows (create, delete) is followed by a *bump*: a write of a
   fresh random `Bump` value into the presence row (in the same transaction where the keys allow).
6. Only the writer of the latest bump may decide: it reads the live rows and the presence row, and
   acts only if `Bump` is still its own; a change of state is written conditional on that read's
   ETag, with `Version + 1`, and only then announced. A later bump makes the write fail, and the later
   writer decides instead.
7. Hence the last bump's writer reads after every row change and its write succeeds: once the events
   of a user stop, the highest announced version matches the user's connection rows, whatever order
   the instances ran in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline import PipelineResponse
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from mapping.entity import ConnectionEntity, as_utc, utc_now
from mapping.errors import ConfigurationError, InvalidRequestError, StorageError, StorageUnavailableError
from mapping.identity import identity_credential
from mapping.keys import connection_key, normalize_user_name, user_key
from mapping.settings import Settings, get_settings

logger = logging.getLogger(__name__)

MAX_BATCH = 100  # Table Storage: at most 100 operations per transaction, one partition.
MAX_PAGE_LIMIT = 1000
_PAGE_SIZE = 1000
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CURSOR_PREFIX = "u1."
INDEX_PREFIX = "%~x"
PRESENCE_ROW = "%~p"  # a user's presence row; `%~` never starts a connection key either
_READ_CONCURRENCY = 16
_WRITE_CONCURRENCY = 8
_REFRESH_MEMORY = 100_000  # connections whose last refresh time an instance remembers
_MAX_RETRY_AFTER_SLEEP = 2.0
_SERVER_RETRY_AFTER = "x-mapping-server-retry-after"  # the server's Retry-After, before _on_response capped it

_Operation = tuple[str, dict[str, str], dict[str, Any]]  # one operation of a table transaction


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A change of a user's announced presence; of all changes of a user, the highest version is current."""

    user: str
    online: bool
    version: int


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
class IndexEntry:
    """An expiry-index entry: the connection row (by its keys) whose LastSeen fell in `bucket`."""

    bucket: str
    key: str
    user_key: str
    connection_key: str

    @property
    def bucket_start(self) -> datetime:
        """Return the start of the entry's time bucket."""
        return datetime.fromtimestamp(int(self.bucket[len(INDEX_PREFIX) :]), UTC)


@dataclass(frozen=True, slots=True)
class StoredConnection:
    """A connection row as read for the sweep: its keys, its ETag and its entity."""

    partition_key: str
    row_key: str
    etag: str
    entity: ConnectionEntity


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    """What a conditional bulk delete did: rows deleted, and rows skipped (gone or changed meanwhile)."""

    deleted: int
    skipped: int


class ConnectionStore:
    """The user -> connections map in one Azure table; one instance (and one client) per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        retry_total: int = 3,
        retry_backoff_factor: float = 0.2,
        connection_timeout: float = 3.0,
        read_timeout: float = 5.0,
        retry_timeout: float = 12.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        # Bounded worst case of one storage call: attempts start only within `retry_timeout`, and the
        # last one may still take `connection_timeout + read_timeout`: 12 + 3 + 5 = 20 s by default,
        # far inside the Functions timeout (host.json: 5 minutes). A server's Retry-After is obeyed
        # for at most _MAX_RETRY_AFTER_SLEEP seconds per attempt (see _on_response).
        self.settings = settings
        # client_options: further azure-core keywords for the TableClient; a `raw_response_hook` among
        # them runs after the store's own.
        extra_options = dict(client_options or {})
        self._response_hook: Callable[[Any], None] | None = extra_options.pop("raw_response_hook", None)
        self._client_options: dict[str, Any] = {
            "retry_total": retry_total,
            "retry_backoff_factor": retry_backoff_factor,
            "retry_backoff_max": 2,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
            "timeout": retry_timeout,
            **extra_options,
            "raw_response_hook": self._on_response,
        }
        self._client: TableClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._lock = asyncio.Lock()
        self._refreshed: OrderedDict[tuple[str, str], datetime] = OrderedDict()
        self._table_missing = False

    # -- connection events ----------------------------------------------------------------------

    async def connect(
        self,
        user_name: str,
        connection_id: str,
        *,
        hub: str | None = None,
        user_agent: str = "",
        now: datetime | None = None,
        check_presence: bool = True,
    ) -> ConnectOutcome:
        """Write the row of a connection that opened; say whether the user came online with it."""
        entity = ConnectionEntity.new(
            user_name, connection_id, hub=hub or self.settings.hub, user_agent=user_agent, now=now
        )
        table = await self._table()
        await self._write_index(table, entity.partition_key, entity.row_key, entity.last_seen)
        if check_presence:
            bump = await self._create_and_bump(table, entity)
        else:
            bump = None
            await self._create_or_refresh(table, entity)
        self._remember_refresh(entity.partition_key, entity.row_key, entity.last_seen)
        if bump is None:  # presence off, or a repeated connected event (the row was there, nothing changed)
            return ConnectOutcome(entity)
        change = await self._decide_presence(entity.partition_key, entity.user_name, bump=bump, now=entity.last_seen)
        return ConnectOutcome(entity, change)

    async def disconnect(
        self, user_name: str, connection_id: str, *, now: datetime | None = None, check_presence: bool = True
    ) -> DisconnectOutcome:
        """Delete a connection's row (a missing row is fine); say whether that left the user offline."""
        name = normalize_user_name(user_name)
        partition, row = user_key(name), connection_key(connection_id)
        table = await self._table()
        self._refreshed.pop((partition, row), None)
        bump = uuid.uuid4().hex if check_presence else None
        operations: list[_Operation] = [("delete", {"PartitionKey": partition, "RowKey": row}, {})]
        if bump is not None:
            operations.append(_bump_operation(partition, bump))
        try:
            with _translated("disconnect"):
                # A transaction, unlike delete_entity, tells whether the row existed.
                await table.submit_transaction(operations)
        except (_RowMissing, _BatchRejected):
            # Rare (a repeated event), or a key a transaction cannot carry (Azurite answers 400 or even 404
            # for U+2028/U+2029 inside a batch): settle it with single-entity calls.
            deleted, _ = await self._delete_one_by_one([(partition, row, None)], action="disconnect")
            if not deleted:
                return DisconnectOutcome(name, removed=False)
            if bump is not None:
                await self._bump(table, partition, bump)
        if bump is None:
            return DisconnectOutcome(name, removed=True)
        change = await self._decide_presence(partition, name, bump=bump, now=now)
        return DisconnectOutcome(name, removed=True, presence=change)

    async def settle_presence(self, user_name: str, *, now: datetime | None = None) -> PresenceChange | None:
        """After rows of a user changed outside connect/disconnect (the sweep), bump and decide their presence."""
        partition = user_key(user_name)
        bump = uuid.uuid4().hex
        await self._bump(await self._table(), partition, bump)
        return await self._decide_presence(partition, normalize_user_name(user_name), bump=bump, now=now)

    async def touch(self, user_name: str, connection_id: str, *, now: datetime | None = None) -> bool:
        """Refresh a connection's `LastSeen` (at most once per quarter lease); False when its row is gone."""
        partition, row = user_key(user_name), connection_key(connection_id)
        moment = as_utc(now) if now else utc_now()
        last = self._refreshed.get((partition, row))
        if last is not None and moment - last < self.settings.ttl / 4:
            return True
        table = await self._table()
        await self._write_index(table, partition, row, moment)
        try:
            with _translated("touch"):
                # The SDK's default condition sends `If-Match: *`: a missing row fails, never reappears.
                await table.update_entity(
                    {"PartitionKey": partition, "RowKey": row, "LastSeen": moment}, mode=UpdateMode.MERGE
                )
        except _RowMissing:
            self._refreshed.pop((partition, row), None)
            return False
        self._remember_refresh(partition, row, moment)
        return True

    # -- readers --------------------------------------------------------------------------------

    async def connections_of(self, user_name: str, *, now: datetime | None = None) -> list[ConnectionEntity]:
        """Return the live connections of a user (case-insensitive), oldest first."""
        rows = await self._live_rows(user_key(user_name), now=now)
        entities = [ConnectionEntity.from_table(row, etag=row.metadata.get("etag")) for row in rows]
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
        table = await self._table()
        with _translated("list online users"):
            rows = table.query_entities(
                query, parameters=parameters, select=["PartitionKey", "UserName"], results_per_page=_PAGE_SIZE
            )
            async for row in rows:
                if keys and keys[-1] == row["PartitionKey"]:
                    users[-1] = OnlineUser(users[-1].user, users[-1].connections + 1)
                    continue
                if len(users) == limit:
                    return UsersPage(users, next=_encode_cursor(keys[-1]))
                keys.append(row["PartitionKey"])
                users.append(OnlineUser(str(row.get("UserName") or ""), 1))
        return UsersPage(users, next=None)

    # -- the sweep's primitives -----------------------------------------------------------------

    def bucket_width(self) -> timedelta:
        """Return the width of the expiry index's time buckets: a tenth of the lease, 1 s to 5 min."""
        return min(max(self.settings.ttl / 10, timedelta(seconds=1)), timedelta(minutes=5))

    async def expiry_pages(self, *, before: datetime) -> AsyncIterator[list[IndexEntry]]:
        """Yield pages of index entries of the buckets that began before `before`, oldest first."""
        table = await self._table()
        upper = self._bucket(as_utc(before) + self.bucket_width())
        with _translated("read the expiry index"):
            pages = table.query_entities(
                "PartitionKey ge @lower and PartitionKey lt @upper",
                parameters={"lower": INDEX_PREFIX, "upper": upper},
                results_per_page=_PAGE_SIZE,
            ).by_page()
            async for page in pages:
                yield [_index_entry(row) async for row in page]

    async def read_connections(self, entries: Sequence[IndexEntry]) -> list[StoredConnection | None]:
        """Read the rows the entries point to (None where a row is gone), a bounded number at a time."""
        table = await self._table()
        slots = asyncio.Semaphore(_READ_CONCURRENCY)

        async def read(entry: IndexEntry) -> StoredConnection | None:
            async with slots:
                try:
                    with _translated("read a connection"):
                        row = await table.get_entity(entry.user_key, entry.connection_key)
                except _RowMissing:
                    return None
            etag = str(row.metadata.get("etag"))
            entity = ConnectionEntity.from_table(row, etag=etag)
            return StoredConnection(entry.user_key, entry.connection_key, etag, entity)

        return list(await asyncio.gather(*(read(entry) for entry in entries)))

    async def refresh_unchanged(self, stored: StoredConnection, *, now: datetime | None = None) -> bool:
        """Move a row's LastSeen to now unless it changed since read (ETag); False when it did."""
        moment = as_utc(now) if now else utc_now()
        table = await self._table()
        await self._write_index(table, stored.partition_key, stored.row_key, moment)
        patch = {"PartitionKey": stored.partition_key, "RowKey": stored.row_key, "LastSeen": moment}
        try:
            with _translated("refresh a connection"):
                await table.update_entity(
                    patch, mode=UpdateMode.MERGE, etag=stored.etag, match_condition=MatchConditions.IfNotModified
                )
        except _RowMissing:
            return False
        return True

    async def delete_unchanged(self, rows: Sequence[StoredConnection]) -> DeleteOutcome:
        """Delete rows unless they changed since read (ETag), at most 100 per batch and partition."""
        operations = [(row.partition_key, row.row_key, row.etag) for row in rows]
        return await self._delete_in_batches(operations, action="delete stale rows")

    async def drop_index_entries(self, entries: Sequence[IndexEntry]) -> DeleteOutcome:
        """Delete expiry-index entries (missing ones are fine), at most 100 per batch and bucket."""
        operations = [(entry.bucket, entry.key, None) for entry in entries]
        return await self._delete_in_batches(operations, action="drop index entries")

    async def close(self) -> None:
        """Close the table client and any credential; the next call opens them again."""
        async with self._lock:
            client, credential = self._client, self._credential
            self._client = self._credential = None
        if client is not None:
            await client.close()
        if credential is not None:
            await credential.close()

    # -- internals ------------------------------------------------------------------------------

    def _cutoff(self, now: datetime | None) -> datetime:
        return (as_utc(now) if now else utc_now()) - self.settings.ttl

    def _bucket(self, moment: datetime) -> str:
        width = int(self.bucket_width().total_seconds())
        start = int(moment.timestamp()) // width * width
        return f"{INDEX_PREFIX}{start:012d}"

    async def _write_index(self, table: TableClient, partition: str, row: str, last_seen: datetime) -> None:
        entry = {
            "PartitionKey": self._bucket(last_seen),
            "RowKey": hashlib.sha256(f"{partition}\x00{row}".encode()).hexdigest(),
            "UserKey": partition,
            "ConnectionKey": row,
        }
        with _translated("write the expiry index"):
            await table.upsert_entity(entry, mode=UpdateMode.REPLACE)

    async def _create_or_refresh(self, table: TableClient, entity: ConnectionEntity) -> bool:
        # A repeated connected event keeps the first ConnectedAt and announces nothing.
        for _attempt in range(3):
            try:
                with _translated("connect"):
                    await table.create_entity(entity.to_table())
                return True
            except _RowExists:
                pass
            patch = {
                "PartitionKey": entity.partition_key,
                "RowKey": entity.row_key,
                "LastSeen": entity.last_seen,
                "UserAgent": entity.user_agent,
            }
            try:
                with _translated("connect"):
                    await table.update_entity(patch, mode=UpdateMode.MERGE)
                return False
            except _RowMissing:
                continue  # deleted between the two calls: create it again
        raise StorageError("connect: the row kept changing; try again")

    async def _create_and_bump(self, table: TableClient, entity: ConnectionEntity) -> str | None:
        """Create the row and bump the presence row; return the bump, or None when the row was there."""
        bump = uuid.uuid4().hex
        try:
            with _translated("connect"):
                await table.submit_transaction(
                    [("create", entity.to_table()), _bump_operation(entity.partition_key, bump)]
                )
            return bump
        except (_RowExists, _RowMissing, _BatchRejected):
            pass  # the row exists, or a key a transaction cannot carry: single-entity calls decide
        if not await self._create_or_refresh(table, entity):
            return None
        await self._bump(table, entity.partition_key, bump)
        return bump

    async def _bump(self, table: TableClient, partition: str, bump: str) -> None:
        _, keys, options = _bump_operation(partition, bump)
        with _translated("bump presence"):
            await table.upsert_entity(keys, **options)

    async def _decide_presence(
        self, partition: str, user_name: str, *, bump: str, now: datetime | None
    ) -> PresenceChange | None:
        """Announce the user's state if `bump` is still the latest and the state differs from the last announced."""
        state, online = await self._presence_view(partition, now=now)
        if state is None or state.get("Bump") != bump:
            return None  # a later change of this user's rows decides instead (invariant 6)
        if state.get("Online") is online:
            return None
        version = int(state.get("Version") or 0) + 1
        patch = {"PartitionKey": partition, "RowKey": PRESENCE_ROW, "Online": online, "Version": version}
        table = await self._table()
        try:
            with _translated("record presence"):
                await table.update_entity(
                    patch,
                    mode=UpdateMode.MERGE,
                    etag=state.metadata.get("etag"),
                    match_condition=MatchConditions.IfNotModified,
                )
        except _RowMissing:
            return None  # bumped meanwhile: that writer decides
        return PresenceChange(user_name, online, version)

    async def _presence_view(self, partition: str, *, now: datetime | None) -> tuple[Any | None, bool]:
        """Read a user's presence row and whether they have a live connection, in one query."""
        table = await self._table()
        state: Any | None = None
        online = False
        with _translated("read presence"):
            rows = table.query_entities(
                # Spaces around the parentheses: the SDK finds @parameters by splitting on spaces.
                "PartitionKey eq @pk and ( RowKey eq @presence or LastSeen gt @cutoff )",
                parameters={"pk": partition, "presence": PRESENCE_ROW, "cutoff": self._cutoff(now)},
                select=["RowKey", "Online", "Version", "Bump"],
                results_per_page=_PAGE_SIZE,
            )
            async for row in rows:
                if row["RowKey"] == PRESENCE_ROW:
                    state = row
                else:
                    online = True
                if state is not None and online:
                    break
        return state, online

    def _remember_refresh(self, partition: str, row: str, moment: datetime) -> None:
        self._refreshed[(partition, row)] = moment
        self._refreshed.move_to_end((partition, row))
        while len(self._refreshed) > _REFRESH_MEMORY:
            self._refreshed.popitem(last=False)

    async def _live_rows(self, partition: str, *, now: datetime | None) -> list[Any]:
        table = await self._table()
        with _translated("read connections"):
            query = table.query_entities(
                "PartitionKey eq @pk and LastSeen gt @cutoff",
                parameters={"pk": partition, "cutoff": self._cutoff(now)},
                results_per_page=_PAGE_SIZE,
            )
            return [row async for row in query]

    async def _delete_in_batches(
        self, operations: Sequence[tuple[str, str, str | None]], *, action: str
    ) -> DeleteOutcome:
        slots = asyncio.Semaphore(_WRITE_CONCURRENCY)

        async def delete(batch: list[tuple[str, str, str | None]]) -> tuple[int, int]:
            async with slots:
                return await self._delete_batch(batch, action=action)

        outcomes = await asyncio.gather(*(delete(batch) for batch in _batches(operations)))
        return DeleteOutcome(deleted=sum(done for done, _ in outcomes), skipped=sum(gone for _, gone in outcomes))

    async def _delete_batch(self, batch: list[tuple[str, str, str | None]], *, action: str) -> tuple[int, int]:
        # One failing operation fails the whole transaction: set it aside and retry the rest. What was
        # set aside is then deleted singly, so a row is skipped only when the single call says it is
        # gone or changed (a transaction's 404 is not trusted alone: Azurite gives one for keys it
        # cannot parse inside a batch).
        pending = list(batch)
        aside: list[tuple[str, str, str | None]] = []
        table = await self._table()
        deleted = 0
        while pending:
            try:
                with _translated(action):
                    await table.submit_transaction([_delete_operation(*operation) for operation in pending])
            except _BatchRejected:
                aside += pending
                break
            except _RowMissing as missing:
                failed = missing.index if missing.index is not None and missing.index < len(pending) else 0
                logger.debug("%s: operation %s found its row changed or gone; retrying the rest", action, failed)
                aside.append(pending.pop(failed))
                continue
            deleted = len(pending)
            break
        if not aside:
            return deleted, 0
        single_deleted, skipped = await self._delete_one_by_one(aside, action=action)
        return deleted + single_deleted, skipped

    async def _delete_one_by_one(
        self, operations: list[tuple[str, str, str | None]], *, action: str
    ) -> tuple[int, int]:
        # Single-entity calls: a missing row is seen by the read (delete_entity alone hides a 404), a
        # changed one by the conditional delete.
        table = await self._table()
        deleted = skipped = 0
        for partition, row, etag in operations:
            try:
                with _translated(action):
                    await table.get_entity(partition, row, select=["RowKey"])
                    condition = MatchConditions.IfNotModified if etag else None
                    await table.delete_entity(partition, row, etag=etag, match_condition=condition)
                deleted += 1
            except _RowMissing:
                skipped += 1
        return deleted, skipped

    async def _table(self) -> TableClient:
        if self._client is not None and not self._table_missing:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._open_table()
            elif self._table_missing:
                # The table vanished under the cached client (deleted, or an emulator restarted):
                # create it again, as on first use, instead of failing until the process restarts.
                await self._create_table(self._client)
                self._table_missing = False
        return self._client

    def _on_response(self, response: PipelineResponse[Any, Any]) -> None:
        """SDK hook on every HTTP response, before the retry policy sees it."""
        headers = response.http_response.headers
        if response.http_response.status_code == 404 and headers.get("x-ms-error-code") == "TableNotFound":
            self._table_missing = True
        # The SDK sleeps for whatever Retry-After says before retrying; keep the server's value for
        # the caller's hint, but let the SDK wait at most _MAX_RETRY_AFTER_SLEEP seconds.
        for name, unit in (("Retry-After", 1.0), ("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
            if (value := headers.get(name)) is None:
                continue
            if name == "Retry-After":
                headers[_SERVER_RETRY_AFTER] = value
            headers[name] = f"{_capped_sleep(value, unit=unit) / unit:g}"
        if self._response_hook is not None:
            self._response_hook(response)

    async def _open_table(self) -> TableClient:
        client = self._new_client()
        try:
            await self._create_table(client)
        except BaseException:
            await client.close()
            if self._credential is not None:
                await self._credential.close()
                self._credential = None
            raise
        return client

    async def _create_table(self, client: TableClient) -> None:
        with _translated("create table"):
            try:
                await client.create_table()
                logger.info("created table %s", self.settings.table_name)
            except ResourceExistsError:
                pass

    def _new_client(self) -> TableClient:
        storage = self.settings.storage
        table_name = self.settings.table_name
        if storage.connection_string:
            try:
                return TableClient.from_connection_string(storage.connection_string, table_name, **self._client_options)
            except ValueError:
                raise ConfigurationError(f"the connection string in {storage.source} is malformed") from None
        assert storage.table_service_uri is not None
        credential = identity_credential(storage.client_id)
        try:
            client = TableClient(storage.table_service_uri, table_name, credential=credential, **self._client_options)
        except ValueError as error:
            asyncio.get_running_loop().create_task(credential.close())
            raise ConfigurationError(f"{storage.source}__tableServiceUri is not usable: {error}") from None
        self._credential = credential
        return client


def _delete_operation(partition: str, row: str, etag: str | None) -> _Operation:
    keys = {"PartitionKey": partition, "RowKey": row}
    if etag:
        return ("delete", keys, {"etag": etag, "match_condition": MatchConditions.IfNotModified})
    return ("delete", keys, {})


def _bump_operation(partition: str, bump: str) -> _Operation:
    return ("upsert", {"PartitionKey": partition, "RowKey": PRESENCE_ROW, "Bump": bump}, {"mode": UpdateMode.MERGE})


def _index_entry(row: Any) -> IndexEntry:
    return IndexEntry(
        bucket=row["PartitionKey"],
        key=row["RowKey"],
        user_key=str(row.get("UserKey") or ""),
        connection_key=str(row.get("ConnectionKey") or ""),
    )


class _RowMissing(StorageError):
    """Internal: the row (or, in a batch, the operation at `index`) was missing or changed."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class _BatchRejected(StorageError):
    """Internal: the service refused a transaction as malformed (seen with U+2028/U+2029 in keys on Azurite)."""


class _RowExists(StorageError):
    """Internal: a create found the row already there."""


class _TableMissing(StorageUnavailableError):
    """The table was deleted while the process ran; the next call creates it again (see _on_response)."""


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn Azure SDK and transport errors into the mapping error tree."""
    try:
        yield
    except StorageError:
        raise
    except HttpResponseError as error:
        if _error_code(error) == "TableNotFound":
            logger.warning("table storage: the table is gone (%s); it is created again on the next call", action)
            raise _TableMissing(f"the table disappeared ({action})", retry_after_seconds=1) from None
        if isinstance(error, TableTransactionError) and error.status_code in (404, 412):
            raise _RowMissing(f"{action}: a row changed meanwhile", index=error.index) from None
        if isinstance(error, TableTransactionError) and error.status_code == 409:
            raise _RowExists(f"{action}: a row exists") from None
        if isinstance(error, TableTransactionError) and error.status_code == 400:
            raise _BatchRejected(f"{action}: the transaction was rejected") from None
        if isinstance(error, ResourceNotFoundError | ResourceModifiedError):
            raise _RowMissing(f"{action}: row missing or changed ({error.status_code})") from None
        if isinstance(error, ResourceExistsError):
            raise _RowExists(f"{action}: the row exists") from None
        raise _storage_error(action, error) from None
    except (TimeoutError, AzureError, OSError) as error:
        raise _storage_error(action, error) from None


def _error_code(error: HttpResponseError) -> str | None:
    code = getattr(error, "error_code", None)
    return str(code.value if hasattr(code, "value") else code) if code else None


def _storage_error(action: str, error: BaseException) -> StorageError:
    if isinstance(error, ClientAuthenticationError):
        logger.error("table storage refused the credentials during %s: %s", action, type(error).__name__)
        return StorageError(f"table storage refused the credentials ({action})")
    status = error.status_code if isinstance(error, HttpResponseError) else None
    if status is not None and status not in _TRANSIENT_STATUS:
        logger.error("table storage answered %s during %s", status, action)
        return StorageError(f"table storage answered {status} ({action})")
    retry_after = _retry_after(error)
    logger.warning("table storage unavailable during %s: %s", action, type(error).__name__)
    return StorageUnavailableError(f"table storage is unavailable ({action})", retry_after_seconds=retry_after)


def _capped_sleep(value: str, *, unit: float) -> float:
    try:
        seconds = float(value) * unit
    except ValueError:  # an HTTP date: not worth parsing for a sleep this short
        return _MAX_RETRY_AFTER_SLEEP
    return max(0.0, min(seconds, _MAX_RETRY_AFTER_SLEEP))


def _retry_after(error: BaseException) -> int:
    response = getattr(error, "response", None)
    headers = response.headers if response is not None else {}
    header = headers.get(_SERVER_RETRY_AFTER) or headers.get("Retry-After")
    try:
        return max(1, min(int(header), 300)) if header else 5
    except ValueError:
        return 5


def _batches(operations: Sequence[tuple[str, str, str | None]]) -> Iterator[list[tuple[str, str, str | None]]]:
    by_partition: dict[str, list[tuple[str, str, str | None]]] = {}
    for operation in operations:
        by_partition.setdefault(operation[0], []).append(operation)
    for rows in by_partition.values():
        for start in range(0, len(rows), MAX_BATCH):
            yield rows[start : start + MAX_BATCH]


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


_default_store: ConnectionStore | None = None


def default_store() -> ConnectionStore:
    """Return the process-wide store, built from the app settings on first use."""
    global _default_store
    if _default_store is None:
        _default_store = ConnectionStore(get_settings())
    return _default_store


async def reset_default_store() -> None:
    """Close the process-wide store and forget it and the settings (for tests and reconfiguration)."""
    global _default_store
    store, _default_store = _default_store, None
    get_settings.cache_clear()
    if store is not None:
        await store.close()
