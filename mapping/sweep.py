"""Stale-row removal: the timer function is the TTL that Table Storage does not have.

For now the sweep is age-based: it pages through every row whose `LastSeen` is older than the lease
and deletes it, unless the row changed since it was read (ETag), at most 100 per batch and
partition. A row a disconnect removed meanwhile is skipped, not an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from mapping.entity import as_utc, utc_now
from mapping.store import ConnectionStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep did: expired rows found, deleted, and skipped because they changed or vanished."""

    expired: int
    deleted: int
    skipped: int


async def sweep(store: ConnectionStore, *, now: datetime | None = None) -> SweepResult:
    """Delete every row whose lease ran out before `now` (default: the current time)."""
    moment = as_utc(now) if now else utc_now()
    expired = deleted = skipped = 0
    async for page in store.expired_pages(now=moment):
        expired += len(page)
        outcome = await store.delete_unchanged(page)
        deleted += outcome.deleted
        skipped += outcome.skipped
    result = SweepResult(expired=expired, deleted=deleted, skipped=skipped)
    logger.info("sweep: %d expired rows, %d deleted, %d skipped", expired, deleted, skipped)
    return result
