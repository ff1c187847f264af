"""Reconciliation with the service: the sweep lists the hub-wide group and judges only what the listing lacks."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from mapping.events import on_timer
from mapping.presence.store import ConnectionStore
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import (
    MAPPED_GROUP,
    GroupMembers,
    Listing,
    Liveness,
    SignalRLiveness,
    list_groups,
    listing_group,
    listing_groups,
)
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.fake_service import FakeService
from testkit.functions_host import Out, call, invocation
from testkit.signalr_rest import ACCESS_KEY, SignalRRest
from testkit.table_requests import TableRequests
from testkit.tables import index_rows, store_on_own_table, table_rows

TTL = timedelta(seconds=600)
T0 = datetime(2026, 8, 1, 8, 0, tzinfo=UTC)
SIGNALR = SignalRConnection(endpoint="http://127.0.0.1:9", access_key="unused-by-the-fake")


@pytest.fixture
async def reconciled(azurite: Azurite) -> AsyncIterator[tuple[ConnectionStore, TableRequests]]:
    """A store whose settings name a SignalR connection (the reconciled lease), counting its table requests."""
    requests = TableRequests()
    hooked = {"client_options": {"raw_response_hook": requests.hook}}
    async with store_on_own_table(azurite, store_options=hooked, ttl=TTL, signalr=SIGNALR) as store:
        yield store, requests


async def test_quiet_connections_cost_no_write_and_are_never_offline(
    reconciled: tuple[ConnectionStore, TableRequests],
) -> None:
    """Listed quiet connections, sweeps starting up to 10% late, one failed listing in a row: nobody is reported
    offline, the table is never written, and each sweep reads the index in pages, nothing per connection."""
    store, requests = reconciled
    names = [f"q{index}" for index in range(40)]
    for name in names:
        await store.connect(name, f"{name}-tab", now=T0)
    service = FakeService(listed=[f"{name}-tab" for name in names], listing=Listing.LISTED, default=Liveness.GONE)
    rng = random.Random(12)
    moment = T0
    for run in range(12):
        moment += timedelta(seconds=300 * (1 + rng.uniform(0, 0.1)))
        service.listing = Listing.UNAVAILABLE if run == 5 else Listing.LISTED
        requests.reset()
        result = await sweep(store, liveness=service, now=moment)
        assert (result.deleted, result.presence) == (0, []), run
        assert requests.writes == 0, (run, requests.by_method)
        # One index query per shard, one over the unsharded layout and one over larger shard counts (40 entries:
        # no continuation), nothing per connection.
        assert requests.total <= store.index.shards + 2, (run, requests.by_method)
        online = (await store.online_users(limit=1000, now=moment)).users
        assert sorted(user.user for user in online) == sorted(names)
    assert service.asked == []  # every connection was listed: no HEAD


async def test_a_lost_disconnect_is_removed_within_two_sweeps(
    reconciled: tuple[ConnectionStore, TableRequests],
) -> None:
    """A connection the listing lacks and the service answers 404 for is deleted and its user announced offline;
    the cost is the listing, one HEAD, and a few table requests for the stale row."""
    store, requests = reconciled
    for index in range(30):
        await store.connect(f"live{index}", "tab", now=T0)
    await store.connect("gone", "lost-tab", now=T0)
    service = FakeService(listed=["tab"], listing=Listing.LISTED)  # all 30 live tabs share the id "tab"
    offline: list[str] = []
    moment = T0
    for _ in range(2):
        moment += timedelta(minutes=5)
        requests.reset()
        result = await sweep(store, liveness=service, now=moment)
        offline += result.offline_users
        if result.deleted:
            # the index queries, the stale user, entry drop
            assert requests.total <= store.index.shards + 2 + 4 + 1, requests.by_method
            assert result.signalr_requests <= store.settings.listing_groups + 2  # a listing per group, the HEADs
    assert offline == ["gone"]
    assert await store.connections_of("gone", now=moment) == []
    assert service.asked == ["lost-tab"]


async def test_a_connection_the_listing_lags_is_kept_without_a_write(
    reconciled: tuple[ConnectionStore, TableRequests],
) -> None:
    """A new connection missing from a listing (the listing lags) but alive for HEAD is kept, and not written."""
    store, requests = reconciled
    await store.connect("new", "fresh", now=T0)
    service = FakeService({"fresh": Liveness.ALIVE}, listed=[], listing=Listing.LISTED)
    requests.reset()
    result = await sweep(store, liveness=service, now=T0 + TTL * 0.6)
    assert (result.deleted, result.refreshed, result.kept, result.presence) == (0, 0, 1, [])
    assert requests.writes == 0
    service.listed = {"fresh"}
    again = await sweep(store, liveness=service, now=T0 + TTL * 1.2)
    assert (again.listed, again.deleted) == (1, 0)
    assert service.asked == ["fresh"]


async def test_a_quiet_listed_connection_outlives_the_max_age(azurite: Azurite) -> None:
    """A connection the listing names for longer than MAPPING_MAX_AGE_SECONDS stays online for readers: the
    sweep renews its row once per half max age, and nobody is announced offline (the first renewal spends the
    connect's flagged entry, which repeats the recorded state: same version)."""
    max_age = timedelta(hours=2)
    async with store_on_own_table(azurite, ttl=TTL, signalr=SIGNALR, max_age=max_age) as store:
        online = (await store.connect("quiet", "tab", now=T0)).presence
        service = FakeService(listed=["tab"], listing=Listing.LISTED)
        moment, announced, renewed = T0, [], 0
        while moment < T0 + max_age * 3:
            moment += timedelta(minutes=5)
            result = await sweep(store, liveness=service, now=moment)
            announced += result.presence
            renewed += result.refreshed
            assert (await store.presence_of("quiet", now=moment)).state.online, moment
            assert [c.connection_id for c in await store.connections_of("quiet", now=moment)] == ["tab"]
        assert {change.version for change in announced} <= {online.version if online else 0}  # repeats at most
        assert 5 <= renewed <= 6  # once per half max age over three max ages
        assert service.asked == []


async def test_a_live_connection_the_listing_lacks_is_added_to_the_group(
    reconciled: tuple[ConnectionStore, TableRequests],
) -> None:
    """A connection a HEAD finds alive but the listing lacks (it predates the group) is re-added by the timer."""
    store, _ = reconciled
    await store.connect("old", "pre-group", now=T0)
    service = FakeService({"pre-group": Liveness.ALIVE}, listed=[], listing=Listing.LISTED)
    result = await sweep(store, liveness=service, now=T0 + TTL * 0.6)
    assert (result.unlisted_alive, result.deleted) == (["pre-group"], 0)


async def test_an_older_service_gets_head_checks(reconciled: tuple[ConnectionStore, TableRequests]) -> None:
    """When the listing answers 404, 400 or 501, the sweep asks about each due connection (refresh on 200)."""
    store, _ = reconciled
    await store.connect("ole", "alive", now=T0)
    await store.connect("ole", "dead", now=T0)
    service = FakeService({"alive": Liveness.ALIVE, "dead": Liveness.GONE}, listing=Listing.UNSUPPORTED)
    result = await sweep(store, liveness=service, now=T0 + TTL * 0.6)
    assert (result.listing, result.refreshed, result.deleted) == ("unsupported", 1, 1)
    assert sorted(service.asked) == ["alive", "dead"]
    assert [c.connection_id for c in await store.connections_of("ole", now=T0 + TTL)] == ["alive"]


async def test_an_unreachable_service_keeps_rows_until_the_max_age(
    reconciled: tuple[ConnectionStore, TableRequests],
) -> None:
    """With the listing failing, no row is judged: rows stay live until MAPPING_MAX_AGE_SECONDS, then go."""
    store, _ = reconciled
    await store.connect("una", "u1", now=T0)
    service = FakeService(listing=Listing.UNAVAILABLE)
    kept = await sweep(store, liveness=service, now=T0 + TTL * 3)
    assert (kept.deleted, kept.kept, kept.presence) == (0, 1, [])
    assert service.asked == []
    assert await store.connections_of("una", now=T0 + TTL * 3) != []
    late = T0 + store.settings.max_age + timedelta(minutes=1)
    gone = await sweep(store, liveness=service, now=late)
    assert (gone.deleted, gone.offline_users) == (1, ["una"])


async def test_older_entries_of_a_listed_chatty_connection_are_dropped_unread(
    reconciled: tuple[ConnectionStore, TableRequests], azurite: Azurite
) -> None:
    """A talking connection leaves an entry per refresh; the sweep keeps the latest and drops the rest unread."""
    store, requests = reconciled
    await store.connect("chat", "c1", now=T0)
    for step in range(1, 4):
        assert (await store.touch("chat", "c1", now=T0 + TTL * 0.3 * step)).found
    table = store.settings.table_name
    assert len(await index_rows(azurite, table)) == 4
    service = FakeService(listed=["c1"], listing=Listing.LISTED)
    requests.reset()
    result = await sweep(store, liveness=service, now=T0 + TTL * 2)
    assert (result.entries_dropped, result.listed, result.users_read) == (3, 1, 0)
    assert len(await index_rows(azurite, table)) == 1
    assert [row["RowKey"] for row in await table_rows(azurite, table)] == ["c1"]


async def test_connected_joins_the_hub_wide_group_when_signalr_is_configured(
    app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a SignalR connection configured, the connected function also outputs the group action (no table
    request), before its presence message."""
    from mapping.functions import runtime

    monkeypatch.setenv("AzureSignalRConnectionString", "Endpoint=http://127.0.0.1;Port=9;AccessKey=k;Version=1.0;")
    await runtime.reset()
    out = Out()
    await call("connected", invocation=invocation("connected", user_id="gia", connection_id="g1"), signalr=out)
    group = listing_group("g1", runtime.settings().listing_groups)
    assert group.startswith(MAPPED_GROUP + ".")
    assert out.messages[0] == {"action": "add", "groupName": group, "connectionId": "g1"}
    assert out.messages[1]["target"] == "presence"


async def test_the_listing_follows_pages_and_next_links(signalr_service: tuple[SignalRRest, SignalRLiveness]) -> None:
    """450 members come back in three pages of at most 200, each signed for its own URL."""
    service, client = signalr_service
    service.groups[MAPPED_GROUP] = {f"c{index:03d}" for index in range(450)}
    members = await client.members("chat", MAPPED_GROUP, deadline=time.monotonic() + 30)
    assert members.listing is Listing.LISTED
    assert members.connection_ids == service.groups[MAPPED_GROUP]
    assert (members.requests, service.listings, service.rejected_tokens) == (3, 3, 0)


@pytest.mark.parametrize(
    ("status", "listing"),
    [
        (404, Listing.UNSUPPORTED),
        (400, Listing.UNSUPPORTED),
        (501, Listing.UNSUPPORTED),
        (500, Listing.UNAVAILABLE),
        (403, Listing.UNAVAILABLE),
    ],
)
async def test_a_service_that_cannot_list_says_why(
    signalr_service: tuple[SignalRRest, SignalRLiveness], status: int, listing: Listing
) -> None:
    """An older service (404, 400, 501) means per-connection checks; any other failure means nobody is judged."""
    service, client = signalr_service
    service.listing_status = status
    assert (await client.members("chat", MAPPED_GROUP, deadline=time.monotonic() + 30)).listing is listing


async def test_an_unreachable_service_cannot_list() -> None:
    """Nothing listening: the listing is unavailable, not empty (an empty listing would delete every row)."""
    from testkit.azurite import free_port

    client = SignalRLiveness(
        SignalRConnection(endpoint=f"http://127.0.0.1:{free_port()}", access_key=ACCESS_KEY), timeout_seconds=1
    )
    try:
        members = await client.members("chat", MAPPED_GROUP, deadline=time.monotonic() + 30)
        assert (members.listing, members.connection_ids) == (Listing.UNAVAILABLE, frozenset())
    finally:
        await client.close()


async def test_a_reconciling_sweep_over_http_asks_only_about_what_the_listing_lacks(
    azurite: Azurite, signalr_service: tuple[SignalRRest, SignalRLiveness]
) -> None:
    """250 quiet listed connections and 3 lost ones: 2 listing pages and 3 HEADs, the 3 rows deleted, no other
    write."""
    service, client = signalr_service
    connection = SignalRConnection(endpoint=service.endpoint, access_key=ACCESS_KEY)
    requests = TableRequests()
    hooked = {"client_options": {"raw_response_hook": requests.hook}}
    async with store_on_own_table(
        azurite, store_options=hooked, ttl=TTL, signalr=connection, listing_groups=1
    ) as store:
        for index in range(250):
            await store.connect(f"u{index % 25}", f"live{index:03d}", now=T0)
        for index in range(3):
            await store.connect(f"lost{index}", f"gone{index}", now=T0)
        service.groups[MAPPED_GROUP] = {f"live{index:03d}" for index in range(250)}  # K = 1: the one group
        requests.reset()
        result = await sweep(store, liveness=client, now=T0 + TTL * 0.6)
        assert (result.listing, result.listed, result.deleted) == ("listed", 250, 3)
        assert sorted(result.offline_users) == ["lost0", "lost1", "lost2"]
        assert (service.listings, sorted(service.requests)) == (2, ["gone0", "gone1", "gone2"])
        # One transaction per stale user, one batch of entry drops per index partition they are in (shards).
        assert requests.writes <= 3 + 3


async def test_listing_groups_are_listed_concurrently_and_a_changed_count_loses_nobody(
    azurite: Azurite, signalr_service: tuple[SignalRRest, SignalRLiveness]
) -> None:
    """With K = 4 the sweep lists each of the 4 groups (one request each here), and a live connection still in the
    group of K = 1 (it connected before K changed) is HEAD-checked, kept and added to its group again."""
    service, client = signalr_service
    connection = SignalRConnection(endpoint=service.endpoint, access_key=ACCESS_KEY)
    async with store_on_own_table(azurite, ttl=TTL, signalr=connection, listing_groups=4) as store:
        live = [f"live{index:03d}" for index in range(40)]
        for index, connection_id in enumerate(live):
            await store.connect(f"u{index}", connection_id, now=T0)
            service.groups.setdefault(listing_group(connection_id, 4), set()).add(connection_id)
        await store.connect("old", "before-k", now=T0)
        service.groups.setdefault(MAPPED_GROUP, set()).add("before-k")
        result = await sweep(store, liveness=client, now=T0 + TTL * 0.6)
        assert (result.listing, result.listed, result.deleted, result.presence) == ("listed", 40, 0, [])
        assert service.listings == 4
        assert result.signalr_requests == 4 + 1  # the four listings, one HEAD
        assert sorted(service.requests) == ["before-k"]
        assert result.unlisted_alive == ["before-k"]
        again = await on_timer(store, liveness=client)  # the timer's output adds it to its group again
        assert {"action": "add", "groupName": listing_group("before-k", 4), "connectionId": "before-k"} in again


async def test_a_lost_connection_the_listing_still_shows_goes_the_sweep_after(
    reconciled: tuple[ConnectionStore, TableRequests],
) -> None:
    """A listing that still shows a connection whose disconnect was lost keeps it one sweep; the next listing lacks
    it, the service answers 404, and it is gone: within two sweeps."""
    store, _ = reconciled
    await store.connect("fox", "f1", now=T0)
    await store.connect("fox", "f2", now=T0)
    service = FakeService({"f1": Liveness.GONE}, listed=["f1", "f2"], listing=Listing.LISTED)
    first = await sweep(store, liveness=service, now=T0 + TTL * 0.6)
    assert (first.listed, first.deleted, first.presence) == (2, 0, [])
    service.listed = {"f2"}
    second = await sweep(store, liveness=service, now=T0 + TTL * 0.6 + timedelta(minutes=5))
    assert (second.listed, second.deleted) == (1, 1)
    # fox is still online through f2: at most the recorded online state is repeated (f1's entry was its first)
    assert [(change.user, change.state.online) for change in second.presence] in ([], [("fox", True)])
    assert [c.connection_id for c in await store.connections_of("fox", now=T0 + TTL * 2)] == ["f2"]
    assert service.asked == ["f1"]


async def test_one_group_that_cannot_be_listed_makes_the_whole_listing_say_so() -> None:
    """Listing K groups: one unreachable group makes the listing unavailable (nobody is judged by it), one older
    service's 404 makes it unsupported (HEAD checks), and all listed gives the union of their members."""

    class Groups:
        asks_service = True

        def __init__(self, answers: dict[str, GroupMembers]) -> None:
            self.answers = answers

        async def check(self, hub: str, connection_id: str) -> Liveness:
            return Liveness.UNKNOWN

        async def members(self, hub: str, group: str, *, deadline: float) -> GroupMembers:
            return self.answers[group]

    groups = listing_groups(3)
    listed = {group: GroupMembers(Listing.LISTED, frozenset({group + "-c"}), requests=1) for group in groups}
    union = await list_groups(Groups(listed), "chat", groups, deadline=time.monotonic() + 5)
    assert (union.listing, union.connection_ids, union.requests) == (
        Listing.LISTED,
        frozenset(g + "-c" for g in groups),
        3,
    )
    for failed in (Listing.UNAVAILABLE, Listing.UNSUPPORTED):
        answers = {**listed, groups[1]: GroupMembers(failed, requests=1)}
        assert (await list_groups(Groups(answers), "chat", groups, deadline=time.monotonic() + 5)).listing is failed
    assert listing_groups(1) == [MAPPED_GROUP]
