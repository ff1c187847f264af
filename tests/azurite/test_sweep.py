"""The sweep against a real Azurite: the expiry index, its drift cases, liveness checks, presence, cost."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from mapping.presence.settle import settle
from mapping.presence.store import ConnectionStore
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import Liveness, SignalRLiveness
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.fake_service import FakeService
from testkit.signalr_rest import ACCESS_KEY, SignalRRest
from testkit.tables import index_rows, table_rows

TTL = timedelta(seconds=600)
NOW = datetime.now(UTC).replace(microsecond=0)


def ago(seconds: float) -> datetime:
    """Return a UTC time `seconds` before the test run's reference time."""
    return NOW - timedelta(seconds=seconds)


async def seed(store: ConnectionStore, connections: list[tuple[str, str]], *, now: datetime) -> None:
    """Connect many tabs: users concurrently, each user's tabs one after another (as a browser opens them)."""
    by_user: dict[str, list[str]] = {}
    for user, connection in connections:
        by_user.setdefault(user, []).append(connection)

    async def open_tabs(user: str, tabs: list[str]) -> None:
        for tab in tabs:
            await store.connect(user, tab, now=now)

    slots = asyncio.Semaphore(32)

    async def bounded(user: str, tabs: list[str]) -> None:
        async with slots:
            await open_tabs(user, tabs)

    await asyncio.gather(*(bounded(user, tabs) for user, tabs in by_user.items()))


def keys(rows: list[dict[str, object]]) -> list[tuple[object, object]]:
    """Return the sorted (PartitionKey, RowKey) pairs of rows."""
    return sorted((row["PartitionKey"], row["RowKey"]) for row in rows)


# -- age-based (no SignalR connection) ---------------------------------------------------------


async def test_sweep_removes_expired_rows_and_keeps_live_ones(store: ConnectionStore, azurite: Azurite) -> None:
    """Only rows whose LastSeen is older than the TTL are deleted, and their index entries go with them."""
    await store.connect("alice", "old", now=ago(TTL.total_seconds() + 120))
    await store.connect("alice", "new", now=NOW)
    await store.connect("bob", "old", now=ago(TTL.total_seconds() * 10))
    await store.connect("carol", "almost", now=ago(TTL.total_seconds() - 120))
    result = await sweep(store, now=NOW)
    assert result.deleted == 2
    assert keys(await table_rows(azurite, store.settings.table_name)) == [("alice", "new"), ("carol", "almost")]
    assert len(await index_rows(azurite, store.settings.table_name)) == 2


async def test_sweep_reports_users_whose_last_connection_it_removed(store: ConnectionStore) -> None:
    """A user left with no live connection is reported offline; a user with another live tab is not."""
    stale = ago(TTL.total_seconds() + 120)
    await store.connect("Dora", "d1", now=stale)
    await store.connect("Eve", "e1", now=stale)
    await store.connect("eve", "e2", now=NOW)
    result = await sweep(store, now=NOW)
    assert result.offline_users == ["Dora"]


async def test_sweep_deletes_a_partition_of_more_than_a_hundred_rows(store: ConnectionStore, azurite: Azurite) -> None:
    """A user with 250 expired rows is cleared in batches of at most 100, their live row kept."""
    stale = ago(TTL.total_seconds() + 120)
    await seed(store, [("crowd", f"c{i:03d}") for i in range(250)], now=stale)
    await store.connect("crowd", "alive", now=NOW)
    result = await sweep(store, now=NOW)
    assert result.deleted == 250
    assert [r["RowKey"] for r in await table_rows(azurite, store.settings.table_name)] == ["alive"]
    assert result.offline_users == []


async def test_sweep_follows_continuation_across_pages(store: ConnectionStore, azurite: Azurite) -> None:
    """More expired rows than one query page (1,000) across many partitions are all removed."""
    stale = ago(TTL.total_seconds() * 3)
    await seed(store, [(f"user{i % 150}", f"c{i}") for i in range(1100)], now=stale)
    result = await sweep(store, now=NOW)
    assert result.deleted == 1100
    assert await table_rows(azurite, store.settings.table_name) == []
    assert await index_rows(azurite, store.settings.table_name) == []
    assert len(result.offline_users) == 150


async def test_sweep_reads_only_the_stale_part_of_the_table(store: ConnectionStore) -> None:
    """With 600 live rows and 30 stale ones, the sweep reads about two entities per stale row, not the table."""
    await asyncio.gather(*(store.connect(f"live{i % 60}", f"l{i}", now=NOW) for i in range(600)))
    await asyncio.gather(*(store.connect(f"gone{i}", f"g{i}", now=ago(TTL.total_seconds() + 120)) for i in range(30)))
    result = await sweep(store, now=NOW)
    assert result.deleted == 30
    assert result.entities_read <= 2 * 30 + 10


async def test_a_live_but_quiet_row_is_never_read_by_an_age_based_sweep(store: ConnectionStore) -> None:
    """A row inside its lease lies in a bucket the sweep does not read."""
    await store.connect("quiet", "q1", now=ago(TTL.total_seconds() / 2))
    result = await sweep(store, now=NOW)
    assert (result.entries_read, result.rows_read, result.deleted) == (0, 0, 0)


# -- drift between the index and the rows ------------------------------------------------------


async def test_an_entry_whose_row_was_never_written_is_dropped(store: ConnectionStore, azurite: Azurite) -> None:
    """A crash between the index write and the row write leaves an entry that the sweep drops, touching nothing else."""
    await store.connect("frank", "f1", now=ago(TTL.total_seconds() + 120))
    await store.disconnect("frank", "f1")  # the row is gone, its entry stays: same state as a crash
    await store.connect("other", "o1", now=NOW)
    result = await sweep(store, now=NOW)
    assert (result.entries_read, result.rows_read, result.deleted, result.entries_dropped) == (1, 0, 0, 1)
    assert keys(await table_rows(azurite, store.settings.table_name)) == [("other", "o1")]
    assert len(await index_rows(azurite, store.settings.table_name)) == 1


async def test_a_row_refreshed_into_a_later_bucket_survives(store: ConnectionStore, azurite: Azurite) -> None:
    """A refresh writes a newer entry; the sweep drops the old one and keeps the row."""
    await store.connect("gina", "g1", now=ago(TTL.total_seconds() + 120))
    assert (await store.touch("gina", "g1", now=NOW)).found is True
    assert len(await index_rows(azurite, store.settings.table_name)) == 2
    result = await sweep(store, now=NOW)
    assert (result.deleted, result.entries_dropped) == (0, 1)
    assert [c.connection_id for c in await store.connections_of("gina", now=NOW)] == ["g1"]
    assert len(await index_rows(azurite, store.settings.table_name)) == 1


async def test_a_row_refreshed_between_read_and_delete_survives(store: ConnectionStore) -> None:
    """The sweep's delete is conditional: a row whose ETag changed after the sweep read it stays."""
    stale = ago(TTL.total_seconds() + 120)
    await store.connect("hank", "quiet", now=stale)
    await store.connect("hank", "talking", now=stale)
    view = await store.read_user("hank")
    judged = {key: row.etag or "" for key, row in view.rows.items()}
    assert (await store.touch("hank", "talking", now=NOW)).found is True
    settled = await settle(store.writes, view, user_name="hank", gone=judged, alive={}, now=NOW)
    assert settled.deleted == 1
    assert [c.connection_id for c in await store.connections_of("hank", now=NOW)] == ["talking"]
    assert settled.online is True  # still online through the refreshed tab
    assert settled.change is None or settled.change.state.online is True  # at most a repeat of the recorded pair (P4)


async def test_a_row_removed_by_a_disconnect_meanwhile_is_skipped(store: ConnectionStore, azurite: Azurite) -> None:
    """When a disconnect deletes a row between the sweep's read and its transaction, the rest still goes."""
    stale = ago(TTL.total_seconds() + 120)
    for i in range(5):
        await store.connect("ivan", f"c{i}", now=stale)
    view = await store.read_user("ivan")
    judged = {key: row.etag or "" for key, row in view.rows.items()}
    await store.disconnect("ivan", "c2", now=NOW)
    settled = await settle(store.writes, view, user_name="ivan", gone=judged, alive={}, now=NOW)
    assert settled.deleted == 4
    assert await table_rows(azurite, store.settings.table_name) == []


async def test_an_entry_left_by_a_crash_after_the_row_delete_is_dropped_next_time(
    store: ConnectionStore, azurite: Azurite
) -> None:
    """If the sweep dies after deleting a user's rows but before dropping the entries, the next sweep drops
    them and repeats the user's recorded offline state (the first sweep's announcement was lost)."""
    await store.connect("judy", "j1", now=ago(TTL.total_seconds() + 120))
    view = await store.read_user("judy")
    settled = await settle(
        store.writes, view, user_name="judy", gone={"j1": view.rows["j1"].etag or ""}, alive={}, now=NOW
    )
    assert settled.change is not None
    assert settled.change.state.online is False
    result = await sweep(store, now=NOW)
    assert (result.deleted, result.entries_dropped) == (0, 1)
    assert result.presence == [settled.change]
    assert await index_rows(azurite, store.settings.table_name) == []


async def test_a_spent_time_budget_stops_the_sweep_and_the_next_run_resumes(store: ConnectionStore) -> None:
    """With no time left the sweep stops before the first page and says so; the next run does the work."""
    stale = ago(TTL.total_seconds() + 120)
    await seed(store, [(f"u{i % 12}", f"c{i}") for i in range(60)], now=stale)
    first = await sweep(store, now=NOW, time_budget=timedelta(0))
    assert (first.complete, first.deleted) == (False, 0)
    second = await sweep(store, now=NOW)
    assert (second.complete, second.deleted) == (True, 60)


async def test_the_budget_holds_inside_a_page_of_slow_checks(store: ConnectionStore, azurite: Azurite) -> None:
    """Checks that outlast the budget are cut off inside the page: the sweep ends near its budget, acts on the
    verdicts it has, keeps the rest for the next run, which finishes them."""
    await seed(store, [(f"slow{i}", "c") for i in range(40)], now=NOW)
    service = FakeService(delay=0.5)
    started = asyncio.get_running_loop().time()
    first = await sweep(store, liveness=service, now=NOW + TTL * 0.6, time_budget=timedelta(seconds=1.5))
    elapsed = asyncio.get_running_loop().time() - started
    assert first.complete is False
    assert 0 < first.deleted < 40
    assert first.kept == 40 - first.deleted
    assert elapsed < 1.5 + 1.0  # the budget, plus the writes of what was decided
    assert len(first.offline_users) == first.deleted
    second = await sweep(store, liveness=FakeService(), now=NOW + TTL * 0.6)
    assert first.deleted + second.deleted == 40
    assert await table_rows(azurite, store.settings.table_name) == []


async def test_refreshes_write_at_most_once_per_quarter_lease(store: ConnectionStore, azurite: Azurite) -> None:
    """Message events within a quarter lease of the last refresh write nothing."""
    await store.connect("kate", "k1", now=NOW)
    await store.touch("kate", "k1", now=NOW + TTL / 8)
    [row] = await table_rows(azurite, store.settings.table_name)
    assert row["LastSeen"] == NOW
    await store.touch("kate", "k1", now=NOW + TTL / 2)
    [row] = await table_rows(azurite, store.settings.table_name)
    assert row["LastSeen"] == NOW + TTL / 2


# -- liveness-checked --------------------------------------------------------------------------


async def test_a_live_quiet_connection_survives_any_number_of_sweeps(
    store: ConnectionStore, signalr_service: tuple[SignalRRest, SignalRLiveness]
) -> None:
    """The service says 200: each sweep past half the lease refreshes the row instead of deleting it."""
    rest, checker = signalr_service
    rest.answers["q1"] = [200]
    await store.connect("quiet", "q1", now=NOW)
    moment = NOW
    for _ in range(5):
        moment += TTL * 0.75
        result = await sweep(store, liveness=checker, now=moment)
        assert (result.checked, result.refreshed, result.deleted) == (1, 1, 0)
        assert [c.connection_id for c in await store.connections_of("quiet", now=moment)] == ["q1"]
    assert rest.rejected_tokens == 0


async def test_a_lost_disconnect_is_gone_after_at_most_two_sweeps(store: ConnectionStore) -> None:
    """Once the service says gone (404), the row is deleted within two sweeps and the user reported offline."""
    checker = FakeService({"lost": Liveness.GONE})
    await store.connect("Lena", "lost", now=NOW)
    offline: list[str] = []
    for step in (1, 2):
        result = await sweep(store, liveness=checker, now=NOW + TTL * 0.6 * step)
        offline += result.offline_users
    assert await store.connections_of("lena", now=NOW) == []
    assert offline == ["Lena"]


async def test_an_unknown_answer_keeps_the_row_until_the_hard_limit(store: ConnectionStore) -> None:
    """An unknown answer (a 500) keeps the row for the next sweep, until LastSeen is older than the max age."""
    checker = FakeService({"flaky": Liveness.UNKNOWN})
    await store.connect("mike", "flaky", now=NOW)
    kept = await sweep(store, liveness=checker, now=NOW + TTL)
    assert (kept.checked, kept.kept, kept.deleted) == (1, 1, 0)
    again = await sweep(store, liveness=checker, now=NOW + TTL * 2)
    assert (again.kept, again.deleted) == (1, 0)
    final = await sweep(store, liveness=checker, now=NOW + store.settings.max_age + timedelta(seconds=1))
    assert final.deleted == 1


async def test_throttling_is_honoured_then_answered(
    store: ConnectionStore, signalr_service: tuple[SignalRRest, SignalRLiveness]
) -> None:
    """A 429 with Retry-After pauses and retries: the following 404 still deletes the row."""
    rest, checker = signalr_service
    rest.answers["busy"] = [429, 404]
    await store.connect("nina", "busy", now=NOW)
    result = await sweep(store, liveness=checker, now=NOW + TTL)
    assert result.deleted == 1
    assert rest.requests.count("busy") == 2


async def test_liveness_checks_only_rows_past_half_the_lease(store: ConnectionStore) -> None:
    """Rows younger than half the lease are not asked about."""
    checker = FakeService({"older": Liveness.ALIVE})
    await store.connect("olga", "young", now=NOW)
    await store.connect("olga", "older", now=ago(TTL.total_seconds() * 0.6))
    result = await sweep(store, liveness=checker, now=NOW)
    assert checker.asked == ["older"]
    assert result.refreshed == 1


async def test_connection_ids_with_odd_characters_are_asked_about_exactly(
    store: ConnectionStore, signalr_service: tuple[SignalRRest, SignalRLiveness]
) -> None:
    """Connection ids are percent-encoded in the REST path and the token's audience matches it."""
    rest, checker = signalr_service
    odd = "a/b#c?d %e"
    rest.answers[odd] = [404]
    await store.connect("pia", odd, now=NOW)
    result = await sweep(store, liveness=checker, now=NOW + TTL)
    assert rest.requests == [odd]
    assert (result.deleted, rest.rejected_tokens) == (1, 0)


async def test_an_unreachable_service_is_unknown_not_gone(store: ConnectionStore) -> None:
    """When the service cannot be reached, rows are kept rather than deleted."""
    from testkit.azurite import free_port

    checker = SignalRLiveness(
        SignalRConnection(endpoint=f"http://127.0.0.1:{free_port()}", access_key=ACCESS_KEY), timeout_seconds=1
    )
    try:
        await store.connect("quinn", "q1", now=NOW)
        result = await sweep(store, liveness=checker, now=NOW + TTL)
        assert (result.kept, result.deleted) == (1, 0)
    finally:
        await checker.close()


async def test_settings_select_the_liveness_check(store: ConnectionStore) -> None:
    """A SignalR connection in the settings gives the timer a checker; none gives an age-based sweep."""
    from mapping.functions.runtime import liveness_for
    from mapping.signalr.liveness import AGE_ONLY

    assert liveness_for(None) is AGE_ONLY
    connection = SignalRConnection(endpoint="http://127.0.0.1:1", access_key="k")
    assert liveness_for(connection) is liveness_for(dataclasses.replace(connection))


async def test_rows_whose_keys_a_transaction_cannot_carry_are_still_swept(
    store: ConnectionStore, azurite: Azurite
) -> None:
    """Keys holding U+2028/U+2029 make Azurite refuse a batch; the sweep deletes those rows singly and goes on."""
    stale = ago(TTL.total_seconds() + 120)
    await store.connect("line\u2028sep", "c\u2029", now=stale)
    await store.connect("plain", "p1", now=stale)
    result = await sweep(store, now=NOW)
    assert result.deleted == 2
    assert await table_rows(azurite, store.settings.table_name) == []
    assert await index_rows(azurite, store.settings.table_name) == []
