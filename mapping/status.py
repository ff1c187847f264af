"""A user's status: a short text a connection sets (`setStatus`); the user's is the latest among live ones."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mapping.errors import InvalidRequestError

if TYPE_CHECKING:
    from mapping.entity import ConnectionEntity

MAX_STATUS_LENGTH = 64


def parse_status(value: object) -> str | None:
    """Return a status as stored (NFC, at most 64 characters); None or an empty string clear it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError("status must be a string or null")
    status = unicodedata.normalize("NFC", value)
    if len(status) > MAX_STATUS_LENGTH:
        raise InvalidRequestError(f"status must be at most {MAX_STATUS_LENGTH} characters")
    if any(unicodedata.category(character) in ("Cc", "Cs") for character in status):
        raise InvalidRequestError("status must not hold control characters")
    return status or None


def latest_status(connections: Iterable[ConnectionEntity]) -> str | None:
    """Return the status most recently set among `connections` (a clear counts as a setting), or None."""
    latest = max(
        (connection for connection in connections if connection.status_at is not None),
        key=lambda connection: (connection.status_at, connection.connection_id),
        default=None,
    )
    return latest.status if latest is not None else None
