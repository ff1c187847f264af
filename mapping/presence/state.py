"""The presence protocol: a user's announced state, recorded in their partition, decided so it cannot be lost.

Each user partition holds, beside the connection rows, a presence row (RowKey `%~p`; it has no
LastSeen, so no reader of connections sees it) with the state last decided, its number (`Version`)
and the id of the write that recorded it (`Writer`). The state (`PresenceState`) is what a client
shows: online or not, how many live connections, the user's status (the most recently set one among
their live connections), and, offline, when they were last seen (`LastOnline`: the end of their last
live connection). Presence messages carry the state and its number; of all messages about a user,
the highest version is the current state. Invariants (each named by the test that checks it):

P1. A (Version, state) pair is written only together, and each new pair takes a version higher than
    any before it: `max(recorded + 1, the decision's time in milliseconds)`. Every announcement is a
    pair as recorded, so one version never names two states, and versions keep growing when the
    table is recreated or restored from a backup (the clock has moved on).
    (test_crash_points: no version names two states; test_presence: test_versions_grow_across_a_recreated_table)
P2. Every change to a user's connection rows (create, delete, a lapsed lease made live again) commits
    in one transaction with a write to the presence row, conditional on the ETag of the one query
    that read both the rows and the presence row. So each decision is made on the partition as it is
    when it commits; of two concurrent changes one fails and reads again.
    (test_presence: test_a_decision_made_on_a_stale_read_never_commits)
P3. The decision: the state is derived from the connection rows live after the change (online iff
    one is). When it differs from the recorded state (online, connections or status), the
    transaction records a new pair and the change is announced.
    (test_store: test_multi_tab_user_goes_offline_only_when_the_last_tab_closes)
P4. A transaction answered with a conflict may have committed (a retry meets its own result). The
    writer reads again: its own `Writer` in the row, or an outcome it cannot tell apart, means the
    recorded pair is announced (a repeat is harmless by P1); otherwise it decides again.
    (test_crash_points: the "committed, answered 500" mode of every event)
P5. An announcement is lost only when the invocation that recorded it fails afterwards. The sweep
    repairs that when it reaches the user's index entries: it makes any decision that is due
    (the rows changed without one), and it repeats the recorded pair of a user whose entry was
    written before a recorded change (expiry E5), or whose entry's row is gone.
    (test_crash_points: the "committed, then outage" mode;
    test_presence: test_a_refused_first_connect_and_its_reconnect_end_announced_online)

Convergence: once events stop, every user's highest announced version states what
`GET /api/users/{user}` says, at the latest by the sweep that reaches the user's index entries:
the next sweep for a failure inside a sweep, and within one lease (plus one sweep interval) for an
event whose transaction committed but whose invocation failed; lapsed leases are removed and
announced by that same sweep.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mapping.errors import InvalidRequestError
from mapping.keys import PRESENCE_ROW, has_format_characters
from mapping.presence.lease import Lease
from mapping.presence.rows import ConnectionEntity, iso
from mapping.storage.table import Operation, create, int64, int_value, merge


@dataclass(frozen=True, slots=True)
class PresenceState:
    """What a client shows of a user: online, live connections, status, and (offline) when last seen."""

    online: bool
    connections: int = 0
    status: str | None = None
    last_seen: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the public JSON shape: `online`, `connections`, `status`, `lastSeen` (null while online)."""
        last_seen = iso(self.last_seen) if self.last_seen is not None and not self.online else None
        return {"online": self.online, "connections": self.connections, "status": self.status, "lastSeen": last_seen}

    def same_as(self, recorded: Recorded) -> bool:
        """Return whether the recorded state already says this (last seen follows the rest)."""
        return (
            recorded.online is self.online
            and recorded.connections == self.connections
            and recorded.status == self.status
        )


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A user's presence as recorded (of all changes of a user, the highest version is current), and the rooms
    the user was a member of when it was read: where a scoped announcement goes (`mapping.signalr.audience`)."""

    user: str
    state: PresenceState
    version: int
    rooms: tuple[str, ...] = ()

    @classmethod
    def of(cls, user: str, state: PresenceState, version: int, *, rooms: Iterable[str] = ()) -> PresenceChange:
        """Return the change that records `state` under `version`, announced to `rooms`."""
        return cls(user, state, version, tuple(sorted(rooms)))

    def to_json(self) -> dict[str, Any]:
        """Return the public JSON of the pair: `user`, the state's fields and `version`."""
        return {"user": self.user, **self.state.to_json(), "version": self.version}


@dataclass(frozen=True, slots=True)
class Recorded:
    """The presence row as read: the last decided state (None if never decided), its version, its writer."""

    online: bool | None = None
    version: int = 0
    writer: str | None = None
    etag: str | None = None  # None: the user has no presence row yet
    user_name: str | None = None  # the name as last written, for announcing a user with no rows left
    connections: int = 0
    status: str | None = None
    last_seen: datetime | None = None  # when the user was last online (kept while offline)

    def announced_as(self, user: str, *, rooms: Iterable[str] = ()) -> PresenceChange | None:
        """Return the recorded pair as a change to announce (again), or None when nothing was decided."""
        if self.online is None or self.version <= 0:
            return None
        last_seen = None if self.online else self.last_seen
        state = PresenceState(self.online, self.connections, self.status, last_seen)
        return PresenceChange.of(user, state, self.version, rooms=rooms)


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
        connections=int_value(row.get("Connections")),
        status=str(row["Status"]) if row.get("Status") else None,
        last_seen=_aware(row.get("LastOnline")),
    )


def derive(
    rows: Iterable[ConnectionEntity], *, lease: Lease, now: datetime, recorded: Recorded, ended_at: datetime | None
) -> PresenceState:
    """Return the state the rows give at `now` (P3); offline, last seen is `ended_at` unless already recorded.

    A user recorded online whose rows went without a decision (presence events were off) leaves no end
    time: `now` bounds it then, so that offline pair records a last seen (P1: one version, one state).
    """
    live = [row for row in rows if lease.holds(row, now)]
    if live:
        return PresenceState(True, len(live), latest_status(live))
    if recorded.online is False and recorded.last_seen is not None:
        return PresenceState(False, 0, None, recorded.last_seen)
    return PresenceState(False, 0, None, ended_at or (now if recorded.online else None))


def decide(recorded: Recorded, state: PresenceState, *, now: datetime) -> int | None:
    """Return the version of a new pair when `state` differs from the recorded one (P3), else None."""
    if state.same_as(recorded):
        return None
    return max(recorded.version + 1, int(now.timestamp() * 1000))


def presence_write(
    partition: str,
    recorded: Recorded,
    *,
    writer: str,
    user_name: str,
    state: PresenceState | None = None,
    version: int | None = None,
) -> Operation:
    """Return the presence-row write of a transaction: conditional on the ETag read (P2), with a new pair if any."""
    entity: dict[str, Any] = {
        "PartitionKey": partition,
        "RowKey": PRESENCE_ROW,
        "Writer": writer,
        "UserName": user_name,
    }
    if version is not None and state is not None:
        entity.update(pair_fields(state, version))
    if recorded.etag is None:
        return create(entity)  # two first writers: one create fails with 409 and reads again
    return merge(entity, etag=recorded.etag)


def pair_fields(state: PresenceState, version: int) -> dict[str, Any]:
    """Return the properties that record a (version, state) pair: on the presence row, and its copies (roster)."""
    fields: dict[str, Any] = {
        "Online": state.online,
        "Version": int64(version),
        "Connections": state.connections,
        "Status": state.status or "",
    }
    if state.last_seen is not None:
        fields["LastOnline"] = state.last_seen
    return fields


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


if TYPE_CHECKING:
    from mapping.presence.rows import ConnectionEntity

MAX_STATUS_LENGTH = 64


def parse_status(value: object) -> str | None:
    """Return a status as stored (NFC, at most 64 characters); None or an empty string clear it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError("status must be a string or null")
    status = unicodedata.normalize("NFC", value)
    if len(status) > MAX_STATUS_LENGTH:
        raise InvalidRequestError(f"status must be at most {MAX_STATUS_LENGTH} characters")
    if any(unicodedata.category(character) in ("Cc", "Cs") for character in status):
        raise InvalidRequestError("status must not hold control characters")
    if has_format_characters(status):
        raise InvalidRequestError("status must not hold invisible format characters (bidirectional, zero-width)")
    return status or None


def latest_status(connections: Iterable[ConnectionEntity]) -> str | None:
    """Return the status most recently set among `connections` (a clear counts as a setting), or None."""
    latest = max(
        (connection for connection in connections if connection.status_at is not None),
        key=lambda connection: (connection.status_at, connection.connection_id),
        default=None,
    )
    return latest.status if latest is not None else None
