"""Crash points, enumerated: every storage request of every event, failed in each way, and the system converges.

For each event the suite first runs it cleanly through a fault proxy and counts its table requests.
Then, for each request k and each mode, it sets the same state up again on a fresh table, runs the
event with request k failed, lifts the fault and runs the recovery the design promises (the sweeps
of `mapping.presence`, P5), asserting at each sweep where convergence is promised:

- the highest version announced for each user states what `GET /api/users/{user}` says;
- no version names two states (over every announcement and the recorded presence rows);
- once the leases lapse, only the connections the service still has keep rows, and nobody else is
  announced online.

Modes: an outage from request k on (longer than the retries); request k committing and answered 500
(the SDK's retry meets its own result); request k committing, then an outage.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import Azurite, drop_table, make_settings, presence_rows, table_rows, unique_table_name
from fake_service import FakeService
from faultproxy import PASS, Fault, FaultProxy, fault_proxy
from figures import Figures
from mapping.errors import StorageError
from mapping.grace import Decision, Grace
from mapping.liveness import AGE_ONLY, Listing, Liveness
from mapping.presence import PresenceChange
from mapping.rooms import RoomChange, Rooms
from mapping.settings import SignalRConnection
from mapping.store import ConnectionStore
from mapping.sweep import sweep
from mapping.table import int_value
from testkit.delayed import FakeDelayedActions

pytestmark = pytest.mark.reliability

TTL = timedelta(seconds=600)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NEXT_SWEEP = T0 + timedelta(minutes=5)  # the next run of the shipped schedule
AFTER_LEASES = T0 + TTL + timedelta(minutes=6)  # every lease taken at T0 has lapsed by the sweep after it
OUTAGE = Fault.answer(503)
GRACE = timedelta(seconds=15)
RECONCILED = SignalRConnection(endpoint="http://127.0.0.1:9", access_key="unused-by-the-fake")
MODES: dict[str, Callable[[], tuple[Fault, Fault]]] = {
    "outage": lambda: (OUTAGE, OUTAGE),
    "committed, answered 500": lambda: (Fault.committed(500), PASS),
    "committed, then outage": lambda: (Fault.committed(500), OUTAGE),
}


@dataclass
class World:
    """One crash case: the stores (direct and through the proxy), the announcements heard, the service."""

    azurite: Azurite
    store: ConnectionStore
    proxied: ConnectionStore
    proxy: FaultProxy
    heard: list[PresenceChange] = field(default_factory=list)
    service: FakeService | None = None
    queue: FakeDelayedActions = field(default_factory=lambda: FakeDelayedActions(clock=lambda: T0))

    def hear(self, *changes: PresenceChange | None) -> None:
        """Record announcements that reached clients."""
        self.heard += [change for change in changes if change is not None]

    async def sweep(self, store: ConnectionStore, now: datetime) -> None:
        """Deliver the grace decisions due (the queue trigger), then run one sweep; record what both announce."""
        await self.decide(store, now)
        result = await sweep(store, liveness=self.service or AGE_ONLY, now=now)
        self.hear(*result.presence)

    async def decide(self, store: ConnectionStore, now: datetime) -> None:
        """Deliver every grace decision due at `now`; one that raises stays queued (the queue tries it again)."""

        async def handle(body: str) -> None:
            self.hear(await Grace(store, self.queue).decide(Decision.from_body(body), now=now))

        await self.queue.deliver_due(handle, now=now)


Step = Callable[[World, ConnectionStore], Awaitable[None]]


async def connect(world: World, store: ConnectionStore, user: str, tab: str, now: datetime) -> None:
    """A connected event; its announcement is heard only if the function returns."""
    world.hear((await store.connect(user, tab, now=now)).presence)


async def disconnect(world: World, store: ConnectionStore, user: str, tab: str, now: datetime) -> None:
    """A disconnected event."""
    world.hear((await store.disconnect(user, tab, now=now)).presence)


async def message(world: World, store: ConnectionStore, user: str, tab: str, now: datetime) -> None:
    """A client message: the caller's lease is refreshed (a revival is announced)."""
    world.hear((await store.touch(user, tab, now=now)).presence)


async def end(world: World, store: ConnectionStore, user: str, tab: str, now: datetime) -> None:
    """A disconnected event with a grace: the row is stamped ended and its decision queued."""
    await Grace(store, world.queue).end(user, tab, now=now)


async def set_status(world: World, store: ConnectionStore, user: str, tab: str, status: str, now: datetime) -> None:
    """A client's `setStatus(status)`: stored on the tab, the user's presence announced."""
    world.hear((await store.set_status(user, tab, status, now=now)).presence)


@dataclass(frozen=True)
class Case:
    """An event to enumerate: the state before it, the event, and the service's answers (None: age-based)."""

    name: str
    setup: Step
    event: Step
    service: dict[str, Liveness] | None = None
    listed: tuple[str, ...] | None = None  # reconciled: the settings name SignalR, whose group lists these
    grace: bool = False  # the store holds ended connections for GRACE (mapping.grace)


def _case(
    name: str,
    setup: Step,
    event: Step,
    service: dict[str, Liveness] | None = None,
    *,
    listed: tuple[str, ...] | None = None,
    grace: bool = False,
) -> Case:
    return Case(name, setup, event, service, listed, grace)


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
        lambda w, s: _all(
            connect(w, s, "ada", "a1", T0 - TTL * 0.6),
            connect(w, s, "bob", "b1", T0 - TTL * 0.6),
            connect(w, s, "cy", "c1", T0 - TTL * 0.6),
            connect(w, s, "cy", "c2", T0 - TTL * 1.5),
        ),
        lambda w, s: w.sweep(s, T0),
        service={"a1": Liveness.ALIVE, "b1": Liveness.GONE, "c1": Liveness.UNKNOWN, "c2": Liveness.ALIVE},
    ),
    _case(
        "sweep reconciling with a group listing",
        lambda w, s: _all(
            connect(w, s, "ada", "a1", T0 - TTL * 0.6),
            connect(w, s, "bob", "b1", T0 - TTL * 0.6),
            connect(w, s, "cy", "c1", T0 - TTL * 0.6),
            connect(w, s, "cy", "c2", T0 - TTL * 0.6),
        ),
        lambda w, s: w.sweep(s, T0),
        service={"b1": Liveness.GONE, "c2": Liveness.ALIVE},  # c2: a listing that lags a new connection
        listed=("a1", "c1"),
    ),
    _case(
        "last disconnect with a grace",
        lambda w, s: _all(connect(w, s, "ada", "a1", T0), set_status(w, s, "ada", "a1", "busy", T0)),
        lambda w, s: end(w, s, "ada", "a1", T0 + timedelta(seconds=1)),
        grace=True,
    ),
    _case(
        "reload within the grace",
        lambda w, s: _all(
            connect(w, s, "ada", "a1", T0), set_status(w, s, "ada", "a1", "busy", T0), end(w, s, "ada", "a1", T0)
        ),
        lambda w, s: connect(w, s, "ada", "a2", T0 + timedelta(seconds=2)),
        grace=True,
    ),
    _case(
        "grace decision",
        lambda w, s: _all(connect(w, s, "ada", "a1", T0), connect(w, s, "ada", "a2", T0), end(w, s, "ada", "a1", T0)),
        lambda w, s: w.decide(s, T0 + GRACE),
        grace=True,
    ),
]


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
    """A fresh table, a direct store and a store through the proxy (few, fast retries), both warmed up."""
    table = unique_table_name()
    options: dict[str, Any] = {
        "retry_total": 1,
        "retry_backoff_factor": 0.01,
        "retry_timeout": 2.0,
        "read_timeout": 2.0,
    }
    signalr: dict[str, Any] = {"signalr": RECONCILED} if case.listed is not None else {}
    if case.grace:
        signalr["presence_grace"] = GRACE
    store = ConnectionStore(make_settings(azurite.connection_string, table, ttl=TTL, **signalr))
    proxied = ConnectionStore(make_settings(proxied_connection(azurite, proxy), table, ttl=TTL, **signalr), **options)
    proxy.plan(then=PASS)
    await store.connections_of("warm-up")
    await proxied.connections_of("warm-up")
    service = FakeService(case.service) if case.service is not None else None
    if service is not None and case.listed is not None:
        service.listing, service.listed = Listing.LISTED, set(case.listed)
    try:
        yield World(azurite, store, proxied, proxy, service=service)
    finally:
        proxy.plan(then=PASS)
        await proxied.close()
        await store.close()
        await drop_table(azurite, table)


def proxied_connection(azurite: Azurite, proxy: FaultProxy) -> str:
    """Return the connection string of the test Azurite, through the proxy."""
    return azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")


async def requests_of(azurite: Azurite, proxy: FaultProxy, case: Case) -> int:
    """Run the event cleanly and return how many table requests it made."""
    async with world(azurite, proxy, case) as w:
        await case.setup(w, w.proxied)
        before = proxy.requests
        await case.event(w, w.proxied)
        return proxy.requests - before


async def assert_converged(w: World, *, now: datetime, leases_lapsed: bool, label: str) -> None:
    """Each user's highest announced version states what GET says (online, connections, status); no version
    names two states."""
    named: dict[tuple[str, int], set[State]] = {}
    for change in w.heard:
        named.setdefault((change.user.casefold(), change.version), set()).add(state_of(change))
    for user_key_, row in (await presence_rows_of(w)).items():
        if row.get("Version") is not None:
            recorded = (bool(row["Online"]), int_value(row.get("Connections")), str(row.get("Status") or "") or None)
            named.setdefault((user_key_, int_value(row["Version"])), set()).add(recorded)
    assert all(len(states) == 1 for states in named.values()), (label, named)
    users = {change.user.casefold() for change in w.heard} | {"ada", "bob", "cy"}
    for user in sorted(users):
        truth = (await w.store.presence_of(user, now=now)).state
        mine = [change for change in w.heard if change.user.casefold() == user]
        announced = state_of(max(mine, key=lambda change: change.version)) if mine else (False, 0, None)
        expected = (truth.online, truth.connections, truth.status)
        assert announced == expected, (label, user, expected, sorted((c.version, state_of(c)) for c in mine))
    if leases_lapsed:
        # Rows stay only for connections the service still has, or cannot say about (kept to the max age).
        kept = {key for key, answer in (w.service.answers if w.service else {}).items() if answer is not Liveness.GONE}
        kept |= w.service.listed if w.service else set()
        rows = {str(row["ConnectionId"]) for row in await table_rows_of(w)}
        assert rows <= kept, (label, rows, kept)


State = tuple[bool, int, str | None]  # online, live connections, status


def state_of(change: PresenceChange) -> State:
    """Return the part of an announcement a client shows (last seen follows from it)."""
    return (change.online, change.connections, change.status)


async def presence_rows_of(w: World) -> dict[str, dict[str, object]]:
    """The presence rows of the world's table."""
    return await presence_rows(w.azurite, w.store.settings.table_name)


async def table_rows_of(w: World) -> list[dict[str, object]]:
    """The connection rows of the world's table."""
    return await table_rows(w.azurite, w.store.settings.table_name)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_every_crash_point_converges(azurite: Azurite, proxy: FaultProxy, figures: Figures, case: Case) -> None:
    """Fail each table request of the event in each of three ways; the recovery sweeps make presence true."""
    total = await requests_of(azurite, proxy, case)
    assert total > 0
    modes = {mode: {"points": 0, "converged": 0, "next_sweep": 0} for mode in MODES}
    for k in range(1, total + 1):
        for mode, faults in MODES.items():
            label = f"{case.name}: request {k} of {total}, {mode}"
            fault, after = faults()
            async with world(azurite, proxy, case) as w:
                await case.setup(w, w.proxied)
                proxy.plan(*([PASS] * (k - 1)), fault, then=after)
                with contextlib.suppress(StorageError):  # a function that raises: its outputs are lost
                    await case.event(w, w.proxied)
                proxy.plan(then=PASS)
                await w.sweep(w.store, NEXT_SWEEP)
                with contextlib.suppress(AssertionError):
                    await assert_converged(w, now=NEXT_SWEEP, leases_lapsed=False, label=label)
                    modes[mode]["next_sweep"] += 1
                if promised_at_next_sweep(case, k, total, mode):
                    await assert_converged(w, now=NEXT_SWEEP, leases_lapsed=False, label=label)
                await w.sweep(w.store, AFTER_LEASES)
                await w.sweep(w.store, AFTER_LEASES + timedelta(minutes=5))
                await assert_converged(w, now=AFTER_LEASES + timedelta(minutes=5), leases_lapsed=True, label=label)
            modes[mode]["points"] += 1
            modes[mode]["converged"] += 1  # reached only when every assertion above held
    points = sum(counts["points"] for counts in modes.values())
    next_sweep = sum(counts["next_sweep"] for counts in modes.values())
    print(f"\n{case.name}: {total} requests, {points} crash points, {points} converged, {next_sweep} by the next sweep")
    figures.put("crash_points", case.name, {"requests": total, "modes": modes})


def promised_at_next_sweep(case: Case, k: int, total: int, mode: str) -> bool:
    """Return whether the design promises convergence by the next sweep (presence P5) for this crash point.

    An event whose last request (its transaction) committed before an outage has recorded a decision
    that nothing outside the user's partition points to; the sweep finds it when it reaches the
    user's index entries, within one lease. Everything else converges by the next sweep.
    """
    return case.name.startswith("sweep") or not (k == total and mode == "committed, then outage")


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
