"""Watching users: a connection asks for the presence of up to 100 users a call, 200 at most, under a policy.

`watch(users)` answers the calling connection a snapshot of their pairs; `unwatch(users)` ends it. Who may be
watched is the app's policy's decision (`mapping.rooms.policy`), else `PRESENCE_WATCH`'s:

- `room-members` (the default): users who share a room with the caller's user. Their presence already reaches the
  caller through that room's group, so the watch subscribes to nothing more: it ends by itself when they no longer
  share a room (a leave, a revoke), and nobody's presence reaches a connection that has no room with them.
- `anyone`: the connection joins each user's presence group (`mapping.signalr.audience`), until it ends or unwatches.
- `nobody`.

A watch the policy allowed subscribes as `anyone` does. A refused or malformed call changes nothing. What a
connection watches is kept on its row (`Watching`: a short digest per user, so 200 users fit one property), written
on the row's ETag, so the limit of 200 holds across instances; a connection not mapped yet is told to try again.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from mapping.errors import InvalidRequestError, RefusedError, RowChangedError
from mapping.keys import connection_key, normalize_user_name, user_key
from mapping.presence.store import ConnectionStore
from mapping.presence.user_view import UserView
from mapping.rooms.policy import SETTINGS_DECIDE, AccessPolicy, Claims, asked
from mapping.rooms.roster import RosterEntry
from mapping.storage.client import gather_bounded
from mapping.storage.table import merge

MAX_WATCHED = 100  # users per watch or unwatch call
MAX_WATCHED_PER_CONNECTION = 200
_READS = 16  # watched users' partitions read at once
_ATTEMPTS = 3  # writes of a connection's watch list racing its refreshes


def parse_users(method: str, users: object) -> list[str]:
    """Return the user names of a `watch`/`unwatch` argument (a list of at most 100 names), without duplicates."""
    if not isinstance(users, list):
        raise InvalidRequestError(f"{method}: users must be a list of user names")
    if len(users) > MAX_WATCHED:
        raise InvalidRequestError(f"{method}: at most {MAX_WATCHED} users per call")
    names: dict[str, str] = {}
    for user in users:
        name = normalize_user_name(user)  # InvalidNameError: the whole call is refused
        names.setdefault(user_key(name), name)
    return list(names.values())


def watch_digest(user: str) -> str:
    """Return the short digest a connection's row keeps of a watched user (12 hex digits of the user key's SHA-256)."""
    return hashlib.sha256(user_key(user).encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Admitted:
    """A watch the policy allowed: the users whose presence groups the connection joins (not those it hears through
    a shared room already), or `mapped` False when the caller's connection has no row yet (try again)."""

    subscribed: list[str]
    mapped: bool = True


class Watching:
    """The `watch` policy, a connection's watch list, and the snapshot of watched users."""

    def __init__(self, store: ConnectionStore, *, policy: AccessPolicy = SETTINGS_DECIDE, claims: Claims | None = None):
        self.store = store
        self.policy = policy
        self.claims = dict(claims or {})

    async def admit(self, caller: str, connection: str, users: list[str]) -> Admitted:
        """Decide the watch of `users` by `caller`'s `connection` and record it on the connection's row; raise
        RefusedError, recording nothing, if any is refused or the connection would watch more than 200."""
        policy = self.store.settings.presence_watch

        async def ask(user: str) -> bool | None:
            return await asked(self.policy.may_watch(caller, user, self.claims), what="may_watch")

        answers = await gather_bounded(users, ask, limit=_READS)
        if policy == "nobody" and any(answer is None for answer in answers):
            raise RefusedError("watching users is turned off (PRESENCE_WATCH=nobody)")
        mine, views = await asyncio.gather(
            self.store.read_user(user_key(caller)),
            self._read([user_key(user) for user, answer in zip(users, answers, strict=True) if answer is None]),
        )
        if mine.blocked:
            raise RefusedError("this user is blocked")
        shared = _sharing(mine, users, answers, views) if policy == "room-members" else set()
        refused = [
            user
            for user, answer in zip(users, answers, strict=True)
            if answer is False or (answer is None and policy == "room-members" and user_key(user) not in shared)
        ]
        if refused:
            by_policy = any(answer is False for answer in answers)
            reason = "may not watch these users" if by_policy else "may watch only users who share a room with you"
            raise RefusedError(reason, refused=refused)
        subscribed = [user for user in users if user_key(user) not in shared]
        mapped = await self._record(mine, caller, connection, {watch_digest(user) for user in users}, adding=True)
        return Admitted(subscribed, mapped)

    async def forget(self, caller: str, connection: str, users: list[str]) -> bool:
        """Take `users` off the connection's watch list; False when the connection has no row (nothing to keep)."""
        mine = await self.store.read_user(user_key(caller))
        return await self._record(mine, caller, connection, {watch_digest(user) for user in users}, adding=False)

    async def snapshot(self, users: list[str]) -> list[RosterEntry]:
        """Return the recorded pair of each user (version 0 for a user never decided)."""
        views = await self._read([user_key(user) for user in users])
        return [_entry(user, view) for user, view in zip(users, views, strict=True)]

    async def _record(self, view: UserView, caller: str, connection: str, digests: set[str], *, adding: bool) -> bool:
        """Write the connection's new watch list on its row's ETag, reading again when a refresh wrote it first."""
        key = connection_key(connection)
        for _ in range(_ATTEMPTS):
            row = view.rows.get(key)
            if row is None:
                return False
            watching = row.watching | digests if adding else row.watching - digests
            if len(watching) > MAX_WATCHED_PER_CONNECTION:
                raise RefusedError(
                    f"a connection may watch at most {MAX_WATCHED_PER_CONNECTION} users: unwatch some first",
                    watching=len(row.watching),
                )
            if watching == row.watching:
                return True
            fields = {"PartitionKey": view.partition, "RowKey": key, "Watching": " ".join(sorted(watching))}
            try:
                await self.store.table.write(merge(fields, etag=row.etag), action="record a watch")
                return True
            except RowChangedError:
                view = await self.store.read_user(user_key(caller))
        raise RowChangedError("the connection's row kept changing; try again")

    async def _read(self, partitions: list[str]) -> list[UserView]:
        return await gather_bounded(partitions, self.store.read_user, limit=_READS)


def _sharing(mine: UserView, users: list[str], answers: list[bool | None], views: list[UserView]) -> set[str]:
    """Return the keys of the users the settings decide on who share a room with the caller (or are the caller)."""
    undecided = [user for user, answer in zip(users, answers, strict=True) if answer is None]
    return {
        user_key(user)
        for user, view in zip(undecided, views, strict=True)
        if view.partition == mine.partition or mine.rooms.keys() & view.rooms.keys()
    }


def _entry(user: str, view: UserView) -> RosterEntry:
    name = view.name() if view.rows or view.presence.user_name else user
    return RosterEntry.of(name, view.presence.announced_as(name))
