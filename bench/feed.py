"""What the presence feed costs when on (issue 33: "at most one queue request per change"): the app's own event
functions driven for a number of users with `PRESENCE_FEED_QUEUE` off and on, each event's table and queue requests
counted on the wire, and the feed's messages read back off the queue.

Two stores on one Azurite, each on a fresh table of its own, each the app's `ConnectionStore` with its seam set as
`mapping.functions.runtime` sets it: `NO_FEED` (off), or `QueueFeed(QueueDelayedActions(...))` on a fresh queue of
Azurite's queue service (on). Both reach Azurite through the bench's counting proxies (`bench/proxy.py`), one in front
of the table service and one in front of the queue service, so every request either store makes is counted on the
wire, by operation. The events are `mapping.events`' own handlers, called as the functions call them: `on_connected`,
`on_set_status`, `on_join`, `on_leave`, `on_disconnected` (SignalR invocations), and a server's `on_grant` and
`on_revoke`. Each user has two tabs and goes through the steps of `STEPS`, in turn, every user one step before the
next; at each user the two stores take the step one after the other (alternately first), so the time of an event off
and on is taken under the same load. Each event is counted alone (the proxies' records taken before and after it).

The stores' clocks start at the real time and move on 10 ms before each event (1 us each time they are read), and
by the bench where a step needs time to have passed (a member of a room for over a minute, a status set longer ago
than a quarter lease): no waiting, and what an event decides does not depend on how fast the machine runs the steps.
User 0 is a warm-up, not counted: the first put of a process creates the queue. After each step the messages on the
feed's queue are read back (straight from Azurite, not through the proxy: not counted), decoded as a queue trigger
decodes them (Base64, then JSON) and deleted: each step's messages are its own, checked against the change (kind,
subject, who made it) and against the versions of the subject's earlier messages (a change: a higher version; a
repeat: the same).

Settings: the app's defaults (`PRESENCE_AUDIENCE=scoped`, the call budget on), `ROOMS_OPEN=lobby`, grace off (each
disconnect decides at once), the TTL 600 s. The whole section takes about three minutes for 200 users on 2 shared
cores; `--smoke` (10 users) about ten seconds.

Run alone: `python -m bench.feed [--smoke] [--out DIR] [--report DIR]` (its own Azurite; writes feed.json and feed.md
into `--out`, default bench/results/feed/, and puts the figures into the report in `--report`, default
bench/results/, when it has a latest.json: its section and headline line in latest.md, `feed` in latest.json).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError
from azure.storage.queue.aio import QueueClient

from bench.alone import destination, quiet_logging, section_arguments
from bench.proxy import CountingProxy, classify, classify_queue
from bench.workload import fresh_table
from mapping import events
from mapping.presence.budget import PUBLISH_EVERY
from mapping.presence.feed import BY_SERVER, BY_USER, JOINED, LEFT, NO_FEED, OCCUPIED, PRESENCE, VACATED, QueueFeed
from mapping.presence.store import ConnectionStore
from mapping.settings import QueueConnection, Settings, StorageConnection
from mapping.signalr.audience import SYNC_PAGE
from mapping.signalr.invocation import Invocation
from mapping.signalr.liveness import AGE_ONLY
from mapping.storage.queue import DelayedActions, QueueDelayedActions
from testkit.azurite import Azurite, connection_string, running_azurite

logger = logging.getLogger("bench.feed")

HUB = "chat"
ROOM = "lobby"  # ROOMS_OPEN: the room the users join and leave themselves
GRANTED = "staff"  # a closed room: a server grants it and revokes it
STATUS = "busy"
MODES = ("off", "on")
WARM_UP = 0  # user 0 takes every step first, uncounted (the process's clients, the feed's queue created)
PUT = "put message"
READ_BATCH = 32  # messages a receive takes at most

# What an event changes, and so what it may cost with the feed on.
CHANGE = "change"  # presence or a membership changed: exactly one queue request, one message, a higher version
NOTHING = "nothing"  # nothing changed of long standing: no queue request, no message
REPEAT = "repeat"  # nothing changed, but the app repeats the announcement on purpose: at most one, the same version


@dataclass(frozen=True)
class FeedPlan:
    """The section's size: users counted (each with two tabs), beside the warm-up user."""

    users: int = 200


FULL = FeedPlan()
SMOKE = FeedPlan(users=10)


# ---- the steps -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tabs:
    """A user and its two tabs (connection ids), in one mode."""

    user: str
    first: str
    second: str


Run = Callable[[ConnectionStore, Tabs], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """One event every user makes in turn: what it is, what it changes, the feed message a change (or a repeat)
    puts (its kind and who made it), how long the clock moves on before it, and how to make it."""

    key: str
    label: str
    changes: str
    message: tuple[str, str | None] | None
    run: Run
    after: timedelta = timedelta(0)


def _invocation(category: str, name: str, user: str, connection: str, *arguments: object) -> Invocation:
    return Invocation(category, name, HUB, connection, user, list(arguments) if arguments else None)


def _no_grace() -> DelayedActions:
    raise AssertionError("the feed section runs with the grace off: no decision is queued")


def _answered(what: str, messages: list[dict[str, Any]]) -> None:
    """Raise when an event answered an error (every event of the section is one the app accepts)."""
    errors = [m["arguments"][0] for m in messages if m.get("target") == "error"]
    if errors:
        raise AssertionError(f"{what}: answered an error: {errors}")


def _connected(tab: Callable[[Tabs], str]) -> Run:
    async def run(store: ConnectionStore, tabs: Tabs) -> None:
        messages = await events.on_connected(store, _invocation("connections", "connected", tabs.user, tab(tabs)))
        if not any(m.get("action") == "add" for m in messages):
            raise AssertionError(f"connected {tabs.user}: not mapped: {messages}")

    return run


def _disconnected(tab: Callable[[Tabs], str]) -> Run:
    async def run(store: ConnectionStore, tabs: Tabs) -> None:
        event = _invocation("connections", "disconnected", tabs.user, tab(tabs))
        _answered("disconnected", await events.on_disconnected(store, event, delayed=_no_grace))

    return run


def _client(handler: Callable[[ConnectionStore, Invocation], Awaitable[list[dict[str, Any]]]], name: str) -> Run:
    async def run(store: ConnectionStore, tabs: Tabs) -> None:
        argument = STATUS if name == "setStatus" else ROOM
        _answered(name, await handler(store, _invocation("messages", name, tabs.user, tabs.first, argument)))

    return run


async def _grant(store: ConnectionStore, tabs: Tabs) -> None:
    access = await events.on_grant(store, tabs.user, GRANTED, service=AGE_ONLY)
    if not access.member:
        raise AssertionError(f"grant {tabs.user} {GRANTED}: not a member: {access}")


async def _revoke(store: ConnectionStore, tabs: Tabs) -> None:
    access = await events.on_revoke(store, tabs.user, GRANTED, service=AGE_ONLY)
    if access.member:
        raise AssertionError(f"revoke {tabs.user} {GRANTED}: still a member: {access}")


# Over the minute of rooms R5 (a join of a room one has been in that long is no change), within a quarter lease of
# the status set (a status set again that soon writes nothing): 150 s of the TTL 600, less 10 ms an event since.
OVER_A_MINUTE = timedelta(seconds=65)
# Then past the quarter lease since that status was set: a status set again refreshes the lease.
PAST_A_QUARTER_LEASE = timedelta(seconds=90)

STEPS = (
    Step(
        "connect_first",
        "connected: the user's first tab (online)",
        CHANGE,
        (PRESENCE, None),
        _connected(lambda tabs: tabs.first),
    ),
    Step(
        "connect_second",
        "connected: a second tab (2 connections)",
        CHANGE,
        (PRESENCE, None),
        _connected(lambda tabs: tabs.second),
    ),
    Step(
        "set_status",
        f"setStatus('{STATUS}'), a new status",
        CHANGE,
        (PRESENCE, None),
        _client(events.on_set_status, "setStatus"),
    ),
    Step("join", f"join('{ROOM}'), an open room", CHANGE, (JOINED, BY_USER), _client(events.on_join, "join")),
    Step(
        "join_retry",
        f"join('{ROOM}') again at once (a client's retry: rooms R5 repeat the announcement within a minute)",
        REPEAT,
        (JOINED, BY_USER),
        _client(events.on_join, "join"),
    ),
    Step(
        "set_status_same",
        f"setStatus('{STATUS}') again, over a minute later (the status it has, within a quarter lease)",
        NOTHING,
        None,
        _client(events.on_set_status, "setStatus"),
        after=OVER_A_MINUTE,
    ),
    Step(
        "join_again",
        f"join('{ROOM}') again, a member for over a minute",
        NOTHING,
        None,
        _client(events.on_join, "join"),
    ),
    Step(
        "set_status_late",
        f"setStatus('{STATUS}') again, past a quarter lease (the lease refreshed, the pair announced again)",
        REPEAT,
        (PRESENCE, None),
        _client(events.on_set_status, "setStatus"),
        after=PAST_A_QUARTER_LEASE,
    ),
    Step("leave", f"leave('{ROOM}')", CHANGE, (LEFT, BY_USER), _client(events.on_leave, "leave")),
    Step(
        "grant",
        f"a server's grant of '{GRANTED}', a closed room (PUT /api/rooms/{{room}}/members/{{user}})",
        CHANGE,
        (JOINED, BY_SERVER),
        _grant,
    ),
    Step(
        "revoke",
        f"a server's revoke of '{GRANTED}' (DELETE /api/rooms/{{room}}/members/{{user}})",
        CHANGE,
        (LEFT, BY_SERVER),
        _revoke,
    ),
    Step(
        "disconnect_second",
        "disconnected: the second tab (1 connection left)",
        CHANGE,
        (PRESENCE, None),
        _disconnected(lambda tabs: tabs.second),
    ),
    Step(
        "disconnect_last",
        "disconnected: the last tab (offline)",
        CHANGE,
        (PRESENCE, None),
        _disconnected(lambda tabs: tabs.first),
    ),
)


# ---- one mode: a store, its clock, its queue -------------------------------------------------------------------------


EVENT_SPACING = timedelta(milliseconds=10)  # a store's clock between one event and its next


@dataclass
class SteppedClock:
    """A store's clock: from the real time at the start, it moves on 10 ms before each event (`next_event`), 1 us
    each time it is read, and by the bench's moves (`advance`). What an event decides then depends on the steps
    alone, not on how fast this machine runs them (nor on how often the event reads the clock: a snapshot reads it
    per member): the two stores see the same times."""

    start: datetime
    offset: timedelta = timedelta(0)
    events: int = 0
    reads: int = 0

    def __call__(self) -> datetime:
        """Return the time it is for the store."""
        self.reads += 1
        return self.start + self.offset + self.events * EVENT_SPACING + timedelta(microseconds=self.reads)

    def next_event(self) -> None:
        """Move the clock on to the next event."""
        self.events += 1

    def advance(self, by: timedelta) -> None:
        """Move the clock on."""
        self.offset += by


@dataclass
class Tally:
    """What one step cost in one mode, over the counted users' events."""

    events: int = 0
    table: Counter[str] = field(default_factory=Counter)
    queue: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # requests answered 4xx or 5xx, by operation and status
    table_per_event: Counter[int] = field(default_factory=Counter)
    queue_per_event: Counter[int] = field(default_factory=Counter)
    ms: list[float] = field(default_factory=list)

    def add(self, table: list[tuple[str, int]], queue: list[tuple[str, int]], seconds: float) -> None:
        """Add one event's requests and time."""
        self.events += 1
        self.table.update(op for op, _status in table)
        self.queue.update(op for op, _status in queue)
        self.failed.update(f"{op} {status}" for op, status in [*table, *queue] if status >= 400)
        self.table_per_event[len(table)] += 1
        self.queue_per_event[len(queue)] += 1
        self.ms.append(seconds * 1000)

    def to_json(self) -> dict[str, Any]:
        """The tally as the report keeps it."""
        return {
            "events": self.events,
            "table": {"total": sum(self.table.values()), "by_operation": dict(sorted(self.table.items()))},
            "queue": {"total": sum(self.queue.values()), "by_operation": dict(sorted(self.queue.items()))},
            "failed": dict(sorted(self.failed.items())),
            "table_per_event": {str(n): k for n, k in sorted(self.table_per_event.items())},
            "queue_per_event": {str(n): k for n, k in sorted(self.queue_per_event.items())},
            "ms": {
                "median": round(statistics.median(self.ms), 2) if self.ms else None,
                "mean": round(statistics.fmean(self.ms), 2) if self.ms else None,
                "p90": round(_quantile(self.ms, 0.9), 2) if self.ms else None,
            },
        }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Mode:
    """One store (feed off or on) on a table of its own, with its clock and, when on, its queue."""

    name: str
    store: ConnectionStore
    clock: SteppedClock
    queue: str | None
    tallies: dict[str, Tally] = field(default_factory=dict)
    warm_up: dict[str, Tally] = field(default_factory=dict)

    def tabs(self, index: int) -> Tabs:
        """The user `index` of this mode (the modes' users are their own, on their own tables)."""
        user = f"{self.name}-u{index}"
        return Tabs(user, f"{user}-t1", f"{user}-t2")


@contextlib.asynccontextmanager
async def _mode(name: str, storage: str, direct: str, *, start: datetime) -> AsyncIterator[Mode]:
    """A store of the app's on a fresh table, its feed as `mapping.functions.runtime` sets it: off, or on a fresh
    queue (deleted afterwards)."""
    queue = f"feed-bench-{uuid.uuid4().hex[:12]}" if name == "on" else ""
    clock = SteppedClock(start)
    async with fresh_table(direct) as table:
        settings = Settings(
            StorageConnection(connection_string=storage),
            table_name=table,
            rooms_open=(ROOM,),
            queue=QueueConnection(connection_string=storage),
            presence_feed_queue=queue,
        )
        store = ConnectionStore(settings, clock=clock)
        on = bool(settings.presence_feed_queue) and settings.queue is not None
        store.feed = QueueFeed(QueueDelayedActions(settings.queue, queue)) if on and settings.queue else NO_FEED
        try:
            yield Mode(name, store, clock, queue or None)
        finally:
            await store.feed.close()
            await store.close()
            if queue:
                async with QueueClient.from_connection_string(direct, queue) as client:
                    with contextlib.suppress(AzureError):
                        await client.delete_queue()


# ---- the feed read back ----------------------------------------------------------------------------------------------


async def read_feed(direct: str, queue: str) -> list[dict[str, Any]]:
    """Take every message off the feed's queue, decoded as a queue trigger decodes them (Base64, then JSON)."""
    read: list[dict[str, Any]] = []
    async with QueueClient.from_connection_string(direct, queue) as client:
        while batch := [m async for m in client.receive_messages(max_messages=READ_BATCH, visibility_timeout=60)]:
            for message in batch:
                read.append(json.loads(base64.b64decode(str(message.content)).decode("utf-8")))
                await client.delete_message(message)
    return read


@dataclass
class Messages:
    """The feed messages of one step, of the counted users, and what checking them found."""

    total: int = 0
    per_event: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)  # "higher", "same", "lower" than the subject's last
    wrong: list[str] = field(default_factory=list)  # messages that are not what the step's change puts
    rooms: int = 0  # `occupied` / `vacated`: a room the change made occupied or vacated (its own change, one put)

    def to_json(self) -> dict[str, Any]:
        """The check as the report keeps it."""
        return {
            "total": self.total,
            "per_event": {str(n): k for n, k in sorted(self.per_event.items())},
            "kinds": dict(sorted(self.kinds.items())),
            "versions": dict(sorted(self.versions.items())),
            "wrong": self.wrong[:10],
            "rooms": self.rooms,
        }


def check_messages(
    step: Step, messages: list[dict[str, Any]], users: list[str], last: dict[str, int], *, warm_up: str
) -> Messages:
    """Check a step's messages against its change: one per counted user of the expected kind and party (none when
    it changes nothing), each version against the subject's last one (`last`, updated); the warm-up user's are left
    out, and any other is wrong."""
    checked = Messages()
    counted = set(users)
    rooms = [m for m in messages if m.get("kind") in (OCCUPIED, VACATED)]
    checked.rooms = len(rooms)
    checked.wrong += [f"{step.key}: {m}" for m in rooms if m.get("subject") not in (f"room:{ROOM}", f"room:{GRANTED}")]
    messages = [m for m in messages if m not in rooms]
    mine = [m for m in messages if m.get("user") in counted]
    by_user = Counter(str(m["user"]) for m in mine)
    checked.per_event.update(by_user[user] for user in users)
    checked.total = len(mine)
    for message in mine:
        checked.kinds[str(message.get("kind"))] += 1
        if step.message is None or (message.get("kind"), message.get("by")) != step.message:
            checked.wrong.append(f"{step.key}: {message}")
        subject, version = str(message["subject"]), int(message["version"])
        before = last.get(subject)
        if before is None:
            checked.versions["first"] += 1
        else:
            checked.versions["higher" if version > before else "same" if version == before else "lower"] += 1
        last[subject] = version if before is None else max(version, before)
    checked.wrong += [
        f"{step.key}: a message of no counted user: {m}" for m in messages if m.get("user") not in {*counted, warm_up}
    ]
    return checked


# ---- the section -----------------------------------------------------------------------------------------------------


async def _take(mode: Mode, step: Step, index: int, table: CountingProxy, queue: CountingProxy) -> None:
    """Make one event of `mode`'s user `index`, counted alone (the warm-up user's into the warm-up's tally)."""
    mode.clock.next_event()
    table.recorder.take()
    queue.recorder.take()
    started = time.perf_counter()
    await step.run(mode.store, mode.tabs(index))
    seconds = time.perf_counter() - started
    tallies = mode.warm_up if index == WARM_UP else mode.tallies
    tallies.setdefault(step.key, Tally()).add(table.recorder.take(), queue.recorder.take(), seconds)


async def _anchor(mode: Mode) -> None:
    """Keep both rooms occupied for the whole run: a user online in them who takes no step, so the steps' changes are
    the users' own (a room's `occupied` and `vacated` are changes of their own, checked by tests/azurite/test_feed)."""
    user, tab = f"{mode.name}-anchor", f"{mode.name}-anchor-t1"
    await events.on_connected(mode.store, Invocation("connections", "connected", HUB, tab, user, None))
    await events.on_join(mode.store, Invocation("messages", "join", HUB, tab, user, [ROOM]))
    await events.on_grant(mode.store, user, GRANTED, service=AGE_ONLY)


async def measure_feed(azurite: Azurite, plan: FeedPlan = FULL) -> dict[str, Any]:
    """Drive every step for the plan's users with the feed off and on; return the tallies, the messages read back,
    and the goals."""
    if azurite.queue_port is None:
        raise RuntimeError("the feed section needs Azurite's queue service")
    started = time.monotonic()
    direct = azurite.connection_string
    counted = list(range(1, plan.users + 1))
    checked: dict[str, Messages] = {}
    with (
        CountingProxy(azurite.port, classifier=classify) as table_proxy,
        CountingProxy(azurite.queue_port, classifier=classify_queue) as queue_proxy,
    ):
        for proxy in (table_proxy, queue_proxy):
            _without_nagle(proxy)
        storage = connection_string(table_proxy.port, queue_port=queue_proxy.port)
        start = datetime.now(UTC)
        async with _mode("off", storage, direct, start=start) as off, _mode("on", storage, direct, start=start) as on:
            modes = (off, on)
            users = [on.tabs(index).user for index in counted]
            last: dict[str, int] = {}
            assert on.queue is not None
            for mode in modes:
                await _anchor(mode)
            await read_feed(direct, on.queue)  # the anchor's own messages: not a step's
            for step in STEPS:
                for mode in modes:
                    mode.clock.advance(step.after)
                for index in [WARM_UP, *counted]:
                    for mode in modes if index % 2 else reversed(modes):
                        await _take(mode, step, index, table_proxy, queue_proxy)
                messages = await read_feed(direct, on.queue)
                checked[step.key] = check_messages(step, messages, users, last, warm_up=on.tabs(WARM_UP).user)
                logger.info(
                    "%-18s table off %5d on %5d  queue on %4d  messages %4d  ms off %.1f on %.1f",
                    step.key,
                    sum(off.tallies[step.key].table.values()),
                    sum(on.tallies[step.key].table.values()),
                    sum(on.tallies[step.key].queue.values()),
                    checked[step.key].total,
                    statistics.median(off.tallies[step.key].ms),
                    statistics.median(on.tallies[step.key].ms),
                )
            warm_up = {mode.name: _warm_up(mode) for mode in modes}
            rows = [
                {
                    "key": step.key,
                    "label": step.label,
                    "changes": step.changes,
                    "message": list(step.message) if step.message else None,
                    "clock_moved_seconds": step.after.total_seconds(),
                    "off": off.tallies[step.key].to_json(),
                    "on": on.tallies[step.key].to_json(),
                    "messages": checked[step.key].to_json(),
                }
                for step in STEPS
            ]
    feed = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": {**asdict(plan), "room": ROOM, "granted": GRANTED, "ttl_seconds": 600, "steps": len(STEPS)},
        "rows": rows,
        "warm_up": warm_up,
        "duration_seconds": round(time.monotonic() - started, 1),
    }
    feed["goals"] = goals(feed)
    return feed


def _warm_up(mode: Mode) -> dict[str, Any]:
    """The warm-up user's requests, all steps together (the one-offs of a process: the feed's queue created)."""
    table: Counter[str] = Counter()
    queue: Counter[str] = Counter()
    for tally in mode.warm_up.values():
        table.update(tally.table)
        queue.update(tally.queue)
    return {
        "table": {"total": sum(table.values()), "by_operation": dict(sorted(table.items()))},
        "queue": {"total": sum(queue.values()), "by_operation": dict(sorted(queue.items()))},
    }


def _without_nagle(proxy: CountingProxy) -> None:
    """Answer through the proxy without Nagle's delay (its headers and body are two writes; the second would wait
    for the client's delayed ACK of the first): the counts are the same either way, the times are not."""
    proxy._server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]


# ---- the goals -------------------------------------------------------------------------------------------------------


def _queue_goal(changes: str) -> tuple[str, Callable[[dict[str, int], int], bool]]:
    """The goal of a step's queue requests with the feed on, per event: as text, and as a test of the per-event
    counts (requests per event -> events) given the rooms the step occupied or vacated (each its own change)."""
    if changes == CHANGE:
        return (
            "1 a change (+1 a room occupied or vacated)",
            lambda per_event, rooms: set(per_event) <= {"1", "2"} and per_event.get("2", 0) == rooms,
        )
    if changes == NOTHING:
        return "0 (no change)", lambda per_event, rooms: set(per_event) == {"0"} and rooms == 0
    return "at most 1 (a repeat)", lambda per_event, rooms: set(per_event) <= {"0", "1", "2"}


def goals(feed: dict[str, Any]) -> list[dict[str, Any]]:
    """Each step's goals: table requests on = off; queue requests on per event (1 a change, 0 no change, at most 1 a
    repeat), only puts; queue requests off 0; the messages read back, one per change (none without one), as put."""
    rows = []
    for row in feed["rows"]:
        off, on, messages = row["off"], row["on"], row["messages"]
        queue_text, queue_met = _queue_goal(row["changes"])
        per_change = "1" if row["changes"] == CHANGE else "0" if row["changes"] == NOTHING else "at most 1"
        message_met = not messages["wrong"] and (
            set(messages["per_event"]) == {"1"}
            if row["changes"] == CHANGE
            else set(messages["per_event"]) == {"0"}
            if row["changes"] == NOTHING
            else set(messages["per_event"]) <= {"0", "1"}
        )
        versions_met = (
            set(messages["versions"]) <= {"higher", "first"}
            if row["changes"] == CHANGE
            else set(messages["versions"]) <= {"same"}
        )
        rows += [
            _goal(row, "table", on["table"]["total"], off["table"]["total"], "= off", on["table"] == off["table"]),
            _goal(
                row,
                "queue",
                on["queue"]["total"],
                None,
                queue_text,
                queue_met(on["queue_per_event"], messages.get("rooms", 0))
                and set(on["queue"]["by_operation"]) <= {PUT},
            ),
            _goal(row, "queue off", off["queue"]["total"], 0, "0", off["queue"]["total"] == 0),
            _goal(row, "messages", messages["total"], None, f"{per_change} an event", message_met),
            _goal(row, "versions", messages["total"], None, "higher a change, the same a repeat", versions_met),
            _goal(
                row, "failed", len(on["failed"]) + len(off["failed"]), 0, "0", not on["failed"] and not off["failed"]
            ),
        ]
    return rows


def _goal(row: dict[str, Any], what: str, measured: int, bound: int | None, goal: str, met: bool) -> dict[str, Any]:
    return {"key": row["key"], "what": what, "measured": measured, "bound": bound, "goal": goal, "met": met}


def missed(feed: dict[str, Any]) -> list[str]:
    """Return the goals missed, named."""
    return [
        f"feed {row['key']}: {row['what']} {row['measured']} (goal {row['goal']})"
        for row in feed["goals"]
        if not row["met"]
    ]


# ---- the report's section --------------------------------------------------------------------------------------------


def _per_event(total: int, events: int) -> str:
    value = total / events if events else 0.0
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _met(feed: dict[str, Any], key: str, *whats: str) -> bool:
    return all(row["met"] for row in feed["goals"] if row["key"] == key and row["what"] in whats)


def _ms(tally: dict[str, Any]) -> str:
    return f"{tally['ms']['median']:.1f}"


def feed_markdown(feed: dict[str, Any] | None, *, heading: str = "##") -> list[str]:
    """Render the section: per step, table requests off and on, queue requests and messages on, each beside its
    goal, and the time per event; then the issue's goals and how it was measured."""
    if not feed:
        return []
    plan = feed["plan"]
    lines = [
        f"{heading} The presence feed: what it costs when on",
        "",
        f"The app's event functions (`mapping.events`) driven for {plan['users']:,} users (two tabs each), every "
        "user one step before the next, with `PRESENCE_FEED_QUEUE` off and on (`QueueFeed` on a queue of Azurite's). "
        "Per event: table requests off / on and queue requests on, counted on the wire by the bench's proxies in "
        "front of Azurite's table and queue services; *messages*: the feed messages on the queue afterwards, read "
        "back and checked (kind, subject, who made the change, version); time per event, the median in ms, off / "
        f"on. *Changes*: whether the event changes presence or a membership. Counted {feed['date']} "
        f"({feed['duration_seconds']:.0f} s; alone: `python -m bench.feed`).",
        "",
        "| event | changes | table requests off / on (per event) | goal | queue requests on (per event) | goal "
        "| messages (per event) | ms off / on | met |",
        "|---|---|---:|---|---:|---|---:|---:|---|",
    ]
    for row in feed["rows"]:
        off, on, messages = row["off"], row["on"], row["messages"]
        events_ = on["events"]
        table = f"{off['table']['total']:,} / {on['table']['total']:,} ({_per_event(on['table']['total'], events_)})"
        queue = f"{on['queue']['total']:,} ({_per_event(on['queue']['total'], events_)})"
        sent = f"{messages['total']:,} ({_per_event(messages['total'], events_)})"
        queue_goal = _queue_goal(row["changes"])[0]
        met = all(goal["met"] for goal in feed["goals"] if goal["key"] == row["key"])
        lines.append(
            f"| {row['label']} | {row['changes']} | {table} | = off | {queue} | {queue_goal} | {sent} | "
            f"{_ms(off)} / {_ms(on)} | {'yes' if met else '**no**'} |"
        )
    lines += ["", *_goal_lines(feed), "", *_how(feed), ""]
    return lines


def _goal_lines(feed: dict[str, Any]) -> list[str]:
    rows = feed["rows"]
    changes = [row for row in rows if row["changes"] == CHANGE]
    repeats = [row for row in rows if row["changes"] == REPEAT]

    def verdict(*whats: str, among: list[dict[str, Any]] = rows) -> str:
        failed = [f"{row['key']} ({what})" for row in among for what in whats if not _met(feed, row["key"], what)]
        return "met" if not failed else f"**missed**: {', '.join(failed)}"

    puts = sum(row["on"]["queue"]["total"] for row in changes)
    events_ = sum(row["on"]["events"] for row in changes)
    added = [row["on"]["ms"]["median"] - row["off"]["ms"]["median"] for row in changes]
    warm = feed["warm_up"]["on"]["queue"]["by_operation"]
    lines = [
        "The issue's goals:",
        "",
        f"- at most one queue request per change: {puts:,} queue requests for {events_:,} changes of "
        f"{len(changes)} kinds, exactly one Put Message each: {verdict('queue', among=changes)}; the events that "
        f"change nothing make none: {verdict('queue', among=[r for r in rows if r['changes'] == NOTHING])}; with "
        f"the feed off, none at all: {verdict('queue off')}.",
        f"- table requests unchanged by the feed (the message is made of what the announcement read): "
        f"{verdict('table')}.",
        f"- one message on the queue per change, of its kind, subject and party, under a higher version than the "
        f"subject's last: {verdict('messages', 'versions', among=changes)}.",
        f"- what the feed adds to an event's time (the Put Message, one loopback round trip to Azurite): "
        f"{min(added):+.1f} to {max(added):+.1f} ms per change (medians on less off).",
        "",
        "Repeats: "
        + "; ".join(
            f"*{row['label']}* makes {_per_event(row['on']['queue']['total'], row['on']['events'])} queue request a "
            f"call and puts {_versions(row['messages'])}"
            for row in repeats
        )
        + ". Neither changes anything: the app announces the pair or membership again on purpose (a client's retry "
        "within a minute, rooms R5; a status set again once the lease is due for a refresh, the store's `set_status`), "
        "and the feed message goes with its announcement (feed F2), under the version it repeats (F1), so a consumer "
        f"keeping the highest version per subject drops it: {verdict('messages', 'versions', among=repeats)}. "
        f"The first put of a process creates the queue: {', '.join(f'{k} {v}' for k, v in warm.items())} for the "
        "warm-up user, once.",
    ]
    return lines


def _how(feed: dict[str, Any]) -> list[str]:
    plan = feed["plan"]
    return [
        "- In-process: two of the app's `ConnectionStore`s on one Azurite, each on a fresh table, the feed seam set "
        "as `mapping.functions.runtime` sets it: `NO_FEED` (off) or `QueueFeed(QueueDelayedActions(...))` on a "
        "fresh queue (on). The events are `mapping.events`' handlers: `on_connected`, `on_set_status`, `on_join`, "
        "`on_leave`, `on_disconnected` with the SignalR invocations the functions pass, and a server's `on_grant` and "
        "`on_revoke`. At each user the two stores take the step in turn (alternately first), so off and on are "
        "timed under the same load; each event is counted alone.",
        f"- The steps in the table's order, every user one step before the next; the stores' clocks are moved on "
        f"{int(OVER_A_MINUTE.total_seconds())} s before the status set again (over the minute of rooms R5, within "
        f"the quarter lease, {plan['ttl_seconds'] // 4} s of the TTL {plan['ttl_seconds']} s) and "
        f"{int(PAST_A_QUARTER_LEASE.total_seconds())} s more before the late one (past the quarter lease); "
        f"otherwise a store's clock moves on {int(EVENT_SPACING.total_seconds() * 1000)} ms before each event, so "
        "both stores see the same times and what an event decides does not depend on the machine's speed. "
        f"`ROOMS_OPEN={plan['room']}`, '{plan['granted']}' closed; the app's defaults otherwise "
        "(`PRESENCE_AUDIENCE=scoped`, the call budget on), grace off (each disconnect decides at once).",
        "- A warm-up user takes every step first, uncounted. After each step the queue is read straight from Azurite "
        "(not counted), each message decoded as a queue trigger decodes it (Base64, then JSON) and deleted: a "
        "step's messages are its own.",
        *_varying(feed),
    ]


def _varying(feed: dict[str, Any]) -> list[str]:
    """A line naming the steps whose events do not all make the same table requests (off and on alike, or not)."""
    varying = [
        row for row in feed["rows"] if len(row["on"]["table_per_event"]) > 1 or len(row["off"]["table_per_event"]) > 1
    ]
    if not varying:
        return []

    def spread(per_event: dict[str, int]) -> str:
        return ", ".join(f"{events:,} with {requests}" for requests, events in per_event.items())

    return [
        "- Events of one step whose table requests differ: "
        + "; ".join(
            f"*{row['label']}*: off {spread(row['off']['table_per_event'])}, on {spread(row['on']['table_per_event'])}"
            for row in varying
        )
        + ". The call budget's publish (one merge on the caller's row once its connection has spent "
        f"{PUBLISH_EVERY} tokens) falls on whichever call spends the tenth; a snapshot of over {SYNC_PAGE} members "
        "charges a token a further page.",
    ]


def _versions(messages: dict[str, Any]) -> str:
    """The messages of a repeat, by how their versions compare with the subject's last: "10 messages under the
    version they repeat"."""
    if not messages["total"]:
        return "no message"
    words = {"same": "under the version they repeat", "higher": "under a higher version", "lower": "under a lower one"}
    return ", ".join(f"{n:,} messages {words.get(how, how)}" for how, n in messages["versions"].items())


def feed_summary(feed: dict[str, Any] | None) -> list[str]:
    """The headline line of the section."""
    if not feed:
        return []
    rows = feed["rows"]
    changes = [row for row in rows if row["changes"] == CHANGE]
    puts = sum(row["on"]["queue"]["total"] for row in changes)
    events_ = sum(row["on"]["events"] for row in changes)
    same = all(row["on"]["table"] == row["off"]["table"] for row in rows)
    failed = missed(feed)
    return [
        f"- The presence feed, on: {puts:,} queue requests and "
        f"{sum(row['messages']['total'] for row in changes):,} messages for {events_:,} changes "
        f"({len(changes)} kinds of event, {feed['plan']['users']:,} users), none for the events that change nothing; "
        f"table requests {'the same as' if same else '**not** the same as'} off; "
        + ("every goal met." if not failed else f"{len(failed)} goal(s) missed: {'; '.join(failed)}.")
    ]


# ---- alone: python -m bench.feed -------------------------------------------------------------------------------------


def write_alone(feed: dict[str, Any], out: Path, report: Path, *, merge: bool = True) -> None:
    """Write feed.json and feed.md into `out`; put the figures into the report in `report` if there is one (and
    `merge`)."""
    from bench.report import write_section_alone

    write_section_alone("feed", feed, feed_markdown(feed, heading="#"), out, report, merge=merge)


async def _measure_alone(plan: FeedPlan) -> dict[str, Any]:
    with running_azurite() as azurite:
        return await measure_feed(azurite, plan)


def main() -> None:
    """Parse the command line and run the section alone."""
    parser = section_arguments("python -m bench.feed", __doc__, section="feed", smoke=f"{SMOKE.users} users")
    arguments = parser.parse_args()
    quiet_logging()
    feed = asyncio.run(_measure_alone(SMOKE if arguments.smoke else FULL))
    if (to := destination(arguments, "feed")) is not None:
        write_alone(feed, to[0], arguments.report, merge=to[1])
    if failed := missed(feed):
        raise SystemExit(f"over the issue's goals: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
