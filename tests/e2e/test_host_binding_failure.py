"""negotiate without a principal fails as it fails in Azure: the input binding, before the function runs.

negotiate's `signalRConnectionInfo` takes its user from `{headers.x-ms-client-principal-name}`. The Functions host
resolves that expression before it calls the worker, and a header that is absent fails the binding (`Error while
accessing 'x-ms-client-principal-name': property doesn't exist.`, azure-webjobs-sdk `BindingTemplateToken`): the
caller gets a 500 with no body and the function never runs. A header that is present but blank binds as empty, the
function runs and its own check answers 401. In Azure, App Service Authentication answers 401 before either
(`infra/`: `Return401`), so a deployed client sees the 500 only for a signed-in principal with no name.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import azure.functions as func
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from local.host.functions import load_functions
from local.host.server import create_app

CONNECTION = "Endpoint=http://localhost;Port=8888;AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH;Version=1.0;"
PRINCIPAL = "x-ms-client-principal-name"
Client = TestClient[web.Request, web.Application]
CALLS: list[str] = []


def negotiate_app() -> func.FunctionApp:
    """negotiate as the blueprint declares it (the same binding), recording that it ran and what it got."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.function_name("negotiate")
    @app.route(route="negotiate", methods=["POST"])
    @app.generic_input_binding(
        arg_name="connection_info",
        type="signalRConnectionInfo",
        user_id="{headers.x-ms-client-principal-name}",
        hub_name="chat",
        connection_string_setting="AzureSignalRConnectionString",
    )
    def negotiate(req: func.HttpRequest, connection_info: str) -> func.HttpResponse:
        CALLS.append(connection_info)
        return func.HttpResponse(connection_info, mimetype="application/json")

    @app.function_name("by_query")
    @app.route(route="by-query/{room}", methods=["POST"])
    @app.generic_input_binding(
        arg_name="connection_info",
        type="signalRConnectionInfo",
        user_id="{query.user}-{room}",
        hub_name="chat",
        connection_string_setting="AzureSignalRConnectionString",
    )
    def by_query(req: func.HttpRequest, connection_info: str) -> func.HttpResponse:
        CALLS.append(connection_info)
        return func.HttpResponse(connection_info, mimetype="application/json")

    return app


@pytest.fixture
def calls() -> Iterator[list[str]]:
    """The functions' invocations during one test."""
    CALLS.clear()
    yield CALLS
    CALLS.clear()


async def _client(app: Any, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv("AzureSignalRConnectionString", CONNECTION)
    monkeypatch.setenv("SIGNALR_HUB", "chat")
    client = TestClient(TestServer(create_app(load_functions(app))))
    await client.start_server()
    return client


@pytest.fixture
async def host(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    """The local host serving `negotiate_app`."""
    client = await _client(negotiate_app(), monkeypatch)
    yield client
    await client.close()


async def test_an_absent_principal_header_fails_the_binding_before_the_function(
    host: Client, calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """No principal header: 500 with no body, the function never ran, and the log says why, as the host's does."""
    response = await host.post("/api/negotiate")
    assert response.status == 500
    assert await response.read() == b""
    assert calls == []
    assert "Error while accessing 'x-ms-client-principal-name': property doesn't exist." in caplog.text


@pytest.mark.parametrize(("value", "user"), [("", None), ("alice@contoso.com", "alice@contoso.com")])
async def test_a_present_principal_header_binds_even_when_blank(
    host: Client, calls: list[str], value: str, user: str | None
) -> None:
    """A present header binds (a blank one as no user): the function runs and gets the connection info."""
    response = await host.post("/api/negotiate", headers={PRINCIPAL: value})
    assert response.status == 200
    [info] = calls
    assert info == await response.text()
    assert token_claims(json.loads(info)["accessToken"]).get("nameid") == user


def token_claims(token: str) -> dict[str, Any]:
    """Return a JWT's payload (not verified: the test only reads what the host put in it)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


@pytest.mark.parametrize(
    ("path", "status", "ran"),
    [
        ("/api/by-query/lobby?user=ada", 200, True),
        ("/api/by-query/lobby?user=", 200, True),  # present, empty
        ("/api/by-query/lobby", 500, False),  # query parameter absent
    ],
)
async def test_query_expressions_fail_the_same_way(
    host: Client, calls: list[str], path: str, status: int, ran: bool
) -> None:
    """`{query.x}` follows the same rule as `{headers.x}`: absent fails the binding, empty binds."""
    response = await host.post(path)
    assert response.status == status
    assert bool(calls) is ran


async def test_the_apps_negotiate_answers_500_without_the_header_and_401_when_blank(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The real app through the local host: no principal header is the binding's 500 (the function's own 401 is not
    reached); a blank header reaches the function, whose check answers 401 with its JSON error."""
    import function_app

    client = await _client(function_app.app, monkeypatch)
    try:
        absent = await client.post("/api/negotiate")
        assert (absent.status, await absent.read()) == (500, b"")
        assert "Exception binding parameter 'connection_info'" in caplog.text
        blank = await client.post("/api/negotiate", headers={PRINCIPAL: " "})
        assert blank.status == 401
        assert "error" in await blank.json()
    finally:
        await client.close()
