"""The table layer: one Azure table client per process, and the only place its Azure SDK errors are translated.

Every other module talks to Table Storage through `Table`: queries, point reads, writes and
transactions, each answering with plain entities or raising from the `mapping.errors` tree. A
conditional write that meets a changed, missing or existing row raises a `ConflictError`, which a
caller must treat as "read again": after a write that committed but was answered with an error, the
SDK's retry meets the write's own result (409, 404, 412), so a conflict never proves that somebody
else wrote.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline import PipelineResponse
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from mapping.errors import (
    BatchRejectedError,
    ConfigurationError,
    RowChangedError,
    RowExistsError,
    StorageError,
)
from mapping.settings import Settings
from mapping.storage.client import CachedClient, identity_credential
from mapping.storage.errors import Translation

logger = logging.getLogger(__name__)

MAX_BATCH = 100  # Table Storage: at most 100 operations per transaction, one partition.
PAGE_SIZE = 1000
_MAX_RETRY_AFTER_SLEEP = 2.0
_SERVER_RETRY_AFTER = "x-mapping-server-retry-after"  # the server's Retry-After, before _on_response capped it

Entity = Mapping[str, Any]
Operation = tuple[str, dict[str, Any], dict[str, Any]]  # one operation of a table transaction


def create(entity: Mapping[str, Any]) -> Operation:
    """Return a transaction operation that inserts `entity` (fails if the row exists)."""
    return ("create", dict(entity), {})


def merge(entity: Mapping[str, Any], *, etag: str | None = None) -> Operation:
    """Return an operation that merges `entity` into an existing row (If-Match `etag`, or any ETag)."""
    if etag:
        return ("update", dict(entity), {"mode": UpdateMode.MERGE, "etag": etag, "match_condition": _IF_MATCH})
    return ("update", dict(entity), {"mode": UpdateMode.MERGE})


def upsert(entity: Mapping[str, Any]) -> Operation:
    """Return an operation that merges `entity` into its row, creating the row if missing."""
    return ("upsert", dict(entity), {"mode": UpdateMode.MERGE})


def delete(partition: str, row: str, *, etag: str | None = None) -> Operation:
    """Return an operation that deletes a row (If-Match `etag`, or any ETag)."""
    keys: dict[str, Any] = {"PartitionKey": partition, "RowKey": row}
    if etag:
        return ("delete", keys, {"etag": etag, "match_condition": _IF_MATCH})
    return ("delete", keys, {})


_IF_MATCH = MatchConditions.IfNotModified


class Table:
    """The app's table: created on first use, created again if it vanishes; one client per process."""

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
        extra_options = dict(client_options or {})
        # client_options: further azure-core keywords; a `raw_response_hook` among them runs after ours.
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
        self._client = CachedClient(self._new_client, self._create_table)

    async def query(
        self, query: str, parameters: Mapping[str, Any], *, action: str, select: list[str] | None = None
    ) -> list[Entity]:
        """Return every entity a parameterised filter matches."""
        return [entity async for page in self.pages(query, parameters, action=action, select=select) for entity in page]

    async def pages(
        self, query: str, parameters: Mapping[str, Any], *, action: str, select: list[str] | None = None
    ) -> AsyncIterator[list[Entity]]:
        """Yield the entities a parameterised filter matches, one service page at a time."""
        client = await self._client.get()
        with _TRANSLATION.translated(action):
            pages = client.query_entities(
                query, parameters=dict(parameters), select=select, results_per_page=PAGE_SIZE
            ).by_page()
            async for page in pages:
                yield [entity async for entity in page]

    async def write(self, operation: Operation, *, action: str) -> str | None:
        """Carry out one operation on its own (a `create`, `merge`, `upsert` or `delete`); return the row's new ETag."""
        kind, entity, options = operation
        client = await self._client.get()
        with _TRANSLATION.translated(action):
            if kind == "create":
                return _written_etag(await client.create_entity(entity))
            if kind == "update":
                return _written_etag(await client.update_entity(entity, **options))
            if kind == "upsert":
                return _written_etag(await client.upsert_entity(entity, **options))
            if kind == "delete":
                await client.delete_entity(entity["PartitionKey"], entity["RowKey"], **options)
                return None
        raise ValueError(f"unknown table operation {kind!r}")

    async def transact(self, operations: Sequence[Operation], *, action: str) -> list[str | None]:
        """Carry out up to 100 operations on one partition, all or none; return each written row's new ETag."""
        if not operations:
            return []
        if len(operations) > MAX_BATCH:
            raise ValueError(f"a transaction holds at most {MAX_BATCH} operations")
        client = await self._client.get()
        with _TRANSLATION.translated(action):
            answers = await client.submit_transaction(list(operations))
        return [_written_etag(answer) for answer in answers or []]

    async def close(self) -> None:
        """Close the client and any credential; the next call opens them again."""
        await self._client.close()

    def _on_response(self, response: PipelineResponse[Any, Any]) -> None:
        """SDK hook on every HTTP response, before the retry policy sees it."""
        headers = response.http_response.headers
        if response.http_response.status_code == 404 and headers.get("x-ms-error-code") == "TableNotFound":
            self._client.vanished()
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

    async def _create_table(self, client: TableClient) -> None:
        with _TRANSLATION.translated("create table"):
            try:
                await client.create_table()
                logger.info("created table %s", self.settings.table_name)
            except ResourceExistsError:
                pass

    def _new_client(self) -> tuple[TableClient, AsyncTokenCredential | None]:
        storage = self.settings.storage
        table_name = self.settings.table_name
        if storage.connection_string:
            try:
                client = TableClient.from_connection_string(
                    storage.connection_string, table_name, **self._client_options
                )
                return client, None
            except ValueError:
                raise ConfigurationError(f"the connection string in {storage.source} is malformed") from None
        assert storage.table_service_uri is not None
        credential = identity_credential(storage.client_id)
        try:
            client = TableClient(storage.table_service_uri, table_name, credential=credential, **self._client_options)
        except ValueError as error:
            asyncio.get_running_loop().create_task(credential.close())
            raise ConfigurationError(f"{storage.source}__tableServiceUri is not usable: {error}") from None
        return client, credential


def _table_error(action: str, error: HttpResponseError) -> StorageError | None:
    """The errors only the table answers: a failed transaction, a conflicting row."""
    if isinstance(error, TableTransactionError):
        return _transaction_error(action, error)
    if isinstance(error, ResourceNotFoundError | ResourceModifiedError):
        return RowChangedError(f"{action}: row missing or changed ({error.status_code})")
    if isinstance(error, ResourceExistsError):
        return RowExistsError(f"{action}: the row exists")
    return None


def _transaction_error(action: str, error: TableTransactionError) -> StorageError | None:
    if error.status_code in (404, 412):
        return RowChangedError(f"{action}: a row changed meanwhile", index=error.index)
    if error.status_code == 409:
        return RowExistsError(f"{action}: a row exists", index=error.index)
    if error.status_code == 400:
        return BatchRejectedError(f"{action}: the transaction was rejected")
    return None


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


# A table deleted while the process runs is also flagged by _on_response; the next call creates it again.
_TRANSLATION = Translation("table", gone_code="TableNotFound", specific=_table_error, retry_after=_retry_after)


def etag_of(entity: Any) -> str | None:
    """Return the ETag of an entity as read (None when the service gave none)."""
    metadata = getattr(entity, "metadata", None) or {}
    etag = metadata.get("etag")
    return str(etag) if etag else None


def _written_etag(answer: Any) -> str | None:
    # A single write answers with its response metadata: a mapping holding the new ETag.
    etag = answer.get("etag") if isinstance(answer, Mapping) else None
    return str(etag) if etag else None


def int64(value: int) -> Any:
    """Return an integer property written as Int64 (a plain int over 32 bits is refused as Int32)."""
    return EntityProperty(value, EdmType.INT64)


def int_value(value: Any) -> int:
    """Return an integer property as read (Int64 values arrive wrapped in an EntityProperty)."""
    raw = getattr(value, "value", value)
    return int(raw) if isinstance(raw, int | str) and str(raw).lstrip("-").isdigit() else 0
