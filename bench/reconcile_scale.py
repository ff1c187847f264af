"""Benchmark: one sweep over N quiet live connections and 100 lost disconnects, with a SignalR connection.

Every connection is past half its lease (quiet: no message since), the case a sweep with a SignalR
connection meets most. Two designs, in one run on one table:

- **group listing** (the app): the sweep lists the hub-wide group (pages of 200) and asks only about
  the connections the listing lacks;
- **HEAD checks** (the baseline, the app's fallback for services without the 2024-12-01 listing): one
  `HEAD` per due connection, and a refresh (index entry and row) for each one alive.

SignalR is a loopback stand-in honouring the documented REST contract (`testkit/signalr_rest.py`): the
emulator holds connections only as real WebSockets, and 50,000 of them are not what this measures. The
figures are counts on the wire (SignalR requests, table requests and writes) and the wall time.
Goal per sweep (listing): SignalR requests <= N/200 + 2 x stale + 10; table requests <= N/200 + 4 x stale
+ 20; table writes only for the stale rows.

Usage: python -m bench.reconcile_scale [--sizes 1000 10000 50000] [--stale 100] [--out bench/results/reconcile]
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import charts, scale_command
from mapping.presence.store import ConnectionStore
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import SignalRLiveness, listing_group
from mapping.sweep import sweep
from testkit.azurite import running_azurite
from testkit.signalr_rest import ACCESS_KEY, SignalRRest, signalr_rest
from testkit.table_requests import TableRequests
from testkit.tables import make_settings, unique_table_name

ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)

TTL = timedelta(seconds=600)
CONNECTIONS_PER_USER = 20
DESIGNS = ("group listing", "HEAD checks")


@dataclass
class Measurement:
    """One sweep of one design at one size."""

    live: int
    stale: int
    design: str
    signalr_requests: int
    table_requests: int
    table_writes: int
    deleted: int
    offline_announced: int
    seconds: float
    complete: bool

    @property
    def signalr_goal(self) -> float:
        """Return the issue's bound on SignalR requests for this size."""
        return self.live / 200 + 2 * self.stale + 10

    @property
    def table_goal(self) -> float:
        """Return the issue's bound on table requests for this size."""
        return self.live / 200 + 4 * self.stale + 20


async def seed(store: ConnectionStore, ids: list[tuple[str, str]], *, now: datetime) -> None:
    """Connect (user, connection) pairs, users concurrently and each user's tabs in order."""
    by_user: dict[str, list[str]] = {}
    for user, connection in ids:
        by_user.setdefault(user, []).append(connection)
    slots = asyncio.Semaphore(48)

    async def open_tabs(user: str, tabs: list[str]) -> None:
        async with slots:
            for tab in tabs:
                await store.connect(user, tab, now=now)

    await asyncio.gather(*(open_tabs(user, tabs) for user, tabs in by_user.items()))


async def measure(
    sizes: list[int], stale: int, *, budget: timedelta, designs: tuple[str, ...] = DESIGNS, out: Path | None = None
) -> list[Measurement]:
    """Grow one table through `sizes` quiet connections; at each size sweep it with each design.

    With `out`, the measurements so far are written after each sweep, so a run cut short keeps them.
    """
    results: list[Measurement] = []
    with running_azurite() as azurite:
        async with signalr_rest() as service:
            requests = TableRequests()
            connection = SignalRConnection(endpoint=service.endpoint, access_key=ACCESS_KEY)
            settings = make_settings(
                azurite.connection_string, unique_table_name(), ttl=TTL, signalr=connection, presence_events=True
            )
            store = ConnectionStore(settings, client_options={"raw_response_hook": requests.hook})
            checker = SignalRLiveness(connection)
            live = 0
            moment = datetime.now(UTC)
            try:
                for size in sizes:
                    fresh = [(f"user{i // CONNECTIONS_PER_USER:06d}", f"live{i:07d}") for i in range(live, size)]
                    await seed(store, fresh, now=moment)
                    for _, connection_id in fresh:
                        group = listing_group(connection_id, settings.listing_groups)
                        service.groups.setdefault(group, set()).add(connection_id)
                    live = size
                    for design in designs:
                        lost = [(f"lost{size}-{design[0]}{i}", f"lost{size}-{design[0]}{i}") for i in range(stale)]
                        await seed(store, lost, now=moment)  # their disconnects never arrived: not in the group
                        moment += TTL * 0.6  # every connection is now past half its lease
                        service.listing_status = 200 if design == "group listing" else 404
                        results.append(
                            await _one_sweep(store, checker, service, requests, design, size, stale, moment, budget)
                        )
                        logger.info("%s", results[-1])
                        if out is not None:
                            save(results, out)
            finally:
                await checker.close()
                await store.close()
    return results


async def _one_sweep(
    store: ConnectionStore,
    checker: SignalRLiveness,
    service: SignalRRest,
    requests: TableRequests,
    design: str,
    size: int,
    stale: int,
    moment: datetime,
    budget: timedelta,
) -> Measurement:
    requests.reset()
    service.requests.clear()
    service.listings = 0
    started = time.perf_counter()
    result = await sweep(store, liveness=checker, now=moment, time_budget=budget)
    seconds = time.perf_counter() - started
    return Measurement(
        live=size,
        stale=stale,
        design=design,
        signalr_requests=service.calls,
        table_requests=requests.total,
        table_writes=requests.writes,
        deleted=result.deleted,
        offline_announced=len(result.offline_users),
        seconds=seconds,
        complete=result.complete,
    )


def save(results: list[Measurement], out: Path) -> None:
    """Write the measurements as JSON."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "reconcile.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def write_report(results: list[Measurement], out: Path) -> None:
    """Write the measurements as JSON, a markdown table and a PNG plot."""
    save(results, out)
    lines = [
        "# One sweep with a SignalR connection: group listing vs. HEAD checks",
        "",
        "Azurite (in memory) and a loopback SignalR REST stand-in; N quiet live connections, all past half",
        f"their lease, plus {results[0].stale} lost disconnects (rows whose connection the service no longer has).",
        "Counts on the wire per sweep. Goals (listing): SignalR requests <= N/200 + 2 x stale + 10; table requests",
        "<= N/200 + 4 x stale + 20; table writes only for stale rows.",
        "",
        "| N | design | SignalR requests (goal) | table requests (goal) | table writes | rows deleted |"
        " offline announced | wall time (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.live:,} | {r.design} | {r.signalr_requests:,} (<= {r.signalr_goal:,.0f}) | {r.table_requests:,}"
            f" (<= {r.table_goal:,.0f}) | {r.table_writes:,} | {r.deleted} | {r.offline_announced} | {r.seconds:.2f}"
            f"{'' if r.complete else ' (incomplete)'} |"
        )
    sizes = sorted({r.live for r in results})
    for design in DESIGNS:
        missing = [size for size in sizes if not any(r.live == size and r.design == design for r in results)]
        if missing:
            lines += [
                "",
                f"Not measured: {design} at N = {', '.join(f'{size:,}' for size in missing)} (the run was cut short).",
            ]
    lines += ["", "![reconciliation cost](reconcile.png)", ""]
    (out / "reconcile.md").write_text("\n".join(lines))
    plot(results, out / "reconcile.png")


def plot(results: list[Measurement], path: Path) -> None:
    """Plot SignalR requests, table requests and wall time per sweep against N, one line per design."""
    figure, axes = charts.pyplot().subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for design in DESIGNS:
        rows = [r for r in results if r.design == design]
        sizes = [r.live for r in rows]
        axes[0].plot(sizes, [r.signalr_requests for r in rows], marker="o", label=design)
        axes[1].plot(sizes, [r.table_requests for r in rows], marker="o", label=design)
        axes[2].plot(sizes, [r.seconds for r in rows], marker="o", label=design)
    for axis in axes:
        axis.set_yscale("log")
    labels = ("SignalR requests per sweep", "table requests per sweep", "wall time of one sweep (s)")
    charts.log_axes(zip(axes, labels, strict=True), xlabel="quiet live connections")
    charts.save(figure, f"A sweep with {results[0].stale} lost disconnects among N quiet connections", path)


def main() -> None:
    """Run the benchmark from the command line."""
    parser = scale_command.arguments(__doc__ or "", results="reconcile")
    parser.add_argument("--budget-seconds", type=float, default=1800, help="the sweep's time budget")
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DESIGNS), help="which designs to sweep")
    args = parser.parse_args()
    if args.report_only:
        write_report(scale_command.saved(args.out, "reconcile", Measurement), args.out)
        return
    scale_command.quiet_logging(logger, library_level=logging.ERROR)
    budget = timedelta(seconds=args.budget_seconds)
    designs = tuple(args.designs)
    results = asyncio.run(measure(sorted(args.sizes), args.stale, budget=budget, designs=designs, out=args.out))
    write_report(results, args.out)
    print((args.out / "reconcile.md").read_text())


if __name__ == "__main__":
    main()
