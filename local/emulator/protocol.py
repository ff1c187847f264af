"""The SignalR JSON hub protocol: records ended by U+001E, one JSON object each, told apart by `type`."""

from __future__ import annotations

import json
from typing import Any

RECORD_SEPARATOR = "\x1e"
INVOCATION = 1
STREAM_ITEM = 2
COMPLETION = 3
STREAM_INVOCATION = 4
CANCEL_INVOCATION = 5
PING = 6
CLOSE = 7
ACK = 8
SEQUENCE = 9
# Serverless upstream bodies only (not sent to clients).
CONNECTED = 10
DISCONNECTED = 11

HANDSHAKE_OK = "{}" + RECORD_SEPARATOR
PING_FRAME = json.dumps({"type": PING}) + RECORD_SEPARATOR


class ProtocolError(Exception):
    """A client sent something the JSON hub protocol does not allow."""


def encode(message: dict[str, Any]) -> str:
    """Return one framed record."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")) + RECORD_SEPARATOR


def split_records(buffer: str) -> tuple[list[str], str]:
    """Split received text into complete records and the incomplete rest."""
    *complete, rest = buffer.split(RECORD_SEPARATOR)
    return complete, rest


def parse_record(record: str) -> dict[str, Any]:
    """Parse one record into a JSON object."""
    try:
        message = json.loads(record)
    except ValueError:
        raise ProtocolError("a record is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("a record is not a JSON object")
    return message


def parse_handshake(record: str) -> str | None:
    """Check a handshake request; return an error text, or None when it is `{"protocol": "json", "version": 1}`."""
    try:
        request = parse_record(record)
    except ProtocolError as error:
        return f"Handshake request is invalid: {error}"
    if request.get("protocol") != "json":
        return f"The protocol '{request.get('protocol')}' is not supported (only 'json')."
    if request.get("version") != 1:
        return f"The server does not support version {request.get('version')} of the 'json' protocol."
    return None


def invocation(target: str, arguments: list[Any]) -> str:
    """Return a non-blocking invocation record (no invocation id) for a client."""
    return encode({"type": INVOCATION, "target": target, "arguments": arguments})


def close(error: str | None = None, *, allow_reconnect: bool = False) -> str:
    """Return a close record."""
    message: dict[str, Any] = {"type": CLOSE}
    if error:
        message["error"] = error
    if allow_reconnect:
        message["allowReconnect"] = True
    return encode(message)


def completion_error(invocation_id: str, error: str) -> str:
    """Return a completion record carrying an error."""
    return encode({"type": COMPLETION, "invocationId": invocation_id, "error": error})
