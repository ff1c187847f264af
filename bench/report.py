"""Write the results: latest.json (raw), latest.md (tables and ratios) and PNG plots."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

from bench import charts
from bench.bigroom import bigroom_markdown, bigroom_summary
from bench.feed import feed_markdown, feed_summary
from bench.scale import markdown as scale_markdown
from bench.scale import per_event_counts
from bench.spend import spend_markdown, spend_summary
from bench.workload import EVENTS, IMPLS

logger = logging.getLogger(__name__)

ROUND_TRIP_IMPLS = ("minimal", *IMPLS)
NOT_COUNTED = "–"  # a round-trip cell of an implementation that does not have the event
COLOURS = {"floor": "#7f7f7f", "ours": "#1f77b4", "naive": "#d62728"}
LABELS = {event.name: event.label for event in EVENTS}


def write_report(results: dict[str, Any], out: Path) -> None:
    """Write latest.json, latest.md and the plots into `out`."""
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    samples = {(s["event"], s["concurrency"], s["impl"]): s for s in results["samples"]}
    concurrency: list[int] = results["plan"]["concurrency"]
    _plot_per_event(
        samples,
        concurrency,
        out / "throughput.png",
        bar="throughput",
        ylabel="operations / s",
        title="Throughput per event (higher is better)",
    )
    _plot_per_event(
        samples,
        concurrency,
        out / "latency.png",
        bar="p50_ms",
        dash="p99_ms",
        ylabel="ms (bar p50, dash p99)",
        title="Latency per event (lower is better)",
    )
    _plot_cold_start(results["cold_start"], out / "coldstart.png")
    (out / "latest.md").write_text(markdown(results))


def ratios(samples: dict[tuple[str, int, str], dict[str, Any]], event: str, level: int) -> dict[str, float]:
    """Return the cost ratios of one cell: time per operation (1 / throughput) and p50 latency."""
    floor, ours, naive = (samples[(event, level, impl)] for impl in IMPLS)
    return {
        "ours_floor": floor["throughput"] / ours["throughput"],
        "naive_ours": ours["throughput"] / naive["throughput"],
        "ours_floor_p50": ours["p50_ms"] / floor["p50_ms"],
        "naive_ours_p50": naive["p50_ms"] / ours["p50_ms"],
    }


def markdown(results: dict[str, Any]) -> str:
    """Render the whole report as Markdown."""
    env, plan = results["environment"], results["plan"]
    samples = {(s["event"], s["concurrency"], s["impl"]): s for s in results["samples"]}
    levels: list[int] = plan["concurrency"]
    all_ratios = {(e.name, c): ratios(samples, e.name, c) for e in EVENTS for c in levels}
    lines = [
        "# Benchmarks: what each event costs",
        "",
        "Produced by `make bench` (see the README's *Benchmarks* section); the raw figures are in",
        "[latest.json](latest.json). Do not edit by hand.",
        "",
    ]
    if plan["smoke"]:
        lines += [
            "> **Smoke run** (a few operations per cell): it checks that the bench works; its figures mean nothing.",
            "",
        ]
    lines += [
        f"- Run: {env['date']}, {results['duration_seconds']:.0f} s in all.",
        f"- Machine: {env['cpus']} CPUs ({env['cpu_model']}), {env['platform']}, Python {env['python']}; "
        "Azurite and the benchmark share those cores.",
        "- Packages: "
        + ", ".join(f"{name} {version}" for name, version in env["packages"].items())
        + f", Azurite {env['azurite']} (in memory, on 127.0.0.1).",
        f"- Each cell: a fresh table, {plan['warmup']} warm-up operations, then up to {plan['max_ops']} operations or "
        f"{plan['max_seconds']:g} s (whichever comes first) from {', '.join(map(str, levels))} concurrent callers; "
        f"the whole matrix {plan['rounds']} time(s), alternate rounds in reverse order of implementation, and each "
        "cell's best round (highest throughput) reported. Every round is in latest.json (`all_rounds`).",
        "",
        "## Headline",
        "",
        *_headline(all_ratios, levels),
        _round_trip_summary(results["round_trips"]),
        *_audience_summary(results.get("audiences")),
        *_access_summary(results.get("access")),
        *spend_summary(results.get("spend")),
        *feed_summary(results.get("feed")),
        *bigroom_summary(results.get("bigroom")),
        "",
        "## Ratios",
        "",
        "Cost per operation (1 / throughput) and median latency. **ours/floor**: how far the app is above the bare "
        "SDK calls (1.00 = at the floor). **naive/ours**: how many times more the naive way costs than the app.",
        "",
        "| event | callers | ours/floor (cost) | naive/ours (cost) | ours/floor (p50) | naive/ours (p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for event in EVENTS:
        for level in levels:
            r = all_ratios[(event.name, level)]
            lines.append(
                f"| {event.label} | {level} | {r['ours_floor']:.2f} | {r['naive_ours']:.2f} | "
                f"{r['ours_floor_p50']:.2f} | {r['naive_ours_p50']:.2f} |"
            )
    lines += [
        "",
        "## Throughput and latency",
        "",
        "Operations per second, and p50 / p99 latency in milliseconds.",
        "",
        "| event | callers | floor ops/s | ours ops/s | naive ops/s "
        "| floor p50 / p99 | ours p50 / p99 | naive p50 / p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for event in EVENTS:
        for level in levels:
            cells = [samples[(event.name, level, impl)] for impl in IMPLS]
            throughput = " | ".join(f"{cell['throughput']:.0f}" for cell in cells)
            latency = " | ".join(f"{cell['p50_ms']:.1f} / {cell['p99_ms']:.1f}" for cell in cells)
            lines.append(f"| {event.label} | {level} | {throughput} | {latency} |")
    lines += [
        "",
        "![Throughput per event](throughput.png)",
        "",
        "![Latency per event](latency.png)",
        "",
        "## Table round trips per event",
        "",
        *round_trip_section(results["round_trips"]),
        "",
        *audience_section(results.get("audiences")),
        *access_markdown(results.get("access")),
        *spend_markdown(results.get("spend")),
        *feed_markdown(results.get("feed")),
        *bigroom_markdown(results.get("bigroom")),
        "## Cold start",
        "",
        "Each case in a fresh interpreter (this machine's Python, `.pyc` files already written), "
        "interleaved, median of the runs. *In-process* is timed inside the interpreter around the imports; "
        "*process* is the whole child process from spawn to exit, as seen by the parent.",
        "",
        "| case | in-process median ms | min | max | process median ms | runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["cold_start"]:
        lines.append(
            f"| {row['case']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['max_ms']:.1f} | "
            f"{row['process_median_ms']:.1f} | {row['repetitions']} |"
        )
    lines += [
        "",
        "Importing `function_app` loads fewer modules than its dependencies alone: `azure.identity.aio` is imported "
        "only for an identity-based storage connection, and azure-core imports `aiohttp` when the first client is "
        "created, which the last row (first answer) includes.",
        "",
        "![Cold start](coldstart.png)",
        "",
        *scale_sections(results),
        "## How it was measured",
        "",
        "- **ours**: the app's functions taken from `function_app.app.get_functions()` and called with what the host "
        "passes: the SignalR trigger's invocation JSON (PascalCase keys) and an `Out` stand-in, or a real "
        "`func.HttpRequest`. Async functions, so the callers are coroutines on one event loop, as in the Python "
        "worker. "
        "Every answer is checked (status, presence message, delivered count).",
        "- **floor** (`bench/floor.py`): the bare `azure.data.tables.aio` calls the event needs, on one shared "
        "client, making the requests of the app's design: with presence, a query of the user's partition, the "
        "expiry-index entry (connect), and one transaction that changes the row and writes the presence row "
        "conditional on the ETag read; without presence, the same for a connect (the presence row written "
        "unchanged) and a "
        "delete (disconnect); one live-rows query (send, presence). No parsing, validation, key escaping or output.",
        "- **floor**, client events: join, leave and setStatus as the app's design makes them "
        "(`mapping/rooms/membership.py`, `mapping/presence/store.py`): join reads the user's partition, writes the "
        "room's member-index row, then one "
        "transaction with the membership row and the presence row on its ETag; leave reads, then deletes the "
        "membership row with the presence row in one transaction (the member-index row is left to readers); "
        "setStatus reads, writes the "
        "expiry-index entry, then one transaction with the row (status and lease) and a new presence pair.",
        "- **minimal** (`bench/floor.py`, round trips only): the least any correct solution needs given the event's "
        "contract, whatever the design; each method's docstring says why no correct solution does with fewer.",
        "- **naive** (`bench/naive.py`, the anti-pattern baseline, never used by the app): the style of the original "
        "SignalR samples: synchronous functions and a synchronous `TableClient`, the table created on every call, "
        "the filter built by pasting the user name into the string, no lease check. Sync functions run on a worker "
        "thread, here one thread per concurrent caller. It shares one client per process (kinder than a client per "
        "call); at 32 callers that client's connection pool (requests' default, 10 connections) overflows, which "
        "is part of the naive way's cost.",
        "- Connect and disconnect use a new user per operation, so each announces presence (online / offline). The "
        "send and presence recipient has its connections seeded before the cell.",
        "- join, setStatus and leave (SignalR client messages, through the `join_room`, `set_status` and `leave_room` "
        "functions) also use a user per operation, each with one tab open and seeded before the cell: a join is of a "
        "further room (the user is in one already), a leave of one of the user's two rooms, a setStatus changes the "
        "user's status (so it is announced with a new version). For ours, the tabs of join and leave cells are "
        "opened through the app's `connected` function, so the app's refresh of the caller (before a join or leave) "
        "is free, as on the instance that served the connect; the round-trip table counts the other case too. The "
        "naive way's client events do the same job without ETags (`bench/naive.py`).",
        "- Azurite is not Azure: it runs on the same cores, in memory, one loopback hop away. The absolute figures "
        "are this machine's; the ratios, and above all the round-trip counts, are what to read.",
        "",
    ]
    return "\n".join(lines)


def scale_sections(results: dict[str, Any]) -> list[str]:
    """Render the sweep at scale (`make bench-sweep`, or the smoke run's) and the counts docs/scale.md rests on."""
    scale = results.get("scale")
    lines = scale_markdown(scale, heading="##") if scale else []
    return lines + per_event_counts(results["round_trips"], scale, results.get("audiences"))


def round_trip_section(rows: list[dict[str, Any]]) -> list[str]:
    """Render the round-trip table (requests per event for each implementation) and what it shows."""
    lines = [
        "HTTP requests to the table service, counted on the wire by a proxy in front of Azurite, one event after a "
        "warm-up call (the process already has its client and its table), except where the row says otherwise.",
        "",
        "**minimal** is the least any correct solution needs given the event's contract, whatever the design "
        "(`bench/floor.py`, `MinimalFloor`, says why for each): connect and disconnect one write and one query of the "
        "user's partition; send and presence reads one query; join one read of the user's partition, the room's "
        "member row, and one transaction (the user's membership row with a guard row on its ETag, so racing joins "
        "keep the 100-room limit), then the snapshot it answers, one query of the room's partition (a member "
        "already: the read and the snapshot); leave the user's membership row deleted blind; setStatus one read "
        "and one transaction "
        "(the status in the row, and a version rewritten on its ETag, so the highest version is the current "
        "status). **floor** is the app's design as bare SDK calls. **naive**: `bench/naive.py`.",
        "",
        "| event | minimal | floor | ours | naive | ours, by request |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(round_trip_line(row))
    extra = _above(rows, "floor")
    floor_text = (
        "The app makes the floor's requests and no more"
        if not extra
        else f"The app makes more requests than the floor in: {', '.join(extra)}"
    )
    gaps = _gaps(rows)
    gap_text = (
        " Where ours makes more than the minimal floor, the difference is "
        + "; ".join(f"{why} ({', '.join(scenarios)})" for why, scenarios in gaps.items())
        + "."
        if gaps
        else ""
    )
    cheap = [f"*{row['scenario']}*" for row in rows if "naive" in row and row["naive"]["total"] <= row["ours"]["total"]]
    naive_extra = (
        "the naive way adds a create-table request to every event, and skips the expiry index, the presence "
        "versions and the ETags"
        + (f": as many requests as the app or fewer in {', '.join(cheap)}, more in the others" if cheap else "")
    )
    lines += [
        "",
        f"{floor_text}; {naive_extra}.{gap_text} Against real Table Storage each request is a network round trip "
        "(milliseconds in-region), so these counts carry over to Azure when the local timings do not.",
    ]
    return lines


def audience_section(audiences: dict[str, Any] | None) -> list[str]:
    """Render the audiences-and-grace section: each figure beside its goal, then how it was measured."""
    if not audiences:
        return []
    plan, fanout = audiences["plan"], audiences["fanout"]
    lines = [
        "## Audiences and grace",
        "",
        "Who hears a presence change, counted as Azure SignalR Service bills it (one message per recipient "
        "connection: the emulator's `/admin/messages`), and the table and queue requests of a reload, a last "
        "disconnect, its grace decision, a big room's snapshot and a change of a user in R rooms (on the wire, "
        "through the bench's proxies). Goals from the issue; *met* when the figure is within its bound.",
        "",
        "| figure | measured | goal | met |",
        "|---|---:|---|---|",
    ]
    for row in audiences["figures"]:
        met = "–" if row["bound"] is None else "yes" if row["met"] else "**no**"
        lines.append(f"| {row['figure']} | {row['measured']:,} | {row['goal']} | {met} |")
    scoped = fanout["scoped"]
    reload = scoped["reload"]
    lines += [
        "",
        f"- **Fan-out** (the real system: the SignalR emulator and the local host as processes, "
        f"{fanout['online']:,} connections opened by light Python clients speaking the JSON hub protocol, in "
        f"{fanout['open_seconds']:.0f} s; grace {plan['grace_seconds']} s): the subject, one tab, is in "
        f"{plan['rooms']} rooms of {plan['room_size']} members and {plan['watchers']} connections watch it, so its "
        f"audience is {plan['audience']} connections (its own tab hears each room's copy too). A setStatus billed "
        f"{scoped['set_status']['billed_presence']} messages "
        f"({_groups(scoped['set_status']['by_group'])}); its last disconnect, announced by the grace decision, "
        f"{scoped['last_disconnect']['billed_presence']} (its tab is gone). The clients counted "
        f"{scoped['set_status']['received_presence']} and {scoped['last_disconnect']['received_presence']} "
        "received. Then the host is restarted with `PRESENCE_AUDIENCE=hub` (the clients stay connected to the "
        f"emulator): {fanout['hub']['set_status']['billed_presence']:,} and "
        f"{fanout['hub']['last_disconnect']['billed_presence']:,}, one per connection of the hub.",
        f"- **Reload** within the grace: the subject's tab closes and a new one opens once the disconnect is "
        f"handled; the decision, due {plan['grace_seconds']} s later, finds the user back. Table requests "
        f"{_ops(reload['table'])}; the app's queue requests {_ops(reload['app_queue'])}; the queue trigger's own "
        f"polling besides (the Functions host's, billed by Azure too, not counted as the app's): "
        f"{_ops(reload['trigger_queue'])}.",
        "- **Requests** (in-process: the app's functions called as the host calls them, grace 1 s, after a warm-up "
        "user doing the same): a user in R rooms with one tab sets a status (the read, the index entry, the "
        "transaction, and per room one copy: the member's index row read with the room's tally, then both written "
        "in one transaction, tally T1), closes its tab (the row stamped ended, the decision enqueued) and its grace "
        "decision runs (the read, the transaction, the copies). A join into a room whose member index holds "
        f"{audiences['requests']['snapshot']['members']:,} rows and its tally: its snapshot is the index's pages "
        "(1,000 rows a page; the joiner's own row makes one more), beside the join's own requests "
        f"({_ops(audiences['requests']['snapshot']['join'])} in all).",
        "",
    ]
    return lines


def access_markdown(access: dict[str, Any] | None, *, heading: str = "##") -> list[str]:
    """Render the access section (`bench/access.py`): each event's requests beside its floor, then how."""
    if not access:
        return []
    plan, rows = access["plan"], {row["key"]: row for row in access["figures"]}
    lines = [
        f"{heading} Access: grants, revokes, refused joins, disconnect-all",
        "",
        "Table requests on the wire (the bench's proxy in front of Azurite) of each event of issue 30, beside its "
        "floor: the requests the event needs at least, or the event whose count it should equal; *over* is ours "
        "less the floor. SignalR REST requests counted by the local emulator's REST surface (in this process), by "
        "route; the output binding's group actions and messages besides (in the JSON). Each user has "
        f"{plan['tabs']} tabs; `ROOMS_OPEN={plan['rooms_open']}`, `PRESENCE_AUDIENCE={plan['presence_audience']}`. "
        f"Counted {access['date']} ({access['duration_seconds']:.0f} s; alone: `python -m bench.access`).",
        "",
        "| event | table requests | floor | over | the floor is | ours, by request | SignalR REST requests |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in access["figures"]:
        lines.append(access_line(row))
    goals = [row for row in access["figures"] if row["goal"]]
    missed = [row["event"] for row in goals if not row["met"]]
    over = [row for row in access["figures"] if not row["met"] and not row["goal"]]
    join, granted, refused = rows["open_join"], rows["granted_join"], rows["refused_join"]
    lines += [
        "",
        f"The issue's requirements: a granted join costs what a join costs today ({granted['table']['total']} table "
        f"requests, today's join {join['table']['total']}), and a refused join makes {_reads_writes(refused['table'])} "
        "(floor: 1 read, no write): "
        + ("met." if not missed else f"**missed**: {'; '.join(missed)}.")
        + (" Over their floors besides:" if over else ""),
        *(
            ["", *(f"- *{row['event']}*: {_over(row)}: {row['over_why'] or 'not explained'}." for row in over)]
            if over
            else []
        ),
        "",
        f"SignalR REST requests: a client's join {rows['open_join']['signalr']['total']} (the caller added to the "
        f"room's group before its snapshot is read), a grant {rows['grant']['signalr']['total']} and a revoke "
        f"{rows['revoke']['signalr']['total']} (one group addition or removal per tab, before the answer), a "
        f"disconnect-all {rows['disconnect_all']['signalr']['total']} (each live tab closed by its id, then each "
        "spelling of the user's name closed by user id), a refused join none.",
        "",
        "- In-process, as the audiences section's requests: the app's functions called as the host calls them "
        "(`join_room` and `leave_room` invocations with the token's claims; `room_member` PUT and DELETE and "
        "`disconnect_user` POST as real requests, their answers checked against the OpenAPI document). Each "
        "lifecycle runs for a warm-up user, then for the counted one; each user's rooms are their own, so a snapshot "
        "lists the user alone. The tabs are opened through the app's `connected`, so the refresh before a client's "
        "join is free, as on the instance that served the connect.",
        "- SignalR Service is the local emulator served in the bench's process, through the app's own REST client; "
        "it holds no WebSocket for these tabs, so it answers a group addition 404 (left to the output binding) and "
        "a removal or a close 200 or 204: the counts do not depend on it.",
        "- The app's policy admits `staff.*` rooms to a token with `role: staff` and leaves other rooms to the "
        "settings (the refused join asks it, and it says nothing). Grace off, as the round-trip table; then on "
        f"({plan['grace_seconds']} s) for a second disconnect-all, whose queued decisions are taken off the queue "
        "once due and run as the queue trigger runs them (the app's queue requests counted: put message).",
        "",
    ]
    return lines


def access_line(row: dict[str, Any]) -> str:
    """Render one access row: ours, its floor, ours less the floor, by request, SignalR REST by route."""
    table = row["table"]
    detail = ", ".join(f"{op} {n}" for op, n in table["by_operation"].items())
    if row.get("queue", {}).get("total"):
        detail += "; queue: " + ", ".join(f"{op} {n}" for op, n in row["queue"]["by_operation"].items())
    presence = row["output"]["messages"].get("presence", 0)
    if presence:
        detail += f"; output: {presence} presence message(s)"
    rest = row["signalr"]
    routes = ", ".join(f"{_route(route)} {n}" for route, n in rest["by_operation"].items())
    floor = NOT_COUNTED if row["floor"] is None else str(row["floor"])
    return (
        f"| {row['event']} | {table['total']} | {floor} | {_over(row)} | {row['floor_is']} | {detail} | "
        f"{rest['total']}{f' ({routes})' if routes else ''} |"
    )


def _over(row: dict[str, Any]) -> str:
    """Ours less the floor: table requests, and queue requests over the floor's where it has one."""
    if row["floor"] is None:
        return NOT_COUNTED
    parts = [f"{row['table']['total'] - row['floor']:+d}"] if row["table"]["total"] != row["floor"] else []
    if row.get("floor_writes") is not None and row["table"]["writes"] > row["floor_writes"]:
        parts.append(f"{row['table']['writes'] - row['floor_writes']:+d} write(s)")
    queue = row.get("queue", {}).get("total", 0)
    if row.get("floor_queue") is not None and queue > row["floor_queue"]:
        parts.append(f"{queue - row['floor_queue']:+d} queue")
    return ", ".join(parts) or "0"


def _route(route: str) -> str:
    """A REST route without its common prefix: `DELETE connections/{connection}`."""
    method, _, path = route.partition(" ")
    return f"{method} {path.removeprefix('/api/hubs/{hub}/')}"


def _access_summary(access: dict[str, Any] | None) -> list[str]:
    if not access:
        return []
    rows = {row["key"]: row for row in access["figures"]}

    def total(key: str) -> int:
        return int(rows[key]["table"]["total"])

    def rest(key: str) -> int:
        return int(rows[key]["signalr"]["total"])

    tabs = access["plan"]["tabs"]
    return [
        f"- Access: a granted join makes {total('granted_join')} table requests (today's join "
        f"{total('open_join')}), a refused join {_reads_writes(rows['refused_join']['table'])}; a grant "
        f"{total('grant')} and {rest('grant')} SignalR REST request(s), a revoke {total('revoke')} (a leave "
        f"{total('granted_leave')}) and {rest('revoke')}; a disconnect-all of {tabs} tabs {total('disconnect_all')} "
        f"(floor {rows['disconnect_all']['floor']}) and {rest('disconnect_all')} SignalR closes."
    ]


def _reads_writes(table: dict[str, Any]) -> str:
    reads, writes = table["reads"], table["writes"]
    return f"{reads} read{'' if reads == 1 else 's'} and {writes or 'no'} write{'' if writes == 1 else 's'}"


def merge_into_latest(section: str, figures: dict[str, Any], latest: Path) -> bool:
    """Put one section's figures into the last `make bench`'s report (latest.json's `section`), render latest.md;
    False when there is no report."""
    path = latest / "latest.json"
    if not path.exists():
        return False
    report = json.loads(path.read_text())
    report[section] = figures
    path.write_text(json.dumps(report, indent=1) + "\n")
    (latest / "latest.md").write_text(markdown(report))
    return True


def write_section_alone(
    section: str, figures: dict[str, Any], lines: list[str], out: Path, report: Path, *, merge: bool = True
) -> None:
    """Write a section run alone: `<section>.json` and `.md` (`lines`) into `out`, and its figures into the report in
    `report` if there is one (and `merge`)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{section}.json").write_text(json.dumps(figures, indent=1) + "\n")
    (out / f"{section}.md").write_text("\n".join(lines))
    if merge and merge_into_latest(section, figures, report):
        logger.info("put the figures into %s", report / "latest.md")


def _ops(counted: dict[str, Any]) -> str:
    detail = ", ".join(f"{op} {n}" for op, n in counted["by_operation"].items())
    return f"{counted['total']}" + (f" ({detail})" if detail else "")


def _groups(by_group: dict[str, int]) -> str:
    presence = sum(n for group, n in by_group.items() if group.startswith("~presence."))
    rooms = ", ".join(f"{group} {n}" for group, n in by_group.items() if not group.startswith("~presence."))
    return f"the presence group {presence}" + (f", {rooms}" if rooms else "")


def _audience_summary(audiences: dict[str, Any] | None) -> list[str]:
    if not audiences:
        return []
    rows = {row["key"]: row for row in audiences["figures"]}
    bounded = [row for row in rows.values() if row["bound"] is not None]
    missed = [row["figure"] for row in bounded if not row["met"]]
    online = audiences["fanout"]["online"]
    return [
        f"- Audiences and grace: a setStatus reaches {rows['fanout_scoped_set_status']['measured']} connections of "
        f"{online:,} online ({rows['fanout_hub_set_status']['measured']:,} with `PRESENCE_AUDIENCE=hub`); a reload "
        f"within the grace announces {rows['reload_messages']['measured']} and makes "
        f"{rows['reload_table_requests']['measured']} table requests and {rows['reload_queue_requests']['measured']} "
        "queue request(s) in all; "
        + (
            f"all {len(bounded)} bounded figures within their goals."
            if not missed
            else f"{len(missed)} of {len(bounded)} bounded figures over their goals: {'; '.join(missed)}."
        )
    ]


def round_trip_line(row: dict[str, Any]) -> str:
    """Render one round-trip row: the totals of each implementation (a dash where not counted), ours by request."""
    counts = [str(row[impl]["total"]) if impl in row else NOT_COUNTED for impl in ROUND_TRIP_IMPLS]
    detail = ", ".join(f"{op} {n}" for op, n in row["ours"]["by_operation"].items())
    if "result" in row:
        outcome = row["result"]
        detail += f" → {outcome}" if isinstance(outcome, str) else f" (sweep result: {_fields(outcome)})"
    return f"| {row['scenario']} | {' | '.join(counts)} | {detail} |"


def _above(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    """The scenarios where ours makes more requests than `baseline`, as "scenario +n"."""
    return [
        f"*{row['scenario']}* +{row['ours']['total'] - row[baseline]['total']}"
        for row in rows
        if baseline in row and "ours" in row and row["ours"]["total"] > row[baseline]["total"]
    ]


def _gaps(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The scenarios where ours makes more requests than the minimal floor, grouped by the reason the row gives."""
    gaps: dict[str, list[str]] = {}
    for row in rows:
        if "minimal" in row and row["ours"]["total"] > row["minimal"]["total"]:
            why = row.get("why") or "not explained"
            gaps.setdefault(why, []).append(f"*{row['scenario']}* +{row['ours']['total'] - row['minimal']['total']}")
    return gaps


def _round_trip_summary(rows: list[dict[str, Any]]) -> str:
    """Summarise, from the counted round trips, how ours compares with the floor and the naive way."""
    compared = [row for row in rows if "floor" in row and "ours" in row]
    above = _above(compared, "floor")
    parts = [
        f"- Round trips: ours equals the floor in {len(compared) - len(above)} of {len(compared)} measured events"
        + (f" (more in: {', '.join(above)})" if above else "")
    ]
    minimal = [row for row in compared if "minimal" in row]
    if minimal:
        gaps = _gaps(minimal)
        extra = sum(len(scenarios) for scenarios in gaps.values())
        parts.append(
            f"against the minimal floor (the least any correct solution needs) ours makes no more requests in "
            f"{len(minimal) - extra} of {len(minimal)} events"
            + (
                ", more in: " + "; ".join(f"{', '.join(scenarios)} ({why})" for why, scenarios in gaps.items())
                if gaps
                else ""
            )
        )
    naive = [row for row in compared if "naive" in row]
    if naive:
        differences = [row["naive"]["total"] - row["ours"]["total"] for row in naive]
        parts.append(
            f"the naive way makes {_signed(min(differences))} to {_signed(max(differences))} requests per event "
            "(it creates the table every time, and skips the expiry index, the presence versions and the ETags)"
        )
    return "; ".join(parts) + "."


def _signed(difference: int) -> str:
    if difference == 0:
        return "as many"
    return f"{abs(difference)} {'more' if difference > 0 else 'fewer'}"


def _fields(outcome: dict[str, Any]) -> str:
    # Lists (e.g. the users a sweep took offline) are shown by their length; the JSON keeps them whole.
    return ", ".join(
        f"{key} {len(value) if isinstance(value, list | tuple) else value}" for key, value in outcome.items()
    )


def _headline(all_ratios: dict[tuple[str, int], dict[str, float]], levels: list[int]) -> list[str]:
    lines = []
    for level in (levels[0], levels[-1]):
        at_level = {event: r for (event, c), r in all_ratios.items() if c == level}
        ours_floor = [r["ours_floor"] for r in at_level.values()]
        naive_ours = [r["naive_ours"] for r in at_level.values()]
        lines.append(
            f"- With {level} caller{'s' if level > 1 else ''}: ours costs {min(ours_floor):.2f}–{max(ours_floor):.2f}× "
            f"the floor (median {statistics.median(ours_floor):.2f}×); the naive way costs "
            f"{min(naive_ours):.2f}–{max(naive_ours):.2f}× ours (median {statistics.median(naive_ours):.2f}×)."
        )
    return lines


def _grid() -> tuple[Any, list[Any]]:
    rows = -(-len(EVENTS) // 3)
    figure, axes = charts.pyplot().subplots(rows, 3, figsize=(15, 4 * rows), constrained_layout=True)
    cells = list(axes.flat)
    for spare in cells[len(EVENTS) :]:
        spare.remove()
    return figure, cells[: len(EVENTS)]


def _plot_per_event(
    samples: dict[tuple[str, int, str], dict[str, Any]],
    levels: list[int],
    path: Path,
    *,
    bar: str,
    ylabel: str,
    title: str,
    dash: str | None = None,
) -> None:
    """One panel per event: a bar per implementation and caller count (`bar`), and a dash for `dash` if given."""
    figure, axes = _grid()
    for axis, event in zip(axes, EVENTS, strict=True):
        for offset, impl in enumerate(IMPLS):
            cells = [samples[(event.name, level, impl)] for level in levels]
            positions = [i + (offset - 1) * 0.27 for i in range(len(levels))]
            label = impl if dash is None else f"{impl} {bar.removesuffix('_ms')}"
            axis.bar(positions, [c[bar] for c in cells], width=0.27, label=label, color=COLOURS[impl])
            if dash is not None:
                axis.scatter(positions, [c[dash] for c in cells], marker="_", s=200, color="black", zorder=3)
        axis.set_title(event.label, fontsize=9)
        axis.set_xticks(range(len(levels)), [f"{level} callers" for level in levels])
        axis.set_ylabel(ylabel)
    axes[0].legend()
    charts.save(figure, title, path, dpi=90)


def _plot_cold_start(rows: list[dict[str, Any]], path: Path) -> None:
    figure, axis = charts.pyplot().subplots(figsize=(11, 3.5), constrained_layout=True)
    labels = [_wrap(row["case"]) for row in rows]
    axis.barh(labels, [row["median_ms"] for row in rows], color="#1f77b4", label="in-process")
    axis.scatter([row["process_median_ms"] for row in rows], labels, color="black", marker="|", s=200, label="process")
    axis.invert_yaxis()
    axis.set_xlabel("median ms")
    axis.tick_params(axis="y", labelsize=7)
    axis.legend(loc="lower right")
    charts.save(figure, "Cold start: importing the app beside its dependencies alone", path, dpi=90)


def _wrap(text: str, width: int = 60) -> str:
    words, lines, current = text.split(), [], ""
    for word in words:
        if current and len(current) + len(word) + 1 > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return "\n".join([*lines, current])


def merge_scale_into_latest(scale: dict[str, Any], latest: Path) -> bool:
    """Put the sweep-at-scale figures into the last `make bench`'s report (latest.json's `scale`), render latest.md."""
    path = latest / "latest.json"
    if not path.exists():
        return False
    report = json.loads(path.read_text())
    report["scale"] = scale
    path.write_text(json.dumps(report, indent=1) + "\n")
    (latest / "latest.md").write_text(markdown(report))
    return True
