"""The Python presence follower's big-room batches (`presenceBatch`) and rooms' occupancy (`occupancy`,
watchOccupancy, unwatchOccupancy), fed messages without a server: the map alone, and the follower on a fake socket."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest

from client.python.follow_presence import Backoff, Occupancy, Presence, PresenceFollower, UserState

RECORD_SEPARATOR = "\x1e"
V = 1_780_000_000_000  # versions are milliseconds: a batch's base is near them, its offsets small


def state(user: str, version: int, online: bool = True, **extra: Any) -> dict[str, Any]:
    """Return a `presence` entry in the server's shape."""
    return {
        "user": user,
        "online": online,
        "connections": 1 if online else 0,
        "status": None,
        "lastSeen": None if online else "2026-12-03T10:00:00Z",
        "version": version,
        **extra,
    }


def occupancy(room: str, version: int, online: int, members: int = 500) -> dict[str, Any]:
    """Return an `occupancy` message's argument."""
    return {"room": room, "members": members, "online": online, "version": version}


Change = tuple[UserState, UserState | None]


def recording() -> tuple[Presence, list[Change]]:
    """Return a map and the list its `on_change` appends (state, previous) to."""
    changes: list[Change] = []
    return Presence(on_change=lambda current, previous: changes.append((current, previous))), changes


class FakeSocket:
    """The part of aiohttp's WebSocket the follower uses: keeps the records sent, and reads a close at once."""

    def __init__(self) -> None:
        self.closed = False
        self.records: list[dict[str, Any]] = []

    async def send_str(self, data: str) -> None:
        self.records.extend(json.loads(record) for record in data.split(RECORD_SEPARATOR) if record)

    async def receive(self, **options: Any) -> SimpleNamespace:
        return SimpleNamespace(type=aiohttp.WSMsgType.CLOSE, data=None)

    async def close(self) -> None:
        self.closed = True

    def calls(self) -> list[tuple[str, list[Any]]]:
        """Return the hub invocations sent, as (target, arguments)."""
        return [(record["target"], record["arguments"]) for record in self.records if record.get("type") == 1]


def follower_on(socket: FakeSocket | None, **options: Any) -> PresenceFollower:
    """Return a follower that never negotiates, sending on `socket` as if connected (None: not connected)."""
    follower = PresenceFollower("http://127.0.0.1:9/api", **options)
    follower._socket = cast(Any, socket)
    return follower


async def connect(follower: PresenceFollower, socket: FakeSocket) -> None:
    """Run one connection of the follower on `socket` (the service closes it at once), as `_run` does after a drop."""
    first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await follower._serve(cast(Any, socket), f"connection-{id(socket)}", [], first)
    follower._socket, follower._connection_id = None, None


def invocation(target: str, argument: object) -> str:
    """Return a hub protocol invocation record of `target` with one argument."""
    return json.dumps({"type": 1, "target": target, "arguments": [argument]})


def batch_of(room: str, entries: list[dict[str, Any]], base: int | None = None) -> dict[str, Any]:
    """Return a `presenceBatch` of `room` as the server encodes it: the entries as tuples, versions less `base`."""
    base = min(entry["version"] for entry in entries) if base is None else base
    fields = ("user", "online", "connections", "status", "version", "lastSeen")
    users = [[entry[name] for name in fields] for entry in entries]
    for user in users:
        user[1], user[4] = 1 if user[1] else 0, user[4] - base
    return {"room": room, "base": base, "users": users}


def test_a_batch_entry_and_a_presence_message_of_the_same_version_give_the_same_state_and_change() -> None:
    """A tuple decodes to its room's `presence` message: the same state kept, the same one on_change call."""
    single, single_changes = recording()
    batched, batched_changes = recording()
    entry = state("Ada", V + 7, connections=3, status="in a call")
    assert single.merge({**entry, "room": "big"}) is not None
    kept = batched.merge_batch({"room": "big", "base": V, "users": [["Ada", 1, 3, "in a call", 7, None]]})
    assert single_changes == [(UserState("Ada", True, 3, "in a call", None, V + 7), None)]
    assert batched_changes == single_changes
    assert kept == [single_changes[0][0]]
    assert batched.of("ada") == single.of("ada")
    assert batched.merge_batch(batch_of("big", [entry])) == []
    assert single.merge({**entry, "room": "big"}) is None
    assert len(batched_changes) == len(single_changes) == 1


def test_a_batch_gives_the_same_changes_as_its_entries_sent_one_by_one() -> None:
    """Each batch entry merges as a single `presence` message would: the same on_change calls with the same states."""
    entries = [
        state("ada", V + 5),
        state("Bob", V + 3, status="busy"),
        state("ADA", V + 4, online=False),  # older than ada's 5 in the same batch
        state("bob", V + 9, online=False),  # newer than Bob's 3
        state("ada", V + 5),  # a repeat
    ]
    single, single_changes = recording()
    batched, batched_changes = recording()
    for presence in (single, batched):
        presence.follow("big")
        presence.merge(state("ada", V + 2))
    for entry in entries:
        single.merge({**entry, "room": "big"})
    kept = batched.merge_batch(batch_of("big", entries))
    summary = [
        (current.user, current.version - V, previous and previous.version - V) for current, previous in single_changes
    ]
    assert summary == [("ada", 2, None), ("ada", 5, 2), ("Bob", 3, None), ("bob", 9, 3)]
    assert batched_changes == single_changes
    assert [entry.version - V for entry in kept] == [5, 3, 9]
    assert batched.of("BOB") == single.of("BOB")
    assert batched.merge_batch({"room": "big", "base": V}) == []
    assert batched.merge_batch(None) == []
    assert len(batched_changes) == 4


def test_a_batch_entry_of_a_lower_version_than_a_single_change_is_dropped_and_the_reverse() -> None:
    """Version alone decides between a single change and a batch entry of one user, whichever arrives first."""
    presence, changes = recording()
    presence.merge(state("ada", V + 20, status="here", room="big"))
    presence.merge_batch(batch_of("big", [state("ada", V + 10, online=False), state("bob", V + 30, online=False)]))
    presence.merge(state("bob", V + 25, room="big"))
    presence.merge(state("bob", V + 30, room="big"))  # the entry's version: a repeat
    assert [(current.user, current.version - V) for current, _ in changes] == [("ada", 20), ("bob", 30)]
    ada, bob = presence.of("ada"), presence.of("bob")
    assert ada is not None
    assert (ada.online, ada.status) == (True, "here")
    assert bob is not None
    assert not bob.online
    assert presence.merge_batch(batch_of("big", [state("ada", V + 20, online=False)])) == []  # equal: dropped
    assert presence.merge_batch(batch_of("big", [state("ada", V + 21, online=False)])) != []
    ada = presence.of("ada")
    assert ada is not None
    assert (ada.version, ada.online) == (V + 21, False)
    assert len(changes) == 3


def test_an_offline_entry_keeps_its_last_seen_string_exactly() -> None:
    """An offline tuple's lastSeen is kept as the very string sent, with its status."""
    presence, _ = recording()
    last_seen = "2026-12-03T10:00:00.123456+00:00"
    presence.merge_batch({"room": "big", "base": V, "users": [["ada", 0, 0, "away", 0, last_seen]]})
    assert presence.of("ada") == UserState("ada", False, 0, "away", last_seen, V)
    ada = presence.of("ada")
    assert ada is not None
    assert ada.to_json()["lastSeen"] == last_seen


def test_malformed_tuples_are_skipped_one_by_one_and_the_good_ones_kept() -> None:
    """A malformed tuple is skipped without raising; the good tuples of the same batch are kept, and a batch without
    a base or a room keeps nothing."""
    presence, changes = recording()

    def good(user: str, offset: int) -> list[Any]:
        """Return a well-formed tuple of an online user."""
        return [user, 1, 1, None, offset, None]

    users: list[Any] = [
        good("ada", 1),
        ["bob", 1, 1, None, 2],  # too short
        ["bob", 1, 1, None, 2, None, "extra"],  # too long
        [42, 1, 1, None, 2, None],  # the user not a string
        ["  ", 1, 1, None, 2, None],  # not a user name
        ["bob", True, 1, None, 2, None],  # online a boolean, not 1 or 0
        ["bob", 2, 1, None, 2, None],
        ["bob", 1, "1", None, 2, None],  # connections not an integer
        ["bob", 1, 1.5, None, 2, None],
        ["bob", 1, -1, None, 2, None],
        ["bob", 1, False, None, 2, None],
        ["bob", 1, 1, 7, 2, None],  # status neither a string nor None
        ["bob", 1, 1, None, -1, None],  # the offset negative, fractional, a string or a boolean
        ["bob", 1, 1, None, 0.5, None],
        ["bob", 1, 1, None, "2", None],
        ["bob", 1, 1, None, True, None],
        ["bob", 0, 0, None, 2, 1764756000000],  # lastSeen not a string
        state("bob", V + 2),  # the old format: an object, not a tuple
        None,
        "bobbie",  # a string of six characters is not a tuple
        good("cy", 3),
    ]
    kept = presence.merge_batch({"room": "big", "base": V, "users": users})
    assert [(kept_state.user, kept_state.version - V) for kept_state in kept] == [("ada", 1), ("cy", 3)]
    assert [current for current, _ in changes] == kept
    assert presence.of("bob") is None
    for base in (None, str(V), 1.5, True):
        assert presence.merge_batch({"room": "big", "base": base, "users": [good("dee", 1)]}) == []
    assert presence.merge_batch({"base": V, "users": [good("dee", 1)]}) == []  # no room
    assert presence.merge_batch({"room": "big", "users": [good("dee", 1)]}) == []  # no base
    assert presence.merge_batch({"room": "big", "base": V, "users": "dee"}) == []
    assert presence.of("dee") is None
    assert len(changes) == 2


def test_a_snapshot_after_a_batch_merges_by_version() -> None:
    """A room's snapshot after a batch keeps each user's higher version, and a batch after a snapshot too."""
    synced: list[str | None] = []
    presence, changes = recording()
    presence.on_sync = synced.append
    presence.follow("big")
    presence.merge_batch(batch_of("big", [state("ada", V + 5), state("bob", V + 7)]))
    snapshot = [state("ada", V + 6, online=False), state("bob", V + 3, online=False), state("cy", V + 1)]
    assert presence.merge_sync({"room": "big", "users": snapshot, "page": 1, "pages": 1})
    assert [(current.user, current.version - V) for current, _ in changes] == [
        ("ada", 5),
        ("bob", 7),
        ("ada", 6),
        ("cy", 1),
    ]
    assert synced == ["big"]
    members = [(member.user, member.version - V, member.online) for member in presence.members("big")]
    assert members == [("ada", 6, False), ("bob", 7, True), ("cy", 1, True)]
    presence.merge_batch(batch_of("big", [state("cy", V + 1, online=False), state("cy", V + 2, online=False)]))
    cy = presence.of("cy")
    assert cy is not None
    assert (cy.version, cy.online) == (V + 2, False)


def test_a_batch_for_a_room_not_followed_merges_as_a_single_presence_message_does() -> None:
    """A batch of a room not followed merges by version, as a `presence` message with that room does, adding no
    member."""
    single, single_changes = recording()
    batched, batched_changes = recording()
    single.merge(state("ada", V + 4, room="elsewhere"))
    batched.merge_batch(batch_of("elsewhere", [state("ada", V + 4)]))
    assert len(single_changes) == 1
    assert batched_changes == single_changes
    assert batched.members("elsewhere") == []
    assert batched.rooms() == []


def test_occupancy_is_kept_and_announced_only_for_a_higher_version_of_a_watched_room() -> None:
    """Only an `occupancy` message of a watched room, newer than the one held, is kept and reaches on_occupancy."""
    heard: list[Occupancy] = []
    presence = Presence(on_occupancy=heard.append)
    presence.follow_occupancy("hall")
    for message in (
        occupancy("hall", 3, 120),
        occupancy("hall", 2, 90),  # older
        occupancy("hall", 3, 121),  # the same version
        occupancy("hall", 4, 130),
        occupancy("other", 9, 1),  # not watched
        {"room": "hall", "members": "500", "online": 1, "version": 10},  # not integers
        {"room": "hall", "members": 500, "online": True, "version": 11},  # a boolean is not a count
        None,
    ):
        presence.merge_occupancy(message)
    assert heard == [Occupancy("hall", 500, 120, 3), Occupancy("hall", 500, 130, 4)]
    assert presence.occupancy("hall") == Occupancy("hall", 500, 130, 4)
    assert presence.occupancy("other") is None
    assert heard[-1].to_json() == occupancy("hall", 4, 130)


async def test_the_follower_routes_batches_and_occupancy_to_the_map() -> None:
    """`presenceBatch` and `occupancy` records reach on_change and on_occupancy, not on_message."""
    changes: list[Change] = []
    heard: list[Occupancy] = []
    other: list[str] = []
    follower = follower_on(
        None,
        occupancy_rooms=["hall"],
        on_change=lambda current, previous: changes.append((current, previous)),
        on_occupancy=heard.append,
        on_message=lambda target, arguments: other.append(target),
    )
    await follower._record(invocation("presenceBatch", batch_of("big", [state("ada", V + 1), state("bob", V + 2)])))
    await follower._record(invocation("occupancy", occupancy("hall", 1, 2)))
    await follower._record(invocation("newMessage", {"from": "ada", "message": "hi"}))
    assert [current.user for current, _ in changes] == ["ada", "bob"]
    assert heard == [Occupancy("hall", 500, 2, 1)]
    assert follower.occupancy("hall") == heard[0]
    assert other == ["newMessage"]


async def test_watch_and_unwatch_occupancy_send_their_hub_calls_and_unwatching_forgets() -> None:
    """watch_occupancy and unwatch_occupancy invoke watchOccupancy and unwatchOccupancy with the room; a bad room raises
    and sends nothing; after unwatching, the room's occupancy is gone and a late message is ignored."""
    socket = FakeSocket()
    follower = follower_on(socket)
    await follower.watch_occupancy("hall")
    follower.presence.merge_occupancy(occupancy("hall", 5, 10))
    assert follower.occupancy("hall") is not None
    await follower.unwatch_occupancy("hall")
    assert socket.calls() == [("watchOccupancy", ["hall"]), ("unwatchOccupancy", ["hall"])]
    assert follower.occupancy("hall") is None
    assert follower.presence.merge_occupancy(occupancy("hall", 6, 11)) is None
    assert follower.occupancy("hall") is None
    with pytest.raises(ValueError, match="room"):
        await follower.watch_occupancy("no spaces")
    with pytest.raises(ValueError, match="room"):
        await follower.unwatch_occupancy("")
    assert len(socket.calls()) == 2
    assert follower.presence.occupancy_rooms() == []


async def test_every_new_connection_sends_watch_occupancy_again_for_the_rooms_still_watched() -> None:
    """A connection (the first, and each after a drop) sends watchOccupancy for every room watched, after the joins and
    watches; the occupancy heard stays meanwhile."""
    follower = follower_on(None, rooms=["lobby"], users=["ada"], occupancy_rooms=["hall"])
    await follower.watch_occupancy("big")  # not connected: the next connection sends it
    await follower.watch_occupancy("gone")
    await follower.unwatch_occupancy("gone")
    expected = [
        ("join", ["lobby"]),
        ("watch", [["ada"]]),
        ("watchOccupancy", ["hall"]),
        ("watchOccupancy", ["big"]),
    ]
    first, second = FakeSocket(), FakeSocket()
    await connect(follower, first)
    assert first.calls() == expected
    follower.presence.merge_occupancy(occupancy("hall", 8, 2, members=3))
    await connect(follower, second)
    assert second.calls() == expected
    assert follower.occupancy("hall") == Occupancy("hall", 3, 2, 8)
    await follower.close()


async def test_a_watch_occupancy_retry_is_sent_again_only_while_the_room_is_watched() -> None:
    """A watchOccupancy answered `retry: true` is sent again while watched; after unwatch_occupancy its error is
    reported instead."""
    socket = FakeSocket()
    errors: list[Any] = []
    follower = follower_on(socket, retry=Backoff(0.001, 0.001), on_error=errors.append)
    await follower.watch_occupancy("kept")
    await follower.watch_occupancy("dropped")
    await follower.unwatch_occupancy("dropped")
    socket.records.clear()
    failures = [
        {"error": "unavailable", "retry": True, "call": "watchOccupancy", "arguments": [room]}
        for room in ("kept", "dropped")
    ]
    for failure in failures:
        follower._failed(failure)
    await asyncio.gather(*follower._pending)
    assert socket.calls() == [("watchOccupancy", ["kept"])]
    assert errors == [failures[1]]
