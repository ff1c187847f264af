"""A burst of one user's connections end to end: 200 real `@microsoft/signalr` clients at once, through the emulator,
the local host, the function app and Azurite."""

from __future__ import annotations

import asyncio
import time

import pytest

from mapping.keys import user_key
from testkit.azurite import Azurite
from testkit.stack import SignalRClients, api, running_stack, unique_user, wait_until
from testkit.tables import table_rows
from tests.e2e.test_e2e_audience import TARGETS, drop_afterwards, merged, server_state, state, watched

pytestmark = pytest.mark.slow

TABS = 200


async def test_200_simultaneous_real_clients_of_one_user_all_connect_and_presence_converges(azurite: Azurite) -> None:
    """200 clients of one user started at once all connect, a watcher's presence merged by version says 200 tabs as
    the server does; all 200 stopped at once, it says offline, and no row of theirs is left."""
    kiosk = unique_user("kiosk")
    with running_stack(azurite, audience="scoped") as stack:
        async with drop_afterwards(azurite, stack), SignalRClients(stack) as clients:
            await clients.connect("w1", unique_user("watcher"), targets=TARGETS)
            await watched(clients, "w1", [kiosk])
            started = time.monotonic()
            tabs = [f"k{number}" for number in range(TABS)]
            opening = (clients.connect(tab, kiosk, targets=["error"], ignore=["presence"]) for tab in tabs)
            ids = await asyncio.gather(*opening)
            connected = time.monotonic() - started
            assert len(set(ids)) == TABS, f"connected in {connected:.1f} s"

            async def watcher_says(online: bool, connections: int) -> bool:
                latest = merged(clients, "w1").get(kiosk.casefold())
                truth = await server_state(stack, kiosk)
                return latest is not None and state(latest) == truth and truth[:2] == (online, connections)

            await wait_until(lambda: watcher_says(True, TABS), within=60, what="presence of 200 tabs")
            converged = time.monotonic() - started
            status, body = await api(stack, "GET", f"users/{kiosk}")
            assert status == 200
            assert {c["connectionId"] for c in body["connections"]} == set(ids)
            assert errors_of(clients, tabs) == []

            stopping = time.monotonic()
            await asyncio.gather(*(clients.stop(tab) for tab in tabs))
            await wait_until(lambda: watcher_says(False, 0), within=60, what="presence offline after 200 stops")
            stopped = time.monotonic() - stopping
            latest = merged(clients, "w1")[kiosk.casefold()]
            timing = f"connected in {connected:.1f} s, converged {converged:.1f} s, offline {stopped:.1f} s after stops"
            assert state(latest)[:3] == (False, 0, None), timing
            assert latest["lastSeen"] is not None
            rows = [row for row in await table_rows(azurite, stack.table) if row["PartitionKey"] == user_key(kiosk)]
            assert rows == []


def errors_of(clients: SignalRClients, tabs: list[str]) -> list[object]:
    """Return every error message the tabs received."""
    return [args for tab in tabs for args in clients.received(tab, "error")]
