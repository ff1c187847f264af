"""User name and connection id rules, and their escaping into Table Storage keys.

A name is NFC-normalised and stripped, must then be 1-256 characters, and may hold any Unicode
scalar value. Keys percent-encode only what Table Storage forbids (`/ \\ # ?`, U+0000-U+001F,
U+007F-U+009F) and `%` itself, so ordinary names and SignalR connection ids are stored verbatim.
User keys are casefolded: users compare case-insensitively, connection ids do not.

Room names are 1-64 characters of letters, digits, `-`, `_` and `.`, compared exactly (a room's
SignalR group has the room's name). A membership is two rows: `%~r<room>` in the user's partition
(the truth: "rooms of a user" is part of the user's one query) and the user's key in the room's
partition `%~m<room>` (an index: "members of a room" is one partition query; see mapping.rooms.membership).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata

from mapping.errors import InvalidNameError, InvalidRequestError

MAX_NAME_LENGTH = 256
# Table Storage keys hold at most 1 KiB of UTF-16 (512 code units; Azurite counts 512 characters).
MAX_KEY_UTF16_UNITS = 512
# A key whose escaped form would not fit keeps this much of it, then a digest.
_LONG_KEY_PREFIX_UNITS = 400

BOOKKEEPING_PREFIX = "%~"  # starts the keys of the app's own rows; never starts an escaped name
MAX_ROOM_LENGTH = 64
MEMBERSHIP_PREFIX = "%~r"  # RowKey prefix of a membership row in the user's partition
ROOM_PREFIX = "%~m"  # PartitionKey prefix of a room's member index
PRESENCE_ROW = "%~p"  # RowKey of the presence row in a user's partition
BLOCKED_ROW = "%~b"  # RowKey of an operator's block in a user's partition (present: blocked)
GRANT_PREFIX = "%~g"  # RowKey prefix of a server's grant of a room, in the user's partition
REVOKED_PREFIX = "%~q"  # RowKey prefix of a revoked room whose group may still hold the user's older connections
INDEX_PREFIX = "%~x"  # PartitionKey prefix of the unsharded expiry index (S = 1, and every index before shards)
SHARDED_PREFIX = "%~i"  # PartitionKey prefix of a sharded expiry index: %~i<shard, 3 digits>.<bucket>
AFTER_SHARDS = "%~j"  # sorts after every sharded expiry-index partition

_ROOM = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ESCAPED = re.compile(r"[/\\#?%\x00-\x1f\x7f-\x9f]")
_ESCAPE_SEQUENCE = re.compile(r"(?:%[0-9A-F]{2})+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def normalize_user_name(name: object) -> str:
    """Return the canonical display form of a user name, or raise InvalidNameError."""
    return _normalize(name, what="user name")


def normalize_connection_id(connection_id: object) -> str:
    """Return a connection id stripped and NFC-normalised, or raise InvalidNameError."""
    return _normalize(connection_id, what="connection id")


def fold_user_name(name: object) -> str:
    """Return the form under which two spellings of a user name are one user: the canonical name casefolded (NFC)."""
    return unicodedata.normalize("NFC", normalize_user_name(name).casefold())


def user_key(name: object) -> str:
    """Return the PartitionKey for a user: the folded name, escaped."""
    return _fit(escape_key(fold_user_name(name)))


def connection_key(connection_id: object) -> str:
    """Return the RowKey for a connection id: the id, escaped (case preserved)."""
    return _fit(escape_key(normalize_connection_id(connection_id)))


def parse_room(room: object) -> str:
    """Return a room name as given, or raise InvalidNameError."""
    if not isinstance(room, str):
        raise InvalidNameError("room must be a string")
    if not _ROOM.fullmatch(room):
        raise InvalidNameError(f"room must be 1-{MAX_ROOM_LENGTH} characters of letters, digits, '-', '_' and '.'")
    return room


def membership_key(room: str) -> str:
    """Return the RowKey of a user's membership of `room`, in the user's partition."""
    return MEMBERSHIP_PREFIX + parse_room(room)


def grant_key(room: str) -> str:
    """Return the RowKey of a user's grant of `room` (a server let them in), in the user's partition."""
    return GRANT_PREFIX + parse_room(room)


def revoked_key(room: str) -> str:
    """Return the RowKey of a user's revocation of `room` (their connections leave its group), in their partition."""
    return REVOKED_PREFIX + parse_room(room)


def room_partition(room: str) -> str:
    """Return the PartitionKey of a room's member index (one row per member, keyed by user key)."""
    return ROOM_PREFIX + parse_room(room)


def escape_key(text: str) -> str:
    """Percent-encode the characters Table Storage forbids in keys, and `%` itself."""
    return _ESCAPED.sub(lambda match: "".join(f"%{byte:02X}" for byte in match.group().encode()), text)


def unescape_key(key: str) -> str:
    """Invert escape_key."""
    return _ESCAPE_SEQUENCE.sub(lambda match: bytes.fromhex(match.group().replace("%", "")).decode(), key)


def _normalize(value: object, *, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidNameError(f"{what} must be a string")
    if _SURROGATE.search(value):
        raise InvalidNameError(f"{what} is not valid Unicode")
    normalized = unicodedata.normalize("NFC", value).strip()
    if not normalized:
        raise InvalidNameError(f"{what} must not be empty")
    if len(normalized) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{what} must be at most {MAX_NAME_LENGTH} characters")
    return normalized


def new_user_name(name: object) -> str:
    """Return a name a user may sign in with: a valid user name without format characters (category Cf: bidirectional
    overrides, zero-width characters), so it looks like what it is; or raise InvalidNameError. Checked at negotiate
    only: names already stored keep working everywhere else."""
    normalized = normalize_user_name(name)
    if has_format_characters(normalized):
        raise InvalidNameError("user name must not hold invisible format characters (bidirectional, zero-width)")
    return normalized


def has_format_characters(text: str) -> bool:
    """Return whether `text` holds a Unicode format character (category Cf: bidirectional controls, zero-width)."""
    return any(unicodedata.category(character) == "Cf" for character in text)


def _fit(key: str) -> str:
    # Rare: a long name of escaped or case-expanding characters. Keep the key deterministic and
    # within the limit; the row still stores the name as received. `%~` never occurs in an escaped
    # key (every `%` there starts `%XX`), so a shortened key cannot equal an ordinary one.
    if _utf16_units(key) <= MAX_KEY_UTF16_UNITS:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{_prefix(key, _LONG_KEY_PREFIX_UNITS)}%~{digest}"


def _prefix(key: str, units: int) -> str:
    # Cut by UTF-16 units, never inside a `%XX` sequence.
    end, used = 0, 0
    while end < len(key) and used + _utf16_units(key[end]) <= units:
        used += _utf16_units(key[end])
        end += 1
    partial = key.rfind("%", max(0, end - 2), end)
    return key[:partial] if partial != -1 else key[:end]


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


MAX_PAGE_LIMIT = 1000
_CURSOR_PREFIX = "u1."
_MAX_CURSOR_LENGTH = 2048


def check_limit(limit: int) -> int:
    """Return a page size, or raise InvalidRequestError when it is outside 1..1000."""
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE_LIMIT}")
    return limit


def encode_cursor(key: str) -> str:
    """Return the cursor of the page that follows `key`."""
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Return the key a cursor names, or raise InvalidRequestError for anything this API did not return."""
    if not cursor.startswith(_CURSOR_PREFIX) or len(cursor) > _MAX_CURSOR_LENGTH:
        raise InvalidRequestError("next is not a cursor this API returned")
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        after = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not after:
        raise InvalidRequestError("next is not a cursor this API returned")
    return after
