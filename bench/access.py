"""Access: the table requests (and SignalR REST requests) of a join of an open, a granted, a policy-admitted and a
closed room, of a server's grant and revoke, and of an operator's disconnect-all, in one run (issue 30).

In-process, as the audiences section's requests part: the app's functions called as the host calls them (the
`join_room` and `leave_room` invocations; `room_member` PUT and DELETE and `disconnect_user` POST as real
`func.HttpRequest`s, their answers checked against the OpenAPI document), every table request counted on the wire
by the bench's proxy in front of Azurite (`bench/proxy.py`), the queue's too where a grace is on. SignalR Service is
the local emulator (`local/emulator`) served in this process: its REST surface checks each token and counts each
call by route, so the app's own client (`SignalRLiveness`) makes its real requests. The emulator holds no WebSocket
for these tabs (their rows come from `connected` events), so it answers a group addition 404 (unconfirmed: left to
the output binding, which the app allows) and a removal or a close 200 or 204: the counts do not depend on that.

Settings: the shipped defaults where they matter (`PRESENCE_AUDIENCE=scoped`, rooms closed but `ROOMS_OPEN`'s),
an app policy that admits `staff.*` to tokens with `role: staff` and leaves every other room to the settings, grace
off (as the round-trip table: each disconnect decides at once), then on for a second disconnect-all. Each user has
`TABS` tabs opened through the app's `connected` (so the refresh before a client's join is free, as on the instance
that served the connect) and rooms of their own (no other member's row in a snapshot). Every lifecycle runs for a
warm-up user first (the process has its table, queue and SignalR clients), then for the counted one.

Run alone: `python -m bench.access [--out DIR] [--report DIR]` (its own Azurite, about 15 s; writes access.json and
access.md into `--out`, default bench/results/access/, and puts the figures into the report in `--report`, default
bench/results/, when it has a latest.json: its section and headline line in latest.md, `access` in latest.json).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.storage.queue import TextBase64DecodePolicy
from azure.storage.queue.aio import QueueClient

from bench.alone import destination, quiet_logging, section_arguments
from bench.proxy import APP_QUEUE_OPERATIONS, CountingProxy, classify, classify_queue
from bench.workload import app_environment, fresh_table, use_app_settings
from local.emulator.server import REST_CALLS, EmulatorConfig, create_app
from mapping.functions import runtime
from mapping.presence.grace import Decision
from mapping.rooms.policy import AccessPolicy, Claims
from mapping.settings import GRACE_QUEUE
from testkit.azurite import Azurite, connection_string, running_azurite
from testkit.functions_host import FUNCTIONS, Out, http, http_request, invocation

logger = logging.getLogger("bench.access")

TABS = 3  # each user's open tabs
OPEN = "public.*"  # ROOMS_OPEN
GRACE_SECONDS = 1  # the second disconnect-all's grace: short, the decisions are waited for
WAIT_SECONDS = 30.0
ACCESS_KEY = "bench-access-emulator-key-0123456789abcdef"
READS = frozenset({"query", "point read"})
# The app settings this section sets beside those `use_app_settings` manages (MAPPING_*, AzureWebJobsStorage*).
_EXTRA_SETTINGS = ("ROOMS_OPEN", "PRESENCE_AUDIENCE", "PRESENCE_GRACE_SECONDS", "AzureSignalRConnectionString")


class StaffPolicy(AccessPolicy):
    """The app's policy here: `staff.*` rooms admit a token with the claim `role: staff`; other rooms, the settings."""

    async def may_join(self, user: str, room: str, claims: Claims) -> bool | None:
        """Admit staff to staff rooms; say nothing of any other room."""
        if room.startswith("staff."):
            return claims.get("role") == "staff"
        return None


# ---- what each counted event is compared with ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One counted event of the report: its key in the counts, what it is, and the floor it is held to."""

    key: str
    label: str
    floor: str | None = None  # the key of the event whose count is this one's floor, or None
    floor_total: int | None = None  # a fixed floor (total table requests) instead
    floor_writes: int | None = None  # and the writes it allows
    floor_queue: int | None = None  # the app's queue requests it allows (None: not held to any)
    why: str = ""  # what the floor is
    over_why: str = ""  # where ours is over the floor, why (from the code that makes the requests)
    goal: bool = False  # the issue's own requirement: over the floor is a miss (the smoke run fails)


ROWS = (
    Row("open_join", "join(room) of an open room (ROOMS_OPEN), a new room: today's join", why="the baseline"),
    Row("open_leave", "leave(room) of that room", why="the baseline of a revoke"),
    Row(
        "open_rejoin",
        "join(room) of the open room again, after the leave",
        floor="open_join",
        why="a join (the leave's flagged index row rewritten as a join's)",
    ),
    Row(
        "grant",
        "PUT /api/rooms/{room}/members/{user} (a closed room): granted and a member at once",
        floor="open_join",
        why="a join (the grant row rides in its transaction)",
    ),
    Row("granted_leave", "leave(room) of the granted room (the grant stays)", floor="open_leave", why="a leave"),
    Row(
        "granted_join",
        "join(room) of the granted room, after the leave (the grant found by the join's own read)",
        floor="open_join",
        why="today's join (an open room's; after a leave too: the open rejoin)",
        goal=True,
    ),
    Row(
        "policy_join",
        "join(room) of a closed room admitted by the app's AccessPolicy (the token's claims)",
        floor="open_join",
        why="a join (the policy is asked in process)",
    ),
    Row(
        "refused_join",
        "join(room) of a closed room: no grant, the policy silent (refused)",
        floor_total=1,
        floor_writes=0,
        why="1 read, no write",
        goal=True,
    ),
    Row(
        "revoke",
        "DELETE /api/rooms/{room}/members/{user} of the granted member",
        floor="granted_leave",
        why="a leave (the grant's deletion and the revocation ride in its transaction)",
    ),
    Row(
        "revoked_join",
        "join(room) after the revoke (refused)",
        floor_total=1,
        floor_writes=0,
        why="1 read, no write",
        goal=True,
    ),
    Row(
        "disconnect_all",
        f"POST /api/users/{{user}}/disconnect, {TABS} tabs, in 1 room, grace off",
        floor_total=4,
        why="1 read, 1 transaction (every tab's row deleted, the presence row), 1 roster copy per room (its index "
        "row read with the room's tally, then both written: tally T1)",
    ),
    Row(
        "disconnect_events",
        f"the service's {TABS} disconnected events that follow it (the rows gone), grace off",
        floor_total=TABS,
        floor_writes=0,
        why="1 read each, no write",
    ),
    Row(
        "grace_disconnect_all",
        f"POST /api/users/{{user}}/disconnect, {TABS} tabs, in 1 room, grace on ({GRACE_SECONDS} s)",
        floor_total=4,
        floor_queue=0,
        why="an operator's close is final, so no grace: as with the grace off, and nothing queued",
    ),
    Row(
        "grace_disconnect_events",
        f"the service's {TABS} disconnected events that follow it (the rows gone), grace on",
        floor_total=TABS,
        floor_queue=0,
        why="1 request each (the row's end stamp finds it gone), no decision queued",
    ),
)


def figures(counts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Put each counted event beside its floor: ours, the floor, and whether ours is within it."""
    rows: list[dict[str, Any]] = []
    for row in ROWS:
        counted = counts[row.key]
        table = counted["table"]
        floor: int | None = row.floor_total
        floor_writes = row.floor_writes
        if row.floor is not None:
            floor = counts[row.floor]["table"]["total"]
            floor_writes = counts[row.floor]["table"]["writes"]
        queue = counted.get("queue", {"total": 0})["total"]
        met = (
            (floor is None or table["total"] <= floor)
            and (floor_writes is None or table["writes"] <= floor_writes)
            and (row.floor_queue is None or queue <= row.floor_queue)
        )
        rows.append(
            {
                "key": row.key,
                "event": row.label,
                "table": table,
                "floor": floor,
                "floor_writes": floor_writes,
                "floor_queue": row.floor_queue,
                "floor_is": row.why,
                "over_why": row.over_why,
                "goal": row.goal,
                "met": met,
                "signalr": counted["signalr"],
                **({"queue": counted["queue"]} if "queue" in counted else {}),
                "output": counted["output"],
            }
        )
    return rows


# ---- the SignalR emulator in this process ----------------------------------------------------------------------------


@dataclass
class Emulator:
    """The local emulator served on 127.0.0.1: its connection string, and every REST call it answered by route."""

    port: int
    calls: Counter[str]

    @property
    def connection_string(self) -> str:
        """Return the AzureSignalRConnectionString that points the app here."""
        return f"Endpoint=http://127.0.0.1;Port={self.port};AccessKey={ACCESS_KEY};Version=1.0;"


@contextlib.asynccontextmanager
async def running_emulator() -> AsyncIterator[Emulator]:
    """Serve the emulator (REST and all) on a free loopback port until the block ends; it calls no upstream here."""
    app = create_app(
        EmulatorConfig(public_url="http://127.0.0.1", keys=[ACCESS_KEY], upstream_url="http://127.0.0.1:9")
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Emulator(int(runner.addresses[0][1]), app[REST_CALLS].by_route)
    finally:
        await runner.cleanup()


# ---- counting --------------------------------------------------------------------------------------------------------


def _table(counts: Counter[str]) -> dict[str, Any]:
    reads = sum(n for op, n in counts.items() if op in READS)
    total = sum(counts.values())
    return {"total": total, "reads": reads, "writes": total - reads, "by_operation": dict(sorted(counts.items()))}


def _plain(counts: Counter[str]) -> dict[str, Any]:
    return {"total": sum(counts.values()), "by_operation": dict(sorted(counts.items()))}


def _output(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What the function's SignalR output binding carries: group actions, and messages by target."""
    targets = Counter(str(m.get("target")) for m in messages if "action" not in m)
    return {"group_actions": sum("action" in m for m in messages), "messages": dict(sorted(targets.items()))}


@dataclass
class _Meter:
    """Counts what one event costs: table requests, SignalR REST requests, the app's queue requests."""

    table: CountingProxy
    queue: CountingProxy
    emulator: Emulator

    async def count(self, action: Callable[[], Awaitable[list[dict[str, Any]]]]) -> dict[str, Any]:
        """Run `action` (it returns the SignalR output's messages) and return its counts."""
        before = Counter(self.emulator.calls)
        with self.table.counting() as table, self.queue.counting() as queue:
            messages = await action()
        signalr = Counter(self.emulator.calls)
        signalr.subtract(before)
        app_queue = Counter({op: n for op, n in queue.items() if op in APP_QUEUE_OPERATIONS})
        return {
            "table": _table(table),
            "signalr": _plain(+signalr),
            "queue": _plain(app_queue),
            "output": _output(messages),
        }


# ---- the app's functions, their answers checked ----------------------------------------------------------------------


def _errors(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["arguments"][0] for m in messages if m.get("target") == "error"]


async def _signalr(function: str, payload: str) -> list[dict[str, Any]]:
    out = Out()
    await FUNCTIONS[function].get_user_function()(invocation=payload, signalr=out)
    return out.messages


async def _connect(user: str, tab: str) -> None:
    messages = await _signalr("connected", invocation("connected", connection_id=tab, user_id=user))
    if not any(m.get("action") == "add" for m in messages):
        raise AssertionError(f"connected {user}/{tab}: not mapped: {messages}")


async def _join(user: str, tab: str, room: str, *, admitted: bool = True, role: str | None = None) -> list[Any]:
    claims = {"role": role} if role else None
    payload = invocation("join", connection_id=tab, user_id=user, arguments=[room], claims=claims)
    messages = await _signalr("join_room", payload)
    errors = _errors(messages)
    if admitted:
        if errors or not any(m.get("target") == "presenceSync" for m in messages):
            raise AssertionError(f"join {user} {room}: not admitted: {messages}")
    elif len(messages) != 1 or [e.get("refused") for e in errors] != [True]:
        raise AssertionError(f"join {user} {room}: not refused with one error: {messages}")
    return messages


async def _leave(user: str, tab: str, room: str) -> list[Any]:
    messages = await _signalr("leave_room", invocation("leave", connection_id=tab, user_id=user, arguments=[room]))
    if _errors(messages):
        raise AssertionError(f"leave {user} {room}: {messages}")
    return messages


async def _room_member(method: str, room: str, user: str) -> list[Any]:
    out = Out()
    route = f"rooms/{room}/members/{user}"
    status, body, _ = await http(
        "room_member", http_request(method, route, route_params={"room": room, "user": user}), signalr=out
    )
    if (status, body.get("member")) != (200, method == "PUT"):
        raise AssertionError(f"{method} {route}: {status} {body}")
    return out.messages


async def _disconnect_user(user: str) -> list[Any]:
    out = Out()
    route = f"users/{user}/disconnect"
    status, body, _ = await http(
        "disconnect_user", http_request("POST", route, route_params={"user": user}), signalr=out
    )
    if (status, body.get("closed")) != (200, TABS):
        raise AssertionError(f"POST {route}: {status} {body}")
    return out.messages


async def _all_disconnected(user: str) -> list[Any]:
    """The service's disconnected event of each of the user's tabs, in turn (after the service closed them)."""
    messages: list[Any] = []
    for tab in _tabs(user):
        messages += await _signalr("disconnected", invocation("disconnected", connection_id=tab, user_id=user))
    return messages


# ---- the lifecycles --------------------------------------------------------------------------------------------------


def _tabs(user: str) -> list[str]:
    return [f"{user}-t{n}" for n in range(TABS)]


async def _open_tabs(user: str) -> list[str]:
    """Open the user's tabs through the app's `connected`; return them (the first is where client calls come from)."""
    for tab in _tabs(user):
        await _connect(user, tab)
    return _tabs(user)


async def _user(prefix: str, index: int) -> tuple[str, str]:
    """Open a user's tabs; return the user and the tab its client calls come from."""
    user = f"{prefix}{index}"
    return user, (await _open_tabs(user))[0]


async def _lifecycles(meter: _Meter, index: int) -> dict[str, dict[str, Any]]:
    """Every access event, grace off, for user `index` of each lifecycle; counted unless `index` is 0 (warm-up)."""
    results: dict[str, dict[str, Any]] = {}

    async def step(key: str, action: Callable[[], Awaitable[list[dict[str, Any]]]]) -> None:
        if index == 0:
            await action()
        else:
            results[key] = await meter.count(action)

    user, tab = await _user("open", index)
    room = f"public.room{index}"
    await step("open_join", lambda: _join(user, tab, room))
    await step("open_leave", lambda: _leave(user, tab, room))
    await step("open_rejoin", lambda: _join(user, tab, room))

    user, tab = await _user("granted", index)
    board = f"board{index}"
    await step("grant", lambda: _room_member("PUT", board, user))
    await step("granted_leave", lambda: _leave(user, tab, board))
    await step("granted_join", lambda: _join(user, tab, board))
    await step("revoke", lambda: _room_member("DELETE", board, user))
    await step("revoked_join", lambda: _join(user, tab, board, admitted=False))

    user, tab = await _user("staff", index)
    await step("policy_join", lambda: _join(user, tab, f"staff.room{index}", role="staff"))

    user, tab = await _user("stranger", index)
    await step("refused_join", lambda: _join(user, tab, f"vault{index}", admitted=False))

    user, tab = await _user("operated", index)
    await _join(user, tab, f"public.ops{index}")

    await step("disconnect_all", functools.partial(_disconnect_user, user))
    await step("disconnect_events", functools.partial(_all_disconnected, user))
    return results


async def _grace_lifecycle(meter: _Meter, direct: str) -> dict[str, dict[str, Any]]:
    """A disconnect-all with a grace on: the request, the service's disconnected events, then every decision they
    queued once due (taken off the queue itself, run as the queue trigger runs them)."""
    results: dict[str, dict[str, Any]] = {}
    run = uuid.uuid4().hex[:8]  # the queue is Azurite's, shared: this run's decisions are told apart by their user
    users = [f"graced{index}-{run}" for index in (0, 1)]
    queued = 0
    for index, user in enumerate(users):
        tabs = await _open_tabs(user)
        await _join(user, tabs[0], f"public.graced{index}")
        disconnect = await meter.count(functools.partial(_disconnect_user, user))
        events = await meter.count(functools.partial(_all_disconnected, user))
        queued += sum(counted["queue"]["by_operation"].get("put message", 0) for counted in (disconnect, events))
        if index:
            results.update(grace_disconnect_all=disconnect, grace_disconnect_events=events)
    if not results["grace_disconnect_all"]["output"]["messages"].get("presence"):
        raise AssertionError(f"grace disconnect-all: nobody announced offline: {results['grace_disconnect_all']}")
    if queued:  # none is expected (the floor says so); taken off the queue so no later section meets them
        await asyncio.sleep(GRACE_SECONDS + 0.5)
        bodies = await _take_decisions(direct, set(users), queued)
        for body in [body for user in users for body in bodies[user]]:
            await _decide(body)
    return results


async def _take_decisions(direct: str, users: set[str], expected: int) -> dict[str, list[str]]:
    """Take the `expected` grace decisions of `users` off the queue (due by now), deleting each, so none is left for a
    later section; any other message is made visible again at once. Return their bodies by user."""
    bodies: dict[str, list[str]] = {user: [] for user in users}
    deadline = time.monotonic() + WAIT_SECONDS
    async with QueueClient.from_connection_string(
        direct, GRACE_QUEUE, message_decode_policy=TextBase64DecodePolicy()
    ) as queue:
        while sum(map(len, bodies.values())) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"access: {expected} grace decisions expected, {bodies} taken")
            async for message in queue.receive_messages(max_messages=32, visibility_timeout=30):
                body = str(message.content)
                user = Decision.from_body(body).user
                if user in bodies:
                    bodies[user].append(body)
                    await queue.delete_message(message)
                else:
                    await queue.update_message(message, visibility_timeout=0)
            await asyncio.sleep(0.1)
    return bodies


async def _decide(body: str) -> list[dict[str, Any]]:
    out = Out()
    await FUNCTIONS["presence_grace"].get_user_function()(decision=func.QueueMessage(body=body.encode()), signalr=out)
    return out.messages


# ---- the section -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _extra_settings() -> Iterator[None]:
    """Put back, afterwards, the app settings this section sets that `use_app_settings` leaves alone, and the policy."""
    saved = {name: os.environ.get(name) for name in _EXTRA_SETTINGS}
    policy = runtime.access()
    try:
        yield
    finally:
        runtime.use_access(policy)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _env(storage: str, table: str, signalr: str, *, grace: int) -> dict[str, str]:
    return {
        **app_environment(storage, table),
        "AzureWebJobsStorage": storage,  # the grace's queue
        "PRESENCE_AUDIENCE": "scoped",
        "PRESENCE_GRACE_SECONDS": str(grace),
        "ROOMS_OPEN": OPEN,
        "AzureSignalRConnectionString": signalr,
    }


async def measure_access(azurite: Azurite) -> dict[str, Any]:
    """Count every access event against `azurite` (its table and queue services); return the counts and the rows."""
    if azurite.queue_port is None:
        raise RuntimeError("the access section needs Azurite's queue service")
    started = time.monotonic()
    direct = azurite.connection_string
    counts: dict[str, dict[str, Any]] = {}
    with (
        _extra_settings(),
        CountingProxy(azurite.port, classifier=classify) as table_proxy,
        CountingProxy(azurite.queue_port, classifier=classify_queue) as queue_proxy,
    ):
        storage = connection_string(table_proxy.port, queue_port=queue_proxy.port)
        runtime.use_access(StaffPolicy())
        async with running_emulator() as emulator, fresh_table(direct) as table:
            meter = _Meter(table_proxy, queue_proxy, emulator)
            try:
                await use_app_settings(_env(storage, table, emulator.connection_string, grace=0))
                for index in (0, 1):
                    counts.update(await _lifecycles(meter, index))
                await use_app_settings(_env(storage, table, emulator.connection_string, grace=GRACE_SECONDS))
                counts.update(await _grace_lifecycle(meter, direct))
            finally:
                await use_app_settings({})
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": {"tabs": TABS, "rooms_open": OPEN, "grace_seconds": GRACE_SECONDS, "presence_audience": "scoped"},
        "counts": counts,
        "figures": figures(counts),
        "duration_seconds": round(time.monotonic() - started, 1),
    }


def missed(access: dict[str, Any]) -> list[str]:
    """Return the events over the floor the issue holds them to (a granted join, a refused join)."""
    return [row["event"] for row in access["figures"] if row["goal"] and not row["met"]]


# ---- alone: python -m bench.access -----------------------------------------------------------------------------------


def write_alone(access: dict[str, Any], out: Path, report: Path) -> None:
    """Write access.json and access.md into `out`; put the figures into the report in `report` if there is one."""
    from bench.report import access_markdown, write_section_alone

    write_section_alone("access", access, access_markdown(access, heading="#"), out, report)


async def _measure_alone() -> dict[str, Any]:
    with running_azurite() as azurite:
        return await measure_access(azurite)


def main() -> None:
    """Parse the command line and run the section alone."""
    arguments = section_arguments("python -m bench.access", __doc__, section="access").parse_args()
    quiet_logging()
    access = asyncio.run(_measure_alone())
    if (to := destination(arguments, "access")) is not None:
        write_alone(access, to[0], arguments.report)
    for row in access["figures"]:
        logger.info(
            "%-4s %3d table (floor %s)  %s",
            "ok" if row["met"] else "OVER",
            row["table"]["total"],
            row["floor"],
            row["event"],
        )
    if over := missed(access):
        raise SystemExit(f"over the issue's floor: {'; '.join(over)}")


if __name__ == "__main__":
    main()
