"""The bench's presence-feed section (bench/feed.py) against Azurite, at smoke size: every event with the feed off and
on, and the issue's goal holds (issue 33: at most one queue request per change, and no table request added). Counts
only: no timing is asserted."""

from __future__ import annotations

from typing import Any

import pytest

from bench.feed import CHANGE, NOTHING, REPEAT, SMOKE, STEPS, feed_markdown, feed_summary, measure_feed, missed
from testkit.azurite import ROOT, Azurite

pytestmark = pytest.mark.slow

LATEST = ROOT / "bench" / "results" / "latest.md"


@pytest.fixture(scope="module")
async def feed(azurite: Azurite) -> dict[str, Any]:
    """The section measured once for the module, at smoke size."""
    return await measure_feed(azurite, SMOKE)


def rows(feed: dict[str, Any], changes: str) -> dict[str, dict[str, Any]]:
    """The section's rows of one kind of step (a change, no change, a repeat), by key."""
    return {row["key"]: row for row in feed["rows"] if row["changes"] == changes}


def test_every_step_runs_for_every_user_in_both_modes(feed: dict[str, Any]) -> None:
    """Each step of the section is counted once per user with the feed off and once with it on, none failing."""
    assert [row["key"] for row in feed["rows"]] == [step.key for step in STEPS]
    for row in feed["rows"]:
        assert row["off"]["events"] == row["on"]["events"] == SMOKE.users, row["key"]
        assert row["off"]["failed"] == row["on"]["failed"] == {}, row["key"]


def test_a_change_costs_exactly_one_queue_request(feed: dict[str, Any]) -> None:
    """With the feed on, every event that changes presence or a membership makes exactly one queue request, a Put
    Message, and every event that changes nothing makes none."""
    changes = rows(feed, CHANGE)
    assert len(changes) >= 9
    for key, row in changes.items():
        assert row["on"]["queue_per_event"] == {"1": SMOKE.users}, key
        assert row["on"]["queue"]["by_operation"] == {"put message": SMOKE.users}, key
    nothing = rows(feed, NOTHING)
    assert set(nothing) == {"set_status_same", "join_again"}
    for key, row in nothing.items():
        assert row["on"]["queue"]["total"] == 0, key


def test_the_feed_adds_no_table_request(feed: dict[str, Any]) -> None:
    """Every step makes the same table requests, by operation, with the feed on as with it off; off, no queue
    request at all."""
    for row in feed["rows"]:
        assert row["on"]["table"] == row["off"]["table"], row["key"]
        assert row["off"]["queue"]["total"] == 0, row["key"]


def test_each_change_is_one_message_on_the_queue_under_a_higher_version(feed: dict[str, Any]) -> None:
    """The messages read back: one per change, of the step's kind and party and a higher version than the subject's
    last; none for an event that changes nothing; a repeat's at most one, under the version it repeats."""
    for key, row in rows(feed, CHANGE).items():
        messages = row["messages"]
        assert messages["per_event"] == {"1": SMOKE.users}, key
        assert messages["kinds"] == {row["message"][0]: SMOKE.users}, key
        assert set(messages["versions"]) <= {"first", "higher"}, key
        assert messages["wrong"] == [], key
    for key, row in rows(feed, NOTHING).items():
        assert row["messages"]["total"] == 0, key
    for key, row in rows(feed, REPEAT).items():
        assert set(row["messages"]["per_event"]) <= {"0", "1"}, key
        assert set(row["messages"]["versions"]) <= {"same"}, key
        assert row["on"]["queue"]["total"] == row["messages"]["total"], key


def test_every_goal_is_met_and_the_section_renders(feed: dict[str, Any]) -> None:
    """No goal is missed; the section has a row per step, and the headline line says every goal met."""
    assert missed(feed) == []
    section = feed_markdown(feed)
    assert section[0] == "## The presence feed: what it costs when on"
    table = [line for line in section if line.startswith("| ") and not line.startswith("| event ")]
    assert len(table) == len(STEPS)
    assert all(line.endswith("| yes |") for line in table), table
    [summary] = feed_summary(feed)
    assert summary.endswith("every goal met.")


def test_the_report_holds_the_feed_section() -> None:
    """The committed report (bench/results/latest.md) has the section, a row per step, every goal met."""
    section = LATEST.read_text().split("\n## The presence feed: ", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| event ")]
    assert len(table) == len(STEPS), table
    assert all(line.endswith("| yes |") for line in table), table
    assert "**missed**" not in section
