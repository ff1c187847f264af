"""A room membership's two rows: the truth in the user's partition, and its entry in the room's member index."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mapping.keys import MEMBERSHIP_PREFIX, membership_key, room_partition


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's membership of a room, as recorded in the user's partition (RowKey `%~r<room>`)."""

    room: str
    joined_at: datetime
    etag: str | None = field(default=None, compare=False)

    def to_table(self, user_partition: str) -> dict[str, Any]:
        """Return the membership row of the user's partition."""
        return {
            "PartitionKey": user_partition,
            "RowKey": membership_key(self.room),
            "Room": self.room,
            "JoinedAt": self.joined_at,
        }

    def index_row(self, user_partition: str, user_name: str) -> dict[str, Any]:
        """Return the row naming the member in the room's partition (the member index)."""
        return {
            "PartitionKey": room_partition(self.room),
            "RowKey": user_partition,
            "UserName": user_name,
            "JoinedAt": self.joined_at,
        }

    @classmethod
    def from_table(cls, row: Mapping[str, Any], *, etag: str | None = None) -> Membership:
        """Build a membership from its row in the user's partition."""
        joined = row.get("JoinedAt")
        moment = joined if isinstance(joined, datetime) else datetime.min.replace(tzinfo=UTC)
        room = str(row.get("Room") or str(row["RowKey"])[len(MEMBERSHIP_PREFIX) :])
        return cls(room, moment if moment.tzinfo else moment.replace(tzinfo=UTC), etag)


@dataclass(frozen=True, slots=True)
class IndexedMember:
    """A row of a room's member index as read: the user's key, when the join that wrote it began, its ETag."""

    user_key: str
    joined_at: datetime
    etag: str | None

    @classmethod
    def from_table(cls, row: Mapping[str, Any], *, etag: str | None) -> IndexedMember:
        """Build it from a row of the room's partition."""
        joined = row.get("JoinedAt")
        moment = joined if isinstance(joined, datetime) else datetime.min.replace(tzinfo=UTC)
        return cls(str(row["RowKey"]), moment if moment.tzinfo else moment.replace(tzinfo=UTC), etag)


def is_membership_key(row_key: str) -> bool:
    """Return whether a RowKey of a user's partition names a membership row."""
    return row_key.startswith(MEMBERSHIP_PREFIX)
