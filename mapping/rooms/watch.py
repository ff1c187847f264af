"""Watching users: a connection subscribes to the presence of up to 100 users it names, under a policy.

`watch(users)` adds the calling connection to each user's presence group (`mapping.signalr.audience`) and
answers it with a snapshot of their pairs; `unwatch(users)` removes it. A subscription belongs to the
connection (SignalR groups end with it). `PRESENCE_WATCH` decides who may be watched: `anyone`,
`room-members` (only users who share a room with the caller, checked when the watch is asked), or
`nobody`. A refused or malformed call changes nothing.
"""

from __future__ import annotations

from mapping.errors import InvalidRequestError, RefusedError
from mapping.keys import normalize_user_name, user_key
from mapping.presence.store import ConnectionStore
from mapping.presence.user_view import UserView
from mapping.rooms.roster import RosterEntry
from mapping.storage.client import gather_bounded

MAX_WATCHED = 100  # users per watch or unwatch call
_READS = 16  # watched users' partitions read at once


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


class Watching:
    """The `watch` policy and the snapshot of watched users."""

    def __init__(self, store: ConnectionStore) -> None:
        self.store = store

    async def check(self, caller: str, users: list[str]) -> None:
        """Raise RefusedError if the policy refuses `caller` watching any of `users`."""
        policy = self.store.settings.presence_watch
        if policy == "nobody" and users:
            raise RefusedError("watching users is turned off (PRESENCE_WATCH=nobody)")
        if policy != "room-members" or not users:
            return
        views = await self._read([user_key(user) for user in users])
        mine = (await self.store.read_user(user_key(caller))).rooms.keys()
        refused = [user for user, view in zip(users, views, strict=True) if not mine & view.rooms.keys()]
        if refused:
            raise RefusedError("may watch only users who share a room with you", refused=refused)

    async def snapshot(self, users: list[str]) -> list[RosterEntry]:
        """Return the recorded pair of each user (version 0 for a user never decided)."""
        views = await self._read([user_key(user) for user in users])
        return [_entry(user, view) for user, view in zip(users, views, strict=True)]

    async def _read(self, partitions: list[str]) -> list[UserView]:
        return await gather_bounded(partitions, self.store.read_user, limit=_READS)


def _entry(user: str, view: UserView) -> RosterEntry:
    name = view.name() if view.rows or view.presence.user_name else user
    return RosterEntry.of(name, view.presence.announced_as(name))
