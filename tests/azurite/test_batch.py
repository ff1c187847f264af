"""Batched presence for big rooms (mapping/rooms/batch.py) against Azurite: one flush pending per room, each member's
latest pair once per flush, exactly as a small room's `presence` message states it, and a lost or doubled flush."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mapping import events
from mapping.presence.store import ConnectionStore
from mapping.rooms.batch import FLUSH_LOST_AFTER
from mapping.signalr.audience import BATCH_BYTES
from mapping.signalr.invocation import Invocation
from mapping.signalr.messages import Message
from testkit.azurite import Azurite
from testkit.delayed import FakeDelayedActions
from testkit.tables import drop_table, make_settings, unique_table_name

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BIG = 3  # ROOM_BATCH_ABOVE of these tests: a room of 4 members is big
MEMBERS = ["ann", "bob", "cy", "dee"]


class Clock:
    """The store's and the queue's clock, moved by the test."""

    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
async def world(azurite: Azurite) -> AsyncIterator[tuple[ConnectionStore, FakeDelayedActions, Clock]]:
    """A store on a fresh table whose big rooms (over 3 members) are batched every 2 s on an in-memory queue."""
    clock = Clock()
    table = unique_table_name()
    settings = make_settings(azurite.connection_string, table, room_batch_above=BIG, room_batch_seconds=2)
    store = ConnectionStore(settings, clock=clock)
    queue = FakeDelayedActions(clock=clock)
    store.later = queue
    try:
        yield store, queue, clock
    finally:
        await store.close()
        await drop_table(azurite, table)


def event(name: str, user: str, connection: str, *arguments: object) -> Invocation:
    """A SignalR event of `connection`."""
    category = "connections" if name in ("connected", "disconnected") else "messages"
    return Invocation(category, name, "chat", connection, user, list(arguments) if arguments else None)


def to_group(messages: list[Message], group: str, target: str) -> list[dict[str, Any]]:
    """The arguments of the messages of `target` sent to `group`."""
    return [m["arguments"][0] for m in messages if m.get("groupName") == group and m.get("target") == target]


def decoded(batches: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Decode `presenceBatch` arguments into presence entries by user, as a client does (the highest version kept)."""
    kept: dict[str, dict[str, Any]] = {}
    for batch in batches:
        for user, online, connections, status, offset, last_seen in batch["users"]:
            entry = {
                "user": user,
                "online": bool(online),
                "connections": connections,
                "status": status,
                "lastSeen": last_seen,
                "version": batch["base"] + offset,
                "room": batch["room"],
            }
            if user not in kept or entry["version"] > kept[user]["version"]:
                kept[user] = entry
    return kept


async def fill(store: ConnectionStore, clock: Clock, room: str, users: list[str]) -> None:
    """Connect each user (one tab) and join them to `room`."""
    for user in users:
        await events.on_connected(store, event("connected", user, f"{user}-1"))
        await events.on_join(store, event("join", user, f"{user}-1", room))
    clock.at += timedelta(seconds=1)


async def deliver(store: ConnectionStore, queue: FakeDelayedActions, clock: Clock) -> list[Message]:
    """Deliver every due delayed action to the presence_grace function; return what it sent."""
    sent: list[Message] = []

    async def run(body: str) -> None:
        sent.extend(await events.on_grace(store, body, delayed=lambda: queue))

    clock.at += timedelta(seconds=3)
    await queue.deliver_due(run)
    return sent


async def test_a_big_room_hears_each_members_latest_state_once_per_flush(world: Any) -> None:
    """In a room of 4 (over 3), members' changes do not go to the room's group as they happen; one flush is pending,
    and it sends each changed member's latest pair once, exactly as a small room's presence message states it."""
    store, queue, clock = world
    await fill(store, clock, "big", MEMBERS)
    await fill(store, clock, "small", ["ann", "bob"])
    sent: list[Message] = []
    sent += await events.on_set_status(store, event("setStatus", "ann", "ann-1", "away"))
    sent += await events.on_set_status(store, event("setStatus", "ann", "ann-1", "busy"))
    sent += await events.on_connected(store, event("connected", "bob", "bob-2"))
    sent += await events.on_disconnected(store, event("disconnected", "cy", "cy-1"), delayed=lambda: queue)
    assert to_group(sent, "big", "presence") == []  # batched
    small = to_group(sent, "small", "presence")
    assert [(p["user"], p["status"], p["connections"]) for p in small] == [
        ("ann", "away", 1),
        ("ann", "busy", 1),
        ("bob", None, 2),
    ]
    assert len(queue.pending) == 1  # B1: one flush pending for the room, whatever the changes
    flushed = await deliver(store, queue, clock)
    batches = to_group(flushed, "big", "presenceBatch")
    entries = decoded(batches)
    assert sum(len(batch["users"]) for batch in batches) == len(entries)  # each member once
    assert set(entries) >= {"ann", "bob", "cy"}
    own = {p["user"]: p for p in to_group(sent, "~presence.ann", "presence")}
    assert entries["ann"] == {**own["ann"], "room": "big"}  # the latest pair, as a presence message states it
    assert (entries["bob"]["connections"], entries["cy"]["online"]) == (2, False)
    assert entries["cy"]["lastSeen"] is not None
    for user in ("ann", "bob", "cy"):
        truth = (await store.presence_of(user)).state
        assert (entries[user]["online"], entries[user]["connections"]) == (truth.online, truth.connections)


async def test_a_lost_or_doubled_flush_converges(world: Any) -> None:
    """A flush delivered twice sends the same latest pairs again (clients keep the highest version); a flush whose
    message was lost is taken over, once overdue, by the room's next change, and that flush covers the lost one's."""
    store, queue, clock = world
    await fill(store, clock, "big", MEMBERS)
    await deliver(store, queue, clock)
    await events.on_set_status(store, event("setStatus", "dee", "dee-1", "away"))
    [flush] = list(queue.pending)
    first = decoded(to_group(await deliver(store, queue, clock), "big", "presenceBatch"))
    again = decoded(to_group(await events.on_grace(store, flush.body, delayed=lambda: queue), "big", "presenceBatch"))
    assert first["dee"] == again["dee"]  # doubled: the same pair, the same version
    await events.on_set_status(store, event("setStatus", "ann", "ann-1", "away"))
    queue.pending.clear()  # lost: the message never arrives
    clock.at += timedelta(seconds=10)
    await events.on_set_status(store, event("setStatus", "bob", "bob-1", "away"))
    assert queue.pending == []  # still marked pending: not overdue yet
    clock.at += FLUSH_LOST_AFTER
    await events.on_set_status(store, event("setStatus", "cy", "cy-1", "away"))
    assert len(queue.pending) == 1  # overdue: taken over
    entries = decoded(to_group(await deliver(store, queue, clock), "big", "presenceBatch"))
    for user in ("ann", "bob", "cy"):
        assert entries[user]["status"] == "away", user
        assert entries[user]["version"] == (await store.read_user(user)).presence.version


async def test_a_flush_splits_at_two_kilobytes_with_every_entry_kept(world: Any) -> None:
    """A flush of many members is split into messages each billed as one (at most BATCH_BYTES of JSON, one 2 KB message
    once framed), none lost or repeated."""
    store, queue, clock = world
    users = [f"member-with-a-longish-name-{n:03d}" for n in range(60)]
    await fill(store, clock, "crowd", users)
    for user in users:
        await events.on_set_status(store, event("setStatus", user, f"{user}-1", "away"))
    flushed = to_group(await deliver(store, queue, clock), "crowd", "presenceBatch")
    assert len(flushed) > 1
    assert all(len(json.dumps(batch, separators=(",", ":")).encode()) <= BATCH_BYTES for batch in flushed)
    framed = [
        json.dumps({"type": 1, "target": "presenceBatch", "arguments": [b]}, separators=(",", ":")) + "\x1e"
        for b in flushed
    ]
    assert all(len(record.encode()) <= 2048 for record in framed)
    names = [entry[0] for batch in flushed for entry in batch["users"]]
    assert sorted(names) == sorted(users)  # every member once
