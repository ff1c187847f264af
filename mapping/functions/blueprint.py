"""The connection mapper's functions on a `func.Blueprint`, wiring only: parse each trigger, call mapping/, shape it.

An app registers them with `mapping.registration.register(app)` (this project's `function_app.py` does).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from mapping import events
from mapping.errors import (
    InvalidNameError,
    InvalidRequestError,
    MappingError,
    PayloadTooLargeError,
    SignalRUnavailableError,
    StorageError,
    UserOfflineError,
)
from mapping.functions import runtime
from mapping.functions.openapi import document as openapi_document
from mapping.keys import new_user_name, normalize_user_name
from mapping.rooms.membership import Rooms
from mapping.settings import GRACE_QUEUE
from mapping.signalr import messages
from mapping.signalr.invocation import parse_invocation
from mapping.signalr.liveness import GroupAdder
from mapping.signalr.send import parse_room_send_body, parse_send_body, room_delivery_of, send_to_user

logger = logging.getLogger(__name__)

blueprint = func.Blueprint()  # type: ignore[no-untyped-call]
KEYED = func.AuthLevel.FUNCTION  # set on each route: an app whose default level is anonymous must not open these
ANONYMOUS = func.AuthLevel.ANONYMOUS

HUB = "%SIGNALR_HUB%"
SIGNALR_CONNECTION = "AzureSignalRConnectionString"
PRINCIPAL_HEADER = "x-ms-client-principal-name"
SIGNALR = {"hub_name": HUB, "connection_string_setting": SIGNALR_CONNECTION}  # every SignalR binding's options


def signalr_event(category: str, event: str) -> Callable[..., Any]:
    """Bind a function to one SignalR event (`invocation`), with the `signalR` output its messages go to."""
    trigger = blueprint.generic_trigger(
        arg_name="invocation", type="signalRTrigger", category=category, event=event, **SIGNALR
    )
    return lambda function: trigger(signalr_output(function))


def signalr_output(function: Callable[..., Any]) -> Any:
    """Give a function the `signalR` output binding (`signalr`), a JSON array of messages and group actions."""
    return blueprint.generic_output_binding(arg_name="signalr", type="signalR", **SIGNALR)(function)


@blueprint.function_name("negotiate")
@blueprint.route(route="negotiate", methods=["POST"], auth_level=ANONYMOUS)
@blueprint.generic_input_binding(
    arg_name="connection_info",
    type="signalRConnectionInfo",
    user_id="{headers.x-ms-client-principal-name}",
    **SIGNALR,
)
async def negotiate(req: func.HttpRequest, connection_info: str) -> func.HttpResponse:
    """Hand an authenticated client its SignalR URL and access token."""
    principal = (req.headers.get(PRINCIPAL_HEADER) or "").strip()
    if not principal:
        return _json(401, {"error": "sign in first: no authenticated principal"})
    try:
        new_user_name(principal)
    except InvalidNameError as error:
        return _json(400, {"error": f"the signed-in user name is not usable: {error}"})
    try:
        if await runtime.store().is_blocked(principal):
            return _json(403, {"error": "this user is blocked"})
    except MappingError as error:
        return _error(error)
    return func.HttpResponse(connection_info, status_code=200, mimetype="application/json")


@blueprint.function_name("connected")
@signalr_event("connections", "connected")
async def connected(invocation: str, signalr: func.Out[str]) -> None:
    """Map a new connection to its user; raising makes SignalR refuse the connection, so none goes unmapped."""
    store = runtime.store()
    closer = runtime.closer_for(store.settings.signalr)
    _send(signalr, await events.on_connected(store, parse_invocation(invocation), service=closer))


@blueprint.function_name("disconnected")
@signalr_event("connections", "disconnected")
async def disconnected(invocation: str, signalr: func.Out[str]) -> None:
    """Remove a closed connection's row and announce the user offline when it was their last."""
    _send(
        signalr,
        await events.on_disconnected(runtime.store(), parse_invocation(invocation), delayed=runtime.delayed_actions),
    )


@blueprint.function_name("send_message")
@signalr_event("messages", "send")
async def send_message(invocation: str, signalr: func.Out[str]) -> None:
    """Deliver a client's `send(to, message)` to every live connection of the recipient."""
    _send(signalr, await events.on_send(runtime.store(), parse_invocation(invocation), access=runtime.access()))


@blueprint.function_name("set_status")
@signalr_event("messages", "setStatus")
async def set_status(invocation: str, signalr: func.Out[str]) -> None:
    """Record a client's `setStatus(status)` on its connection and announce the user's presence."""
    _send(signalr, await events.on_set_status(runtime.store(), parse_invocation(invocation)))


@blueprint.function_name("join_room")
@signalr_event("messages", "join")
async def join_room(invocation: str, signalr: func.Out[str]) -> None:
    """Make the caller's user a member of a room (`join(room)`), with all their live connections."""
    _send(
        signalr,
        await events.on_join(runtime.store(), parse_invocation(invocation), service=_rest(), access=runtime.access()),
    )


@blueprint.function_name("leave_room")
@signalr_event("messages", "leave")
async def leave_room(invocation: str, signalr: func.Out[str]) -> None:
    """End the caller's user's membership of a room (`leave(room)`)."""
    _send(signalr, await events.on_leave(runtime.store(), parse_invocation(invocation)))


@blueprint.function_name("send_to_room_message")
@signalr_event("messages", "sendToRoom")
async def send_to_room_message(invocation: str, signalr: func.Out[str]) -> None:
    """Deliver a member's `sendToRoom(room, message)` to the room."""
    _send(signalr, await events.on_send_to_room(runtime.store(), parse_invocation(invocation)))


@blueprint.function_name("watch_users")
@signalr_event("messages", "watch")
async def watch_users(invocation: str, signalr: func.Out[str]) -> None:
    """Subscribe the caller to the presence of `watch(users)`, answered with their snapshot."""
    _send(
        signalr,
        await events.on_watch(runtime.store(), parse_invocation(invocation), service=_rest(), access=runtime.access()),
    )


@blueprint.function_name("unwatch_users")
@signalr_event("messages", "unwatch")
async def unwatch_users(invocation: str, signalr: func.Out[str]) -> None:
    """End the caller's subscriptions to `unwatch(users)`."""
    _send(signalr, await events.on_unwatch(runtime.store(), parse_invocation(invocation)))


@blueprint.function_name("watch_occupancy")
@signalr_event("messages", "watchOccupancy")
async def watch_occupancy(invocation: str, signalr: func.Out[str]) -> None:
    """Subscribe the caller to a room's occupancy (`watchOccupancy(room)`), answered with the occupancy now."""
    store, event = runtime.store(), parse_invocation(invocation)
    _send(signalr, await events.on_watch_occupancy(store, event, service=_rest(), access=runtime.access()))


@blueprint.function_name("unwatch_occupancy")
@signalr_event("messages", "unwatchOccupancy")
async def unwatch_occupancy(invocation: str, signalr: func.Out[str]) -> None:
    """End the caller's subscription to a room's occupancy (`unwatchOccupancy(room)`)."""
    _send(signalr, await events.on_unwatch_occupancy(runtime.store(), parse_invocation(invocation)))


@blueprint.function_name("sync_room")
@signalr_event("messages", "sync")
async def sync_room(invocation: str, signalr: func.Out[str]) -> None:
    """Answer the caller a fresh snapshot of a room it is a member of (`sync(room)`)."""
    _send(signalr, await events.on_sync(runtime.store(), parse_invocation(invocation)))


@blueprint.function_name("presence_grace")
@blueprint.queue_trigger(arg_name="decision", queue_name=GRACE_QUEUE, connection="AzureWebJobsStorage")
@signalr_output
async def presence_grace(decision: func.QueueMessage, signalr: func.Out[str]) -> None:
    """Decide a grace period that ran out (a delayed queue message): offline unless a connection came back."""
    body = decision.get_body().decode("utf-8", errors="replace")
    _send(signalr, await events.on_grace(runtime.store(), body, delayed=runtime.delayed_actions))


@blueprint.function_name("send")
@blueprint.route(route="send", methods=["POST"], auth_level=KEYED)
@signalr_output
async def send(req: func.HttpRequest, signalr: func.Out[str]) -> func.HttpResponse:
    """Send a message to every live connection of a user."""
    sender = (req.headers.get(PRINCIPAL_HEADER) or "").strip() or None
    try:
        request = parse_send_body(req.get_body())
        deliveries = await send_to_user(runtime.store(), request, sender=sender)
    except MappingError as error:
        return _error(error)
    _send(signalr, deliveries)
    return _json(200, {"to": request.to, "delivered": len(deliveries)})


@blueprint.function_name("send_to_room")
@blueprint.route(route="rooms/{room}/send", methods=["POST"], auth_level=KEYED)
@signalr_output
async def send_to_room(req: func.HttpRequest, signalr: func.Out[str]) -> func.HttpResponse:
    """Send a message to every connection in a room's group."""
    sender = (req.headers.get(PRINCIPAL_HEADER) or "").strip() or None
    try:
        request = parse_room_send_body(req.route_params.get("room", ""), req.get_body())
    except MappingError as error:
        return _error(error)
    _send(signalr, [room_delivery_of(request, sender=sender)])
    return _json(200, {"room": request.room})


@blueprint.function_name("room_members")
@blueprint.route(route="rooms/{room}", methods=["GET"], auth_level=KEYED)
@signalr_output
async def room_members(req: func.HttpRequest, signalr: func.Out[str]) -> func.HttpResponse:
    """List a room's members, each online or not with their live connection count, a page at a time (a stale row
    settled on the way corrects the room's occupancy, told to its watchers)."""
    try:
        page, announced = await events.on_list_members(
            runtime.store(),
            req.route_params.get("room", ""),
            limit=_limit(req.params.get("limit")),
            cursor=req.params.get("next") or None,
        )
    except MappingError as error:
        return _error(error)
    _send(signalr, announced)
    members = [{"user": member.user, **member.state.to_json()} for member in page.members]
    return _json(200, {"room": page.room, "members": members, "next": page.next})


@blueprint.function_name("room_occupancy")
@blueprint.route(route="rooms/{room}/occupancy", methods=["GET"], auth_level=KEYED)
async def room_occupancy(req: func.HttpRequest) -> func.HttpResponse:
    """Tell how many members a room has and how many of them are online, in one table request."""
    try:
        room = req.route_params.get("room", "")
        tally = await Rooms(runtime.store()).tally(room)
    except MappingError as error:
        return _error(error)
    return _json(200, tally.to_json(room))


@blueprint.function_name("online_users")
@blueprint.route(route="users", methods=["GET"], auth_level=KEYED)
async def online_users(req: func.HttpRequest) -> func.HttpResponse:
    """List users with at least one live connection, a page at a time."""
    try:
        page = await runtime.store().online_users(
            limit=_limit(req.params.get("limit")), cursor=req.params.get("next") or None
        )
    except MappingError as error:
        return _error(error)
    users = [{"user": user.user, "connections": user.connections} for user in page.users]
    return _json(200, {"users": users, "next": page.next})


@blueprint.function_name("user_presence")
@blueprint.route(route="users/{user}", methods=["GET"], auth_level=KEYED)
async def user_presence(req: func.HttpRequest) -> func.HttpResponse:
    """Tell whether a user is online, with their live connections."""
    try:
        presence = await runtime.store().presence_of(req.route_params.get("user", ""))
    except MappingError as error:
        return _error(error)
    body = {
        "user": presence.user,
        "online": presence.state.online,
        "status": presence.state.status,
        "lastSeen": presence.state.to_json()["lastSeen"],
        "rooms": list(presence.rooms),
        "blocked": presence.blocked,
        "grants": list(presence.grants),
        "connections": [connection.to_json() for connection in presence.connections],
    }
    return _json(200, body)


@blueprint.function_name("disconnect_user")
@blueprint.route(route="users/{user}/disconnect", methods=["POST"], auth_level=KEYED)
@signalr_output
async def disconnect_user(req: func.HttpRequest, signalr: func.Out[str]) -> func.HttpResponse:
    """Close every live connection of a user through SignalR's REST API (an operator's disconnect)."""
    store = runtime.store()
    try:
        done = await events.on_disconnect_user(
            store,
            req.route_params.get("user", ""),
            service=runtime.closer_for(store.settings.signalr),
        )
    except MappingError as error:
        return _error(error)
    _send(signalr, done.messages)
    return _json(200, {"user": done.user, "closed": done.closed})


@blueprint.function_name("block_user")
@blueprint.route(route="users/{user}/block", methods=["PUT", "DELETE"], auth_level=KEYED)
@signalr_output
async def block_user(req: func.HttpRequest, signalr: func.Out[str]) -> func.HttpResponse:
    """Block a user (PUT: negotiate refused, connections closed and not mapped) or unblock them (DELETE)."""
    store = runtime.store()
    user = req.route_params.get("user", "")
    blocking = req.method.upper() == "PUT"
    try:
        await store.set_blocked(user, blocking)
        if not blocking:
            return _json(200, {"user": normalize_user_name(user), "blocked": False})
        done = await events.on_disconnect_user(store, user, service=runtime.closer_for(store.settings.signalr))
    except MappingError as error:
        return _error(error)
    _send(signalr, done.messages)
    return _json(200, {"user": done.user, "blocked": True, "closed": done.closed})


@blueprint.function_name("room_member")
@blueprint.route(route="rooms/{room}/members/{user}", methods=["PUT", "DELETE"], auth_level=KEYED)
@signalr_output
async def room_member(req: func.HttpRequest, signalr: func.Out[str]) -> func.HttpResponse:
    """Grant a room to a user, making them a member at once (PUT), or revoke it, taking them out at once (DELETE)."""
    store = runtime.store()
    user, room = req.route_params.get("user", ""), req.route_params.get("room", "")
    change = events.on_grant if req.method.upper() == "PUT" else events.on_revoke
    try:
        done = await change(store, user, room, service=_rest())
    except MappingError as error:
        return _error(error)
    _send(signalr, done.messages)
    return _json(200, {"room": done.room, "user": done.user, "member": done.member})


@blueprint.function_name("openapi")
@blueprint.route(route="openapi.json", methods=["GET"], auth_level=ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """Serve the OpenAPI 3.1 description of this HTTP API."""
    return _json(200, openapi_document())


@blueprint.function_name("sweep")
@blueprint.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True)
@signalr_output
async def sweep_stale(timer: func.TimerRequest, signalr: func.Out[str]) -> None:
    """Remove stale rows (SignalR's disconnect callback is best-effort) and announce who went offline."""
    if timer.past_due:
        logger.info("sweep: running late")
    store = runtime.store()
    _send(signalr, await events.on_timer(store, liveness=runtime.liveness_for(store.settings.signalr)))


def _rest() -> GroupAdder:
    """The SignalR REST client (group additions before a snapshot), or the age-only check without a connection."""
    return runtime.groups_for(runtime.store().settings.signalr)


def _send(signalr: func.Out[str], outgoing: list[messages.Message]) -> None:
    if value := messages.encode(outgoing):
        signalr.set(value)


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 100
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError("limit must be a whole number between 1 and 1000") from None


def _error(error: MappingError) -> func.HttpResponse:
    if isinstance(error, PayloadTooLargeError):
        return _json(413, {"error": str(error)})
    if isinstance(error, InvalidRequestError | InvalidNameError):
        return _json(400, {"error": str(error)})
    if isinstance(error, UserOfflineError):
        return _json(404, {"error": str(error)})
    if isinstance(error, SignalRUnavailableError):
        logger.error("request failed: %s", error)
        return _json(503, {"error": str(error)}, retry_after=30)
    retry_after = error.retry_after_seconds if isinstance(error, StorageError) else 30
    logger.error("request failed: %s", error)
    return _json(503, {"error": "the connection store is unavailable, try again later"}, retry_after=retry_after)


def _json(status: int, body: dict[str, Any], *, retry_after: int | None = None) -> func.HttpResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return func.HttpResponse(
        json.dumps(body, ensure_ascii=False), status_code=status, mimetype="application/json", headers=headers
    )
