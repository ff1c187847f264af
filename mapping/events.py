"""What the app does on each SignalR event; each handler returns the messages to send."""

from __future__ import annotations

import logging

from mapping.errors import InvalidNameError, InvalidRequestError, StorageError, UserOfflineError
from mapping.invocation import Invocation
from mapping.liveness import AGE_ONLY, MAPPED_GROUP, LivenessCheck
from mapping.messages import Message, error_message, join_group, leave_group, presence_message, room_message
from mapping.presence import PresenceChange
from mapping.rooms import Rooms
from mapping.send import parse_room_send_arguments, parse_send_arguments, room_delivery_of, send_to_user
from mapping.store import ConnectionStore
from mapping.sweep import sweep

logger = logging.getLogger(__name__)


async def on_connected(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Map a new connection to its user; announce the user online on their first live connection."""
    if not event.user_id or not event.connection_id:
        logger.warning("connected: connection %s has no user id; not mapped", event.connection_id)
        return []
    try:
        outcome = await store.connect(
            event.user_id, event.connection_id, hub=event.hub, user_agent=event.header("User-Agent")
        )
    except InvalidNameError as error:
        logger.warning("connected: connection not mapped: %s", error)
        return []
    logger.info("connected: %s", outcome.entity.connection_id)
    connection_id = outcome.entity.connection_id
    # SignalR forgets groups when a connection ends: every new connection joins its user's rooms (R3).
    groups = [join_group(connection_id, room) for room in outcome.rooms]
    if store.lease.reconciled:
        # The sweep lists this group to learn which connections the service still has (no table request).
        groups.append(join_group(connection_id, MAPPED_GROUP))
    return groups + _announced(outcome.presence)


async def on_disconnected(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Remove a closed connection's row; announce the user offline when no live connection is left."""
    if not event.user_id or not event.connection_id:
        return []
    try:
        outcome = await store.disconnect(event.user_id, event.connection_id)
    except InvalidNameError as error:
        logger.warning("disconnected: ignored: %s", error)
        return []
    return _announced(outcome.presence)


async def on_send(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Deliver a client's `send(to, message)` to the recipient, or answer the caller with one error."""
    if not event.connection_id:
        logger.warning("send: event without a connection id ignored")
        return []
    revived = await _refresh(store, event.user_id, event.connection_id) if event.user_id else []
    try:
        request = parse_send_arguments(event.arguments)
        return revived + await send_to_user(store, request, sender=event.user_id)
    except InvalidRequestError as error:
        return [*revived, error_message(event.connection_id, str(error))]
    except UserOfflineError:
        return [*revived, error_message(event.connection_id, "recipient is offline", to=request.to)]
    except StorageError as error:
        return [*revived, _unavailable(event.connection_id, "send", error)]


async def on_set_status(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Record the caller's `setStatus(status)` and announce the user's presence, or answer the caller an error."""
    if not event.connection_id:
        return []
    if not event.user_id:
        return [error_message(event.connection_id, "setStatus needs a signed-in user")]
    if event.arguments is None or len(event.arguments) != 1:
        return [error_message(event.connection_id, "setStatus expects one argument: (status)")]
    try:
        outcome = await store.set_status(event.user_id, event.connection_id, event.arguments[0])
    except (InvalidRequestError, InvalidNameError) as error:
        return [error_message(event.connection_id, str(error))]
    except StorageError as error:
        return [_unavailable(event.connection_id, "setStatus", error)]
    if not outcome.found:
        return [error_message(event.connection_id, "this connection is not mapped; reconnect")]
    return [*_rejoined(event.connection_id, outcome.rooms), *_announced(outcome.presence)]


async def on_join(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Make the caller's user a member of `join(room)`: add their live connections to its group, announce it."""
    return await _membership(store, event, joining=True)


async def on_leave(store: ConnectionStore, event: Invocation) -> list[Message]:
    """End the caller's user's membership of `leave(room)`: announce it, remove their connections from the group."""
    return await _membership(store, event, joining=False)


async def on_send_to_room(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Deliver a member's `sendToRoom(room, message)` to the room's group, or answer the caller an error."""
    if not event.connection_id:
        return []
    if not event.user_id:
        return [error_message(event.connection_id, "sendToRoom needs a signed-in user")]
    revived = await _refresh(store, event.user_id, event.connection_id)
    try:
        request = parse_room_send_arguments(event.arguments)
        if not await Rooms(store).is_member(event.user_id, request.room):
            return [*revived, error_message(event.connection_id, "not a member of this room", room=request.room)]
    except (InvalidRequestError, InvalidNameError) as error:
        return [*revived, error_message(event.connection_id, str(error))]
    except StorageError as error:
        return [*revived, _unavailable(event.connection_id, "sendToRoom", error)]
    return [*revived, room_delivery_of(request, sender=event.user_id)]


async def on_timer(store: ConnectionStore, *, liveness: LivenessCheck = AGE_ONLY) -> list[Message]:
    """Sweep stale rows (liveness-checked unless age-only); announce users whose presence changed."""
    result = await sweep(store, liveness=liveness)
    regrouped = [join_group(connection_id, MAPPED_GROUP) for connection_id in result.unlisted_alive]
    return regrouped + [presence_message(change) for change in result.presence]


async def _membership(store: ConnectionStore, event: Invocation, *, joining: bool) -> list[Message]:
    method = "join" if joining else "leave"
    if not event.connection_id:
        return []
    if not event.user_id:
        return [error_message(event.connection_id, f"{method} needs a signed-in user")]
    if event.arguments is None or len(event.arguments) != 1:
        return [error_message(event.connection_id, f"{method} expects one argument: (room)")]
    revived = await _refresh(store, event.user_id, event.connection_id)
    rooms = Rooms(store)
    try:
        if joining:
            change = await rooms.join(event.user_id, event.arguments[0])
        else:
            change = await rooms.leave(event.user_id, event.arguments[0])
    except (InvalidRequestError, InvalidNameError) as error:
        return [*revived, error_message(event.connection_id, str(error))]
    except StorageError as error:
        return [*revived, _unavailable(event.connection_id, method, error)]
    # The caller first (it is surely connected: it asked), even should its row be missing.
    connections = dict.fromkeys([event.connection_id, *change.connections])
    announcement = room_message(change.room, user=change.user, joined=joining)
    if joining:
        return [*revived, *(join_group(c, change.room) for c in connections), announcement]
    return [*revived, announcement, *(leave_group(c, change.room) for c in connections)]


def _unavailable(connection_id: str, method: str, error: StorageError) -> Message:
    """The caller's answer when storage failed: nothing to lose by retrying (every event is idempotent)."""
    logger.warning("%s: storage failed: %s", method, error)
    return error_message(connection_id, "the connection store is unavailable, try again", retry=True)


def _announced(change: PresenceChange | None) -> list[Message]:
    return [presence_message(change)] if change is not None else []


async def _refresh(store: ConnectionStore, user_id: str, connection_id: str) -> list[Message]:
    """Refresh the caller's lease (best effort); a lease made live again after it lapsed is a presence change."""
    try:
        outcome = await store.touch(user_id, connection_id)
    except (InvalidNameError, StorageError) as error:
        logger.warning("client message: caller not refreshed: %s", error)
        return []
    if not outcome.found:
        logger.info("client message: caller %s has no row to refresh", connection_id)
    return [*_rejoined(connection_id, outcome.rooms), *_announced(outcome.presence)]


def _rejoined(connection_id: str, rooms: tuple[str, ...]) -> list[Message]:
    """Group actions that put a connection whose lapsed lease came back into its user's rooms (R3)."""
    return [join_group(connection_id, room) for room in rooms]
