"""A stand-in for `mapping.storage.queue.DelayedActions` in unit tests: what was scheduled and when it is due."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mapping.errors import StorageError
from mapping.presence.rows import Clock, moment_of, utc_now


@dataclass(frozen=True)
class Scheduled:
    """One scheduled message: its body and the time from which it may be delivered."""

    body: str
    due: datetime


class FakeDelayedActions:
    """Keeps scheduled messages in memory; `deliver_due` hands the due ones to a handler, as the queue trigger would.

    Like the queue, it delivers no sooner than the delay, in due order, and a message whose handler raises stays
    scheduled (delivered again on the next call). Unlike it, nothing is delivered unless a test asks.
    """

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self.clock = clock
        self.pending: list[Scheduled] = []
        self.delivered: list[Scheduled] = []
        self.failures: list[tuple[Scheduled, Exception]] = []  # deliveries whose handler raised (still pending)
        self.closed = 0  # how many times close() was called
        self.fail_with: StorageError | None = None  # set to make schedule() raise it, as an unreachable queue

    async def schedule(self, body: str, *, delay: timedelta) -> None:
        """Record `body`, due `delay` from the clock's now (a negative delay means now)."""
        if self.fail_with is not None:
            raise self.fail_with
        self.pending.append(Scheduled(body, moment_of(None, self.clock) + max(delay, timedelta(0))))

    async def close(self) -> None:
        """Count the call; the fake holds nothing to release."""
        self.closed += 1

    def due(self, now: datetime | None = None) -> list[Scheduled]:
        """Return the pending messages due at `now` (default: the clock's now), earliest first; they stay pending."""
        moment = moment_of(now, self.clock)
        return sorted((item for item in self.pending if item.due <= moment), key=lambda item: item.due)

    async def deliver_due(self, handler: Callable[[str], Awaitable[Any]], *, now: datetime | None = None) -> int:
        """Run `handler` on each due body, earliest first; return how many succeeded (and are no longer pending).

        A handler that raises leaves its message pending, as the queue would, and is recorded in `failures`."""
        succeeded = 0
        for item in self.due(now):
            try:
                await handler(item.body)
            except Exception as error:
                self.failures.append((item, error))
            else:
                self.pending.remove(item)
                self.delivered.append(item)
                succeeded += 1
        return succeeded
