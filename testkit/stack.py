"""The local stack for end-to-end tests: the emulator and the local host as processes, and Node SignalR clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from local.node_driver import NodeDriver
from testkit.azurite import Azurite, connection_string
from testkit.faultproxy import Fault, FaultProxy
from testkit.hub_client import connected_answered
from testkit.local_stack import HostOptions, log_tail, running_local_stack
from testkit.openapi_contract import check_answer
from testkit.tables import unique_table_name

ACCESS_KEY = "e2e-primary-key-0123456789abcdefghijklmnopqrstuv"
SECONDARY_KEY = "e2e-secondary-key-0123456789abcdefghijklmnopqrstu"
WAIT_SECONDS = 30.0
HUB = "chat"


@dataclass(frozen=True)
class Stack:
    """A running emulator and local host on free ports, with the table the app uses."""

    host_url: str
    emulator_url: str
    table: str
    logs: Path

    @property
    def api(self) -> str:
        """Return the base URL SignalR clients are given (`<host>/api`)."""
        return f"{self.host_url}/api"

    def log_tail(self, lines: int = 60) -> str:
        """Return the end of both processes' logs, for failure messages."""
        return log_tail(self.logs, lines)


@contextlib.contextmanager
def running_stack(
    azurite: Azurite,
    *,
    ttl_seconds: int = 600,
    sweep_schedule: str = "0 */5 * * * *",
    client_timeout: float = 30.0,
    keepalive: float = 15.0,
    static: dict[str, Path] | None = None,
    app: str | None = None,
    extra_settings: dict[str, str] | None = None,
    host_json: dict[str, Any] | None = None,
    audience: str = "hub",
    grace_seconds: int = 0,
    watch: str = "anyone",
    direct_messages: str = "anyone",
    rooms_open: str = "*",
    client_call_rate: int = 0,
    function_key: str | None = None,
    emulator_options: Sequence[str] = (),
) -> Iterator[Stack]:
    """Start the emulator and the local host for the app (or `app`, a module:attribute importable from the
    repository root, such as `testkit.group_app:app`) on a fresh table, with `extra_settings` among the app settings
    and `host_json` instead of the repository's host.json; stop both when the block ends. `audience`,
    `grace_seconds`, `watch`, `direct_messages` and `rooms_open` set PRESENCE_AUDIENCE, PRESENCE_GRACE_SECONDS,
    PRESENCE_WATCH, DIRECT_MESSAGES and ROOMS_OPEN, and `client_call_rate` CLIENT_CALL_RATE (by default a hub-wide
    audience, no grace, anyone watched and messaged, every room open, no call budget, unlike the app's defaults, for
    the tests written before those settings existed).
    With `function_key` the host checks keys as Azure does; `emulator_options` go on the emulator's command line."""
    table = unique_table_name()
    settings = {
        # The host storage: queue triggers read their queues through it (Azurite's queue endpoint).
        "AzureWebJobsStorage": azurite.connection_string,
        "MAPPING_STORAGE": azurite.connection_string,
        "MAPPING_TABLE": table,
        "MAPPING_TTL_SECONDS": str(ttl_seconds),
        "PRESENCE_EVENTS": "true",
        "PRESENCE_AUDIENCE": audience,
        "PRESENCE_GRACE_SECONDS": str(grace_seconds),
        "PRESENCE_WATCH": watch,
        "DIRECT_MESSAGES": direct_messages,
        "ROOMS_OPEN": rooms_open,
        "CLIENT_CALL_RATE": str(client_call_rate),
        "SWEEP_SCHEDULE": sweep_schedule,
        **(extra_settings or {}),
    }
    host_options = HostOptions(app=app, function_key=function_key, static=static or {})
    with running_local_stack(
        settings,
        hub=HUB,
        client_timeout=client_timeout,
        keepalive=keepalive,
        log_level=None,
        host_json=host_json,
        access_key=ACCESS_KEY,
        secondary_key=SECONDARY_KEY,
        host_options=host_options,
        log_prefix="e2e-stack-",
        emulator_options=emulator_options,
    ) as local:
        yield Stack(host_url=local.host_url, emulator_url=local.emulator_url, table=table, logs=local.logs)


@contextlib.asynccontextmanager
async def failing_storage_stack(
    azurite: Azurite, *, extra_settings: dict[str, str] | None = None
) -> AsyncIterator[tuple[Stack, asyncio.Event]]:
    """A stack whose table requests pass a proxy that answers 503 while the event is set (its queues go straight to
    Azurite)."""
    failing = asyncio.Event()
    proxy = FaultProxy(azurite.port)
    proxy.rule = lambda _request, _body: Fault.answer(503) if failing.is_set() else None
    await proxy.start()
    settings = {**(extra_settings or {}), "MAPPING_STORAGE": connection_string(proxy.port)}
    try:
        with running_stack(azurite, extra_settings=settings) as running:
            try:
                yield running, failing
            finally:
                await proxy.stop()  # before the host: stopping it blocks this loop, which the proxy answers from
    finally:
        await proxy.stop()


def unique_user(prefix: str) -> str:
    """Return a user name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def wait_until(check: Callable[[], Any], *, within: float = WAIT_SECONDS, what: str = "condition") -> Any:
    """Poll an async or sync check every 100 ms until it returns something truthy; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.1)


class SignalRClients(NodeDriver):
    """Real `@microsoft/signalr` clients in one Node process, driven over JSON lines, for one stack."""

    def __init__(self, stack: Stack) -> None:
        super().__init__()
        self.stack = stack

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, within: float = WAIT_SECONDS, what: str = "an event"
    ) -> dict[str, Any]:
        """Return the first event (past or future) matching `predicate`; fail after `within` seconds."""
        event = await self.first(predicate, within=within)
        if event is None:
            pytest.fail(
                f"timed out waiting for {what}; events: {self.events[-20:]}; driver stderr: {self.stderr_tail()}\n"
                f"{self.stack.log_tail()}"
            )
        return event

    async def command(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one command to the driver and return its answer (raises when the client call failed)."""
        answer = await self.request(op, within=WAIT_SECONDS, **fields)
        if answer is None:
            pytest.fail(f"timed out waiting for the answer to {op}; driver stderr: {self.stderr_tail()}")
        if answer["event"] == "failed":
            raise ClientCallFailed(answer["error"])
        return answer

    async def connect(self, client: str, user: str | None, *, settled: bool = True, **options: Any) -> str:
        """Negotiate through the app and open a connection; return its connection id. As in Azure the client's start
        ends before the app's connected function ran: `settled` waits until the emulator has the app's answer."""
        answer = await self.command("connect", id=client, url=self.stack.api, user=user, **options)
        connection_id = str(answer["connectionId"])
        if settled:
            async with aiohttp.ClientSession() as session:
                await connected_answered(session, self.stack.emulator_url, connection_id)
        return connection_id

    async def send(self, client: str, method: str, *args: Any) -> None:
        """Call `connection.send(method, ...args)` (fire-and-forget)."""
        await self.command("send", id=client, method=method, args=list(args))

    async def stop(self, client: str) -> None:
        """Stop a connection cleanly."""
        await self.command("stop", id=client)

    def received(self, client: str, target: str) -> list[list[Any]]:
        """Return the arguments of every `target` message a client received so far."""
        return [e["args"] for e in self.events if e.get("id") == client and e.get("target") == target]

    async def wait_message(
        self, client: str, target: str, match: Callable[[list[Any]], bool] = lambda _args: True
    ) -> list[Any]:
        """Wait until a client receives a matching `target` message; return its arguments."""
        event = await self.wait_for(
            lambda e: e.get("id") == client and e.get("target") == target and match(e["args"]),
            what=f"{client} to receive {target}",
        )
        return list(event["args"])


class ClientCallFailed(Exception):
    """A SignalR client call (start, send, invoke) failed."""


async def api(stack: Stack, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """Call the app's HTTP API on the local host, check the answer against the OpenAPI document; return status, JSON."""
    async with aiohttp.ClientSession() as session, session.request(method, f"{stack.api}/{path}", **kwargs) as response:
        text = await response.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        content_type = response.headers.get("Content-Type") if text else None
        check_answer(
            method,
            response.url.raw_path,
            response.status,
            headers=response.headers,
            body=body,
            content_type=content_type,
        )
        return response.status, body
