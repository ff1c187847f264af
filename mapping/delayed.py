"""Delayed actions: a message the app sends itself, delivered after a delay (a grace period's decision).

The real carrier is an Azure Storage queue in `AzureWebJobsStorage` (`mapping.queue`): a message enqueued
with an initial visibility delay, picked up by a queue-triggered function. Delivery is at least once,
possibly late, possibly twice: every action is idempotent, and the sweep is the backstop when one is lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol


class DelayedActions(Protocol):
    """Where the app schedules a message to itself, to be handled no sooner than `delay` from now."""

    async def schedule(self, body: str, *, delay: timedelta) -> None:
        """Schedule `body` (text) for delivery after `delay`; raise StorageError when it could not be sent."""
        ...

    async def close(self) -> None:
        """Release the client; the next schedule opens it again."""
        ...
