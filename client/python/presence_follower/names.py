"""User names and rooms as the server takes them: normalised for display, folded to one key per user, checked."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_NAME_LENGTH = 256
ROOM = re.compile(r"[A-Za-z0-9._-]{1,64}")
SURROGATE = re.compile(r"[\ud800-\udfff]")


def normalize_user_name(name: str) -> str:
    """Return the name as the server keeps it for display (NFC, stripped), or raise TypeError / ValueError."""
    if not isinstance(name, str):
        raise TypeError("user name must be a string")
    if SURROGATE.search(name):
        raise ValueError("user name is not valid Unicode (a lone surrogate)")
    normalized = unicodedata.normalize("NFC", name).strip()
    if not normalized:
        raise ValueError("user name must not be empty")
    if len(normalized) > MAX_NAME_LENGTH:
        raise ValueError(f"user name must be at most {MAX_NAME_LENGTH} characters")
    return normalized


def fold_user_name(name: str) -> str:
    """Return the key two names share exactly when the server takes them for one user: NFC(casefold(NFC(strip)))."""
    return unicodedata.normalize("NFC", normalize_user_name(name).casefold())


def check_room(room: str) -> str:
    """Return `room` if the server accepts it (1-64 letters, digits, '-', '_', '.'), or raise."""
    if not isinstance(room, str):
        raise TypeError("room must be a string")
    if not ROOM.fullmatch(room):
        raise ValueError("room must be 1-64 characters of letters, digits, '-', '_' and '.'")
    return room


def _safe_fold(name: object) -> str | None:
    try:
        return fold_user_name(name) if isinstance(name, str) else None
    except ValueError:
        return None


def _distinct(users: Iterable[str]) -> list[str]:
    """Return the names normalised, one per folded key (a single string is refused: pass a list)."""
    if isinstance(users, str):
        raise TypeError("users must be a list of names, not one string")
    names: dict[str, str] = {}
    for user in users:
        name = normalize_user_name(user)
        names.setdefault(fold_user_name(name), name)
    return list(names.values())
