"""The SignalR outputs the app sends: their targets, deliveries, room announcements, errors, and group actions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from mapping.presence.rows import ConnectionEntity

Message = dict[str, Any]

PRESENCE_TARGET = "presence"
SYNC_TARGET = "presenceSync"
ROOM_TARGET = "room"
ERROR_TARGET = "error"
OCCUPANCY_TARGET = "occupancy"
BATCH_TARGET = "presenceBatch"
# What the app itself sends: a server may not send under these names, in any case (no forged presence).
RESERVED_TARGETS = (PRESENCE_TARGET, SYNC_TARGET, ROOM_TARGET, ERROR_TARGET, OCCUPANCY_TARGET, BATCH_TARGET)


def delivery_messages(
    connections: Iterable[ConnectionEntity], *, target: str, sender: str | None, to: str, message: Any
) -> list[Message]:
    """Return one message per connection, carrying `{from, to, message}`."""
    payload = {"from": sender, "to": to, "message": message}
    return [
        {"target": target, "connectionId": connection.connection_id, "arguments": [payload]}
        for connection in connections
    ]


def room_message(room: str, *, user: str, joined: bool, to: str | None = None) -> Message:
    """Return the announcement to a room's group (or to the one connection `to`) that a member joined or left it."""
    audience = {"connectionId": to} if to is not None else {"groupName": room}
    return {"target": ROOM_TARGET, **audience, "arguments": [{"room": room, "user": user, "joined": joined}]}


def room_delivery(room: str, *, target: str, sender: str | None, message: Any) -> Message:
    """Return a message to every connection in a room's group, carrying `{from, room, message}`."""
    return {"target": target, "groupName": room, "arguments": [{"from": sender, "room": room, "message": message}]}


def join_group(connection_id: str, group: str) -> Message:
    """Return the `signalR` output binding's group action that adds a connection to a group."""
    return {"action": "add", "groupName": group, "connectionId": connection_id}


def leave_group(connection_id: str, group: str) -> Message:
    """Return the `signalR` output binding's group action that removes a connection from a group."""
    return {"action": "remove", "groupName": group, "connectionId": connection_id}


def error_message(connection_id: str, error: str, **details: Any) -> Message:
    """Return an error addressed to one connection only."""
    return {"target": ERROR_TARGET, "connectionId": connection_id, "arguments": [{"error": error, **details}]}


def encode(messages: Sequence[Message]) -> str | None:
    """Return the `signalR` output value: a JSON array string, or None when there is nothing to send."""
    return json.dumps(list(messages), ensure_ascii=False, allow_nan=False) if messages else None
