"""Page cursors of the listing endpoints: an opaque token naming the last key a page returned."""

from __future__ import annotations

import base64
import binascii

from mapping.errors import InvalidRequestError

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
