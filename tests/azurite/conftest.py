"""Fixtures of the Azurite tests alone: a store on a fresh table, the reliability figures, a SignalR stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from mapping.presence.store import ConnectionStore
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import SignalRLiveness
from testkit.azurite import Azurite
from testkit.figures import FIGURES, Figures
from testkit.signalr_rest import ACCESS_KEY, SignalRRest, signalr_rest
from testkit.tables import store_on_own_table


@pytest.fixture
async def store(azurite: Azurite) -> AsyncIterator[ConnectionStore]:
    """A store on its own fresh table in Azurite, dropped after the test."""
    async with store_on_own_table(azurite, store_options={"retry_total": 1}) as store:
        yield store


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
