"""The emulator's admin API (`/admin/...`) answers loopback callers only; the rest of the emulator answers anyone."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler

from local.emulator.server import FAULTS, EmulatorConfig, create_app

ADMIN_ROUTES = [
    ("POST", "/admin/drop-next-disconnect"),
    ("GET", "/admin/drop-next-disconnect"),
    ("GET", "/admin/connections"),
    ("POST", "/admin/connections/c1/drop"),
    ("GET", "/admin/rest-calls"),
    ("DELETE", "/admin/rest-calls"),
    ("GET", "/admin/messages"),
    ("DELETE", "/admin/messages"),
]
Client = TestClient[web.Request, web.Application]


def _seen_from(remote: str | None) -> web.Application:
    """The emulator, its callers seen as coming from `remote` (None: as they are, from loopback)."""
    app = create_app(
        EmulatorConfig(public_url="http://localhost:1", keys=["k" * 44], upstream_url="http://localhost:1")
    )
    if remote is not None:

        @web.middleware
        async def from_remote(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await handler(request.clone(remote=remote))

        app.middlewares.insert(0, from_remote)
    return app


@pytest.fixture
async def remote_client() -> AsyncIterator[Client]:
    """A client whose requests the emulator sees as coming from 203.0.113.9, a documentation address."""
    async with TestClient(TestServer(_seen_from("203.0.113.9"), host="127.0.0.1")) as client:
        yield client


@pytest.fixture
async def loopback_client() -> AsyncIterator[Client]:
    """A client on loopback, as the tests and `make run` are."""
    async with TestClient(TestServer(_seen_from(None), host="127.0.0.1")) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_a_remote_caller_is_refused_every_admin_route(remote_client: Client, method: str, path: str) -> None:
    """Every admin route answers a non-loopback caller 403 with a JSON error, and changes nothing."""
    async with remote_client.request(method, path) as response:
        assert response.status == 403
        assert (await response.json())["error"] == "the admin API answers loopback callers only"
    assert remote_client.app[FAULTS].drop_disconnected == 0


async def test_a_remote_caller_still_reaches_health_and_the_rest_api(remote_client: Client) -> None:
    """Outside `/admin/`, a non-loopback caller is answered as anyone is (health 200, an unsigned REST call 401)."""
    async with remote_client.get("/health") as response:
        assert response.status == 200
    async with remote_client.post("/api/hubs/chat/:send?api-version=2024-12-01", json={"target": "t"}) as response:
        assert response.status == 401


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_a_loopback_caller_reaches_every_admin_route(loopback_client: Client, method: str, path: str) -> None:
    """The same routes answer a loopback caller (a missing connection is a 404, not a 403)."""
    async with loopback_client.request(method, path) as response:
        assert response.status == (404 if path.endswith("/drop") else 200)
