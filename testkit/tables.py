"""Tables for tests and benchmarks: settings for a store on a table of its own, stores on fresh tables, and a
table's rows read straight from Azurite (bypassing the store)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables.aio import TableClient, TableServiceClient

from mapping.keys import BOOKKEEPING_PREFIX, INDEX_PREFIX, PRESENCE_ROW, SHARDED_PREFIX
from mapping.presence.store import ConnectionStore
from mapping.settings import Settings, StorageConnection
from testkit.azurite import Azurite


def unique_table_name() -> str:
    """Return a table name no other test uses."""
    return f"t{uuid.uuid4().hex[:20]}"


def make_settings(connection_string: str, table: str, **overrides: object) -> Settings:
    """Build settings for a store on the given storage and table; rooms open to all, anyone watched and no call budget
    unless overridden (unlike the app's defaults: for the tests written before access and budgets were decided)."""
    values: dict[str, object] = {
        "storage": StorageConnection(connection_string=connection_string),
        "table_name": table,
        "rooms_open": ("*",),
        "presence_watch": "anyone",
        "client_call_rate": 0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


async def drop_table(azurite: Azurite, table: str) -> None:
    """Delete a table from Azurite (a missing one is fine)."""
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        await service.delete_table(table)


@contextlib.asynccontextmanager
async def stores_on_one_table(
    azurite: Azurite, *variants: Mapping[str, Any], store_options: Mapping[str, Any] | None = None
) -> AsyncIterator[tuple[ConnectionStore, ...]]:
    """Stores on one fresh table, a store per settings variant (as for make_settings); all closed, the table dropped."""
    table = unique_table_name()
    options = store_options or {}
    stores = tuple(ConnectionStore(make_settings(azurite.connection_string, table, **v), **options) for v in variants)
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()
        await drop_table(azurite, table)


@contextlib.asynccontextmanager
async def store_on_own_table(
    azurite: Azurite, *, store_options: Mapping[str, Any] | None = None, **settings: Any
) -> AsyncIterator[ConnectionStore]:
    """A store on a fresh table of its own (`settings` as for make_settings), closed and its table dropped after."""
    async with stores_on_one_table(azurite, settings, store_options=store_options) as (store,):
        yield store


async def all_rows(azurite: Azurite, table: str) -> list[dict[str, object]]:
    """Read every row of a table straight from Azurite, bypassing the store."""
    async with TableClient.from_connection_string(azurite.connection_string, table) as client:
        try:
            return [dict(row) async for row in client.list_entities()]
        except ResourceNotFoundError:
            return []


async def table_rows(azurite: Azurite, table: str) -> list[dict[str, object]]:
    """Read the connection rows of a table (no bookkeeping: index, presence, rooms) straight from Azurite."""
    return [
        row
        for row in await all_rows(azurite, table)
        if not str(row["PartitionKey"]).startswith(BOOKKEEPING_PREFIX)
        and not str(row["RowKey"]).startswith(BOOKKEEPING_PREFIX)
    ]


async def presence_rows(azurite: Azurite, table: str) -> dict[str, dict[str, object]]:
    """Read the presence rows of a table straight from Azurite, by user key."""
    return {str(row["PartitionKey"]): row for row in await all_rows(azurite, table) if row["RowKey"] == PRESENCE_ROW}


async def index_rows(azurite: Azurite, table: str) -> list[dict[str, object]]:
    """Read the expiry-index entries of a table straight from Azurite."""
    rows = await all_rows(azurite, table)
    return [row for row in rows if str(row["PartitionKey"]).startswith((INDEX_PREFIX, SHARDED_PREFIX))]
