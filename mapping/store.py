"""The Table Storage store of user -> connection rows (azure-data-tables, async).

Every storage detail lives here: the client, keys in filters, batches, and the translation of Azure
errors into `mapping.errors`. Callers see ConnectionEntity values and typed errors only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
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
from mapping.errors import InvalidRequestError, StorageError, StorageUnavailableError
from mapping.keys import connection_key, normalize_user_name, user_key
from mapping.settings import Settings, get_settings

logger = logging.getLogger(__name__)

MAX_BATCH = 100  # Table Storage: at most 100 operations per transaction, one partition.
MAX_PAGE_LIMIT = 1000
_PAGE_SIZE = 1000
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CURSOR_PREFIX = "u1."
_MAX_RETRY_AFTER_SLEEP = 2.0
_SERVER_RETRY_AFTER = "x-mapping-server-retry-after"  # the server's Retry-After, before _on_response capped it


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    """What connecting did: the row written, and whether the user just came online."""

    entity: ConnectionEntity
    came_online: bool


@dataclass(frozen=True, slots=True)
class DisconnectOutcome:
    """What disconnecting did: the user's name (normalised) and whether no live connection is left."""

    user_name: str
    went_offline: bool


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
    ) -> None:
        # Bounded worst case of one storage call: attempts start only within `retry_timeout`, and the
        # last one may still take `connection_timeout + read_timeout`: 12 + 3 + 5 = 20 s by default,
        # far inside the Functions timeout (host.json: 5 minutes). A server's Retry-After is obeyed
        # for at most _MAX_RETRY_AFTER_SLEEP seconds per attempt (see _on_response).
        self.settings = settings
        self._client_options: dict[str, Any] = {
            "retry_total": retry_total,
            "retry_backoff_factor": retry_backoff_factor,
            "retry_backoff_max": 2,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
            "timeout": retry_timeout,
            "raw_response_hook": self._on_response,
        }
        self._client: TableClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._lock = asyncio.Lock()
        self._table_missing = False

    # -- the public API -------------------------------------------------------------------------

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
        """Write (or refresh) the row of a connection that opened; say whether the user came online."""
        entity = ConnectionEntity.new(
            user_name, connection_id, hub=hub or self.settings.hub, user_agent=user_agent, now=now
        )
        table = await self._table()
        with _translated("connect"):
            await table.upsert_entity(entity.to_table(), mode=UpdateMode.MERGE)
        if not check_presence:
            return ConnectOutcome(entity, came_online=False)
        live = await self._live_rows(entity.partition_key, now=entity.last_seen, select=["RowKey", "ConnectedAt"])
        # Announce online from the oldest live connection only: two tabs opening at once then
        # announce once (or, if their reads interleave, twice), never zero times.
        oldest = min(((row["ConnectedAt"], row["RowKey"]) for row in live), default=None)
        return ConnectOutcome(entity, came_online=oldest is None or oldest[1] == entity.row_key)

    async def disconnect(
        self, user_name: str, connection_id: str, *, now: datetime | None = None, check_presence: bool = True
    ) -> DisconnectOutcome:
        """Delete a connection's row (a missing row is fine); say whether the user has no live connection left."""
        name = normalize_user_name(user_name)
        partition, row = user_key(name), connection_key(connection_id)
        table = await self._table()
        with _translated("disconnect"):
            await table.delete_entity(partition, row)
        if not check_presence:
            return DisconnectOutcome(name, went_offline=False)
        live = await self._live_rows(partition, now=now, select=["RowKey"], limit=1)
        return DisconnectOutcome(name, went_offline=not live)

    async def touch(self, user_name: str, connection_id: str, *, now: datetime | None = None) -> bool:
        """Refresh a connection's `LastSeen`; return False when its row no longer exists."""
        patch = {
            "PartitionKey": user_key(user_name),
            "RowKey": connection_key(connection_id),
            "LastSeen": as_utc(now) if now else utc_now(),
        }
        table = await self._table()
        try:
            with _translated("touch"):
                # The SDK's default condition sends `If-Match: *`: a missing row fails, never reappears.
                await table.update_entity(patch, mode=UpdateMode.MERGE)
        except _RowMissing:
            return False
        return True

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

    async def expired_pages(self, *, now: datetime | None = None) -> AsyncIterator[list[ConnectionEntity]]:
        """Yield pages of rows whose lease has run out, across the whole table."""
        table = await self._table()
        with _translated("find expired rows"):
            pages = table.query_entities(
                "LastSeen le @cutoff", parameters={"cutoff": self._cutoff(now)}, results_per_page=_PAGE_SIZE
            ).by_page()
            async for page in pages:
                yield [ConnectionEntity.from_table(row, etag=row.metadata.get("etag")) async for row in page]

    async def delete_unchanged(self, entities: Sequence[ConnectionEntity]) -> DeleteOutcome:
        """Delete rows unless they changed since read (ETag), in batches of at most 100 per partition."""
        deleted = skipped = 0
        for batch in _batches(entities):
            done, gone = await self._delete_batch(batch)
            deleted += done
            skipped += gone
        return DeleteOutcome(deleted=deleted, skipped=skipped)

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

    async def _live_rows(
        self, partition: str, *, now: datetime | None, select: list[str] | None = None, limit: int | None = None
    ) -> list[Any]:
        table = await self._table()
        rows: list[Any] = []
        with _translated("read connections"):
            query = table.query_entities(
                "PartitionKey eq @pk and LastSeen gt @cutoff",
                parameters={"pk": partition, "cutoff": self._cutoff(now)},
                select=select,
                results_per_page=limit or _PAGE_SIZE,
            )
            async for row in query:
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
        return rows

    async def _delete_batch(self, batch: list[ConnectionEntity]) -> tuple[int, int]:
        # One failing operation fails the whole transaction: drop it (its row is gone or was
        # refreshed since read, both fine to leave) and retry the rest.
        pending = list(batch)
        skipped = 0
        table = await self._table()
        while pending:
            operations = [
                ("delete", entity.to_table(), {"etag": entity.etag, "match_condition": MatchConditions.IfNotModified})
                if entity.etag
                else ("delete", entity.to_table())
                for entity in pending
            ]
            try:
                with _translated("delete expired rows"):
                    await table.submit_transaction(operations)
            except _RowMissing as missing:
                failed = missing.index if missing.index is not None and missing.index < len(pending) else 0
                logger.debug("sweep: row %s changed or vanished meanwhile; retrying the rest", failed)
                pending.pop(failed)
                skipped += 1
                continue
            return len(pending), skipped
        return 0, skipped

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
                raise StorageError(f"the connection string in {storage.source} is malformed") from None
        assert storage.table_service_uri is not None
        self._credential = _identity_credential(storage.client_id)
        return TableClient(storage.table_service_uri, table_name, credential=self._credential, **self._client_options)


class _RowMissing(StorageError):
    """Internal: the row (or, in a batch, the operation at `index`) was missing or changed."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _identity_credential(client_id: str | None) -> AsyncTokenCredential:
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn Azure SDK and transport errors into the mapping error tree."""
    try:
        yield
    except StorageError:
        raise
    except TableTransactionError as error:
        if error.status_code in (404, 412):
            raise _RowMissing(f"{action}: a row changed meanwhile", index=error.index) from None
        raise _storage_error(action, error) from None
    except (ResourceNotFoundError, ResourceModifiedError) as error:
        if getattr(error, "error_code", None) == "TableNotFound":  # the store creates it again on its next call
            logger.warning("table storage: the table is missing during %s", action)
            raise StorageUnavailableError(f"the table is missing ({action})", retry_after_seconds=1) from None
        raise _RowMissing(f"{action}: row missing or changed ({error.status_code})") from None
    except (TimeoutError, AzureError, OSError) as error:
        raise _storage_error(action, error) from None


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


def _batches(entities: Sequence[ConnectionEntity]) -> Iterator[list[ConnectionEntity]]:
    by_partition: dict[str, list[ConnectionEntity]] = {}
    for entity in entities:
        by_partition.setdefault(entity.partition_key, []).append(entity)
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
