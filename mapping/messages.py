"""The SignalR outputs the app sends: deliveries, presence broadcasts, errors, and group actions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from mapping.entity import ConnectionEntity

Message = dict[str, Any]

MAX_JSON_DEPTH = 64

PRESENCE_TARGET = "presence"
ERROR_TARGET = "error"


def delivery_messages(
    connections: Iterable[ConnectionEntity], *, target: str, sender: str | None, to: str, message: Any
) -> list[Message]:
    """Return one message per connection, carrying `{from, to, message}`."""
    payload = {"from": sender, "to": to, "message": message}
    return [
        {"target": target, "connectionId": connection.connection_id, "arguments": [payload]}
        for connection in connections
    ]


def presence_message(user: str, *, online: bool, version: int) -> Message:
    """Return the hub-wide broadcast that a user came online or went offline (a higher version is newer)."""
    return {"target": PRESENCE_TARGET, "arguments": [{"user": user, "online": online, "version": version}]}


def join_group(connection_id: str, group: str) -> Message:
    """Return the `signalR` output binding's group action that adds a connection to a group."""
    return {"action": "add", "groupName": group, "connectionId": connection_id}


def error_message(connection_id: str, error: str, **details: Any) -> Message:
    """Return an error addressed to one connection only."""
    return {"target": ERROR_TARGET, "connectionId": connection_id, "arguments": [{"error": error, **details}]}


def encode(messages: Sequence[Message]) -> str | None:
    """Return the `signalR` output value: a JSON array string, or None when there is nothing to send."""
    return json.dumps(list(messages), ensure_ascii=False, allow_nan=False) if messages else None


def load_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse strict JSON (no NaN or Infinity, at most `max_depth` levels deep); raise ValueError otherwise."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not within_depth(value, max_depth):
        raise ValueError(f"JSON nested more than {max_depth} levels deep")
    return value


def within_depth(value: Any, max_depth: int) -> bool:
    """Return whether arrays and objects in `value` nest at most `max_depth` levels."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return False
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value
