"""The bench's spend section (bench/spend.py) against Azurite, on a small plan: every kind of call loops with the call
budget off and on through the emulator and the local host, and the issue's goals hold (issue 31 item 5). Counts only:
no timing is asserted beyond the bucket's own bound (accepted ≤ burst + rate x elapsed)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.spend import KINDS, TOO_MANY, SpendPlan, measure_spend, missed, spend_markdown, spend_summary
from mapping.functions import runtime
from testkit.azurite import ROOT, Azurite

pytestmark = pytest.mark.slow

PLAN = SpendPlan(calls=40, off_calls=20, members=20)
LATEST = ROOT / "bench" / "results" / "latest.md"
# A connection looping setStatus changes never publishes its budget: each call's own write changes the row's ETag
# before the publish, whose merge on the read's ETag then fails (412). Across processes the budget then does not hold.


@pytest.fixture(scope="module")
async def spend(azurite: Azurite) -> AsyncIterator[dict[str, Any]]:
    """The section measured once for the module (the environment put back afterwards)."""
    saved = dict(os.environ)
    try:
        yield await measure_spend(azurite, PLAN)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        await runtime.reset()


def runs(spend: dict[str, Any], mode: str) -> dict[str, dict[str, Any]]:
    """The loops of one mode, by kind."""
    return dict(spend["modes"][mode]["runs"])


def goals(spend: dict[str, Any], what: str, mode: str) -> dict[str, dict[str, Any]]:
    """The goal rows of one kind of goal and mode, by kind of call."""
    return {row["kind"]: row for row in spend["goals"] if row["what"] == what and row["mode"] == mode}


def test_every_kind_loops_with_the_budget_off_and_on(spend: dict[str, Any]) -> None:
    """Off, every call is accepted; on, the loop's calls are accepted or refused, at least one refusal answered, and
    every refusal answered is the caller's one error (the section checks the errors the caller heard besides)."""
    assert list(runs(spend, "off")) == list(runs(spend, "on")) == [kind.key for kind in KINDS]
    for key, run in runs(spend, "off").items():
        assert (run["calls"], run["accepted"], run["refused"]) == (PLAN.off_calls, PLAN.off_calls, 0), key
    for key, run in runs(spend, "on").items():
        assert run["calls"] == PLAN.calls, key
        assert run["accepted"] + run["answered"] + run["silent"] == PLAN.calls, key
        assert run["refused"] > 0, key
        assert run["answered"] >= 1, key
        assert run["billed_by_target"].get("error", 0) == run["answered"], key
        assert run["queue"]["total"] == 0, key


def test_no_message_is_billed_for_a_refused_or_no_op_call(spend: dict[str, Any]) -> None:
    """Billed messages stay within accepted calls x the call's audience (+ one error per refusal answered), budget off
    and on; calls that change nothing bill the caller alone: a status set again its presence, a join again its
    snapshot, an unwatch nothing; a sendToRoom bills the whole room, a status change the room and the caller's group."""
    for mode in ("off", "on"):
        assert all(row["met"] for row in goals(spend, "billed", mode).values()), goals(spend, "billed", mode)
    off, members = runs(spend, "off"), PLAN.members
    snapshot = spend["modes"]["off"]["audience"]["snapshot"]
    assert off["set_status_same"]["billed_by_target"] == {"presence": PLAN.off_calls}
    assert off["join_again"]["billed_by_target"] == {"presenceSync": PLAN.off_calls * snapshot}
    assert off["unwatch"]["billed"] == 0
    assert off["send"]["billed_by_target"] == {"newMessage": PLAN.off_calls}
    assert off["send_to_room"]["billed_by_target"] == {"newMessage": PLAN.off_calls * members}
    assert off["set_status_alternating"]["billed_by_target"] == {"presence": PLAN.off_calls * (members + 1)}


def test_one_process_accepts_at_most_the_bucket(spend: dict[str, Any]) -> None:
    """With the budget on, each loop's accepted calls stay within burst + rate x elapsed, and its refusals are
    answered at most once a second."""
    for what in ("accepted", "answered"):
        rows = goals(spend, what, "on")
        assert len(rows) == len(KINDS), rows
        assert all(row["met"] for row in rows.values()), rows


def test_across_two_processes_a_send_to_room_loop_holds_the_budget(spend: dict[str, Any]) -> None:
    """One connection's sendToRoom every 20 ms for 60 s over two processes: within 1.2 x (burst + rate x 60)."""
    [two] = [two for two in spend["two_processes"] if two["kind"] == "send_to_room"]
    assert two["accepted"] <= two["allowed"], two
    assert two["met"], two


def test_a_set_status_loop_publishes_its_budget(spend: dict[str, Any]) -> None:
    """A connection looping status changes publishes its budget as any other: across two processes its calls stay
    within 1.2 x (burst + rate x 60), and in one its requests are those of the calls plus a publish per 10."""
    [two] = [two for two in spend["two_processes"] if two["kind"] == "set_status_alternating"]
    assert two["met"], two
    assert goals(spend, "table", "on")["set_status_alternating"]["met"]


def test_the_budget_adds_at_most_a_publish_per_ten_calls_to_other_calls(spend: dict[str, Any]) -> None:
    """The calls the budget lets through make the requests they make without it, plus at most one publish per ten
    accepted calls."""
    rows = goals(spend, "table", "on")
    assert [key for key, row in rows.items() if not row["met"]] == [], rows


def test_the_section_renders(spend: dict[str, Any]) -> None:
    """The section: a row per kind and budget, the audiences, the goals; the headline line names the totals."""
    section = spend_markdown(spend)
    assert section[0] == "## What one client may spend: a call budget per connection"
    rows = [line for line in section if line.startswith("| ") and not line.startswith("| call ")]
    assert len(rows) == 2 * len(KINDS)
    assert any(line.startswith("- billed messages ≤ accepted calls") and line.endswith(": met.") for line in section)
    assert f"`{TOO_MANY}`" in "\n".join(section)
    [summary] = spend_summary(spend)
    assert summary.startswith("- What one client may spend")
    assert summary.endswith("every goal met.") == (not missed(spend))


def test_the_report_holds_the_spend_section() -> None:
    """The committed report (bench/results/latest.md) has the section: a row per kind and budget, its goals."""
    section = LATEST.read_text().split("\n## What one client may spend: ", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| call ")]
    assert len(rows) == 2 * len(KINDS), rows
    assert "The issue's goals:" in section
