"""One user's partition as one query reads it (P2): connection rows, the presence row and room memberships."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from mapping.keys import BLOCKED_ROW, BOOKKEEPING_PREFIX, GRANT_PREFIX, PRESENCE_ROW, REVOKED_PREFIX, unescape_key
from mapping.presence.lease import Lease
from mapping.presence.rows import ConnectionEntity, Membership, RoomMark, is_membership_key
from mapping.presence.state import PresenceState, Recorded, derive, recorded_from
from mapping.storage.table import Table, etag_of


@dataclass(frozen=True, slots=True)
class UserView:
    """One user's partition as read by one query: connection rows by RowKey, and the recorded presence."""

    partition: str
    rows: dict[str, ConnectionEntity] = field(default_factory=dict)
    presence: Recorded = field(default_factory=Recorded)
    rooms: dict[str, Membership] = field(default_factory=dict)  # the user's rooms, by name
    blocked: bool = False  # an operator blocked the user (the block row): no connection of theirs is mapped
    grants: dict[str, RoomMark] = field(default_factory=dict)  # rooms a server granted the user, by name
    revoked: dict[str, RoomMark] = field(default_factory=dict)  # rooms a server took the user out of, by name

    def name(self) -> str:
        """Return the user's name as received: from a row, else as last written to the presence row."""
        for row in self.rows.values():
            if row.user_name:
                return row.user_name
        return self.presence.user_name or unescape_key(self.partition)

    def live(self, lease: Lease, *, now: datetime) -> list[ConnectionEntity]:
        """Return the open connections holding a live lease at `now`, oldest first (not those a grace holds)."""
        rows = [row for row in self.rows.values() if lease.is_live(row.last_seen, now) and row.ended_at is None]
        return sorted(rows, key=lambda row: (row.connected_at, row.connection_id))

    def state(
        self, lease: Lease, *, now: datetime, ended_at: datetime | None = None, rows: Mapping[str, ConnectionEntity]
    ) -> PresenceState:
        """Return the presence `rows` (this partition's rows after a change) give at `now` (P3)."""
        return derive(rows.values(), lease=lease, now=now, recorded=self.presence, ended_at=ended_at)

    def adoptable(self, lease: Lease, *, now: datetime) -> ConnectionEntity | None:
        """Return the ended row a new connection takes over (grace G1): the latest ended that a grace still holds."""
        held = [row for row in self.rows.values() if lease.in_grace(row, now) and lease.is_live(row.last_seen, now)]
        return max(held, key=lambda row: (row.ended_at, row.row_key), default=None)

    def lingering(self) -> list[tuple[str, str]]:
        """Return (connection id, room) for each open connection that may still be in the group of a room revoked
        from the user: it opened before the revocation, and the user is no member again."""
        return [
            (row.connection_id, room)
            for room, mark in sorted(self.revoked.items())
            if room not in self.rooms
            for row in self.rows.values()
            if row.ended_at is None and row.connected_at <= mark.at
        ]

    def state_now(self, lease: Lease, *, now: datetime) -> PresenceState:
        """Return the presence the rows give at `now`, last seen at the latest LastSeen if not yet recorded."""
        ended_at = max((row.last_seen for row in self.rows.values()), default=None)
        return self.state(lease, now=now, ended_at=ended_at, rows=self.rows)


async def read_user(table: Table, partition: str) -> UserView:
    """Read a user's connection rows, presence row, memberships and block with one query (P2)."""
    rows: dict[str, ConnectionEntity] = {}
    rooms: dict[str, Membership] = {}
    presence = Recorded()
    blocked = False
    marks: dict[str, dict[str, RoomMark]] = {GRANT_PREFIX: {}, REVOKED_PREFIX: {}}
    for row in await table.query("PartitionKey eq @pk", {"pk": partition}, action="read a user"):
        key = str(row["RowKey"])
        if key == PRESENCE_ROW:
            presence = recorded_from(row, etag=etag_of(row))
        elif key == BLOCKED_ROW:
            blocked = True
        elif key[:3] in marks:
            mark = RoomMark.from_table(row, etag=etag_of(row))
            marks[key[:3]][mark.room] = mark
        elif is_membership_key(key):
            membership = Membership.from_table(row, etag=etag_of(row))
            rooms[membership.room] = membership
        elif not key.startswith(BOOKKEEPING_PREFIX):
            rows[key] = ConnectionEntity.from_table(row, etag=etag_of(row))
    return UserView(partition, rows, presence, rooms, blocked, marks[GRANT_PREFIX], marks[REVOKED_PREFIX])
