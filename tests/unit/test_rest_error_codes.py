"""What a SignalR REST answer means, as (method, status, x-ms-error-code) to outcome, for the three readers of it: the
app's REST client (`SignalRLiveness`: the liveness check, group actions, closes), the local host's `signalR` output
binding, and what the emulator sends for a connection, user or group it does not have.

Only a 404 carrying the service's not-existed code says "does not exist"; a bare 404 (a proxy, a wrong endpoint)
says nothing. Sources: Azure/azure-signalr @ 31686ed, src/Microsoft.Azure.SignalR.Management/RestHubLifetimeManager.cs
(`FilterExpectedResponse`: the code each call accepts) and src/Microsoft.Azure.SignalR.Common/Constants.cs (the codes);
`local.emulator.errors` has the rest.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from local.emulator import errors
from local.emulator.server import EmulatorConfig, create_app
from local.host.signalr import ServiceEndpoint, SignalRBindingError, SignalRClient
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import Liveness, SignalRLiveness
from mapping.signalr.tokens import access_key_token

KEY = "rest-error-codes-test-key-0123456789abcdefgh"
HUB = "chat"
CONNECTION_WARNING = "Warning.Connection.NotExisted"
CONNECTION_ERROR = "Error.Connection.NotExisted"
USER_WARNING = "Warning.User.NotExisted"
GROUP_WARNING = "Warning.Group.NotExisted"
AFTER = {"target": "after", "arguments": [], "connectionId": "alive-1"}  # an output's item after the one tested
AFTER_PATH = f"/api/hubs/{HUB}/connections/alive-1/:send"


@dataclass
class FakeService:
    """A loopback stand-in answering every call with one (status, x-ms-error-code), but a send to `alive-1`: 202."""

    url: str = ""
    status: int = 200
    code: str | None = None
    calls: list[str] = field(default_factory=list)


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    """The stand-in on 127.0.0.1 (no token checks: the answers are the point here)."""
    state = FakeService()

    async def answer(request: web.Request) -> web.Response:
        state.calls.append(f"{request.method} {request.path}")
        if request.path == AFTER_PATH:
            return web.Response(status=202)
        headers = {errors.HEADER: state.code} if state.code is not None else {}
        return web.Response(status=state.status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        state.url = str(server.make_url("")).rstrip("/")
        yield state


@pytest.fixture
async def client(service: FakeService) -> AsyncIterator[SignalRLiveness]:
    """The app's REST client pointed at the stand-in, one attempt per question."""
    rest = SignalRLiveness(SignalRConnection(endpoint=service.url, access_key=KEY), max_attempts=1)
    yield rest
    await rest.close()


# ---- the liveness check: HEAD /api/hubs/{hub}/connections/{id} ----------------------------------------------------

CHECK_TABLE = [
    ("HEAD", 200, None, Liveness.ALIVE),
    ("HEAD", 404, CONNECTION_WARNING, Liveness.GONE),  # what the service sends (ConnectionExistsAsync)
    ("HEAD", 404, "warning.connection.notexisted", Liveness.GONE),  # compared ignoring case, as the SDK does
    ("HEAD", 404, CONNECTION_ERROR, Liveness.GONE),  # the same fact, the severity PUT uses
    ("HEAD", 404, None, Liveness.UNKNOWN),  # a bare 404: a proxy or a wrong endpoint, not the service
    ("HEAD", 404, USER_WARNING, Liveness.UNKNOWN),  # about something else
    ("HEAD", 404, GROUP_WARNING, Liveness.UNKNOWN),
    ("HEAD", 404, "", Liveness.UNKNOWN),
    ("HEAD", 400, None, Liveness.UNKNOWN),
    ("HEAD", 401, None, Liveness.UNKNOWN),
    ("HEAD", 500, CONNECTION_WARNING, Liveness.UNKNOWN),  # the code counts on a 404 only
    ("HEAD", 503, None, Liveness.UNKNOWN),
]


@pytest.mark.parametrize(("method", "status", "code", "outcome"), CHECK_TABLE)
async def test_the_liveness_check_reads_a_404_by_its_code(
    service: FakeService, client: SignalRLiveness, method: str, status: int, code: str | None, outcome: Liveness
) -> None:
    """Only a 404 with the connection's not-existed code is GONE; a bare 404 is UNKNOWN, so no row is deleted on it."""
    service.status, service.code = status, code
    assert await client.check(HUB, "c-1") is outcome
    assert service.calls == [f"{method} /api/hubs/{HUB}/connections/c-1"]


# ---- group actions: PUT / DELETE /api/hubs/{hub}/groups/{group}/connections/{id} -----------------------------------

GROUP_TABLE = [
    # (method, status, code, confirmed, logged as a failure)
    ("PUT", 200, None, True, False),
    ("PUT", 404, CONNECTION_ERROR, False, False),  # gone: not added, and no failure (AddToGroupAsync)
    ("PUT", 404, CONNECTION_WARNING, False, False),
    ("PUT", 404, None, False, True),  # a bare 404 is a failure like any other
    ("PUT", 404, GROUP_WARNING, False, True),
    ("PUT", 500, None, False, True),
    ("DELETE", 200, None, True, False),  # the service's answer for a gone connection too (the SDK's E2E tests)
    ("DELETE", 404, CONNECTION_WARNING, True, False),  # gone: it is in no group
    ("DELETE", 404, CONNECTION_ERROR, True, False),
    ("DELETE", 404, None, False, True),
    ("DELETE", 404, USER_WARNING, False, True),
    ("DELETE", 500, None, False, True),
]


@pytest.mark.parametrize(("method", "status", "code", "confirmed", "failure"), GROUP_TABLE)
async def test_a_group_action_reads_a_404_by_its_code(
    service: FakeService,
    client: SignalRLiveness,
    caplog: pytest.LogCaptureFixture,
    method: str,
    status: int,
    code: str | None,
    confirmed: bool,
    failure: bool,
) -> None:
    """A removal of a connection the service says is gone is confirmed; an addition is not, but is no failure."""
    service.status, service.code = status, code
    action = client.add_to_group if method == "PUT" else client.remove_from_group
    with caplog.at_level(logging.WARNING, logger="mapping.signalr.liveness"):
        assert await action(HUB, "room", "c-1") is confirmed
    assert service.calls == [f"{method} /api/hubs/{HUB}/groups/room/connections/c-1"]
    assert bool(caplog.records) is failure, caplog.records


# ---- closes: DELETE /api/hubs/{hub}/connections/{id}, POST /api/hubs/{hub}/users/{user}/:closeConnections ----------

CLOSE_TABLE = [
    ("DELETE", 200, None, True),
    ("DELETE", 404, CONNECTION_WARNING, True),  # CloseConnectionAsync: no such connection, so none is open
    ("DELETE", 404, CONNECTION_ERROR, True),
    ("DELETE", 404, None, False),
    ("DELETE", 404, USER_WARNING, False),
    ("DELETE", 500, None, False),
    ("POST", 204, None, True),
    ("POST", 404, USER_WARNING, True),  # no connection of that user
    ("POST", 404, None, False),
    ("POST", 404, CONNECTION_WARNING, False),
    ("POST", 429, None, False),
]


@pytest.mark.parametrize(("method", "status", "code", "confirmed"), CLOSE_TABLE)
async def test_a_close_reads_a_404_by_its_code(
    service: FakeService, client: SignalRLiveness, method: str, status: int, code: str | None, confirmed: bool
) -> None:
    """A close is confirmed by 2xx, or by a 404 saying the connection (or user) does not exist; not by a bare 404."""
    service.status, service.code = status, code
    if method == "DELETE":
        assert await client.close_connection(HUB, "c-1", reason="test") is confirmed
        assert service.calls == [f"DELETE /api/hubs/{HUB}/connections/c-1"]
    else:
        assert await client.close_user(HUB, "ann", reason="test") is confirmed
        assert service.calls == [f"POST /api/hubs/{HUB}/users/ann/:closeConnections"]


# ---- the local host's signalR output binding ------------------------------------------------------------------------

ADD = {"action": "add", "groupName": "room", "connectionId": "gone-1"}
REMOVE = {"action": "remove", "groupName": "room", "connectionId": "gone-1"}
ADD_USER = {"action": "add", "groupName": "room", "userId": "ann"}
SEND = {"target": "note", "arguments": ["hi"], "connectionId": "gone-1"}

OUTPUT_TABLE = [
    # (item, status, code, the items after it are sent)
    (ADD, 200, None, True),
    (ADD, 404, CONNECTION_ERROR, True),  # AddToGroupAsync accepts it: nothing fails
    (ADD, 404, "ERROR.CONNECTION.NOTEXISTED", True),
    (ADD, 404, None, False),  # a bare 404 fails the output, as any error
    (ADD, 404, CONNECTION_WARNING, False),  # not the code AddToGroupAsync accepts
    (ADD, 500, None, False),
    (REMOVE, 200, None, True),  # what the service answers for a gone connection
    (REMOVE, 404, CONNECTION_WARNING, False),  # RemoveFromGroupAsync accepts 2xx only
    (REMOVE, 404, None, False),
    (ADD_USER, 200, None, True),
    (ADD_USER, 404, CONNECTION_ERROR, False),  # UserAddToGroupAsync accepts 2xx only
    (SEND, 404, CONNECTION_WARNING, False),  # SendConnectionAsync accepts 2xx only
]


@pytest.mark.parametrize(("item", "status", "code", "sent_on"), OUTPUT_TABLE)
async def test_the_output_binding_fails_only_where_the_extension_fails(
    service: FakeService, item: dict[str, object], status: int, code: str | None, sent_on: bool
) -> None:
    """An output [item, message] sends the message after the item unless the item's answer fails it, as the
    extension's SDK decides; a failure raises (the invocation fails) and nothing after it is sent."""
    service.status, service.code = status, code
    sender = SignalRClient(timeout=5)
    endpoint = ServiceEndpoint(service.url, KEY)
    try:
        if sent_on:
            assert await sender.deliver(endpoint, HUB, [item, AFTER]) == 2
        else:
            with pytest.raises(SignalRBindingError, match=f"answered {status}"):
                await sender.deliver(endpoint, HUB, [item, AFTER])
    finally:
        await sender.close()
    assert service.calls[1:] == ([f"POST {AFTER_PATH}"] if sent_on else [])


# ---- what the emulator sends --------------------------------------------------------------------------------------

EMULATOR_TABLE = [
    # (method, path under /api/hubs/chat, status, x-ms-error-code), for a connection, user and group nobody has
    ("HEAD", "/connections/nobody", 404, errors.CONNECTION_NOT_EXISTED),
    ("DELETE", "/connections/nobody", 404, errors.CONNECTION_NOT_EXISTED),
    ("PUT", "/groups/room/connections/nobody", 404, errors.ADD_CONNECTION_NOT_EXISTED),
    ("DELETE", "/groups/room/connections/nobody", 200, None),
    ("DELETE", "/connections/nobody/groups", 200, None),
    ("POST", "/connections/nobody/:send", 202, None),
    ("HEAD", "/users/nobody", 404, errors.USER_NOT_EXISTED),
    ("HEAD", "/groups/empty", 404, errors.GROUP_NOT_EXISTED),
    ("HEAD", "/users/nobody/groups/room", 404, errors.USER_NOT_IN_GROUP),
    ("PUT", "/users/nobody/groups/room", 200, None),
    ("GET", "/no/such/route", 404, None),  # a route the service lacks: a bare 404
]


@pytest.fixture
async def emulator() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The emulator in process, on loopback (its upstream unused)."""
    config = EmulatorConfig(public_url="http://localhost:1", keys=[KEY], upstream_url="http://127.0.0.1:1")
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as test_client:
        yield test_client


@pytest.mark.parametrize(("method", "path", "status", "code"), EMULATOR_TABLE)
async def test_the_emulator_names_what_does_not_exist(
    emulator: TestClient[web.Request, web.Application], method: str, path: str, status: int, code: str | None
) -> None:
    """The emulator answers a missing connection, user or group as the service does: status and x-ms-error-code."""
    url = str(emulator.make_url(f"/api/hubs/{HUB}{path}"))
    headers = {"Authorization": f"Bearer {access_key_token(KEY, audience=url)}"}
    body = b'{"target": "t", "arguments": []}' if method == "POST" else None
    async with emulator.session.request(
        method, url, params={"api-version": "2022-06-01"}, headers=headers, data=body
    ) as r:
        assert (r.status, r.headers.get(errors.HEADER)) == (status, code)


async def test_the_app_reads_the_emulator_as_it_reads_the_service(
    emulator: TestClient[web.Request, web.Application],
) -> None:
    """Against the emulator, a connection it does not have is GONE, cannot be added, and counts as removed and
    closed."""
    rest = SignalRLiveness(SignalRConnection(endpoint=str(emulator.make_url("")).rstrip("/"), access_key=KEY))
    try:
        assert await rest.check(HUB, "nobody") is Liveness.GONE
        assert await rest.add_to_group(HUB, "room", "nobody") is False
        assert await rest.remove_from_group(HUB, "room", "nobody") is True
        assert await rest.close_connection(HUB, "nobody", reason="test") is True
        assert await rest.close_user(HUB, "nobody", reason="test") is True
    finally:
        await rest.close()
