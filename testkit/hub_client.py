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
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, emulator_url: str, *, hub: str, user: str, access_key: str
    ) -> HubClient:
        """Negotiate with the emulator, open the WebSocket and shake hands (the app's `connected` has run then)."""
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
