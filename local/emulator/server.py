"""The emulator's HTTP surface: client negotiate and WebSocket, the data-plane REST API, and a loopback admin API.

REST (JWT, `aud` = the request URL without its query): the 2022-06-01 routes, also under `api-version=2024-12-01`,
and 2024-12-01's `GET /api/hubs/{hub}/groups/{group}/connections` (`maxpagesize` 1-200, default 200; `top`;
`continuationToken`) answering `{"value": [{"connectionId", "userId"?}], "nextLink"?}`. A 404 that says what does not
exist carries the service's `x-ms-error-code` (`local.emulator.errors`): HEAD and DELETE of a connection
`Warning.Connection.NotExisted`, PUT of a connection into a group `Error.Connection.NotExisted`, HEAD of a user, a group
or a user in a group `Warning.User.NotExisted`, `Warning.Group.NotExisted`, `Info.User.NotInGroup`; removing a
connection from a group (or all groups) answers 200 whether or not the service has it.

Admin (loopback callers only, no token):
- `POST /admin/drop-next-disconnect[?count=n]`, `GET` the same: skip the next disconnected upstream calls.
- `POST /admin/drop-next-connected[?count=n]`: skip the next connected upstream calls (the clients stay, unmapped).
- `POST /admin/delay-connected?seconds=s`: every connected upstream call waits `s` seconds first (0 ends it).
- `GET /admin/connections`: the live connections; `GET /admin/connections/{id}` one, with `connectedStatus`, the
  app's answer to its connected event (null until it came, 0 when the app could not be reached).
- `POST /admin/connections/{id}/drop`: cut a client's WebSocket without a close record, as a network failure would
  (a client with automatic reconnect reconnects).
- `GET /admin/rest-calls`: `{"total": n, "byRoute": {"<METHOD> <route template>": n}}`, every REST call answered
  (errors included) since the start or the last reset; `DELETE /admin/rest-calls` answers the same and resets it.
- `GET /admin/messages`: outbound messages as Azure bills them, since the start or the last reset: `{"total": n,
  "byKind": {"connection": n, "user": n, "group": n, "broadcast": n}, "byTarget": {"<target>": n},
  "byTargetAndKind": {"<target>": {"<kind>": n}}, "byGroup": {"<group>": n}}`; each REST send counts, per
  connection it reached, one message per started 2 KB of the framed record (pings, handshakes, close records,
  completions and group calls count nothing); `upstream` counts each client message passed to the app, one per
  started 2 KB, and `billed` is `total` + `upstream`; `?connection=<id>` answers, in the same shape, what was billed to
  that one connection; `DELETE /admin/messages` answers the totals and resets every count.
- `PUT /admin/hubs/{hub}/groups/{group}/simulated?count=n`: the group holds `n` simulated connections besides its
  real ones (0: none), each billed for every send to the group as a real recipient and sent nothing (`byGroup` and
  the totals count them; `?connection=` does not): a room of 10,000 without 10,000 sockets, for benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSCloseCode, WSMsgType, web

from local.emulator import errors, paging, protocol, tokens
from local.emulator.billing import BilledMessages
from local.emulator.registry import ClientConnection, PendingConnection, Registry, hub_key, send_to
from local.emulator.upstream import CONNECTIONS, MESSAGES, Caller, Upstream, UpstreamResult

logger = logging.getLogger(__name__)

API_VERSIONS = frozenset({"2022-06-01", "2024-12-01"})
LISTING_API_VERSIONS = frozenset({"2024-12-01"})
REST_PREFIX = "/api/hubs/"
MAX_BODY_BYTES = 1024 * 1024
HUB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_`,.\[\]]{0,127}$")
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
PENDING_SECONDS = 60.0
# A REST send's pick of recipients, as the billed-message counts name it.
SEND_KINDS = {"connection": "connection", "user": "user", "group": "group", "all": "broadcast"}
HANDSHAKE_TIMEOUT = 15.0


@dataclass
class EmulatorConfig:
    """How the emulator behaves."""

    public_url: str
    keys: list[str]
    upstream_url: str
    client_timeout: float = 30.0
    keepalive_interval: float = 15.0
    upstream_timeout: float = 20.0
    # False (Microsoft's emulator): the handshake is answered first, `connected` called after and its failure only
    # logged. True: `connected` is called before the handshake's answer and a failure refuses the client.
    refuse_failed_connected: bool = False


@dataclass
class Faults:
    """Faults injected through the admin API."""

    drop_disconnected: int = 0
    dropped: list[str] = field(default_factory=list)
    drop_connected: int = 0
    dropped_connected: list[str] = field(default_factory=list)
    connected_delay: float = 0.0


@dataclass
class RestCalls:
    """How many REST calls the emulator answered, per method and route template."""

    by_route: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        """Return the counts as the admin API shows them."""
        return {"total": sum(self.by_route.values()), "byRoute": dict(sorted(self.by_route.items()))}


REGISTRY = web.AppKey("registry", Registry)
CONFIG = web.AppKey("config", EmulatorConfig)
UPSTREAM = web.AppKey("upstream", Upstream)
FAULTS = web.AppKey("faults", Faults)
TASKS = web.AppKey("tasks", set[asyncio.Task[None]])
REST_CALLS = web.AppKey("rest_calls", RestCalls)
BILLED = web.AppKey("billed", BilledMessages)
PAGING_SECRET = web.AppKey("paging_secret", bytes)


def create_app(config: EmulatorConfig) -> web.Application:
    """Build the emulator's aiohttp application."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_cors, _loopback_admin, _count_rest_calls])
    app[CONFIG] = config
    app[REGISTRY] = Registry()
    app[UPSTREAM] = Upstream(config.upstream_url, config.keys, timeout=config.upstream_timeout)
    app[FAULTS] = Faults()
    app[TASKS] = set()
    app[REST_CALLS] = RestCalls()
    app[BILLED] = BilledMessages()
    app[PAGING_SECRET] = secrets.token_bytes(32)
    app.router.add_post("/client/negotiate", negotiate)
    app.router.add_get("/client/", client_socket)
    app.router.add_get("/client", client_socket)
    _add_rest_routes(app)
    app.router.add_post("/admin/drop-next-disconnect", drop_next_disconnect)
    app.router.add_get("/admin/drop-next-disconnect", drop_status)
    app.router.add_post("/admin/drop-next-connected", drop_next_connected)
    app.router.add_post("/admin/delay-connected", delay_connected)
    app.router.add_get("/admin/connections", list_connections)
    app.router.add_get("/admin/connections/{connection}", show_connection)
    app.router.add_post("/admin/connections/{connection}/drop", drop_connection)
    app.router.add_get("/admin/rest-calls", rest_calls)
    app.router.add_delete("/admin/rest-calls", reset_rest_calls)
    app.router.add_put("/admin/hubs/{hub}/groups/{group}/simulated", simulate_group_members)
    app.router.add_get("/admin/messages", billed_messages)
    app.router.add_delete("/admin/messages", reset_billed_messages)
    app.router.add_get("/health", health)
    app.on_shutdown.append(_close_connections)
    app.on_cleanup.append(_close_upstream)
    return app


# ---- client side --------------------------------------------------------------------------------


async def negotiate(request: web.Request) -> web.Response:
    """Answer a client's negotiate (negotiateVersion 1) after checking its access token."""
    hub = request.query.get("hub", "")
    if not HUB_NAME.match(hub):
        return _error(400, "a valid 'hub' query parameter is required")
    try:
        claims = _client_claims(request, hub)
    except tokens.TokenError as error:
        return _error(401, str(error))
    connection_id = _new_id()
    token = _new_id()
    request.app[REGISTRY].add_pending(
        token,
        PendingConnection(
            connection_id=connection_id,
            hub=hub,
            user_id=tokens.user_id(claims),
            claims=tuple(tokens.user_claims(claims)),
            expires=time.monotonic() + PENDING_SECONDS,
        ),
    )
    body = {
        "negotiateVersion": 1,
        "connectionId": connection_id,
        "connectionToken": token,
        "availableTransports": [{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}],
    }
    return web.json_response(body)


async def client_socket(request: web.Request) -> web.StreamResponse:
    """Run one client's WebSocket: handshake, connected upstream, then records until it closes."""
    hub = request.query.get("hub", "")
    if not HUB_NAME.match(hub):
        return _error(400, "a valid 'hub' query parameter is required")
    try:
        _client_claims(request, hub)
    except tokens.TokenError as error:
        return _error(401, str(error))
    registry = request.app[REGISTRY]
    pending = registry.take_pending(request.query.get("id", ""))
    if pending is None or pending.hub.casefold() != hub.casefold():
        return _error(404, "No Connection with that ID")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return _error(400, "only the WebSockets transport is supported")
    socket = web.WebSocketResponse(max_msg_size=MAX_BODY_BYTES)
    await socket.prepare(request)
    caller = Caller(
        hub=pending.hub,
        connection_id=pending.connection_id,
        user_id=pending.user_id,
        claims=pending.claims,
        query=_client_query(request),
    )
    connection = ClientConnection(caller, socket)
    # Registered before the connected event, so the app can already send to it (delivered after the handshake).
    registry.add(connection)
    try:
        if await _handshake(request.app, connection):
            try:
                await _serve(request.app, connection)
            finally:
                registry.remove(connection)
                await _disconnected(request.app, connection)
    finally:
        registry.remove(connection)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await socket.close()
    return socket


async def _handshake(app: web.Application, connection: ClientConnection) -> bool:
    """Read the handshake, answer it and call connected upstream (in the configured order); False when the
    connection ends here."""
    try:
        message = await connection.socket.receive(timeout=HANDSHAKE_TIMEOUT)
    except TimeoutError:
        return False
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return False
    text = message.data if message.type == WSMsgType.TEXT else message.data.decode("utf-8", "replace")
    records, _rest = protocol.split_records(text)
    if not records:
        connection.backlog = None
        await connection.send(protocol.encode({"error": "Handshake request is incomplete."}))
        return False
    if problem := protocol.parse_handshake(records[0]):
        connection.backlog = None
        await connection.send(protocol.encode({"error": problem}))
        return False
    if app[CONFIG].refuse_failed_connected:
        if not await _refusing_connected(app, connection):
            return False
    elif not await _connected_after_handshake(app, connection):
        return False
    if not connection.closed_by_service:  # closed during connected (the app's REST close): its calls go nowhere
        for extra in records[1:]:
            await _on_record(app, connection, extra)
    return True


async def _refusing_connected(app: web.Application, connection: ClientConnection) -> bool:
    """The option: `connected` before the handshake's answer; a failure refuses the client with a handshake error."""
    result = await _call_connected(app, connection)
    if not result.ok:
        logger.info("connection %s refused: connected upstream answered %d", connection.id, result.status)
        connection.backlog = None
        await connection.send(
            protocol.encode({"error": f"The connection was refused by the upstream ({result.status})."})
        )
        return False
    await connection.open(protocol.HANDSHAKE_OK)
    _log_connected(connection)
    return True


async def _connected_after_handshake(app: web.Application, connection: ClientConnection) -> bool:
    """The default, as Microsoft's emulator (`HubProxyHandler.RunHubAsync`): answer the handshake, then call
    `connected`; an answer other than 2xx is logged and the client stays, an unreachable app closes it without
    reconnecting (and hears no disconnected). The client's messages wait until `connected` returns."""
    await connection.open(protocol.HANDSHAKE_OK)
    _log_connected(connection)
    keepalive = asyncio.create_task(_keep_alive(connection, app[CONFIG]))  # pinged while connected runs, as ASP.NET
    try:
        result = await _call_connected(app, connection)
    finally:
        keepalive.cancel()
    if result.status == 0:  # as Microsoft's emulator: closed, no disconnected event follows
        await connection.close("An error occurred on the server while the connection was opening.")
        return False
    if not result.ok:
        logger.warning("connected upstream for %s answered %d: the connection stays", connection.id, result.status)
    return True


async def _call_connected(app: web.Application, connection: ClientConnection) -> UpstreamResult:
    """Call `connected` upstream, unless a fault drops or delays it (a dropped call counts as answered 200)."""
    faults = app[FAULTS]
    if faults.connected_delay > 0:
        await asyncio.sleep(faults.connected_delay)
    if faults.drop_connected > 0:
        faults.drop_connected -= 1
        faults.dropped_connected.append(connection.id)
        logger.warning("dropped the connected upstream call for %s (fault injection)", connection.id)
        connection.connected_status = 200
        return UpstreamResult(200)
    result = await app[UPSTREAM].call(connection.caller, category=CONNECTIONS, event="connected", body={"type": 10})
    connection.connected_status = result.status
    return result


def _log_connected(connection: ClientConnection) -> None:
    logger.info("connected %s (user %s) to hub %s", connection.id, connection.caller.user_id, connection.caller.hub)


async def _serve(app: web.Application, connection: ClientConnection) -> None:
    """Pump records until the client or the service closes; keep alive and time out silent clients."""
    config = app[CONFIG]
    connection.last_received = time.monotonic()  # the client timeout starts here, as Microsoft's emulator's
    invocations: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    worker = asyncio.create_task(_forward_invocations(app, connection, invocations))
    keepalive = asyncio.create_task(_keep_alive(connection, config))
    buffer = ""
    try:
        while not connection.socket.closed:
            remaining = config.client_timeout - (time.monotonic() - connection.last_received)
            if remaining <= 0:
                connection.close_error = (
                    f"Connection timed out: no message from the client within {config.client_timeout:g} seconds."
                )
                await connection.close(connection.close_error)
                break
            try:
                message = await connection.socket.receive(timeout=remaining)
            except TimeoutError:
                continue
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if message.type == WSMsgType.ERROR:
                connection.close_error = f"WebSocket error: {connection.socket.exception()}"
                break
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            connection.last_received = time.monotonic()
            text = message.data if message.type == WSMsgType.TEXT else message.data.decode("utf-8", "replace")
            records, buffer = protocol.split_records(buffer + text)
            for record in records:
                try:
                    parsed = protocol.parse_record(record)
                except protocol.ProtocolError as error:
                    await connection.close(f"Connection closed with an error: {error}")
                    return
                if parsed.get("type") == protocol.CLOSE:
                    return
                if parsed.get("type") == protocol.INVOCATION:
                    invocations.put_nowait(parsed)
    finally:
        keepalive.cancel()
        # Invocations the client sent before it left reach the app before its disconnected event.
        await invocations.join()
        worker.cancel()
        await asyncio.gather(keepalive, worker, return_exceptions=True)


async def _on_record(app: web.Application, connection: ClientConnection, record: str) -> None:
    with contextlib.suppress(protocol.ProtocolError):
        parsed = protocol.parse_record(record)
        if parsed.get("type") == protocol.INVOCATION:
            await _invoke_upstream(app, connection, parsed)


async def _forward_invocations(
    app: web.Application, connection: ClientConnection, queue: asyncio.Queue[dict[str, Any]]
) -> None:
    """Forward the client's invocations upstream one at a time, in order."""
    while True:
        message = await queue.get()
        try:
            await _invoke_upstream(app, connection, message)
        except Exception:
            logger.exception("forwarding an invocation of %s failed", connection.id)
        finally:
            queue.task_done()


async def _invoke_upstream(app: web.Application, connection: ClientConnection, message: dict[str, Any]) -> None:
    target = message.get("target")
    if not isinstance(target, str) or not target:
        return
    body: dict[str, Any] = {"type": protocol.INVOCATION, "target": target, "arguments": message.get("arguments") or []}
    invocation_id = message.get("invocationId")
    if isinstance(invocation_id, str):
        body["invocationId"] = invocation_id
    # A client message the service passes to the app is billed as a message from the service; connection events are
    # not counted (no source says they are billed).
    app[BILLED].count_upstream(json.dumps(body, ensure_ascii=False))
    result = await app[UPSTREAM].call(connection.caller, category=MESSAGES, event=target, body=body)
    if not isinstance(invocation_id, str):
        return
    if not result.ok:
        await connection.send(protocol.completion_error(invocation_id, f"Upstream failed ({result.status})."))
    elif result.body:
        # The app answers an invocation with hub-protocol records (a completion): pass them on as they are.
        text = result.body.decode("utf-8", "replace")
        await connection.send(text if text.endswith(protocol.RECORD_SEPARATOR) else text + protocol.RECORD_SEPARATOR)


async def _keep_alive(connection: ClientConnection, config: EmulatorConfig) -> None:
    while not connection.socket.closed:
        await asyncio.sleep(config.keepalive_interval)
        await connection.send(protocol.PING_FRAME)


async def _disconnected(app: web.Application, connection: ClientConnection) -> None:
    faults = app[FAULTS]
    logger.info("disconnected %s (%s)", connection.id, connection.close_error or "closed")
    if faults.drop_disconnected > 0:
        faults.drop_disconnected -= 1
        faults.dropped.append(connection.id)
        logger.warning("dropped the disconnected upstream call for %s (fault injection)", connection.id)
        return
    body: dict[str, Any] = {"type": protocol.DISCONNECTED}
    if connection.close_error:
        body["error"] = connection.close_error
    await app[UPSTREAM].call(connection.caller, category=CONNECTIONS, event="disconnected", body=body)


def _client_claims(request: web.Request, hub: str) -> dict[str, Any]:
    config = request.app[CONFIG]
    token = request.query.get("access_token") or _bearer(request)
    audiences = [f"{base}/client/?hub={hub}" for base in _bases(request, config)]
    return tokens.verify(token, config.keys, audiences=audiences)


def _client_query(request: web.Request) -> str:
    hidden = {"id", "access_token", "hub", "negotiateVersion"}
    kept = [(k, v) for k, v in request.query.items() if k not in hidden]
    return "?" + urlencode(kept) if kept else ""


# ---- data-plane REST API ------------------------------------------------------------------------


def _add_rest_routes(app: web.Application) -> None:
    """Route the data-plane REST API: each route is one of a few handlers, told what it acts on."""
    base = "/api/hubs/{hub}"
    routes: list[tuple[str, str, Callable[..., Awaitable[web.StreamResponse]], dict[str, Any]]] = [
        ("POST", "/:send", _send, {"pick": "all"}),
        ("POST", "/connections/{connection}/:send", _send, {"pick": "connection"}),
        ("HEAD", "/connections/{connection}", _exists, {"check": "connection"}),
        ("DELETE", "/connections/{connection}", _close_client, {}),
        ("POST", "/:closeConnections", _close_by_rest, {"pick": "all"}),
        ("POST", "/users/{user}/:closeConnections", _close_by_rest, {"pick": "user"}),
        ("POST", "/groups/{group}/:closeConnections", _close_by_rest, {"pick": "group"}),
        ("DELETE", "/connections/{connection}/groups", _membership, {"add": False, "every_group": True}),
        ("POST", "/users/{user}/:send", _send, {"pick": "user"}),
        ("HEAD", "/users/{user}", _exists, {"check": "user"}),
        ("HEAD", "/users/{user}/groups/{group}", _exists, {"check": "user-group"}),
        ("PUT", "/users/{user}/groups/{group}", _membership, {"add": True}),
        ("DELETE", "/users/{user}/groups/{group}", _membership, {"add": False}),
        ("DELETE", "/users/{user}/groups", _membership, {"add": False, "every_group": True}),
        ("POST", "/groups/{group}/:send", _send, {"pick": "group"}),
        ("HEAD", "/groups/{group}", _exists, {"check": "group"}),
        ("GET", "/groups/{group}/connections", _list_group, {}),
        ("PUT", "/groups/{group}/connections/{connection}", _membership, {"add": True}),
        ("DELETE", "/groups/{group}/connections/{connection}", _membership, {"add": False}),
    ]
    for method, path, handler, options in routes:
        app.router.add_route(method, base + path, functools.partial(handler, **options) if options else handler)


async def _authorised(request: web.Request, *, versions: frozenset[str] = API_VERSIONS) -> str | web.Response:
    """Check api-version, hub name and the bearer token; return the hub, or the error response."""
    if request.query.get("api-version") not in versions:
        return _error(400, f"api-version must be one of {sorted(versions)}")
    hub = request.match_info["hub"]
    if not HUB_NAME.match(hub):
        return _error(400, f"invalid hub name {hub!r}")
    config = request.app[CONFIG]
    audiences = [base + request.rel_url.raw_path for base in _bases(request, config)]
    try:
        tokens.verify(_bearer(request), config.keys, audiences=audiences)
    except tokens.TokenError as error:
        return _error(401, str(error))
    return hub


async def _payload(request: web.Request) -> tuple[str, str] | web.Response:
    """Read a `{"target", "arguments"}` body into the target and the invocation record to send."""
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict) or not isinstance(body.get("target"), str) or not body["target"]:
        return _error(400, "the body must be an object with a non-empty string 'target'")
    arguments = body.get("arguments")
    if arguments is None:
        arguments = []
    if not isinstance(arguments, list):
        return _error(400, "'arguments' must be an array")
    return body["target"], protocol.invocation(body["target"], arguments)


async def _send(request: web.Request, *, pick: str) -> web.Response:
    """POST .../:send to the hub, a connection, a user or a group (`pick`), less any `excluded` connections."""
    hub = await _authorised(request)
    if isinstance(hub, web.Response):
        return hub
    payload = await _payload(request)
    if isinstance(payload, web.Response):
        return payload
    target, record = payload
    registry = request.app[REGISTRY]
    excluded = set(request.query.getall("excluded", []))
    if pick == "all":
        targets = registry.of_hub(hub)
    elif pick == "connection":
        found = registry.connection(hub, request.match_info["connection"])
        targets = [found] if found else []
    elif pick == "user":
        targets = registry.of_user(hub, request.match_info["user"])
    else:
        targets = registry.of_group(hub, request.match_info["group"])
    reached = await send_to([t for t in targets if t.id not in excluded], record)
    group = request.match_info["group"] if pick == "group" else None
    simulated = registry.simulated_in(hub, group) if group is not None else 0
    billed = request.app[BILLED].count(
        record, kind=SEND_KINDS[pick], target=target, recipients=reached, group=group, simulated=simulated
    )
    logger.info("REST send to %s in %s: %d connection(s), %d billed message(s)", pick, hub, len(reached), billed)
    return web.Response(status=202)


async def _exists(request: web.Request, *, check: str) -> web.Response:
    """HEAD a connection, a user, a group or a user in a group (`check`): 200 when alive, 404 when not, with the
    service's `x-ms-error-code` naming what does not exist (`local.emulator.errors`)."""
    hub = await _authorised(request)
    if isinstance(hub, web.Response):
        return hub
    registry = request.app[REGISTRY]
    info = request.match_info
    if check == "connection":
        found, code = registry.connection(hub, info["connection"]) is not None, errors.CONNECTION_NOT_EXISTED
    elif check == "user":
        found, code = bool(registry.of_user(hub, info["user"])), errors.USER_NOT_EXISTED
    elif check == "group":
        found, code = bool(registry.of_group(hub, info["group"])), errors.GROUP_NOT_EXISTED
    else:
        found, code = registry.user_in_group(hub, info["group"], info["user"]), errors.USER_NOT_IN_GROUP
    return web.Response(status=200) if found else web.Response(status=404, headers={errors.HEADER: code})


async def _close_client(request: web.Request) -> web.Response:
    """DELETE /api/hubs/{hub}/connections/{id}[?reason=]: close a client connection (200); one the service does not
    have is a 404 with `Warning.Connection.NotExisted`, as the service answers (`local.emulator.errors`)."""
    hub = await _authorised(request)
    if isinstance(hub, web.Response):
        return hub
    found = request.app[REGISTRY].connection(hub, request.match_info["connection"])
    if found is None:
        return _not_existed(errors.CONNECTION_NOT_EXISTED, "the connection does not exist")
    await found.close(request.query.get("reason") or None)
    return web.Response(status=200)


async def _close_by_rest(request: web.Request, *, pick: str) -> web.Response:
    """POST .../:closeConnections (2024-12-01) of the hub, a user or a group (`pick`), less any `excluded`
    connections, with an optional `reason`: 204, as Microsoft's emulator answers (Azure/azure-signalr,
    `SignalRServiceWebApiDefinition.CloseUserConnections`). User ids match case-sensitively, as the service's."""
    hub = await _authorised(request)
    if isinstance(hub, web.Response):
        return hub
    registry = request.app[REGISTRY]
    if pick == "all":
        targets = registry.of_hub(hub)
    elif pick == "user":
        targets = registry.of_user(hub, request.match_info["user"])
    else:
        targets = registry.of_group(hub, request.match_info["group"])
    excluded = set(request.query.getall("excluded", []))
    closing = [target for target in targets if target.id not in excluded]
    for target in closing:
        await target.close(request.query.get("reason") or None)
    logger.info("REST close of %s in %s: %d connection(s)", pick, hub, len(closing))
    return web.Response(status=204)


async def _membership(request: web.Request, *, add: bool, every_group: bool = False) -> web.Response:
    """PUT or DELETE a connection's or a user's group membership, or (`every_group`) all of them: 200. Adding a
    connection the service does not have is a 404 with `Error.Connection.NotExisted`; removing one, from a group or
    from all, is a 200, as the service answers (`local.emulator.errors`)."""
    hub = await _authorised(request)
    if isinstance(hub, web.Response):
        return hub
    registry = request.app[REGISTRY]
    info = request.match_info
    connection_id, user = info.get("connection"), info.get("user")
    if every_group:
        registry.remove_from_all_groups(hub, connection_id=connection_id, user=user)
    elif add:
        if connection_id is not None and registry.connection(hub, connection_id) is None:
            return _not_existed(errors.ADD_CONNECTION_NOT_EXISTED, "the connection does not exist")
        registry.add_to_group(hub, info["group"], connection_id=connection_id, user=user)
    else:
        registry.remove_from_group(hub, info["group"], connection_id=connection_id, user=user)
    return web.Response(status=200)


async def _list_group(request: web.Request) -> web.Response:
    """GET /api/hubs/{hub}/groups/{group}/connections (2024-12-01): one page of the group's live connections."""
    hub = await _authorised(request, versions=LISTING_API_VERSIONS)
    if isinstance(hub, web.Response):
        return hub
    group = request.match_info["group"]
    secret = request.app[PAGING_SECRET]
    try:
        after, limit, page_size = _paging_query(request, hub_key(hub), group, secret)
    except paging.PagingError as error:
        return _error(400, str(error))
    members = {c.id: c for c in request.app[REGISTRY].of_group(hub, group)}
    page = paging.page_of(members, hub=hub_key(hub), group=group, after=after, limit=limit, page_size=page_size)
    body: dict[str, Any] = {"value": [_member(members[i]) for i in page.ids]}
    if page.next is not None:
        body["nextLink"] = _next_link(request, paging.encode(page.next, secret))
    return web.json_response(body)


def _paging_query(request: web.Request, hub: str, group: str, secret: bytes) -> tuple[str | None, int | None, int]:
    """Read `maxpagesize`, `top` and `continuationToken` (names case-insensitive): (after, limit, page size)."""
    query = {name.lower(): value for name, value in request.query.items()}
    page_size = paging.parse_count(query.get("maxpagesize"), "maxpagesize", maximum=paging.MAX_PAGE_SIZE)
    limit = paging.parse_count(query.get("top"), "top")
    token = query.get("continuationtoken")
    if not token:
        return None, limit, page_size or paging.DEFAULT_PAGE_SIZE
    # The token carries the first request's page size and what is left of its `top`; explicit parameters win.
    cursor = paging.decode(token, secret, hub=hub, group=group)
    return cursor.after, cursor.remaining if limit is None else limit, page_size or cursor.page_size


def _member(connection: ClientConnection) -> dict[str, str]:
    member = {"connectionId": connection.id}
    if connection.caller.user_id is not None:
        member["userId"] = connection.caller.user_id
    return member


def _next_link(request: web.Request, token: str) -> str:
    """Return the absolute URL of the next page: the URL the caller used, with the token and its api-version."""
    query = urlencode({"continuationToken": token, "api-version": request.query["api-version"]})
    return f"{request.scheme}://{request.host}{request.rel_url.raw_path}?{query}"


# ---- admin (loopback only) and health -----------------------------------------------------------


async def drop_next_disconnect(request: web.Request) -> web.Response:
    """Make the emulator skip the next `count` (default 1) disconnected upstream calls, as a crashed app would."""
    count = _drop_count(request)
    if isinstance(count, web.Response):
        return count
    faults = request.app[FAULTS]
    faults.drop_disconnected = count
    return web.json_response({"dropNextDisconnected": count, "droppedSoFar": list(faults.dropped)})


async def drop_next_connected(request: web.Request) -> web.Response:
    """Make the emulator skip the next `count` (default 1) connected upstream calls, as an app that never ran its
    connected function (the client stays connected, unmapped)."""
    count = _drop_count(request)
    if isinstance(count, web.Response):
        return count
    faults = request.app[FAULTS]
    faults.drop_connected = count
    return web.json_response({"dropNextConnected": count, "droppedSoFar": list(faults.dropped_connected)})


def _drop_count(request: web.Request) -> int | web.Response:
    """The `count` of a drop fault (default 1, 0 to 1000), or the 400 that refuses it."""
    try:
        count = int(request.query.get("count", "1"))
    except ValueError:
        return _error(400, "count must be a whole number")
    if not 0 <= count <= 1000:
        return _error(400, "count must be between 0 and 1000")
    return count


async def delay_connected(request: web.Request) -> web.Response:
    """Make every connected upstream call wait `seconds` (0 to 60; 0 ends the delay) before it is made."""
    try:
        seconds = float(request.query.get("seconds", ""))
    except ValueError:
        return _error(400, "seconds must be a number")
    if not 0 <= seconds <= 60:
        return _error(400, "seconds must be between 0 and 60")
    request.app[FAULTS].connected_delay = seconds
    return web.json_response({"connectedDelaySeconds": seconds})


async def drop_status(request: web.Request) -> web.Response:
    """Tell how many disconnected calls will still be dropped, and which connections' calls were (loopback only)."""
    faults = request.app[FAULTS]
    return web.json_response({"dropNextDisconnected": faults.drop_disconnected, "droppedSoFar": list(faults.dropped)})


async def list_connections(request: web.Request) -> web.Response:
    """List live connections (loopback only): id, hub, user."""
    connections = [_admin_view(c) for c in request.app[REGISTRY].connections.values()]
    return web.json_response({"connections": connections})


async def show_connection(request: web.Request) -> web.Response:
    """Show one live connection (loopback only), with the app's answer to its connected event once it came."""
    connection = request.app[REGISTRY].connections.get(request.match_info["connection"])
    if connection is None:
        return _error(404, "no such connection")
    return web.json_response(_admin_view(connection))


def _admin_view(connection: ClientConnection) -> dict[str, Any]:
    caller = connection.caller
    return {
        "connectionId": connection.id,
        "hub": caller.hub,
        "userId": caller.user_id,
        "connectedStatus": connection.connected_status,
    }


async def drop_connection(request: web.Request) -> web.Response:
    """Cut one client's WebSocket with no close record, as a network failure would (loopback only)."""
    connection_id = request.match_info["connection"]
    found = next((c for c in request.app[REGISTRY].connections.values() if c.id == connection_id), None)
    if found is None:
        return _error(404, "no such connection")
    await found.socket.close(code=WSCloseCode.INTERNAL_ERROR, message=b"dropped by the admin API")
    return web.json_response({"dropped": connection_id})


async def rest_calls(request: web.Request) -> web.Response:
    """Count the REST calls answered so far, in all and per route (loopback only)."""
    return web.json_response(request.app[REST_CALLS].snapshot())


async def reset_rest_calls(request: web.Request) -> web.Response:
    """Answer the REST call counts and start counting again from zero (loopback only)."""
    calls = request.app[REST_CALLS]
    snapshot = calls.snapshot()
    calls.by_route.clear()
    return web.json_response(snapshot)


async def simulate_group_members(request: web.Request) -> web.Response:
    """Give a group `?count=n` simulated connections (0 removes them): billed for every send to the group, delivered
    to nobody; for benchmarks of big rooms (loopback only)."""
    try:
        count = int(request.query.get("count", ""))
    except ValueError:
        return _error(400, "count must be a whole number")
    if not 0 <= count <= 1_000_000:
        return _error(400, "count must be 0 to 1000000")
    hub, group = request.match_info["hub"], request.match_info["group"]
    request.app[REGISTRY].simulate(hub, group, count)
    return web.json_response({"hub": hub, "group": group, "simulated": count})


async def billed_messages(request: web.Request) -> web.Response:
    """Count the outbound messages billed so far, in all and per kind, target and group, or (`?connection=<id>`)
    those billed to one connection (loopback only)."""
    return web.json_response(request.app[BILLED].snapshot(request.query.get("connection") or None))


async def reset_billed_messages(request: web.Request) -> web.Response:
    """Answer the billed-message counts and start counting again from zero (loopback only)."""
    billed = request.app[BILLED]
    snapshot = billed.snapshot()
    billed.reset()
    return web.json_response(snapshot)


async def health(_request: web.Request) -> web.Response:
    """Answer 200 while the emulator runs."""
    return web.json_response({"status": "ok"})


# ---- helpers ------------------------------------------------------------------------------------


@web.middleware
async def _cors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Let browser pages on other origins use the client endpoints, as the service's CORS setting `*` does."""
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS" and origin and request.path.startswith("/client"):
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers", "")
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        response = await handler(request)
    if origin and request.path.startswith("/client") and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    return response


@web.middleware
async def _loopback_admin(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer the admin API (`/admin/...`) to loopback callers only: it can drop connections and reset counts."""
    if request.path.startswith("/admin/") and request.remote not in LOOPBACK:
        return _error(403, "the admin API answers loopback callers only")
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def _count_rest_calls(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count every answered call to a REST route, by method and route template."""
    try:
        response: web.StreamResponse = await handler(request)
    finally:
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical.startswith(REST_PREFIX):
            request.app[REST_CALLS].by_route[f"{request.method} {resource.canonical}"] += 1
    return response


def _bases(request: web.Request, config: EmulatorConfig) -> list[str]:
    """The endpoint URLs a token's audience may name: the configured public URL, or the URL the caller used."""
    return [config.public_url.rstrip("/"), f"{request.scheme}://{request.host}"]


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else None


def _new_id() -> str:
    return secrets.token_urlsafe(16).rstrip("=")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _not_existed(code: str, message: str) -> web.Response:
    """A 404 that names what does not exist in `x-ms-error-code`, as the service's (`local.emulator.errors`)."""
    response = _error(404, message)
    response.headers[errors.HEADER] = code
    return response


async def _close_connections(app: web.Application) -> None:
    for connection in list(app[REGISTRY].connections.values()):
        await connection.close("The service is shutting down.")


async def _close_upstream(app: web.Application) -> None:
    await app[UPSTREAM].close()
