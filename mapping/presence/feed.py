"""The presence feed: presence and membership changes as JSON messages on a Storage queue, for backends.

With `PRESENCE_FEED_QUEUE` set, every announcement also puts one message on that queue of `AzureWebJobsStorage`
(Put Message, one queue request), so a queue-triggered function elsewhere hears presence without a SignalR client.
Each message has a `kind` (`presence`, `joined`, `left`, `occupied`, `vacated`), a `subject` (`user:<folded name>`
for presence, `member:<room>/<folded name>` for a membership: the name casefolded, as `mapping.keys.fold_user_name`
and the client's `foldUserName` fold it; `room:<room>` for occupancy), the subject's `version` and the time it was put
(`at`). Invariants:

F1. A message states a pair as recorded (P1) or a membership as committed, under its version: a consumer keeps the
    highest version per subject and drops the rest, whatever the order of delivery. A membership's version is the
    time of its change in milliseconds, taken on the attempt that commits (the join's `JoinedAt`; the leave's or
    revoke's flag, at least a millisecond after the join's): a grant of a member and a repeat state the same version.
F2. A message is put with its announcement: after the roster copies (roster C2) and before the function's SignalR
    messages leave; a put that fails raises, so the announcement is lost with it and made again, with its message
    (P5: the sweep's repeat of a recorded pair; a client's or server's retry of a join, leave, grant or revoke, which
    repeats the announcement within a minute, rooms R5; nothing repeats a membership's message later). Delivery is at
    least once: a put answered with an error may have enqueued the message, and the sweep's P5 repeat puts a
    presence pair again even when the first put went through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from mapping.errors import ConfigurationError
from mapping.keys import fold_user_name
from mapping.presence.rows import iso
from mapping.presence.state import PresenceChange

logger = logging.getLogger(__name__)

PRESENCE = "presence"
JOINED = "joined"
LEFT = "left"
OCCUPIED = "occupied"
VACATED = "vacated"
BY_USER = "user"
BY_SERVER = "server"


class Sender(Protocol):
    """Where a feed message is put: a queue that takes a body now (`mapping.storage.queue.QueueDelayedActions`)."""

    async def schedule(self, body: str, *, delay: timedelta) -> None:
        """Enqueue `body`; raise StorageError when it could not be sent."""
        ...

    async def close(self) -> None:
        """Release the client."""
        ...


class _Unqueued:
    """No delayed queue (AzureWebJobsStorage has none): what would wait on one is done at once instead."""

    async def schedule(self, body: str, *, delay: timedelta) -> None:
        """Refuse: nothing may wait on a queue that is not there."""
        raise ConfigurationError("no queue for delayed actions: set AzureWebJobsStorage")

    async def close(self) -> None:
        """Nothing to release."""


UNQUEUED: Sender = _Unqueued()


class Feed(Protocol):
    """The presence feed as the announcements see it: put one message, or nothing when the feed is off."""

    async def put(self, message: Mapping[str, Any]) -> None:
        """Put one feed message; raise StorageError when it could not be put (F2)."""
        ...

    async def close(self) -> None:
        """Release what the feed holds."""
        ...


class _NoFeed:
    """The feed when `PRESENCE_FEED_QUEUE` is empty: puts nothing, costs nothing."""

    async def put(self, message: Mapping[str, Any]) -> None:
        """Put nothing."""

    async def close(self) -> None:
        """Nothing to release."""


NO_FEED: Feed = _NoFeed()


class QueueFeed:
    """The feed on a Storage queue: one Put Message per message, visible at once."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender

    async def put(self, message: Mapping[str, Any]) -> None:
        """Put one message as compact JSON (a few hundred bytes; the queue takes 48 KiB)."""
        await self._sender.schedule(encode(message), delay=timedelta(0))

    async def close(self) -> None:
        """Close the queue client."""
        await self._sender.close()


def encode(message: Mapping[str, Any]) -> str:
    """Return a feed message's body: compact JSON, UTF-8 text."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def presence_message(change: PresenceChange, *, at: datetime) -> dict[str, Any]:
    """Return the feed message of a recorded pair: the user's state (`online`, `connections`, `status`, `lastSeen`)."""
    return {
        "kind": PRESENCE,
        "subject": f"user:{fold_user_name(change.user)}",
        **change.to_json(),
        "at": iso(at),
    }


def membership_message(
    room: str, user: str, *, joined: bool, by: str, changed_at: datetime, at: datetime
) -> dict[str, Any]:
    """Return the feed message of a membership change: `joined` or `left`, made by the user or a server (`by`)."""
    return {
        "kind": JOINED if joined else LEFT,
        "subject": f"member:{room}/{fold_user_name(user)}",
        "room": room,
        "user": user,
        "by": by,
        "version": milliseconds(changed_at),
        "at": iso(at),
    }


def occupancy_message(
    room: str, *, occupied: bool, members: int, online: int, version: int, at: datetime
) -> dict[str, Any]:
    """Return the feed message of a room whose first member came online (`occupied`) or last went offline
    (`vacated`), under its tally's version (`mapping.rooms.tally`, T2)."""
    return {
        "kind": OCCUPIED if occupied else VACATED,
        "subject": f"room:{room}",
        "room": room,
        "members": members,
        "online": online,
        "version": version,
        "at": iso(at),
    }


def milliseconds(moment: datetime) -> int:
    """Return a moment as whole milliseconds since the epoch (a membership's version)."""
    return int(moment.timestamp() * 1000)
