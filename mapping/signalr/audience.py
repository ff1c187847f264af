"""Who hears a user's presence, and the messages that reach them: changes, and snapshots (`presenceSync`).

With `PRESENCE_AUDIENCE=scoped` (the default) a change of a user's presence goes to:

- the SignalR group of each room the user is a member of (the message names the room);
- the user's presence group `~presence.<user key>`: every connection that watches the user (`watch`),
  and the user's own connections (each joins it when it connects).

Nobody else receives it. With `hub`, one message goes to every connection of the hub (small apps).
Either way a client asks for the state before it arrived with a snapshot: `presenceSync`, sent to the
asking connection only, whose entries are pairs as recorded (`mapping.rooms.roster`, C1).

A room's occupancy (its tally, `mapping.rooms.tally`) goes to the room's occupancy group `~occupancy.<room>`: the
connections that `watchOccupancy(room)`, which hear the counts and not each member's presence.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mapping.keys import user_key
from mapping.presence.state import PresenceChange
from mapping.rooms.roster import RosterEntry
from mapping.rooms.tally import Tally, TallyChange
from mapping.signalr.messages import BATCH_TARGET, OCCUPANCY_TARGET, PRESENCE_TARGET, SYNC_TARGET, Message

PRESENCE_GROUP_PREFIX = "~presence."  # room names never hold `~`: no room's group can take this name
OCCUPANCY_GROUP_PREFIX = "~occupancy."
SYNC_PAGE = 100  # entries per presenceSync message (about 12 KB)
BATCH_BYTES = (
    1900  # a presenceBatch argument's JSON at most: framed (about 50 bytes more) it is one billed 2 KB message
)


def presence_group(user: str) -> str:
    """Return the SignalR group of a user's watchers and own connections."""
    return PRESENCE_GROUP_PREFIX + user_key(user)


def occupancy_group(room: str) -> str:
    """Return the SignalR group of the connections that watch a room's occupancy."""
    return OCCUPANCY_GROUP_PREFIX + room


def occupancy_messages(changes: Sequence[TallyChange]) -> list[Message]:
    """Return one `occupancy` message per room to its occupancy group: the newest of the room's tallies."""
    newest: dict[str, Tally] = {}
    for change in changes:
        held = newest.get(change.room)
        if held is None or change.after.version > held.version:
            newest[change.room] = change.after
    return [occupancy_message(room, tally) for room, tally in newest.items()]


def occupancy_message(room: str, tally: Tally, *, to: str | None = None) -> Message:
    """Return a room's occupancy `{room, members, online, version}` to its occupancy group (or one connection)."""
    audience = {"connectionId": to} if to is not None else {"groupName": occupancy_group(room)}
    return {"target": OCCUPANCY_TARGET, **audience, "arguments": [tally.to_json(room)]}


def presence_messages(change: PresenceChange, *, audience: str) -> list[Message]:
    """Return the messages that announce a change to its audience (`scoped`: rooms, watchers, own tabs; `hub`)."""
    payload = change.to_json()
    if audience == "hub":
        return [{"target": PRESENCE_TARGET, "arguments": [payload]}]
    messages: list[Message] = [
        {"target": PRESENCE_TARGET, "groupName": presence_group(change.user), "arguments": [payload]}
    ]
    return messages + [room_presence(change, room) for room in change.rooms]


def room_presence(change: PresenceChange, room: str) -> Message:
    """Return a user's pair to one room's group (a member who just joined, for the others)."""
    return {"target": PRESENCE_TARGET, "groupName": room, "arguments": [{**change.to_json(), "room": room}]}


def batch_messages(room: str, pairs: Sequence[PresenceChange]) -> list[Message]:
    """Return a flush's `presenceBatch` messages to a big room's group (`mapping.rooms.batch`): `{room, base, users}`,
    each at most BATCH_BYTES of JSON, an entry `[user, online (1 or 0), connections, status, version - base,
    lastSeen]`, so about 30 entries are one billed message."""
    return [
        {"target": BATCH_TARGET, "groupName": room, "arguments": [argument]}
        for argument in batch_arguments(room, sorted(pairs, key=lambda pair: pair.version))
    ]


def batch_arguments(room: str, pairs: Sequence[PresenceChange]) -> list[dict[str, Any]]:
    """Return the arguments of a flush's messages: pairs in version order, split at BATCH_BYTES."""
    batches: list[dict[str, Any]] = []
    current: list[list[Any]] = []
    base, size = 0, 0
    for pair in pairs:
        if not current:
            base = pair.version
            size = _json_size({"room": room, "base": base, "users": []})
        entry = _entry(pair, base)
        entry_size = _json_size(entry) + 1
        if current and size + entry_size > BATCH_BYTES:
            batches.append({"room": room, "base": base, "users": current})
            current, base = [], pair.version
            size = _json_size({"room": room, "base": base, "users": []})
            entry = _entry(pair, base)
        current.append(entry)
        size += entry_size
    if current:
        batches.append({"room": room, "base": base, "users": current})
    return batches


def _entry(pair: PresenceChange, base: int) -> list[Any]:
    """One member's pair in a batch, as a `presence` message states it (its version less the batch's base)."""
    state = pair.state.to_json()
    return [
        pair.user,
        1 if pair.state.online else 0,
        state["connections"],
        state["status"],
        pair.version - base,
        state["lastSeen"],
    ]


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def sync_messages(connection_id: str, entries: Sequence[RosterEntry], *, room: str | None) -> list[Message]:
    """Return a snapshot for one connection, in pages: `{room, users, page, pages}` (room None: watched users)."""
    pages = [entries[i : i + SYNC_PAGE] for i in range(0, len(entries), SYNC_PAGE)] or [[]]
    return [
        {
            "target": SYNC_TARGET,
            "connectionId": connection_id,
            "arguments": [
                {"room": room, "users": [entry.to_json() for entry in page], "page": number, "pages": len(pages)}
            ],
        }
        for number, page in enumerate(pages, start=1)
    ]
