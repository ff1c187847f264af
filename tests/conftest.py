"""Test fixtures: a real Azurite started once per run from node_modules, a fresh table per test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables.aio import TableClient, TableServiceClient

from figures import FIGURES, Figures
from mapping.functions import runtime
from mapping.keys import BOOKKEEPING_PREFIX
from mapping.presence.expiry import INDEX_PREFIX, SHARDED_PREFIX
from mapping.presence.state import PRESENCE_ROW
from mapping.presence.store import ConnectionStore
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import SignalRLiveness
from testkit.azurite import DEV_KEY, Azurite, free_port, running_azurite
from testkit.signalr_rest import ACCESS_KEY, SignalRRest, signalr_rest
from testkit.tables import make_settings, unique_table_name

# Re-exported for the test modules, which import them from here.
__all__ = ["DEV_KEY", "Azurite", "free_port", "make_settings", "running_azurite", "unique_table_name"]


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Start Azurite's table service (in memory) on a free port for the whole test run."""
    with running_azurite() as service:
        yield service


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


@pytest.fixture
async def store(azurite: Azurite) -> AsyncIterator[ConnectionStore]:
    """A store on its own fresh table in Azurite, dropped after the test."""
    async with store_on_own_table(azurite, store_options={"retry_total": 1}) as store:
        yield store


async def drop_table(azurite: Azurite, table: str) -> None:
    """Delete a table from Azurite (a missing one is fine)."""
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        await service.delete_table(table)


@pytest.fixture
async def app_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, str]]:
    """App settings in the environment for the function app, on a fresh table; the app's store is reset around it."""
    env = {
        "MAPPING_STORAGE": azurite.connection_string,
        "MAPPING_TABLE": unique_table_name(),
        "MAPPING_TTL_SECONDS": "600",
        "SIGNALR_HUB": "chat",
        "PRESENCE_EVENTS": "true",
        "PRESENCE_AUDIENCE": "hub",
        "PRESENCE_GRACE_SECONDS": "0",
        "SWEEP_SCHEDULE": "0 */5 * * * *",
    }
    for name in list(os.environ):
        if name.startswith(("MAPPING_", "AzureWebJobsStorage")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    await runtime.reset()
    yield env
    await runtime.reset()
    await drop_table(azurite, env["MAPPING_TABLE"])


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


@pytest.fixture
async def restored_environment() -> AsyncIterator[None]:
    """The bench points the app at its tables through the environment: put the environment back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    await runtime.reset()


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    """The reliability figures of this run, written to JSON when the session ends."""
    yield FIGURES
    FIGURES.write()


@pytest.fixture
async def signalr_service() -> AsyncIterator[tuple[SignalRRest, SignalRLiveness]]:
    """A loopback SignalR REST stand-in and a real liveness client pointed at it."""
    async with signalr_rest() as service:
        client = SignalRLiveness(SignalRConnection(endpoint=service.endpoint, access_key=ACCESS_KEY))
        yield service, client
        await client.close()
