"""The grace period before offline (mapping.presence.grace, G1-G3), against Azurite, with in-memory delayed actions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mapping.errors import InvalidRequestError, StorageUnavailableError
from mapping.presence.grace import Decision, Grace
from mapping.presence.state import PresenceChange
from mapping.presence.store import ConnectionStore
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import Listing, Liveness
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.delayed import FakeDelayedActions
from testkit.fake_service import FakeService
from testkit.tables import drop_table, make_settings, unique_table_name

GRACE = timedelta(seconds=15)
RECONCILED = SignalRConnection(endpoint="http://127.0.0.1:9", access_key="unused-by-the-fake")
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(azurite: Azurite) -> AsyncIterator[ConnectionStore]:
    """A store with a 15 s grace on a fresh table."""
    async with grace_store(azurite) as store:
        yield store


@pytest.fixture
async def reconciled_store(azurite: Azurite) -> AsyncIterator[ConnectionStore]:
    """A store with a 15 s grace on a fresh table whose sweep checks rows with the SignalR service."""
    async with grace_store(azurite, signalr=RECONCILED) as store:
        yield store


@contextlib.asynccontextmanager
async def grace_store(azurite: Azurite, **options: Any) -> AsyncIterator[ConnectionStore]:
    """Open a store with a 15 s grace (and `options` among its settings) on a fresh table; drop the table after."""
    settings = make_settings(azurite.connection_string, unique_table_name(), presence_grace=GRACE, **options)
    store = ConnectionStore(settings, retry_total=1)
    try:
        yield store
    finally:
        await store.close()
        await drop_table(azurite, settings.table_name)


@pytest.fixture
def queue() -> FakeDelayedActions:
    """The delayed actions, held in memory until a test delivers them."""
    return FakeDelayedActions(clock=lambda: T0)


async def lose_the_decision(
    store: ConnectionStore, queue: FakeDelayedActions, user: str, connection_id: str, *, connected_at: datetime = T0
) -> Grace:
    """Connect at `connected_at`, disconnect at T0 within the grace, and lose the decision the disconnect scheduled."""
    grace = Grace(store.writes, queue)
    await store.connect(user, connection_id, now=connected_at)
    await grace.end(user, connection_id, now=T0)
    queue.pending.clear()  # the queue lost it
    return grace


async def decide_due(grace: Grace, queue: FakeDelayedActions, now: datetime) -> list[PresenceChange]:
    """Deliver every decision due at `now`, as the queue trigger would; return what they announce."""
    heard: list[PresenceChange] = []

    async def handle(body: str) -> None:
        change = await grace.decide(Decision.from_body(body), now=now)
        if change is not None:
            heard.append(change)

    await queue.deliver_due(handle, now=now)
    return heard


async def test_a_reload_within_the_grace_announces_nothing(store: ConnectionStore, queue: FakeDelayedActions) -> None:
    """G1: close the last tab and open another within the grace: no announcement, the status carries over."""
    grace = Grace(store.writes, queue)
    await store.connect("ada", "a1", now=T0)
    await store.set_status("ada", "a1", "busy", now=T0)
    assert await grace.end("ada", "a1", now=T0 + timedelta(seconds=1)) is True
    assert [Decision.from_body(s.body).due for s in queue.pending] == [T0 + timedelta(seconds=1) + GRACE]
    reload = await store.connect("ada", "a2", now=T0 + timedelta(seconds=2))
    assert reload.presence is None
    presence = await store.presence_of("ada", now=T0 + timedelta(seconds=3))
    assert (presence.state.online, presence.state.connections, presence.state.status) == (True, 1, "busy")
    assert [c.connection_id for c in presence.connections] == ["a2"]
    assert await decide_due(grace, queue, T0 + timedelta(seconds=20)) == []
    assert queue.pending == []


async def test_the_grace_expiring_announces_offline_once(store: ConnectionStore, queue: FakeDelayedActions) -> None:
    """G2: with no connection back, the decision announces offline, last seen at the disconnect; a repeat is silent."""
    grace = Grace(store.writes, queue)
    online = (await store.connect("bo", "b1", now=T0)).presence
    ended_at = T0 + timedelta(seconds=5)
    await grace.end("bo", "b1", now=ended_at)
    during = await store.presence_of("bo", now=ended_at + GRACE / 2)
    assert during.state.online is True  # still announced online
    assert during.connections == []  # but nothing is sent to the closed connection
    [offline] = await decide_due(grace, queue, ended_at + GRACE)
    assert online is not None
    assert (offline.state.online, offline.state.last_seen, offline.version > online.version) == (False, ended_at, True)
    assert (await store.read_user("bo")).rows == {}  # the ended row is gone
    again = await grace.decide(Decision("bo", ended_at + GRACE), now=ended_at + GRACE * 2)
    assert again is None


async def test_a_doubled_decision_converges(store: ConnectionStore, queue: FakeDelayedActions) -> None:
    """G2: the same decision delivered twice at once on one instance announces offline once."""
    grace = Grace(store.writes, queue)
    await store.connect("cy", "c1", now=T0)
    await grace.end("cy", "c1", now=T0)
    decision = Decision("cy", T0 + GRACE)
    results = await asyncio.gather(grace.decide(decision, now=T0 + GRACE), grace.decide(decision, now=T0 + GRACE))
    [change] = [change for change in results if change is not None]  # one instance: the second waits its turn
    assert (change.state.online, change.state.last_seen) == (False, T0)
    assert (await store.presence_of("cy", now=T0 + GRACE)).state.online is False


async def test_an_early_decision_waits_for_the_rest_of_the_grace(
    store: ConnectionStore, queue: FakeDelayedActions
) -> None:
    """G2: a decision delivered before it is due changes nothing and schedules itself for the rest of the grace."""
    grace = await lose_the_decision(store, queue, "di", "d1")
    assert await grace.decide(Decision("di", T0 + GRACE), now=T0 + timedelta(seconds=5)) is None
    assert [s.body for s in queue.pending] == [Decision("di", T0 + GRACE).to_body()]
    assert (await store.presence_of("di", now=T0 + timedelta(seconds=6))).state.online is True


async def test_a_lost_decision_is_made_by_the_sweep(
    reconciled_store: ConnectionStore, queue: FakeDelayedActions
) -> None:
    """G3: the sweep never ends a row a grace holds, and makes a lost decision once the grace is over."""
    store = reconciled_store
    service = FakeService({"e1": Liveness.GONE})  # the service has closed it: only the grace keeps it
    await lose_the_decision(store, queue, "eli", "e1", connected_at=T0 - timedelta(minutes=20))
    during = await sweep(store, liveness=service, now=T0 + GRACE / 2)
    assert during.presence == []
    assert (await store.presence_of("eli", now=T0 + GRACE / 2)).state.online is True
    after = await sweep(store, liveness=service, now=T0 + GRACE * 2)
    assert [(c.user, c.state.online, c.state.last_seen) for c in after.presence] == [("eli", False, T0)]


async def test_a_reconciling_sweep_dates_a_lost_decision_at_the_disconnect(
    reconciled_store: ConnectionStore, queue: FakeDelayedActions
) -> None:
    """G3: a listing sweep that makes a lost grace decision says last seen at the disconnect, not at the sweep."""
    service = FakeService(listing=Listing.LISTED)  # the listing lacks it: the service closed it
    await lose_the_decision(reconciled_store, queue, "jo", "j1", connected_at=T0 - timedelta(minutes=20))
    after = await sweep(reconciled_store, liveness=service, now=T0 + GRACE * 2)
    assert [(c.user, c.state.online, c.state.last_seen) for c in after.presence] == [("jo", False, T0)]


async def test_two_tabs_decided_at_once_announce_offline_once(
    store: ConnectionStore, queue: FakeDelayedActions
) -> None:
    """Two tabs closing schedule two decisions; delivered at once on one instance, offline is announced once."""
    grace = Grace(store.writes, queue)
    await store.connect("ivy", "i1", now=T0)
    await store.connect("ivy", "i2", now=T0)
    await grace.end("ivy", "i1", now=T0)
    await grace.end("ivy", "i2", now=T0 + timedelta(seconds=1))
    decisions = [Decision.from_body(scheduled.body) for scheduled in queue.pending]
    moment = T0 + GRACE * 2
    results = await asyncio.gather(*(grace.decide(decision, now=moment) for decision in decisions))
    [change] = [change for change in results if change is not None]
    assert (change.state.online, change.state.last_seen) == (False, T0 + timedelta(seconds=1))
    assert not store.turns, "every turn was given back"


async def test_several_tabs_closing_keep_their_count_until_the_grace_ends(
    store: ConnectionStore, queue: FakeDelayedActions
) -> None:
    """A tab closing out of three announces its count only when its grace ends; a reload of one tab, nothing."""
    grace = Grace(store.writes, queue)
    for tab in ("f1", "f2", "f3"):
        await store.connect("fay", tab, now=T0)
    await grace.end("fay", "f1", now=T0)
    await grace.end("fay", "f2", now=T0)
    assert (await store.connect("fay", "f4", now=T0 + timedelta(seconds=1))).presence is None  # f2's reload
    [change] = await decide_due(grace, queue, T0 + GRACE)
    assert (change.state.online, change.state.connections) == (True, 2)


async def test_a_repeated_disconnect_schedules_nothing(store: ConnectionStore, queue: FakeDelayedActions) -> None:
    """A disconnect of a row already gone (a repeat, a reload took it) stamps nothing and schedules nothing."""
    grace = Grace(store.writes, queue)
    assert await grace.end("gus", "g1", now=T0) is False
    assert queue.pending == []


async def test_an_unreachable_queue_fails_visibly_and_the_sweep_still_decides(
    store: ConnectionStore, queue: FakeDelayedActions
) -> None:
    """A decision that cannot be scheduled raises (the disconnect fails in the logs); the sweep ends the row later."""
    grace = Grace(store.writes, queue)
    await store.connect("hal", "h1", now=T0 - timedelta(minutes=20))
    queue.fail_with = StorageUnavailableError("queue down")
    with pytest.raises(StorageUnavailableError):
        await grace.end("hal", "h1", now=T0)
    after = await sweep(store, now=T0 + GRACE * 2)
    assert [(c.user, c.state.online) for c in after.presence] == [("hal", False)]


def test_a_decision_that_is_not_one_is_refused() -> None:
    """A queue message that is no decision raises InvalidRequestError (dropped, never retried)."""
    for body in ("{}", "not json", '{"user": 5, "due": "x"}', '{"user": "a", "due": "yesterday"}'):
        with pytest.raises(InvalidRequestError):
            Decision.from_body(body)
    assert Decision.from_body(Decision("Ann", T0).to_body()) == Decision("Ann", T0)
