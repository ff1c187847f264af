"""The presence protocol: a user's announced state, recorded in their partition, decided so it cannot be lost.

Each user partition holds, beside the connection rows, a presence row (RowKey `%~p`; it has no
LastSeen, so no reader of connections sees it) with the state last decided (`Online`), its number
(`Version`) and the id of the write that recorded it (`Writer`). Presence messages carry the number;
of all messages about a user, the highest version is the current state. Invariants (each named by
the test that checks it):

P1. A (Version, Online) pair is written only together, and each new pair takes a version higher than
    any before it: `max(recorded + 1, the decision's time in milliseconds)`. Every announcement is a
    pair as recorded, so one version never names two states, and versions keep growing when the
    table is recreated or restored from a backup (the clock has moved on).
    (test_crash_points: no version names two states; test_presence: test_versions_grow_across_a_recreated_table)
P2. Every change to a user's connection rows (create, delete, a lapsed lease made live again) commits
    in one transaction with a write to the presence row, conditional on the ETag of the one query
    that read both the rows and the presence row. So each decision is made on the partition as it is
    when it commits; of two concurrent changes one fails and reads again.
    (test_presence: test_a_decision_made_on_a_stale_read_never_commits)
P3. The decision: the user is online iff a connection row is live after the change. When that
    differs from the recorded state, the transaction records a new pair and the change is announced.
    (test_store: test_multi_tab_user_goes_offline_only_when_the_last_tab_closes)
P4. A transaction answered with a conflict may have committed (a retry meets its own result). The
    writer reads again: its own `Writer` in the row, or an outcome it cannot tell apart, means the
    recorded pair is announced (a repeat is harmless by P1); otherwise it decides again.
    (test_crash_points: the "committed, answered 500" mode of every event)
P5. An announcement is lost only when the invocation that recorded it fails afterwards. The sweep
    repairs that when it reaches the user's index entries: it makes any decision that is due
    (the rows changed without one), and it repeats the recorded pair of a user whose entry was
    written before a change to online (expiry E5), or whose entry's row is gone and who is offline.
    (test_crash_points: the "committed, then outage" mode;
    test_presence: test_a_refused_first_connect_and_its_reconnect_end_announced_online)

Convergence: once events stop, every user's highest announced version states what
`GET /api/users/{user}` says, at the latest by the sweep that reaches the user's index entries:
the next sweep for a failure inside a sweep, and within one lease (plus one sweep interval) for an
event whose transaction committed but whose invocation failed; lapsed leases are removed and
announced by that same sweep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.data.tables import EdmType, EntityProperty

from mapping.table import Operation, create, int_value, merge

PRESENCE_ROW = "%~p"  # `%~` never starts an escaped connection key


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A user's presence as recorded: of all changes of a user, the highest version is current."""

    user: str
    online: bool
    version: int


@dataclass(frozen=True, slots=True)
class Recorded:
    """The presence row as read: the last decided state (None if never decided), its version, its writer."""

    online: bool | None = None
    version: int = 0
    writer: str | None = None
    etag: str | None = None  # None: the user has no presence row yet
    user_name: str | None = None  # the name as last written, for announcing a user with no rows left

    def announced_as(self, user: str) -> PresenceChange | None:
        """Return the recorded pair as a change to announce (again), or None when nothing was decided."""
        if self.online is None or self.version <= 0:
            return None
        return PresenceChange(user, self.online, self.version)


def recorded_from(row: Mapping[str, Any] | None, *, etag: str | None = None) -> Recorded:
    """Read a presence row (None: the user has none)."""
    if row is None:
        return Recorded()
    online = row.get("Online")
    return Recorded(
        online=online if isinstance(online, bool) else None,
        version=int_value(row.get("Version")),
        writer=str(row["Writer"]) if row.get("Writer") else None,
        etag=etag,
        user_name=str(row["UserName"]) if row.get("UserName") else None,
    )


def decide(recorded: Recorded, *, online: bool, now: datetime) -> int | None:
    """Return the version of a new pair when `online` differs from the recorded state (P3), else None."""
    if recorded.online is online:
        return None
    return max(recorded.version + 1, int(now.timestamp() * 1000))


def presence_write(
    partition: str,
    recorded: Recorded,
    *,
    writer: str,
    user_name: str,
    online: bool | None = None,
    version: int | None = None,
) -> Operation:
    """Return the presence-row write of a transaction: conditional on the ETag read (P2), with a new pair if any."""
    entity: dict[str, Any] = {
        "PartitionKey": partition,
        "RowKey": PRESENCE_ROW,
        "Writer": writer,
        "UserName": user_name,
    }
    if version is not None:
        entity["Online"] = bool(online)
        entity["Version"] = EntityProperty(version, EdmType.INT64)
    if recorded.etag is None:
        return create(entity)  # two first writers: one create fails with 409 and reads again
    return merge(entity, etag=recorded.etag)
