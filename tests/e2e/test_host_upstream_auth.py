"""The local host's SignalR webhook guarded as the deployed one is: one upstream request replayed each way.

With an access key in the SignalR connection string the SignalR extension checks `X-ASRS-Signature`; with an
identity-based connection (`<NAME>__serviceUri`, what `infra/` deploys) it checks nothing, and only the Functions host's
`signalr_extension` system key (`?code=` on the upstream URL) keeps strangers out. The request below is written by
hand in the shape Azure SignalR Service sends (the `X-ASRS-*` headers and a JSON hub-protocol invocation).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import azure.functions as func
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from local.host.functions import load_functions
from local.host.server import create_app

SETTING = "UPSTREAM_AUTH_TEST_SIGNALR"
ACCESS_KEY = "upstream-auth-test-primary-key-0123456789abcdef"
OTHER_KEY = "upstream-auth-test-secondary-key-0123456789abcd"
SYSTEM_KEY = "upstream-auth-test-signalr-extension-key-0123456"
FUNCTION_KEY = "upstream-auth-test-function-key-0123456789abc"
CONNECTION_ID = "rP9c2bYk3m0S4q7wXy1ZtA"
WEBHOOK = "/runtime/webhooks/signalr"
KEYED_CONNECTION = f"Endpoint=https://example.service.signalr.net;AccessKey={ACCESS_KEY};Version=1.0;"
IDENTITY_SERVICE_URI = "https://example.service.signalr.net"

Client = TestClient[web.Request, web.Application]
CALLS: list[dict[str, Any]] = []


def signature(connection_id: str, *keys: str) -> str:
    """`X-ASRS-Signature` as the service computes it: `sha256=<hex>` under each of its access keys."""
    return ",".join(
        "sha256=" + hmac.new(key.encode(), connection_id.encode(), hashlib.sha256).hexdigest() for key in keys
    )


def recorded_upstream_request(*, signed_with: tuple[str, ...] = (ACCESS_KEY, OTHER_KEY)) -> dict[str, Any]:
    """One `messages/send` upstream call, as the service POSTs it for a client's `send("bob", "hi")`."""
    headers = {
        "Content-Type": "application/json",
        "X-ASRS-Hub": "chat",
        "X-ASRS-Category": "messages",
        "X-ASRS-Event": "send",
        "X-ASRS-Connection-Id": CONNECTION_ID,
        "X-ASRS-User-Id": "alice@contoso.com",
        "X-ASRS-User-Claims": "nameid: alice@contoso.com, aud: https://example.service.signalr.net/client/?hub=chat",
        "X-ASRS-Client-Query": "?hub=chat",
    }
    if signed_with:
        headers["X-ASRS-Signature"] = signature(CONNECTION_ID, *signed_with)
    body = {"type": 1, "target": "send", "arguments": ["bob", "hi"]}
    return {"headers": headers, "data": json.dumps(body)}


def upstream_app() -> func.FunctionApp:
    """An app with one SignalR trigger that records what it is called with (and sends nothing)."""
    app = func.FunctionApp()

    @app.function_name("on_send")
    @app.generic_trigger(
        arg_name="invocation",
        type="signalRTrigger",
        hub_name="chat",
        category="messages",
        event="send",
        connection_string_setting=SETTING,
    )
    def on_send(invocation: str) -> None:
        CALLS.append(json.loads(invocation))

    return app


@pytest.fixture
def calls() -> Iterator[list[dict[str, Any]]]:
    """The trigger's invocations during one test."""
    CALLS.clear()
    yield CALLS
    CALLS.clear()


async def serve(system_keys: dict[str, str] | None = None) -> Client:
    client = TestClient(
        TestServer(
            create_app(load_functions(upstream_app()), function_keys=[FUNCTION_KEY], system_keys=system_keys or {})
        )
    )
    await client.start_server()
    return client


@pytest.fixture
async def identity_host(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    """The host with the connection as deployed (`__serviceUri`, no key) and the signalr_extension system key."""
    monkeypatch.delenv(SETTING, raising=False)
    monkeypatch.setenv(f"{SETTING}__serviceUri", IDENTITY_SERVICE_URI)
    monkeypatch.setenv(f"{SETTING}__credential", "managedidentity")
    client = await serve({"signalr_extension": SYSTEM_KEY})
    yield client
    await client.close()


@pytest.fixture
async def keyed_host(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    """The host with an access key in the connection string and no system key (the local default, as Core Tools)."""
    monkeypatch.delenv(f"{SETTING}__serviceUri", raising=False)
    monkeypatch.setenv(SETTING, KEYED_CONNECTION)
    client = await serve()
    yield client
    await client.close()


# ---- identity-based: the system key decides, the signature does not ------------------------------------------


async def test_identity_based_replay_runs_with_the_code_and_no_signature(
    identity_host: Client, calls: list[dict[str, Any]]
) -> None:
    """The replayed request with `?code=<signalr_extension key>` runs the function, signed with no key at all."""
    replay = recorded_upstream_request(signed_with=())
    response = await identity_host.post(WEBHOOK, params={"code": SYSTEM_KEY}, **replay)
    assert response.status == 200, await response.text()
    [call] = calls
    assert (call["ConnectionId"], call["UserId"], call["Arguments"]) == (
        CONNECTION_ID,
        "alice@contoso.com",
        ["bob", "hi"],
    )


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ({}, {}, 401),  # no key
        ({"code": "not-the-key"}, {}, 401),  # a wrong key
        ({"code": FUNCTION_KEY}, {}, 403),  # a valid key of another kind: the host forbids it
        ({"code": SYSTEM_KEY}, {"x-functions-key": "not-the-key"}, 401),  # the header wins over ?code=
        ({}, {"x-functions-key": SYSTEM_KEY}, 200),  # the header alone will do
    ],
)
async def test_identity_based_replay_needs_the_system_key(
    identity_host: Client,
    calls: list[dict[str, Any]],
    query: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    """A validly signed replay without the system key is refused before the extension sees it: a signature proves
    nothing when the connection has no access key."""
    replay = recorded_upstream_request()
    replay["headers"].update(headers)
    response = await identity_host.post(WEBHOOK, params=query, **replay)
    assert response.status == status
    assert len(calls) == (1 if status == 200 else 0)
    if status != 200:
        assert await response.read() == b""  # the host's refusal has no body


async def test_identity_based_without_a_system_key_refuses_every_call(
    monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]]
) -> None:
    """Identity-based with no signalr_extension key configured: nothing can be checked, so every call is 401."""
    monkeypatch.delenv(SETTING, raising=False)
    monkeypatch.setenv(f"{SETTING}__serviceUri", IDENTITY_SERVICE_URI)
    client = await serve()
    try:
        for query in ({}, {"code": SYSTEM_KEY}, {"code": ""}):
            response = await client.post(WEBHOOK, params=query, **recorded_upstream_request())
            assert response.status == 401
    finally:
        await client.close()
    assert calls == []


async def test_a_connection_string_without_an_access_key_is_identity_based(
    monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]]
) -> None:
    """`Endpoint=...;AuthType=azure.msi` has no AccessKey: the extension checks no signature, the host the key."""
    monkeypatch.delenv(f"{SETTING}__serviceUri", raising=False)
    monkeypatch.setenv(SETTING, "Endpoint=https://example.service.signalr.net;AuthType=azure.msi;Version=1.0;")
    client = await serve({"signalr_extension": SYSTEM_KEY})
    try:
        unsigned = recorded_upstream_request(signed_with=())
        assert (await client.post(WEBHOOK, **unsigned)).status == 401
        assert (await client.post(WEBHOOK, params={"code": SYSTEM_KEY}, **unsigned)).status == 200
    finally:
        await client.close()
    assert len(calls) == 1


# ---- access key: the signature decides, as the extension checks it ---------------------------------------------


async def test_keyed_replay_runs_with_a_valid_signature(keyed_host: Client, calls: list[dict[str, Any]]) -> None:
    """The replayed request signed with the primary and the secondary key runs the function; no code is needed."""
    response = await keyed_host.post(WEBHOOK, **recorded_upstream_request())
    assert response.status == 200, await response.text()
    assert [call["Arguments"] for call in calls] == [["bob", "hi"]]


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),  # unsigned
        (signature(CONNECTION_ID, OTHER_KEY), 401),  # signed only with a key the app does not hold
        (signature("another-connection", ACCESS_KEY), 401),  # the signature of another connection
        (signature(CONNECTION_ID, ACCESS_KEY).upper(), 200),  # compared ignoring case
        ("sha256=00," + signature(CONNECTION_ID, ACCESS_KEY), 200),  # any entry may match
        ("sha256=00, " + signature(CONNECTION_ID, ACCESS_KEY), 401),  # entries are not trimmed
    ],
)
async def test_keyed_replay_needs_the_signature(
    keyed_host: Client, calls: list[dict[str, Any]], header: str | None, status: int
) -> None:
    """With an access key the extension's signature check decides: 401 unless an entry matches the connection id's
    HMAC under the key; `?code=` is not needed locally (keys not checked, as with Core Tools) and changes nothing."""
    replay = recorded_upstream_request()
    if header is None:
        replay["headers"].pop("X-ASRS-Signature")
    else:
        replay["headers"]["X-ASRS-Signature"] = header
    response = await keyed_host.post(WEBHOOK, params={"code": "anything"}, **replay)
    assert response.status == status, await response.text()
    assert len(calls) == (1 if status == 200 else 0)


async def test_keyed_with_a_system_key_checks_both(
    monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]]
) -> None:
    """Given the signalr_extension key, a keyed connection needs it too (the host's check comes first), and the
    signature still."""
    monkeypatch.delenv(f"{SETTING}__serviceUri", raising=False)
    monkeypatch.setenv(SETTING, KEYED_CONNECTION)
    client = await serve({"signalr_extension": SYSTEM_KEY})
    try:
        assert (await client.post(WEBHOOK, **recorded_upstream_request())).status == 401
        unsigned = recorded_upstream_request(signed_with=())
        assert (await client.post(WEBHOOK, params={"code": SYSTEM_KEY}, **unsigned)).status == 401
        signed = recorded_upstream_request()
        assert (await client.post(WEBHOOK, params={"code": SYSTEM_KEY}, **signed)).status == 200
    finally:
        await client.close()
    assert len(calls) == 1
