"""Benchmark: the sweep at scale: listing a million connections, and how the expiry index spreads its writes.

Three runs, counts on the wire beside the goals of docs/scale.md:

- **listing**: the SignalR REST stand-in (`testkit/signalr_rest.py`) holds N listed connections (numbered ids,
  evenly over the K listing groups) and waits an injected latency before every answer; the sweep's listing path
  (`list_groups`, then the ids turned into row keys, as the sweep does) runs with K = 16 groups listed concurrently
  and with K = 1 (one group, its pages in turn). Wall time and SignalR requests.
- **index writes**: W expiry-index entries of users spread over many partitions, through `ExpiryIndex.write_many`
  (transactions of up to 100 in one partition, as the sweep's renewals write them), one bucket, S = 1 and S = 8:
  entity writes per partition and second (counted on the wire), each partition's highest one-second rate, the
  busiest partition's share.
- **connects**: C connects across U users through the real store (`ConnectionStore.connect`, one bucket), S = 1 and
  S = 8: the busiest index partition's share of the index writes; then one reconciling sweep over those C quiet
  connections, every one listed (K = 16): its table and SignalR requests.

Azurite does not throttle: the rates are this machine's, the shares and counts are what carry over to Azure.

Usage: python -m bench.scale [--smoke] [--connections 1000000] [--latency-ms 30] [--index-writes 200000]
       [--connects 10000] [--users 1000] [--out bench/results/scale]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mapping.keys import INDEX_PREFIX, SHARDED_PREFIX, connection_key, user_key
from mapping.presence.store import ConnectionStore
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import SignalRLiveness, list_groups, listing_group, listing_groups
from mapping.sweep import sweep
from testkit.azurite import running_azurite
from testkit.signalr_rest import ACCESS_KEY, NumberedIds, signalr_rest
from testkit.table_requests import WRITES, TableRequests
from testkit.tables import make_settings, unique_table_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scale"
logger = logging.getLogger(__name__)

TTL = timedelta(seconds=600)
HUB = "chat"
SHARDS = (1, 8)
LISTING_GROUPS = (16, 1)
SWEEP_GROUPS = 16  # the default K, for the connects run's sweep
PARTITION_TARGET = 2000  # Azure Table Storage: entities per second per partition (docs/scale.md)
LISTING_SECONDS_GOAL = 60.0  # sharded listing of 1M connections at 30 ms
SINGLE_GROUP_SECONDS = 150.0  # the single group's floor at 1M and 30 ms: 5,000 pages in turn
_ENTITY_KEYS = re.compile(r"\(PartitionKey='([^']*)',RowKey=")
_JSON_PARTITION = re.compile(rb'"PartitionKey": ("(?:[^"\\]|\\.)*")')
_INDEX_PREFIXES = (INDEX_PREFIX, SHARDED_PREFIX)


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    connections: int
    latency_ms: float
    index_writes: int
    index_users: int
    connects: int
    users: int


FULL = Plan(connections=1_000_000, latency_ms=30, index_writes=200_000, index_users=20_000, connects=10_000, users=1000)
SMOKE = Plan(connections=4_000, latency_ms=1, index_writes=2_000, index_users=400, connects=400, users=200)


@dataclass
class ListingRun:
    """One listing of N connections over K groups."""

    connections: int
    groups: int
    latency_ms: float
    signalr_requests: int
    listed: int
    seconds: float
    keys_seconds: float

    @property
    def requests_goal(self) -> float:
        """Return the bound on SignalR requests: N/200 + K + 10."""
        return self.connections / 200 + self.groups + 10


@dataclass
class SpreadRun:
    """Writes of one run at one S: per partition totals and highest one-second rate, on the wire."""

    run: str
    shards: int
    users: int
    index_writes: int
    other_writes: int
    seconds: float
    index_totals: dict[str, int]
    index_peaks: dict[str, int]
    busiest_other_share: float
    sweep: dict[str, Any] = field(default_factory=dict)

    @property
    def busiest_share(self) -> float:
        """Return the busiest index partition's share of the index writes."""
        return max(self.index_totals.values()) / self.index_writes if self.index_writes else 0.0

    @property
    def share_goal(self) -> float:
        """Return the bound on the busiest share: 1/S + 5%."""
        return 1 / self.shards + 0.05

    @property
    def busiest_peak(self) -> int:
        """Return the highest one-second write rate any index partition reached."""
        return max(self.index_peaks.values(), default=0)


class PartitionWrites:
    """Entity writes per partition, in total and per second of the run, counted on the wire (raw_response_hook)."""

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.windows: Counter[tuple[str, int]] = Counter()
        self.started = time.monotonic()

    def hook(self, response: Any) -> None:
        """Count the entities a write request carried, under its partition and the second it was answered in."""
        request = response.http_request
        if request.method not in WRITES or request.url.endswith("/Tables"):
            return
        partition, entities = _written(request.url, request.body)
        if partition is not None:
            second = int(time.monotonic() - self.started)
            self.totals[partition] += entities
            self.windows[(partition, second)] += entities

    def peaks(self) -> dict[str, int]:
        """Return each partition's highest count in one second."""
        peaks: dict[str, int] = {}
        for (partition, _second), count in self.windows.items():
            peaks[partition] = max(peaks.get(partition, 0), count)
        return peaks

    def reset(self) -> None:
        """Start counting again."""
        self.totals.clear()
        self.windows.clear()
        self.started = time.monotonic()


def _written(url: str, body: Any) -> tuple[str | None, int]:
    """Return the partition a write request went to and how many entities it wrote (a transaction's operations)."""
    if url.endswith("/$batch"):
        raw = body if isinstance(body, bytes) else str(body or "").encode()
        entities = raw.count(b"Content-ID:")
        keys = _ENTITY_KEYS.search(raw.decode("utf-8", "replace"))
        if keys:
            return unquote(keys.group(1)).replace("''", "'"), entities
        found = _JSON_PARTITION.search(raw)
        return (json.loads(found.group(1)) if found else None), entities
    keys = _ENTITY_KEYS.search(url)
    return (unquote(keys.group(1)).replace("''", "'") if keys else None), 1


def _is_index(partition: str) -> bool:
    return partition.startswith(_INDEX_PREFIXES)


async def measure_listing(connections: int, groups: int, latency_ms: float) -> ListingRun:
    """List `connections` numbered ids over `groups` listing groups, as the sweep does, against the stand-in."""
    async with signalr_rest() as service:
        names = listing_groups(groups)
        share, extra = divmod(connections, groups)
        service.numbered = {
            name: NumberedIds(f"k{index:03d}-", share + (index < extra)) for index, name in enumerate(names)
        }
        service.latency_seconds = latency_ms / 1000
        checker = SignalRLiveness(SignalRConnection(endpoint=service.endpoint, access_key=ACCESS_KEY))
        try:
            started = time.perf_counter()
            members = await list_groups(checker, HUB, names, deadline=time.monotonic() + 3600)
            listed = time.perf_counter()
            keys = frozenset(connection_key(connection_id) for connection_id in members.connection_ids)
            finished = time.perf_counter()
        finally:
            await checker.close()
    return ListingRun(
        connections=connections,
        groups=groups,
        latency_ms=latency_ms,
        signalr_requests=service.listings,
        listed=len(keys),
        seconds=finished - started,
        keys_seconds=finished - listed,
    )


async def measure_index_writes(connection_string: str, shards: int, writes: int, users: int) -> SpreadRun:
    """Write `writes` index entries of `users` users (one bucket) through `ExpiryIndex.write_many`."""
    counter = PartitionWrites()
    settings = make_settings(connection_string, unique_table_name(), ttl=TTL, index_shards=shards)
    store = ConnectionStore(settings, client_options={"raw_response_hook": counter.hook})
    moment = datetime.now(UTC)
    operations = [
        store.index.entry(user_key(f"user{number % users:06d}"), f"c{number:08d}", moment) for number in range(writes)
    ]
    chunks = [operations[start : start + 1000] for start in range(0, len(operations), 1000)]
    slots = asyncio.Semaphore(8)

    async def write(chunk: list[Any]) -> None:
        async with slots:
            await store.index.write_many(chunk)

    try:
        counter.reset()
        started = time.perf_counter()
        await asyncio.gather(*(write(chunk) for chunk in chunks))
        seconds = time.perf_counter() - started
    finally:
        await store.close()
    return _spread("index writes", shards, users, counter, seconds)


async def measure_connects(connection_string: str, shards: int, connects: int, users: int) -> SpreadRun:
    """Connect `connects` connections across `users` users through the store (one bucket); then sweep them once,
    every one quiet and listed, and count that sweep's requests."""
    counter = PartitionWrites()
    requests = TableRequests()

    def hook(response: Any) -> None:
        counter.hook(response)
        requests.hook(response)

    async with signalr_rest() as service:
        signalr = SignalRConnection(endpoint=service.endpoint, access_key=ACCESS_KEY)
        settings = make_settings(
            connection_string,
            unique_table_name(),
            ttl=TTL,
            index_shards=shards,
            listing_groups=SWEEP_GROUPS,
            signalr=signalr,
            presence_events=True,
        )
        store = ConnectionStore(settings, client_options={"raw_response_hook": hook})
        checker = SignalRLiveness(signalr)
        moment = datetime.now(UTC)
        tabs: dict[str, list[str]] = {}
        for number in range(connects):
            tabs.setdefault(f"user{number % users:06d}", []).append(f"c{number:08d}")
        slots = asyncio.Semaphore(48)

        async def open_tabs(user: str, ids: list[str]) -> None:
            async with slots:
                for connection_id in ids:
                    await store.connect(user, connection_id, hub=HUB, now=moment)

        try:
            counter.reset()
            started = time.perf_counter()
            await asyncio.gather(*(open_tabs(user, ids) for user, ids in tabs.items()))
            seconds = time.perf_counter() - started
            spread = _spread("connects", shards, users, counter, seconds)
            for ids in tabs.values():
                for connection_id in ids:
                    service.groups.setdefault(listing_group(connection_id, SWEEP_GROUPS), set()).add(connection_id)
            requests.reset()
            service.listings = 0
            swept = time.perf_counter()
            result = await sweep(store, liveness=checker, now=moment + TTL * 0.6, time_budget=timedelta(hours=1))
            spread.sweep = {
                "connections": connects,
                "groups": SWEEP_GROUPS,
                "table_requests": requests.total,
                "table_writes": requests.writes,
                "signalr_requests": service.calls,
                "listed": result.listed,
                "deleted": result.deleted,
                "complete": result.complete,
                "seconds": round(time.perf_counter() - swept, 3),
            }
        finally:
            await checker.close()
            await store.close()
    return spread


def _spread(run: str, shards: int, users: int, counter: PartitionWrites, seconds: float) -> SpreadRun:
    index = {partition: count for partition, count in counter.totals.items() if _is_index(partition)}
    other = {partition: count for partition, count in counter.totals.items() if not _is_index(partition)}
    peaks = counter.peaks()
    other_writes = sum(other.values())
    return SpreadRun(
        run=run,
        shards=shards,
        users=users,
        index_writes=sum(index.values()),
        other_writes=other_writes,
        seconds=seconds,
        index_totals=dict(sorted(index.items())),
        index_peaks={partition: peaks[partition] for partition in sorted(index)},
        busiest_other_share=max(other.values()) / other_writes if other_writes else 0.0,
    )


async def measure(plan: Plan, *, connection_string: str | None = None) -> dict[str, Any]:
    """Run the three runs (against `connection_string`, else an Azurite of their own); return their figures."""
    listings = []
    for groups in LISTING_GROUPS:
        listings.append(await measure_listing(plan.connections, groups, plan.latency_ms))
        logger.info("%s", listings[-1])
    spreads: list[SpreadRun] = []

    async def table_side(connection: str) -> None:
        for shards in SHARDS:
            spreads.append(await measure_index_writes(connection, shards, plan.index_writes, plan.index_users))
            logger.info("index writes S=%d: share %.3f", shards, spreads[-1].busiest_share)
        for shards in SHARDS:
            spreads.append(await measure_connects(connection, shards, plan.connects, plan.users))
            logger.info("connects S=%d: share %.3f, sweep %s", shards, spreads[-1].busiest_share, spreads[-1].sweep)

    if connection_string is not None:
        await table_side(connection_string)
    else:
        with running_azurite() as azurite:
            await table_side(azurite.connection_string)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "listings": [asdict(run) for run in listings],
        "spreads": [asdict(run) for run in spreads],
    }


def _listing(entry: dict[str, Any]) -> ListingRun:
    return ListingRun(**entry)


def _spread_run(entry: dict[str, Any]) -> SpreadRun:
    return SpreadRun(**entry)


def goals(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Return each goal as (what, measured, goal, met); timings only where the run used the full plan's latency."""
    rows: list[tuple[str, str, str, bool]] = []
    for run in map(_listing, results["listings"]):
        rows.append(
            (
                f"listing {run.connections:,} connections, K = {run.groups}: SignalR requests",
                f"{run.signalr_requests:,}",
                f"<= N/200 + K + 10 = {run.requests_goal:,.0f}",
                run.signalr_requests <= run.requests_goal,
            )
        )
        if run.connections >= FULL.connections and run.latency_ms >= FULL.latency_ms:
            if run.groups > 1:
                goal, met = f"<= {LISTING_SECONDS_GOAL:.0f} s", run.seconds <= LISTING_SECONDS_GOAL
            else:
                goal, met = (
                    f">= {SINGLE_GROUP_SECONDS:.0f} s (5,000 pages in turn)",
                    run.seconds >= SINGLE_GROUP_SECONDS,
                )
            rows.append(
                (f"listing wall time, K = {run.groups}, {run.latency_ms:g} ms", f"{run.seconds:.1f} s", goal, met)
            )
    for spread in map(_spread_run, results["spreads"]):
        rows.append(
            (
                f"{spread.run}, S = {spread.shards} ({spread.index_writes:,} index writes, {spread.users:,} users):"
                " busiest index partition's share",
                f"{spread.busiest_share:.1%}",
                f"<= 1/S + 5% = {spread.share_goal:.1%}",
                spread.busiest_share <= spread.share_goal + 1e-9,
            )
        )
        if spread.sweep:
            n, k = spread.sweep["connections"], spread.sweep["groups"]
            table_goal, signalr_goal = n / 200 + 20, n / 200 + k + 10
            rows.append(
                (
                    f"sweep over {n:,} quiet listed connections, S = {spread.shards}: table requests",
                    f"{spread.sweep['table_requests']:,}",
                    f"<= N/200 + 20 = {table_goal:,.0f}",
                    spread.sweep["table_requests"] <= table_goal,
                )
            )
            rows.append(
                (
                    f"sweep over {n:,} quiet listed connections, S = {spread.shards}, K = {k}: SignalR requests",
                    f"{spread.sweep['signalr_requests']:,}",
                    f"<= N/200 + K + 10 = {signalr_goal:,.0f}",
                    spread.sweep["signalr_requests"] <= signalr_goal,
                )
            )
    return rows


def markdown(results: dict[str, Any], *, heading: str = "#") -> list[str]:
    """Render the figures as Markdown lines (a page of its own, or a section of latest.md with `heading` "##")."""
    sub = heading + "#"
    plan = results["plan"]
    lines = [
        f"{heading} The sweep at scale",
        "",
        f"Produced by `make bench-sweep` (`python -m bench.scale`) on {results['date']}; raw figures in scale.json."
        " Azurite (in memory) and the loopback SignalR REST stand-in on one machine; Azurite does not throttle, so",
        "the rates are this machine's, while the shares and request counts carry over to Azure.",
        "",
        f"{sub} Goals",
        "",
        "| what | measured | goal | met |",
        "|---|---:|---|---|",
    ]
    lines += [
        f"| {what} | {measured} | {goal} | {'yes' if met else '**no**'} |"
        for what, measured, goal, met in goals(results)
    ]
    lines += [
        "",
        f"{sub} Listing {plan['connections']:,} connections ({plan['latency_ms']:g} ms per request)",
        "",
        "The sweep's listing path: `list_groups` (16 groups at once, pages of 200 in turn within a group), then the ids"
        " turned into row keys. K = 1 is today's single hub-wide group.",
        "",
        "| K (groups) | SignalR requests (goal) | connections listed | wall time (s) | of which ids → keys (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for run in map(_listing, results["listings"]):
        lines.append(
            f"| {run.groups} | {run.signalr_requests:,} (<= {run.requests_goal:,.0f}) | {run.listed:,} |"
            f" {run.seconds:.1f} | {run.keys_seconds:.1f} |"
        )
    lines += [
        "",
        f"{sub} Expiry-index writes per partition",
        "",
        "All writes in one time bucket. *Index writes*: entries of many users through `ExpiryIndex.write_many`;"
        " *connects*: the store's connect (the entry, then the row and presence in the user's partition). Highest"
        f" rate: the most entities one partition took in one second of the run (Azure's target: {PARTITION_TARGET:,}/s"
        " per partition).",
        "",
        "| run | S | index writes | wall time (s) | index partitions | busiest share (goal) | busiest partition's"
        " highest rate (/s) | all index partitions' highest rates (/s) | busiest user partition's share of the rest |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for spread in map(_spread_run, results["spreads"]):
        busiest = max(spread.index_totals, key=spread.index_totals.__getitem__) if spread.index_totals else ""
        rates = ", ".join(f"{rate:,}" for rate in spread.index_peaks.values())
        other = f"{spread.busiest_other_share:.2%}" if spread.other_writes else "n/a"
        lines.append(
            f"| {spread.run} ({spread.users:,} users) | {spread.shards} | {spread.index_writes:,}"
            f" | {spread.seconds:.1f} | {len(spread.index_totals)}"
            f" | {spread.busiest_share:.1%} (<= {spread.share_goal:.1%}) |"
            f" {spread.index_peaks.get(busiest, 0):,} | {rates} | {other} |"
        )
    sweeps = [spread for spread in map(_spread_run, results["spreads"]) if spread.sweep]
    if sweeps:
        lines += [
            "",
            f"{sub} One reconciling sweep over the connects' quiet connections (every one listed)",
            "",
            "| S | connections | K | table requests (goal) | table writes | SignalR requests (goal) | rows deleted |"
            " wall time (s) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for spread in sweeps:
            s = spread.sweep
            n, k = s["connections"], s["groups"]
            lines.append(
                f"| {spread.shards} | {n:,} | {k} | {s['table_requests']:,} (<= {n / 200 + 20:,.0f})"
                f" | {s['table_writes']} | {s['signalr_requests']:,} (<= {n / 200 + k + 10:,.0f})"
                f" | {s['deleted']} | {s['seconds']:.1f} |"
            )
    lines.append("")
    return lines


def per_event_counts(
    round_trips: list[dict[str, Any]], scale: dict[str, Any] | None, audiences: dict[str, Any] | None = None
) -> list[str]:
    """Render the per-event request counts docs/scale.md's cost model rests on (from this report's figures)."""
    totals = {row["scenario"]: row["ours"]["total"] for row in round_trips if "ours" in row}
    picks = [
        ("connect (first tab, presence on)", "first connect, presence on"),
        ("connect (another tab)", "second connect (one tab open), presence on"),
        ("disconnect (last tab)", "last disconnect, presence on"),
        ("disconnect (another tab)", "other disconnect (one tab stays), presence on"),
        ("setStatus", "setStatus(status) (one tab)"),
        ("join, a new room", "join(room), a new room (one tab, in 1 room)"),
        ("leave", "leave(room), a member (one tab, in 2 rooms)"),
        ("send to a user (HTTP)", "HTTP send, user with 1 connection"),
        ("sweep, nothing due", "sweep, 0 expired among 100 live rows"),
        ("sweep, 100 lost disconnects of 100 users", "sweep, 100 expired rows of 100 users"),
    ]
    lines = [
        "## Counts for docs/scale.md",
        "",
        "The per-event figures the cost model in [docs/scale.md](../../docs/scale.md) rests on (table requests, from"
        " the round-trip table above; the sweep's from `make bench-sweep`): the page's arithmetic is redone from"
        " these.",
        "",
        "| event | table requests |",
        "|---|---:|",
    ]
    lines += [f"| {label} | {totals[scenario]} |" for label, scenario in picks if scenario in totals]
    if scale:
        for spread in map(_spread_run, scale["spreads"]):
            if spread.sweep and spread.shards == max(SHARDS):
                s = spread.sweep
                per = s["table_requests"] / s["connections"] * 1000
                lines.append(
                    f"| sweep over {s['connections']:,} quiet listed connections (S = {spread.shards}) |"
                    f" {s['table_requests']} ({per:.1f} per 1,000 connections; SignalR {s['signalr_requests']}) |"
                )
        for run in map(_listing, scale["listings"]):
            lines.append(
                f"| listing {run.connections:,} connections, K = {run.groups} (SignalR requests) |"
                f" {run.signalr_requests:,} |"
            )
    lines += _fan_out(audiences)
    lines.append("")
    return lines


def _fan_out(audiences: dict[str, Any] | None) -> list[str]:
    """The billed SignalR messages of one presence change, when the report measured audiences."""
    try:
        plan, fanout = audiences["plan"], audiences["fanout"]  # type: ignore[index]
        scoped, hub = fanout["scoped"]["set_status"], fanout["hub"]["set_status"]
        return [
            f"| presence change fan-out, SignalR messages billed (user in {plan['rooms']} rooms of"
            f" {plan['room_size']}, {plan['watchers']} watchers: audience {plan['audience']}) |"
            f" {scoped['billed_presence']} (hub-wide: {hub['billed_presence']:,} for {fanout['online']:,} online) |"
        ]
    except (KeyError, TypeError):
        return []


def write_report(results: dict[str, Any], out: Path) -> None:
    """Write scale.json and scale.md into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "scale.md").write_text("\n".join(markdown(results)))


def load(out: Path = RESULTS) -> dict[str, Any] | None:
    """Return the figures of the last `make bench-sweep`, if any."""
    path = out / "scale.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the bench works")
    parser.add_argument("--connections", type=int, help="listed connections (default 1,000,000)")
    parser.add_argument("--latency-ms", type=float, help="latency injected per SignalR request (default 30)")
    parser.add_argument("--index-writes", type=int, help="index entries written per S (default 200,000)")
    parser.add_argument("--connects", type=int, help="connects per S (default 10,000)")
    parser.add_argument("--users", type=int, help="users the connects spread over (default 1,000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="rewrite scale.md from scale.json")
    args = parser.parse_args()
    if args.report_only:
        saved = load(args.out)
        if saved is None:
            parser.error(f"no {args.out / 'scale.json'}")
        write_report(saved, args.out)
        return
    base = SMOKE if args.smoke else FULL
    overrides = {
        "connections": args.connections,
        "latency_ms": args.latency_ms,
        "index_writes": args.index_writes,
        "connects": args.connects,
        "users": args.users,
    }
    plan = Plan(**{**asdict(base), **{key: value for key, value in overrides.items() if value is not None}})
    if plan.index_writes and plan.index_users > plan.index_writes:
        plan = Plan(**{**asdict(plan), "index_users": max(1, math.ceil(plan.index_writes / 10))})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    for noisy in ("azure", "mapping"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    results = asyncio.run(measure(plan))
    write_report(results, args.out)
    print((args.out / "scale.md").read_text())


if __name__ == "__main__":
    main()
