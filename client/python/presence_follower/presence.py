"""The presence map: users' states merged by version only, followed rooms' members, watched rooms' occupancy; no I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias, TypeGuard

from .names import _safe_fold, check_room, fold_user_name

logger = logging.getLogger("follow_presence")  # one log for the whole follower


def _notify(handler: Callable[..., None] | None, *arguments: Any) -> None:
    """Call a handler; one that raises is logged and must not stop the merge or the connection."""
    if handler is None:
        return
    try:
        handler(*arguments)
    except Exception:
        logger.exception("a presence handler raised")


@dataclass(frozen=True)
class UserState:
    """One user's presence as the server decided it; `version` only grows per user (0: never seen)."""

    user: str
    online: bool
    connections: int
    status: str | None
    last_seen: str | None
    version: int

    @classmethod
    def from_json(cls, entry: object) -> UserState | None:
        """Read a `presence` message or a snapshot entry; None when it is not one."""
        if not isinstance(entry, Mapping):
            return None
        user, version = entry.get("user"), entry.get("version")
        if not isinstance(user, str) or not isinstance(version, int) or isinstance(version, bool):
            return None
        status, last_seen = entry.get("status"), entry.get("lastSeen")
        return cls(
            user=user,
            online=entry.get("online") is True,
            connections=_whole(entry.get("connections"), 0),
            status=status if isinstance(status, str) else None,
            last_seen=last_seen if isinstance(last_seen, str) else None,
            version=version,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the state in the server's shape (`lastSeen`)."""
        state = asdict(self)
        state["lastSeen"] = state.pop("last_seen")
        return state


@dataclass(frozen=True)
class Occupancy:
    """A room's occupancy as the server counted it: members, how many are online; `version` only grows per room."""

    room: str
    members: int
    online: int
    version: int

    @classmethod
    def from_json(cls, message: object) -> Occupancy | None:
        """Read an `occupancy` message `{room, members, online, version}`; None when it is not one."""
        if not isinstance(message, Mapping):
            return None
        room, members, online, version = (message.get(name) for name in ("room", "members", "online", "version"))
        if not (isinstance(room, str) and _integer(members) and _integer(online) and _integer(version)):
            return None
        return cls(room=room, members=members, online=online, version=version)

    def to_json(self) -> dict[str, Any]:
        """Return the occupancy in the server's shape."""
        return asdict(self)


ChangeHandler: TypeAlias = Callable[[UserState, UserState | None], None]
SyncHandler: TypeAlias = Callable[[str | None], None]
MembersHandler: TypeAlias = Callable[[str, str, bool], None]
OccupancyHandler: TypeAlias = Callable[[Occupancy], None]


@dataclass
class _Room:
    members: dict[str, str] = field(default_factory=dict)  # folded user -> name
    pages: dict[int, list[str]] | None = None  # a snapshot being assembled: page -> names
    total: int = 0
    since: list[tuple[str, bool]] = field(default_factory=list)  # joins and leaves heard while pages came
    synced: bool = False


class Presence:
    """Users' states by version, followed rooms' members, watched rooms' occupancy. No I/O: feed it messages."""

    def __init__(
        self,
        *,
        on_change: ChangeHandler | None = None,
        on_sync: SyncHandler | None = None,
        on_members: MembersHandler | None = None,
        on_occupancy: OccupancyHandler | None = None,
    ) -> None:
        self.on_change = on_change
        self.on_sync = on_sync
        self.on_members = on_members
        self.on_occupancy = on_occupancy
        self._states: dict[str, UserState] = {}
        self._rooms: dict[str, _Room] = {}
        self._occupancy: dict[str, Occupancy | None] = {}  # room watched -> the highest-versioned occupancy heard

    def of(self, user: str) -> UserState | None:
        """Return the latest state heard of `user` (any case of the name), or None."""
        key = _safe_fold(user)
        return self._states.get(key) if key is not None else None

    def states(self) -> list[UserState]:
        """Return every user's latest state."""
        return list(self._states.values())

    def rooms(self) -> list[str]:
        """Return the rooms followed."""
        return list(self._rooms)

    def members(self, room: str) -> list[UserState]:
        """Return a followed room's members (last snapshot, then joins and leaves) with their latest states."""
        tracked = self._rooms.get(room)
        if tracked is None:
            return []
        never = UserState  # a member heard of only by name: never seen, version 0
        return [self._states.get(key) or never(name, False, 0, None, None, 0) for key, name in tracked.members.items()]

    def synced(self, room: str) -> bool:
        """Return whether a complete snapshot of `room` arrived (on this or an earlier connection)."""
        tracked = self._rooms.get(room)
        return tracked is not None and tracked.synced

    def occupancy(self, room: str) -> Occupancy | None:
        """Return the latest occupancy heard of a watched room, or None."""
        return self._occupancy.get(room)

    def occupancy_rooms(self) -> list[str]:
        """Return the rooms whose occupancy is watched."""
        return list(self._occupancy)

    def follow_occupancy(self, room: str) -> None:
        """Start keeping the occupancy of `room` (its `occupancy` messages arrive after `watchOccupancy`)."""
        self._occupancy.setdefault(check_room(room), None)

    def unfollow_occupancy(self, room: str) -> None:
        """Forget the occupancy of `room`; its messages are ignored from now on."""
        self._occupancy.pop(room, None)

    def follow(self, room: str) -> None:
        """Start keeping the members of `room` (its snapshot arrives after the join)."""
        self._rooms.setdefault(check_room(room), _Room())

    def unfollow(self, room: str) -> None:
        """Forget the members of `room`."""
        self._rooms.pop(room, None)

    def restart(self) -> None:
        """Drop snapshots half received (a new connection): members and states stay until the new snapshots."""
        for tracked in self._rooms.values():
            tracked.pages, tracked.total, tracked.since = None, 0, []

    def merge(self, entry: object) -> UserState | None:
        """Keep `entry` if its version is higher than the one held for its user; return it then, else None."""
        state = UserState.from_json(entry)
        key = _safe_fold(state.user) if state is not None else None
        if state is None or key is None:
            return None
        previous = self._states.get(key)
        if previous is not None and previous.version >= state.version:
            return None  # a repeat, or older than what we hold
        self._states[key] = state
        _notify(self.on_change, state, previous)
        return state

    def merge_batch(self, batch: object) -> list[UserState]:
        """Merge a `presenceBatch` `{room, base, users}`, each tuple as a `presence` message; return the states kept."""
        if not isinstance(batch, Mapping) or not isinstance(batch.get("users"), list):
            return []
        room, base = batch.get("room"), batch.get("base")
        if not isinstance(room, str) or not _integer(base):
            return []
        entries = (_batch_entry(room, base, entry) for entry in batch["users"])
        kept = (self.merge(entry) for entry in entries if entry is not None)
        return [state for state in kept if state is not None]

    def merge_occupancy(self, message: object) -> Occupancy | None:
        """Keep a watched room's `occupancy` if its version is higher than the one held; return it then, else None."""
        occupancy = Occupancy.from_json(message)
        if occupancy is None or occupancy.room not in self._occupancy:
            return None  # not one, or a room not watched (any more)
        previous = self._occupancy[occupancy.room]
        if previous is not None and previous.version >= occupancy.version:
            return None  # a repeat, or older than what we hold
        self._occupancy[occupancy.room] = occupancy
        _notify(self.on_occupancy, occupancy)
        return occupancy

    def merge_sync(self, snapshot: object) -> bool:
        """Merge a `presenceSync` page `{room, users, page, pages}`; True when a room's (or a watch's) snapshot is
        complete with it."""
        if not isinstance(snapshot, Mapping) or not isinstance(snapshot.get("users"), list):
            return False
        entries = [state for state in map(UserState.from_json, snapshot["users"]) if state is not None]
        for entry in snapshot["users"]:
            self.merge(entry)
        room = snapshot.get("room")
        if room is None:
            _notify(self.on_sync, None)
            return True
        tracked = self._rooms.get(room) if isinstance(room, str) else None
        if tracked is None:
            return False
        page, pages = _whole(snapshot.get("page"), 1), _whole(snapshot.get("pages"), 1)
        if tracked.pages is None or tracked.total != pages or page in tracked.pages:
            tracked.pages, tracked.total, tracked.since = {}, pages, []  # a page seen already starts a newer one
        tracked.pages[page] = [state.user for state in entries]
        if len(tracked.pages) < pages:
            return False
        members: dict[str, str] = {}
        for _page, names in sorted(tracked.pages.items()):  # in page order: the server's key order
            members.update((fold_user_name(name), name) for name in names if _safe_fold(name) is not None)
        for user, joined in tracked.since:
            _apply_membership(members, user, joined)
        tracked.members, tracked.pages, tracked.total, tracked.since, tracked.synced = members, None, 0, [], True
        _notify(self.on_sync, room)
        return True

    def merge_room(self, change: object) -> None:
        """Apply a `room` message `{room, user, joined}` to a followed room's members."""
        if not isinstance(change, Mapping):
            return
        room, user, joined = change.get("room"), change.get("user"), change.get("joined") is True
        tracked = self._rooms.get(room) if isinstance(room, str) else None
        if tracked is None or not isinstance(user, str) or not isinstance(room, str):
            return
        _apply_membership(tracked.members, user, joined)
        if tracked.pages is not None:
            tracked.since.append((user, joined))
        _notify(self.on_members, room, user, joined)


def _batch_entry(room: str, base: int, entry: object) -> dict[str, Any] | None:
    """Return the `presence` message of `room` a batch tuple stands for (see `merge_batch`), or None if malformed."""
    # [user, online (1 or 0), connections, status or None, versionOffset (the version less the batch's base), lastSeen]
    if not isinstance(entry, list | tuple) or len(entry) != 6:
        return None
    user, online, connections, status, offset, last_seen = entry
    if not isinstance(user, str) or _safe_fold(user) is None:
        return None
    if not (_integer(online) and online in (0, 1) and _integer(connections) and connections >= 0):
        return None
    if not (_integer(offset) and offset >= 0):
        return None
    if not (status is None or isinstance(status, str)) or not (last_seen is None or isinstance(last_seen, str)):
        return None
    return {
        "user": user,
        "online": online == 1,
        "connections": connections,
        "status": status,
        "lastSeen": last_seen,
        "version": base + offset,
        "room": room,
    }


def _apply_membership(members: dict[str, str], user: str, joined: bool) -> None:
    key = _safe_fold(user)
    if key is None:
        return
    if joined:
        members[key] = user
    else:
        members.pop(key, None)


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
