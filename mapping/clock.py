"""Time as the library sees it: timezone-aware UTC only, read from an injectable clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]  # returns the current time, timezone-aware


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime (the default clock)."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Return `moment` in UTC; a naive datetime is refused rather than guessed at."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: use timezone-aware UTC datetimes")
    return moment.astimezone(UTC)


def moment_of(now: datetime | None, clock: Clock = utc_now) -> datetime:
    """Return `now` in UTC when given (callers and tests pin the time), else the clock's current time."""
    return as_utc(now) if now is not None else as_utc(clock())
