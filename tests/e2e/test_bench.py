"""The benchmark's own parts against a real Azurite: the round-trip counter and the naive baseline's equivalence."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from bench.audience import AudiencePlan, measure_audiences
from bench.floor import Floor
from bench.naive import NaiveFunctions
from bench.proxy import CountingProxy, classify, classify_queue
from bench.report import NOT_COUNTED, ROUND_TRIP_IMPLS, audience_section, round_trip_line
from bench.roundtrips import CLIENT_SCENARIOS, count_client_round_trips
from bench.scale import Plan as ScalePlan
from bench.scale import goals as scale_goals
from bench.scale import markdown as scale_markdown
from bench.scale import measure as measure_scale
from bench.workload import fresh_table
from mapping.presence.rows import ConnectionEntity
from testkit.azurite import ROOT, Azurite, connection_string
from testkit.functions_host import Out, http, http_request


def test_classify_names_table_operations() -> None:
    """Requests are named by the Table operation they are, from method and path."""
    assert classify("POST", "/devstoreaccount1/Tables") == "create table"
    assert classify("MERGE", "/devstoreaccount1/t(PartitionKey='a',RowKey='b')") == "upsert/update (merge)"
    assert classify("DELETE", "/devstoreaccount1/t(PartitionKey='a',RowKey='b')") == "delete"
    assert classify("GET", "/devstoreaccount1/t()?$filter=PartitionKey%20eq%20'a'") == "query"
    assert classify("POST", "/devstoreaccount1/$batch") == "batch"


def test_classify_queue_names_queue_operations() -> None:
    """Queue requests are named too: the app's enqueue apart from its trigger's polls and deletes."""
    assert classify_queue("POST", "/devstoreaccount1/presence-grace/messages?visibilitytimeout=15") == "put message"
    assert classify_queue("GET", "/devstoreaccount1/presence-grace/messages?numofmessages=16") == "get messages"
    assert classify_queue("DELETE", "/devstoreaccount1/presence-grace/messages/abc?popreceipt=x") == "delete message"
    assert classify_queue("PUT", "/devstoreaccount1/presence-grace") == "create queue"


async def test_proxy_counts_each_request_on_the_wire(azurite: Azurite) -> None:
    """A first floor connect with presence is three requests (the user read, the index entry, the row and presence
    transaction); the proxy sees them, and the delete after."""
    async with fresh_table(azurite.connection_string) as table:
        with CountingProxy(azurite.port) as proxy:
            floor = Floor(connection_string(proxy.port), table, ttl=timedelta(minutes=10))
            try:
                with proxy.counting() as counts:
                    await floor.connect("alice", "conn-1")
                    await floor.disconnect("alice", "conn-1", presence=False)
            finally:
                await floor.close()
    assert counts == {"query": 1, "upsert/update (merge)": 1, "batch": 1, "delete": 1}


async def test_naive_send_delivers_what_the_app_delivers(azurite: Azurite, app_env: dict[str, str]) -> None:
    """For plain names the naive baseline does the same job as the app: one delivery per connection of the user."""
    table = app_env["MAPPING_TABLE"]
    naive = NaiveFunctions(azurite.connection_string, table)
    try:
        naive.client.create_table()
        for index in range(3):
            naive.client.upsert_entity(ConnectionEntity.new("bob", f"bob-c{index}", hub="chat").to_table())
        body = {"to": "bob", "message": {"text": "hi"}}
        naive_out, ours_out = Out(), Out()
        naive_response = naive.send(http_request("POST", "send", body=body), naive_out)
        status, ours_body, _ = await http("send", http_request("POST", "send", body=body), signalr=ours_out)
    finally:
        naive.close()
    assert (naive_response.status_code, json.loads(naive_response.get_body())) == (status, ours_body)
    assert sorted(naive_out.messages, key=json.dumps) == sorted(ours_out.messages, key=json.dumps)
    assert ours_body == {"to": "bob", "delivered": 3}


LATEST = ROOT / "bench" / "results" / "latest.md"


def _reported_counts(scenario: str) -> list[str]:
    """The request counts (minimal, floor, ours, naive; a dash where not counted) of a row of latest.md."""
    lines = [line for line in LATEST.read_text().splitlines() if line.startswith(f"| {scenario} |")]
    assert len(lines) == 1, f"{scenario}: not in latest.md; run make bench"
    return [cell.strip() for cell in lines[0].split("|")[2 : 2 + len(ROUND_TRIP_IMPLS)]]


def _totals(row: dict[str, Any]) -> list[str]:
    return [str(row[impl]["total"]) if impl in row else NOT_COUNTED for impl in ROUND_TRIP_IMPLS]


async def test_client_events_make_the_requests_the_report_says(azurite: Azurite, restored_environment: None) -> None:
    """join, setStatus and leave are counted for every design and make, on the wire now, the requests that the
    committed report (bench/results/latest.md) gives them; the app makes exactly the design floor's."""
    rows = {row["scenario"]: row for row in await count_client_round_trips(azurite.connection_string)}
    assert list(rows) == [label for label, _options, _why in CLIENT_SCENARIOS]
    for scenario, row in rows.items():
        line = round_trip_line(row)
        assert [cell.strip() for cell in line.split("|")[2:6]] == _totals(row)
        assert _reported_counts(scenario) == _totals(row), f"{scenario}: latest.md is stale; run make bench"
        if "floor" in row:
            assert row["ours"] == row["floor"], scenario
            assert set(row) >= {"minimal", "floor", "ours", "naive"}, scenario
    join, member, elsewhere, status, leave = rows.values()
    # A join: the user's read, the index row and the room's tally read together and written in one transaction (rooms
    # T1), the membership's transaction, the flag cleared, the caller's snapshot (roster).
    assert join["ours"]["by_operation"] == {"query": 3, "upsert/update (merge)": 1, "batch": 2}
    assert member["ours"]["by_operation"] == {"query": 3}  # the repeat within a minute reads the tally (rooms R5)
    assert elsewhere["ours"]["by_operation"] == {"query": 4, "upsert/update (merge)": 2, "batch": 3}
    assert status["ours"]["by_operation"] == {"query": 1, "upsert/update (merge)": 1, "batch": 1}
    assert leave["ours"]["by_operation"] == {"query": 2, "batch": 2}
    # The minimal join includes the snapshot it answers (one query of the room's members).
    assert [row["minimal"]["total"] for row in (join, member, status, leave)] == [4, 2, 2, 1]


def test_the_report_names_each_client_event() -> None:
    """The committed report times and counts join, setStatus and leave."""
    text = LATEST.read_text()
    for label in ("join(room)", "setStatus(status)", "leave(room)"):
        timed = re.findall(rf"^\| {re.escape(label)} \(SignalR [^|]*\| (1|8|32) \|", text, flags=re.MULTILINE)
        assert len(timed) == 2 * 3, label  # the ratio table and the throughput table, three concurrencies each


async def test_audiences_and_grace_hold_their_goals(azurite: Azurite, restored_environment: None) -> None:
    """The audiences section, small (30 connections online): a change reaches its audience, not the hub; a reload
    within the grace announces nothing; the requests of a reload, a last disconnect, its decision, a 1,000-member
    room's snapshot and a change in R rooms stay within their goals. Counts only, no timings."""
    plan = AudiencePlan(online=30)
    results = await measure_audiences(azurite, plan)
    fanout, requests = results["fanout"], results["requests"]
    for event in ("set_status", "last_disconnect"):
        scoped, hub = fanout["scoped"][event], fanout["hub"][event]
        assert 0 < scoped["billed_presence"] <= plan.audience, (event, scoped)
        assert scoped["billed_presence"] == scoped["received_presence"], event  # billed = delivered
        assert hub["billed_presence"] >= plan.online - 1 > plan.audience, (event, hub)
    reload = fanout["scoped"]["reload"]
    assert (reload["billed_presence"], reload["received_presence"]) == (0, 0)
    assert reload["table"]["total"] <= 5, reload["table"]
    assert reload["app_queue"]["by_operation"] == {"put message": 1}
    r0 = requests["changes"]["0"]
    assert r0["disconnect"]["table"]["total"] <= 2
    assert r0["disconnect"]["queue"]["by_operation"] == {"put message": 1}
    assert r0["decision"]["table"]["total"] <= 2
    assert requests["snapshot"]["listed"] == plan.big_room + 1
    assert requests["snapshot"]["snapshot"] <= 10
    for rooms, counted in requests["changes"].items():
        # A copy per room is two requests: the member's row and the room's tally read together, then written.
        assert counted["set_status"]["table"]["total"] <= 3 + 2 * int(rooms), (rooms, counted)
        assert counted["decision"]["table"]["total"] <= 3 + 2 * int(rooms), (rooms, counted)
    assert all(row["met"] for row in results["figures"]), [r for r in results["figures"] if not r["met"]]
    section = "\n".join(audience_section(results))
    assert section.startswith("## Audiences and grace")
    assert section.count("| yes |") == sum(row["bound"] is not None for row in results["figures"])


def test_the_report_holds_the_audiences_and_grace_goals() -> None:
    """The committed report has the Audiences and grace section: 1,000 connections online, every bounded figure
    within its goal (the hub figures are for comparison)."""
    section = LATEST.read_text().split("\n## Audiences and grace\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| figure ")]
    assert len(rows) == 17, rows
    assert all(line.endswith(("| yes |", f"| {NOT_COUNTED} |")) for line in rows), rows
    assert sum(line.endswith(f"| {NOT_COUNTED} |") for line in rows) == 2  # the hub audience, for comparison
    assert sum("1,000 connections online" in line for line in rows) == 4


async def test_the_sweep_at_scale_keeps_its_bounds_at_smoke_size(azurite: Azurite) -> None:
    """At smoke size the scale bench's counts keep the goals docs/scale.md states (no timing is asserted): SignalR
    requests per listing <= N/200 + K + 10, table requests per sweep of N quiet listed connections <= N/200 + 20, and
    the busiest index partition's share <= 1/S + 5%; every connection is listed and none is deleted."""
    plan = ScalePlan(connections=2000, latency_ms=0, index_writes=1000, index_users=200, connects=200, users=200)
    results = await measure_scale(plan, connection_string=azurite.connection_string)
    listings = {run["groups"]: run for run in results["listings"]}
    assert set(listings) == {1, 16}
    for groups, run in listings.items():
        assert run["listed"] == 2000
        assert run["signalr_requests"] <= 2000 / 200 + groups + 10
    assert listings[1]["signalr_requests"] == 2000 // 200  # one group, its pages in turn
    spreads = {(run["run"], run["shards"]): run for run in results["spreads"]}
    assert set(spreads) == {(run, shards) for run in ("index writes", "connects") for shards in (1, 8)}
    for (run, shards), spread in spreads.items():
        assert spread["index_writes"] == (1000 if run == "index writes" else 200)
        assert len(spread["index_totals"]) == shards
        assert max(spread["index_totals"].values()) / spread["index_writes"] <= 1 / shards + 0.05, (run, shards)
        if run == "connects":
            swept = spread["sweep"]
            assert (swept["listed"], swept["deleted"], swept["complete"]) == (200, 0, True)
            assert swept["table_requests"] <= 200 / 200 + 20
            assert swept["signalr_requests"] <= 200 / 200 + swept["groups"] + 10
    assert all(met for _what, _measured, _goal, met in scale_goals(results))
    section = "\n".join(scale_markdown(results, heading="##"))
    assert "## The sweep at scale" in section
    assert "**no**" not in section
