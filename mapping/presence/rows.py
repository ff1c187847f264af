"""The ConnectionEntity row: one per SignalR connection, partitioned by user."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mapping.keys import (
    MEMBERSHIP_PREFIX,
    connection_key,
    membership_key,
    normalize_connection_id,
    normalize_user_name,
    user_key,
)

MAX_USER_AGENT_LENGTH = 512


@dataclass(frozen=True, slots=True)
class ConnectionEntity:
    """A user's SignalR connection, leased until `last_seen` plus the TTL."""

    user_name: str
    connection_id: str
    hub: str
    connected_at: datetime
    last_seen: datetime
    user_agent: str = ""
    etag: str | None = field(default=None, compare=False)
    index_bucket: str | None = field(default=None, compare=False)  # the expiry-index bucket naming this row
    status: str | None = None  # set by the connection's `setStatus` (None: cleared or never set)
    status_at: datetime | None = None  # when it was last set (None: never)
    ended_at: datetime | None = None  # when its disconnect came, while a grace period holds it (mapping.presence.grace)
    adopted: str | None = None  # the RowKey of an ended row this connection took over (a page reload)
    watching: frozenset[str] = field(default=frozenset(), compare=False)  # digests of the users it watches
    tokens: float = field(default=0.0, compare=False)  # its call budget's level as published (mapping.presence.budget)
    tokens_at: datetime | None = field(default=None, compare=False)  # when; None: never published (a full bucket)

    @classmethod
    def new(
        cls, user_name: str, connection_id: str, *, hub: str, user_agent: str = "", now: datetime | None = None
    ) -> ConnectionEntity:
        """Build the row for a connection that has just opened (names validated and normalised)."""
        moment = moment_of(now)
        return cls(
            user_name=normalize_user_name(user_name),
            connection_id=normalize_connection_id(connection_id),
            hub=hub,
            connected_at=moment,
            last_seen=moment,
            user_agent=(user_agent or "")[:MAX_USER_AGENT_LENGTH],
        )

    @property
    def partition_key(self) -> str:
        """Return the row's PartitionKey (the escaped, casefolded user name)."""
        return user_key(self.user_name)

    @property
    def row_key(self) -> str:
        """Return the row's RowKey (the escaped connection id)."""
        return connection_key(self.connection_id)

    def to_table(self) -> dict[str, Any]:
        """Return the row as azure-data-tables expects it."""
        return {
            "PartitionKey": self.partition_key,
            "RowKey": self.row_key,
            "UserName": self.user_name,
            "ConnectionId": self.connection_id,
            "Hub": self.hub,
            "ConnectedAt": self.connected_at,
            "LastSeen": self.last_seen,
            "UserAgent": self.user_agent,
            **({"IndexBucket": self.index_bucket} if self.index_bucket else {}),
            **(status_fields(self.status, self.status_at) if self.status_at else {}),
            **({"EndedAt": self.ended_at} if self.ended_at else {}),
            **({"Adopted": self.adopted} if self.adopted else {}),
            **({"Watching": " ".join(sorted(self.watching))} if self.watching else {}),
        }

    @classmethod
    def from_table(cls, row: Mapping[str, Any], *, etag: str | None = None) -> ConnectionEntity:
        """Build an entity from a row read from the table."""
        return cls(
            user_name=str(row.get("UserName") or ""),
            connection_id=str(row.get("ConnectionId") or ""),
            hub=str(row.get("Hub") or ""),
            connected_at=_stored_time(row.get("ConnectedAt")),
            last_seen=_stored_time(row.get("LastSeen")),
            user_agent=str(row.get("UserAgent") or ""),
            etag=etag,
            index_bucket=str(row["IndexBucket"]) if row.get("IndexBucket") else None,
            status=str(row["Status"]) if row.get("Status") else None,
            status_at=_stored_time(row["StatusAt"]) if isinstance(row.get("StatusAt"), datetime) else None,
            ended_at=_stored_time(row["EndedAt"]) if isinstance(row.get("EndedAt"), datetime) else None,
            adopted=str(row["Adopted"]) if row.get("Adopted") else None,
            watching=frozenset(str(row.get("Watching") or "").split()),
            tokens=float(row["Tokens"]) if isinstance(row.get("Tokens"), int | float) else 0.0,
            tokens_at=_stored_time(row["TokensAt"]) if isinstance(row.get("TokensAt"), datetime) else None,
        )

    def to_json(self) -> dict[str, str | None]:
        """Return the public JSON shape of a connection (the presence endpoint's `connections` items)."""
        return {
            "connectionId": self.connection_id,
            "hub": self.hub,
            "connectedAt": iso(self.connected_at),
            "lastSeen": iso(self.last_seen),
            "userAgent": self.user_agent,
            "status": self.status,
        }


def status_fields(status: str | None, at: datetime) -> dict[str, Any]:
    """Return the row properties that record a status set at `at` (a clear is stored as an empty string)."""
    return {"Status": status or "", "StatusAt": at}


def iso(moment: datetime) -> str:
    """Return a moment as the API writes it: ISO 8601 in UTC with a `Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _stored_time(value: Any) -> datetime:
    # A row written by something else may lack a time or hold a naive one: read it as long expired.
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.min.replace(tzinfo=UTC)


Clock = Callable[[], datetime]  # returns the current time, timezone-aware


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime (the default clock)."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Return `moment` in UTC; a naive datetime is refused rather than guessed at."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: use timezone-aware UTC datetimes")
    return moment.astimezone(UTC)


def moment_of(now: datetime | None, clock: Clock = utc_now) -> datetime:
    """Return `now` in UTC when given (callers and tests pin the time), else the clock's current time."""
    return as_utc(now) if now is not None else as_utc(clock())


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

    @classmethod
    def from_table(cls, row: Mapping[str, Any], *, etag: str | None = None) -> Membership:
        """Build a membership from its row in the user's partition."""
        joined = row.get("JoinedAt")
        moment = joined if isinstance(joined, datetime) else datetime.min.replace(tzinfo=UTC)
        room = str(row.get("Room") or str(row["RowKey"])[len(MEMBERSHIP_PREFIX) :])
        return cls(room, moment if moment.tzinfo else moment.replace(tzinfo=UTC), etag)


@dataclass(frozen=True, slots=True)
class RoomMark:
    """A grant (`%~g<room>`: a server let the user into the room) or a revocation (`%~q<room>`: a server took the
    user out; their connections that opened before `at` may still be in the room's group) in the user's partition."""

    room: str
    at: datetime
    etag: str | None = field(default=None, compare=False)

    def to_table(self, user_partition: str, *, prefix: str) -> dict[str, Any]:
        """Return the mark's row of the user's partition (`prefix`: GRANT_PREFIX or REVOKED_PREFIX)."""
        return {"PartitionKey": user_partition, "RowKey": prefix + self.room, "Room": self.room, "At": self.at}

    @classmethod
    def from_table(cls, row: Mapping[str, Any], *, etag: str | None = None) -> RoomMark:
        """Build a mark from its row in the user's partition."""
        at = row.get("At")
        moment = at if isinstance(at, datetime) else datetime.min.replace(tzinfo=UTC)
        room = str(row.get("Room") or str(row["RowKey"])[len(MEMBERSHIP_PREFIX) :])
        return cls(room, moment if moment.tzinfo else moment.replace(tzinfo=UTC), etag)


def is_membership_key(row_key: str) -> bool:
    """Return whether a RowKey of a user's partition names a membership row."""
    return row_key.startswith(MEMBERSHIP_PREFIX)
