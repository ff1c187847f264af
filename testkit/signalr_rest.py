"""A loopback stand-in for two SignalR Service REST calls: the connection-existence check (HEAD, 2022-06-01)
and the listing of a group's connections (GET, 2024-12-01, pages of at most 200 with a continuation token
and a `nextLink`). For tests and benchmarks that need thousands of connections, which the emulator holds
only as real WebSockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from local.emulator.tokens import TokenError, verify

ACCESS_KEY = "loopback-test-access-key-0123456789abcdef"


@dataclass
class SignalRRest:
    """What the stand-in answers per connection id, and what it was asked."""

    endpoint: str = ""
    answers: dict[str, list[int]] = field(default_factory=dict)  # connection id -> statuses, last one repeats
    default_status: int = 404
    retry_after: str = "0"
    requests: list[str] = field(default_factory=list)
    rejected_tokens: int = 0
    groups: dict[str, set[str]] = field(default_factory=dict)  # group -> connection ids the listing returns
    listing_status: int = 200  # e.g. 404: a service without the 2024-12-01 listing
    listings: int = 0  # listing requests answered (pages)

    @property
    def calls(self) -> int:
        """Return every REST call answered: checks and listing pages."""
        return len(self.requests) + self.listings

    @property
    def connection_string(self) -> str:
        """Return the AzureSignalRConnectionString that points the app here."""
        host, port = self.endpoint.removeprefix("http://").split(":")
        return f"Endpoint=http://{host};Port={port};AccessKey={ACCESS_KEY};Version=1.0;"

    def answer(self, connection_id: str) -> int:
        """Return the next status for a connection id."""
        statuses = self.answers.get(connection_id)
        if not statuses:
            in_a_group = any(connection_id in members for members in self.groups.values())
            return 200 if in_a_group else self.default_status
        return statuses.pop(0) if len(statuses) > 1 else statuses[0]


def _valid_token(header: str, audience: str) -> bool:
    try:
        verify(header.removeprefix("Bearer "), [ACCESS_KEY], audiences=[audience])
    except TokenError:
        return False
    return True


@asynccontextmanager
async def signalr_rest() -> AsyncIterator[SignalRRest]:
    """Serve `HEAD /api/hubs/{hub}/connections/{id}` on 127.0.0.1 with JWT checks, until the block ends."""
    state = SignalRRest()

    async def head_connection(request: web.Request) -> web.Response:
        connection_id = request.match_info["connection"]
        audience = f"{state.endpoint}{request.rel_url.raw_path}"
        if request.query.get("api-version") != "2022-06-01" or not _valid_token(
            request.headers.get("Authorization", ""), audience
        ):
            state.rejected_tokens += 1
            return web.Response(status=401)
        state.requests.append(connection_id)
        status = state.answer(connection_id)
        headers = {"Retry-After": state.retry_after} if status == 429 else None
        return web.Response(status=status, headers=headers)

    async def list_group(request: web.Request) -> web.Response:
        audience = f"{state.endpoint}{request.rel_url.raw_path}"
        if request.query.get("api-version") != "2024-12-01" or not _valid_token(
            request.headers.get("Authorization", ""), audience
        ):
            state.rejected_tokens += 1
            return web.Response(status=401)
        state.listings += 1
        if state.listing_status != 200:
            return web.Response(status=state.listing_status)
        size = min(int(request.query.get("maxpagesize", "200")), 200)
        after = request.query.get("continuationToken", "")
        members = sorted(member for member in state.groups.get(request.match_info["group"], set()) if member > after)
        page = members[:size]
        body: dict[str, object] = {"value": [{"connectionId": member, "userId": None} for member in page]}
        if len(members) > size:
            query = {"api-version": "2024-12-01", "maxpagesize": str(size), "continuationToken": page[-1]}
            body["nextLink"] = str(request.rel_url.with_query(query))
        return web.json_response(body)

    app = web.Application()
    app.router.add_route("HEAD", "/api/hubs/{hub}/connections/{connection}", head_connection)
    app.router.add_get("/api/hubs/{hub}/groups/{group}/connections", list_group)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()
