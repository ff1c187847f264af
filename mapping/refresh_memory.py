"""What an instance remembers of its own lease refreshes: when it last refreshed each connection (bounded, LRU)."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

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
