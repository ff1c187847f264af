"""Audiences and grace: who hears a presence change, billed as Azure bills it, and what a reload, a last
disconnect, its grace decision, a big room's snapshot and a change of a user in R rooms cost in requests.

Two parts, both against the bench's Azurite, every table and queue request counted on the wire by a proxy
(`bench/proxy.py`):

- **fan-out**, on the real system: the SignalR emulator and the local host as processes
  (`testkit/local_stack.py`), `online` light Python clients (`testkit/hub_client.py`) connected through the
  emulator, each a user of its own. The subject (one tab) is in two rooms of ten members and two other
  connections watch it. Its `setStatus`, its last disconnect (announced when the grace decision runs) and a page
  reload within the grace are measured in billed messages (the emulator's `/admin/messages`: one per recipient
  connection) and in table and queue requests; then the host is restarted with `PRESENCE_AUDIENCE=hub` and the
  change and the disconnect are measured again, for comparison.
- **requests**, in-process (the app's functions called as the host calls them): a change of a user in R rooms
  (`setStatus`, the last disconnect and its grace decision), and a join into a 1,000-member room.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import aiohttp
import azure.functions as func

from bench.alone import destination, quiet_logging, section_arguments
from bench.proxy import APP_QUEUE_OPERATIONS, CountingProxy, classify, storage_proxies
from bench.workload import TTL, fresh_table, use_app_settings
from mapping.keys import ROOM_PREFIX, user_key
from mapping.presence.grace import Decision
from mapping.presence.rows import Membership
from mapping.presence.store import ConnectionStore
from mapping.rooms.index import index_row
from mapping.rooms.tally import Tally
from mapping.settings import Settings, StorageConnection
from mapping.storage.table import MAX_BATCH, upsert
from testkit.azurite import Azurite, connection_string, running_azurite
from testkit.emulator_billing import billed_messages
from testkit.functions_host import FUNCTIONS, Out, invocation
from testkit.hub_client import HubClient
from testkit.local_stack import LocalStack, running_local_stack

logger = logging.getLogger("bench.audience")

GRACE_SECONDS = 2  # the stack's grace: long enough for a reload, short enough to wait for its decision
INPROCESS_GRACE_SECONDS = 1
NEVER = "0 0 0 1 1 *"  # the sweep's schedule: once a year, never within a run
SUBJECT = "subject"
STATUS = "busy"
SETTLE_SECONDS = 0.6  # billed counts unchanged this long: the fan-out is over
WAIT_SECONDS = 30.0
OPEN_AT_ONCE = 16


@dataclass(frozen=True)
class AudiencePlan:
    """The section's sizes: connections online, the subject's rooms, their size, its watchers; the big room; R."""

    online: int
    rooms: int = 2
    room_size: int = 10
    watchers: int = 2
    big_room: int = 1000
    room_counts: tuple[int, ...] = (0, 2, 10)

    @property
    def audience(self) -> int:
        """The connections that hear the subject's change (scoped): its rooms' members, its watchers, its own tab."""
        return self.rooms * self.room_size + self.watchers + 1


# ---- the figures and their goals --------------------------------------------------------------------------------


def _figure(key: str, label: str, measured: int, bound: int | None, goal: str, **detail: Any) -> dict[str, Any]:
    return {
        "key": key,
        "figure": label,
        "measured": measured,
        "bound": bound,
        "goal": goal,
        "met": bound is None or measured <= bound,
        "detail": detail,
    }


def _at_most(
    key: str, label: str, counted: dict[str, Any], bound: int, *, kind: str = "table", goal: str = "", **detail: Any
) -> dict[str, Any]:
    """Return the row of a count (`counted`, with its `total`) of at most `bound` (goal: `≤ bound` by default)."""
    return _figure(key, label, counted["total"], bound, goal or f"≤ {bound}", **{kind: counted}, **detail)


def figures(fanout: dict[str, Any], requests: dict[str, Any], plan: AudiencePlan) -> list[dict[str, Any]]:
    """Put each measured figure beside its goal (from the issue): one row each, `met` when within its bound."""
    return [*_fanout_figures(fanout, plan), *_grace_figures(fanout, requests), *_change_figures(requests)]


def _fanout_figures(fanout: dict[str, Any], plan: AudiencePlan) -> list[dict[str, Any]]:
    """Return the presence messages per change, for each audience mode and event."""
    rows: list[dict[str, Any]] = []
    where = f"{fanout['online']:,} connections online, 1 tab in {plan.rooms} rooms of {plan.room_size}, "
    where += f"{plan.watchers} watchers"
    audience = f"≤ audience ({plan.audience}; the issue: ≤ 25), not {fanout['online']:,}"
    for mode, goal in (("scoped", audience), ("hub", "for comparison: every connection")):
        bound = plan.audience if mode == "scoped" else None
        for event, label in (("set_status", "setStatus"), ("last_disconnect", "last disconnect")):
            run = fanout[mode][event]
            rows.append(
                _figure(
                    f"fanout_{mode}_{event}",
                    f"presence messages per change, {label}, PRESENCE_AUDIENCE={mode} ({where})",
                    run["billed_presence"],
                    bound,
                    goal,
                    received=run["received_presence"],
                    billed_total=run["billed_total"],
                    by_group=run["by_group"],
                )
            )
    return rows


def _grace_figures(fanout: dict[str, Any], requests: dict[str, Any]) -> list[dict[str, Any]]:
    """Return what a page reload, a last disconnect, the grace decision and a room snapshot cost."""
    reload = fanout["scoped"]["reload"]
    r0 = requests["changes"]["0"]
    snapshot = requests["snapshot"]
    return [
        _figure(
            "reload_messages",
            f"page reload within the grace ({GRACE_SECONDS} s): presence messages",
            reload["billed_presence"],
            0,
            "0",
            received=reload["received_presence"],
        ),
        _at_most(
            "reload_table_requests",
            "page reload within the grace: table requests in all (disconnect, connect, the decision)",
            reload["table"],
            5,
        ),
        _at_most(
            "reload_queue_requests",
            "page reload within the grace: the app's queue requests in all",
            reload["app_queue"],
            1,
            kind="queue",
            trigger_queue=reload["trigger_queue"],
        ),
        _at_most(
            "last_disconnect_table_requests",
            "last disconnect (grace on, in 0 rooms): table requests",
            r0["disconnect"]["table"],
            2,
        ),
        _at_most(
            "last_disconnect_queue_requests",
            "last disconnect (grace on): queue requests",
            r0["disconnect"]["queue"],
            1,
            kind="queue",
        ),
        _at_most(
            "grace_decision_requests", "the grace decision (in 0 rooms): table requests", r0["decision"]["table"], 2
        ),
        _figure(
            "snapshot_requests",
            f"snapshot of a {snapshot['members']:,}-member room on join: table requests (the join's own beside)",
            snapshot["snapshot"],
            10,
            "≤ 10",
            join_total=snapshot["join"]["total"],
            join=snapshot["join"],
        ),
    ]


def _change_figures(requests: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the table requests of a user's change, for each count of rooms R the user is in."""
    rows: list[dict[str, Any]] = []
    for rooms, counted in requests["changes"].items():
        bound = 3 + 2 * int(rooms)  # a copy per room: the row and the room's tally read together, then written
        for event, what in (("set_status", "setStatus"), ("decision", "grace decision (offline)")):
            label = f"a change of a user in R = {rooms} rooms, {what}: table requests"
            goal = f"≤ 3 + 2R = {bound}"
            rows.append(_at_most(f"change_r{rooms}_{event}", label, counted[event]["table"], bound, goal=goal))
    return rows


async def measure_audiences(azurite: Azurite, plan: AudiencePlan) -> dict[str, Any]:
    """Measure the whole section; return the plan, the raw runs and the figures beside their goals."""
    started = time.monotonic()
    requests = await count_requests(azurite, plan)
    logger.info("audiences: in-process requests counted in %.0f s", time.monotonic() - started)
    fanout = await measure_fanout(azurite, plan)
    return {
        "plan": {**asdict(plan), "audience": plan.audience, "grace_seconds": GRACE_SECONDS},
        "fanout": fanout,
        "requests": requests,
        "figures": figures(fanout, requests, plan),
        "duration_seconds": round(time.monotonic() - started, 1),
    }


# ---- counting through the proxies -----------------------------------------------------------------------------


def _counted(counts: Counter[str]) -> dict[str, Any]:
    return {"total": sum(counts.values()), "by_operation": dict(sorted(counts.items()))}


def _app_queue(counts: Counter[str]) -> Counter[str]:
    return Counter({op: n for op, n in counts.items() if op in APP_QUEUE_OPERATIONS})


def _trigger_queue(counts: Counter[str]) -> Counter[str]:
    return Counter({op: n for op, n in counts.items() if op not in APP_QUEUE_OPERATIONS})


def classify_rooms(method: str, path: str) -> str:
    """Name a table request as `classify` does, telling a page of a room's member index (a snapshot) and a read of
    one member's index row with the room's tally apart."""
    operation = classify(method, path)
    filtered = unquote(unquote(path))
    if operation == "query" and f"'{ROOM_PREFIX}" in filtered:
        return (
            "query (a member's index row and the tally)" if "RowKey eq" in filtered else "query (a room's member index)"
        )
    return operation


async def _until(check: Callable[[], bool | Awaitable[bool]], what: str, *, within: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"audiences: timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---- in-process: changes of a user in R rooms, a big room's snapshot ------------------------------------------------


async def count_requests(azurite: Azurite, plan: AudiencePlan) -> dict[str, Any]:
    """Count, through the app's functions in this process, a change of a user in R rooms and a big room's join."""
    direct = azurite.connection_string
    changes: dict[str, Any] = {}
    with storage_proxies(azurite.port, azurite.queue_port, classifier=classify_rooms) as (table_proxy, queue_proxy):
        env = _env(connection_string(table_proxy.port, queue_port=queue_proxy.port), grace=INPROCESS_GRACE_SECONDS)
        for rooms in plan.room_counts:
            async with fresh_table(direct) as table:
                await use_app_settings({**env, "MAPPING_TABLE": table})
                try:
                    changes[str(rooms)] = await _count_change(table_proxy, queue_proxy, rooms)
                finally:
                    await use_app_settings({})
        async with fresh_table(direct) as table:
            await use_app_settings({**env, "MAPPING_TABLE": table})
            try:
                snapshot = await _count_big_join(direct, table, table_proxy, plan.big_room)
            finally:
                await use_app_settings({})
    return {"changes": changes, "snapshot": snapshot}


def _env(storage: str, *, grace: int, audience: str = "scoped") -> dict[str, str]:
    return {
        "MAPPING_STORAGE": storage,
        "AzureWebJobsStorage": storage,  # the grace queue
        "MAPPING_TTL_SECONDS": str(int(TTL.total_seconds())),
        "SIGNALR_HUB": "chat",
        "PRESENCE_EVENTS": "true",
        "PRESENCE_AUDIENCE": audience,
        "PRESENCE_GRACE_SECONDS": str(grace),
        "SWEEP_SCHEDULE": NEVER,
        "ROOMS_OPEN": "*",  # open rooms, and watchers who share none with the watched: as measured before issue 30
        "PRESENCE_WATCH": "anyone",
    }


async def _function(name: str, payload: str) -> Out:
    out = Out()
    await FUNCTIONS[name].get_user_function()(invocation=payload, signalr=out)
    if any(message.get("target") == "error" for message in out.messages):
        raise AssertionError(f"{name}: answered an error: {out.value}")
    return out


async def _count_change(table_proxy: CountingProxy, queue_proxy: CountingProxy, rooms: int) -> dict[str, Any]:
    """One user in `rooms` rooms (one tab): its setStatus, its last disconnect, the grace decision; after a warm-up
    user doing the same (the process has its clients, the table and the queue exist)."""
    results: dict[str, Any] = {}
    users = [f"r{rooms}-u{index}" for index in (0, 1)]
    for user in users:
        await _function("connected", invocation("connected", connection_id=f"{user}-c", user_id=user))
        for room in range(rooms):
            await _function(
                "join_room", invocation("join", connection_id=f"{user}-c", user_id=user, arguments=[f"r{room}"])
            )

    async def counted(index: int, action: Callable[[], Awaitable[object]]) -> dict[str, Any]:
        if index == 0:
            await action()
            return {}
        with table_proxy.counting() as table, queue_proxy.counting() as queue:
            await action()
        return {"table": _counted(table), "queue": _counted(_app_queue(queue))}

    for index, user in enumerate(users):
        connection = f"{user}-c"
        status = invocation("setStatus", connection_id=connection, user_id=user, arguments=[STATUS])
        set_status = await counted(index, functools.partial(_function, "set_status", status))
        gone = invocation("disconnected", connection_id=connection, user_id=user)
        disconnect = await counted(index, functools.partial(_function, "disconnected", gone))
        if index:
            results.update(set_status=set_status, disconnect=disconnect)
    await asyncio.sleep(INPROCESS_GRACE_SECONDS + 0.2)
    for index, user in enumerate(users):
        body = Decision(user, datetime.now(UTC)).to_body()  # what the disconnect enqueued, now due
        out = Out()

        async def decide(body: str = body, out: Out = out) -> None:
            await FUNCTIONS["presence_grace"].get_user_function()(
                decision=func.QueueMessage(body=body.encode()), signalr=out
            )

        decision = await counted(index, decide)
        offline = [m for m in out.messages if m.get("target") == "presence" and m["arguments"][0]["online"] is False]
        if len(offline) != 1 + rooms:
            raise AssertionError(f"grace decision in {rooms} rooms: unexpected output {out.value}")
        if index:
            results["decision"] = decision
    return results


async def _count_big_join(direct: str, table: str, table_proxy: CountingProxy, members: int) -> dict[str, Any]:
    """A user (one tab) joins a room of `members` members: the join's requests, and those of its snapshot."""
    store = ConnectionStore(Settings(StorageConnection(connection_string=direct), table_name=table, ttl=TTL))
    try:
        now = datetime.now(UTC)
        rows = [
            {**index_row(Membership("arena", now), user_key(f"m{n:04}"), f"m{n:04}"), "Pending": False}
            for n in range(members)
        ]
        await asyncio.gather(
            *(
                store.table.transact([upsert(row) for row in rows[i : i + MAX_BATCH]], action="seed")
                for i in range(0, len(rows), MAX_BATCH)
            )
        )
        # The room's tally as the app keeps it (T1): its members, none online (the seeded rows copy no pair).
        await store.table.write(upsert(Tally(members, 0, 1).to_row("arena")), action="seed")
    finally:
        await store.close()
    for user in ("warm", "joiner"):
        await _function("connected", invocation("connected", connection_id=f"{user}-c", user_id=user))
    await _function("join_room", invocation("join", connection_id="warm-c", user_id="warm", arguments=["warmup"]))
    payload = invocation("join", connection_id="joiner-c", user_id="joiner", arguments=["arena"])
    with table_proxy.counting() as counts:
        out = await _function("join_room", payload)
    pages = [m["arguments"][0] for m in out.messages if m.get("target") == "presenceSync"]
    listed = sum(len(page["users"]) for page in pages)
    if listed != members + 1:
        raise AssertionError(f"the snapshot listed {listed} members, not {members + 1}")
    snapshot = sum(n for op, n in counts.items() if op == "query (a room's member index)")
    return {"members": members, "listed": listed, "join": _counted(counts), "snapshot": snapshot}


# ---- the real system: emulator, local host, SignalR clients -------------------------------------------------------


@dataclass
class _Crowd:
    """The connected clients: the subject's tab, its rooms' members, its watchers, everyone else."""

    subject: HubClient
    members: list[HubClient]
    watchers: list[HubClient]
    others: list[HubClient]
    witnesses: list[HubClient]  # one connection in each group a change of the subject goes to (scoped or hub)
    retired: int = 0  # presence messages heard by the subject's tabs closed since

    def replace_subject(self, tab: HubClient) -> None:
        """The subject's new tab takes the closed one's place (what the closed one heard still counts)."""
        self.retired += self.subject.received["presence"]
        self.subject = tab

    @property
    def everyone(self) -> list[HubClient]:
        return [self.subject, *self.members, *self.watchers, *self.others]

    def presence_received(self) -> int:
        return self.retired + sum(client.received["presence"] for client in self.everyone)

    async def heard(self, action: Callable[[], Awaitable[None]], what: str, *, within: float = WAIT_SECONDS) -> None:
        """Run `action`, then wait until every witness has heard one more presence message (every group's send
        is then done, and billed)."""
        before = [client.received["presence"] for client in self.witnesses]
        await action()
        await _until(
            lambda: all(c.received["presence"] > n for c, n in zip(self.witnesses, before, strict=True)),
            what,
            within=within,
        )


async def measure_fanout(azurite: Azurite, plan: AudiencePlan) -> dict[str, Any]:
    """Open `plan.online` connections through the emulator and measure the subject's changes, scoped then hub."""
    others = plan.online - 1 - plan.rooms * (plan.room_size - 1) - plan.watchers
    if others < 0:
        raise ValueError(f"{plan.online} connections cannot hold the audience of {plan.audience}")
    with storage_proxies(azurite.port, azurite.queue_port, classifier=classify_rooms) as (table_proxy, queue_proxy):
        storage = connection_string(table_proxy.port, queue_port=queue_proxy.port)
        settings = {
            **_env(storage, grace=GRACE_SECONDS),
            "MAPPING_TABLE": f"aud{uuid.uuid4().hex[:16]}",
        }
        with running_local_stack(settings, client_timeout=3600, keepalive=3600, log_level="WARNING") as stack:
            connector = aiohttp.TCPConnector(limit=0)
            session = aiohttp.ClientSession(connector=connector)
            try:
                started = time.monotonic()
                crowd = await _crowd(session, stack, plan, others)
                opened = time.monotonic() - started
                logger.info("audiences: %d connections open in %.0f s", plan.online, opened)
                meter = _Meter(stack, crowd, session, table_proxy, queue_proxy)
                await meter.warm_up()
                scoped = {
                    "set_status": await meter.change(lambda: crowd.subject.send("setStatus", STATUS)),
                    "last_disconnect": await meter.last_disconnect(),
                }
                await meter.reconnect()
                scoped["reload"] = await meter.reload()
                stack.restart_host(PRESENCE_AUDIENCE="hub")
                await meter.warm_up()
                hub = {
                    "set_status": await meter.change(lambda: crowd.subject.send("setStatus", "away")),
                    "last_disconnect": await meter.last_disconnect(),
                }
            except Exception:
                logger.error("audiences: the stack's logs:\n%s", stack.log_tail())
                raise
            finally:
                stack.stop()  # first: the clients' closing then reaches no host
                await session.close()
    return {"online": plan.online, "open_seconds": round(opened, 1), "scoped": scoped, "hub": hub}


async def _crowd(session: aiohttp.ClientSession, stack: LocalStack, plan: AudiencePlan, others: int) -> _Crowd:
    slots = asyncio.Semaphore(OPEN_AT_ONCE)

    async def open_(user: str) -> HubClient:
        async with slots:
            return await HubClient.open(
                session, stack.emulator_url, hub=stack.hub, user=user, access_key=stack.access_key
            )

    rooms = [f"room-{chr(ord('a') + n)}" for n in range(plan.rooms)]
    member_users = [(f"{room}-m{n}", room) for room in rooms for n in range(1, plan.room_size)]
    subject, *clients = await asyncio.gather(
        open_(SUBJECT),
        *(open_(user) for user, _room in member_users),
        *(open_(f"watcher-{n}") for n in range(plan.watchers)),
        *(open_(f"online-{n}") for n in range(others)),
    )
    members = clients[: len(member_users)]
    watchers = clients[len(member_users) : len(member_users) + plan.watchers]
    witnesses = [*watchers[:1], *(members[n * (plan.room_size - 1)] for n in range(plan.rooms))]
    crowd = _Crowd(subject, members, watchers, clients[len(member_users) + plan.watchers :], witnesses)
    for room in rooms:
        await subject.send("join", room)
    for client, (_user, room) in zip(members, member_users, strict=True):
        await client.send("join", room)
    for client in watchers:
        await client.send("watch", [SUBJECT])
    asked = [subject, *members, *watchers]
    await _until(
        lambda: all(c.received["presenceSync"] >= (plan.rooms if c is subject else 1) for c in asked),
        "every join's and watch's snapshot",
        within=120,
    )
    await _settled(stack)
    return crowd


async def _settled(stack: LocalStack) -> dict[str, Any]:
    """Wait until the billed count stays unchanged for SETTLE_SECONDS; return it."""
    last = await billed_messages(stack.emulator_url)
    quiet_since = time.monotonic()
    deadline = quiet_since + WAIT_SECONDS
    while time.monotonic() - quiet_since < SETTLE_SECONDS:
        if time.monotonic() > deadline:
            raise TimeoutError("audiences: the billed messages kept changing")
        await asyncio.sleep(0.1)
        now = await billed_messages(stack.emulator_url)
        if now["total"] != last["total"]:
            last, quiet_since = now, time.monotonic()
    return last


class _Meter:
    """Runs one event of the subject and reports what it cost: billed messages, received messages, requests."""

    def __init__(
        self,
        stack: LocalStack,
        crowd: _Crowd,
        session: aiohttp.ClientSession,
        table: CountingProxy,
        queue: CountingProxy,
    ) -> None:
        self.stack, self.crowd, self.session, self.table, self.queue = stack, crowd, session, table, queue

    async def _open(self, user: str) -> HubClient:
        stack = self.stack
        return await HubClient.open(
            self.session, stack.emulator_url, hub=stack.hub, user=user, access_key=stack.access_key
        )

    async def _open_subject(self) -> None:
        self.crowd.replace_subject(await self._open(SUBJECT))

    async def warm_up(self) -> None:
        """A throwaway user connects and disconnects, and its decision runs: the host process has created its
        clients, the table and the queue before anything is counted (as any earlier event would)."""
        client = await self._open(f"warm-up-{uuid.uuid4().hex[:6]}")
        with self.queue.counting():
            await client.close()
            await _until(lambda: self.queue.recorder.seen("delete message") >= 1, "the warm-up's decision", within=60)
        await _settled(self.stack)

    @contextlib.asynccontextmanager
    async def _window(self) -> AsyncIterator[dict[str, Any]]:
        await _settled(self.stack)
        await billed_messages(self.stack.emulator_url, reset=True)
        before = self.crowd.presence_received()
        result: dict[str, Any] = {}
        with self.table.counting() as table, self.queue.counting() as queue:
            yield result
            billed = await _settled(self.stack)
        result.update(
            billed_presence=billed["byTarget"].get("presence", 0),
            billed_total=billed["total"],
            by_group=billed["byGroup"],
            received_presence=self.crowd.presence_received() - before,
            table=_counted(table),
            app_queue=_counted(_app_queue(queue)),
            trigger_queue=_counted(_trigger_queue(queue)),
        )

    async def change(self, send: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        """The subject's tab sends something that changes its presence (a setStatus)."""
        async with self._window() as result:
            await self.crowd.heard(send, "the change to reach its audience")
        return result

    async def last_disconnect(self) -> dict[str, Any]:
        """The subject's last tab closes; the grace decision announces it offline."""
        async with self._window() as result:

            async def close() -> None:
                await self.crowd.subject.close()
                await _until(lambda: self.queue.recorder.seen("put message") >= 1, "the disconnect's decision enqueued")

            await self.crowd.heard(close, "the grace decision's offline", within=60)
            await _until(lambda: self.queue.recorder.seen("delete message") >= 1, "the decision's message deleted")
        return result

    async def reconnect(self) -> None:
        """The subject opens a tab again (online: not measured)."""
        await self._open_subject()

    async def reload(self) -> dict[str, Any]:
        """The subject's only tab reloads: closes, and opens again within the grace; then the decision finds nothing."""
        async with self._window() as result:
            await self.crowd.subject.close()
            await _until(lambda: self.queue.recorder.seen("put message") >= 1, "the disconnect's decision enqueued")
            await self._open_subject()
            await _until(lambda: self.queue.recorder.seen("delete message") >= 1, "the grace decision", within=60)
        return result


# ---- alone: python -m bench.audience ---------------------------------------------------------------------------------


async def _measure_alone(plan: AudiencePlan) -> dict[str, Any]:
    with running_azurite() as azurite:
        return await measure_audiences(azurite, plan)


def main() -> None:
    """Measure the section alone, write audiences.json and .md, and put the figures into the last report."""
    from bench.report import audience_section, write_section_alone

    parser = section_arguments("python -m bench.audience", __doc__, section="audiences")
    parser.add_argument("--online", type=int, default=1000, help="connections online in the fan-out")
    arguments = parser.parse_args()
    quiet_logging()
    audiences = asyncio.run(_measure_alone(AudiencePlan(online=arguments.online)))
    if (to := destination(arguments, "audiences")) is not None:
        out, merge = to
        write_section_alone("audiences", audiences, audience_section(audiences), out, arguments.report, merge=merge)
    over = [row["figure"] for row in audiences["figures"] if row["bound"] is not None and not row["met"]]
    for row in audiences["figures"]:
        logger.info(
            "%-4s %s: %s (%s)", "OVER" if row["figure"] in over else "ok", row["figure"], row["measured"], row["goal"]
        )
    if over:
        raise SystemExit(f"over the issue's goals: {'; '.join(over)}")


if __name__ == "__main__":
    main()
