"""Keyset paging for the 2024-12-01 listing of a group's connections: pages in connection-id order, opaque cursors.

A page holds the members whose id sorts after the cursor's last id, so a member present for the whole listing
is returned exactly once whatever joins or leaves in between; one that joins later shows up if its id sorts
after the cursor. The continuation token is signed and bound to its hub and group.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = MAX_PAGE_SIZE  # the API documents 1 to 200, not a default: the largest


class PagingError(ValueError):
    """A paging parameter or continuation token is not valid."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a listing stands: after which connection id, how many members may still come, and the page size."""

    hub: str
    group: str
    after: str
    remaining: int | None
    page_size: int


@dataclass(frozen=True, slots=True)
class Page:
    """One page of member ids and the cursor of the next page (None on the last one)."""

    ids: list[str]
    next: Cursor | None


def page_of(ids: Iterable[str], *, hub: str, group: str, after: str | None, limit: int | None, page_size: int) -> Page:
    """Return the page of `ids` after `after` in code-point order, at most `page_size` and `limit` long."""
    size = page_size if limit is None else min(page_size, limit)
    if size <= 0:
        return Page([], None)
    candidates = (i for i in ids if after is None or i > after)
    chosen = heapq.nsmallest(size + 1, candidates)
    page, more = chosen[:size], len(chosen) > size
    remaining = None if limit is None else limit - len(page)
    if not more or remaining == 0:
        return Page(page, None)
    return Page(page, Cursor(hub=hub, group=group, after=page[-1], remaining=remaining, page_size=page_size))


def encode(cursor: Cursor, secret: bytes) -> str:
    """Return the opaque, signed continuation token of a cursor."""
    fields = [cursor.hub, cursor.group, cursor.after, cursor.remaining, cursor.page_size]
    body = _b64(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode())
    return f"{body}.{_b64(_mac(body, secret))}"


def decode(token: str, secret: bytes, *, hub: str, group: str) -> Cursor:
    """Return the cursor a token carries; raise PagingError if it is malformed, forged, or for another hub or group."""
    body, _, signature = token.partition(".")
    try:
        if not hmac.compare_digest(_unb64(signature), _mac(body, secret)):
            raise PagingError("the continuation token is not valid")
        token_hub, token_group, after, remaining, page_size = json.loads(_unb64(body))
    except (ValueError, TypeError):
        raise PagingError("the continuation token is not valid") from None
    if token_hub != hub or token_group != group:
        raise PagingError("the continuation token belongs to another hub or group")
    return Cursor(hub=hub, group=group, after=str(after), remaining=remaining, page_size=int(page_size))


def parse_count(raw: str | None, name: str, *, maximum: int | None = None) -> int | None:
    """Parse a positive whole-number query parameter (None when absent); raise PagingError otherwise."""
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1 or (maximum is not None and int(raw) > maximum):
        bound = f"between 1 and {maximum}" if maximum is not None else "at least 1"
        raise PagingError(f"{name} must be a whole number {bound}")
    return int(raw)


def _mac(body: str, secret: bytes) -> bytes:
    return hmac.new(secret, body.encode(), hashlib.sha256).digest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
