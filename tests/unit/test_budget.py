"""A connection's call budget: the bucket's arithmetic at its edges, and what one process counts and learns."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mapping.keys import connection_key, user_key
from mapping.presence.budget import Bucket, Budgets, weight_of
from mapping.presence.rows import ConnectionEntity
from mapping.settings import Settings

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def budgets(**env: str) -> Budgets:
    """A process's budgets with the given settings (no table: these tests publish nothing)."""
    settings = Settings.from_environment({"MAPPING_STORAGE": "x", **env})
    return Budgets(None, settings, clock=lambda: T0)  # type: ignore[arg-type]


def row(tokens: float | None, at: datetime | None, etag: str) -> ConnectionEntity:
    """A connection row of ann's c1 with a published level (None: never published)."""
    entity = ConnectionEntity.new("ann", "c1", hub="chat", now=T0)
    return replace(entity, tokens=tokens or 0.0, tokens_at=at, etag=etag)


@pytest.mark.parametrize(
    ("tokens", "elapsed", "level"),
    [
        (0.0, 1.0, 5.0),  # refills at the rate
        (18.0, 10.0, 20.0),  # never above the burst
        (-10.0, 1.0, -5.0),  # a debt refills like any level
        (3.0, -30.0, 3.0),  # a clock gone backwards refills nothing, and takes nothing
    ],
)
def test_the_bucket_refills_at_its_rate_up_to_its_burst(tokens: float, elapsed: float, level: float) -> None:
    """The level a bucket of 20 at 5 a second reaches after `elapsed` seconds."""
    assert Bucket(20, 5).level(tokens, T0, T0 + timedelta(seconds=elapsed)) == level


def test_waiting_is_what_is_missing_over_the_rate() -> None:
    """A bucket that cannot pay waits for the missing tokens; a weight above the burst waits for a full bucket."""
    bucket = Bucket(20, 5)
    assert bucket.wait(3.0, 1) == 0
    assert bucket.wait(0.5, 1) == pytest.approx(0.1)
    assert bucket.wait(-4.0, 1) == pytest.approx(1.0)
    assert bucket.wait(0.0, 50) == pytest.approx(4.0)


def test_a_burst_is_accepted_then_calls_are_refused_until_the_bucket_refills() -> None:
    """20 calls at once pass, the 21st is refused with its wait, and one more passes 0.2 s later."""
    mine = budgets()
    mine.observe(user_key("ann"), {connection_key("c1"): row(None, None, "e1")})
    assert all(mine.take("ann", "c1", 1, now=T0).allowed for _ in range(20))
    refused = mine.take("ann", "c1", 1, now=T0)
    assert (refused.allowed, refused.retry_after, refused.answer) == (False, 0.2, True)
    assert mine.take("ann", "c1", 1, now=T0 + timedelta(seconds=0.2)).allowed


def test_one_refusal_a_second_is_answered() -> None:
    """Within a second of an answered refusal the next refusals are silent; after it one is answered again."""
    mine = budgets(CLIENT_CALL_BURST="1", CLIENT_CALL_RATE="1")
    mine.observe(user_key("ann"), {connection_key("c1"): row(0.0, T0, "e1")})
    answers = [mine.take("ann", "c1", 1, now=T0 + timedelta(seconds=s)).answer for s in (0.0, 0.3, 0.9)]
    assert answers == [True, False, False]
    assert mine.take("ann", "c1", 1, now=T0 + timedelta(seconds=1)).allowed  # refilled meanwhile
    assert mine.take("ann", "c1", 1, now=T0 + timedelta(seconds=1.1)).answer  # a second after the last answer


def test_a_process_that_never_read_the_row_lets_one_call_through_to_learn_it() -> None:
    """Unknown here: one call passes; the row it reads says the bucket is empty, so the next is refused."""
    mine = budgets()
    assert mine.take("ann", "c1", 1, now=T0).allowed
    mine.observe(user_key("ann"), {connection_key("c1"): row(0.0, T0, "e2")})  # another process spent it all
    assert not mine.take("ann", "c1", 1, now=T0).allowed


def test_what_another_process_published_is_learnt_and_what_this_one_spent_stays_counted() -> None:
    """A newer published level replaces the one known; the spend of this process since is still subtracted."""
    mine = budgets()
    mine.observe(user_key("ann"), {connection_key("c1"): row(None, None, "e1")})
    for _ in range(5):
        assert mine.take("ann", "c1", 1, now=T0).allowed
    mine.observe(user_key("ann"), {connection_key("c1"): row(6.0, T0, "e2")})  # another spent 14
    assert [mine.take("ann", "c1", 1, now=T0).allowed for _ in range(2)] == [True, False]  # 6 - 5 = 1 left


def test_weights_and_charges() -> None:
    """A watch of many users takes one token and one per ten users; a snapshot's extra pages are charged after."""
    assert weight_of("watch", [[f"u{i}" for i in range(100)]]) == 11
    assert weight_of("join", ["room"]) == 1
    mine = budgets()
    mine.observe(user_key("ann"), {connection_key("c1"): row(None, None, "e1")})
    assert mine.take("ann", "c1", 11, now=T0).allowed
    mine.charge("ann", "c1", 9)
    assert not mine.take("ann", "c1", 1, now=T0).allowed


def test_a_rate_of_zero_turns_the_budget_off() -> None:
    """CLIENT_CALL_RATE=0: every call passes."""
    mine = budgets(CLIENT_CALL_RATE="0")
    assert all(mine.take("ann", "c1", 1, now=T0).allowed for _ in range(1000))
