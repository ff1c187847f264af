"""The local host's key mode: as in Azure, routes that are not anonymous need a function key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import azure.functions as func
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from local.host.functions import load_functions
from local.host.server import create_app

KEY = "local-function-key-for-tests"
Keyed = tuple[TestClient[web.Request, web.Application], bool]


def keyed_app() -> func.FunctionApp:
    """An app with one anonymous route and one at function level."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="open", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def open_route(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("open")

    @app.route(route="keyed", methods=["GET"])
    def keyed_route(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("keyed")

    return app


@pytest.fixture(params=[True, False], ids=["keys checked", "keys not checked"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Keyed]:
    """A local host serving the app, with or without function keys."""
    keys = [KEY] if request.param else []
    server = TestServer(create_app(load_functions(keyed_app()), function_keys=keys))
    async with TestClient(server) as test_client:
        yield test_client, request.param


async def test_a_keyed_route_needs_a_key_when_keys_are_checked(client: Keyed) -> None:
    """With keys, a function-level route answers 401 without the key and runs with it (query or header)."""
    http, checked = client
    assert (await http.get("/api/open")).status == 200
    without = await http.get("/api/keyed")
    assert without.status == (401 if checked else 200)
    assert (await http.get("/api/keyed", params={"code": "wrong"})).status == (401 if checked else 200)
    assert (await http.get("/api/keyed", params={"code": KEY})).status == 200
    assert (await http.get("/api/keyed", headers={"x-functions-key": KEY})).status == 200
