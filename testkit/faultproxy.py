"""A fault-injecting HTTP proxy on 127.0.0.1 in front of Azurite: answers 503/500, delays, cuts or hangs requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

# Hop-by-hop or recomputed headers that a proxy must not copy through.
_SKIPPED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True)
class Fault:
    """What the proxy does with one request: pass it, answer a status, delay it, cut or hang the connection."""

    kind: str  # "pass", "status", "commit", "delay", "cut", "hang"
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0

    @classmethod
    def answer(cls, status: int, *, retry_after: str | None = None) -> Fault:
        """Answer `status` without reaching Azurite."""
        return cls("status", status=status, retry_after=retry_after)

    @classmethod
    def committed(cls, status: int = 500) -> Fault:
        """Pass the request on (it takes effect), then answer `status` instead of Azurite's answer."""
        return cls("commit", status=status)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait `seconds`, then pass the request on."""
        return cls("delay", seconds=seconds)


PASS = Fault("pass")
CUT = Fault("cut")  # close the connection without an answer
HANG = Fault("hang")  # accept the request and never answer
# A store's table options behind a fault proxy: one fast retry, short timeouts (an outage fails in seconds).
FEW_FAST_RETRIES: dict[str, float] = {
    "retry_total": 1,
    "retry_backoff_factor": 0.01,
    "retry_timeout": 2.0,
    "read_timeout": 2.0,
}


class FaultProxy:
    """Forward requests to `upstream`, applying queued faults first and then `default` to the rest."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = f"http://127.0.0.1:{upstream_port}"
        self.queue: deque[Fault] = deque()
        self.default = PASS
        self.rule: Callable[[web.Request, bytes], Fault | None] | None = None  # picks a fault by the request itself
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def plan(self, *faults: Fault, then: Fault = PASS) -> None:
        """Apply `faults` to the next requests in order, then `then` to every later request."""
        self.queue = deque(faults)
        self.default = then

    @property
    def faults_injected(self) -> int:
        """Return how many requests got a fault instead of a clean pass."""
        return sum(self.injected.values())

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close the upstream session."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        fault = self.queue.popleft() if self.queue else self.default
        if self.rule is not None and (chosen := self.rule(request, body)) is not None:
            fault = chosen
        if fault.kind != "pass":
            self.injected[fault.kind if fault.kind != "status" else str(fault.status)] += 1
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return web.json_response({"odata.error": {"code": "ServerBusy"}}, status=fault.status, headers=headers)
        if fault.kind == "cut":
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("fault proxy cut the connection")
        if fault.kind == "hang":
            await asyncio.Event().wait()
        if fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        if fault.kind == "commit":
            await self._forward(request, body)
            return web.json_response({"odata.error": {"code": "OperationTimedOut"}}, status=fault.status)
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _SKIPPED_HEADERS}
        url = URL(self.upstream + request.rel_url.raw_path_qs, encoded=True)  # byte for byte: it is signed
        async with self._session.request(
            request.method, url, headers=headers, data=body or None, skip_auto_headers=("Content-Type",)
        ) as upstream:
            payload = await upstream.read()
            copied = {name: value for name, value in upstream.headers.items() if name.lower() not in _SKIPPED_HEADERS}
            return web.Response(status=upstream.status, headers=copied, body=payload)


@contextlib.asynccontextmanager
async def fault_proxy(upstream_port: int) -> AsyncIterator[FaultProxy]:
    """Run a FaultProxy in front of the Azurite on `upstream_port` until the block ends."""
    proxy = FaultProxy(upstream_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
