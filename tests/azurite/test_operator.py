"""An operator's controls through the functions against Azurite: closing every connection of a user."""

from __future__ import annotations

from typing import Any

import pytest

from mapping import events
from mapping.errors import SignalRUnavailableError
from mapping.functions import runtime
from mapping.presence.store import ConnectionStore
from testkit.functions_host import Out, connected, http, http_request

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


def no_queue() -> Any:
    """The grace's queue, which these tests (no grace) never use."""
    raise AssertionError("no grace in these tests")


async def test_disconnect_closes_every_spelling_and_ends_the_rows() -> None:
    """Each spelling the user connected with is closed at the service, their rows go and the user is announced
    offline, as a disconnect does; `closed` counts their live connections."""
    store: ConnectionStore = runtime.store()
    await connected("Mallory", "m1")
    await connected("mallory", "m2")
    service = Closer()
    done = await events.on_disconnect_user(store, "MALLORY", service=service, delayed=no_queue)
    assert (done.user, done.closed) == ("MALLORY", 2)
    assert sorted(service.closed) == ["MALLORY", "Mallory", "mallory"]
    assert await store.connections_of("mallory") == []
    offline = [m["arguments"][0] for m in done.messages if m.get("target") == "presence"]
    assert offline[-1]["online"] is False


async def test_a_refused_close_changes_nothing() -> None:
    """When the service does not confirm the close, SignalRUnavailableError is raised and the rows stay."""
    store: ConnectionStore = runtime.store()
    await connected("mallory", "m1")
    with pytest.raises(SignalRUnavailableError):
        await events.on_disconnect_user(store, "mallory", service=Closer(confirms=False), delayed=no_queue)
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


@pytest.mark.parametrize("user", ["", "x" * 300, "bo\u200bb"])
async def test_the_http_disconnect_of_an_invalid_name_is_400(user: str) -> None:
    """An invalid user name is a 400 with a JSON error."""
    request = http_request("POST", f"users/{user}/disconnect", route_params={"user": user})
    status, body, _ = await http("disconnect_user", request, signalr=Out())
    assert status == 400
    assert isinstance(body["error"], str)
