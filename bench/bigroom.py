"""Rooms of 10,000 (issue 33): what 1,000 member changes spread over 60 s cost a room of 10,000 members, each member's
change sent to the room as it happens (unbatched) and coalesced into `presenceBatch` messages (batched), in billed
messages, table and queue requests, and the time from a change to its delivery; and a join's snapshot of the room.

The real system: Azurite behind the bench's counting proxies (`bench/proxy.py`: every table and queue request counted
on the wire), the SignalR emulator and the local host as processes (`testkit/local_stack.py`). The room `arena` has
`plan.members` members: `plan.actors` real clients (`testkit/hub_client.py`, each a user of its own) and one observer
join it through the hub, and the rest are members seeded into the table (index rows and the room's tally, as joins
leave them) with as many simulated connections in the room's group (the emulator's `PUT
/admin/hubs/{hub}/groups/{group}/simulated`): each send to the room is billed for every member's connection, as Azure
bills it, without 10,000 sockets. The actors then make `plan.changes` changes at an even pace over `plan.seconds`,
actor after actor, each a `setStatus` to a value of its own (`s<n>`), so every call is a change of presence.

- **billed**: the emulator's `/admin/messages` for the room's group (`byGroup`), from the first change until every
  change was delivered and the counts stood still; per change, and unbatched over batched (the goal: 20x fewer at
  10,000 members).
- **requests**: the table and queue requests of the same window, per change, by operation (the queue's polls by the
  host's queue trigger are counted too: they are there batched or not).
- **delivery**: for each change, the time from the actor's send to the observer's first message stating it or a later
  change of the same actor (a batch states each member's latest change only), p50 and max.
- **join snapshot**: a late joiner's `join` of the room: its table requests and the `presenceSync` pages it received.

Settings: the app's defaults (`ROOM_BATCH_ABOVE=200`, `ROOM_BATCH_SECONDS=2`, the call budget on), the batched run;
`ROOM_BATCH_ABOVE=1000000` for the unbatched one; `ROOMS_OPEN=*`, grace 2 s. Run alone: `python -m bench.bigroom
[--smoke] [--out DIR] [--report DIR]` (its own Azurite; a full run writes bigroom.json and bigroom.md into
bench/results/bigroom/ and puts its section into the report's latest.md and latest.json).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.alone import destination, quiet_logging, section_arguments
from bench.proxy import CountingProxy, storage_proxies
from mapping.keys import user_key
from mapping.presence.rows import Membership
from mapping.presence.state import PresenceState, pair_fields
from mapping.rooms.index import index_row
from mapping.rooms.tally import Tally
from mapping.settings import Settings, StorageConnection
from mapping.storage.table import MAX_BATCH, Table, upsert
from testkit.azurite import Azurite, connection_string, running_azurite
from testkit.emulator_billing import billed_messages
from testkit.hub_client import HubClient
from testkit.local_stack import LocalStack, running_local_stack

logger = logging.getLogger("bench.bigroom")


ROOM = "arena"
NEVER = "0 0 0 1 1 *"  # the sweep's schedule: never within a run
OPEN_AT_ONCE = 16
SETTLE_SECONDS = 1.5  # billed counts unchanged this long, every change delivered: the window is over
GOAL_RATIO = 20  # billed messages per change, unbatched over batched, at 10,000 members
MODES = {"batched": "200", "unbatched": "1000000"}  # ROOM_BATCH_ABOVE of each run


@dataclass(frozen=True)
class BigRoomPlan:
    """A room of `members`, `changes` changes over `seconds` by `actors` clients."""

    members: int
    changes: int
    seconds: float
    actors: int


FULL = BigRoomPlan(members=10_000, changes=1_000, seconds=60.0, actors=100)
SMOKE = BigRoomPlan(members=400, changes=60, seconds=6.0, actors=12)


async def measure_big_room(azurite: Azurite, plan: BigRoomPlan = FULL) -> dict[str, Any]:
    """Run the plan batched, then unbatched, each on a fresh stack and table; return the figures and the goal."""
    runs = {mode: await _run(azurite, plan, mode) for mode in MODES}
    batched, unbatched = runs["batched"]["billed_per_change"], runs["unbatched"]["billed_per_change"]
    ratio = unbatched / batched if batched else 0.0
    at_scale = plan.members >= FULL.members
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "runs": runs,
        "ratio": round(ratio, 1),
        "goal": {"ratio": GOAL_RATIO, "applies": at_scale, "met": ratio >= GOAL_RATIO or not at_scale},
    }


def missed(figures: dict[str, Any]) -> list[str]:
    """Return the goals missed, named."""
    if figures["goal"]["met"]:
        return []
    return [f"big room: unbatched / batched billed messages {figures['ratio']} (goal {GOAL_RATIO}x)"]


async def _run(azurite: Azurite, plan: BigRoomPlan, mode: str) -> dict[str, Any]:
    """One run: the stack up, the room filled, the changes made and measured, a late join measured."""
    table_name = f"big{uuid.uuid4().hex[:16]}"
    with storage_proxies(azurite.port, azurite.queue_port) as (table_proxy, queue_proxy):
        storage = connection_string(table_proxy.port, queue_port=queue_proxy.port)
        settings = {
            "MAPPING_STORAGE": storage,
            "AzureWebJobsStorage": storage,
            "MAPPING_TABLE": table_name,
            "SIGNALR_HUB": "chat",
            "PRESENCE_GRACE_SECONDS": "2",
            "SWEEP_SCHEDULE": NEVER,
            "ROOMS_OPEN": "*",
            "ROOM_BATCH_ABOVE": MODES[mode],
            "ROOM_BATCH_SECONDS": "2",
        }
        with running_local_stack(settings, client_timeout=3600, keepalive=3600, log_level="WARNING") as stack:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                try:
                    return await _measure(stack, session, plan, mode, azurite, table_name, table_proxy, queue_proxy)
                except Exception:
                    logger.error("big room: the stack's logs:\n%s", stack.log_tail())
                    raise
                finally:
                    stack.stop()


async def _measure(
    stack: LocalStack,
    session: aiohttp.ClientSession,
    plan: BigRoomPlan,
    mode: str,
    azurite: Azurite,
    table_name: str,
    table_proxy: CountingProxy,
    queue_proxy: CountingProxy,
) -> dict[str, Any]:
    slots = asyncio.Semaphore(OPEN_AT_ONCE)

    async def open_(user: str) -> HubClient:
        async with slots:
            return await HubClient.open(
                session, stack.emulator_url, hub=stack.hub, user=user, access_key=stack.access_key
            )

    live = ["observer", *(f"actor-{n:03d}" for n in range(plan.actors))]
    await _seed(azurite, table_name, plan.members, live=live)
    # Members already: each connection joins the room's group as it connects (rooms R3), without a snapshot.
    observer, *actors = await asyncio.gather(*(open_(user) for user in live))
    await _simulate(session, stack, plan.members - len(live))
    await _settled(stack)
    await billed_messages(stack.emulator_url, reset=True)
    first_message = len(observer.messages)
    sent: list[tuple[str, int, float]] = []  # (actor, change number, when sent)
    with table_proxy.counting() as table, queue_proxy.counting() as queue:
        started = time.monotonic()
        for number in range(plan.changes):
            due = started + number * plan.seconds / plan.changes
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            actor = actors[number % plan.actors]
            sent.append((actor.user, number, time.monotonic()))
            await actor.send("setStatus", f"s{number}")
        delivered = await _delivered(observer, first_message, sent)
        billed = await _settled(stack)
    group = int(billed["byGroup"].get(ROOM, 0))
    delays = [delivered[number] - at for _user, number, at in sent if number in delivered]
    result = {
        "mode": mode,
        "members": plan.members,
        "changes": plan.changes,
        "delivered": len(delays),
        "billed_room": group,
        "billed_per_change": round(group / plan.changes, 1),
        "billed_total": int(billed["billed"]),
        "by_target": billed["byTarget"],
        "table": dict(table),
        "queue": dict(queue),
        "table_per_change": round(sum(table.values()) / plan.changes, 2),
        "queue_per_change": round(sum(queue.values()) / plan.changes, 2),
        "delivery_ms": {
            "p50": round(statistics.median(delays) * 1000, 1) if delays else None,
            "max": round(max(delays) * 1000, 1) if delays else None,
        },
        "join": await _late_join(open_, table_proxy, plan.members),
    }
    logger.info(
        "big room %s: %d members, %d changes: %.1f billed a change, %.2f table and %.2f queue requests a change, "
        "delivery p50 %s ms max %s ms",
        *(mode, plan.members, plan.changes, result["billed_per_change"], result["table_per_change"]),
        *(result["queue_per_change"], result["delivery_ms"]["p50"], result["delivery_ms"]["max"]),
    )
    for client in (observer, *actors):
        await client.close()
    return result


async def _seed(azurite: Azurite, table_name: str, members: int, *, live: list[str]) -> None:
    """Write `members` members of the room as their joins leave them (an index row each, offline at version 1; the
    `live` users, who will connect, also their membership row) and the room's tally; straight to Azurite, not
    counted."""
    table = Table(Settings(StorageConnection(connection_string=azurite.connection_string), table_name=table_name))
    try:
        now = datetime.now(UTC)
        offline = pair_fields(PresenceState(False, 0, None, now), 1)
        names = [*live, *(f"m{n:05}" for n in range(members - len(live)))]
        rows = [
            {**index_row(Membership(ROOM, now), user_key(name), name), "Pending": False, **offline} for name in names
        ]
        for i in range(0, len(rows), MAX_BATCH):
            await table.transact([upsert(row) for row in rows[i : i + MAX_BATCH]], action="seed")
        for name in live:
            await table.write(upsert(Membership(ROOM, now).to_table(user_key(name))), action="seed")
        await table.write(upsert(Tally(members, 0, 1).to_row(ROOM)), action="seed")
    finally:
        await table.close()


async def _simulate(session: aiohttp.ClientSession, stack: LocalStack, count: int) -> None:
    """Give the room's group `count` simulated connections: the seeded members' tabs."""
    url = f"{stack.emulator_url}/admin/hubs/{quote(stack.hub, safe='')}/groups/{ROOM}/simulated"
    async with session.put(url, params={"count": str(count)}) as response:
        if response.status != 200:
            raise RuntimeError(f"simulated members: {response.status} {await response.text()}")


async def _delivered(observer: HubClient, first: int, sent: list[tuple[str, int, float]]) -> dict[int, float]:
    """Wait until the observer was told every actor's last change; return, by change number, when it was told that
    change or a later one of the same actor."""
    last = {user: number for user, number, _at in sent}
    by_user: dict[str, list[int]] = {}
    for user, number, _at in sent:
        by_user.setdefault(user, []).append(number)
    told: dict[int, float] = {}
    seen = first

    def take() -> None:
        nonlocal seen
        while seen < len(observer.messages):
            (target, arguments), at = observer.messages[seen], observer.arrived[seen]
            seen += 1
            for user, status in _statuses(target, arguments):
                if not status.startswith("s") or not status[1:].isdigit():
                    continue
                number = int(status[1:])
                for earlier in by_user.get(user, []):
                    if earlier <= number and earlier not in told:
                        told[earlier] = at

    deadline = time.monotonic() + 60
    while True:
        take()
        if all(number in told for number in last.values()) or time.monotonic() > deadline:
            return told
        await asyncio.sleep(0.02)


def _statuses(target: str, arguments: list[Any]) -> list[tuple[str, str]]:
    """The (user, status) pairs a room message states: a presence message, or each entry of a batch."""
    if not arguments or not isinstance(arguments[0], dict) or arguments[0].get("room") != ROOM:
        return []
    payload = arguments[0]
    if target == "presence":
        return [(str(payload.get("user")), str(payload.get("status") or ""))]
    if target == "presenceBatch":
        return [(str(entry[0]), str(entry[3] or "")) for entry in payload.get("users", []) if len(entry) == 6]
    return []


async def _late_join(open_: Any, table_proxy: CountingProxy, members: int) -> dict[str, Any]:
    """A late joiner's join of the room: its table requests and the snapshot pages it received."""
    joiner: HubClient = await open_("late-joiner")
    with table_proxy.counting() as counts:
        await joiner.send("join", ROOM)
        await _until(lambda: _pages_done(joiner), "the late joiner's snapshot", within=120)
    pages = [arguments[0] for target, arguments in joiner.messages if target == "presenceSync"]
    await joiner.close()
    return {
        "table": dict(counts),
        "table_total": sum(counts.values()),
        "sync_messages": len(pages),
        "listed": sum(len(page["users"]) for page in pages),
        "members": members + 1,
    }


def _pages_done(client: HubClient) -> bool:
    pages = [arguments[0] for target, arguments in client.messages if target == "presenceSync"]
    return bool(pages) and len(pages) == pages[-1].get("pages")


async def _settled(stack: LocalStack) -> dict[str, Any]:
    """Wait until the billed counts stand still for SETTLE_SECONDS; return them."""
    last = await billed_messages(stack.emulator_url)
    quiet_since = time.monotonic()
    deadline = quiet_since + 120
    while time.monotonic() - quiet_since < SETTLE_SECONDS:
        if time.monotonic() > deadline:
            raise TimeoutError("big room: the billed messages kept changing")
        await asyncio.sleep(0.1)
        now = await billed_messages(stack.emulator_url)
        if now["billed"] != last["billed"]:
            last, quiet_since = now, time.monotonic()
    return last


async def _until(check: Any, what: str, *, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"big room: timed out waiting for {what}")
        await asyncio.sleep(0.05)


def bigroom_markdown(figures: dict[str, Any] | None, *, heading: str = "##") -> list[str]:
    """Render the section: per run, billed messages, requests and delivery times per change; the join's snapshot."""
    if not figures:
        return []
    plan = figures["plan"]
    lines = [
        f"{heading} Rooms of {plan['members']:,}: batched presence",
        "",
        f"{plan['changes']:,} member changes (`setStatus`) over {plan['seconds']:g} s by {plan['actors']} members of a "
        f"room of {plan['members']:,}, measured on the real stack (emulator, local host, Azurite behind counting "
        "proxies; the members beyond the actors are simulated connections of the room's group).",
        "",
        "| run | billed to the room, per change | table requests per change | queue requests per change "
        "| delivery p50 / max (ms) | changes delivered |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, run in figures["runs"].items():
        delivery = run["delivery_ms"]
        lines.append(
            f"| {mode} | {run['billed_per_change']:,} | {run['table_per_change']} | {run['queue_per_change']} "
            f"| {delivery['p50']} / {delivery['max']} | {run['delivered']} of {run['changes']} |"
        )
    goal = figures["goal"]
    verdict = "met" if goal["met"] else "missed"
    if not goal["applies"]:
        verdict = "not judged at this size"
    join = figures["runs"]["batched"]["join"]
    lines += [
        "",
        f"Unbatched over batched billed messages: **{figures['ratio']}x** (goal {goal['ratio']}x at 10,000 members: "
        f"{verdict}).",
        f"A join's snapshot of the room ({join['members']:,} members): {join['table_total']} table requests, "
        f"{join['sync_messages']} `presenceSync` messages ({join['listed']:,} entries).",
        "",
    ]
    return lines


def bigroom_summary(figures: dict[str, Any] | None) -> list[str]:
    """The headline line of the section."""
    if not figures:
        return []
    plan, runs = figures["plan"], figures["runs"]
    batched, unbatched = runs["batched"], runs["unbatched"]
    goal = figures["goal"]
    verdict = f"goal {goal['ratio']}x " + ("met" if goal["met"] else "**missed**") if goal["applies"] else "not judged"
    return [
        f"- A room of {plan['members']:,}, {plan['changes']:,} member changes over {plan['seconds']:g} s: "
        f"{batched['billed_per_change']:,} billed messages a change batched, {unbatched['billed_per_change']:,} "
        f"unbatched (**{figures['ratio']}x** fewer; {verdict}); delivery p50 {batched['delivery_ms']['p50']} ms "
        f"batched, {unbatched['delivery_ms']['p50']} ms unbatched."
    ]


def write_alone(figures: dict[str, Any], out: Path, report: Path, *, merge: bool = True) -> None:
    """Write the section run alone: bigroom.json and bigroom.md into `out`, the figures into the report in `report`."""
    from bench.report import write_section_alone  # the report renders this section: imported when run alone

    write_section_alone("bigroom", figures, bigroom_markdown(figures, heading="#"), out, report, merge=merge)


def main() -> None:
    """Run the section alone against its own Azurite; write its figures (a full run: also into the report)."""
    parser = section_arguments(
        "python -m bench.bigroom", __doc__, section="bigroom", smoke=f"a room of {SMOKE.members}"
    )
    arguments = parser.parse_args()
    quiet_logging()

    async def run() -> dict[str, Any]:
        with running_azurite() as azurite:
            return await measure_big_room(azurite, SMOKE if arguments.smoke else FULL)

    figures = asyncio.run(run())
    if (to := destination(arguments, "bigroom")) is not None:
        write_alone(figures, to[0], arguments.report, merge=to[1])
    print(json.dumps({mode: run["billed_per_change"] for mode, run in figures["runs"].items()}))
    if failed := missed(figures):
        raise SystemExit(f"over the issue's goals: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
