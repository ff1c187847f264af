"""A connection its `connected` did not map (a failure that did not refuse it, or a late event), against Azurite: the
service is asked to close it, and its first call maps it when the service says it is open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from mapping import events
from mapping.errors import StorageError
from mapping.presence.store import ConnectionStore
from mapping.signalr.invocation import Invocation
from testkit.azurite import Azurite
from testkit.delayed import FakeDelayedActions
from testkit.faultproxy import PASS, Fault, fault_proxy
from testkit.tables import drop_table, make_settings, unique_table_name


class Service:
    """Stands in for SignalR's REST API: records closes, and says whether a connection is open."""

    def __init__(self, *, open_connections: set[str] | None = None) -> None:
        self.closed: list[str] = []
        self.open = open_connections

    async def close_user(self, hub: str, user_id: str, *, reason: str) -> bool:
        """Confirm."""
        return True

    async def close_connection(self, hub: str, connection_id: str, *, reason: str) -> bool:
        """Record the connection and confirm."""
        self.closed.append(connection_id)
        return True

    async def alive(self, hub: str, connection_id: str) -> bool | None:
        """Whether the connection is open (None: no word)."""
        return None if self.open is None else connection_id in self.open


@pytest.fixture
async def store(azurite: Azurite) -> AsyncIterator[ConnectionStore]:
    """A store on a fresh table through a fault proxy (so `connected` can be made to fail)."""
    async with fault_proxy(azurite.port) as proxy:
        table = unique_table_name()
        through = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
        store = ConnectionStore(make_settings(through, table, direct_messages="anyone"), retry_total=0)
        store.proxy = proxy  # type: ignore[attr-defined]
        try:
            yield store
        finally:
            await store.close()
            await drop_table(azurite, table)


def connected(user: str, connection: str) -> Invocation:
    """The connected event of `connection`."""
    return Invocation("connections", "connected", "chat", connection, user)


def call(event: str, user: str, connection: str, *arguments: object) -> Invocation:
    """A client call of `connection`."""
    return Invocation("messages", event, "chat", connection, user, list(arguments))


async def test_a_failed_connected_closes_the_connection_and_its_first_call_maps_it(store: ConnectionStore) -> None:
    """Storage fails during `connected`: the service is asked to close the connection and the event raises; if the
    client stays connected anyway, its setStatus maps it (announced online) and a direct message reaches it."""
    service = Service(open_connections={"a1"})
    store.probe = service
    store.proxy.plan(then=Fault.answer(503))  # type: ignore[attr-defined]
    with pytest.raises(StorageError):
        await events.on_connected(store, connected("ann", "a1"), service=service)
    store.proxy.plan()  # type: ignore[attr-defined]
    assert service.closed == ["a1"]
    assert await store.connections_of("ann") == []
    sent = await events.on_set_status(store, call("setStatus", "ann", "a1", "here"))
    presence = [m["arguments"][0] for m in sent if m.get("target") == "presence"]
    assert presence[-1]["online"] is True
    assert presence[-1]["status"] == "here"
    assert [c.connection_id for c in await store.connections_of("ann")] == ["a1"]
    await events.on_connected(store, connected("bob", "b1"))
    delivered = await events.on_send(store, call("send", "bob", "b1", "ann", "hi"))
    assert [m.get("connectionId") for m in delivered] == ["a1"]


async def test_a_call_before_its_late_connected_maps_it_and_the_event_changes_nothing(store: ConnectionStore) -> None:
    """A client calls before its `connected` is processed: the call maps it; the late event finds the row."""
    store.probe = Service(open_connections={"c1"})
    first = await events.on_send_to_room(store, call("sendToRoom", "cy", "c1", "lobby", "hello"))
    assert [m.get("target") for m in first if m.get("target") == "presence"] == ["presence"]
    late = await events.on_connected(store, connected("cy", "c1"))
    assert not [m for m in late if m.get("target") == "presence" and m["arguments"][0]["connections"] != 1]
    assert [c.connection_id for c in await store.connections_of("cy")] == ["c1"]


@pytest.mark.parametrize("open_connections", [set(), None], ids=["gone", "nobody to ask"])
async def test_a_call_the_service_does_not_vouch_for_maps_nothing(
    store: ConnectionStore, open_connections: set[str] | None
) -> None:
    """A call that outlived its connection's disconnect (the service says it is gone), or one nobody can vouch for (no
    REST access), writes no row."""
    store.probe = Service(open_connections=open_connections)
    await events.on_send_to_room(store, call("sendToRoom", "dee", "d1", "lobby", "late"))
    assert await store.connections_of("dee") == []


MODES: dict[str, Callable[[], tuple[Fault, Fault]]] = {
    "outage from here on": lambda: (Fault.answer(503), Fault.answer(503)),
    "one request fails": lambda: (Fault.answer(503), PASS),
    "committed, answered 500": lambda: (Fault.committed(500), PASS),
}


@pytest.mark.parametrize("closed", [True, False], ids=["closed by the service", "still open"])
async def test_every_crash_point_of_a_connected_that_refuses_nothing_converges(
    store: ConnectionStore, closed: bool
) -> None:
    """Fail each table request of `connected` three ways; the client is not refused. Closed through the service, its
    disconnected event follows and leaves no row; left open, its first call maps it: either way presence ends true."""
    proxy = store.proxy  # type: ignore[attr-defined]
    before = proxy.requests
    await events.on_connected(store, connected("probe", "p1"))
    total = proxy.requests - before
    assert total > 0
    converged = failures = 0
    for k in range(1, total + 1):
        for mode, faults in MODES.items():
            label = f"request {k} of {total}, {mode}"
            user, tab = f"u{k}{len(mode)}{int(closed)}", f"t{k}-{len(mode)}-{int(closed)}"
            service = Service(open_connections=set() if closed else {tab})
            store.probe = service
            fault, then = faults()
            proxy.plan(*([PASS] * (k - 1)), fault, then=then)
            failed = False
            try:
                await events.on_connected(store, connected(user, tab), service=service)
            except StorageError:
                failed = True
            proxy.plan()
            assert failed == (service.closed == [tab]), label  # a failure asks the service to close it, only then
            if failed and closed:
                await events.on_disconnected(store, disconnected(user, tab), delayed=FakeDelayedActions)
                expected: list[str] = []
            else:
                await events.on_set_status(store, call("setStatus", user, tab, "here"))
                expected = [tab]
            assert [c.connection_id for c in await store.connections_of(user)] == expected, label
            presence = await store.presence_of(user)
            assert (presence.state.online, presence.state.connections) == (bool(expected), len(expected)), label
            converged += 1
            failures += failed
    assert converged == total * len(MODES)
    assert failures >= total  # every request's outage failed the event: each point was reached


def disconnected(user: str, connection: str) -> Invocation:
    """The disconnected event of `connection`."""
    return Invocation("connections", "disconnected", "chat", connection, user)
