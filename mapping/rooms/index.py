"""A room membership's two rows: the truth in the user's partition, and its entry in the room's member index.

The index row also holds a copy of the member's presence pair (version and state; `mapping.rooms.roster`) and a
`Pending` flag: set by a join before it commits and by a leave before it commits, cleared by the join
that committed (on the ETag of its own write) or by a reader that verified the membership once the
flag is older than any join or leave can run. A row without the flag is the truth; a flagged one is
checked against the user's partition.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mapping.keys import room_partition
from mapping.presence.rows import Membership
from mapping.presence.state import PresenceChange, Recorded, pair_fields, recorded_from
from mapping.storage.table import Table, etag_of


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


async def index_pages(
    table: Table, room: str, *, action: str, after: str | None = None
) -> AsyncIterator[list[IndexedMember]]:
    """Yield the rows of a room's member index in key order (those after the key `after`), one page at a time."""
    query = "PartitionKey eq @pk" if after is None else "PartitionKey eq @pk and RowKey gt @after"
    parameters = {"pk": room_partition(room), **({"after": after} if after is not None else {})}
    async for page in table.pages(query, parameters, action=action):
        yield [IndexedMember.from_table(row, etag=etag_of(row)) for row in page]


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
