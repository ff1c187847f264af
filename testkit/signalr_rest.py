"""A loopback stand-in for two SignalR Service REST calls: the connection-existence check (HEAD, 2022-06-01)
and the listing of a group's connections (GET, 2024-12-01, pages of at most 200 with a continuation token
and a `nextLink`). For tests and benchmarks that need thousands of connections, which the emulator holds
only as real WebSockets: a group can hold numbered ids (`NumberedIds`, a million in two fields), and every answer
can wait an injected latency first, as a remote service would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from local.emulator.tokens import TokenError, verify

ACCESS_KEY = "loopback-test-access-key-0123456789abcdef"
_NUMBER_DIGITS = 9


@dataclass(frozen=True, slots=True)
class NumberedIds:
    """A group's members held compactly: `count` connection ids `<prefix><number, 9 digits>`, in listing order."""

    prefix: str
    count: int

    def __contains__(self, connection_id: object) -> bool:
        if not isinstance(connection_id, str) or not connection_id.startswith(self.prefix):
            return False
        number = connection_id[len(self.prefix) :]
        return len(number) == _NUMBER_DIGITS and number.isdigit() and int(number) < self.count

    def ids(self) -> list[str]:
        """Return every id (for a caller that needs them spelled out)."""
        return [self._id(number) for number in range(self.count)]

    def page(self, after: str, size: int) -> tuple[list[str], bool]:
        """Return up to `size` ids after the id `after` ("" for the first page), and whether more follow."""
        first = int(after[len(self.prefix) :]) + 1 if after else 0
        last = min(first + size, self.count)
        return [self._id(number) for number in range(first, last)], last < self.count

    def _id(self, number: int) -> str:
        return f"{self.prefix}{number:0{_NUMBER_DIGITS}d}"


@dataclass
class SignalRRest:
    """What the stand-in answers per connection id, and what it was asked."""

    endpoint: str = ""
    answers: dict[str, list[int]] = field(default_factory=dict)  # connection id -> statuses, last one repeats
    default_status: int = 404
    # The service's "connection does not exist" on a 404 (mapping.signalr.liveness); None: a bare 404 (unknown).
    not_existed_code: str | None = "Warning.Connection.NotExisted"
    retry_after: str = "0"
    requests: list[str] = field(default_factory=list)
    rejected_tokens: int = 0
    groups: dict[str, set[str]] = field(default_factory=dict)  # group -> connection ids the listing returns
    listing_status: int = 200  # e.g. 404: a service without the 2024-12-01 listing
    listings: int = 0  # listing requests answered (pages)
    numbered: dict[str, NumberedIds] = field(default_factory=dict)  # group -> numbered members (beside `groups`)
    latency_seconds: float = 0.0  # waited before every answer

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
            in_a_group = any(connection_id in members for members in self.groups.values()) or any(
                connection_id in members for members in self.numbered.values()
            )
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
    """Serve the connection check and the group listing on 127.0.0.1 with JWT checks, until the block ends."""
    state = SignalRRest()

    async def head_connection(request: web.Request) -> web.Response:
        if state.latency_seconds:
            await asyncio.sleep(state.latency_seconds)
        connection_id = request.match_info["connection"]
        audience = f"{state.endpoint}{request.rel_url.raw_path}"
        if request.query.get("api-version") != "2022-06-01" or not _valid_token(
            request.headers.get("Authorization", ""), audience
        ):
            state.rejected_tokens += 1
            return web.Response(status=401)
        state.requests.append(connection_id)
        status = state.answer(connection_id)
        headers = {"Retry-After": state.retry_after} if status == 429 else {}
        if status == 404 and state.not_existed_code is not None:
            headers["x-ms-error-code"] = state.not_existed_code
        return web.Response(status=status, headers=headers)

    async def list_group(request: web.Request) -> web.Response:
        if state.latency_seconds:
            await asyncio.sleep(state.latency_seconds)
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
        numbered = state.numbered.get(request.match_info["group"])
        if numbered is not None:
            page, more = numbered.page(after, size)
        else:
            members = sorted(m for m in state.groups.get(request.match_info["group"], set()) if m > after)
            page, more = members[:size], len(members) > size
        body: dict[str, object] = {"value": [{"connectionId": member, "userId": None} for member in page]}
        if more:
            query = {"api-version": "2024-12-01", "maxpagesize": str(size), "continuationToken": page[-1]}
            body["nextLink"] = str(request.rel_url.with_query(query))
        return web.json_response(body)

    app = web.Application()
    app.router.add_route("HEAD", "/api/hubs/{hub}/connections/{connection}", head_connection)
    app.router.add_get("/api/hubs/{hub}/groups/{group}/connections", list_group)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()
