"""A room membership's two rows: the truth in the user's partition, and its entry in the room's member index.

The index row also holds a copy of the member's presence pair (version and state; `mapping.rooms.roster`) and a
`Pending` flag: set by a join before it commits and by a leave before it commits, cleared by the join
that committed (on the ETag of its own write) or by a reader that verified the membership once the
flag is older than any join or leave can run. A row without the flag is the truth; a flagged one is
checked against the user's partition.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mapping.errors import RowChangedError, StorageError
from mapping.keys import room_partition, user_key
from mapping.presence.rows import Membership
from mapping.presence.state import PresenceChange, Recorded, pair_fields, recorded_from
from mapping.storage.table import Table, delete, etag_of, merge, upsert

# Longer than any join or leave can run (host.json's functionTimeout is 5 minutes): an index row this old, flagged
# pending or without its membership, belongs to no join or leave in flight.
STALE_INDEX_ROW = timedelta(minutes=10)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IndexedMember:
    """A row of a room's member index as read: the user's key and name, when the join that wrote it began,
    whether it is flagged pending (and since when), the presence pair copied onto it, and its ETag."""

    user_key: str
    joined_at: datetime
    etag: str | None
    user_name: str = ""
    pending: bool = False
    pending_at: datetime | None = None
    pair: PresenceChange | None = None

    @classmethod
    def from_table(cls, row: Mapping[str, Any], *, etag: str | None) -> IndexedMember:
        """Build it from a row of the room's partition."""
        name = str(row.get("UserName") or "")
        pending_at = row.get("PendingAt")
        return cls(
            str(row["RowKey"]),
            _moment(row.get("JoinedAt")),
            etag,
            user_name=name,
            # A row written before the flag existed is unverified: it is checked like a pending one.
            pending=bool(row.get("Pending", True)),
            pending_at=_moment(pending_at) if isinstance(pending_at, datetime) else None,
            pair=recorded_from(row).announced_as(name) if name else None,
        )

    @property
    def touched_at(self) -> datetime:
        """Return when a join or leave last wrote the row (its freshness, for readers deciding what is stale)."""
        return max(self.joined_at, self.pending_at or self.joined_at)


class MemberIndex:
    """The rows of rooms' member indexes in the store's table: every read and write of a room's partition."""

    def __init__(self, table: Table) -> None:
        self._table = table

    async def pages(self, room: str, *, action: str, after: str | None = None) -> AsyncIterator[list[IndexedMember]]:
        """Yield the rows of a room's member index in key order (those after the key `after`), a page at a time."""
        query = "PartitionKey eq @pk" if after is None else "PartitionKey eq @pk and RowKey gt @after"
        parameters = {"pk": room_partition(room), **({"after": after} if after is not None else {})}
        async for page in self._table.pages(query, parameters, action=action):
            yield [IndexedMember.from_table(row, etag=etag_of(row)) for row in page]

    async def count(self, room: str, *, up_to: int) -> int:
        """Return how many rows a room's member index has, counting no further than `up_to` (one request a thousand
        rows; rows of joins in flight or left lately count too: a cap is held conservatively)."""
        counted = 0
        async for page in self._table.pages(
            "PartitionKey eq @pk", {"pk": room_partition(room)}, action="count a room", select=["RowKey"]
        ):
            counted += len(page)
            if counted >= up_to:
                break
        return counted

    async def read(self, room: str, user_partition: str) -> IndexedMember | None:
        """Return the user's row of the room's index, if there is one."""
        rows = await self._table.query(
            "PartitionKey eq @pk and RowKey eq @rk",
            {"pk": room_partition(room), "rk": user_partition},
            action="read a roster row",
        )
        return IndexedMember.from_table(rows[0], etag=etag_of(rows[0])) if rows else None

    async def joining(
        self, membership: Membership, user_partition: str, user_name: str, *, recorded: Recorded
    ) -> str | None:
        """Write a joining member's row, flagged pending, with their recorded pair (R1, roster C1); return its ETag."""
        row = index_row(membership, user_partition, user_name, recorded=recorded)
        return await self._table.write(upsert(row), action="join a room")

    async def confirm(self, room: str, user_partition: str, etag: str | None) -> None:
        """Clear the pending flag of a committed join's row, on the ETag of its own write; best effort."""
        if etag is None:
            return
        fields = {"PartitionKey": room_partition(room), "RowKey": user_partition, "Pending": False}
        try:
            await self._table.write(merge(fields, etag=etag), action="confirm a join")
        except StorageError as error:  # written since (a copy, a leave) or storage failed: readers check it
            logger.info("room %s: a join's index row stays pending: %s", room, error)

    async def leaving(self, room: str, user_partition: str, moment: datetime) -> None:
        """Flag the row of a membership about to end pending (a missing row is fine)."""
        fields = {"PartitionKey": room_partition(room), "RowKey": user_partition, **pending_fields(moment)}
        try:
            await self._table.write(merge(fields), action="leave a room")
        except RowChangedError:
            logger.info("room %s: no index row to flag for a leave", room)

    async def settle(self, room: str, indexed: IndexedMember, *, member: bool, pair: PresenceChange | None) -> None:
        """Clear a stale flag of a member (with their current pair), or delete a stale row of a non-member, on the
        ETag read (R1, roster C3); best effort."""
        partition = room_partition(room)
        if member:
            fields = {"PartitionKey": partition, "RowKey": indexed.user_key, "Pending": False}
            if pair is not None:
                fields.update(pair_fields(pair.state, pair.version))
            operation = merge(fields, etag=indexed.etag)
        else:
            operation = delete(partition, indexed.user_key, etag=indexed.etag)
        try:
            await self._table.write(operation, action="settle a member-index row")
        except StorageError as error:  # a join or leave wrote it meanwhile (412), or storage failed: next reader
            logger.info("room %s: a stale member-index row stays: %s", room, error)

    async def copy(self, room: str, change: PresenceChange, *, etag: str | None = None) -> None:
        """Copy a presence pair onto the member's row (on `etag` when given); raise RowChangedError if it is gone or
        changed."""
        fields = {
            "PartitionKey": room_partition(room),
            "RowKey": user_key(change.user),
            **pair_fields(change.state, change.version),
        }
        await self._table.write(merge(fields, etag=etag), action="copy presence to a roster")


def pending_fields(at: datetime) -> dict[str, Any]:
    """Return the properties that flag an index row pending since `at` (a join or leave about to commit)."""
    return {"Pending": True, "PendingAt": at}


def _moment(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def index_row(
    membership: Membership, user_partition: str, user_name: str, *, recorded: Recorded | None = None
) -> dict[str, Any]:
    """Return the row naming the member in the room's partition (the member index), flagged pending,
    with a copy of the member's recorded presence pair."""
    row: dict[str, Any] = {
        "PartitionKey": room_partition(membership.room),
        "RowKey": user_partition,
        "UserName": user_name,
        "JoinedAt": membership.joined_at,
        **pending_fields(membership.joined_at),
    }
    pair = recorded.announced_as(user_name) if recorded is not None else None
    if pair is not None:
        row.update(pair_fields(pair.state, pair.version))
    return row
