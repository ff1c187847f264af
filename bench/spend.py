"""What one client may spend (issue 31): one connection looping calls of each kind as fast as it can in a room of 100
members, with the call budget on (the defaults; 1,000 calls of each kind) and off (`CLIENT_CALL_RATE=0`; 250 of each,
as every call off costs what the one before it did), in billed messages, table requests and queue requests.

The real path, in this process: the local SignalR emulator (`local/emulator`, which bills each message once per
recipient connection per started 2 KB) with the local host (`local/host`) running the app's functions as its
upstream, and 100 light WebSocket clients (`testkit/hub_client.py`), one connection each. A caller's calls go over
its WebSocket as `connection.send` sends them (no answer awaited), the emulator forwards them upstream one at a time
in order, and the last one is a blocking invocation whose completion says every call before it has run and its
messages are sent (and billed). Every table and queue request is counted on the wire by the bench's proxies in front
of Azurite (`bench/proxy.py`); whether each call was accepted or refused (answered, or silent) is read from what
its function set on its SignalR output (`Outcomes`), as the output binding sees it.

The room of 100 is seeded as a join leaves it (each member's membership row and member-index row, joined two
minutes before, so a member's join again is one of long standing: rooms R5), then each member connects (the app's
`connected` adds the connection to the room's group, R3). Each kind of call has its own caller among the members, so
each loop starts with a full bucket and none waits for a refill; the other 99 members (one connection each) are the
audience. `PRESENCE_AUDIENCE=scoped` (the default), grace off (as the bench's other client events), the sweep never.

Across two processes: two stores on one table, each with its own memory, one connection's `sendToRoom` (a call that
writes nothing of the caller's row), then its status changes (a call that writes it), every 20 ms for 60 s of a moved
clock dealt round-robin to them, as tests/azurite/test_budget.py does.

The whole section takes about 2 minutes; `--smoke` (50 calls of each kind, a room of 20) under one.

Run alone: `python -m bench.spend [--smoke] [--out DIR] [--report DIR]` (its own Azurite; writes spend.json and
spend.md into `--out`, default bench/results/spend/, and puts the figures into the report in `--report`, default
bench/results/, when it has a latest.json: its section and headline line in latest.md, `spend` in latest.json).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.alone import destination, quiet_logging, section_arguments
from bench.proxy import APP_QUEUE_OPERATIONS, CountingProxy, classify, classify_queue
from bench.workload import TTL, app_environment, fresh_table, use_app_settings
from local.emulator.server import BILLED, REST_CALLS, EmulatorConfig
from local.emulator.server import create_app as create_emulator
from local.host.functions import FunctionSpec, load_functions
from mapping import events
from mapping.keys import user_key
from mapping.presence.budget import PUBLISH_EVERY
from mapping.presence.rows import Membership
from mapping.presence.store import ConnectionStore
from mapping.rooms.index import index_row
from mapping.settings import DEFAULT_CALL_BURST, DEFAULT_CALL_RATE, Settings, StorageConnection
from mapping.signalr.invocation import Invocation
from mapping.storage.table import MAX_BATCH, upsert
from testkit.azurite import Azurite, connection_string, free_port, running_azurite
from testkit.hub_client import RECORD_SEPARATOR, HubClient
from testkit.tables import make_settings

logger = logging.getLogger("bench.spend")

ACCESS_KEY = "bench-spend-emulator-key-0123456789abcdefghij"
HUB = "chat"
ROOM = "spend.lobby"
OTHER = "m00"  # the member others send to and watch (one connection, never a caller)
NEVER = "0 0 0 1 1 *"  # the sweep's schedule: once a year, never within a run
JOINED_BEFORE = timedelta(minutes=2)  # the seeded memberships' age: over R5's minute, so a join again is a no-op
OPEN_AT_ONCE = 16
WAIT_SECONDS = 600.0  # a loop's last call answered within this
READS = frozenset({"query", "point read"})
TOO_MANY = "too many calls"
COMPLETION = 3
MODES = ("off", "on")
TWO_PROCESS_SECONDS, TWO_PROCESS_EVERY_MS = 60, 20


@dataclass(frozen=True)
class SpendPlan:
    """The section's sizes: the room's members (each one connection, the callers among them), and the calls of each
    kind with the budget on, and off (every call off costs what the one before it did: 1,000 of each kind take about 6
    minutes of the bench's 2 cores, 250 a quarter of that)."""

    calls: int = 1000
    off_calls: int = 250
    members: int = 100


FULL = SpendPlan()
SMOKE = SpendPlan(calls=50, off_calls=50, members=20)


# ---- the kinds of call ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audience:
    """Who an accepted call may bill, in messages: the room's connections (the caller's own among them), the caller's
    own presence group (its one tab), and a snapshot of the room in 2 KB units (measured in the setup)."""

    room: int
    own: int
    snapshot: int


@dataclass(frozen=True)
class Kind:
    """A kind of client call looped: its key, what it is, its n-th call, and the messages an accepted one may bill."""

    key: str
    label: str
    call: Callable[[int], tuple[str, list[Any]]]
    audience: Callable[[Audience], int]
    audience_is: str


KINDS = (
    Kind(
        "set_status_same",
        "setStatus('busy'), the status it has",
        lambda i: ("setStatus", ["busy"]),
        lambda a: 1,
        "the caller: its presence, to it alone (R5)",
    ),
    Kind(
        "set_status_alternating",
        "setStatus('away'), setStatus('busy'), ... (each a change)",
        lambda i: ("setStatus", ["away" if i % 2 == 0 else "busy"]),
        lambda a: a.room + a.own,
        "the room's connections and the caller's presence group",
    ),
    Kind(
        "send",
        f"send('{OTHER}', message) to a member",
        lambda i: ("send", [OTHER, {"n": i}]),
        lambda a: 1,
        "the member's one connection",
    ),
    Kind(
        "send_to_room",
        "sendToRoom(room, message)",
        lambda i: ("sendToRoom", [ROOM, {"n": i}]),
        lambda a: a.room,
        "the room's connections",
    ),
    Kind(
        "join_again",
        "join(room) of the room it has been in for over a minute",
        lambda i: ("join", [ROOM]),
        lambda a: a.snapshot,
        "the caller: the room's snapshot (R5)",
    ),
    Kind(
        "watch",
        f"watch(['{OTHER}']), a member",
        lambda i: ("watch", [[OTHER]]),
        lambda a: 1,
        "the caller: the watched user's snapshot",
    ),
    Kind(
        "unwatch",
        f"unwatch(['{OTHER}']) (watched by the first call only)",
        lambda i: ("unwatch", [[OTHER]]),
        lambda a: 0,
        "nobody (a group removal is no message)",
    ),
    Kind(
        "sync",
        "sync(room)",
        lambda i: ("sync", [ROOM]),
        lambda a: a.snapshot,
        "the caller: the room's snapshot",
    ),
    Kind(
        "leave_join",
        "leave(room), join(room), ... (each a change)",
        lambda i: ("leave" if i % 2 == 0 else "join", [ROOM]),
        lambda a: 2 * a.room + a.snapshot,
        "a join's: the room's connections twice (the `room` joined message, the joiner's `presence`), its snapshot "
        "(a leave's: the room's connections once)",
    ),
)


def caller_of(kind: Kind) -> str:
    """The member whose one connection loops `kind`'s calls."""
    return f"caller-{kind.key.replace('_', '-')}"


# ---- the in-process stack: emulator, local host, clients -----------------------------------------------------------


class Tab(HubClient):
    """A hub client that can also wait for a blocking invocation's completion (`connection.invoke`)."""

    def __init__(self, user: str, connection_id: str, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)
        super().__init__(user, connection_id, socket)

    async def invoke(self, method: str, *arguments: Any) -> None:
        """Invoke a hub method and wait for its completion (every call sent before it has run by then)."""
        invocation_id = str(next(self._ids))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[invocation_id] = done
        record = {"type": 1, "invocationId": invocation_id, "target": method, "arguments": list(arguments)}
        await self.socket.send_str(json.dumps(record) + RECORD_SEPARATOR)
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                await done
        finally:
            self._waiting.pop(invocation_id, None)

    def errors(self) -> list[dict[str, Any]]:
        """Every error answered to this connection so far."""
        return [arguments[0] for target, arguments in self.messages if target == "error" and arguments]

    def _record(self, record: str) -> None:
        if '"invocationId"' in record:  # a completion (the messages a hub client hears carry none)
            with contextlib.suppress(ValueError, AttributeError):
                parsed = json.loads(record)
                if parsed.get("type") == COMPLETION:
                    waiting = self._waiting.get(str(parsed.get("invocationId")))
                    if waiting is not None and not waiting.done():
                        waiting.set_result(None)
                    return
        super()._record(record)


@dataclass
class Stack:
    """The emulator and the local host served in this process, and the emulator's counts."""

    emulator_url: str
    emulator: web.Application
    outcomes: Outcomes

    @property
    def connection_string(self) -> str:
        """Return the AzureSignalRConnectionString that points the app at the emulator."""
        port = self.emulator_url.rsplit(":", 1)[1]
        return f"Endpoint=http://127.0.0.1;Port={port};AccessKey={ACCESS_KEY};Version=1.0;"

    def billed(self, *, reset: bool = False) -> dict[str, Any]:
        """Return the emulator's billed messages (and start again from zero with `reset`)."""
        counts = self.emulator[BILLED].snapshot()
        if reset:
            self.emulator[BILLED].reset()
        return counts

    def rest_calls(self) -> Counter[str]:
        """Return a copy of the emulator's REST calls by route."""
        return Counter(self.emulator[REST_CALLS].by_route)


@contextlib.asynccontextmanager
async def running_stack() -> AsyncIterator[Stack]:
    """Serve the emulator and, as its upstream, the local host running the app (the app settings must be set)."""
    import function_app
    from local.host.server import SIGNALR_WEBHOOK
    from local.host.server import create_app as create_host

    emulator_port, host_port = free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    emulator = create_emulator(
        EmulatorConfig(
            public_url=emulator_url,
            keys=[ACCESS_KEY],
            upstream_url=f"http://127.0.0.1:{host_port}{SIGNALR_WEBHOOK}",
            client_timeout=3600.0,  # the audience sends nothing for the whole run
            upstream_timeout=120.0,
        )
    )
    outcomes = Outcomes()
    host = create_host([outcomes.observe(spec) for spec in load_functions(function_app.app)])
    runners = [web.AppRunner(app, access_log=None) for app in (emulator, host)]
    try:
        for runner, port in zip(runners, (emulator_port, host_port), strict=True):
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        yield Stack(emulator_url, emulator, outcomes)
    finally:
        for runner in runners:
            await runner.cleanup()


@dataclass
class Outcomes:
    """What each client call's function set on its SignalR output, as the host's output binding sees it, by the
    caller's connection: `accepted` (anything but a refusal: every call looped here answers or sends something),
    `answered` (one `too many calls` error) or `silent` (nothing at all: a refusal within a second of one answered)."""

    by_connection: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    connection_events: Counter[str] = field(default_factory=Counter)  # connected and disconnected events run

    def observe(self, spec: FunctionSpec) -> FunctionSpec:
        """Return `spec` with its code counting the outcome of each call, or each connection event it ran."""
        outputs = [b["name"] for b in spec.bindings if b["type"] == "signalR" and b["direction"].upper() == "OUT"]
        if spec.trigger["type"] != "signalRTrigger" or not outputs:
            return spec
        code, trigger, [output] = spec.code, spec.trigger["name"], outputs
        category = str(spec.trigger.get("category"))

        async def observed(**arguments: Any) -> Any:
            payload = json.loads(arguments[trigger])
            if category != "messages":
                try:
                    return await code(**arguments)
                finally:
                    self.connection_events[str(payload.get("Event"))] += 1
            result = await code(**arguments)
            self.by_connection[str(payload.get("ConnectionId"))][_outcome(arguments[output].get())] += 1
            return result

        return replace(spec, code=observed)

    async def disconnected(self, count: int, *, since: int) -> None:
        """Wait until `count` disconnected events have run since there were `since`."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if self.connection_events["disconnected"] >= since + count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"spend: {count} disconnected events expected, {self.connection_events} run")
            await asyncio.sleep(0.05)


def _outcome(value: Any) -> str:
    """Name a call's outcome from its SignalR output value (a JSON array, or None)."""
    messages = json.loads(value) if isinstance(value, str | bytes) else value or []
    if not messages:
        return "silent"
    if len(messages) == 1 and _is_refusal(messages[0]):
        return "answered"
    return "accepted"


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Log nothing below WARNING from the loggers `names` in the block (the local host logs a line per call)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


@contextlib.contextmanager
def saved_settings(names: Iterator[str] | list[str]) -> Iterator[None]:
    """Put back, afterwards, the app settings `names` as they were (`use_app_settings` leaves them be)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _env(storage: str, table: str, signalr: str, *, budget: bool) -> dict[str, str]:
    env = {
        **app_environment(storage, table),
        "AzureWebJobsStorage": storage,
        "PRESENCE_AUDIENCE": "scoped",  # the default: rooms, watchers, own tabs
        "SWEEP_SCHEDULE": NEVER,
        "AzureSignalRConnectionString": signalr,
        "CLIENT_CALL_RATE": str(DEFAULT_CALL_RATE) if budget else "0",
        "CLIENT_CALL_BURST": str(DEFAULT_CALL_BURST),
    }
    return env


def _without_nagle(proxy: CountingProxy) -> None:
    """Answer through the proxy without Nagle's delay: its answer's headers and body are two writes, and the second
    waits for the client's delayed ACK of the first (about 20 ms a request here; the counts are the same either way)."""
    proxy._server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]


# ---- one mode: the room, its connections, each kind's loop ---------------------------------------------------------


async def _seed_room(direct: str, table: str, users: list[str]) -> None:
    """Write each user's membership of the room as a join leaves it, joined `JOINED_BEFORE` ago."""
    store = ConnectionStore(Settings(StorageConnection(connection_string=direct), table_name=table, ttl=TTL))
    try:
        joined = Membership(ROOM, datetime.now(UTC) - JOINED_BEFORE)
        index = [{**index_row(joined, user_key(user), user), "Pending": False} for user in users]
        await asyncio.gather(
            *(
                store.table.transact([upsert(row) for row in index[i : i + MAX_BATCH]], action="seed the index")
                for i in range(0, len(index), MAX_BATCH)
            ),
            *(store.table.write(upsert(joined.to_table(user_key(user))), action="seed") for user in users),
        )
    finally:
        await store.close()


async def _open_tabs(session: aiohttp.ClientSession, stack: Stack, users: list[str]) -> dict[str, Tab]:
    gate = asyncio.Semaphore(OPEN_AT_ONCE)

    async def one(user: str) -> Tab:
        async with gate:
            tab = await Tab.open(session, stack.emulator_url, hub=HUB, user=user, access_key=ACCESS_KEY)
            assert isinstance(tab, Tab)
            return tab

    tabs = await asyncio.gather(*(one(user) for user in users))
    return {tab.user: tab for tab in tabs}


@dataclass
class _Meters:
    table: CountingProxy
    queue: CountingProxy


async def _loop(stack: Stack, meters: _Meters, kind: Kind, tab: Tab, calls: int, audience: Audience) -> dict[str, Any]:
    """Send `calls` calls of `kind` from `tab` as fast as its socket takes them (the last one awaited); count them."""
    outcomes = stack.outcomes.by_connection[tab.connection_id]
    before, errors_before = Counter(outcomes), len(tab.errors())
    rest_before = stack.rest_calls()
    stack.billed(reset=True)
    with meters.table.counting() as table, meters.queue.counting() as queue:
        started = time.monotonic()
        for i in range(calls - 1):
            method, arguments = kind.call(i)
            await tab.send(method, *arguments)
        method, arguments = kind.call(calls - 1)
        await tab.invoke(method, *arguments)
        elapsed = time.monotonic() - started
        with meters.table.recorder.lock:  # what failed, by operation and status (the block's end takes the record)
            failed = Counter(f"{op} {status}" for op, status in meters.table.recorder.requests if status >= 400)
    billed = stack.billed()
    counted = Counter(outcomes)
    counted.subtract(before)
    errors = tab.errors()[errors_before:]
    answered = sum(error.get("error") == TOO_MANY for error in errors)
    if counted.total() != calls or counted["answered"] != answered:
        raise AssertionError(f"spend: {kind.key}: {calls} calls, {answered} refusals heard, outcomes {dict(counted)}")
    unexpected = Counter(str(error.get("error")) for error in errors if error.get("error") != TOO_MANY)
    if unexpected:
        raise AssertionError(f"spend: {kind.key}: errors other than refusals: {dict(unexpected)}")
    rest = stack.rest_calls()
    rest.subtract(rest_before)
    reads = sum(n for op, n in table.items() if op in READS)
    app_queue = Counter({op: n for op, n in queue.items() if op in APP_QUEUE_OPERATIONS})
    accepted, refused = counted["accepted"], counted["answered"] + counted["silent"]
    return {
        "calls": calls,
        "accepted": accepted,
        "refused": refused,
        "answered": answered,
        "silent": counted["silent"],
        "elapsed_seconds": round(elapsed, 3),
        "billed": billed["total"],
        "billed_by_target": billed["byTarget"],
        "audience": kind.audience(audience),
        # What the loop may bill: each accepted call its audience, each answered refusal one error to the caller.
        "bound": accepted * kind.audience(audience) + answered,
        "table": {
            "total": sum(table.values()),
            "reads": reads,
            "writes": sum(table.values()) - reads,
            "by_operation": dict(sorted(table.items())),
            "failed": dict(sorted(failed.items())),
        },
        "queue": {"total": sum(app_queue.values()), "by_operation": dict(sorted(app_queue.items()))},
        "signalr_rest": {"total": sum((+rest).values()), "by_operation": dict(sorted((+rest).items()))},
    }


async def _mode(
    azurite: Azurite, stack: Stack, meters: _Meters, storage: str, plan: SpendPlan, *, budget: bool
) -> dict[str, Any]:
    """The room, its connections and every kind's loop, with the budget on or off, on a fresh table."""
    direct = azurite.connection_string
    callers = [caller_of(kind) for kind in KINDS]
    others = [OTHER, *(f"m{n:02}" for n in range(1, plan.members - len(callers)))]
    async with fresh_table(direct) as table, aiohttp.ClientSession() as session:
        await use_app_settings(_env(storage, table, stack.connection_string, budget=budget))
        try:
            await _seed_room(direct, table, [*callers, *others])
            tabs = await _open_tabs(session, stack, [*callers, *others])
            try:
                # The setup: the status the first kind sets again, and a snapshot's size (a member's sync).
                await tabs[caller_of(KINDS[0])].invoke("setStatus", "busy")
                stack.billed(reset=True)
                await tabs[others[-1]].invoke("sync", ROOM)
                snapshot = stack.billed()
                audience = Audience(room=len(tabs), own=1, snapshot=snapshot["total"])
                await asyncio.sleep(0.5)  # the setStatus's token back
                runs: dict[str, Any] = {}
                for kind in KINDS:
                    calls = plan.calls if budget else plan.off_calls
                    runs[kind.key] = await _loop(stack, meters, kind, tabs[caller_of(kind)], calls, audience)
                    run = runs[kind.key]
                    logger.info(
                        "spend: budget %-3s %-22s %4d accepted, %4d refused (%d answered), %6d billed, "
                        "%5d table, %.1f s",
                        "on" if budget else "off",
                        kind.key,
                        *(run["accepted"], run["refused"], run["answered"], run["billed"]),
                        *(run["table"]["total"], run["elapsed_seconds"]),
                    )
            finally:
                closed = stack.outcomes.connection_events["disconnected"]
                await asyncio.gather(*(tab.close() for tab in tabs.values()), return_exceptions=True)
                await stack.outcomes.disconnected(len(tabs), since=closed)  # the app done with them, table and all
        finally:
            await use_app_settings({})
    return {"audience": asdict(audience), "snapshot_listed": _listed(tabs[others[-1]]), "runs": runs}


def _listed(tab: Tab) -> int:
    """The members the setup's snapshot listed."""
    return sum(len(arguments[0].get("users", [])) for target, arguments in tab.messages if target == "presenceSync")


# ---- two processes ---------------------------------------------------------------------------------------------------


@dataclass
class _Moment:
    at: datetime

    def __call__(self) -> datetime:
        return self.at


_Handler = Callable[[ConnectionStore, Invocation], Awaitable[list[dict[str, Any]]]]
# The kinds looped across two processes: a call that writes nothing of the caller's row, and one that writes it.
TWO_PROCESS_KINDS: dict[str, tuple[_Handler, Callable[[int], tuple[str, list[Any]]]]] = {
    "send_to_room": (events.on_send_to_room, lambda step: ("sendToRoom", [ROOM, {"n": step}])),
    "set_status_alternating": (events.on_set_status, lambda step: ("setStatus", ["away" if step % 2 else "busy"])),
}


async def two_processes(azurite: Azurite, table_proxy: CountingProxy, kind: str) -> dict[str, Any]:
    """One connection's calls of `kind` every 20 ms for 60 s (a moved clock), dealt round-robin to two stores on one
    table (two processes, each its own memory): the calls accepted, the refusals answered, the table requests."""
    direct = azurite.connection_string
    counted = connection_string(table_proxy.port)
    clock = _Moment(datetime.now(UTC))
    accepted = answered = 0
    calls = TWO_PROCESS_SECONDS * 1000 // TWO_PROCESS_EVERY_MS
    handler, call = TWO_PROCESS_KINDS[kind]
    async with fresh_table(direct) as table:
        options = {"client_call_burst": DEFAULT_CALL_BURST, "client_call_rate": DEFAULT_CALL_RATE}
        stores = [ConnectionStore(make_settings(counted, table, **options), clock=clock) for _ in range(2)]
        try:
            await events.on_connected(stores[0], Invocation("connections", "connected", HUB, "c1", "ann"))
            await events.on_join(stores[0], _invocation("join", ROOM))
            start = clock.at = clock.at + timedelta(seconds=10)  # the bucket full again
            with table_proxy.counting() as requests:
                for step in range(calls):
                    clock.at = start + timedelta(milliseconds=TWO_PROCESS_EVERY_MS * step)
                    method, arguments = call(step)
                    sent = await handler(stores[step % 2], _invocation(method, *arguments))
                    if not sent or any(_is_refusal(message) for message in sent):
                        answered += bool(sent)
                    elif any(message.get("target") == "error" for message in sent):
                        raise AssertionError(f"spend: two processes, {kind}: {sent}")
                    else:
                        accepted += 1
                with table_proxy.recorder.lock:
                    failed = Counter(f"{op} {status}" for op, status in table_proxy.recorder.requests if status >= 400)
        finally:
            for store in stores:
                await store.close()
    bound = DEFAULT_CALL_BURST + DEFAULT_CALL_RATE * TWO_PROCESS_SECONDS
    return {
        "kind": kind,
        "processes": 2,
        "calls": calls,
        "seconds": TWO_PROCESS_SECONDS,
        "accepted": accepted,
        "answered": answered,
        "bound": bound,
        "allowed": math.floor(1.2 * bound),
        "table": {
            "total": sum(requests.values()),
            "by_operation": dict(sorted(requests.items())),
            "failed": dict(sorted(failed.items())),
        },
        "met": accepted <= 1.2 * bound,
    }


def _invocation(event: str, *arguments: Any) -> Invocation:
    return Invocation("messages", event, HUB, "c1", "ann", list(arguments))


def _is_refusal(message: dict[str, Any]) -> bool:
    arguments = message.get("arguments") or [{}]
    return isinstance(arguments[0], dict) and arguments[0].get("error") == TOO_MANY


# ---- the section -----------------------------------------------------------------------------------------------------


async def measure_spend(azurite: Azurite, plan: SpendPlan = FULL) -> dict[str, Any]:
    """Loop every kind of call with the budget off, then on, and the two-process loop; return runs and goals."""
    if azurite.queue_port is None:
        raise RuntimeError("the spend section needs Azurite's queue service")
    started = time.monotonic()
    names = list(_env("", "", "", budget=True))
    modes: dict[str, Any] = {}
    with (
        saved_settings(names),
        quiet("local", "aiohttp"),
        CountingProxy(azurite.port, classifier=classify) as table_proxy,
        CountingProxy(azurite.queue_port, classifier=classify_queue) as queue_proxy,
    ):
        for proxy in (table_proxy, queue_proxy):
            _without_nagle(proxy)
        storage = connection_string(table_proxy.port, queue_port=queue_proxy.port)
        meters = _Meters(table_proxy, queue_proxy)
        await use_app_settings(_env(storage, "placeholder", "Endpoint=http://127.0.0.1;AccessKey=x;", budget=True))
        async with running_stack() as stack:
            for mode in MODES:
                modes[mode] = await _mode(azurite, stack, meters, storage, plan, budget=mode == "on")
        await use_app_settings({})
        two = [await two_processes(azurite, table_proxy, kind) for kind in TWO_PROCESS_KINDS]
    spend = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": {
            **asdict(plan),
            "room": ROOM,
            "burst": DEFAULT_CALL_BURST,
            "rate": DEFAULT_CALL_RATE,
            "presence_audience": "scoped",
            "kinds": {kind.key: {"label": kind.label, "audience_is": kind.audience_is} for kind in KINDS},
        },
        "modes": modes,
        "two_processes": two,
        "duration_seconds": round(time.monotonic() - started, 1),
    }
    spend["goals"] = goals(spend)
    return spend


def goals(spend: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue, per kind and mode: measured, the bound, met."""
    plan, rows = spend["plan"], []
    burst, rate = plan["burst"], plan["rate"]
    for key in plan["kinds"]:
        off, on = spend["modes"]["off"]["runs"][key], spend["modes"]["on"]["runs"][key]
        for mode, run in (("off", off), ("on", on)):
            rows.append(
                _goal(key, mode, "billed", run["billed"], run["bound"], "≤ accepted x audience + refusals answered")
            )
        rows.append(
            _goal(
                key,
                "on",
                "accepted",
                on["accepted"],
                math.floor(burst + rate * on["elapsed_seconds"]),
                "≤ burst + rate x elapsed",
            )
        )
        rows.append(_goal(key, "on", "answered", on["answered"], math.ceil(on["elapsed_seconds"]) + 1, "≤ 1 a second"))
        # What the budget adds to the calls it lets through: the same requests a call (the budget rides on the read
        # every call makes), and one publish per 10 tokens spent (issue 31 item 2: at most one per 10 calls).
        per_call = off["table"]["total"] / off["accepted"]
        extra = math.ceil(on["accepted"] / PUBLISH_EVERY)
        rows.append(
            _goal(
                key,
                "on",
                "table",
                on["table"]["total"],
                math.ceil(on["accepted"] * per_call) + extra,
                f"≤ accepted x {per_call:.2f} (off's per call) + 1 per {PUBLISH_EVERY}",
            )
        )
    for two in spend["two_processes"]:
        rows.append(
            _goal(
                two["kind"], "2 processes", "accepted", two["accepted"], two["allowed"], "≤ 1.2 x (burst + rate x 60)"
            )
        )
    return rows


def _goal(kind: str, mode: str, what: str, measured: int, bound: int, goal: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "mode": mode,
        "what": what,
        "measured": measured,
        "bound": bound,
        "goal": goal,
        "met": measured <= bound,
    }


def missed(spend: dict[str, Any]) -> list[str]:
    """Return the goals missed, named."""
    return [
        f"{row['kind']} ({row['mode']}): {row['what']} {row['measured']} > {row['bound']}"
        for row in spend["goals"]
        if not row["met"]
    ]


# ---- the report's section --------------------------------------------------------------------------------------------


def spend_markdown(spend: dict[str, Any] | None, *, heading: str = "##") -> list[str]:
    """Render the section: per kind of call, budget off and on, what the loop cost; then the goals and how."""
    if not spend:
        return []
    plan, modes = spend["plan"], spend["modes"]
    snapshot = modes["on"]["audience"]["snapshot"]
    lines = [
        f"{heading} What one client may spend: a call budget per connection",
        "",
        f"One connection loops calls of each kind as fast as its WebSocket takes them, in a room of {plan['members']} "
        f"members (one connection each): {plan['off_calls']:,} of each with the budget off (`CLIENT_CALL_RATE=0`), "
        f"{plan['calls']:,} with it on (the defaults: burst {plan['burst']}, {plan['rate']} a second). *Refused*: "
        f"over the budget, answered (`{TOO_MANY}`, at most one a second) or silent. *Billed*: the emulator's billed "
        "messages (one per recipient connection per 2 KB); *bound*: accepted x the call's audience (below), plus one "
        "error per refusal answered. Table and queue requests on the wire (*failed*: answered 4xx); the app's queue "
        f"requests (none expected: grace off). Counted {spend['date']} ({spend['duration_seconds']:.0f} s; alone: "
        "`python -m bench.spend`).",
        "",
        "| call | budget | calls | accepted | refused (answered / silent) | billed | bound | table requests "
        "| per accepted call | queue requests | elapsed s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, kind in plan["kinds"].items():
        for mode in MODES:
            run = modes[mode]["runs"][key]
            refused = f"{run['refused']:,} ({run['answered']} / {run['silent']:,})" if run["refused"] else "0"
            table = run["table"]
            failed = _failed(table)
            lines.append(
                f"| {kind['label'] if mode == 'off' else ''} | {mode} | {run['calls']:,} | {run['accepted']:,} | "
                f"{refused} | {run['billed']:,} | {run['bound']:,} | {table['total']:,}"
                f"{f' (failed: {failed})' if failed else ''} | {table['total'] / max(run['accepted'], 1):.2f} | "
                f"{run['queue']['total']} | {run['elapsed_seconds']:.1f} |"
            )
    lines += [
        "",
        "The audience of an accepted call, in billed messages (the room's connections, the caller's among them; a "
        f"snapshot of the room bills {snapshot}):",
        "",
        *(
            f"- {kind['label']}: {modes['on']['runs'][key]['audience']}, {kind['audience_is']}."
            for key, kind in plan["kinds"].items()
        ),
        "",
        *_goal_lines(spend),
        "",
        "- In-process, the real path: the local SignalR emulator and the local host (the app's functions) served in "
        "the bench's process, the room's members WebSocket clients of the emulator. The caller's calls are "
        "`connection.send`s, which the emulator forwards upstream one at a time in order; the last is a blocking "
        "invocation, whose completion says every call has run and its messages are billed. Whether a call was "
        "accepted or refused (answered, or silent) is read from what its function set on its SignalR output, as the "
        "output binding sees it; the refusals answered agree with the errors the caller received.",
        f"- The room is seeded as joins leave it, {int(JOINED_BEFORE.total_seconds() // 60)} minutes before, so a "
        "member's join again is of long standing (rooms R5); each member then connects (the app's `connected` puts "
        "the connection in the room's group). Each kind has its own caller among the members, so each loop starts "
        f"with a full bucket. A snapshot of the room ({modes['on']['snapshot_listed']} members) is measured by a "
        "member's sync in the setup. `PRESENCE_AUDIENCE=scoped`, grace off, `ROOMS_OPEN=*`, the sweep never.",
        "",
    ]
    return lines


def _goal_lines(spend: dict[str, Any]) -> list[str]:
    def verdict(what: str, *, mode: str = "") -> str:
        failed = [
            f"{row['kind']} ({row['mode']}) {row['measured']} > {row['bound']}"
            for row in spend["goals"]
            if row["what"] == what and (not mode or row["mode"] == mode) and not row["met"]
        ]
        return "met" if not failed else f"**missed**: {'; '.join(failed)}"

    first = spend["two_processes"][0]
    loops = "; ".join(
        f"{two['kind']} {two['accepted']} accepted ({two['answered']} refusals answered, {two['table']['total']} table "
        "requests" + (f", failed: {_failed(two['table'])}" if two["table"].get("failed") else "") + ")"
        for two in spend["two_processes"]
    )
    return [
        "The issue's goals:",
        "",
        "- billed messages ≤ accepted calls x the call's audience (no message from a refused or no-op call; a refusal "
        f"answered is one error to the caller), budget off and on: {verdict('billed')}.",
        f"- accepted ≤ burst + rate x elapsed, one process: {verdict('accepted', mode='on')}. Across 2 processes "
        f"(two stores on one table, each its own memory; one connection's calls every {TWO_PROCESS_EVERY_MS} ms for "
        f"{first['seconds']} s of a moved clock, {first['calls']:,} in all, dealt round-robin), at most 1.2 x (burst "
        f"+ rate x {first['seconds']} = {first['bound']}) = {first['allowed']}: {loops}: "
        f"{verdict('accepted', mode='2 processes')}.",
        f"- refusals answered at most once a second: {verdict('answered')}.",
        "- the requests of the calls the budget lets through: those of the same calls without it (per accepted call, "
        f"as off), plus at most one publish (a merge on the connection's row) per {PUBLISH_EVERY} accepted calls: "
        f"{verdict('table')}.",
    ]


def _failed(table: dict[str, Any]) -> str:
    return ", ".join(f"{what} {n}" for what, n in table.get("failed", {}).items())


def spend_summary(spend: dict[str, Any] | None) -> list[str]:
    """The headline line of the section."""
    if not spend:
        return []
    plan, runs = spend["plan"], {mode: spend["modes"][mode]["runs"] for mode in MODES}

    def total(mode: str, what: str) -> int:
        return sum(run[what] if what != "table" else run["table"]["total"] for run in runs[mode].values())

    failed = missed(spend)
    kinds = len(plan["kinds"])
    return [
        f"- What one client may spend (a room of {plan['members']}, {kinds} kinds of call looped as fast as they go): "
        f"budget on, {total('on', 'accepted'):,} of {plan['calls'] * kinds:,} calls accepted, "
        f"{total('on', 'billed'):,} messages billed, {total('on', 'table'):,} table requests; off, all "
        f"{total('off', 'accepted'):,} of {plan['off_calls'] * kinds:,} accepted, {total('off', 'billed'):,} billed, "
        f"{total('off', 'table'):,} table requests; "
        + ("every goal met." if not failed else f"{len(failed)} goal(s) missed: {'; '.join(failed)}.")
    ]


# ---- alone: python -m bench.spend ------------------------------------------------------------------------------------


def write_alone(spend: dict[str, Any], out: Path, report: Path, *, merge: bool = True) -> None:
    """Write spend.json and spend.md into `out`; put the figures into the report in `report` if there is one (and
    `merge`)."""
    from bench.report import write_section_alone

    write_section_alone("spend", spend, spend_markdown(spend, heading="#"), out, report, merge=merge)


async def _measure_alone(plan: SpendPlan) -> dict[str, Any]:
    with running_azurite() as azurite:
        return await measure_spend(azurite, plan)


def main() -> None:
    """Parse the command line and run the section alone."""
    parser = section_arguments(
        "python -m bench.spend", __doc__, section="spend", smoke=f"{SMOKE.calls} calls of each kind"
    )
    arguments = parser.parse_args()
    quiet_logging()
    spend = asyncio.run(_measure_alone(SMOKE if arguments.smoke else FULL))
    if (to := destination(arguments, "spend")) is not None:
        write_alone(spend, to[0], arguments.report, merge=to[1])
    if failed := missed(spend):
        raise SystemExit(f"over the issue's goals: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
