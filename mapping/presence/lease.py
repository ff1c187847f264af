"""The lease rules in one place: when a row counts as live, when it is refreshed, when the sweep looks at it.

Two models, chosen by the settings:

- **Age-based** (no SignalR connection): a row is live while its `LastSeen` is within
  MAPPING_TTL_SECONDS. Only connects and client messages move `LastSeen`, so a quiet client lapses.
- **Reconciled** (`AzureSignalRConnectionString` set): a row is live until the sweep, comparing the
  table with the service, removes it (the service answered 404 for it), or until its `LastSeen` is
  older than MAPPING_MAX_AGE_SECONDS (the service could not say for that long). A quiet connection the
  service still has is never reported offline, and costs the sweep no table write.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from mapping.settings import Settings


class Leased(Protocol):
    """What the lease rules read of a connection row: when it was last seen, and when a disconnect ended it."""

    @property
    def last_seen(self) -> datetime: ...

    @property
    def ended_at(self) -> datetime | None: ...


_MIN_BUCKET = timedelta(seconds=1)
_MAX_BUCKET = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Lease:
    """How long rows live and when they are refreshed or looked at, for one deployment's settings."""

    ttl: timedelta
    max_age: timedelta
    reconciled: bool = False
    grace: timedelta = timedelta(0)  # how long an ended connection still counts for presence (mapping.presence.grace)

    @classmethod
    def of(cls, settings: Settings) -> Lease:
        """Return the lease rules the settings select (reconciled when a SignalR connection is configured)."""
        grace = settings.presence_grace if settings.presence_events else timedelta(0)
        return cls(ttl=settings.ttl, max_age=settings.max_age, reconciled=settings.signalr is not None, grace=grace)

    @property
    def window(self) -> timedelta:
        """Return how long a row counts as live after its `LastSeen` without other news."""
        return self.max_age if self.reconciled else self.ttl

    def live_after(self, now: datetime) -> datetime:
        """Return the cutoff: a row is live when its `LastSeen` is later than this."""
        return now - self.window

    def is_live(self, last_seen: datetime, now: datetime) -> bool:
        """Return whether a row last seen at `last_seen` is live at `now`."""
        return last_seen > self.live_after(now)

    def holds(self, row: Leased, now: datetime) -> bool:
        """Return whether a row counts for presence at `now`: live, and not ended longer than the grace ago."""
        return self.is_live(row.last_seen, now) and not self.ended(row, now)

    def ended(self, row: Leased, now: datetime) -> bool:
        """Return whether a row's connection ended and its grace is over (its decision is due)."""
        return row.ended_at is not None and now >= row.ended_at + self.grace

    def in_grace(self, row: Leased, now: datetime) -> bool:
        """Return whether a row's connection ended but its grace still holds it."""
        return row.ended_at is not None and not self.ended(row, now)

    @property
    def refresh_every(self) -> timedelta:
        """Return how often a client message refreshes `LastSeen` (per connection and instance)."""
        return self.ttl / 4

    @property
    def surely_live_within(self) -> timedelta:
        """Return how recent an instance's own refresh must be for the row to be live for every reader."""
        return self.ttl / 2

    @property
    def bucket_width(self) -> timedelta:
        """Return the width of the expiry index's buckets: a tenth of the lease, 1 s to 5 min."""
        return min(max(self.ttl / 10, _MIN_BUCKET), _MAX_BUCKET)

    def due_before(self, now: datetime, *, asks_service: bool) -> datetime:
        """Return the sweep's cutoff: rows last seen before it are looked at (half a lease when it can ask)."""
        return now - (self.ttl / 2 if asks_service else self.ttl)

    def given_up_before(self, now: datetime, *, asks_service: bool) -> datetime:
        """Return when a row nobody vouches for is gone: past the max age when the service is asked, else the lease."""
        return now - (self.max_age if asks_service else self.window)


DEFAULT_CAPACITY = 100_000  # connections whose last refresh time an instance remembers


class RefreshMemory:
    """The last refresh time of each connection this instance wrote, for the most recent `capacity` of them."""

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._moments: OrderedDict[tuple[str, str], datetime] = OrderedDict()

    def last(self, partition: str, row: str) -> datetime | None:
        """Return when this instance last refreshed the row, if it remembers."""
        return self._moments.get((partition, row))

    def remember(self, partition: str, row: str, moment: datetime) -> None:
        """Note a refresh of the row at `moment`, forgetting the oldest beyond the capacity."""
        self._moments[(partition, row)] = moment
        self._moments.move_to_end((partition, row))
        while len(self._moments) > self._capacity:
            self._moments.popitem(last=False)

    def forget(self, partition: str, row: str) -> None:
        """Forget the row (it is gone, or its refresh failed)."""
        self._moments.pop((partition, row), None)
