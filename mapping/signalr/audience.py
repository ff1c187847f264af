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

from collections.abc import Sequence

from mapping.keys import user_key
from mapping.presence.state import PresenceChange
from mapping.rooms.roster import RosterEntry
from mapping.rooms.tally import Tally, TallyChange
from mapping.signalr.messages import OCCUPANCY_TARGET, PRESENCE_TARGET, SYNC_TARGET, Message

PRESENCE_GROUP_PREFIX = "~presence."  # room names never hold `~`: no room's group can take this name
OCCUPANCY_GROUP_PREFIX = "~occupancy."
SYNC_PAGE = 100  # entries per presenceSync message (about 12 KB)


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
