"""Run the benchmarks against an Azurite of their own and write the report: `python -m bench [--smoke] [--out DIR]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.access import measure_access
from bench.access import missed as access_missed
from bench.audience import AudiencePlan, measure_audiences
from bench.bigroom import FULL as BIGROOM_FULL
from bench.bigroom import SMOKE as BIGROOM_SMOKE
from bench.bigroom import measure_big_room
from bench.bigroom import missed as bigroom_missed
from bench.coldstart import measure_cold_start
from bench.feed import FULL as FEED_FULL
from bench.feed import SMOKE as FEED_SMOKE
from bench.feed import measure_feed
from bench.feed import missed as feed_missed
from bench.load import Sample, drive, summarise
from bench.report import merge_scale_into_latest, write_report
from bench.roundtrips import count_round_trips
from bench.scale import SMOKE as SCALE_SMOKE
from bench.scale import goals as scale_goals
from bench.scale import load as load_scale
from bench.scale import measure as measure_scale
from bench.spend import FULL as SPEND_FULL
from bench.spend import SMOKE as SPEND_SMOKE
from bench.spend import measure_spend
from bench.spend import missed as spend_missed
from bench.workload import EVENTS, IMPLS, Event, app_environment, prepared
from testkit.azurite import running_azurite

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONCURRENCY = (1, 8, 32)


@dataclass(frozen=True)
class Plan:
    """How much to run: rounds, operations and seconds per cell, warm-ups, cold-start runs, rows to sweep, and the
    SignalR connections online in the audiences section."""

    rounds: int
    max_ops: int
    max_seconds: float
    warmup: int
    cold_repetitions: int
    sweep_rows: int
    online: int


FULL = Plan(rounds=2, max_ops=600, max_seconds=2.5, warmup=20, cold_repetitions=9, sweep_rows=100, online=1000)
SMOKE = Plan(rounds=1, max_ops=6, max_seconds=0.5, warmup=2, cold_repetitions=1, sweep_rows=10, online=40)


async def measure_cell(connection: str, plan: Plan, event: Event, concurrency: int, impl: str, round_: int) -> Sample:
    """Measure one event x concurrency x implementation on a fresh table."""
    count = plan.warmup + plan.max_ops
    async with prepared(
        impl, event, connection, concurrency=concurrency, count=count, verify_below=plan.warmup + 3
    ) as op:
        await drive(op, concurrency=min(concurrency, plan.warmup), first=0, max_ops=plan.warmup, max_seconds=60)
        latencies, seconds = await drive(
            op, concurrency=concurrency, first=plan.warmup, max_ops=plan.max_ops, max_seconds=plan.max_seconds
        )
    sample = summarise(event.name, impl, concurrency, latencies, seconds, round_=round_)
    logger.info(
        "round %d %-10s c=%-2d %-5s %5d ops %7.1f ops/s p50 %7.2f ms p99 %7.2f ms",
        *(round_, event.name, concurrency, impl, sample.ops, sample.throughput, sample.p50_ms, sample.p99_ms),
    )
    return sample


async def measure_events(connection: str, plan: Plan) -> tuple[list[Sample], list[Sample]]:
    """Measure every cell once per round (alternate rounds reverse the implementations' order).

    Returns every sample, and for each cell the sample of its best round (highest throughput): on a
    shared machine interference only ever slows a run down.
    """
    everything: list[Sample] = []
    for round_ in range(1, plan.rounds + 1):
        order = IMPLS if round_ % 2 else tuple(reversed(IMPLS))
        for event in EVENTS:
            for concurrency in CONCURRENCY:
                for impl in order:
                    everything.append(await measure_cell(connection, plan, event, concurrency, impl, round_))
    best: dict[tuple[str, int, str], Sample] = {}
    for sample in everything:
        key = (sample.event, sample.concurrency, sample.impl)
        if key not in best or sample.throughput > best[key].throughput:
            best[key] = sample
    return everything, list(best.values())


def environment() -> dict[str, Any]:
    """Describe the machine and the versions the numbers were taken on."""
    versions = {
        name: metadata.version(name)
        for name in ("azure-functions", "azure-data-tables", "azure-core", "aiohttp", "requests")
    }
    package = json.loads((ROOT / "package.json").read_text())
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "azurite": package["devDependencies"]["azurite"],
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def run(plan: Plan, out: Path, *, smoke: bool) -> None:
    """Run everything against a fresh Azurite and write the report into `out`."""
    started = time.monotonic()
    with running_azurite() as azurite:
        connection = azurite.connection_string
        logger.info("Azurite on port %d; measuring events", azurite.port)
        every_round, samples = await measure_events(connection, plan)
        logger.info("counting round trips")
        round_trips = await count_round_trips(connection, sweep_rows=plan.sweep_rows)
        logger.info("counting access: grants, revokes, refused joins, disconnect-all")
        access = await measure_access(azurite)
        logger.info("measuring what one client may spend: the call budget off and on")
        spend = await measure_spend(azurite, SPEND_SMOKE if smoke else SPEND_FULL)
        logger.info("measuring the presence feed: each event's requests with the feed off and on")
        feed = await measure_feed(azurite, FEED_SMOKE if smoke else FEED_FULL)
        logger.info("measuring a big room: member changes batched and unbatched")
        bigroom = await measure_big_room(azurite, BIGROOM_SMOKE if smoke else BIGROOM_FULL)
        logger.info("measuring audiences and grace (%d connections online)", plan.online)
        audiences = await measure_audiences(azurite, AudiencePlan(online=plan.online))
        logger.info("measuring cold start")
        cold = await asyncio.to_thread(
            measure_cold_start, repetitions=plan.cold_repetitions, app_env=app_environment(connection, "coldstart")
        )
        # The sweep at scale: a tiny run when smoke, else the figures of the last `make bench-sweep`.
        scale = await measure_scale(SCALE_SMOKE, connection_string=connection) if smoke else load_scale()
    results = {
        "environment": environment(),
        "plan": {**plan.__dict__, "concurrency": list(CONCURRENCY), "smoke": smoke},
        "samples": [sample.to_json() for sample in samples],
        "all_rounds": [sample.to_json() for sample in every_round],
        "round_trips": round_trips,
        "audiences": audiences,
        "access": access,
        "spend": spend,
        "feed": feed,
        "bigroom": bigroom,
        "cold_start": cold,
        **({"scale": scale} if scale else {}),
        "duration_seconds": round(time.monotonic() - started, 1),
    }
    write_report(results, out)
    logger.info("wrote %s in %.0f s", out / "latest.md", time.monotonic() - started)
    missed = [row["figure"] for row in audiences["figures"] if not row["met"]]
    missed += [what for what, _measured, _goal, met in (scale_goals(scale) if scale else []) if not met]
    missed += access_missed(access)
    missed += spend_missed(spend)
    missed += feed_missed(feed)
    missed += bigroom_missed(bigroom)
    for figure in missed:
        logger.error("over its goal: %s", figure)
    if missed and smoke:
        raise SystemExit(
            f"{len(missed)} audience, scale, access, spend, feed or big-room figure(s) over their goals "
            f"(see {out / 'latest.md'})"
        )


def merge_scale(out: Path) -> None:
    """Merge the figures of the last `python -m bench.scale` into the report in `out`, if both are there."""
    scale = load_scale()
    if scale is None:
        raise SystemExit("no scale.json: run python -m bench.scale first")
    if not merge_scale_into_latest(scale, out):
        print(f"no {out / 'latest.json'} to merge into (run make bench); scale.md stands alone")


def main() -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few iterations only: checks that the bench works")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write latest.md, latest.json and the plots")
    parser.add_argument(
        "--merge-scale",
        action="store_true",
        help="only put the last `python -m bench.scale` figures (scale.json) into latest.json and latest.md",
    )
    arguments = parser.parse_args()
    if arguments.merge_scale:
        merge_scale(arguments.out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("mapping").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # the naive client's "connection pool is full" at c=32
    arguments.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(SMOKE if arguments.smoke else FULL, arguments.out, smoke=arguments.smoke))


if __name__ == "__main__":
    main()
