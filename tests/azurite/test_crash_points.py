"""Crash points, enumerated: every storage request of every event, failed in each way, and the system converges.

For each event the suite first runs it cleanly through a fault proxy and counts its table requests.
Then, for each request k and each mode, it sets the same state up again on a fresh table, runs the
event with request k failed, lifts the fault and runs the recovery the design promises (the sweeps
of `mapping.presence.state`, P5), asserting at each sweep where convergence is promised:

- the highest version announced for each user states what `GET /api/users/{user}` says;
- no version names two states (over every announcement and the recorded presence rows);
- once the leases lapse, only the connections the service still has keep rows, and nobody else is
  announced online.

Modes: an outage from request k on (longer than the retries); request k committing and answered 500
(the SDK's retry meets its own result); request k committing, then an outage.

With a grace (`mapping.presence.grace`) the queue is a store too: every schedule of an event is failed the same
three ways (the queue unreachable from it on; the message enqueued and its answer lost, so the SDK's
retry enqueues it again; the message enqueued, then an outage, so the caller sees an error). The
recovery then also delivers each due decision to the `presence_grace` function, a raised one again (a
queue retries it), and each delivered one a second time, once at once and once late (at least once).
Events of a user in rooms copy the pair onto the rooms' rosters before announcing it (roster C2); at
convergence each room's snapshot lists exactly its members, each with their highest announced pair.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mapping.errors import StorageError, StorageUnavailableError
from mapping.events import (
    on_connected,
    on_disconnect_user,
    on_disconnected,
    on_grace,
    on_join,
    on_leave,
    on_send,
    on_set_status,
    on_sync,
)
from mapping.keys import room_partition
from mapping.presence.feed import presence_message
from mapping.presence.state import PresenceChange, PresenceState
from mapping.presence.store import ConnectionStore
from mapping.rooms.index import IndexedMember
from mapping.rooms.membership import RoomChange, Rooms
from mapping.rooms.roster import Roster
from mapping.rooms.tally import TALLY_ROW, Tally, contribution
from mapping.settings import SignalRConnection
from mapping.signalr.audience import occupancy_messages
from mapping.signalr.invocation import Invocation
from mapping.signalr.liveness import AGE_ONLY, Listing, Liveness
from mapping.signalr.messages import ERROR_TARGET, OCCUPANCY_TARGET, PRESENCE_TARGET, SYNC_TARGET, Message
from mapping.storage.table import etag_of, int_value
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.delayed import FakeDelayedActions
from testkit.fake_service import FakeService
from testkit.faultproxy import FEW_FAST_RETRIES, PASS, Fault, FaultProxy, fault_proxy
from testkit.figures import Figures
from testkit.tables import all_rows, drop_table, make_settings, presence_rows, table_rows, unique_table_name

pytestmark = pytest.mark.reliability

TTL = timedelta(seconds=600)
GRACE = timedelta(seconds=15)  # PRESENCE_GRACE_SECONDS of the cases with a grace (the app's default)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DUE = T0 + timedelta(seconds=20)  # a grace begun at T0 + 1 s is over
DECISIONS = T0 + timedelta(minutes=1)  # the queue delivers every decision the cases' events scheduled
NEXT_SWEEP = T0 + timedelta(minutes=5)  # the next run of the shipped schedule
AFTER_LEASES = T0 + TTL + timedelta(minutes=6)  # every lease taken at T0 has lapsed by the sweep after it
OUTAGE = Fault.answer(503)
RECONCILED = SignalRConnection(endpoint="http://127.0.0.1:9", access_key="unused-by-the-fake")
MODES: dict[str, Callable[[], tuple[Fault, Fault]]] = {
    "outage": lambda: (OUTAGE, OUTAGE),
    "committed, answered 500": lambda: (Fault.committed(500), PASS),
    "committed, then outage": lambda: (Fault.committed(500), OUTAGE),
}
# The same three ways for a queue schedule (Put Message): unreachable from it on; enqueued and answered 500,
# so the SDK's retry enqueues it again and the caller sees success; enqueued, then an outage (the caller sees
# an error, the message is there).
QUEUE_MODES: dict[str, tuple[str, str]] = {
    "outage": ("outage", "outage"),
    "committed, answered 500": ("twice", "pass"),
    "committed, then outage": ("committed", "outage"),
}
USERS = ("ada", "bob", "cy")
ROOMS = ("chess", "club")  # the rooms of the cases whose user is a member


@dataclass
class Moment:
    """The case's clock: what the stores and the queue take for now when an event names no time (the functions)."""

    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at


class Queue(FakeDelayedActions):
    """The in-memory queue of delayed actions, with a fault plan for its schedule calls (as the proxy's)."""

    def __init__(self, clock: Moment) -> None:
        super().__init__(clock=clock)
        self.requests = 0
        self.faults: deque[str] = deque()
        self.then = "pass"

    def plan(self, *faults: str, then: str = "pass") -> None:
        """Apply `faults` to the next schedule calls in order, then `then` to every later one."""
        self.faults, self.then = deque(faults), then

    async def schedule(self, body: str, *, delay: timedelta) -> None:
        """Schedule `body`, or fail as planned: not enqueued, enqueued twice, or enqueued and then an error."""
        self.requests += 1
        fault = self.faults.popleft() if self.faults else self.then
        self.fail_with = StorageUnavailableError("queue storage is unavailable (fault)") if fault == "outage" else None
        await super().schedule(body, delay=delay)
        if fault == "twice":
            await super().schedule(body, delay=delay)
        if fault == "committed":
            raise StorageUnavailableError("queue storage is unavailable (fault, after the message was enqueued)")


class FeedLog:
    """The presence feed as a consumer would read its queue, with a fault plan for its puts (as the queue's)."""

    def __init__(self) -> None:
        self.requests = 0
        self.messages: list[dict[str, Any]] = []
        self.faults: deque[str] = deque()
        self.then = "pass"

    def plan(self, *faults: str, then: str = "pass") -> None:
        """Apply `faults` to the next puts in order, then `then` to every later one."""
        self.faults, self.then = deque(faults), then

    async def put(self, message: Mapping[str, Any]) -> None:
        """Put `message`, or fail as planned: not put, put twice, or put and then an error."""
        self.requests += 1
        fault = self.faults.popleft() if self.faults else self.then
        if fault == "outage":
            raise StorageUnavailableError("queue storage is unavailable (fault)")
        self.messages += [dict(message)] * (2 if fault == "twice" else 1)
        if fault == "committed":
            raise StorageUnavailableError("queue storage is unavailable (fault, after the message was put)")

    async def close(self) -> None:
        """Nothing to release."""

    def presence(self) -> list[PresenceChange]:
        """The presence pairs put, in order."""
        return [pair_of(message) for message in self.messages if message["kind"] == "presence"]


@dataclass
class World:
    """One crash case: the stores (direct and through the proxy), the queue, the announcements heard, the service."""

    azurite: Azurite
    store: ConnectionStore
    proxied: ConnectionStore
    proxy: FaultProxy
    clock: Moment
    queue: Queue
    feed: FeedLog
    heard: list[PresenceChange] = field(default_factory=list)
    synced: list[PresenceChange] = field(default_factory=list)  # snapshot entries sent (presenceSync)
    service: FakeService | None = None
    occupancy: list[dict[str, Any]] = field(default_factory=list)  # `occupancy` messages sent (tally T2)

    def hear(self, *changes: PresenceChange | None) -> None:
        """Record announcements that reached clients."""
        self.heard += [change for change in changes if change is not None]

    def announced(self, *changes: PresenceChange | None) -> None:
        """Record what a store-level step announced: it stands for an event whose announcement (roster copies, feed
        put, messages) went through, so its pairs reached clients and the feed."""
        self.hear(*changes)
        self.feed.messages += [presence_message(c, at=self.clock.at) for c in changes if c is not None]

    def receive(self, messages: list[Message]) -> list[Message]:
        """Record the presence messages and snapshots a function returned (its outputs reached clients)."""
        for sent in messages:
            if sent.get("target") == PRESENCE_TARGET:
                self.hear(pair_of(sent["arguments"][0]))
            elif sent.get("target") == SYNC_TARGET:
                self.synced += [pair_of(entry) for entry in sent["arguments"][0]["users"]]
            elif sent.get("target") == OCCUPANCY_TARGET:
                self.occupancy.append(sent["arguments"][0])
        return messages

    async def sweep(self, store: ConnectionStore, now: datetime) -> None:
        """Run one sweep and record what it announces (it copies pairs onto rosters first: roster C2)."""
        result = await sweep(store, liveness=self.service or AGE_ONLY, now=now)
        self.hear(*result.presence)
        self.receive(occupancy_messages(result.occupancy))

    async def decide(self, store: ConnectionStore, body: str) -> None:
        """Run the presence_grace function on one queue message; what it returns is heard."""
        self.receive(await on_grace(store, body, delayed=lambda: self.queue))

    async def deliver(self, store: ConnectionStore, at: datetime, *, queue_now: datetime | None = None) -> None:
        """Deliver the due decisions at `at` (by the queue's clock, `queue_now`: it may run ahead of the function's).

        A decision whose function raised stays on the queue and is delivered again by a later call."""
        self.clock.at = at
        failed = len(self.queue.failures)
        await self.queue.deliver_due(lambda body: self.decide(store, body), now=queue_now)
        for _item, error in self.queue.failures[failed:]:
            if not isinstance(error, StorageError):
                raise error

    async def redeliver(self, store: ConnectionStore, at: datetime) -> None:
        """Deliver every decision already delivered once more (the queue delivers at least once)."""
        self.clock.at = at
        for item in list(self.queue.delivered):
            await self.decide(store, item.body)


def pair_of(payload: dict[str, Any]) -> PresenceChange:
    """Return the pair a presence message or snapshot entry states (last seen aside: it follows from the rest)."""
    state = PresenceState(bool(payload["online"]), int(payload["connections"]), payload["status"])
    return PresenceChange.of(str(payload["user"]), state, int(payload["version"]))


Step = Callable[[World, ConnectionStore], Awaitable[None]]


async def connect(world: World, store: ConnectionStore, user: str, tab: str, now: datetime) -> None:
    """A connected event; its announcement is heard only if the function returns."""
    world.announced((await store.connect(user, tab, now=now)).presence)


async def disconnect(world: World, store: ConnectionStore, user: str, tab: str, now: datetime) -> None:
    """A disconnected event."""
    world.announced((await store.disconnect(user, tab, now=now)).presence)


async def message(world: World, store: ConnectionStore, user: str, tab: str, now: datetime) -> None:
    """A client message: the caller's lease is refreshed (a revival is announced)."""
    world.announced((await store.touch(user, tab, now=now)).presence)


async def set_status(world: World, store: ConnectionStore, user: str, tab: str, status: str, now: datetime) -> None:
    """A client's `setStatus(status)`: stored on the tab, the user's presence announced."""
    world.announced((await store.set_status(user, tab, status, now=now)).presence)


def invocation(world: World, user: str, tab: str, event: str, *arguments: object) -> Invocation:
    """Return the SignalR trigger payload of an event of `tab` (a connection of `user`)."""
    category = "connections" if event in ("connected", "disconnected") else "messages"
    hub = world.store.settings.hub
    return Invocation(category, event, hub, tab, user, list(arguments) if arguments else None)


# The functions themselves (mapping.events), at the case's time: copies first, then what they return is heard.


async def connected(world: World, store: ConnectionStore, user: str, tab: str, at: datetime) -> None:
    """The connected function: a raise refuses the connection and loses its outputs."""
    world.clock.at = at
    world.receive(await on_connected(store, invocation(world, user, tab, "connected")))


async def disconnected(world: World, store: ConnectionStore, user: str, tab: str, at: datetime) -> None:
    """The disconnected function: with a grace it stamps the row and schedules the decision."""
    world.clock.at = at
    world.receive(
        await on_disconnected(store, invocation(world, user, tab, "disconnected"), delayed=lambda: world.queue)
    )


async def status_set(world: World, store: ConnectionStore, user: str, tab: str, status: str, at: datetime) -> None:
    """The set_status function (a failure answers the caller an error: no announcement)."""
    world.clock.at = at
    world.receive(await on_set_status(store, invocation(world, user, tab, "setStatus", status)))


async def synced(world: World, store: ConnectionStore, user: str, tab: str, room: str, at: datetime) -> None:
    """The sync_room function: the caller's lease refreshed (a revival announced), then the room's snapshot."""
    world.clock.at = at
    world.receive(await on_sync(store, invocation(world, user, tab, "sync", room)))


async def sent(world: World, store: ConnectionStore, user: str, tab: str, to: str, at: datetime) -> None:
    """The send_message function: the caller's lease refreshed (a revival announced), then the direct message's reads
    (the recipient's partition, the sender's rooms: DIRECT_MESSAGES=shared-room) and its delivery."""
    world.clock.at = at
    world.receive(await on_send(store, invocation(world, user, tab, "send", to, "hi")))


class Closing:
    """SignalR Service's REST API as the operator's calls see it: every close is confirmed."""

    async def close_user(self, hub: str, user_id: str, *, reason: str) -> bool:
        """Confirm closing the user's connections (the case's service answers say which are gone)."""
        return True

    async def close_connection(self, hub: str, connection_id: str, *, reason: str) -> bool:
        """Confirm closing the connection."""
        return True


async def block(store: ConnectionStore, user: str, *, blocked: bool) -> None:
    """The block row alone, written or deleted (the unblock route; the block's first step)."""
    await store.set_blocked(user, blocked)


async def blocked(world: World, store: ConnectionStore, user: str, at: datetime) -> None:
    """The block_user function: the block row, then the user's connections closed at the service and their rows
    ended as disconnects end them (a failure answers the operator 503: they send it again, or the sweep ends them)."""
    world.clock.at = at
    await store.set_blocked(user, True)
    done = await on_disconnect_user(store, user, service=Closing())
    world.receive(done.messages)


async def membership(
    world: World, store: ConnectionStore, user: str, tab: str, room: str, at: datetime, *, joining: bool = True
) -> list[Message]:
    """The join_room or leave_room function; return what it sent (an error with retry: the client tries again)."""
    world.clock.at = at
    handler = on_join if joining else on_leave
    return world.receive(await handler(store, invocation(world, user, tab, "join" if joining else "leave", room)))


@dataclass(frozen=True)
class Case:
    """An event to enumerate: the state before it, the event, and the service's answers (None: age-based)."""

    name: str
    setup: Step
    event: Step
    service: dict[str, Liveness] | None = None
    listed: tuple[str, ...] | None = None  # reconciled: the settings name SignalR, whose group lists these
    grace: timedelta = timedelta(0)  # PRESENCE_GRACE_SECONDS
    rooms: tuple[str, ...] = ()  # rooms whose rosters must agree with the announcements at convergence
    decided: int | None = None  # the table request that commits the event's decision (None: its last)
    announced: int | None = None  # the last request before its announcement goes out (None: its last)
    retried: bool = False  # a queue-triggered function: a raise is followed by another delivery


def _connected(*tabs: tuple[str, str], at: datetime, then: tuple[str, str, datetime] | None = None) -> Step:
    """A setup step: each (user, tab) connects at `at`, and `then` (user, tab, time) after them."""

    async def step(world: World, store: ConnectionStore) -> None:
        for user, tab in tabs:
            await connect(world, store, user, tab, at)
        if then is not None:
            await connect(world, store, *then)

    return step


def _case(
    name: str,
    setup: Step,
    event: Step,
    service: dict[str, Liveness] | None = None,
    *,
    listed: tuple[str, ...] | None = None,
    grace: timedelta = timedelta(0),
    rooms: tuple[str, ...] = (),
    decided: int | None = None,
    announced: int | None = None,
    retried: bool = False,
) -> Case:
    return Case(name, setup, event, service, listed, grace, rooms, decided, announced, retried)


async def _nothing(world: World, store: ConnectionStore) -> None:
    return None


CASES = [
    _case("first connect", _nothing, lambda w, s: connect(w, s, "ada", "a1", T0)),
    _case(
        "second connect",
        lambda w, s: connect(w, s, "ada", "a1", T0),
        lambda w, s: connect(w, s, "ada", "a2", T0 + timedelta(seconds=1)),
    ),
    _case(
        "last disconnect",
        lambda w, s: connect(w, s, "ada", "a1", T0),
        lambda w, s: disconnect(w, s, "ada", "a1", T0 + timedelta(seconds=1)),
    ),
    _case(
        "other disconnect",
        lambda w, s: _all(connect(w, s, "ada", "a1", T0), connect(w, s, "ada", "a2", T0)),
        lambda w, s: disconnect(w, s, "ada", "a1", T0 + timedelta(seconds=1)),
    ),
    _case(
        "client message",
        lambda w, s: connect(w, s, "ada", "a1", T0 - TTL / 3),
        lambda w, s: message(w, s, "ada", "a1", T0),
    ),
    _case(
        "set status",
        lambda w, s: _all(connect(w, s, "ada", "a1", T0), connect(w, s, "ada", "a2", T0)),
        lambda w, s: set_status(w, s, "ada", "a1", "busy", T0 + timedelta(seconds=1)),
    ),
    _case(
        "status falling back when its tab closes",
        lambda w, s: _all(
            connect(w, s, "ada", "a1", T0),
            connect(w, s, "ada", "a2", T0),
            set_status(w, s, "ada", "a1", "away", T0),
            set_status(w, s, "ada", "a2", "busy", T0 + timedelta(seconds=1)),
        ),
        lambda w, s: disconnect(w, s, "ada", "a2", T0 + timedelta(seconds=2)),
    ),
    _case(
        "client message reviving a lapsed lease",
        lambda w, s: _all(
            connect(w, s, "ada", "a1", T0 - TTL * 2),
            connect(w, s, "ada", "a2", T0 - timedelta(seconds=2)),
            disconnect(w, s, "ada", "a2", T0 - timedelta(seconds=1)),  # a1 lapsed: ada announced offline
        ),
        lambda w, s: message(w, s, "ada", "a1", T0),
    ),
    _case(
        "sweep removing a last row",
        lambda w, s: _all(connect(w, s, "ada", "a1", T0 - TTL * 2), connect(w, s, "bob", "b1", T0 - TTL * 2)),
        lambda w, s: w.sweep(s, T0),
    ),
    _case(
        "sweep refreshing a row",
        lambda w, s: connect(w, s, "ada", "a1", T0 - TTL * 0.6),
        lambda w, s: w.sweep(s, T0),
        service={"a1": Liveness.ALIVE},
    ),
    _case(
        "sweep with liveness checks",
        _connected(("ada", "a1"), ("bob", "b1"), ("cy", "c1"), at=T0 - TTL * 0.6, then=("cy", "c2", T0 - TTL * 1.5)),
        lambda w, s: w.sweep(s, T0),
        service={"a1": Liveness.ALIVE, "b1": Liveness.GONE, "c1": Liveness.UNKNOWN, "c2": Liveness.ALIVE},
    ),
    _case(
        "sweep reconciling with a group listing",
        _connected(("ada", "a1"), ("bob", "b1"), ("cy", "c1"), ("cy", "c2"), at=T0 - TTL * 0.6),
        lambda w, s: w.sweep(s, T0),
        service={"b1": Liveness.GONE, "c2": Liveness.ALIVE},  # c2: a listing that lags a new connection
        listed=("a1", "c1"),
    ),
    # Issue 19: events of a user in rooms copy the pair onto the rosters; the grace, its queue and its decision.
    _case(
        "first connect of a member",
        lambda w, s: in_rooms(w, s),
        lambda w, s: connected(w, s, "ada", "a1", T0 + timedelta(seconds=1)),
        rooms=ROOMS,
        decided=3,
    ),
    _case(
        "set status of a member",
        lambda w, s: in_rooms(w, s, "a1", "a2"),
        lambda w, s: status_set(w, s, "ada", "a1", "busy", T0 + timedelta(seconds=1)),
        service={"a1": Liveness.ALIVE, "a2": Liveness.ALIVE, "b1": Liveness.ALIVE},  # the sweep repeats the pair
        rooms=ROOMS,
        decided=3,
    ),
    _case(
        "last disconnect of a member",
        lambda w, s: in_rooms(w, s, "a1"),
        lambda w, s: disconnected(w, s, "ada", "a1", T0 + timedelta(seconds=1)),
        rooms=ROOMS,
        decided=2,
    ),
    _case(
        "last disconnect with a grace",
        lambda w, s: in_rooms(w, s, "a1"),
        lambda w, s: disconnected(w, s, "ada", "a1", T0 + timedelta(seconds=1)),
        grace=GRACE,
        rooms=ROOMS,
        decided=1,
    ),
    _case(
        "other disconnect with a grace",
        lambda w, s: in_rooms(w, s, "a1", "a2"),
        lambda w, s: disconnected(w, s, "ada", "a1", T0 + timedelta(seconds=1)),
        service={"a1": Liveness.UNKNOWN, "a2": Liveness.ALIVE, "b1": Liveness.ALIVE},  # a1: only its grace ends it
        grace=GRACE,
        rooms=ROOMS,
        decided=1,
    ),
    _case(
        "grace decision",
        lambda w, s: _all(in_rooms(w, s, "a1"), disconnected(w, s, "ada", "a1", T0 + timedelta(seconds=1))),
        lambda w, s: w.deliver(s, DUE),
        grace=GRACE,
        rooms=ROOMS,
        decided=2,
        retried=True,
    ),
    _case(
        "grace decision delivered early",  # the queue's clock ahead of the function's: it schedules itself again
        lambda w, s: _all(in_rooms(w, s, "a1"), disconnected(w, s, "ada", "a1", T0 + timedelta(seconds=1))),
        lambda w, s: w.deliver(s, T0 + timedelta(seconds=10), queue_now=DECISIONS),
        grace=GRACE,
        rooms=ROOMS,
        retried=True,
    ),
    _case(
        "reload within the grace",
        lambda w, s: _all(
            in_rooms(w, s, "a1"),
            status_set(w, s, "ada", "a1", "away", T0),
            disconnected(w, s, "ada", "a1", T0 + timedelta(seconds=1)),
        ),
        lambda w, s: connected(w, s, "ada", "a2", T0 + timedelta(seconds=2)),
        grace=GRACE,
        rooms=ROOMS,
        decided=3,
    ),
    _case(
        "client message reviving a member's lapsed lease",  # sync(room): the caller refreshed, then a snapshot
        lambda w, s: _all(
            in_rooms(w, s, "a1", at=T0 - TTL * 2),
            connected(w, s, "ada", "a2", T0 - timedelta(seconds=2)),
            disconnected(w, s, "ada", "a2", T0 - timedelta(seconds=1)),  # a1 lapsed: ada announced offline
        ),
        lambda w, s: synced(w, s, "ada", "a1", "club", T0),
        rooms=ROOMS,
        decided=3,
        announced=5,
    ),
    _case(
        "block of a member with two tabs",  # the block row, the close, then each tab's disconnect
        lambda w, s: in_rooms(w, s, "a1", "a2", at=T0 - timedelta(seconds=2)),
        lambda w, s: blocked(w, s, "ada", T0),
        service={"a1": Liveness.GONE, "a2": Liveness.GONE, "b1": Liveness.ALIVE},  # closed at the service
        rooms=ROOMS,
    ),
    _case(
        "unblock of a member",  # the block row deleted on the presence row's ETag; nothing announced
        lambda w, s: _all(in_rooms(w, s, "a1", at=T0 - timedelta(seconds=2)), block(s, "ada", blocked=True)),
        lambda w, s: block(s, "ada", blocked=False),
        service={"a1": Liveness.ALIVE, "b1": Liveness.ALIVE},
        rooms=ROOMS,
    ),
    _case(
        "direct message reviving a member's lapsed lease",  # send(to): the caller refreshed, then the policy's reads
        lambda w, s: _all(
            in_rooms(w, s, "a1", at=T0 - TTL * 2),
            connected(w, s, "ada", "a2", T0 - timedelta(seconds=2)),
            disconnected(w, s, "ada", "a2", T0 - timedelta(seconds=1)),  # a1 lapsed: ada announced offline
            connected(w, s, "bob", "b2", T0 - timedelta(seconds=1)),  # bob, ada's room-mate, online to receive it
        ),
        lambda w, s: sent(w, s, "ada", "a1", "bob", T0),
        rooms=ROOMS,
        decided=3,
        announced=5,
    ),
    _case(
        "sweep removing members' last rows",
        lambda w, s: in_rooms(w, s, "a1", at=T0 - TTL * 2),
        lambda w, s: w.sweep(s, T0),
        rooms=ROOMS,
    ),
    _case(
        "sweep repairing a member's roster copies",
        lambda w, s: _all(in_rooms(w, s, "a1", at=T0 - TTL * 0.6), unannounced_status(w, s, "busy", T0 - TTL * 0.6)),
        lambda w, s: w.sweep(s, T0),
        service={"a1": Liveness.ALIVE, "b1": Liveness.ALIVE},
        rooms=ROOMS,
    ),
    _case(
        "sweep making a lost grace decision",
        lambda w, s: _all(in_rooms(w, s, "a1", at=T0 - TTL * 0.6), lost_decision(w, s, T0 - TTL * 0.6)),
        lambda w, s: w.sweep(s, T0),
        service={"a1": Liveness.UNKNOWN, "b1": Liveness.ALIVE},  # the service cannot say; the grace is over
        grace=GRACE,
        rooms=ROOMS,
    ),
    _case(
        "sweep making a late grace decision",  # the queue delivers the decision after the sweep made it
        lambda w, s: _all(in_rooms(w, s, "a1", at=T0 - TTL * 0.6), disconnected(w, s, "ada", "a1", T0 - TTL * 0.6)),
        lambda w, s: w.sweep(s, T0),
        service={"a1": Liveness.UNKNOWN, "b1": Liveness.ALIVE},
        grace=GRACE,
        rooms=ROOMS,
    ),
]


async def in_rooms(w: World, s: ConnectionStore, *ada_tabs: str, at: datetime = T0) -> None:
    """ada (with `ada_tabs` open) joins chess and club, and bob (b1) club, all at `at`, through the functions."""
    for tab in ada_tabs:
        await connected(w, s, "ada", tab, at)
    await connected(w, s, "bob", "b1", at)
    await membership(w, s, "bob", "b1", "club", at)
    for room in ROOMS:
        await membership(w, s, "ada", ada_tabs[0] if ada_tabs else "a0", room, at)


async def unannounced_status(w: World, s: ConnectionStore, status: str, at: datetime) -> None:
    """ada's a1 sets a status whose roster copies failed: recorded, but the function answered an error (C2)."""
    await s.set_status("ada", "a1", status, now=at)


async def lost_decision(w: World, s: ConnectionStore, at: datetime) -> None:
    """ada's a1 closes with a grace, but the queue is down: the row is stamped, no decision scheduled (G3)."""
    w.queue.plan(then="outage")
    with contextlib.suppress(StorageError):
        await disconnected(w, s, "ada", "a1", at)
    w.queue.plan()


async def _all(*steps: Awaitable[None]) -> None:
    for step in steps:
        await step


@pytest.fixture(scope="module")
async def proxy(azurite: Azurite) -> AsyncIterator[FaultProxy]:
    """One fault proxy in front of the test Azurite for the whole module."""
    async with fault_proxy(azurite.port) as running:
        yield running


@contextlib.asynccontextmanager
async def world(azurite: Azurite, proxy: FaultProxy, case: Case) -> AsyncIterator[World]:
    """A fresh table, a direct store and a store through the proxy (few, fast retries), both warmed up, both on
    the case's clock, and an empty queue on it."""
    table = unique_table_name()
    options: dict[str, Any] = dict(FEW_FAST_RETRIES)
    overrides: dict[str, Any] = {"ttl": TTL, "presence_grace": case.grace}
    if case.listed is not None:
        overrides["signalr"] = RECONCILED
    clock = Moment()
    store = ConnectionStore(make_settings(azurite.connection_string, table, **overrides), clock=clock)
    proxied = ConnectionStore(
        make_settings(proxied_connection(azurite, proxy), table, **overrides), clock=clock, **options
    )
    proxy.plan(then=PASS)
    await store.connections_of("warm-up")
    await proxied.connections_of("warm-up")
    service = FakeService(case.service) if case.service is not None else None
    if service is not None and case.listed is not None:
        service.listing, service.listed = Listing.LISTED, set(case.listed)
    feed = FeedLog()
    store.feed = proxied.feed = feed
    try:
        yield World(azurite, store, proxied, proxy, clock, Queue(clock), feed, service=service)
    finally:
        proxy.plan(then=PASS)
        await proxied.close()
        await store.close()
        await drop_table(azurite, table)


def proxied_connection(azurite: Azurite, proxy: FaultProxy) -> str:
    """Return the connection string of the test Azurite, through the proxy."""
    return azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")


async def requests_of(azurite: Azurite, proxy: FaultProxy, case: Case) -> tuple[int, int, int]:
    """Run the event cleanly and return how many table requests, queue schedules and feed puts it made."""
    async with world(azurite, proxy, case) as w:
        await case.setup(w, w.proxied)
        before, scheduled, fed = proxy.requests, w.queue.requests, w.feed.requests
        await case.event(w, w.proxied)
        return proxy.requests - before, w.queue.requests - scheduled, w.feed.requests - fed


async def assert_converged(w: World, *, now: datetime, leases_lapsed: bool, label: str) -> None:
    """Each user's highest announced version states what GET says (online, connections, status); no version
    names two states (announcements, snapshots sent, presence rows, roster copies)."""
    named: dict[tuple[str, int], set[State]] = {}
    for change in [*w.heard, *w.synced, *w.feed.presence()]:
        named.setdefault((change.user.casefold(), change.version), set()).add(state_of(change))
    for user_key_, row in (await presence_rows_of(w)).items():
        if row.get("Version") is not None:
            recorded = (bool(row["Online"]), int_value(row.get("Connections")), str(row.get("Status") or "") or None)
            named.setdefault((user_key_, int_value(row["Version"])), set()).add(recorded)
    for indexed in await roster_rows_of(w):
        if indexed.pair is not None:
            named.setdefault((indexed.user_key, indexed.pair.version), set()).add(state_of(indexed.pair))
    assert all(len(states) == 1 for states in named.values()), (label, named)
    users = {change.user.casefold() for change in w.heard} | set(USERS)
    for user in sorted(users):
        truth = (await w.store.presence_of(user, now=now)).state
        mine = [change for change in w.heard if change.user.casefold() == user]
        announced = state_of(max(mine, key=lambda change: change.version)) if mine else (False, 0, None)
        expected = (truth.online, truth.connections, truth.status)
        assert announced == expected, (label, user, expected, sorted((c.version, state_of(c)) for c in mine))
    if leases_lapsed:
        # The feed (feed F2): the highest pair put of each user states what GET says, as a consumer keeps it.
        for user in sorted(users):
            truth = (await w.store.presence_of(user, now=now)).state
            fed = [change for change in w.feed.presence() if change.user.casefold() == user]
            highest = state_of(max(fed, key=lambda change: change.version)) if fed else (False, 0, None)
            assert highest == (truth.online, truth.connections, truth.status), (label, user, "feed", highest)
        # Rows stay only for connections the service still has, or cannot say about (kept to the max age).
        kept = {key for key, answer in (w.service.answers if w.service else {}).items() if answer is not Liveness.GONE}
        kept |= w.service.listed if w.service else set()
        rows = {str(row["ConnectionId"]) for row in await table_rows_of(w)}
        assert rows <= kept, (label, rows, kept)


async def assert_rosters(w: World, rooms: tuple[str, ...], *, now: datetime, label: str) -> None:
    """Each room's snapshot lists exactly its members (membership rows), each with the highest pair announced of
    them (same version, same state): a snapshot and the announcements agree (roster C1, C2)."""
    for room in rooms:
        entries = [entry async for page in Roster(w.store).snapshot(room, now=now) for entry in page]
        listed = sorted(entry.user.casefold() for entry in entries)
        members = [user for user in USERS if room in (await w.store.presence_of(user, now=now)).rooms]
        assert listed == members, (label, room, listed, members)
        for entry in entries:
            mine = [change for change in w.heard if change.user.casefold() == entry.user.casefold()]
            highest = max(mine, key=lambda change: change.version, default=None)
            announced = (highest.version, state_of(highest)) if highest else (0, (False, 0, None))
            assert (entry.pair.version, state_of(entry.pair)) == announced, (label, room, entry, announced)
        await assert_tally_is_the_sum(w, room, label=label)


async def assert_tally_is_the_sum(w: World, room: str, *, label: str) -> None:
    """Tally T1: the room's tally row states the sum of its index rows' contributions, whatever failed."""
    rows = [
        row
        for row in await all_rows(w.azurite, w.store.settings.table_name)
        if row["PartitionKey"] == room_partition(room)
    ]
    tally = Tally.from_row(next((row for row in rows if row["RowKey"] == TALLY_ROW), None))
    summed = [contribution(row) for row in rows if row["RowKey"] != TALLY_ROW]
    expected = (sum(member for member, _ in summed), sum(online for _, online in summed))
    assert (tally.members, tally.online) == expected, (label, room, tally, expected)


async def assert_occupancy_heard(w: World, rooms: tuple[str, ...], *, label: str) -> None:
    """Tally T2: the highest version of each room's occupancy heard states its tally (once announcements are due)."""
    for room in rooms:
        tally = await Rooms(w.store).tally(room)
        heard = [o for o in w.occupancy if o["room"] == room]
        highest = max(heard, key=lambda o: o["version"], default={"members": 0, "online": 0, "version": 0})
        assert (highest["members"], highest["online"], highest["version"]) == (
            tally.members,
            tally.online,
            tally.version,
        ), (label, room, highest, tally)


State = tuple[bool, int, str | None]  # online, live connections, status


def state_of(change: PresenceChange) -> State:
    """Return the part of an announcement a client shows (last seen follows from it)."""
    return (change.state.online, change.state.connections, change.state.status)


async def presence_rows_of(w: World) -> dict[str, dict[str, object]]:
    """The presence rows of the world's table."""
    return await presence_rows(w.azurite, w.store.settings.table_name)


async def table_rows_of(w: World) -> list[dict[str, object]]:
    """The connection rows of the world's table."""
    return await table_rows(w.azurite, w.store.settings.table_name)


async def roster_rows_of(w: World) -> list[IndexedMember]:
    """The member-index rows (with their pair copies) of the rooms of the cases."""
    rows = await all_rows(w.azurite, w.store.settings.table_name)
    partitions = {room_partition(room) for room in ROOMS}
    return [IndexedMember.from_table(row, etag=etag_of(row)) for row in rows if row["PartitionKey"] in partitions]


Counts = dict[str, dict[str, int]]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_every_crash_point_converges(azurite: Azurite, proxy: FaultProxy, figures: Figures, case: Case) -> None:
    """Fail each table request and queue schedule of the event three ways; the promised recovery (the decisions
    delivered at least once, the sweeps) makes presence and the rosters true."""
    total, queued, fed = await requests_of(azurite, proxy, case)
    assert total + queued > 0
    modes: Counts = {mode: {"points": 0, "converged": 0, "next_sweep": 0} for mode in MODES}
    for k in range(1, total + 1):
        for mode, faults in MODES.items():
            label = f"{case.name}: request {k} of {total}, {mode}"
            fault, after = faults()

            def plan(w: World, fault: Fault = fault, after: Fault = after, k: int = k) -> None:
                w.proxy.plan(*([PASS] * (k - 1)), fault, then=after)

            promised = promised_at_next_sweep(case, k, total, mode)
            by_next_sweep = await crash_point(azurite, proxy, case, plan, promised=promised, label=label)
            count(modes[mode], by_next_sweep=by_next_sweep)
    queue_modes: Counts = {mode: {"points": 0, "converged": 0, "next_sweep": 0} for mode in QUEUE_MODES}
    for k in range(1, queued + 1):
        for mode, (fault_, after_) in QUEUE_MODES.items():
            label = f"{case.name}: queue schedule {k} of {queued}, {mode}"

            def plan_queue(w: World, fault: str = fault_, after: str = after_, k: int = k) -> None:
                w.queue.plan(*(["pass"] * (k - 1)), fault, then=after)

            promised = case.retried or mode != "outage"
            by_next_sweep = await crash_point(azurite, proxy, case, plan_queue, promised=promised, label=label)
            count(queue_modes[mode], by_next_sweep=by_next_sweep)
    feed_modes: Counts = {mode: {"points": 0, "converged": 0, "next_sweep": 0} for mode in QUEUE_MODES}
    for k in range(1, fed + 1):
        for mode, (fault_, after_) in QUEUE_MODES.items():
            label = f"{case.name}: feed put {k} of {fed}, {mode}"

            def plan_feed(w: World, fault: str = fault_, after: str = after_, k: int = k) -> None:
                w.feed.plan(*(["pass"] * (k - 1)), fault, then=after)

            # A put that raises loses its announcement with it (feed F2): the sweep's repeat (P5) is within a lease.
            promised = mode == "committed, answered 500"
            by_next_sweep = await crash_point(azurite, proxy, case, plan_feed, promised=promised, label=label)
            count(feed_modes[mode], by_next_sweep=by_next_sweep)
    kinds = (("table", total, modes), ("queue", queued, queue_modes), ("feed", fed, feed_modes))
    for kind, requests, counts in kinds:
        if requests:
            points = sum(c["points"] for c in counts.values())
            next_sweep = sum(c["next_sweep"] for c in counts.values())
            print(f"\n{case.name}: {requests} {kind} requests, {points} crash points, {points} converged, ", end="")
            print(f"{next_sweep} by the next sweep")
            name = (
                case.name
                if kind == "table"
                else f"{case.name} ({'queue schedules' if kind == 'queue' else 'feed puts'})"
            )
            figures.put("crash_points", name, {"requests": requests, "kind": kind, "modes": counts})


def count(counts: dict[str, int], *, by_next_sweep: bool) -> None:
    """Count a crash point that converged (reached only when every assertion held)."""
    counts["points"] += 1
    counts["converged"] += 1
    counts["next_sweep"] += by_next_sweep


async def crash_point(
    azurite: Azurite,
    proxy: FaultProxy,
    case: Case,
    plan: Callable[[World], None],
    *,
    promised: bool,
    label: str,
) -> bool:
    """Set the case up, run its event with the planned fault, lift it and run the recovery; assert convergence
    where promised; return whether it had converged by the next sweep."""
    async with world(azurite, proxy, case) as w:
        await case.setup(w, w.proxied)
        plan(w)
        with contextlib.suppress(StorageError):  # a function that raises: its outputs are lost
            await case.event(w, w.proxied)
        w.proxy.plan(then=PASS)
        w.queue.plan()
        w.feed.plan()
        # The decisions due: delivered (one whose function raised again), then each a second time.
        await w.deliver(w.proxied, DECISIONS)
        await w.redeliver(w.proxied, DECISIONS + timedelta(seconds=30))
        await w.sweep(w.store, NEXT_SWEEP)
        by_next_sweep = True
        try:
            await assert_converged(w, now=NEXT_SWEEP, leases_lapsed=False, label=label)
            await assert_rosters(w, case.rooms, now=NEXT_SWEEP, label=label)
        except AssertionError:
            by_next_sweep = False
        if promised:
            await assert_converged(w, now=NEXT_SWEEP, leases_lapsed=False, label=label)
            await assert_rosters(w, case.rooms, now=NEXT_SWEEP, label=label)
        if w.queue.delivered:
            late = NEXT_SWEEP + timedelta(minutes=1)
            await w.redeliver(w.proxied, late)  # a late duplicate changes nothing
            if promised:
                await assert_converged(w, now=late, leases_lapsed=False, label=label)
                await assert_rosters(w, case.rooms, now=late, label=label)
        await w.sweep(w.store, AFTER_LEASES)
        await w.sweep(w.store, AFTER_LEASES + timedelta(minutes=5))
        await w.deliver(w.proxied, AFTER_LEASES + timedelta(minutes=5))
        final = AFTER_LEASES + timedelta(minutes=5)
        await assert_converged(w, now=final, leases_lapsed=True, label=label)
        await assert_occupancy_heard(w, case.rooms, label=label)
        await assert_rosters(w, case.rooms, now=final, label=label)  # settles stale pending flags (roster C3)
        await assert_rosters(w, case.rooms, now=final, label=label)  # so this reads the copies themselves
        assert not w.queue.pending, (label, w.queue.pending)
    return by_next_sweep


def promised_at_next_sweep(case: Case, k: int, total: int, mode: str) -> bool:
    """Return whether the design promises convergence by the next sweep (presence P5) for this crash point.

    An event whose decision committed (its transaction: the last request, unless the case says which) and
    that then raised before announcing (an outage at once, or at a roster copy) has recorded a decision that
    nothing outside the user's partition points to; its announcement is lost (roster C2), and a queue's
    redelivery finds nothing left to do (grace G2). The sweep finds it when it reaches the user's index
    entries, within one lease. Everything else converges by the next sweep.
    """
    if case.name.startswith("sweep"):
        return True
    decided, announced = case.decided or total, case.announced or total
    # Between the two: the roster copies, whose failure raises (an answer 500 is retried by the SDK: nothing lost).
    raised_after = decided < k <= announced and mode != "committed, answered 500"
    return not ((k == decided and mode == "committed, then outage") or raised_after)


@dataclass(frozen=True)
class RoomCase:
    """A join or leave to enumerate: the caller's user is `ada` (two tabs), the room `club`."""

    name: str
    member_before: bool
    joining: bool


ROOM_CASES = [RoomCase("join", False, True), RoomCase("leave", True, False), RoomCase("repeated join", True, True)]


@pytest.mark.parametrize("case", ROOM_CASES, ids=[case.name for case in ROOM_CASES])
async def test_every_room_crash_point_leaves_a_whole_membership(
    azurite: Azurite, proxy: FaultProxy, figures: Figures, case: RoomCase
) -> None:
    """Fail each table request of a join or leave three ways: nobody ever sees half a membership (R1), and
    the client's retry after the error it was answered ends in the state it asked for, with its group actions."""

    async def setup(w: World) -> None:
        await connect(w, w.proxied, "ada", "a1", T0)
        await connect(w, w.proxied, "ada", "a2", T0)
        if case.member_before:
            await Rooms(w.proxied).join("ada", "club", now=T0)

    async def event(w: World) -> RoomChange:
        rooms = Rooms(w.proxied)
        moment = T0 + timedelta(seconds=1)
        return await (rooms.join if case.joining else rooms.leave)("ada", "club", now=moment)

    base = _case(case.name, _nothing, _nothing)
    async with world(azurite, proxy, base) as w:
        await setup(w)
        before = proxy.requests
        await event(w)
        total = proxy.requests - before
    modes = {mode: {"points": 0, "converged": 0, "next_sweep": 0} for mode in MODES}
    for k in range(1, total + 1):
        for mode, faults in MODES.items():
            label = f"{case.name}: request {k} of {total}, {mode}"
            fault, after = faults()
            async with world(azurite, proxy, base) as w:
                await setup(w)
                proxy.plan(*([PASS] * (k - 1)), fault, then=after)
                change: RoomChange | None = None
                with contextlib.suppress(StorageError):  # the caller is answered `error` with retry: true
                    change = await event(w)
                proxy.plan(then=PASS)
                await assert_whole_membership(w, label=label)
                if change is None:
                    change = await event(w)  # the client's retry
                assert (change.joined, set(change.connections)) == (case.joining, {"a1", "a2"}), label
                assert await member(w) is case.joining, label
                await assert_whole_membership(w, label=label)
                await w.sweep(w.store, NEXT_SWEEP)
                await assert_converged(w, now=NEXT_SWEEP, leases_lapsed=False, label=label)
            modes[mode]["points"] += 1
            modes[mode]["converged"] += 1
            modes[mode]["next_sweep"] += 1
    points = sum(counts["points"] for counts in modes.values())
    print(f"\n{case.name}: {total} requests, {points} crash points, {points} converged")
    figures.put("crash_points", f"room {case.name}", {"requests": total, "modes": modes})


async def member(w: World) -> bool:
    """Return whether ada is in club by her partition (the truth)."""
    return "club" in (await w.store.presence_of("ada")).rooms


async def assert_whole_membership(w: World, *, label: str) -> None:
    """The room lists ada exactly when her partition says she is a member (R1: readers never see half)."""
    listed = [m.user for m in (await Rooms(w.store).members("club")).members]
    assert listed == (["ada"] if await member(w) else []), (label, listed)


@pytest.mark.parametrize("case", ROOM_CASES, ids=[case.name for case in ROOM_CASES])
async def test_every_room_function_crash_point_keeps_the_roster_true(
    azurite: Azurite, proxy: FaultProxy, figures: Figures, case: RoomCase
) -> None:
    """Fail each table request of the join_room or leave_room function three ways: after the client's retry, and
    at every sweep after, the room's snapshot lists exactly its members, each with their highest announced pair."""
    base = _case(f"{case.name} function", _nothing, _nothing, rooms=("club",))
    joined = T0 + timedelta(seconds=1)

    async def setup(w: World) -> None:
        for user, tab in (("ada", "a1"), ("ada", "a2"), ("bob", "b1")):
            await connected(w, w.proxied, user, tab, T0)
        await membership(w, w.proxied, "bob", "b1", "club", T0)
        if case.member_before:
            await membership(w, w.proxied, "ada", "a1", "club", T0)

    async def event(w: World) -> list[Message]:
        return await membership(w, w.proxied, "ada", "a1", "club", joined, joining=case.joining)

    async with world(azurite, proxy, base) as w:
        await setup(w)
        before = proxy.requests
        await event(w)
        total = proxy.requests - before
    modes: Counts = {mode: {"points": 0, "converged": 0, "next_sweep": 0} for mode in MODES}
    for k in range(1, total + 1):
        for mode, faults in MODES.items():
            label = f"{case.name} function: request {k} of {total}, {mode}"
            fault, after = faults()
            async with world(azurite, proxy, base) as w:
                await setup(w)
                proxy.plan(*([PASS] * (k - 1)), fault, then=after)
                sent = await event(w)  # the function answers a storage failure with an error; it does not raise
                proxy.plan(then=PASS)
                errors = [m["arguments"][0] for m in sent if m.get("target") == ERROR_TARGET]
                assert all(error.get("retry") is True for error in errors), (label, errors)
                await assert_rosters(w, base.rooms, now=joined, label=label)
                if errors:
                    sent = await event(w)  # the client's retry
                assert not [m for m in sent if m.get("target") == ERROR_TARGET], (label, sent)
                assert await member(w) is case.joining, label
                if case.joining:  # the joiner's snapshot names every member
                    (snapshot,) = [m["arguments"][0] for m in sent if m.get("target") == SYNC_TARGET]
                    assert sorted(entry["user"] for entry in snapshot["users"]) == ["ada", "bob"], (label, snapshot)
                await assert_rosters(w, base.rooms, now=joined, label=label)
                await w.sweep(w.store, NEXT_SWEEP)
                await assert_converged(w, now=NEXT_SWEEP, leases_lapsed=False, label=label)
                await assert_rosters(w, base.rooms, now=NEXT_SWEEP, label=label)
                await assert_occupancy_heard(w, base.rooms, label=label)
                final = AFTER_LEASES + timedelta(minutes=5)
                await w.sweep(w.store, AFTER_LEASES)
                await w.sweep(w.store, final)
                await assert_converged(w, now=final, leases_lapsed=True, label=label)
                await assert_occupancy_heard(w, base.rooms, label=label)
                await assert_rosters(w, base.rooms, now=final, label=label)
            count(modes[mode], by_next_sweep=True)
    points = sum(counts["points"] for counts in modes.values())
    print(f"\n{case.name} function: {total} requests, {points} crash points, {points} converged")
    figures.put("crash_points", f"room {case.name} function (roster)", {"requests": total, "modes": modes})


ACCESS_CASES = ["grant", "revoke"]


@pytest.mark.parametrize("kind", ACCESS_CASES)
async def test_every_access_crash_point_ends_granted_or_revoked(
    azurite: Azurite, proxy: FaultProxy, figures: Figures, kind: str
) -> None:
    """Fail each table request of a server's grant or revoke three ways: nobody sees half a membership (R1); the
    operator's retry after the error ends granted or revoked; a revoke that committed is acted on by the user's next
    connect (its older tabs leave the room's group) and by the sweep, which forgets it once those tabs are gone (R4)."""
    granting = kind == "grant"

    async def setup(w: World) -> None:
        await connect(w, w.proxied, "ada", "a1", T0)
        await connect(w, w.proxied, "ada", "a2", T0)
        if not granting:
            await Rooms(w.proxied).grant("ada", "club", now=T0)

    async def event(w: World) -> RoomChange:
        rooms = Rooms(w.proxied)
        moment = T0 + timedelta(seconds=1)
        return await (rooms.grant if granting else rooms.revoke)("ada", "club", now=moment)

    base = _case(f"room {kind}", _nothing, _nothing)
    async with world(azurite, proxy, base) as w:
        await setup(w)
        before = proxy.requests
        await event(w)
        total = proxy.requests - before
    modes: Counts = {mode: {"points": 0, "converged": 0, "next_sweep": 0} for mode in MODES}
    for k in range(1, total + 1):
        for mode, faults in MODES.items():
            label = f"{kind}: request {k} of {total}, {mode}"
            fault, after = faults()
            async with world(azurite, proxy, base) as w:
                await setup(w)
                proxy.plan(*([PASS] * (k - 1)), fault, then=after)
                change: RoomChange | None = None
                with contextlib.suppress(StorageError):  # the operator is answered 503
                    change = await event(w)
                proxy.plan(then=PASS)
                await assert_whole_membership(w, label=label)
                view = await w.store.read_user("ada")
                if not granting and "club" in view.revoked:  # committed: the next events act on it, retried or not
                    await assert_revoke_redone(w, label=label)
                    assert not await member(w), label
                    assert "club" not in (await w.store.read_user("ada")).grants, label
                    await assert_whole_membership(w, label=label)
                    count(modes[mode], by_next_sweep=True)
                    continue
                if change is None:
                    change = await event(w)  # the operator's retry
                assert (change.joined, set(change.connections)) == (granting, {"a1", "a2"}), label
                view = await w.store.read_user("ada")
                assert await member(w) is granting, label
                assert ("club" in view.grants) is granting, label
                await assert_whole_membership(w, label=label)
                await w.sweep(w.store, NEXT_SWEEP)
                await assert_converged(w, now=NEXT_SWEEP, leases_lapsed=False, label=label)
            count(modes[mode], by_next_sweep=True)
    points = sum(counts["points"] for counts in modes.values())
    print(f"\nroom {kind}: {total} requests, {points} crash points, {points} converged")
    figures.put("crash_points", f"room {kind} (a server's)", {"requests": total, "modes": modes})


async def assert_revoke_redone(w: World, *, label: str) -> None:
    """A committed revoke whose group removal was lost: ada's next connect sends her older tabs out of the room's
    group (not the new one in); a sweep that reads her while they live does it again and keeps the revocation; once
    they are gone a sweep forgets it."""
    w.clock.at = T0 + timedelta(seconds=2)
    sent = await on_connected(w.store, invocation(w, "ada", "a3", "connected"))
    actions = {(m["action"], m["groupName"], m["connectionId"]) for m in sent if "action" in m}
    assert {("remove", "club", "a1"), ("remove", "club", "a2")} <= actions, (label, actions)
    assert ("add", "club", "a3") not in actions, (label, actions)
    alive = FakeService({"a1": Liveness.ALIVE, "a2": Liveness.ALIVE, "a3": Liveness.ALIVE})
    result = await sweep(w.store, liveness=alive, now=AFTER_LEASES)
    assert sorted(result.lingering) == [("a1", "club"), ("a2", "club")], (label, result.lingering)
    assert "club" in (await w.store.read_user("ada")).revoked, label
    gone = FakeService({"a1": Liveness.GONE, "a2": Liveness.GONE, "a3": Liveness.ALIVE})
    result = await sweep(w.store, liveness=gone, now=AFTER_LEASES + TTL)
    assert result.lingering == [], (label, result.lingering)
    assert "club" not in (await w.store.read_user("ada")).revoked, label
