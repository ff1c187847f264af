"""Sending a message to every live connection of a user, or to a room's group: the request rules and the delivery."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mapping.errors import InvalidNameError, InvalidRequestError, PayloadTooLargeError, UserOfflineError
from mapping.keys import normalize_user_name, parse_room
from mapping.presence.store import ConnectionStore
from mapping.rooms.access import reachable
from mapping.rooms.policy import SETTINGS_DECIDE, AccessPolicy, Claims
from mapping.signalr.messages import RESERVED_TARGETS, Message, delivery_messages, room_delivery

MAX_BODY_BYTES = 64 * 1024
DEFAULT_TARGET = "newMessage"
MAX_TARGET_LENGTH = 256


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A validated message for a user: the recipient's name, any JSON value, and the client method."""

    to: str
    message: Any
    target: str = DEFAULT_TARGET


@dataclass(frozen=True, slots=True)
class RoomSendRequest:
    """A validated message for a room: the room, any JSON value, and the client method."""

    room: str
    message: Any
    target: str = DEFAULT_TARGET


def parse_send_body(body: bytes) -> SendRequest:
    """Parse an HTTP send body `{"to", "message", "target"?}`, or raise InvalidRequestError."""
    data = _body_object(body)
    return SendRequest(to=_recipient(data.get("to")), message=data["message"], target=_target(data))


def parse_room_send_body(room: str, body: bytes) -> RoomSendRequest:
    """Parse an HTTP room send (`room` from the route, body `{"message", "target"?}`), or raise."""
    room = _room(room)
    data = _body_object(body)
    return RoomSendRequest(room=room, message=data["message"], target=_target(data))


def parse_room_send_arguments(arguments: list[Any] | None, *, max_bytes: int = MAX_BODY_BYTES) -> RoomSendRequest:
    """Parse the arguments of a client's `sendToRoom(room, message)` call (a message of at most `max_bytes` as JSON),
    or raise InvalidRequestError."""
    if arguments is None or len(arguments) != 2:
        raise InvalidRequestError("sendToRoom expects two arguments: (room, message)")
    return RoomSendRequest(room=_room(arguments[0]), message=_client_message(arguments[1], max_bytes=max_bytes))


def _body_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        data = load_json(body.decode("utf-8-sig"), max_depth=MAX_JSON_DEPTH + 1)
    except UnicodeDecodeError:
        raise InvalidRequestError("the body must be UTF-8 JSON") from None
    except ValueError as error:
        raise InvalidRequestError(f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object")
    if "message" not in data:
        raise InvalidRequestError("'message' is required")
    _encodable(data["message"])
    return data


def _target(data: dict[str, Any]) -> str:
    target = data.get("target", DEFAULT_TARGET)
    if not isinstance(target, str) or not target.strip() or len(target) > MAX_TARGET_LENGTH:
        raise InvalidRequestError(f"'target' must be a non-empty string of at most {MAX_TARGET_LENGTH} characters")
    if target.casefold() in {reserved.casefold() for reserved in RESERVED_TARGETS}:
        # The SignalR client matches method names case-insensitively: `Presence` would reach `presence` handlers.
        raise InvalidRequestError(f"'target' {target!r} is the app's own (reserved: {', '.join(RESERVED_TARGETS)})")
    _encodable(target)
    return target


def parse_send_arguments(arguments: list[Any] | None, *, max_bytes: int = MAX_BODY_BYTES) -> SendRequest:
    """Parse the arguments of a client's `send(to, message)` call (a message of at most `max_bytes` as JSON), or
    raise InvalidRequestError."""
    if arguments is None or len(arguments) != 2:
        raise InvalidRequestError("send expects two arguments: (to, message)")
    return SendRequest(to=_recipient(arguments[0]), message=_client_message(arguments[1], max_bytes=max_bytes))


def _client_message(message: Any, *, max_bytes: int) -> Any:
    if not within_depth(message, MAX_JSON_DEPTH):
        raise InvalidRequestError(f"the message must nest at most {MAX_JSON_DEPTH} levels")
    try:
        text = json.dumps(message, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise InvalidRequestError("the message must be plain JSON (no NaN or Infinity)") from None
    size = len(_encodable(text))
    if size > max_bytes:
        raise PayloadTooLargeError(f"the message must be at most {max_bytes} bytes")
    return message


async def send_to_user(store: ConnectionStore, request: SendRequest, *, sender: str | None) -> list[Message]:
    """Return one delivery per live connection of the recipient; raise UserOfflineError when there is none."""
    connections = await store.connections_of(request.to)
    if not connections:
        raise UserOfflineError(f"user {request.to!r} has no live connection")
    return delivery_messages(connections, target=request.target, sender=sender, to=request.to, message=request.message)


async def send_direct(
    store: ConnectionStore,
    request: SendRequest,
    *,
    sender: str,
    policy: AccessPolicy = SETTINGS_DECIDE,
    claims: Claims | None = None,
) -> list[Message]:
    """Return a client's direct message, one delivery per live connection of the recipient, when the app's policy or
    `DIRECT_MESSAGES` allows it; raise UserOfflineError when the recipient has no live connection or it is refused,
    alike."""
    recipient = await reachable(store, sender, request.to, policy=policy, claims=claims)
    connections = recipient.live(store.lease, now=store.now()) if recipient is not None else []
    if not connections:  # offline, or refused: answered alike
        raise UserOfflineError(f"user {request.to!r} has no live connection")
    return delivery_messages(connections, target=request.target, sender=sender, to=request.to, message=request.message)


def _encodable(message: Any) -> bytes:
    """Return a message's UTF-8 JSON; a lone surrogate (valid in a JSON escape, not in UTF-8) is refused."""
    text = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise InvalidRequestError("the message must be valid Unicode (no lone surrogates)") from None


def room_delivery_of(request: RoomSendRequest, *, sender: str | None) -> Message:
    """Return the message that delivers a room send to the room's group."""
    return room_delivery(request.room, target=request.target, sender=sender, message=request.message)


def _room(value: object) -> str:
    try:
        return parse_room(value)
    except InvalidNameError as error:
        raise InvalidRequestError(str(error)) from None


def _recipient(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError("'to' must be a non-empty string")
    try:
        return normalize_user_name(value)
    except InvalidNameError as error:
        raise InvalidRequestError(f"'to' is not a valid user name: {error}") from None


MAX_JSON_DEPTH = 64


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
