"""What one client may spend, against Azurite: one connection's calls spread over two processes (two stores, each
with its own memory, on one table), and the calls that change nothing (budget B1-B3, rooms R5)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench.proxy import CountingProxy
from mapping import events
from mapping.presence.store import ConnectionStore
from mapping.rooms.watch import watch_digest
from mapping.signalr.invocation import Invocation
from mapping.signalr.messages import Message
from testkit.azurite import Azurite
from testkit.faultproxy import PASS, Fault, fault_proxy
from testkit.tables import drop_table, make_settings, unique_table_name

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BURST, RATE = 20, 5


@dataclass
class Moment:
    """The processes' shared clock, moved by the test."""

    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at


@contextlib.asynccontextmanager
async def two_processes(
    azurite: Azurite, **settings: Any
) -> AsyncIterator[tuple[ConnectionStore, ConnectionStore, Moment, CountingProxy]]:
    """Two stores on one table behind a request counter, as two instances of the app (each its own memory)."""
    table, clock = unique_table_name(), Moment()
    with CountingProxy(azurite.port) as proxy:
        counted = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
        options = {"client_call_burst": BURST, "client_call_rate": RATE, **settings}
        stores = [ConnectionStore(make_settings(counted, table, **options), clock=clock) for _ in range(2)]
        try:
            yield stores[0], stores[1], clock, proxy
        finally:
            for store in stores:
                await store.close()
            await drop_table(azurite, table)


async def loop_send_to_room(azurite: Azurite, **settings: Any) -> tuple[int, int, int]:
    """ann's c1 in lobby sends to it every 20 ms for 60 s, the calls dealt round-robin to two processes; return the
    calls accepted, the refusals answered, and the table requests of the loop."""
    async with two_processes(azurite, **settings) as (first, second, clock, proxy):
        await events.on_connected(first, Invocation("connections", "connected", "chat", "c1", "ann"))
        await events.on_join(first, call("join", "c1", "lobby"))
        start = clock.at = T0 + timedelta(seconds=10)  # the bucket full again
        accepted = answered = 0
        with proxy.counting() as requests:
            for step in range(3000):
                clock.at = start + timedelta(milliseconds=20 * step)
                store = (first, second)[step % 2]
                sent = await events.on_send_to_room(store, call("sendToRoom", "c1", "lobby", {"n": step}))
                if refused(sent):
                    answered += bool(sent)
                else:
                    assert [m["target"] for m in sent if "target" in m] == ["newMessage"], sent
                    accepted += 1
    return accepted, answered, sum(requests.values())


def call(event: str, connection: str, *arguments: Any) -> Invocation:
    """A client call of ann's `connection`."""
    return Invocation("messages", event, "chat", connection, "ann", list(arguments))


def refused(messages: list[Message]) -> bool:
    """Whether a call was refused for its budget (one error, or nothing at all within a second of one)."""
    return messages == [] or any(m.get("arguments", [{}])[0].get("error") == "too many calls" for m in messages)


async def test_one_connections_budget_holds_across_two_processes(azurite: Azurite) -> None:
    """A client looping sendToRoom every 20 ms for 60 s over two processes: the calls accepted stay within 20% of
    burst + rate x 60 (and at least 80% of it are accepted), at most one refusal a second per process is answered,
    and the budget costs at most one table request per ten accepted calls over the same loop without it."""
    accepted, answered, requests = await loop_send_to_room(azurite)
    free, _, free_requests = await loop_send_to_room(azurite, client_call_rate=0)
    bound = BURST + RATE * 60
    print(
        f"\nbudget on: {accepted} of 3000 accepted (bound {bound}), {answered} refusals answered, {requests} requests"
    )
    print(f"budget off: {free} accepted, {free_requests} requests")
    assert free == 3000
    assert 0.8 * bound <= accepted <= 1.2 * bound
    assert answered <= 2 * 61
    # A call reads its caller's partition once, with or without a budget; the rest of the loop's requests without
    # one (lease refreshes) do not grow with the calls. What the budget adds over both: at most one in ten.
    fixed = free_requests - free
    assert requests - accepted - fixed <= accepted / 10


async def test_a_refused_call_reads_writes_and_sends_nothing(azurite: Azurite) -> None:
    """Over its budget, a call costs no table request and sends nothing but its one error."""
    async with two_processes(azurite) as (first, _, _, proxy):
        await events.on_connected(first, Invocation("connections", "connected", "chat", "c1", "ann"))
        await events.on_join(first, call("join", "c1", "lobby"))
        for _ in range(BURST - 1):  # the join took one
            await events.on_send_to_room(first, call("sendToRoom", "c1", "lobby", "hi"))
        with proxy.counting() as requests:
            sent = await events.on_send_to_room(first, call("sendToRoom", "c1", "lobby", "one too many"))
    assert [m["arguments"][0]["error"] for m in sent] == ["too many calls"]
    assert sent[0]["arguments"][0]["retryAfter"] > 0
    assert sum(requests.values()) == 0


def targets(messages: list[Message]) -> list[tuple[str, str]]:
    """Return each message's target or group action, with whom it goes to."""
    return [
        (str(m.get("target") or m.get("action")), str(m.get("groupName") or m.get("connectionId"))) for m in messages
    ]


async def test_calls_that_change_nothing_cost_only_the_caller(azurite: Azurite) -> None:
    """A join of a room the user is in (after the minute a retry may need), a status set again, a leave of a room the
    user is not in and an unwatch of users not watched: the caller alone is answered, nothing is written (rooms R5)."""
    async with two_processes(azurite) as (store, _, clock, proxy):
        await events.on_connected(store, Invocation("connections", "connected", "chat", "c1", "ann"))
        await events.on_join(store, call("join", "c1", "lobby"))
        soon = await events.on_join(store, call("join", "c1", "lobby"))  # a client's retry: announced again
        assert ("room", "lobby") in targets(soon)
        await events.on_set_status(store, call("setStatus", "c1", "busy"))
        clock.at = T0 + timedelta(minutes=2)
        await events.on_set_status(store, call("setStatus", "c1", "busy"))  # refreshes the lease: announced
        clock.at += timedelta(seconds=5)
        with proxy.counting() as requests:
            joined = await events.on_join(store, call("join", "c1", "lobby"))
            status = await events.on_set_status(store, call("setStatus", "c1", "busy"))
            left = await events.on_leave(store, call("leave", "c1", "elsewhere"))
            unwatched = await events.on_unwatch(store, call("unwatch", "c1", ["nobody"]))
    assert targets(joined) == [("add", "lobby"), ("presenceSync", "c1")]
    assert targets(status) == [("presence", "c1")]
    assert status[0]["arguments"][0]["status"] == "busy"
    assert targets(left) == [("remove", "elsewhere")]
    assert targets(unwatched) == [("remove", "~presence.nobody")]
    writes = {op: n for op, n in requests.items() if op not in ("query", "point read")}
    assert writes == {}, requests


class Closer:
    """Stands in for SignalR's REST close of a connection: records each connection closed."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    async def close_user(self, hub: str, user_id: str, *, reason: str) -> bool:
        """Confirm (unused here)."""
        return True

    async def close_connection(self, hub: str, connection_id: str, *, reason: str) -> bool:
        """Record the connection and confirm."""
        self.closed.append(connection_id)
        return True


async def test_caps_on_a_rooms_members_and_a_users_connections(azurite: Azurite) -> None:
    """ROOM_MAX_MEMBERS=2: a third member's join is refused as full (a member's own join still answers);
    USER_MAX_CONNECTIONS=2: a third live connection of a user is closed at the service and not mapped."""
    async with two_processes(azurite, room_max_members=2, user_max_connections=2) as (store, _, _, _):
        closer = Closer()
        for user, tab in (("ann", "a1"), ("bob", "b1"), ("cy", "c1"), ("ann", "a2"), ("ann", "a3")):
            invocation = Invocation("connections", "connected", "chat", tab, user)
            await events.on_connected(store, invocation, service=closer)
        assert closer.closed == ["a3"]
        assert sorted(row.connection_id for row in await store.connections_of("ann")) == ["a1", "a2"]
        for user, tab in (("ann", "a1"), ("bob", "b1")):
            joined = await events.on_join(store, Invocation("messages", "join", "chat", tab, user, ["club"]))
            assert not [m for m in joined if m.get("target") == "error"]
        full = await events.on_join(store, Invocation("messages", "join", "chat", "c1", "cy", ["club"]))
        assert [m["arguments"][0] for m in full] == [
            {"error": "this room is full", "room": "club", "refused": True, "full": True, "call": "join"}
        ]
        again = await events.on_join(store, Invocation("messages", "join", "chat", "a2", "ann", ["club"]))
        assert not [m for m in again if m.get("target") == "error"]


FAULTS: dict[str, Callable[[], tuple[Fault, Fault]]] = {
    "outage": lambda: (Fault.answer(503), Fault.answer(503)),
    "committed, answered 500": lambda: (Fault.committed(500), PASS),
    "committed, then outage": lambda: (Fault.committed(500), Fault.answer(503)),
}


@pytest.mark.parametrize("mode", list(FAULTS))
async def test_a_lost_budget_publish_refuses_nothing_for_ever_and_loses_no_presence(
    azurite: Azurite, mode: str
) -> None:
    """The publish of a connection's budget (the tenth token's call) failed three ways: the call is answered as if it
    had not failed, the spend stays counted, calls are accepted again as the bucket refills, and presence holds."""
    async with fault_proxy(azurite.port) as proxy:
        table, clock = unique_table_name(), Moment()
        through = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
        settings = make_settings(through, table, client_call_burst=BURST, client_call_rate=RATE)
        store = ConnectionStore(settings, clock=clock, retry_total=1, retry_backoff_factor=0.01, retry_timeout=2.0)
        try:
            await events.on_connected(store, Invocation("connections", "connected", "chat", "c1", "ann"))
            await events.on_join(store, call("join", "c1", "lobby"))  # a token
            for step in range(8):
                await events.on_send_to_room(store, call("sendToRoom", "c1", "lobby", step))
            before = proxy.requests
            await events.on_send_to_room(store, call("sendToRoom", "c1", "lobby", "tenth"))  # publishes
            publish = proxy.requests - before  # the last of its requests
            first, after = FAULTS[mode]()
            for step in range(9):
                await events.on_send_to_room(store, call("sendToRoom", "c1", "lobby", f"again {step}"))
            injected = proxy.faults_injected
            proxy.plan(*([PASS] * (publish - 1)), first, then=after)
            sent = await events.on_send_to_room(store, call("sendToRoom", "c1", "lobby", "the failing one"))
            proxy.plan(then=PASS)
            assert proxy.faults_injected > injected, "the publish was failed"
            assert [m.get("target") for m in sent] == ["newMessage"], (mode, sent)
            accepted = 0
            for step in range(50):  # 10 s at 5 calls a second: the bucket refills
                clock.at += timedelta(seconds=0.2)
                reply = await events.on_send_to_room(store, call("sendToRoom", "c1", "lobby", f"later {step}"))
                accepted += not refused(reply)
            assert accepted >= 45, (mode, accepted)
            assert (await store.presence_of("ann")).state.online
        finally:
            proxy.plan(then=PASS)
            await store.close()
            await drop_table(azurite, table)


async def test_every_crash_point_of_a_watch_ends_watched_after_the_clients_retry(azurite: Azurite) -> None:
    """Fail each table request of a `watch` of two users (reads, the connection's watch list) three ways: the caller is
    answered an error to retry or the watch; after the retry it is subscribed and its row names exactly them."""
    async with fault_proxy(azurite.port) as proxy:
        through = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")

        @contextlib.asynccontextmanager
        async def fresh() -> AsyncIterator[ConnectionStore]:
            table = unique_table_name()
            settings = make_settings(through, table, presence_watch="anyone")
            store = ConnectionStore(settings, retry_total=1, retry_backoff_factor=0.01, retry_timeout=2.0)
            try:
                await events.on_connected(store, Invocation("connections", "connected", "chat", "k1", "kai"))
                yield store
            finally:
                proxy.plan(then=PASS)
                await store.close()
                await drop_table(azurite, table)

        watch = Invocation("messages", "watch", "chat", "k1", "kai", [["lee", "max"]])
        async with fresh() as store:
            before = proxy.requests
            await events.on_watch(store, watch)
            total = proxy.requests - before
        points = 0
        for k in range(1, total + 1):
            for mode, faults in FAULTS.items():
                async with fresh() as store:
                    first, after = faults()
                    proxy.plan(*([PASS] * (k - 1)), first, then=after)
                    sent = await events.on_watch(store, watch)
                    proxy.plan(then=PASS)
                    errors = [m["arguments"][0] for m in sent if m.get("target") == "error"]
                    assert all(error.get("retry") is True for error in errors), (k, mode, errors)
                    if errors:
                        sent = await events.on_watch(store, watch)  # the client's retry
                    label = (k, mode, sent)
                    assert not [m for m in sent if m.get("target") == "error"], label
                    assert {m["groupName"] for m in sent if m.get("action") == "add"} == {
                        "~presence.lee",
                        "~presence.max",
                    }
                    row = (await store.read_user("kai")).rows["k1"]
                    assert row.watching == {watch_digest("lee"), watch_digest("max")}, label
                points += 1
    print(f"\nwatch: {total} requests, {points} crash points, {points} converged")
