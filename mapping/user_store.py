"""The store as the per-user write loops see it: a protocol, so they need not import the store that calls them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from mapping.contention import UserTurns
from mapping.expiry import ExpiryIndex
from mapping.lease import Lease
from mapping.settings import Settings
from mapping.table import Operation, Table
from mapping.user_view import UserView


class UserStore(Protocol):
    """The table, index, lease rules, turns and settings of a store, its clock and its read of one user."""

    settings: Settings
    table: Table
    index: ExpiryIndex
    lease: Lease
    turns: UserTurns

    async def read_user(self, partition: str) -> UserView:
        """Read a user's connection rows, presence row and memberships with one query (P2)."""
        ...

    async def transact(self, operations: Sequence[Operation], *, action: str, singly: bool = False) -> None:
        """Run a transaction, or one call at a time when the service refuses this partition's transactions."""
        ...

    def now(self, now: datetime | None = None) -> datetime:
        """Return `now` in UTC when given, else the store's clock's current time."""
        ...
