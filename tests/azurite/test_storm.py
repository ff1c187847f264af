"""A storm: several worker processes replay a generated event log against one Azurite at once, then a sweep.

The log has connects, client sends, disconnects, duplicated deliveries, disconnects delivered before
their connect, and lost disconnects. Afterwards every connection still open sends once more
(refreshing its lease), and a sweep removes every row not refreshed since: the table must then hold
exactly the open connections.

"Last presence event" is defined as: of a user's presence messages from every worker and the sweep,
the one with the highest version. It must equal the user's true final state (online iff a connection
is still open) for every user, including those whose connect and disconnect ran at the same time on
two instances (counted as "raced"), and no version may name two states (a repeat is allowed). A user with a lost
disconnect depends on the sweep to remove the ghost row and announce them offline.
For every user, the state the API reports after the sweep must equal the true state.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from mapping.functions import runtime
from mapping.keys import connection_key, user_key
from mapping.presence.store import ConnectionStore
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.figures import Figures
from testkit.functions_host import http, http_request
from testkit.storm_worker import Event, run_lanes
from testkit.tables import make_settings, table_rows

pytestmark = pytest.mark.reliability

WORKERS = 4
CONCURRENCY = 6  # concurrent function runs per worker, as the Python worker runs async functions
USERS = 120
SEED = 5


@dataclass
class Connection:
    """One client connection in the true timeline."""

    user: str
    id: str
    open: bool
    lost_disconnect: bool = False
    reordered: bool = False
    duplicated_connect: bool = False

    @property
    def ghost_prone(self) -> bool:
        """Whether its row may outlive it until the sweep (the disconnect was lost or overtaken)."""
        return not self.open and (self.lost_disconnect or self.reordered or self.duplicated_connect)


@dataclass
class StormLog:
    """The generated events, split into lanes (in order within a lane), and the truth they came from."""

    connections: list[Connection] = field(default_factory=list)
    lanes: list[list[Event]] = field(default_factory=list)
    events: int = 0

    def event(self, function: str, connection: Connection, arguments: list[Any] | None = None) -> Event:
        """Number a new event."""
        self.events += 1
        return (self.events, function, connection.user, connection.id, arguments)


def generate(seed: int) -> StormLog:
    """Generate a storm: per connection a lane (connect, sends, disconnect), plus duplicates as lanes of their own."""
    rng = random.Random(seed)
    log = StormLog()
    users = [f"user{n}" for n in range(USERS - 3)] + ["Ünïcödé", "a/b#c?d", "Mixed Case"]
    for user in users:
        for n in range(rng.randint(1, 6)):
            connection = Connection(user, f"{user}-c{n}-{rng.getrandbits(32):08x}", open=rng.random() < 0.3)
            log.connections.append(connection)
            connect = log.event("connected", connection)
            sends = [
                log.event("send_message", connection, [rng.choice(users), {"n": k}]) for k in range(rng.randint(0, 3))
            ]
            lane = [connect, *sends]
            if not connection.open:
                roll = rng.random()
                connection.lost_disconnect = roll < 0.08
                connection.reordered = 0.08 <= roll < 0.16
                if not connection.lost_disconnect:
                    disconnect = log.event("disconnected", connection)
                    lane = [disconnect, *lane] if connection.reordered else [*lane, disconnect]
                    if rng.random() < 0.1:
                        log.lanes.append([log.event("disconnected", connection)])
            if rng.random() < 0.08:
                connection.duplicated_connect = True
                log.lanes.append([log.event("connected", connection)])
            log.lanes.append(lane)
    rng.shuffle(log.lanes)
    return log


def users_with_overlapping_connect_and_disconnect(records: list[dict[str, Any]]) -> set[str]:
    """Return the users for whom a connected and a disconnected event ran at overlapping times."""
    by_user: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["function"] in ("connected", "disconnected"):
            by_user.setdefault(record["user"], []).append(record)
    raced = set()
    for user, events in by_user.items():
        connects = [e for e in events if e["function"] == "connected"]
        disconnects = [e for e in events if e["function"] == "disconnected"]
        if any(c["start"] < d["end"] and d["start"] < c["end"] for c in connects for d in disconnects):
            raced.add(user)
    return raced


def replay(pool: ProcessPoolExecutor, env: dict[str, str], lanes: list[list[Event]]) -> list[dict[str, Any]]:
    """Deal the lanes to the workers and run them all at once; return every event's record."""
    shares = [lanes[n::WORKERS] for n in range(WORKERS)]
    futures = [pool.submit(run_lanes, env, share, CONCURRENCY) for share in shares]
    return [record for future in futures for record in future.result(timeout=600)]


@pytest.fixture(scope="module")
def pool() -> Any:
    """The worker processes (spawned: each a fresh interpreter with its own event loop and default store)."""
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


@pytest.mark.slow
async def test_storm_leaves_exactly_the_open_connections(
    pool: ProcessPoolExecutor, app_env: dict[str, str], azurite: Azurite, figures: Figures
) -> None:
    """Workers replay the log at once; after heartbeats and a sweep the table equals the model and no row is lost."""
    log = generate(SEED)
    loop = asyncio.get_running_loop()
    records = await loop.run_in_executor(None, replay, pool, app_env, log.lanes)
    assert [r for r in records if r["error"]] == []
    assert len(records) == log.events

    # Every open connection must have its row now, before any sweep: nothing acknowledged is lost.
    rows = await table_rows(azurite, app_env["MAPPING_TABLE"])
    keys = {(row["PartitionKey"], row["RowKey"]) for row in rows}
    open_connections = [c for c in log.connections if c.open]
    lost = [c.id for c in open_connections if (user_key(c.user), connection_key(c.id)) not in keys]
    assert lost == []

    # Heartbeat: every open client sends once more, refreshing its lease; then sweep what was not refreshed.
    heartbeat_from = datetime.now(UTC)
    await asyncio.sleep(0.05)
    heartbeats = [[log.event("send_message", c, [c.user, "still here"])] for c in open_connections]
    beat_records = await loop.run_in_executor(None, replay, pool, app_env, heartbeats)
    assert [r for r in beat_records if r["error"]] == []
    ttl = timedelta(seconds=int(app_env["MAPPING_TTL_SECONDS"]))
    sweepers = [ConnectionStore(make_settings(azurite.connection_string, app_env["MAPPING_TABLE"])) for _ in range(2)]
    try:
        results = await asyncio.gather(*(sweep(s, now=heartbeat_from + ttl) for s in sweepers))
    finally:
        for sweeper in sweepers:
            await sweeper.close()

    rows = await table_rows(azurite, app_env["MAPPING_TABLE"])
    table = {(row["PartitionKey"], row["RowKey"]): (row["UserName"], row["ConnectionId"]) for row in rows}
    model = {(user_key(c.user), connection_key(c.id)): (c.user, c.id) for c in open_connections}
    assert table == model
    assert sum(r.deleted for r in results) == len(keys) - len(model)

    # The API reports the true state of every user.
    truth = {user: any(c.open for c in log.connections if c.user == user) for user in {c.user for c in log.connections}}
    for user, online in truth.items():
        request = http_request("GET", f"users/{quote(user, safe='')}", route_params={"user": user})
        status, body, _ = await http("user_presence", request)
        assert (status, body["online"]) == (200, online), user
    page = await runtime.store().online_users(limit=1000)
    assert sorted(u.user for u in page.users) == sorted(u for u, online in truth.items() if online)

    # Presence: for every user, the announcement with the highest version (the sweep's included) matches
    # the truth, whatever order the instances ran in; a version may be repeated but never names two states.
    announced: dict[str, list[tuple[int, bool]]] = {}
    for record in records:
        announced.setdefault(record["user"], []).extend(tuple(change) for change in record["presence"])
    for result in results:
        for change in result.presence:
            announced.setdefault(change.user, []).append((change.version, change.state.online))
    two_states = {
        user: changes for user, changes in announced.items() if len(set(changes)) != len({v for v, _ in changes})
    }
    assert two_states == {}
    repeats = sum(len(changes) - len(set(changes)) for changes in announced.values())
    latest = {user: max(changes)[1] for user, changes in announced.items() if changes}
    wrong = {user: latest.get(user) for user, online in truth.items() if latest.get(user, False) != online}
    assert wrong == {}
    raced = users_with_overlapping_connect_and_disconnect(records)

    total = len(records) + len(beat_records)
    # Replay time only (process start-up excluded): first event start to last event end, per phase.
    storm_seconds = sum(max(r["end"] for r in rs) - min(r["start"] for r in rs) for rs in (records, beat_records))
    figures.put("storm", "workers", WORKERS)
    figures.put("storm", "events", total)
    figures.put("storm", "events_per_second", round(total / storm_seconds))
    figures.put("storm", "users", len(truth))
    figures.put("storm", "connections", len(log.connections))
    figures.put("storm", "open_connections", len(model))
    figures.put("storm", "duplicates", sum(len(lane) == 1 for lane in log.lanes))
    figures.put("storm", "reordered_disconnects", sum(c.reordered for c in log.connections))
    figures.put("storm", "lost_disconnects", sum(c.lost_disconnect for c in log.connections))
    figures.put("storm", "stale_rows_swept", sum(r.deleted for r in results))
    figures.put("storm", "rows_lost", len(lost))
    figures.put("storm", "presence_users_checked", len(truth))
    figures.put("storm", "presence_users_raced", len(raced))
    figures.put("storm", "presence_users_with_ghost_rows", len({c.user for c in log.connections if c.ghost_prone}))
    figures.put("storm", "presence_mismatches", len(wrong))
    figures.put("storm", "presence_repeats", repeats)


async def test_a_user_whose_disconnect_was_lost_is_announced_offline_by_the_sweep(store: ConnectionStore) -> None:
    """A lost disconnect leaves a ghost row; the sweep removes it and reports the user offline."""
    start = datetime.now(UTC)
    outcome = await store.connect("olga", "o1", now=start)
    assert outcome.came_online is True
    # ...the client goes away; its disconnect never reaches the app. Later the sweep runs:
    result = await sweep(store, now=start + store.settings.ttl + store.bucket_width())
    assert result.deleted == 1
    assert await store.connections_of("olga", now=start + store.settings.ttl * 2) == []
    assert result.offline_users == ["olga"]
