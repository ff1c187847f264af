"""An operator's controls through the functions against Azurite: closing every connection of a user, blocking."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mapping import events
from mapping.errors import RefusedError, SignalRUnavailableError
from mapping.functions import runtime
from mapping.presence.store import ConnectionStore
from mapping.signalr.invocation import parse_invocation
from testkit.functions_host import Out, connected, http, http_request, invocation, signalr_event

pytestmark = pytest.mark.usefixtures("app_env")


class Closer:
    """Stands in for SignalR Service's REST API: records each user id it is asked to close, or refuses all."""

    def __init__(self, *, confirms: bool = True) -> None:
        self.confirms = confirms
        self.closed: list[str] = []

    async def close_user(self, hub: str, user_id: str, *, reason: str) -> bool:
        """Record the user id (matched exactly by the service) and answer as configured."""
        self.closed.append(user_id)
        return self.confirms

    async def close_connection(self, hub: str, connection_id: str, *, reason: str) -> bool:
        """Record the connection id and answer as configured."""
        self.closed.append(connection_id)
        return self.confirms


def no_queue() -> Any:
    """The grace's queue, which these tests (no grace) never use."""
    raise AssertionError("no grace in these tests")


async def test_disconnect_closes_every_spelling_and_ends_the_rows() -> None:
    """Each live connection and each spelling the user connected with is closed at the service, their rows go and
    the user is announced offline, as a disconnect does; `closed` counts their live connections."""
    store: ConnectionStore = runtime.store()
    await connected("Mallory", "m1")
    await connected("mallory", "m2")
    service = Closer()
    done = await events.on_disconnect_user(store, "MALLORY", service=service)
    assert (done.user, done.closed) == ("MALLORY", 2)
    assert sorted(service.closed) == ["MALLORY", "Mallory", "m1", "m2", "mallory"]  # each tab, then each spelling
    assert await store.connections_of("mallory") == []
    offline = [m["arguments"][0] for m in done.messages if m.get("target") == "presence"]
    assert offline[-1]["online"] is False


async def test_a_refused_close_changes_nothing() -> None:
    """When the service does not confirm the close, SignalRUnavailableError is raised and the rows stay."""
    store: ConnectionStore = runtime.store()
    await connected("mallory", "m1")
    with pytest.raises(SignalRUnavailableError):
        await events.on_disconnect_user(store, "mallory", service=Closer(confirms=False))
    assert [c.connection_id for c in await store.connections_of("mallory")] == ["m1"]


async def test_the_http_disconnect_without_signalr_is_503_and_keeps_the_rows() -> None:
    """POST /api/users/{user}/disconnect with no SignalR connection configured: 503 with a JSON error, nothing sent."""
    await connected("mallory", "m1")
    out = Out()
    request = http_request("POST", "users/mallory/disconnect", route_params={"user": "mallory"})
    status, body, _ = await http("disconnect_user", request, signalr=out)
    assert status == 503
    assert "SignalR" in body["error"]
    assert out.value is None
    assert [c.connection_id for c in await runtime.store().connections_of("mallory")] == ["m1"]


@pytest.mark.parametrize("user", ["", "x" * 300, "bad\ud800"])
async def test_the_http_disconnect_of_an_invalid_name_is_400(user: str) -> None:
    """An invalid user name is a 400 with a JSON error."""
    request = http_request("POST", f"users/{user}/disconnect", route_params={"user": user})
    status, body, _ = await http("disconnect_user", request, signalr=Out())
    assert status == 400
    assert isinstance(body["error"], str)


async def negotiate(user: str) -> int:
    """POST /api/negotiate as `user` (the platform's principal header); return the status."""
    request = http_request("POST", "negotiate", headers={"x-ms-client-principal-name": user})
    info = {"url": "https://x.service.signalr.net/client/?hub=chat", "accessToken": "token"}
    status, _, _ = await http("negotiate", request, connection_info=json.dumps(info))
    return int(status)


async def test_a_blocked_user_cannot_negotiate_and_is_not_mapped() -> None:
    """Blocked: negotiate answers 403, a `connected` writes no row and closes the connection at the service, the
    user's presence says blocked; unblocked, all is as before. Blocking twice changes nothing the second time."""
    store: ConnectionStore = runtime.store()
    assert await store.set_blocked("Mallory", True) is True
    assert await store.set_blocked("mallory", True) is False
    assert await negotiate("MALLORY") == 403
    service = Closer()
    invocation_ = invocation("connected", user_id="mallory", connection_id="m1")
    assert await events.on_connected(store, parse_invocation(invocation_), service=service) == []
    assert service.closed == ["m1"]
    assert await store.connections_of("mallory") == []
    status, body, _ = await http(
        "user_presence", http_request("GET", "users/mallory", route_params={"user": "mallory"})
    )
    assert (status, body["blocked"], body["connections"]) == (200, True, [])
    assert await store.set_blocked("mallory", False) is True
    assert await negotiate("mallory") == 200
    assert (await connected("mallory", "m2")).messages
    assert [c.connection_id for c in await store.connections_of("mallory")] == ["m2"]


async def test_a_blocked_users_connected_raises_where_the_service_cannot_close_it() -> None:
    """Without REST access the `connected` of a blocked user raises (the extension answers 403), mapping nothing."""
    store: ConnectionStore = runtime.store()
    await store.set_blocked("mallory", True)
    with pytest.raises(RefusedError):
        await events.on_connected(
            store, parse_invocation(invocation("connected", user_id="mallory", connection_id="m1"))
        )
    assert await store.connections_of("mallory") == []


async def test_the_http_block_holds_even_when_signalr_cannot_close() -> None:
    """PUT /api/users/{user}/block without SignalR: the block holds (negotiate 403) and the answer is a 503 saying
    the connections were not closed; DELETE unblocks (200, idempotent)."""
    await connected("mallory", "m1")
    route = {"user": "mallory"}
    status, body, _ = await http(
        "block_user", http_request("PUT", "users/mallory/block", route_params=route), signalr=Out()
    )
    assert status == 503
    assert "SignalR" in body["error"]
    assert await negotiate("mallory") == 403
    for _ in range(2):
        request = http_request("DELETE", "users/mallory/block", route_params=route)
        assert (await http("block_user", request, signalr=Out()))[:2] == (200, {"user": "mallory", "blocked": False})
    assert await negotiate("mallory") == 200


async def test_a_blocked_users_join_is_refused_and_writes_nothing() -> None:
    """A connection of a blocked user that is still open (its close failed) gets one error for `join`, and no
    membership is written."""
    store: ConnectionStore = runtime.store()
    await connected("mallory", "m1")
    await store.set_blocked("mallory", True)
    payload = invocation("join", user_id="mallory", connection_id="m1", arguments=["lobby"])
    out = await signalr_event("join_room", payload)
    assert [(m["target"], m["arguments"][0]["error"]) for m in out.messages] == [("error", "this user is blocked")]
    assert (await store.presence_of("mallory")).rooms == ()


async def test_a_blocked_users_open_connection_reaches_nobody() -> None:
    """A connection of a blocked user still open (its close failed) sends to nobody (answered as an offline
    recipient), may not post to or sync its room, nor set a status; the room-mate hears nothing of it."""
    store: ConnectionStore = runtime.store()
    await connected("mallory", "m1")
    await connected("bob", "b1")
    for user, tab in (("mallory", "m1"), ("bob", "b1")):
        await signalr_event("join_room", invocation("join", user_id=user, connection_id=tab, arguments=["lobby"]))
    await store.set_blocked("mallory", True)

    async def call(function: str, event: str, *arguments: Any) -> list[tuple[Any, Any]]:
        payload = invocation(event, user_id="mallory", connection_id="m1", arguments=list(arguments))
        out = await signalr_event(function, payload)
        return [(m.get("target"), m.get("connectionId") or m.get("groupName")) for m in out.messages]

    assert await call("send_message", "send", "bob", "hi") == [("error", "m1")]
    assert await call("send_to_room_message", "sendToRoom", "lobby", "hi") == [("error", "m1")]
    assert await call("sync_room", "sync", "lobby") == [("error", "m1")]
    assert await call("set_status", "setStatus", "here") == [("error", "m1")]
