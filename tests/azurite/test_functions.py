"""Every function invoked as the host invokes it, against a real Azurite: events, HTTP API, sweep."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

from mapping.functions import runtime
from mapping.presence.rows import iso
from testkit.azurite import Azurite
from testkit.functions_host import Out, call, http, http_request, invocation, signalr_event
from testkit.tables import table_rows

pytestmark = pytest.mark.usefixtures("app_env")


async def connect(user: str | None, connection_id: str, **extra: Any) -> Out:
    """Fire a connected event."""
    return await signalr_event("connected", invocation("connected", user_id=user, connection_id=connection_id, **extra))


async def disconnect(user: str | None, connection_id: str) -> Out:
    """Fire a disconnected event."""
    return await signalr_event("disconnected", invocation("disconnected", user_id=user, connection_id=connection_id))


async def client_send(user: str | None, connection_id: str, arguments: Any) -> Out:
    """Fire a client `send` message event."""
    payload = invocation("send", user_id=user, connection_id=connection_id, arguments=arguments)
    return await signalr_event("send_message", payload)


async def http_send(body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any, Out]:
    """POST /api/send; return status, JSON body and the signalR output."""
    out = Out()
    status, payload, _ = await http("send", http_request("POST", "send", body=body, headers=headers), signalr=out)
    return status, payload, out


# -- negotiate ----------------------------------------------------------------------------------


async def test_negotiate_without_a_principal_is_401() -> None:
    """No `x-ms-client-principal-name` header: 401 with a JSON error, no token handed out."""
    for headers in ({}, {"x-ms-client-principal-name": "   "}):
        status, body, _ = await http(
            "negotiate",
            http_request("POST", "negotiate", headers=headers),
            connection_info='{"url":"u","accessToken":"t"}',
        )
        assert status == 401
        assert "error" in body
        assert "accessToken" not in body


async def test_negotiate_returns_the_bindings_json() -> None:
    """With a principal, negotiate answers 200 with the signalRConnectionInfo JSON as it is."""
    info = {"url": "https://x.service.signalr.net/client/?hub=chat", "accessToken": "eyJ.a.b"}
    request = http_request("POST", "negotiate", headers={"x-ms-client-principal-name": "alice"})
    status, body, _ = await http("negotiate", request, connection_info=json.dumps(info))
    assert (status, body) == (200, info)


@pytest.mark.parametrize("principal", ["x" * 300, "admin\u202e", "bo\u200bb"])
async def test_negotiate_rejects_an_unusable_user_name(principal: str) -> None:
    """A principal name longer than a user name may be, or one with format characters, gets a 400, not a token."""
    request = http_request("POST", "negotiate", headers={"x-ms-client-principal-name": principal})
    status, body, _ = await http("negotiate", request, connection_info="{}")
    assert status == 400
    assert "error" in body


# -- connected / disconnected ------------------------------------------------------------------


def versionless(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return presence messages without their versions (which are times in milliseconds, checked apart)."""
    return [
        {
            **message,
            "arguments": [{k: v for k, v in argument.items() if k != "version"} for argument in message["arguments"]],
        }
        for message in messages
    ]


async def test_connected_maps_the_connection_and_announces(app_env: dict[str, str], azurite: Azurite) -> None:
    """The first connection writes the row and broadcasts presence online to the hub."""
    out = await connect("Alice", "c1", headers={"user-agent": "Mozilla/5.0"})
    assert versionless(out.messages) == [
        {
            "target": "presence",
            "arguments": [{"user": "Alice", "online": True, "connections": 1, "status": None, "lastSeen": None}],
        }
    ]
    assert out.messages[0]["arguments"][0]["version"] > 0
    [row] = await table_rows(azurite, app_env["MAPPING_TABLE"])
    assert (row["PartitionKey"], row["RowKey"], row["UserName"], row["Hub"]) == ("alice", "c1", "Alice", "chat")
    assert row["UserAgent"] == "Mozilla/5.0"


async def test_multi_tab_presence_through_the_functions() -> None:
    """Every tab opened or closed announces the user's connection count; offline once, with when; versions grow."""
    first = (await connect("alice", "tab1")).messages[0]["arguments"][0]
    second = (await connect("ALICE", "tab2")).messages[0]["arguments"][0]
    third = (await disconnect("alice", "tab1")).messages[0]["arguments"][0]
    assert [(m["online"], m["connections"]) for m in (first, second, third)] == [(True, 1), (True, 2), (True, 1)]
    before = datetime.now(UTC)
    out = await disconnect("Alice", "tab2")
    [offline] = versionless(out.messages)
    last_seen = datetime.fromisoformat(offline["arguments"][0].pop("lastSeen"))
    assert offline == {
        "target": "presence",
        "arguments": [{"user": "Alice", "online": False, "connections": 0, "status": None}],
    }
    assert before <= last_seen <= datetime.now(UTC)
    again = (await connect("alice", "tab3")).messages[0]["arguments"][0]
    assert (again["user"], again["online"], again["lastSeen"]) == ("alice", True, None)
    versions = [m["version"] for m in (first, second, third, out.messages[0]["arguments"][0], again)]
    assert versions == sorted(set(versions))


async def test_connected_without_a_user_id_is_not_mapped(
    app_env: dict[str, str], azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    """An anonymous connection logs a warning, writes nothing and raises nothing."""
    with caplog.at_level(logging.WARNING):
        out = await connect(None, "anon")
    assert out.value is None
    assert await table_rows(azurite, app_env["MAPPING_TABLE"]) == []
    assert any("no user id" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[]",
        "null",
        json.dumps({"ConnectionId": 5, "UserId": ["alice"]}),
        json.dumps({"ConnectionId": "c", "UserId": "x" * 1000}),
        json.dumps({"ConnectionId": "", "UserId": "alice"}),
    ],
)
async def test_malformed_connected_payloads_raise_nothing(
    app_env: dict[str, str], azurite: Azurite, payload: str
) -> None:
    """Payloads of the wrong shape are not mapped and do not raise (only storage failures refuse a connection)."""
    out = await signalr_event("connected", payload)
    assert out.value is None
    assert await table_rows(azurite, app_env["MAPPING_TABLE"]) == []


async def test_connected_with_malformed_headers_maps_without_a_user_agent(
    app_env: dict[str, str], azurite: Azurite
) -> None:
    """Headers of the wrong type only lose the user agent; the connection is still mapped."""
    out = await signalr_event("connected", json.dumps({"ConnectionId": "c", "UserId": "alice", "Headers": "nope"}))
    assert len(out.messages) == 1
    [row] = await table_rows(azurite, app_env["MAPPING_TABLE"])
    assert row["UserAgent"] == ""


async def test_duplicate_events_keep_one_row(app_env: dict[str, str], azurite: Azurite) -> None:
    """A repeated connected event keeps one row; a repeated disconnected event is fine."""
    await connect("bob", "c1")
    await connect("bob", "c1")
    assert len(await table_rows(azurite, app_env["MAPPING_TABLE"])) == 1
    await disconnect("bob", "c1")
    await disconnect("bob", "c1")
    assert await table_rows(azurite, app_env["MAPPING_TABLE"]) == []


async def test_disconnect_of_an_unknown_connection_announces_nothing() -> None:
    """A disconnected event for a connection never mapped raises nothing and broadcasts nothing."""
    out = await disconnect("nobody", "never-seen")
    assert out.value is None


async def test_repeated_events_announce_presence_once(app_env: dict[str, str], azurite: Azurite) -> None:
    """A repeated connected event keeps the first ConnectedAt and stays silent; so does a repeated disconnected."""
    assert len((await connect("eve", "e1")).messages) == 1
    [first] = await table_rows(azurite, app_env["MAPPING_TABLE"])
    assert (await connect("eve", "e1")).value is None
    [again] = await table_rows(azurite, app_env["MAPPING_TABLE"])
    assert again["ConnectedAt"] == first["ConnectedAt"]
    assert len((await disconnect("eve", "e1")).messages) == 1
    assert (await disconnect("eve", "e1")).value is None


async def test_presence_events_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """With PRESENCE_EVENTS=false nothing is broadcast on connect or disconnect."""
    monkeypatch.setenv("PRESENCE_EVENTS", "false")
    await runtime.reset()
    assert (await connect("quiet", "c1")).value is None
    assert (await disconnect("quiet", "c1")).value is None


async def test_forbidden_characters_survive_connect_send_and_disconnect() -> None:
    """A user named with every key-forbidden character is mapped, reachable and removable."""
    name = "we/ird\\na#me?%\x01"
    await connect(name, "id/1#?")
    status, body, out = await http_send({"to": name.upper(), "message": "hi"})
    assert (status, body["delivered"]) == (200, 1)
    assert out.messages[0]["connectionId"] == "id/1#?"
    assert len((await disconnect(name, "id/1#?")).messages) == 1


# -- the client `send` event ------------------------------------------------------------------


async def join(user: str, connection_id: str, room: str) -> None:
    """Make `user` a member of `room` through the client's `join` (it must succeed)."""
    out = await signalr_event(
        "join_room", invocation("join", user_id=user, connection_id=connection_id, arguments=[room])
    )
    assert not [m for m in out.messages if m.get("target") == "error"]


def offline_answer(to: str) -> list[dict[str, Any]]:
    """The one answer a caller gets when its direct message reaches nobody."""
    return [
        {
            "target": "error",
            "connectionId": "a1",
            "arguments": [{"error": "recipient is offline", "to": to, "call": "send"}],
        }
    ]


async def test_client_send_reaches_every_connection_of_the_recipient() -> None:
    """send(to, message) delivers one message per live connection of a recipient sharing a room, from the caller."""
    await connect("bob", "b1")
    await connect("bob", "b2")
    await connect("alice", "a1")
    await join("alice", "a1", "team")
    await join("bob", "b1", "team")
    out = await client_send("alice", "a1", ["BOB", {"text": "hello"}])
    payload = {"from": "alice", "to": "BOB", "message": {"text": "hello"}}
    assert sorted(out.messages, key=lambda m: m["connectionId"]) == [
        {"target": "newMessage", "connectionId": "b1", "arguments": [payload]},
        {"target": "newMessage", "connectionId": "b2", "arguments": [payload]},
    ]


async def test_client_send_refreshes_the_callers_lease() -> None:
    """A message event moves the caller's LastSeen forward."""
    store = runtime.store()
    await store.connect("alice", "a1", now=datetime.now(UTC) - timedelta(seconds=500))
    await client_send("alice", "a1", ["alice", "note to self"])
    [connection] = await store.connections_of("alice")
    assert connection.last_seen > datetime.now(UTC) - timedelta(seconds=30)


async def test_client_send_to_an_offline_user_answers_the_caller_only() -> None:
    """Recipient offline: one `error` message to the caller's connection and nothing else."""
    await connect("alice", "a1")
    out = await client_send("alice", "a1", ["nobody", "hello?"])
    assert out.messages == [
        {
            "target": "error",
            "connectionId": "a1",
            "arguments": [{"error": "recipient is offline", "to": "nobody", "call": "send"}],
        }
    ]


async def test_a_direct_message_to_a_stranger_is_answered_as_to_an_offline_user() -> None:
    """DIRECT_MESSAGES=shared-room (the default): a message to an online user sharing no room with the sender reaches
    nobody and is answered exactly as one to an offline user, so `send` tells nothing of presence."""
    await connect("alice", "a1")
    await connect("bob", "b1")
    await join("alice", "a1", "lobby")
    await join("bob", "b1", "secret-board")
    assert (await client_send("alice", "a1", ["bob", "hi"])).messages == offline_answer("bob")
    assert (await client_send("alice", "a1", ["carol", "hi"])).messages == offline_answer("carol")


@pytest.mark.parametrize(("policy", "delivered"), [("anyone", True), ("nobody", False)])
async def test_the_direct_message_policy_is_a_setting(
    policy: str, delivered: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIRECT_MESSAGES=anyone delivers without a shared room; nobody refuses even in a shared room, as offline."""
    monkeypatch.setenv("DIRECT_MESSAGES", policy)
    await runtime.reset()
    await connect("alice", "a1")
    await connect("bob", "b1")
    if not delivered:
        await join("alice", "a1", "team")
        await join("bob", "b1", "team")
    out = await client_send("alice", "a1", ["bob", "hi"])
    if delivered:
        assert [(m["target"], m["connectionId"]) for m in out.messages] == [("newMessage", "b1")]
    else:
        assert out.messages == offline_answer("bob")


async def test_a_connection_without_a_user_may_not_send() -> None:
    """An anonymous connection's `send` is refused with one error naming the rule, and delivers nothing."""
    await connect("bob", "b1")
    out = await client_send(None, "x1", ["bob", "hi"])
    assert out.messages == [
        {
            "target": "error",
            "connectionId": "x1",
            "arguments": [{"error": "send needs a signed-in user", "call": "send"}],
        }
    ]


@pytest.mark.parametrize(
    "arguments", [None, [], ["bob"], ["bob", "x", "y"], [42, "x"], ["", "x"], ["   ", "x"], ["x" * 300, "x"], "bob"]
)
async def test_client_send_with_bad_arguments_answers_one_error(arguments: Any) -> None:
    """Wrong argument counts or recipients give exactly one error message to the caller."""
    await connect("bob", "b1")
    out = await client_send("alice", "a1", arguments)
    [message] = out.messages
    assert (message["target"], message["connectionId"]) == ("error", "a1")
    assert isinstance(message["arguments"][0]["error"], str)


# -- HTTP send ---------------------------------------------------------------------------------


async def test_http_send_delivers_to_every_live_connection() -> None:
    """200 with the count; one message per connection with target, sender and message."""
    await connect("bob", "b1")
    await connect("Bob", "b2")
    status, body, out = await http_send(
        {"to": "bob", "message": [1, "two"], "target": "chatMessage"}, headers={"x-ms-client-principal-name": "alice"}
    )
    assert (status, body) == (200, {"to": "bob", "delivered": 2})
    assert {m["connectionId"] for m in out.messages} == {"b1", "b2"}
    for message in out.messages:
        assert message["target"] == "chatMessage"
        assert message["arguments"] == [{"from": "alice", "to": "bob", "message": [1, "two"]}]


async def test_http_send_defaults() -> None:
    """Without a target the client method is newMessage; without a principal the sender is null; null is a message."""
    await connect("bob", "b1")
    status, _, out = await http_send({"to": "bob", "message": None})
    assert status == 200
    assert out.messages == [
        {"target": "newMessage", "connectionId": "b1", "arguments": [{"from": None, "to": "bob", "message": None}]}
    ]


async def test_http_send_to_an_offline_user_is_404() -> None:
    """No live connection: 404 JSON error and nothing sent."""
    status, body, out = await http_send({"to": "nobody", "message": "hi"})
    assert status == 404
    assert "error" in body
    assert out.value is None


async def test_http_send_ignores_expired_connections() -> None:
    """A user whose only row is an expired lease is offline for send."""
    await runtime.store().connect("sleepy", "s1", now=datetime.now(UTC) - timedelta(seconds=601))
    status, _, out = await http_send({"to": "sleepy", "message": "hi"})
    assert (status, out.value) == (404, None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'"just a string"',
        b"null",
        {"message": "no recipient"},
        {"to": "", "message": "x"},
        {"to": "   ", "message": "x"},
        {"to": 42, "message": "x"},
        {"to": None, "message": "x"},
        {"to": ["bob"], "message": "x"},
        {"to": "x" * 257, "message": "x"},
        {"to": "bob"},
        {"to": "bob", "message": "x", "target": 5},
        {"to": "bob", "message": "x", "target": None},
        {"to": "bob", "message": "x", "target": ""},
        {"to": "bob", "message": "x", "target": "presence"},  # the app's own targets: no forged presence
        {"to": "bob", "message": "x", "target": "PresenceSync"},
        {"to": "bob", "message": "x", "target": "room"},
        {"to": "bob", "message": "x", "target": "ERROR"},
        b"[" * 60000,
    ],
)
async def test_http_send_bad_bodies_are_400_and_send_nothing(body: Any) -> None:
    """Every malformed body is a 400 with a JSON error, and no message goes out."""
    await connect("bob", "b1")
    status, payload, out = await http_send(body)
    assert status in (400, 413)
    assert isinstance(payload["error"], str)
    assert out.value is None


@pytest.mark.parametrize(
    "to", ["bob' or PartitionKey ne '", "' or ''='", "bob'--", "*", "bob%27", "PartitionKey eq 'bob'"]
)
async def test_http_send_injection_attempts_reach_nobody(to: str) -> None:
    """A recipient that looks like OData filter syntax matches no other user's connections."""
    await connect("bob", "b1")
    status, _, out = await http_send({"to": to, "message": "x"})
    assert status == 404
    assert out.value is None


async def test_http_send_body_over_64_kib_is_413() -> None:
    """A body over 64 KiB gets 413 with a JSON error and sends nothing; one just under goes through."""
    await connect("bob", "b1")
    envelope = len(json.dumps({"to": "bob", "message": ""}))
    status, body, out = await http_send(json.dumps({"to": "bob", "message": "x" * (65536 - envelope + 1)}))
    assert (status, out.value) == (413, None)
    assert "error" in body
    status, _, _ = await http_send(json.dumps({"to": "bob", "message": "x" * (65536 - envelope)}))
    assert status == 200


# -- presence endpoints ------------------------------------------------------------------------


async def test_user_presence_lists_live_connections() -> None:
    """GET users/{user}: online with each live connection's id, hub, times and user agent."""
    await connect("Carol", "c1", headers={"User-Agent": "Firefox"})
    request = http_request("GET", "users/CAROL", route_params={"user": "CAROL"})
    status, body, _ = await http("user_presence", request)
    assert status == 200
    assert body["user"] == "CAROL"
    assert body["online"] is True
    [connection] = body["connections"]
    assert connection["connectionId"] == "c1"
    assert connection["hub"] == "chat"
    assert connection["userAgent"] == "Firefox"
    for field in ("connectedAt", "lastSeen"):
        assert datetime.fromisoformat(connection[field]).tzinfo is not None


async def test_user_presence_of_an_unknown_user_is_offline() -> None:
    """An unknown user is not an error: online false and no connections."""
    request = http_request("GET", "users/nobody", route_params={"user": "nobody"})
    status, body, _ = await http("user_presence", request)
    assert (status, body) == (
        200,
        {
            "user": "nobody",
            "online": False,
            "status": None,
            "lastSeen": None,
            "rooms": [],
            "blocked": False,
            "grants": [],
            "connections": [],
        },
    )


@pytest.mark.parametrize("user", ["", "   ", "x" * 257])
async def test_user_presence_of_an_invalid_name_is_400(user: str) -> None:
    """An invalid user name in the route is a 400 JSON error."""
    status, body, _ = await http("user_presence", http_request("GET", f"users/{user}", route_params={"user": user}))
    assert status == 400
    assert "error" in body


async def test_online_users_pages_with_next() -> None:
    """GET users lists online users with connection counts; `next` continues until null."""
    for i in range(7):
        await connect(f"user{i}", f"c{i}")
    await connect("user0", "c0b")
    collected: dict[str, int] = {}
    params = {"limit": "3"}
    while True:
        status, body, _ = await http("online_users", http_request("GET", "users", params=params))
        assert status == 200
        assert len(body["users"]) <= 3
        collected.update({entry["user"]: entry["connections"] for entry in body["users"]})
        if body["next"] is None:
            break
        params = {"limit": "3", "next": body["next"]}
    assert collected == {f"user{i}": 2 if i == 0 else 1 for i in range(7)}


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"limit": "2.5"}, {"next": "forged"}, {"next": "u1.%%%"}],
)
async def test_online_users_bad_query_is_400(params: dict[str, str]) -> None:
    """An out-of-range limit or a forged next cursor is a 400 JSON error."""
    status, body, _ = await http("online_users", http_request("GET", "users", params=params))
    assert status == 400
    assert "error" in body


# -- the timer ---------------------------------------------------------------------------------


async def test_timer_sweep_removes_expired_rows_and_announces_offline(
    app_env: dict[str, str], azurite: Azurite
) -> None:
    """The timer deletes expired rows, keeps live ones and broadcasts offline, last seen when the lease was taken."""
    store = runtime.store()
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await store.connect("Old", "o1", now=an_hour_ago)
    await connect("new", "n1")
    out = Out()
    await call("sweep", timer=TimerRequest(past_due=True), signalr=out)
    rows = await table_rows(azurite, app_env["MAPPING_TABLE"])
    assert [row["PartitionKey"] for row in rows] == ["new"]
    offline = {"user": "Old", "online": False, "connections": 0, "status": None, "lastSeen": iso(an_hour_ago)}
    assert versionless(out.messages) == [{"target": "presence", "arguments": [offline]}]


async def test_timer_sweep_with_nothing_stale_sends_nothing() -> None:
    """A sweep that removes nothing leaves the signalR output unset."""
    await connect("fresh", "f1")
    out = Out()
    await call("sweep", timer=TimerRequest(past_due=False), signalr=out)
    assert out.value is None


async def test_timer_sweep_asks_signalr_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """With AzureSignalRConnectionString set, the timer checks rows past half their lease with the service."""
    from mapping.signalr.liveness import listing_group
    from testkit.signalr_rest import signalr_rest

    async with signalr_rest() as rest:
        monkeypatch.setenv("AzureSignalRConnectionString", rest.connection_string)
        await runtime.reset()
        rest.answers["alive"] = [200]
        rest.answers["lost"] = [404]
        half_lease_ago = datetime.now(UTC) - timedelta(seconds=400)
        await runtime.store().connect("zoe", "alive", now=half_lease_ago)
        await runtime.store().connect("zoe", "lost", now=half_lease_ago)
        out = Out()
        await call("sweep", timer=TimerRequest(past_due=False), signalr=out)
        assert sorted(rest.requests) == ["alive", "lost"]
        assert [c.connection_id for c in await runtime.store().connections_of("zoe")] == ["alive"]
        # zoe stays online on one connection fewer; the one the listing lacked but HEAD found is re-added to the group
        actions = [m for m in out.messages if "action" in m]
        group = listing_group("alive", runtime.settings().listing_groups)
        assert actions == [{"action": "add", "groupName": group, "connectionId": "alive"}]
        presence = [m for m in out.messages if "action" not in m]
        assert versionless(presence) == [
            {
                "target": "presence",
                "arguments": [{"user": "zoe", "online": True, "connections": 1, "status": None, "lastSeen": None}],
            }
        ]
