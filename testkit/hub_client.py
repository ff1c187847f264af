"""A lightweight SignalR client in Python: negotiate, WebSocket, JSON hub protocol; cheap enough for a thousand.

It talks to the local emulator directly, with an access token it signs itself (as the app's negotiate would
give it: `aud` the client URL, `nameid` the user), so opening a connection costs the app only its `connected`
event. It sends non-blocking invocations (`connection.send(...)` in `@microsoft/signalr`), answers nothing but
reads everything, and counts what it received by target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

import aiohttp

from mapping.signalr.tokens import access_key_token

RECORD_SEPARATOR = "\x1e"
HANDSHAKE = json.dumps({"protocol": "json", "version": 1}) + RECORD_SEPARATOR
INVOCATION, PING, CLOSE = 1, 6, 7


class HubClientError(RuntimeError):
    """The emulator refused the negotiate, the WebSocket or the handshake."""


class HubClient:
    """One open connection of one user: what it received, by target, and the arguments of each message."""

    def __init__(self, user: str, connection_id: str, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.user = user
        self.connection_id = connection_id
        self.socket = socket
        self.received: Counter[str] = Counter()
        self.messages: list[tuple[str, list[Any]]] = []
        self.arrived: list[float] = []  # when each of `messages` arrived (time.monotonic())
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        emulator_url: str,
        *,
        hub: str,
        user: str,
        access_key: str,
        settled: bool = True,
    ) -> HubClient:
        """Negotiate with the emulator, open the WebSocket and shake hands; with `settled` (the default) also wait
        until the app answered its connected event, which in Azure comes after the handshake's answer."""
        base = emulator_url.rstrip("/")
        client_url = f"{base}/client/?hub={quote(hub, safe='')}"
        token = access_key_token(access_key, audience=client_url, claims={"nameid": user})
        headers = {"Authorization": f"Bearer {token}"}
        negotiate = f"{base}/client/negotiate?hub={quote(hub, safe='')}&negotiateVersion=1"
        async with session.post(negotiate, headers=headers) as response:
            if response.status != 200:
                raise HubClientError(f"negotiate answered {response.status}: {await response.text()}")
            answer = await response.json()
        socket_url = (
            f"{base.replace('http', 'ws', 1)}/client/?hub={quote(hub, safe='')}"
            f"&id={quote(answer['connectionToken'], safe='')}&access_token={quote(token, safe='')}"
        )
        socket = await session.ws_connect(socket_url, autoping=True)
        await socket.send_str(HANDSHAKE)
        reply = await socket.receive(timeout=60)
        if reply.type != aiohttp.WSMsgType.TEXT or json.loads(reply.data.split(RECORD_SEPARATOR)[0]).get("error"):
            await socket.close()
            raise HubClientError(f"handshake refused: {reply.data!r}")
        client = cls(user, str(answer["connectionId"]), socket)
        for record in reply.data.split(RECORD_SEPARATOR)[1:]:  # messages that came with the handshake's answer
            client._record(record)
        if settled:
            await connected_answered(session, base, client.connection_id)
        return client

    async def send(self, method: str, *arguments: Any) -> None:
        """Invoke a hub method without waiting for an answer (`connection.send`)."""
        record = json.dumps({"type": INVOCATION, "target": method, "arguments": list(arguments)})
        await self.socket.send_str(record + RECORD_SEPARATOR)

    async def close(self) -> None:
        """Close the connection as a client does (a close record, then the WebSocket)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.socket.send_str(json.dumps({"type": CLOSE}) + RECORD_SEPARATOR)
        await self.socket.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        buffer = ""
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            *records, buffer = (buffer + message.data).split(RECORD_SEPARATOR)
            for record in records:
                self._record(record)

    def _record(self, record: str) -> None:
        if not record:
            return
        with contextlib.suppress(ValueError):
            parsed = json.loads(record)
            if parsed.get("type") == INVOCATION:
                target = str(parsed.get("target"))
                self.received[target] += 1
                self.messages.append((target, list(parsed.get("arguments") or [])))
                self.arrived.append(time.monotonic())


async def connected_answered(
    session: aiohttp.ClientSession, emulator_url: str, connection_id: str, *, within: float = 30.0
) -> int | None:
    """Wait until the emulator has the app's answer to a connection's connected event (`/admin/connections/{id}`);
    return it (0: the app was unreachable), or None when the connection is gone."""
    url = f"{emulator_url.rstrip('/')}/admin/connections/{quote(connection_id, safe='')}"
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with session.get(url) as response:
            if response.status == 404:
                return None
            status = (await response.json())["connectedStatus"]
        if status is not None:
            return int(status)
        if asyncio.get_running_loop().time() > deadline:
            raise HubClientError(f"the app never answered connected for {connection_id} within {within:g}s")
        await asyncio.sleep(0.02)
