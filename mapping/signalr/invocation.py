"""The payload of a SignalR trigger (`signalRTrigger`), parsed without trusting its shape."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Invocation:
    """A connected, disconnected or message event as the SignalR extension hands it to a function."""

    category: str | None = None
    event: str | None = None
    hub: str | None = None
    connection_id: str | None = None
    user_id: str | None = None
    arguments: list[Any] | None = None
    error: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # The client token's claims, one value per type (the service forwards them upstream as X-ASRS-User-Claims and
    # the extension hands them over as `Claims`); what an access policy decides on. Never a secret: not logged.
    claims: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str:
        """Return a request header of the connection (case-insensitive), or an empty string."""
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), "")


def parse_invocation(payload: str | bytes | Mapping[str, Any]) -> Invocation:
    """Parse the trigger payload (a JSON string with PascalCase keys); wrong types read as missing."""
    data = _load(payload)
    arguments = data.get("Arguments")
    return Invocation(
        category=_text(data.get("Category")),
        event=_text(data.get("Event")),
        hub=_text(data.get("Hub")),
        connection_id=_text(data.get("ConnectionId")),
        user_id=_text(data.get("UserId")),
        arguments=arguments if isinstance(arguments, list) else None,
        error=_text(data.get("Error")),
        headers=_strings(data.get("Headers")),
        claims=_strings(data.get("Claims")),
    )


def _load(payload: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(payload, Mapping):
        return payload
    try:
        data = json.loads(payload)
    except (ValueError, TypeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> dict[str, str]:
    """A JSON object of names to strings (headers, claims): a list value joined with ", ", other values dropped."""
    if not isinstance(value, dict):
        return {}
    strings: dict[str, str] = {}
    for key, raw in value.items():
        if isinstance(raw, list):
            raw = ", ".join(item for item in raw if isinstance(item, str))
        if isinstance(key, str) and isinstance(raw, str):
            strings[key] = raw
    return strings
