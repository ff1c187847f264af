"""The store's read-only answers: a user's presence, a user's live connections, and the online users page by page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mapping.keys import check_limit, decode_cursor, encode_cursor, normalize_user_name, user_key
from mapping.presence.lease import Lease
from mapping.presence.rows import ConnectionEntity
from mapping.presence.state import PresenceState
from mapping.presence.user_view import read_user
from mapping.storage.table import Table, etag_of


@dataclass(frozen=True, slots=True)
class OnlineUser:
    """A user with at least one live connection."""

    user: str
    connections: int


@dataclass(frozen=True, slots=True)
class UsersPage:
    """One page of online users, and the cursor of the next page (None on the last)."""

    users: list[OnlineUser]
    next: str | None


@dataclass(frozen=True, slots=True)
class UserPresence:
    """What `GET /api/users/{user}` tells: the user's presence state, live connections and rooms."""

    user: str
    state: PresenceState
    connections: list[ConnectionEntity]
    rooms: tuple[str, ...]
    blocked: bool = False
    grants: tuple[str, ...] = ()  # rooms a server granted the user (`PUT /api/rooms/{room}/members/{user}`)


async def presence_of(table: Table, lease: Lease, user_name: str, *, now: datetime) -> UserPresence:
    """Return a user's presence as their rows give it at `now` (one query), with their connections and rooms."""
    name = normalize_user_name(user_name)
    view = await read_user(table, user_key(name))
    live = view.live(lease, now=now)
    return UserPresence(
        name, view.state_now(lease, now=now), live, tuple(sorted(view.rooms)), view.blocked, tuple(sorted(view.grants))
    )


async def connections_of(table: Table, lease: Lease, user_name: str, *, now: datetime) -> list[ConnectionEntity]:
    """Return the live connections of a user (case-insensitive), oldest first."""
    rows = await table.query(
        "PartitionKey eq @pk and LastSeen gt @cutoff",
        {"pk": user_key(user_name), "cutoff": lease.live_after(now)},
        action="read connections",
    )
    entities = [ConnectionEntity.from_table(row, etag=etag_of(row)) for row in rows]
    entities = [entity for entity in entities if entity.ended_at is None]  # closed, held by a grace
    return sorted(entities, key=lambda entity: (entity.connected_at, entity.connection_id))


async def online_users(table: Table, lease: Lease, *, limit: int, cursor: str | None, now: datetime) -> UsersPage:
    """Return a page of users with live connections, in key order, and the cursor of the next page."""
    check_limit(limit)
    after = decode_cursor(cursor) if cursor else None
    query = "LastSeen gt @cutoff" if after is None else "PartitionKey gt @after and LastSeen gt @cutoff"
    parameters: dict[str, Any] = {"cutoff": lease.live_after(now)}
    if after is not None:
        parameters["after"] = after
    users: list[OnlineUser] = []
    keys: list[str] = []
    pages = table.pages(query, parameters, action="list online users", select=["PartitionKey", "UserName"])
    async for page in pages:
        for row in page:
            if keys and keys[-1] == row["PartitionKey"]:
                users[-1] = OnlineUser(users[-1].user, users[-1].connections + 1)
                continue
            if len(users) == limit:
                return UsersPage(users, next=encode_cursor(keys[-1]))
            keys.append(row["PartitionKey"])
            users.append(OnlineUser(str(row.get("UserName") or ""), 1))
    return UsersPage(users, next=None)
