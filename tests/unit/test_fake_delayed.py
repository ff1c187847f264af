"""The in-memory DelayedActions stand-in (testkit/delayed.py): due times, delivery order, failures, closing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mapping.errors import StorageUnavailableError
from mapping.storage.queue import DelayedActions
from testkit.delayed import FakeDelayedActions, Scheduled

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def fake_at(moment: list[datetime]) -> FakeDelayedActions:
    """Return a fake whose clock reads `moment[0]` (a test moves time by replacing it)."""
    return FakeDelayedActions(clock=lambda: moment[0])


async def test_a_message_is_due_after_its_delay_only() -> None:
    """A message scheduled for 15 s is not due at 14 s and is due at 15 s; a negative delay is due now."""
    clock = [NOW]
    fake = fake_at(clock)
    await fake.schedule("grace", delay=timedelta(seconds=15))
    await fake.schedule("past", delay=timedelta(seconds=-1))
    assert fake.due(NOW + timedelta(seconds=14)) == [Scheduled("past", NOW)]
    clock[0] = NOW + timedelta(seconds=15)
    assert [item.body for item in fake.due()] == ["past", "grace"]


async def test_deliver_due_runs_the_due_ones_in_due_order_and_keeps_the_rest() -> None:
    """Due messages reach the handler earliest first and leave `pending`; later ones stay."""
    fake = fake_at([NOW])
    for body, seconds in (("b", 2), ("a", 1), ("c", 60)):
        await fake.schedule(body, delay=timedelta(seconds=seconds))
    seen: list[str] = []

    async def handler(body: str) -> None:
        seen.append(body)

    assert await fake.deliver_due(handler, now=NOW + timedelta(seconds=5)) == 2
    assert seen == ["a", "b"]
    assert [item.body for item in fake.pending] == ["c"]
    assert [item.body for item in fake.delivered] == ["a", "b"]


async def test_a_failing_handler_leaves_the_message_pending_and_records_the_error() -> None:
    """A handler that raises does not consume the message: it is delivered again on the next call."""
    fake = fake_at([NOW])
    await fake.schedule("flaky", delay=timedelta(0))
    attempts: list[str] = []

    async def handler(body: str) -> None:
        attempts.append(body)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    assert await fake.deliver_due(handler) == 0
    assert [item.body for item, _ in fake.failures] == ["flaky"]
    assert await fake.deliver_due(handler) == 1
    assert attempts == ["flaky", "flaky"]
    assert fake.pending == []


async def test_schedule_raises_what_it_is_told_to_and_close_is_counted() -> None:
    """`fail_with` makes schedule raise that StorageError and record nothing; close() calls are counted."""
    fake = fake_at([NOW])
    fake.fail_with = StorageUnavailableError("queue down")
    with pytest.raises(StorageUnavailableError):
        await fake.schedule("lost", delay=timedelta(0))
    assert fake.pending == []
    await fake.close()
    assert fake.closed == 1


def test_the_fake_satisfies_the_protocol() -> None:
    """The fake can stand wherever the app expects DelayedActions (checked by mypy through this assignment)."""
    actions: DelayedActions = FakeDelayedActions()
    assert callable(actions.schedule)
    assert callable(actions.close)
