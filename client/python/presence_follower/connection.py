"""The SignalR connection: PresenceFollower (negotiate, WebSocket, hub protocol, reconnects, retries) and Backoff."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from .names import _distinct, _safe_fold, check_room, fold_user_name
from .presence import ChangeHandler, MembersHandler, Occupancy, OccupancyHandler, Presence, SyncHandler, _notify

logger = logging.getLogger("follow_presence")  # one log for the whole follower

RECORD_SEPARATOR = "\x1e"
HANDSHAKE = json.dumps({"protocol": "json", "version": 1}) + RECORD_SEPARATOR
INVOCATION, COMPLETION, PING, CLOSE = 1, 3, 6, 7
PING_RECORD = json.dumps({"type": PING}) + RECORD_SEPARATOR
MAX_USERS_PER_CALL = 100
PRINCIPAL_HEADER = "x-ms-client-principal-name"  # what negotiate's binding takes the user from

Headers: TypeAlias = Mapping[str, str] | Callable[[], Mapping[str, str] | Awaitable[Mapping[str, str]]]
ErrorHandler: TypeAlias = Callable[[Mapping[str, Any]], None]


class NegotiateError(RuntimeError):
    """The app or the service refused to negotiate (`status` is the HTTP status). `not_signed_in`: 401 or 403, or
    `no_principal`: the app's negotiate answered 500 with no body to a request without the principal header, which
    is how the Functions host answers when negotiate's binding has no principal to read (locally: no
    `x-ms-client-principal-name` sent; deployed: a token App Service Authentication accepts but that names no one)."""

    def __init__(self, status: int, text: str, *, no_principal: bool = False) -> None:
        if no_principal:
            detail = (
                f"no principal: no {PRINCIPAL_HEADER} reached the app, so its binding failed before the function"
                " ran (locally send that header, e.g. --user; deployed, use a token that names a user)"
            )
        else:
            detail = text[:300]
        super().__init__(f"negotiate answered {status}: {detail}")
        self.status = status
        self.no_principal = no_principal

    @property
    def not_signed_in(self) -> bool:
        """Tell whether the credentials were refused (401, 403) or named no principal (the binding's 500)."""
        return self.status in (401, 403) or self.no_principal


def _no_principal(status: int, text: str, headers: Mapping[str, str]) -> bool:
    """Tell whether the app's negotiate answer is the binding's failure for want of a principal: a 500 with no body
    to a request that did not carry the principal header (with the header sent, a 500 is some other failure)."""
    sent = any(name.lower() == PRINCIPAL_HEADER for name in headers)
    return status == 500 and not text.strip() and not sent


class HandshakeError(RuntimeError):
    """The service refused the WebSocket or the hub protocol handshake."""


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter: attempt n waits between half and all of min(ceiling, first * 2**n)."""

    first: float = 0.25
    ceiling: float = 8.0

    def delay(self, attempt: int) -> float:
        """Return the wait before attempt `attempt` (0-based)."""
        top = min(self.ceiling, self.first * 2.0 ** min(attempt, 30))
        return top / 2 + random.random() * top / 2  # noqa: S311 - jitter, not a secret


class PresenceFollower:
    """One SignalR connection to the connection mapper following rooms, users and rooms' occupancy, reconnecting."""

    def __init__(
        self,
        api: str,
        *,
        headers: Headers | None = None,
        rooms: Iterable[str] = (),
        users: Iterable[str] = (),
        occupancy_rooms: Iterable[str] = (),
        presence: Presence | None = None,
        on_change: ChangeHandler | None = None,
        on_sync: SyncHandler | None = None,
        on_members: MembersHandler | None = None,
        on_occupancy: OccupancyHandler | None = None,
        on_error: ErrorHandler | None = None,
        on_connected: Callable[[str], None] | None = None,
        on_message: Callable[[str, list[Any]], None] | None = None,
        retries: int = 5,
        retry: Backoff | None = None,
        reconnect: Backoff | None = None,
        keepalive: float = 15.0,
        server_timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.api = api.rstrip("/")
        self.presence = presence or Presence()
        handlers = {"on_change": on_change, "on_sync": on_sync, "on_members": on_members, "on_occupancy": on_occupancy}
        for name, handler in handlers.items():
            if handler is not None:
                setattr(self.presence, name, handler)
        self.on_error, self.on_connected, self.on_message = on_error, on_connected, on_message
        self.retries = retries
        self.retry = retry or Backoff(0.25, 8.0)  # a call answered `retry: true`
        self.reconnect = reconnect or Backoff(0.5, 30.0)  # negotiating again after a drop
        self.keepalive, self.server_timeout = keepalive, server_timeout
        self._headers = headers or {}
        self._session, self._own_session = session, session is None
        self._watched: dict[str, str] = {}  # folded -> name as asked
        for room in rooms:
            self.presence.follow(room)
        for name in _distinct(users):
            self._watched[fold_user_name(name)] = name
        for room in occupancy_rooms:
            self.presence.follow_occupancy(room)
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._connection_id: str | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retries: dict[str, int] = {}  # JSON of [call, arguments] -> retries made
        self._pending: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def connection_id(self) -> str | None:
        """The SignalR connection id while connected, else None."""
        return self._connection_id

    def watched(self) -> list[str]:
        """Return the users watched, as asked."""
        return list(self._watched.values())

    async def __aenter__(self) -> PresenceFollower:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect (negotiate, WebSocket, handshake, joins, watches and occupancy watches sent); raise what kept the
        first connection from opening (NegotiateError with `not_signed_in` when the headers are not accepted or name no
        principal). Reconnects follow by themselves. Bound it with `asyncio.timeout` if the app may hang."""
        if self._task is not None:
            raise RuntimeError("already started")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(first))
        try:
            await asyncio.shield(first)
        except BaseException:
            await self.close()
            raise

    async def wait_closed(self) -> None:
        """Return when the follower was closed."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def wait_connected(self) -> str:
        """Wait for a connection (after a drop: the new one); return its id."""
        await self._connected.wait()
        assert self._connection_id is not None
        return self._connection_id

    async def close(self) -> None:
        """Close the connection, stop reconnecting and cancel pending retries."""
        self._closing = True
        for task in [*self._pending, *([self._task] if self._task else [])]:
            task.cancel()
        for task in [*self._pending, *([self._task] if self._task else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pending.clear()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def join(self, room: str) -> None:
        """Become a member of `room` and follow its members (a snapshot follows: `on_sync(room)`)."""
        self.presence.follow(room)
        await self._call("join", room)

    async def leave(self, room: str) -> None:
        """End the membership of `room`."""
        check_room(room)
        self.presence.unfollow(room)
        await self._call("leave", room)

    async def watch(self, users: Iterable[str]) -> None:
        """Follow the presence of `users` (a snapshot follows: `on_sync(None)`), 100 per call."""
        names = _distinct(users)
        self._watched.update((fold_user_name(name), name) for name in names)
        for start in range(0, len(names), MAX_USERS_PER_CALL):
            await self._call("watch", names[start : start + MAX_USERS_PER_CALL])

    async def unwatch(self, users: Iterable[str]) -> None:
        """Stop following the presence of `users`."""
        names = _distinct(users)
        for name in names:
            self._watched.pop(fold_user_name(name), None)
        for start in range(0, len(names), MAX_USERS_PER_CALL):
            await self._call("unwatch", names[start : start + MAX_USERS_PER_CALL])

    async def watch_occupancy(self, room: str) -> None:
        """Follow the occupancy of `room`, joined or not (`on_occupancy` for each newer version)."""
        self.presence.follow_occupancy(room)
        await self._call("watchOccupancy", room)

    async def unwatch_occupancy(self, room: str) -> None:
        """Stop following the occupancy of `room`, and forget it."""
        check_room(room)
        self.presence.unfollow_occupancy(room)
        await self._call("unwatchOccupancy", room)

    def occupancy(self, room: str) -> Occupancy | None:
        """Return the latest occupancy heard of a watched room, or None."""
        return self.presence.occupancy(room)

    async def sync(self, room: str) -> None:
        """Ask again for a followed room's snapshot."""
        if room not in self.presence.rooms():
            raise ValueError(f"not following room {room}: join it first")
        await self._call("sync", room)

    # -- the connection's life --

    async def _run(self, first: asyncio.Future[None]) -> None:
        attempt = 0
        while not self._closing:
            try:
                socket, connection_id, early = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not first.done():
                    first.set_exception(error)  # the caller hears why the first connection did not open
                    return
                logger.warning("reconnect failed (%s); again in a while", error)
                if isinstance(error, NegotiateError):  # e.g. an expired token: pass `headers` as a function
                    _notify(self.on_error, {"error": str(error), "call": "negotiate", "status": error.status})
                await asyncio.sleep(self.reconnect.delay(attempt))
                attempt += 1
                continue
            attempt = 0
            try:
                await self._serve(socket, connection_id, early, first)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("connection %s failed: %s", connection_id, error)
            finally:
                self._socket, self._connection_id = None, None
                self._connected.clear()
                with contextlib.suppress(Exception):
                    await socket.close()
            if not self._closing:
                logger.info("connection %s closed; reconnecting", connection_id)
                await asyncio.sleep(self.reconnect.delay(0))

    async def _open(self) -> tuple[aiohttp.ClientWebSocketResponse, str, list[str]]:
        """Negotiate with the app, then the service; open the WebSocket and shake hands."""
        assert self._session is not None
        headers = self._headers() if callable(self._headers) else self._headers
        if isinstance(headers, Awaitable):
            headers = await headers
        async with self._session.post(f"{self.api}/negotiate", headers=dict(headers)) as response:
            if response.status != 200:
                text = await response.text()
                no_principal = _no_principal(response.status, text, headers)
                raise NegotiateError(response.status, text, no_principal=no_principal)
            info = await response.json(content_type=None)
        url, token = str(info["url"]), str(info["accessToken"])
        for _redirect in range(10):  # the service may send the client on to another URL
            auth = {"Authorization": f"Bearer {token}"}
            async with self._session.post(_with(url, "negotiate", negotiateVersion="1"), headers=auth) as response:
                if response.status != 200:
                    raise NegotiateError(response.status, await response.text())
                answer = await response.json(content_type=None)
            if answer.get("error"):
                raise NegotiateError(response.status, str(answer["error"]))
            if "url" not in answer:
                break
            url, token = str(answer["url"]), str(answer.get("accessToken") or token)
        else:
            raise NegotiateError(508, "too many negotiate redirects")
        connection_id = str(answer["connectionId"])
        socket_url = _with(url, "", id=str(answer.get("connectionToken") or connection_id))
        socket_url = socket_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        socket = await self._session.ws_connect(socket_url, headers=auth, autoping=True, heartbeat=None)
        try:
            await socket.send_str(HANDSHAKE)
            reply = await socket.receive(timeout=self.server_timeout)
            if reply.type != aiohttp.WSMsgType.TEXT:
                raise HandshakeError(f"the service closed the socket during the handshake ({reply.type.name})")
            handshake, *early = str(reply.data).split(RECORD_SEPARATOR)
            if json.loads(handshake or "{}").get("error"):
                raise HandshakeError(f"handshake refused: {json.loads(handshake)['error']}")
        except BaseException:
            await socket.close()
            raise
        return socket, connection_id, early

    async def _serve(
        self, socket: aiohttp.ClientWebSocketResponse, connection_id: str, early: list[str], first: asyncio.Future[None]
    ) -> None:
        """Send the joins and every watch, then read records until the socket closes or the service falls silent."""
        self._socket, self._connection_id = socket, connection_id
        self.presence.restart()
        *records, buffer = RECORD_SEPARATOR.join(early).split(RECORD_SEPARATOR)
        for record in records:
            await self._record(record)
        for room in self.presence.rooms():
            await self._call("join", room)
        watched = self.watched()
        for start in range(0, len(watched), MAX_USERS_PER_CALL):
            await self._call("watch", watched[start : start + MAX_USERS_PER_CALL])
        for room in self.presence.occupancy_rooms():
            await self._call("watchOccupancy", room)
        self._connected.set()
        logger.info("connected as %s", connection_id)
        if not first.done():
            first.set_result(None)
        _notify(self.on_connected, connection_id)
        keepalive = asyncio.create_task(self._keep_alive(socket))
        try:
            while True:
                message = await socket.receive(timeout=self.server_timeout)  # TimeoutError: the service fell silent
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return
                if message.type == aiohttp.WSMsgType.ERROR:
                    raise ConnectionError(f"socket error: {socket.exception()}")
                data = message.data if message.type == aiohttp.WSMsgType.TEXT else bytes(message.data).decode()
                *records, buffer = (buffer + data).split(RECORD_SEPARATOR)
                for record in records:
                    if await self._record(record) == CLOSE:
                        return
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _keep_alive(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        while not socket.closed:
            await asyncio.sleep(self.keepalive)
            with contextlib.suppress(ConnectionError, RuntimeError):
                async with self._send_lock:
                    await socket.send_str(PING_RECORD)

    async def _record(self, record: str) -> int | None:
        """Handle one hub protocol record; return its type."""
        if not record:
            return None
        try:
            message = json.loads(record)
        except ValueError:
            logger.warning("not JSON, ignored: %.200s", record)
            return None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == PING:
            await self._send_record(PING_RECORD)  # answer the service's keep-alive
        elif kind == CLOSE:
            logger.info("the service closed the connection: %s", message.get("error"))
        elif kind == INVOCATION:
            target, arguments = message.get("target"), message.get("arguments") or []
            argument = arguments[0] if arguments else None
            if target == "presence":
                self.presence.merge(argument)
            elif target == "presenceSync":
                self.presence.merge_sync(argument)
            elif target == "presenceBatch":
                self.presence.merge_batch(argument)
            elif target == "occupancy":
                self.presence.merge_occupancy(argument)
            elif target == "room":
                self.presence.merge_room(argument)
            elif target == "error":
                self._failed(argument)
            elif isinstance(target, str):
                _notify(self.on_message, target, list(arguments))
        return kind if isinstance(kind, int) else None

    async def _send_record(self, record: str) -> bool:
        socket = self._socket
        if socket is None or socket.closed:
            return False
        try:
            async with self._send_lock:
                await socket.send_str(record)
        except (ConnectionError, RuntimeError) as error:
            logger.info("not sent (%s); the reconnect sends the joins and watches again", error)
            return False
        return True

    async def _call(self, method: str, *arguments: Any) -> None:
        """Invoke a hub method fire-and-forget (no invocationId: the service answers nothing, like connection.send).
        Not connected: nothing is sent now; the next connection sends every join, watch and occupancy watch."""
        self._retries.pop(json.dumps([method, list(arguments)]), None)  # a fresh call starts its retries afresh
        record = json.dumps({"type": INVOCATION, "target": method, "arguments": list(arguments)})
        await self._send_record(record + RECORD_SEPARATOR)

    # -- errors and retries --

    def _failed(self, error: object) -> None:
        if not isinstance(error, Mapping):
            return
        call, arguments = error.get("call"), error.get("arguments")
        retryable = error.get("retry") is True and isinstance(call, str) and isinstance(arguments, list)
        if retryable and self._still_wanted(str(call), list(arguments or [])):
            key = json.dumps([call, arguments])
            made = self._retries.get(key, 0)
            if made < self.retries:
                delay = self.retry.delay(made)
                logger.info(
                    "%s: storage failed, sent again in %.2f s (retry %d of %d)", call, delay, made + 1, self.retries
                )
                task = asyncio.create_task(self._resend(str(call), list(arguments or []), made + 1, delay))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
                return
            self._retries.pop(key, None)
        if self.on_error is not None:
            _notify(self.on_error, error)
        else:
            logger.warning("the server answered %s: %s", call, error.get("error"))

    def _still_wanted(self, call: str, arguments: list[Any]) -> bool:
        """Whether a failed call still says what the follower wants (a later call may have undone it)."""
        argument = arguments[0] if arguments else None
        users = argument if isinstance(argument, list) else []
        if call in ("join", "sync"):
            return argument in self.presence.rooms()
        if call == "leave":
            return argument not in self.presence.rooms()
        if call == "watch":
            return any(_safe_fold(user) in self._watched for user in users)
        if call == "unwatch":
            return any(_safe_fold(user) not in self._watched for user in users)
        if call == "watchOccupancy":
            return argument in self.presence.occupancy_rooms()
        if call == "unwatchOccupancy":
            return argument not in self.presence.occupancy_rooms()
        return False  # not one of ours

    async def _resend(self, call: str, arguments: list[Any], made: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._closing or not self._still_wanted(call, arguments):
            return
        if call in ("watch", "unwatch"):  # only the users still (or no longer) wanted
            wanted = call == "watch"
            arguments = [[user for user in arguments[0] if (_safe_fold(user) in self._watched) == wanted]]
        self._retries[json.dumps([call, arguments])] = made  # its own error then counts on from here
        record = json.dumps({"type": INVOCATION, "target": call, "arguments": arguments}) + RECORD_SEPARATOR
        await self._send_record(record)


def _with(url: str, segment: str, **query: str) -> str:
    """Return `url` with `/segment` appended to its path and `query` added to its query string."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/" + segment if segment else parts.path
    pairs = [*parse_qsl(parts.query, keep_blank_values=True), *query.items()]
    return urlunsplit(parts._replace(path=path, query=urlencode(pairs)))
