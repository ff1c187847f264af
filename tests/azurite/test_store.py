"""The Table-backed store against a real Azurite: rows, leases, presence decisions, paging, concurrency."""

from __future__ import annotations

import asyncio
import random
import socket
from datetime import UTC, datetime, timedelta

import pytest

from mapping.errors import InvalidNameError, InvalidRequestError, StorageUnavailableError
from mapping.keys import connection_key, user_key
from mapping.presence.expiry import bucket_start as bucket_start_of
from mapping.presence.state import PresenceChange, PresenceState
from mapping.presence.store import ConnectionStore
from mapping.settings import Settings
from testkit.azurite import Azurite, running_azurite
from testkit.tables import drop_table, index_rows, make_settings, table_rows, unique_table_name

TTL = timedelta(seconds=600)


def ago(seconds: float) -> datetime:
    """Return a UTC time `seconds` in the past."""
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def test_connect_writes_one_row_with_every_property(store: ConnectionStore, azurite: Azurite) -> None:
    """The row holds the documented keys and properties, with UTC datetimes and a bounded user agent."""
    moment = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    await store.connect("Alice", "conn-1", hub="chat", user_agent="UA" * 400, now=moment)
    [row] = await table_rows(azurite, store.settings.table_name)
    assert row["PartitionKey"] == "alice"
    assert row["RowKey"] == "conn-1"
    assert row["UserName"] == "Alice"
    assert row["ConnectionId"] == "conn-1"
    assert row["Hub"] == "chat"
    assert row["ConnectedAt"] == moment
    assert row["LastSeen"] == moment
    assert row["UserAgent"] == ("UA" * 400)[:512]


async def test_multi_tab_user_goes_offline_only_when_the_last_tab_closes(store: ConnectionStore) -> None:
    """Presence: online on the first connection, offline on the last disconnect, silent in between."""
    first = await store.connect("alice", "tab-1")
    second = await store.connect("alice", "tab-2")
    assert (first.came_online, second.came_online) == (True, False)
    assert [c.connection_id for c in await store.connections_of("alice")] == ["tab-1", "tab-2"]
    assert (await store.disconnect("alice", "tab-1")).went_offline is False
    assert (await store.disconnect("alice", "tab-2")).went_offline is True
    assert await store.connections_of("alice") == []


async def test_repeated_events_are_idempotent(store: ConnectionStore, azurite: Azurite) -> None:
    """A duplicated connected event keeps one row and its ConnectedAt; a duplicated disconnected event is harmless."""
    first = await store.connect("bob", "c1", now=datetime(2026, 1, 1, tzinfo=UTC) + TTL)
    again = await store.connect("bob", "c1")
    assert (first.came_online, again.came_online) == (True, False)
    [row] = await table_rows(azurite, store.settings.table_name)
    assert row["ConnectedAt"] == first.entity.connected_at
    assert row["LastSeen"] == again.entity.last_seen
    gone = await store.disconnect("bob", "c1")
    repeated = await store.disconnect("bob", "c1")
    assert (gone.removed, gone.went_offline) == (True, True)
    assert (repeated.removed, repeated.went_offline) == (False, False)
    assert await table_rows(azurite, store.settings.table_name) == []


async def test_every_connect_writes_its_index_entry_first(store: ConnectionStore, azurite: Azurite) -> None:
    """Each connection row has an expiry-index entry naming it, in the bucket of its LastSeen."""
    await store.connect("Quinn/Q", "c#1")
    [entry] = await index_rows(azurite, store.settings.table_name)
    assert (entry["UserKey"], entry["ConnectionKey"]) == (user_key("quinn/q"), connection_key("c#1"))
    [row] = await table_rows(azurite, store.settings.table_name)
    bucket_start = int(bucket_start_of(str(entry["PartitionKey"])).timestamp())
    assert entry["PartitionKey"] == row["IndexBucket"]  # the row records its entry's partition (E1)
    width = store.bucket_width().total_seconds()
    assert bucket_start <= row["LastSeen"].timestamp() < bucket_start + width  # type: ignore[attr-defined]


async def test_a_deleted_table_is_created_again(store: ConnectionStore, azurite: Azurite) -> None:
    """If the table is deleted while the process runs, one call fails visibly and the next recreates it."""
    await store.connect("rita", "r1")
    await drop_table(azurite, store.settings.table_name)
    with pytest.raises(StorageUnavailableError):
        await store.connections_of("rita")
    assert (await store.connect("rita", "r2")).came_online is True


async def test_names_compare_case_insensitively_everywhere(store: ConnectionStore) -> None:
    """Connect as `Alice`, look up as `ALICE`, disconnect as `aLiCe`."""
    await store.connect("Alice", "c1")
    [connection] = await store.connections_of("ALICE")
    assert connection.user_name == "Alice"
    assert (await store.disconnect("aLiCe", "c1")).went_offline is True
    assert await store.connections_of("alice") == []


@pytest.mark.parametrize("name", ["a/b", "back\\slash", "hash#tag", "what?", "100%", "ctl\x01\x1f\x7f\x9f", "/\\#?%"])
async def test_names_with_forbidden_characters_work(store: ConnectionStore, azurite: Azurite, name: str) -> None:
    """Every character Table Storage forbids in keys is escaped, stored and found again."""
    await store.connect(name, "id/with#odd?chars")
    [row] = await table_rows(azurite, store.settings.table_name)
    assert row["UserName"] == name
    assert row["ConnectionId"] == "id/with#odd?chars"
    assert row["PartitionKey"] == user_key(name)
    assert row["RowKey"] == connection_key("id/with#odd?chars")
    [connection] = await store.connections_of(name)
    assert connection.connection_id == "id/with#odd?chars"
    assert (await store.disconnect(name, "id/with#odd?chars")).went_offline is True


async def test_a_name_of_256_escaped_characters_is_stored(store: ConnectionStore) -> None:
    """The longest valid name made only of escaped characters still fits a Table key."""
    name = "#" * 256
    await store.connect(name, "c1")
    assert [c.user_name for c in await store.connections_of(name)] == [name]


@pytest.mark.parametrize(
    "name",
    [
        "x' or PartitionKey ne 'y",
        "' or 1 eq 1 or '",
        "alice' or PartitionKey gt '",
        "@pk",
        "x and LastSeen gt datetime'2000-01-01T00:00:00Z'",
    ],
)
async def test_odata_injection_in_names_reads_nothing_else(store: ConnectionStore, name: str) -> None:
    """A name that looks like filter syntax is only ever a value: it never matches another user's rows."""
    await store.connect("alice", "victim")
    await store.connect("zed", "other")
    assert await store.connections_of(name) == []
    await store.connect(name, "attacker")
    assert [c.connection_id for c in await store.connections_of(name)] == ["attacker"]


async def test_expired_rows_are_ignored_by_readers(store: ConnectionStore) -> None:
    """A row whose LastSeen is older than the TTL counts for nothing: not listed, not online."""
    await store.connect("carol", "old", now=ago(TTL.total_seconds() + 5))
    assert await store.connections_of("carol") == []
    assert (await store.online_users()).users == []
    # Nobody was told carol left (a lapsed lease is announced by the sweep), so a new tab announces nothing.
    assert (await store.connect("carol", "new")).presence is None
    assert [c.connection_id for c in await store.connections_of("carol")] == ["new"]


async def test_disconnect_announces_offline_when_only_expired_rows_remain(store: ConnectionStore) -> None:
    """A user whose other rows are expired leases is offline after their live connection closes."""
    await store.connect("dave", "stale", now=ago(TTL.total_seconds() * 2))
    await store.connect("dave", "live")
    assert (await store.disconnect("dave", "live")).went_offline is True


async def test_touch_refreshes_last_seen_but_never_resurrects(store: ConnectionStore, azurite: Azurite) -> None:
    """touch moves LastSeen of an existing row forward and reports a missing row without creating it."""
    await store.connect("erin", "c1", now=ago(TTL.total_seconds() - 1))
    assert (await store.touch("erin", "c1")).found is True
    [connection] = await store.connections_of("erin")
    assert connection.last_seen > ago(5)
    assert connection.connected_at < ago(TTL.total_seconds() - 10)
    assert (await store.touch("erin", "gone")).found is False
    assert len(await table_rows(azurite, store.settings.table_name)) == 1


async def test_online_users_pages_through_every_live_user_once(store: ConnectionStore) -> None:
    """Pages of `limit` users follow `next` to the end; connections are counted per user; expired users are absent."""
    expected = {f"user{i:02d}": 1 + i % 3 for i in range(23)}
    await asyncio.gather(
        *(store.connect(user, f"{user}-{n}") for user, count in expected.items() for n in range(count))
    )
    await store.connect("ghost", "g1", now=ago(TTL.total_seconds() + 1))
    seen: dict[str, int] = {}
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.online_users(limit=5, cursor=cursor)
        pages += 1
        assert len(page.users) <= 5
        for user in page.users:
            assert user.user not in seen
            seen[user.user] = user.connections
        if page.next is None:
            break
        cursor = page.next
    assert seen == expected
    assert pages == 5


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_online_users_rejects_out_of_range_limits(store: ConnectionStore, limit: int) -> None:
    """limit must be between 1 and 1000."""
    with pytest.raises(InvalidRequestError):
        await store.online_users(limit=limit)


@pytest.mark.parametrize("cursor", ["garbage", "u1.!!!", "u1.//8", "x" * 5000])
async def test_online_users_rejects_forged_cursors(store: ConnectionStore, cursor: str) -> None:
    """A `next` value the API did not issue is an InvalidRequestError, not a storage error."""
    with pytest.raises(InvalidRequestError):
        await store.online_users(cursor=cursor)


async def test_invalid_names_never_reach_storage(store: ConnectionStore, azurite: Azurite) -> None:
    """Empty and over-long names are rejected before anything is written."""
    for name in ["", "   ", "x" * 257]:
        with pytest.raises(InvalidNameError):
            await store.connect(name, "c1")
    with pytest.raises(InvalidNameError):
        await store.connect("alice", "")
    assert await table_rows(azurite, store.settings.table_name) == []


async def test_hundreds_of_concurrent_events_lose_nothing(store: ConnectionStore, azurite: Azurite) -> None:
    """400 concurrent connects then 200 concurrent disconnects leave exactly the expected rows."""
    connections = [(f"user{i % 40}", f"conn-{i}") for i in range(400)]
    await asyncio.gather(*(store.connect(user, conn) for user, conn in connections))
    closing = [c for i, c in enumerate(connections) if (i // 40) % 2 == 0]
    staying = [c for i, c in enumerate(connections) if (i // 40) % 2 == 1]
    outcomes = await asyncio.gather(*(store.disconnect(user, conn) for user, conn in closing))
    rows = await table_rows(azurite, store.settings.table_name)
    assert sorted((r["PartitionKey"], r["RowKey"]) for r in rows) == sorted(staying)
    assert not any(outcome.went_offline for outcome in outcomes)  # every user keeps half of their tabs


async def test_concurrent_first_connections_announce_online_exactly_once(store: ConnectionStore) -> None:
    """When many tabs of a fresh user open at once, each announces a new count and exactly one the first tab."""
    for round_ in range(5):
        user = f"burst{round_}"
        outcomes = await asyncio.gather(*(store.connect(user, f"tab{n}") for n in range(8)))
        changes = [outcome.presence for outcome in outcomes if outcome.presence]
        assert sorted(change.state.connections for change in changes) == list(range(1, 9))
        assert all((change.user, change.state.online) == (user, True) for change in changes)
        assert sum(outcome.came_online for outcome in outcomes) == 1
        highest = max(changes, key=lambda change: change.version)
        assert highest.state.connections == 8


async def test_racing_instances_leave_the_true_state_at_the_highest_version(azurite: Azurite) -> None:
    """Connects and disconnects of one user racing on two instances: the newest announcement is the truth."""
    table = unique_table_name()
    instances = [ConnectionStore(make_settings(azurite.connection_string, table)) for _ in range(2)]
    rng = random.Random(7)
    try:
        for round_ in range(30):
            user = f"racer{round_}"
            events = [(instance, "connect", f"c{n}") for n, instance in enumerate(instances)]
            events += [(instances[rng.randrange(2)], "disconnect", f"c{n}") for n in range(2) if rng.random() < 0.7]
            rng.shuffle(events)
            outcomes = await asyncio.gather(*(getattr(store, action)(user, tab) for store, action, tab in events))
            changes = sorted((o.presence.version, o.presence.state.online) for o in outcomes if o.presence is not None)
            online = bool(await instances[0].connections_of(user))
            assert len({version for version, _ in changes}) == len(changes), user
            assert changes, user
            assert changes[-1][1] is online, (user, events, changes)
    finally:
        for store in instances:
            await store.close()
        await drop_table(azurite, table)


def port_is_free(port: int) -> bool:
    """Return whether nothing listens on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("connection_string", ["UseDevelopmentStorage=true", "UseDevelopmentStorage=true;"])
async def test_use_development_storage_reaches_azurite_on_its_default_port(connection_string: str) -> None:
    """The sample's `UseDevelopmentStorage=true` (with or without `;`) works against Azurite on port 10002."""
    if not port_is_free(10002):
        pytest.skip("port 10002 is taken; UseDevelopmentStorage=true needs exactly that port")
    settings = Settings.from_environment({"MAPPING_STORAGE": connection_string, "MAPPING_TABLE": "DevStorage"})
    with running_azurite(port=10002):
        store = ConnectionStore(settings, retry_total=0)
        try:
            assert (await store.connect("alice", "c1")).came_online is True
            assert [c.connection_id for c in await store.connections_of("alice")] == ["c1"]
        finally:
            await store.close()


async def test_disconnect_of_a_key_a_transaction_cannot_carry(store: ConnectionStore, azurite: Azurite) -> None:
    """A name with U+2028 (found by fuzzing) disconnects cleanly although Azurite refuses it inside a batch."""
    online = (await store.connect("0\u20280", "c1")).presence
    assert online is not None
    assert online.state.online is True
    outcome = await store.disconnect("0\u20280", "c1")
    assert outcome.removed is True
    assert outcome.presence is not None
    assert outcome.presence == PresenceChange(
        "0\u20280", PresenceState(False, last_seen=outcome.presence.state.last_seen), outcome.presence.version
    )
    assert outcome.presence.state.last_seen is not None
    assert outcome.presence.version > online.version
    assert await table_rows(azurite, store.settings.table_name) == []


@pytest.mark.parametrize("name", [",-\u00c9\u00ad", "0\u20280"])
async def test_keys_whose_transactions_azurite_refuses_still_connect_disconnect_and_sweep(
    store: ConnectionStore, azurite: Azurite, name: str
) -> None:
    """Azurite answers 404 (soft hyphen, found by fuzzing) or 400 (U+2028) to transactions over some keys, with
    nothing changed: a read showing the same partition turns the retry into one call at a time."""
    assert (await store.connect(name, name)).came_online is True
    assert (await store.disconnect(name, name)).went_offline is True
    await store.connect(name, "stale", now=datetime(2026, 1, 1, tzinfo=UTC))
    from mapping.sweep import sweep

    result = await sweep(store, now=datetime(2026, 1, 1, tzinfo=UTC) + TTL * 2)
    assert result.deleted == 1
    assert await table_rows(azurite, store.settings.table_name) == []
