"""The presence protocol's regressions: each way a decision used to be lost, reproduced against Azurite."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from mapping.errors import StorageError
from mapping.presence.settle import settle
from mapping.presence.state import PresenceChange
from mapping.presence.store import ConnectionStore
from mapping.signalr.liveness import Liveness
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.fake_service import FakeService
from testkit.faultproxy import Fault, FaultProxy, fault_proxy
from testkit.tables import drop_table, index_rows, make_settings, stores_on_one_table, table_rows, unique_table_name

TTL = timedelta(seconds=600)
OUTAGE = Fault.answer(503)
T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
async def proxied(azurite: Azurite) -> AsyncIterator[tuple[ConnectionStore, ConnectionStore, FaultProxy]]:
    """A store straight on Azurite and one through a fault proxy, on one fresh table."""
    table = unique_table_name()
    async with fault_proxy(azurite.port) as proxy:
        through = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
        direct = ConnectionStore(make_settings(azurite.connection_string, table, ttl=TTL))
        faulty = ConnectionStore(
            make_settings(through, table, ttl=TTL), retry_total=1, retry_backoff_factor=0.01, retry_timeout=2.0
        )
        await direct.connections_of("warm-up")
        await faulty.connections_of("warm-up")
        try:
            yield direct, faulty, proxy
        finally:
            await faulty.close()
            await direct.close()
            await drop_table(azurite, table)


def is_transaction(request: web.Request, body: bytes) -> bool:
    """Return whether a request is a table transaction (POST $batch)."""
    return request.method == "POST" and "$batch" in request.path


def first_transaction(fault: Fault) -> Callable[[web.Request, bytes], Fault | None]:
    """Return a proxy rule that applies `fault` to the first transaction only (its retry passes)."""
    used: list[bool] = []

    def rule(request: web.Request, body: bytes) -> Fault | None:
        if used or not is_transaction(request, body):
            return None
        used.append(True)
        return fault

    return rule


async def test_a_disconnect_committed_then_answered_500_still_announces_offline(
    proxied: tuple[ConnectionStore, ConnectionStore, FaultProxy],
) -> None:
    """The retried transaction meets its own delete (404): the user is announced offline, not left online."""
    direct, faulty, proxy = proxied
    online = (await faulty.connect("ann", "a1", now=T0)).presence
    proxy.rule = first_transaction(Fault.committed(500))
    outcome = await faulty.disconnect("ann", "a1", now=T0 + timedelta(seconds=1))
    proxy.rule = None
    assert online is not None
    assert outcome.presence is not None
    assert outcome.presence.state.online is False
    assert outcome.presence.version > online.version
    assert await direct.connections_of("ann", now=T0) == []


async def test_a_first_connect_committed_then_answered_500_announces_once(
    proxied: tuple[ConnectionStore, ConnectionStore, FaultProxy],
) -> None:
    """The presence write that committed and was answered 500 (then 412 or 409 on retry) is announced."""
    _direct, faulty, proxy = proxied
    proxy.rule = first_transaction(Fault.committed(500))
    outcome = await faulty.connect("bea", "b1", now=T0)
    proxy.rule = None
    assert outcome.presence is not None
    assert outcome.presence.state.online is True


async def test_one_users_failure_never_drops_another_users_announcement(
    proxied: tuple[ConnectionStore, ConnectionStore, FaultProxy],
) -> None:
    """A sweep whose transaction for one user keeps failing still returns the others' offline announcements."""
    direct, faulty, proxy = proxied
    for user in ("cat", "dan", "eve"):
        await direct.connect(user, f"{user}1", now=T0 - TTL * 2)
    # Every transaction on dan's partition fails: an outage that only dan's writes meet.
    proxy.rule = lambda request, body: OUTAGE if is_transaction(request, body) and b"dan" in body else None
    result = await sweep(faulty, now=T0)
    proxy.rule = None
    assert sorted(result.offline_users) == ["cat", "eve"]
    assert (result.failed_users, result.complete) == (1, True)
    again = await sweep(direct, now=T0 + timedelta(minutes=5))
    assert again.offline_users == ["dan"]


async def test_the_timer_raises_only_when_nothing_was_decided(azurite: Azurite) -> None:
    """With storage down from the start the sweep raises (a visible failure); nothing is lost by raising."""
    store = ConnectionStore(
        make_settings(azurite.connection_string.replace(f":{azurite.port}/", ":9/"), "NoSuchTable"), retry_total=0
    )
    try:
        with pytest.raises(StorageError):
            await sweep(store, now=T0)
    finally:
        await store.close()


async def test_a_revived_lease_is_announced_online(store: ConnectionStore) -> None:
    """A lapsed connection that sends a message after its user was announced offline is announced online again."""
    await store.connect("fay", "f1", now=T0 - TTL * 2)
    await store.connect("fay", "f2", now=T0 - timedelta(seconds=2))
    left = await store.disconnect("fay", "f2", now=T0 - timedelta(seconds=1))
    assert left.presence is not None
    assert left.presence.state.online is False  # f1's lease has lapsed
    revived = await ConnectionStore(store.settings).touch("fay", "f1", now=T0)  # another instance: no memory of f1
    assert revived.found is True
    assert revived.presence is not None
    assert (revived.presence.state.online, revived.presence.version > left.presence.version) == (True, True)


async def test_a_repeated_connected_event_revives_a_lapsed_lease_with_an_announcement(store: ConnectionStore) -> None:
    """A connected event repeated for a lapsed row after the user was announced offline announces online."""
    await store.connect("gus", "g1", now=T0 - TTL * 2)
    await sweep(store, now=T0 - TTL)  # the lapsed lease is removed and announced offline...
    await store.connect("gus", "g2", now=T0 - TTL * 2)  # ...a row written late, already lapsed
    await store.connect("gus", "g3", now=T0 - timedelta(seconds=2))
    await store.disconnect("gus", "g3", now=T0 - timedelta(seconds=1))
    again = await store.connect("gus", "g2", now=T0)
    assert again.came_online is True


async def test_a_sweep_refresh_of_a_lapsed_lease_is_announced(store: ConnectionStore) -> None:
    """A lease that lapsed while the service could not say, then found alive, is announced online again."""
    await store.connect("hal", "h1", now=T0)
    service = FakeService({"h1": Liveness.UNKNOWN})
    first = await sweep(store, liveness=service, now=T0 + TTL * 1.2)
    assert first.offline_users == ["hal"]  # kept for the next sweep, but no longer live
    service.answers["h1"] = Liveness.ALIVE
    second = await sweep(store, liveness=service, now=T0 + TTL * 1.3)
    assert [(c.user, c.state.online) for c in second.presence] == [("hal", True)]
    assert second.presence[0].version > first.presence[0].version


async def test_versions_grow_across_a_recreated_table(azurite: Azurite) -> None:
    """A table dropped and created again (or restored from a backup) still gives every user higher versions."""
    table = unique_table_name()
    store = ConnectionStore(make_settings(azurite.connection_string, table, ttl=TTL))
    try:
        before = (await store.connect("ida", "i1", now=T0)).presence
        offline = (await store.disconnect("ida", "i1", now=T0 + timedelta(seconds=1))).presence
        await drop_table(azurite, table)
        with contextlib.suppress(StorageError):
            await store.connections_of("ida")  # the first call after the drop fails and notices
        after = (await store.connect("ida", "i2", now=T0 + timedelta(seconds=2))).presence
        assert before is not None
        assert offline is not None
        assert after is not None
        assert before.version < offline.version < after.version
    finally:
        await store.close()
        await drop_table(azurite, table)


async def test_lowering_the_lease_orphans_no_row(azurite: Azurite) -> None:
    """Rows written under a 600 s lease are still swept by a deployment with a 60 s lease (narrower buckets)."""
    async with stores_on_one_table(azurite, dict(ttl=TTL), dict(ttl=timedelta(seconds=60))) as (old, new):
        table = old.settings.table_name
        for index in range(10):
            await old.connect(f"jo{index}", "j", now=T0 + timedelta(seconds=index * 7))
        kept = await sweep(new, now=T0 + timedelta(seconds=30))
        assert kept.deleted == 0
        result = await sweep(new, now=T0 + timedelta(seconds=200))
        assert result.deleted == 10
        assert sorted(result.offline_users) == [f"jo{index}" for index in range(10)]
        assert await table_rows(azurite, table) == []
        assert await index_rows(azurite, table) == []


async def test_raising_the_lease_evicts_no_live_row(azurite: Azurite) -> None:
    """Rows written under a 60 s lease are live for a deployment with a 600 s lease, and swept once it lapses."""
    async with stores_on_one_table(azurite, dict(ttl=timedelta(seconds=60)), dict(ttl=TTL)) as (old, new):
        await old.connect("kim", "k1", now=T0)
        early = await sweep(new, now=T0 + timedelta(seconds=300))
        assert (early.deleted, early.offline_users) == (0, [])
        assert [c.connection_id for c in await new.connections_of("kim", now=T0 + timedelta(seconds=300))] == ["k1"]
        late = await sweep(new, now=T0 + TTL + timedelta(minutes=5))
        assert (late.deleted, late.offline_users) == (1, ["kim"])


async def test_a_refused_first_connect_and_its_reconnect_end_announced_online(
    proxied: tuple[ConnectionStore, ConnectionStore, FaultProxy],
) -> None:
    """The first connect commits then meets an outage (SignalR refuses the client); the client reconnects on a new
    connection that stays alive. Its connect sees the user recorded online and announces nothing, so the sweep that
    reaches the refused connection's entry repeats the recorded online state (presence P5)."""
    direct, faulty, proxy = proxied
    committed: list[bool] = []

    def commit_then_outage(request: web.Request, body: bytes) -> Fault | None:
        if committed:
            return OUTAGE
        if is_transaction(request, body):
            committed.append(True)
            return Fault.committed(500)
        return None

    proxy.rule = commit_then_outage
    with pytest.raises(StorageError):
        await faulty.connect("lea", "ghost", now=T0)
    proxy.rule = None
    heard: list[PresenceChange] = []
    outcome = await direct.connect("lea", "real", now=T0 + timedelta(seconds=5))
    heard += [outcome.presence] if outcome.presence else []
    moment = T0
    for _ in range(4):  # the real tab keeps talking; the sweeps run every five minutes
        moment += timedelta(minutes=5)
        await direct.touch("lea", "real", now=moment)
        heard += (await sweep(direct, now=moment)).presence
    assert [c.connection_id for c in await direct.connections_of("lea", now=moment)] == ["real"]
    assert heard
    assert max(heard, key=lambda change: change.version).state.online is True


async def test_a_decision_made_on_a_stale_read_never_commits(store: ConnectionStore) -> None:
    """P2: a change committed between a read and the transaction built on it fails that transaction, which
    reads again; so a sweep that read a user with one lapsed row does not record them offline when a new tab
    opened meanwhile."""
    await store.connect("max", "old", now=T0 - TTL * 2)
    view = await store.read_user("max")
    other_instance = ConnectionStore(store.settings)
    try:
        await other_instance.connect("max", "new", now=T0)
    finally:
        await other_instance.close()
    settled = await settle(
        store.writes, view, user_name="max", gone={"old": view.rows["old"].etag or ""}, alive={}, now=T0
    )
    assert (settled.deleted, settled.online) == (1, True)
    assert (await store.read_user("max")).presence.online is True
    assert settled.change is None or settled.change.state.online is True
