"""The bench's big-room section (bench/bigroom.py) on the real stack at smoke size: every change reaches a member, the
unbatched room is billed a message per member per change, the batched one far fewer, and a late join's snapshot lists
every member. Counts only: no timing is asserted."""

from __future__ import annotations

from typing import Any

import pytest

from bench.bigroom import SMOKE, bigroom_markdown, bigroom_summary, measure_big_room, missed
from testkit.azurite import Azurite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def figures(azurite: Azurite) -> dict[str, Any]:
    """The section measured once for the module, at smoke size."""
    return await measure_big_room(azurite, SMOKE)


def test_every_change_reaches_a_member_in_both_runs(figures: dict[str, Any]) -> None:
    """The observer is told every change (or a later one of the same member), batched and unbatched."""
    for mode, run in figures["runs"].items():
        assert run["delivered"] == SMOKE.changes, mode


def test_unbatched_each_change_is_billed_once_per_member(figures: dict[str, Any]) -> None:
    """Unbatched, each change is one presence message to the room's group: billed once per member's connection."""
    run = figures["runs"]["unbatched"]
    assert run["billed_room"] == SMOKE.changes * SMOKE.members
    assert "presenceBatch" not in run["by_target"]


def test_batched_the_room_is_billed_per_flush_not_per_change(figures: dict[str, Any]) -> None:
    """Batched, the room's group hears presenceBatch messages only, each billed once per member (one 2 KB unit), and
    at least five times fewer than unbatched; each flush was put on the queue once."""
    run = figures["runs"]["batched"]
    assert run["billed_room"] % SMOKE.members == 0
    batches = run["billed_room"] // SMOKE.members
    assert 0 < batches <= SMOKE.changes // 5
    assert run["by_target"]["presenceBatch"] == run["billed_room"]
    assert run["queue"].get("put message", 0) >= 1
    assert figures["ratio"] >= 5


def test_a_late_join_lists_every_member_in_pages(figures: dict[str, Any]) -> None:
    """The late joiner's snapshot lists the whole room (the seeded members, the actors, the observer, itself), in
    pages of at most 100, with a handful of table requests."""
    for run in figures["runs"].values():
        join = run["join"]
        assert join["listed"] == join["members"] == SMOKE.members + 1
        assert join["sync_messages"] == -(-join["members"] // 100)
        assert join["table_total"] <= 2 + -(-join["members"] // 1000) + 4


def test_the_section_renders(figures: dict[str, Any]) -> None:
    """The section and its headline line render the figures; at smoke size the 20x goal is not judged."""
    assert missed(figures) == []
    assert figures["goal"]["applies"] is False
    section = "\n".join(bigroom_markdown(figures))
    assert "| batched |" in section
    assert "| unbatched |" in section
    assert "not judged" in bigroom_summary(figures)[0]
