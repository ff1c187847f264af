"""A room's tally: how many members it has and how many of them are online, in one row beside its member index.

The tally row (RowKey `%~o` in the room's partition `%~m<room>`) is read with one point query, so a room's occupancy
costs one table request however big the room is. Invariants (each named by the test that checks it):

T1. The tally states the sum of its index rows' contributions: a row counts as a member unless a leave or revoke
    flagged it (a join's pending row counts: it is a member as soon as it commits), and as online when it is a member
    and its copied pair (roster C1) is online. Every write that changes a row's contribution commits in one entity
    group transaction with the tally's new counts, both on the ETags of the one query that read them (`MemberIndex`);
    a write that changes no contribution leaves the tally alone, on its row's ETag. So the sum holds after every
    request, whatever fails, and a retry that meets its own committed write finds no change left to count.
    (test_crash_points: every room crash point; test_occupancy:
    test_the_tally_counts_members_and_online_members_and_answers_in_one_request)
T2. Each new count takes a version higher than any before it, `max(previous + 1, the write's time in milliseconds)`,
    so a client or a feed consumer keeps the highest version of a room's occupancy and drops the rest.
T3. A room whose tally row is missing (it was made before tallies existed) is counted by a scan of its index, and the
    tally created: in the same transaction as the write that needed it, or alone by a reader of a room with members.
    Two creators at once: one fails (409) and reads again, so a count made before a change never overwrites it.
T4. A room made occupied or vacated is a change of its own on the presence feed. The tally names whose change last
    did it (`CrossedBy`, a user key), so a repeated announcement of that user (a retry, the sweep's repeat) puts the
    room's state on the feed again, and a repeat of anyone else's puts nothing for the room.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mapping.keys import room_partition
from mapping.storage.table import int64, int_value

TALLY_ROW = "%~o"  # RowKey of a room's tally in its partition; `%~` never starts an escaped user key


@dataclass(frozen=True, slots=True)
class Tally:
    """A room's counts as recorded: members, online members, and the version of the pair (T2)."""

    members: int = 0
    online: int = 0
    version: int = 0
    crossed_by: str = ""  # the user key whose change last made the room occupied or vacated (T4)

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | None) -> Tally:
        """Read a tally row (None: a room nobody ever counted)."""
        if row is None:
            return cls()
        members, online, version = (int_value(row.get(name)) for name in ("Members", "Online", "Version"))
        return cls(members, online, version, str(row.get("CrossedBy") or ""))

    def plus(self, delta: tuple[int, int], *, at: datetime, by: str) -> Tally:
        """Return the counts after user `by`'s change of `delta` (members, online), under a new version (T2)."""
        version = max(self.version + 1, int(at.timestamp() * 1000))
        online = max(0, self.online + delta[1])
        crossed_by = by if (online == 0) != (self.online == 0) else self.crossed_by
        return Tally(max(0, self.members + delta[0]), online, version, crossed_by)

    def to_row(self, room: str) -> dict[str, Any]:
        """Return the tally row of `room`."""
        return {
            "PartitionKey": room_partition(room),
            "RowKey": TALLY_ROW,
            "Members": self.members,
            "Online": self.online,
            "Version": int64(self.version),
            "CrossedBy": self.crossed_by,
        }

    def to_json(self, room: str) -> dict[str, Any]:
        """Return the occupancy as the API and the `occupancy` message state it: `{room, members, online, version}`."""
        return {"room": room, "members": self.members, "online": self.online, "version": self.version}


@dataclass(frozen=True, slots=True)
class TallyChange:
    """A room's tally before and after a write: what watchers of its occupancy and the feed hear."""

    room: str
    before: Tally
    after: Tally
    # The tally as it stands, told again for user `repeat_of`'s repeated announcement: its first may have been lost.
    repeat_of: str | None = None

    @classmethod
    def repeated(cls, room: str, tally: Tally, *, user: str) -> TallyChange:
        """The tally as it stands, told again with a repeat of user key `user`'s announcement."""
        return cls(room, tally, tally, repeat_of=user)

    @property
    def occupied(self) -> bool:
        """Whether the room's first member came online (repeated: by the change of the user repeated, T4)."""
        return self.after.online > 0 and self._crossed

    @property
    def vacated(self) -> bool:
        """Whether the room's last online member went offline (repeated: by the change of the user repeated, T4)."""
        return self.after.online == 0 and self._crossed

    @property
    def _crossed(self) -> bool:
        if self.repeat_of is not None:
            return self.after.crossed_by == self.repeat_of and self.after.version > 0
        return (self.before.online == 0) != (self.after.online == 0)


def contribution(row: Mapping[str, Any] | None) -> tuple[int, int]:
    """Return what an index row adds to its room's tally (T1): (member, online), each 0 or 1."""
    if row is None or is_leave_flag(row):
        return (0, 0)
    return (1, 1 if row.get("Online") is True else 0)


def is_leave_flag(row: Mapping[str, Any]) -> bool:
    """Whether a leave or revoke flagged the row: pending since after the join that wrote it (a join flags its own row
    pending at its own time)."""
    pending_at, joined_at = row.get("PendingAt"), row.get("JoinedAt")
    if not row.get("Pending", False) or not isinstance(pending_at, datetime) or not isinstance(joined_at, datetime):
        return False
    return pending_at > joined_at


def difference(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> tuple[int, int]:
    """Return how a write from `before` to `after` changes the room's tally."""
    old, new = contribution(before), contribution(after)
    return (new[0] - old[0], new[1] - old[1])
