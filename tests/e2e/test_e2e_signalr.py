"""End to end with the official `@microsoft/signalr` Node client: emulator, local host, function app, Azurite."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from mapping.signalr.tokens import access_key_token
from testkit.azurite import Azurite
from testkit.stack import (
    ACCESS_KEY,
    HUB,
    SECONDARY_KEY,
    ClientCallFailed,
    SignalRClients,
    Stack,
    api,
    failing_storage_stack,
    running_stack,
    unique_user,
    wait_until,
)
from testkit.tables import table_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(azurite: Azurite) -> Iterator[Stack]:
    """One emulator and local host for this module's tests, on their own table."""
    with running_stack(azurite) as running:
        yield running


@pytest.fixture
async def clients(stack: Stack) -> AsyncIterator[SignalRClients]:
    """A Node process with real SignalR clients; every connection is stopped afterwards."""
    async with SignalRClients(stack) as driver:
        yield driver


async def rows_of(azurite: Azurite, stack: Stack, user: str) -> list[dict[str, Any]]:
    """Return a user's rows, read straight from the table."""
    return [row for row in await table_rows(azurite, stack.table) if row["PartitionKey"] == user.casefold()]


async def connection_ids(stack: Stack, user: str) -> set[str]:
    """Return the live connection ids the app reports for a user."""
    status, body = await api(stack, "GET", f"users/{user}")
    assert status == 200, body
    return {c["connectionId"] for c in body["connections"]}


async def test_negotiate_and_connect_write_the_row(azurite: Azurite, stack: Stack, clients: SignalRClients) -> None:
    """A client negotiates through the app, connects to the emulator, and its row holds its user and connection."""
    alice = unique_user("Alice")
    connection_id = await clients.connect("a1", alice)
    [row] = await rows_of(azurite, stack, alice)
    assert row["RowKey"] == connection_id
    assert row["ConnectionId"] == connection_id
    assert row["UserName"] == alice
    assert row["Hub"] == "chat"
    assert row["UserAgent"] == ""  # the upstream's headers are the service's own: no browser User-Agent
    assert await connection_ids(stack, alice.upper()) == {connection_id}


async def test_negotiate_without_a_principal_is_refused(stack: Stack, clients: SignalRClients) -> None:
    """Without `x-ms-client-principal-name` negotiate's binding fails before the function runs, as in Azure: a 500
    with no body, and the client cannot start. A header that is present but blank reaches the function: its 401.
    (Deployed, App Service Authentication answers 401 before either: docs/deploy.md, "What negotiate answers".)"""
    with pytest.raises(ClientCallFailed, match="Status code '500'"):
        await clients.connect("anon", None)
    # `api` checks each answer against the OpenAPI document: the 500 with no body, the 401 with the app's JSON.
    assert await api(stack, "POST", "negotiate") == (500, None)
    status, body = await api(stack, "POST", "negotiate", headers={"x-ms-client-principal-name": " "})
    assert status == 401, body
    assert body["error"]


async def test_http_send_reaches_every_tab_of_the_user_and_nobody_else(stack: Stack, clients: SignalRClients) -> None:
    """POST /api/send delivers to both of alice's connections and not to bob's."""
    alice, bob = unique_user("alice"), unique_user("bob")
    await clients.connect("a1", alice)
    await clients.connect("a2", alice)
    await clients.connect("b1", bob, targets=["newMessage", "note"])
    status, body = await api(stack, "POST", "send", json={"to": alice, "message": {"text": "hello"}})
    assert (status, body) == (200, {"to": alice, "delivered": 2})
    expected = [{"from": None, "to": alice, "message": {"text": "hello"}}]
    assert await clients.wait_message("a1", "newMessage") == expected
    assert await clients.wait_message("a2", "newMessage") == expected
    # A later message to bob arrives after anything sent to him before it: so bob got nothing of alice's.
    status, _ = await api(stack, "POST", "send", json={"to": bob, "message": "marker", "target": "note"})
    assert status == 200
    await clients.wait_for(lambda e: e.get("id") == "b1" and e.get("target") == "note", what="bob's marker")
    assert clients.received("b1", "newMessage") == []


def announces(arguments: list[Any], user: str, *, online: bool) -> bool:
    """Return whether a presence message's arguments say `user` is (or is not) online, with a version."""
    [change] = arguments
    return change["user"] == user and change["online"] is online and change["version"] > 0


async def test_presence_on_first_and_last_connection(stack: Stack, clients: SignalRClients) -> None:
    """Each tab opened or closed announces the count; offline, with a last-seen time, only on the last disconnect."""
    alice = unique_user("alice")
    await clients.connect("watcher", unique_user("watcher"), targets=["presence"])

    def heard() -> list[dict[str, Any]]:
        return [a[0] for a in clients.received("watcher", "presence") if a and a[0].get("user") == alice]

    first = await clients.connect("a1", alice)
    await clients.wait_message("watcher", "presence", lambda a: announces(a, alice, online=True))
    second = await clients.connect("a2", alice)
    await clients.wait_message("watcher", "presence", lambda a: a[0].get("user") == alice and a[0]["connections"] == 2)
    await clients.stop("a1")
    assert first != second

    async def only_second_left() -> bool:
        return await connection_ids(stack, alice) == {second}

    await wait_until(only_second_left, what="the first connection's row to go")
    await clients.stop("a2")
    await clients.wait_message("watcher", "presence", lambda a: announces(a, alice, online=False))
    newest = sorted({m["version"]: m for m in heard()}.items())
    assert [(m["online"], m["connections"]) for _, m in newest] == [(True, 1), (True, 2), (True, 1), (False, 0)]
    assert newest[-1][1]["lastSeen"] is not None


async def test_client_send_reaches_the_recipient(stack: Stack, clients: SignalRClients) -> None:
    """A client's `send("send", to, message)` reaches the recipient with `from` set to the caller."""
    alice, bob = unique_user("alice"), unique_user("bob")
    await clients.connect("a1", alice)
    await clients.connect("b1", bob)
    await clients.send("a1", "send", bob.upper(), {"text": "hi bob"})
    assert await clients.wait_message("b1", "newMessage") == [
        {"from": alice, "to": bob.upper(), "message": {"text": "hi bob"}}
    ]


async def test_client_send_to_an_offline_user_errors_to_the_caller_only(stack: Stack, clients: SignalRClients) -> None:
    """Sending to someone offline gives the caller one `error` message."""
    alice, nobody = unique_user("alice"), unique_user("nobody")
    await clients.connect("a1", alice)
    await clients.send("a1", "send", nobody, "anyone there?")
    [error] = await clients.wait_message("a1", "error")
    assert error["to"] == nobody
    assert "offline" in error["error"]


async def test_a_refused_direct_message_and_an_offline_recipient_look_the_same(azurite: Azurite) -> None:
    """DIRECT_MESSAGES=shared-room with real clients: a message to an online stranger is answered exactly as one to an
    offline user and reaches nobody; once the two share a room it is delivered."""
    with running_stack(azurite, direct_messages="shared-room") as private:
        async with SignalRClients(private) as clients:
            alice, bob, nobody = unique_user("alice"), unique_user("bob"), unique_user("nobody")
            targets = ["newMessage", "room", "error"]
            await clients.connect("a1", alice, targets=targets, ignore=["presence", "presenceSync"])
            await clients.connect("b1", bob, targets=targets, ignore=["presence", "presenceSync"])
            await clients.send("a1", "join", "dm-lobby")
            await clients.send("b1", "join", "dm-board")
            await clients.wait_message("a1", "room", lambda args: args[0]["user"] == alice)
            await clients.wait_message("b1", "room", lambda args: args[0]["user"] == bob)
            await clients.send("a1", "send", bob, "psst")
            refused = await clients.wait_message("a1", "error", lambda args: args[0].get("to") == bob)
            await clients.send("a1", "send", nobody, "psst")
            offline = await clients.wait_message("a1", "error", lambda args: args[0].get("to") == nobody)
            assert (
                {**refused[0], "to": "?"}
                == {**offline[0], "to": "?"}
                == {"error": "recipient is offline", "to": "?", "call": "send"}
            )
            await clients.send("b1", "join", "dm-lobby")
            await clients.wait_message("a1", "room", lambda args: args[0]["user"] == bob)
            await clients.send("a1", "send", bob, "now we share a room")
            assert await clients.wait_message("b1", "newMessage") == [
                {"from": alice, "to": bob, "message": "now we share a room"}
            ]
            assert clients.received("b1", "newMessage") == [
                [{"from": alice, "to": bob, "message": "now we share a room"}]
            ]


CLOSE_USER = "POST /api/hubs/{hub}/users/{user}/:closeConnections"


def closed(client: str) -> Callable[[dict[str, Any]], bool]:
    """Match the driver's event that `client`'s connection closed."""
    return lambda event: event.get("id") == client and event.get("event") == "closed"


async def test_an_operator_disconnect_closes_every_tab_of_the_user(stack: Stack, clients: SignalRClients) -> None:
    """POST /api/users/{user}/disconnect closes both tabs of the user through the emulator's REST API
    (users/{user}/:closeConnections); the user is offline at once, and another user's tab stays open."""
    mallory, bob = unique_user("mallory"), unique_user("bob")
    await clients.connect("m1", mallory)
    await clients.connect("m2", mallory)
    await clients.connect("b1", bob)
    async with aiohttp.ClientSession() as session, session.get(f"{stack.emulator_url}/admin/rest-calls") as response:
        before = (await response.json())["byRoute"].get(CLOSE_USER, 0)
    assert await api(stack, "POST", f"users/{mallory}/disconnect") == (200, {"user": mallory, "closed": 2})
    async with aiohttp.ClientSession() as session, session.get(f"{stack.emulator_url}/admin/rest-calls") as response:
        assert (await response.json())["byRoute"].get(CLOSE_USER, 0) == before + 1  # one spelling, one call
    for tab in ("m1", "m2"):
        await clients.wait_for(closed(tab), what=f"{tab} closed")
    status, body = await api(stack, "GET", f"users/{mallory}")
    assert (status, body["online"], body["connections"]) == (200, False, [])
    assert await api(stack, "POST", f"users/{mallory}/disconnect") == (200, {"user": mallory, "closed": 0})
    await clients.send("b1", "send", bob, "still here")
    assert await clients.wait_message("b1", "newMessage") == [{"from": bob, "to": bob, "message": "still here"}]
    assert not [e for e in clients.events if e.get("id") == "b1" and e.get("event") == "closed"]


async def test_a_blocked_user_cannot_negotiate_or_stay_connected(stack: Stack, clients: SignalRClients) -> None:
    """PUT /api/users/{user}/block closes the user's open tab and refuses their next connect (negotiate 403);
    DELETE lets them connect again."""
    mallory = unique_user("mallory")
    await clients.connect("m1", mallory)
    assert await api(stack, "PUT", f"users/{mallory}/block") == (200, {"user": mallory, "blocked": True, "closed": 1})
    await clients.wait_for(lambda e: e.get("id") == "m1" and e.get("event") == "closed", what="the tab closed")
    with pytest.raises(ClientCallFailed, match="403"):
        await clients.connect("m2", mallory)
    url = f"{stack.emulator_url}/client/?hub={HUB}"  # a token from before the block, straight to the service
    token = access_key_token(ACCESS_KEY, audience=url, claims={"nameid": mallory})
    with contextlib.suppress(ClientCallFailed):
        await clients.command("connect", id="m4", url=url, user=None, accessToken=token)
    await clients.wait_for(lambda e: e.get("id") == "m4" and e.get("event") in ("closed", "failed"), what="m4 shut")
    status, body = await api(stack, "GET", f"users/{mallory}")
    assert (status, body["blocked"], body["online"], body["connections"]) == (200, True, False, [])
    assert await api(stack, "DELETE", f"users/{mallory}/block") == (200, {"user": mallory, "blocked": False})
    await clients.connect("m3", mallory)
    assert len(await connection_ids(stack, mallory)) == 1


async def test_closing_removes_the_row(azurite: Azurite, stack: Stack, clients: SignalRClients) -> None:
    """Stopping a client makes the emulator send disconnected upstream and the app delete the row."""
    alice = unique_user("alice")
    await clients.connect("a1", alice)
    assert len(await rows_of(azurite, stack, alice)) == 1
    await clients.stop("a1")

    async def gone() -> bool:
        return not await rows_of(azurite, stack, alice)

    await wait_until(gone, what="the row to be deleted")


async def test_rest_api_reports_live_connections(stack: Stack, clients: SignalRClients) -> None:
    """The emulator's REST API (as the app's output binding uses it) answers HEAD for live connections and users."""
    alice = unique_user("alice")
    connection_id = await clients.connect("a1", alice)
    async with aiohttp.ClientSession() as session:

        async def head(path: str, key: str = ACCESS_KEY) -> int:
            url = f"{stack.emulator_url}/api/hubs/chat/{path}"
            token = access_key_token(key, audience=url)
            headers = {"Authorization": f"Bearer {token}"}
            async with session.head(url, params={"api-version": "2022-06-01"}, headers=headers) as response:
                return response.status

        assert await head(f"connections/{connection_id}") == 200
        assert await head(f"users/{alice}") == 200
        assert await head(f"connections/{connection_id}", key=SECONDARY_KEY) == 200
        assert await head(f"users/{unique_user('ghost')}") == 404
        assert await head(f"users/{alice}", key="not-the-key-0123456789abcdefghijklmnop") == 401


def _signature(connection_id: str, key: str) -> str:
    return "sha256=" + hmac.new(key.encode(), connection_id.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("headers", "content_type", "status"),
    [
        ({"X-ASRS-Signature": _signature("c1", ACCESS_KEY)}, "text/plain", 415),
        ({"X-ASRS-Event": None}, "application/json", 400),
        ({"X-ASRS-Event": "nosuchevent"}, "application/json", 404),
        ({"X-ASRS-Signature": _signature("c1", "wrong-key-0123456789abcdefghijklmnopq")}, "application/json", 401),
        ({"X-ASRS-Signature": None}, "application/json", 401),
        ({"X-ASRS-Signature": "sha256=00," + _signature("c1", ACCESS_KEY).upper()}, "application/json", 200),
    ],
)
async def test_webhook_answers_like_the_extension(
    stack: Stack, headers: dict[str, str | None], content_type: str, status: int
) -> None:
    """The local host's SignalR webhook answers 415, 400, 404, 401 and 200 as the SignalR extension does."""
    sent = {
        "X-ASRS-Hub": "chat",
        "X-ASRS-Category": "messages",
        "X-ASRS-Event": "send",
        "X-ASRS-Connection-Id": "c1",
        "X-ASRS-User-Id": unique_user("ghost"),
        "X-ASRS-Signature": _signature("c1", ACCESS_KEY),
        "Content-Type": content_type,
    }
    for name, value in headers.items():
        if value is None:
            sent.pop(name)
        else:
            sent[name] = value
    body = json.dumps({"type": 1, "target": "send", "arguments": []})
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.host_url}/runtime/webhooks/signalr", data=body, headers=sent) as response,
    ):
        assert response.status == status, await response.text()


async def test_connected_failure_refuses_the_client_when_the_emulator_is_told_to(
    azurite: Azurite, clients: SignalRClients
) -> None:
    """With the emulator's --refuse-failed-connected and storage down, negotiate answers 503 (it reads the user's
    block); a client holding a token from before, straight to the service, reaches the connected function, which
    fails: the host answers 403 and the client cannot start."""
    dead_storage = Azurite(port=1)  # nothing listens on port 1: every storage call fails
    with running_stack(dead_storage, emulator_options=["--refuse-failed-connected"]) as broken:
        clients.stack = broken
        with pytest.raises(ClientCallFailed, match="503"):
            await clients.connect("x0", unique_user("alice"))
        url = f"{broken.emulator_url}/client/?hub={HUB}"
        token = access_key_token(ACCESS_KEY, audience=url, claims={"nameid": unique_user("alice")})
        with pytest.raises(ClientCallFailed):
            await clients.command("connect", id="x1", url=url, user=None, accessToken=token)
        log = broken.logs / "emulator.log"
        await wait_until(lambda: "connected upstream answered 403" in log.read_text(), what="the refusal logged")


async def emulator_admin(stack: Stack, path: str) -> dict[str, Any]:
    """POST to one of the emulator's admin routes; return its JSON answer."""
    async with aiohttp.ClientSession() as session, session.post(f"{stack.emulator_url}/admin/{path}") as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def emulator_connection(stack: Stack, connection_id: str) -> dict[str, Any]:
    """Return the emulator's admin view of one connection."""
    url = f"{stack.emulator_url}/admin/connections/{connection_id}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


@pytest.fixture
async def failing_storage(azurite: Azurite) -> AsyncIterator[tuple[Stack, asyncio.Event]]:
    """A stack whose table requests answer 503 while the event is set."""
    async with failing_storage_stack(azurite) as failing:
        yield failing


async def test_a_connected_that_fails_closes_the_client_which_then_connects_again(
    failing_storage: tuple[Stack, asyncio.Event],
) -> None:
    """As in Azure the handshake is answered before connected runs; connected failing on storage closes the client
    through the service at once (no sweep needed), and its next connection is mapped and works."""
    stack, failing = failing_storage
    alice, bob = unique_user("alice"), unique_user("bob")
    async with SignalRClients(stack) as clients:
        await emulator_admin(stack, "delay-connected?seconds=1")  # negotiate reads storage: fail only connected
        connection_id = await clients.connect("a1", alice, settled=False)
        failing.set()
        closed = await clients.wait_for(lambda e: e.get("id") == "a1" and e.get("event") == "closed", within=10)
        failing.clear()
        await emulator_admin(stack, "delay-connected?seconds=0")
        assert closed["error"] is not None  # closed by the service with a reason, not stopped by the client
        assert "not mapped (storage failed); closed: True" in (stack.logs / "host.log").read_text()
        assert await connection_ids(stack, alice) == set()
        again = await clients.connect("a2", alice)
        await clients.connect("b1", bob)
        assert await connection_ids(stack, alice) == {again}
        assert again != connection_id
        await clients.send("b1", "send", alice, "hello")
        assert await clients.wait_message("a2", "newMessage") == [{"from": bob, "to": alice, "message": "hello"}]


async def test_a_client_whose_connected_never_ran_is_mapped_by_its_first_call(
    stack: Stack, clients: SignalRClients
) -> None:
    """A connected event that never reached the app leaves the client connected and unmapped; its first call maps
    it (the service vouches for it), so its status is set and a direct message reaches it."""
    alice, bob = unique_user("alice"), unique_user("bob")
    assert (await emulator_admin(stack, "drop-next-connected"))["dropNextConnected"] == 1
    connection_id = await clients.connect("a1", alice)
    assert await connection_ids(stack, alice) == set()
    await clients.send("a1", "setStatus", "here")
    await wait_until(lambda: connection_ids(stack, alice), what="alice mapped by her call")
    status, body = await api(stack, "GET", f"users/{alice}")
    assert (status, body["online"], [c["connectionId"] for c in body["connections"]]) == (200, True, [connection_id])
    assert body["connections"][0]["status"] == "here"
    await clients.connect("b1", bob)
    await clients.send("b1", "send", alice, "found you")
    assert await clients.wait_message("a1", "newMessage") == [{"from": bob, "to": alice, "message": "found you"}]


async def test_calls_made_while_connected_is_delayed_wait_for_it(stack: Stack, clients: SignalRClients) -> None:
    """With connected delayed 2 s the client's start ends before the app answered connected, and its calls, made at
    once, reach the app after it (as Microsoft's emulator orders them): the join and the status hold, and no call is
    told an error."""
    alice, room = unique_user("alice"), f"room-{uuid.uuid4().hex[:8]}"
    await emulator_admin(stack, "delay-connected?seconds=2")
    try:
        connection_id = await clients.connect("a1", alice, settled=False)
        shown = await emulator_connection(stack, connection_id)
        assert shown["connectedStatus"] is None  # started, and the app has not answered connected yet
        await clients.send("a1", "join", room)
        await clients.send("a1", "setStatus", "early")
    finally:
        await emulator_admin(stack, "delay-connected?seconds=0")

    async def status_set() -> bool:
        _status, user = await api(stack, "GET", f"users/{alice}")
        return [c.get("status") for c in user["connections"]] == ["early"]

    await wait_until(status_set, what="the status set")
    status, body = await api(stack, "GET", f"users/{alice}")
    assert (status, body["rooms"], [c["connectionId"] for c in body["connections"]]) == (200, [room], [connection_id])
    assert body["connections"][0]["status"] == "early"
    assert clients.received("a1", "error") == []


@pytest.fixture(scope="module")
def leasing_stack(azurite: Azurite) -> Iterator[Stack]:
    """A stack with 12 s leases, a sweep every second and a 3 s client timeout, for lost and late disconnects."""
    with running_stack(azurite, ttl_seconds=12, sweep_schedule="* * * * * *", client_timeout=3, keepalive=1) as running:
        yield running


async def test_dropped_disconnect_leaves_a_row_the_sweep_removes(azurite: Azurite, leasing_stack: Stack) -> None:
    """With the disconnected call dropped the row outlives the connection, until the sweep removes it."""
    alice = unique_user("alice")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{leasing_stack.emulator_url}/admin/drop-next-disconnect") as response:
            assert response.status == 200
        async with SignalRClients(leasing_stack) as clients:
            connection_id = await clients.connect("a1", alice)
            await clients.stop("a1")

            async def dropped() -> bool:
                url = f"{leasing_stack.emulator_url}/admin/drop-next-disconnect"
                async with session.get(url) as answer:
                    return connection_id in (await answer.json())["droppedSoFar"]

            await wait_until(dropped, what="the emulator to drop the disconnected call")
    rows = await rows_of(azurite, leasing_stack, alice)
    assert [row["RowKey"] for row in rows] == [connection_id]

    async def swept() -> bool:
        return not await rows_of(azurite, leasing_stack, alice)

    await wait_until(swept, what="the sweep to remove the stale row")
    assert "Executed 'Functions.sweep' (Succeeded" in (leasing_stack.logs / "host.log").read_text()


async def test_missed_pings_disconnect_the_client(azurite: Azurite, leasing_stack: Stack) -> None:
    """A client that stops pinging is closed by the emulator after the client timeout, and its row is deleted."""
    alice = unique_user("alice")
    async with SignalRClients(leasing_stack) as clients:
        await clients.connect("quiet", alice, keepAliveMs=120_000)
        assert len(await rows_of(azurite, leasing_stack, alice)) == 1
        closed = await clients.wait_for(lambda e: e.get("id") == "quiet" and e.get("event") == "closed")
        assert "timed out" in (closed["error"] or "")

    async def gone() -> bool:
        return not await rows_of(azurite, leasing_stack, alice)

    # Sooner than the 12 s lease could expire: the disconnected event removed it, not the sweep.
    await wait_until(gone, within=6, what="the row of the timed-out connection to be deleted")


async def test_a_quiet_live_client_outlives_its_lease_and_a_lost_one_is_swept_with_presence(
    azurite: Azurite, leasing_stack: Stack
) -> None:
    """The sweep lists the hub-wide group at the emulator: a connected client that never sends stays online through
    many sweeps with no write to its row and no question about it; once it is gone with its disconnect dropped, the
    sweep removes the row within two sweeps and broadcasts the user offline."""
    quiet, watcher = unique_user("quiet"), unique_user("watcher")
    async with aiohttp.ClientSession() as session, SignalRClients(leasing_stack) as clients:
        await clients.connect("w", watcher, targets=["presence"], keepAliveMs=1000)
        # Pings keep the connection open at the service, but SignalR does not forward them to the app.
        connection_id = await clients.connect("q", quiet, keepAliveMs=1000)
        [first] = await rows_of(azurite, leasing_stack, quiet)
        async with session.delete(f"{leasing_stack.emulator_url}/admin/rest-calls") as response:
            assert response.status == 200
        await asyncio.sleep(16)  # longer than the 12 s lease, a sweep every second, not one message from the client
        [later] = await rows_of(azurite, leasing_stack, quiet)
        assert later["RowKey"] == connection_id
        assert later["LastSeen"] == first["LastSeen"]  # never written: the listing had it
        assert await connection_ids(leasing_stack, quiet) == {connection_id}
        async with session.get(f"{leasing_stack.emulator_url}/admin/rest-calls") as response:
            calls = (await response.json())["byRoute"]
        assert calls.get("GET /api/hubs/{hub}/groups/{group}/connections", 0) >= 10  # one listing per sweep
        assert calls.get("HEAD /api/hubs/{hub}/connections/{connection}", 0) == 0

        async with session.post(f"{leasing_stack.emulator_url}/admin/drop-next-disconnect") as response:
            assert response.status == 200
        await clients.stop("q")
        await clients.wait_message("w", "presence", lambda a: announces(a, quiet, online=False))
    assert await rows_of(azurite, leasing_stack, quiet) == []


async def test_rooms_follow_the_user_across_connections(stack: Stack, clients: SignalRClients) -> None:
    """join adds every tab to the room's group, a tab opened later is added on connect, sendToRoom reaches them all,
    a stranger is refused, and leave takes the tabs out: through the emulator's real groups."""
    alice, bob = unique_user("alice"), unique_user("bob")
    room = f"room-{alice[-8:]}"
    targets = ["newMessage", "room", "error"]
    await clients.connect("a1", alice, targets=targets)
    await clients.connect("b1", bob, targets=targets)
    await clients.send("a1", "join", room)
    await clients.wait_message("a1", "room", lambda a: a == [{"room": room, "user": alice, "joined": True}])
    await clients.send("b1", "join", room)
    await clients.wait_message("a1", "room", lambda a: a[0]["user"] == bob)
    await clients.connect("a2", alice, targets=targets)  # opened after the join: added on connect
    await clients.send("b1", "sendToRoom", room, {"text": "hi room"})
    expected = [{"from": bob, "room": room, "message": {"text": "hi room"}}]
    for client in ("a1", "a2", "b1"):
        assert await clients.wait_message(client, "newMessage") == expected
    await clients.connect("c1", unique_user("carol"), targets=targets)
    await clients.send("c1", "sendToRoom", room, "let me in")
    [error] = await clients.wait_message("c1", "error")
    assert error == {"error": "not a member of this room", "room": room, "call": "sendToRoom"}
    status, body = await api(stack, "GET", f"rooms/{room}")
    assert status == 200
    assert {(m["user"], m["online"], m["connections"]) for m in body["members"]} == {(alice, True, 2), (bob, True, 1)}
    await clients.send("a2", "leave", room)
    await clients.wait_message("b1", "room", lambda a: a == [{"room": room, "user": alice, "joined": False}])
    await clients.send("b1", "sendToRoom", room, "after alice left")
    await clients.wait_message("b1", "newMessage", lambda a: a[0]["message"] == "after alice left")
    status, _ = await api(stack, "POST", f"rooms/{room}/send", json={"message": "marker", "target": "note"})
    assert status == 200
    assert not any(a[0]["message"] == "after alice left" for a in clients.received("a1", "newMessage"))
    assert not any(a[0]["message"] == "after alice left" for a in clients.received("a2", "newMessage"))


async def test_status_and_last_seen_reach_watchers(stack: Stack, clients: SignalRClients) -> None:
    """setStatus is broadcast in presence; closing the last tab announces offline with a last-seen time."""
    dora = unique_user("dora")
    await clients.connect("watcher", unique_user("watcher"), targets=["presence"])
    await clients.connect("d1", dora)
    await clients.send("d1", "setStatus", "in a meeting")
    await clients.wait_message(
        "watcher", "presence", lambda a: a[0]["user"] == dora and a[0]["status"] == "in a meeting"
    )
    status, body = await api(stack, "GET", f"users/{dora}")
    assert (status, body["status"], body["connections"][0]["status"]) == (200, "in a meeting", "in a meeting")
    await clients.stop("d1")
    [offline] = await clients.wait_message("watcher", "presence", lambda a: a[0]["user"] == dora and not a[0]["online"])
    assert (offline["status"], offline["connections"]) == (None, 0)
    status, body = await api(stack, "GET", f"users/{dora}")
    assert (body["online"], body["lastSeen"]) == (False, offline["lastSeen"])
