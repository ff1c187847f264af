"""Counting a store's table requests by HTTP method, through the SDK's raw response hook (tests and bench)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from mapping.functions import runtime
from mapping.storage.table import Table

WRITES = frozenset({"POST", "PUT", "PATCH", "MERGE", "DELETE"})


class TableRequests:
    """Counts the table requests a store makes, by HTTP method; pass `hook` as `raw_response_hook`."""

    def __init__(self) -> None:
        self.by_method: Counter[str] = Counter()

    def hook(self, response: Any) -> None:
        """The SDK's raw response hook: count one request."""
        self.by_method[response.http_request.method] += 1

    @property
    def total(self) -> int:
        """Return every request counted."""
        return sum(self.by_method.values())

    @property
    def writes(self) -> int:
        """Return the writes counted (transactions included)."""
        return sum(count for method, count in self.by_method.items() if method in WRITES)

    def reset(self) -> None:
        """Start counting again."""
        self.by_method.clear()


@contextlib.contextmanager
def counted_table_requests(table: Table | None = None) -> Iterator[TableRequests]:
    """Count the table requests of `table` (the function app's, by default) while the block runs."""
    table = table or runtime.store().table
    requests, before = TableRequests(), table._response_hook
    table._response_hook = requests.hook
    try:
        yield requests
    finally:
        table._response_hook = before
