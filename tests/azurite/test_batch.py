"""Batched presence for big rooms (mapping/rooms/batch.py) against Azurite: one flush pending per room, each member's
latest pair once per flush, exactly as a small room's `presence` message states it, and a lost or doubled flush."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from mapping import events
from mapping.errors import StorageError
from mapping.keys import room_partition, user_key
from mapping.presence.store import ConnectionStore
from mapping.rooms import batch as room_batch
from mapping.rooms.batch import FLUSH_LOST_AFTER, NOT_DUE
from mapping.rooms.tally import TALLY_ROW, Tally, contribution
from mapping.signalr.audience import BATCH_BYTES, occupancy_messages, presence_messages
from mapping.signalr.invocation import Invocation
from mapping.signalr.liveness import Liveness
from mapping.signalr.messages import ERROR_TARGET, Message
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.delayed import FakeDelayedActions
from testkit.fake_service import FakeService
from testkit.faultproxy import FEW_FAST_RETRIES, PASS, Fault, FaultProxy, fault_proxy
from testkit.tables import all_rows, drop_table, make_settings, unique_table_name

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BIG = 3  # ROOM_BATCH_ABOVE of these tests: a room of 4 members is big
MEMBERS = ["ann", "bob", "cy", "dee"]


class Clock:
    """The store's and the queue's clock, moved by the test."""

    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


class WallClock(Clock):
    """The wall clock, which the test's `at` does not move (overdue marks taken over in real time)."""

    def __call__(self) -> datetime:
        return datetime.now(UTC)


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


# Crash points of a big room (the style of tests/azurite/test_crash_points.py): every table request of one member's
# setStatus and of the flush it marks, failed three ways, then the recovery the design promises. A flush reads the rows
# numbered after the previous flush (the tally's sequence, batch B2), so no clock takes part; the lost first flush's
# crash point is also run on the wall clock (test_a_lost_first_flush_is_taken_over_with_its_copy).

OUTAGE = Fault.answer(503)
MODES: dict[str, Callable[[], tuple[Fault, Fault]]] = {
    "outage": lambda: (OUTAGE, OUTAGE),
    "committed, answered 500": lambda: (Fault.committed(500), PASS),
    "committed, then outage": lambda: (Fault.committed(500), OUTAGE),
}
STATUS_AT = T0 + timedelta(seconds=5)  # ann's setStatus
RETRY_AT = STATUS_AT + timedelta(seconds=1)  # the client's retry after an error
SWEPT = T0 + timedelta(minutes=6)  # every row past half its lease (the service asked), every earlier mark overdue
LATER = SWEPT + FLUSH_LOST_AFTER + timedelta(seconds=5)  # another member's change, past any mark's FLUSH_LOST_AFTER
State = tuple[bool, int, str | None]  # online, live connections, status


@pytest.fixture(scope="module")
async def proxy(azurite: Azurite) -> AsyncIterator[FaultProxy]:
    """One fault proxy in front of the test Azurite for the module's crash points."""
    async with fault_proxy(azurite.port) as running:
        yield running


@dataclass
class BigRoom:
    """One crash case: a direct store and one through the proxy on one fresh table, the queue, and what was sent."""

    azurite: Azurite
    store: ConnectionStore
    proxied: ConnectionStore
    clock: Clock
    queue: FakeDelayedActions
    sent: list[Message] = field(default_factory=list)

    def receive(self, messages: list[Message]) -> list[Message]:
        """Record what a function returned (its outputs reached the clients)."""
        self.sent += messages
        return messages

    async def set_status(self, user: str, status: str, at: datetime) -> list[Message] | None:
        """The set_status function through the proxy at `at`: what it sent, or None when it raised."""
        self.clock.at = at
        try:
            return self.receive(await events.on_set_status(self.proxied, event("setStatus", user, f"{user}-1", status)))
        except StorageError:
            return None

    async def deliver(self, at: datetime, *, queue_now: datetime | None = None) -> None:
        """Deliver the due flushes at `at` (by the queue's clock, `queue_now`) to the presence_grace function through
        the proxy; one that raised stays pending (the queue delivers it again)."""
        self.clock.at = at
        failed = len(self.queue.failures)

        async def run(body: str) -> None:
            self.receive(await events.on_grace(self.proxied, body, delayed=lambda: self.queue))

        await self.queue.deliver_due(run, now=queue_now)
        for _item, error in self.queue.failures[failed:]:
            if not isinstance(error, StorageError):
                raise error

    async def sweep(self, at: datetime) -> None:
        """Run one sweep at `at` (the service vouches for every tab) and send what it announces, as the timer does."""
        self.clock.at = at
        result = await sweep(self.store, liveness=FakeService(default=Liveness.ALIVE), now=at)
        audience = self.store.settings.presence_audience
        for change in result.presence:
            self.receive(presence_messages(change, audience=audience))
        self.receive(occupancy_messages(result.occupancy))

    async def tally_row(self) -> dict[str, Any]:
        """The room's tally row, read straight from Azurite."""
        rows = await all_rows(self.azurite, self.store.settings.table_name)
        return next(row for row in rows if row["PartitionKey"] == room_partition("big") and row["RowKey"] == TALLY_ROW)

    async def mark_lost(self) -> bool:
        """Whether the tally marks a flush pending that no queue message will run (lost: it waits to be taken over)."""
        due = (await self.tally_row()).get("FlushDue")
        return isinstance(due, datetime) and due.replace(tzinfo=UTC) > NOT_DUE and not self.queue.pending


@contextlib.asynccontextmanager
async def big_room(azurite: Azurite, proxy: FaultProxy, clock: Clock | None = None) -> AsyncIterator[BigRoom]:
    """A fresh table, a direct store and one through the proxy (few, fast retries) on one clock (the test's unless
    given) and one in-memory queue, and the room `big` of four members, each online with one tab, set up through the
    proxy."""
    table = unique_table_name()
    options: dict[str, Any] = dict(FEW_FAST_RETRIES)
    clock = clock or Clock()
    overrides: dict[str, Any] = {"room_batch_above": BIG, "room_batch_seconds": 2}
    store = ConnectionStore(make_settings(azurite.connection_string, table, **overrides), clock=clock)
    through = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
    proxied = ConnectionStore(make_settings(through, table, **overrides), clock=clock, **options)
    queue = FakeDelayedActions(clock=clock)
    store.later = proxied.later = queue
    proxy.plan(then=PASS)
    await store.connections_of("warm-up")
    await proxied.connections_of("warm-up")
    room = BigRoom(azurite, store, proxied, clock, queue)
    try:
        for user in MEMBERS:
            room.receive(await events.on_connected(proxied, event("connected", user, f"{user}-1")))
            room.receive(await events.on_join(proxied, event("join", user, f"{user}-1", "big")))
        yield room
    finally:
        proxy.plan(then=PASS)
        proxy.rule = None
        await proxied.close()
        await store.close()
        await drop_table(azurite, table)


def heard_in(sent: list[Message], room: str) -> list[tuple[str, int, State]]:
    """Every pair a member of `room` heard: `presence` messages to its group and decoded `presenceBatch` entries."""
    pairs = [
        (p["user"], p["version"], (p["online"], p["connections"], p["status"]))
        for p in to_group(sent, room, "presence")
    ]
    for batch in to_group(sent, room, "presenceBatch"):
        for user, online, connections, status, offset, _last_seen in batch["users"]:
            pairs.append((user, batch["base"] + offset, (bool(online), connections, status)))
    return pairs


async def assert_big_room_converged(room: BigRoom, *, label: str) -> None:
    """For every member, the highest version the room heard of them is their recorded pair (version and state), and
    no version heard names two states; the tally is the sum of its rows (tally T1)."""
    heard = heard_in(room.sent, "big")
    named: dict[tuple[str, int], set[State]] = {}
    for user, version, state in heard:
        named.setdefault((user, version), set()).add(state)
    assert all(len(states) == 1 for states in named.values()), (label, named)
    for user in MEMBERS:
        recorded = (await room.store.read_user(user_key(user))).presence
        truth = (await room.store.presence_of(user)).state
        expected = (recorded.version, (bool(recorded.online), recorded.connections, recorded.status))
        assert expected[1] == (truth.online, truth.connections, truth.status), (label, user, expected, truth)
        mine = [(version, state) for name, version, state in heard if name == user]
        assert max(mine, default=(0, (False, 0, None))) == expected, (label, user, expected, sorted(mine))
    rows = [
        row
        for row in await all_rows(room.azurite, room.store.settings.table_name)
        if row["PartitionKey"] == room_partition("big")
    ]
    tally = Tally.from_row(next((row for row in rows if row["RowKey"] == TALLY_ROW), None))
    summed = [contribution(row) for row in rows if row["RowKey"] != TALLY_ROW]
    counted = (sum(member for member, _ in summed), sum(online for _, online in summed))
    assert (tally.members, tally.online) == counted, (label, tally, counted)


async def big_room_event(room: BigRoom) -> list[Message] | None:
    """The event enumerated: ann's setStatus("away") in the big room, then the delivery of the flush it marked."""
    answer = await room.set_status("ann", "away", STATUS_AT)
    await room.deliver(STATUS_AT + timedelta(seconds=3))
    return answer


async def test_every_big_room_crash_point_converges(azurite: Azurite, proxy: FaultProxy) -> None:
    """Fail each table request of a member's setStatus in a big room and of its flush three ways: after the client's
    retry, the queue's redelivery, the sweep and (for a lost flush the sweep did not take over) a later change, every
    member's highest pair the room heard is their recorded one, and the tally is the sum of its rows."""
    async with big_room(azurite, proxy) as room:
        before = proxy.requests
        await big_room_event(room)
        total = proxy.requests - before
        await assert_big_room_converged(room, label="clean")
    points = lost = swept = later = 0
    for k in range(1, total + 1):
        for mode, faults in MODES.items():
            label = f"big room: request {k} of {total}, {mode}"
            fault, after = faults()
            async with big_room(azurite, proxy) as room:
                proxy.plan(*([PASS] * (k - 1)), fault, then=after)
                answer = await big_room_event(room)
                proxy.plan(then=PASS)
                errors = [m["arguments"][0] for m in answer or [] if m.get("target") == ERROR_TARGET]
                assert all(error.get("retry") is True for error in errors), (label, errors)
                if answer is None or errors:
                    retried = await room.set_status("ann", "away", RETRY_AT)  # the client's retry
                    assert retried is not None, label
                    assert not [m for m in retried if m.get("target") == ERROR_TARGET], (label, retried)
                await room.deliver(RETRY_AT + timedelta(seconds=3))  # a flush that raised, delivered again
                was_lost = await room.mark_lost()
                await room.sweep(SWEPT)  # its repeat of ann takes an overdue mark over (batch B3)
                await room.deliver(SWEPT + timedelta(seconds=3))
                still_lost = await room.mark_lost()
                lost, swept = lost + was_lost, swept + (was_lost and not still_lost)
                if still_lost:  # the room's next change takes the lost flush over (batch B1)
                    later += 1
                    assert await room.set_status("bob", "busy", LATER) is not None, label
                    await room.deliver(LATER + timedelta(seconds=3))
                await assert_big_room_converged(room, label=label)
                assert (await room.store.presence_of("ann")).state.status == "away", label
                assert not room.queue.pending, (label, room.queue.pending)
            points += 1
    print(f"\nbig room setStatus and flush: {total} requests, {points} crash points, {points} converged; ", end="")
    print(f"{lost} flushes lost with their mark: {swept} taken over by the sweep, {later} by a later change")


async def test_a_lost_first_flush_is_taken_over_with_its_copy(
    azurite: Azurite, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the table's own time, the crash point `copy transaction, committed, then outage` of a room's first flush:
    ann's copy and its mark commit, no flush is queued, and the flush that takes the lost one over sends her pair."""
    # FLUSH_LOST_AFTER scaled down from 60 s to 1 s: a mark is overdue 3 s after it is made (ROOM_BATCH_SECONDS 2)
    monkeypatch.setattr(room_batch, "FLUSH_LOST_AFTER", timedelta(seconds=1))
    async with big_room(azurite, proxy, WallClock()) as room:
        hit = False

        def copy_then_outage(request: web.Request, body: bytes) -> Fault | None:
            """Answer the transaction that marks the flush 500 once it commits, and fail every request after it."""
            nonlocal hit
            if hit:
                return OUTAGE
            hit = b"FlushDue" in body
            return Fault.committed(500) if hit else None

        proxy.rule = copy_then_outage
        try:
            answer = await room.set_status("ann", "away", T0)
        finally:
            proxy.rule = None
        assert hit
        assert [m["arguments"][0]["retry"] for m in answer or [] if m.get("target") == ERROR_TARGET] == [True]
        assert await room.set_status("ann", "away", T0) is not None  # the retry: the status she has, to her alone
        assert await room.mark_lost()
        await asyncio.sleep(3.5)  # ROOM_BATCH_SECONDS, then FLUSH_LOST_AFTER: the mark is overdue
        await room.set_status("bob", "busy", T0)  # the room's next change takes the lost flush over (batch B1)
        assert len(room.queue.pending) == 1
        await room.deliver(T0, queue_now=datetime.now(UTC) + timedelta(minutes=1))
        entries = decoded(to_group(room.sent, "big", "presenceBatch"))
        assert entries["bob"]["status"] == "busy"  # the taking-over flush ran
        assert entries.get("ann", {}).get("status") == "away", (
            entries
        )  # her copy is numbered after the lost flush's `since`
        await assert_big_room_converged(room, label="a lost first flush taken over")
