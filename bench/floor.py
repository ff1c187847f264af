"""THE FLOORS: bare azure-data-tables async calls on one shared client, with nothing else around them.

No function wrapper, no parsing, no validation, no key escaping, no output messages. Two floors:

- `Floor`, the design floor: the table requests of the app's design and no others (with presence,
  one query of the user's partition, the expiry-index entry on connect, and one transaction that
  changes the row and writes the presence row conditional on the ETag the query returned; without
  presence the same requests, the presence row written unchanged). The app cannot do less work on
  the table than this; the ratio ours/floor is the cost of the app's own code. The client events
  follow the same design: join and leave as in `mapping/rooms/membership.py` (R1, R2), setStatus as a live-row
  write with a presence decision (`mapping/presence/store.py`).
- `MinimalFloor`, the least any correct solution needs given each event's contract, whatever the
  design (each method says why no correct solution can do with fewer requests):
  - connect, disconnect: one write per change, and one query of the user's partition to tell whether
    presence changed. It keeps no expiry index (a sweep would scan the table) and no ordered versions
    (racing instances could announce in the wrong order); the gap ours/minimal is what those two
    guarantees cost. Without presence it reads nothing, so it leaves out the user's rooms a new
    connection joins (whether any design must read them depends on how the groups are addressed).
  - join, leave: a membership readable as "members of a room" and as "rooms of a user", each one
    partition query; at most 100 rooms per user; never half-written. Its own keys and its own guard
    row, not the app's member index and presence row.
  - setStatus: the status stored with the connection; the user's status (the most recently set
    among their live connections) announced with a version, of which the highest is the current one.
    Its own version row, not the app's presence row; no lease refresh (not in the contract).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from mapping.keys import MEMBERSHIP_PREFIX, PRESENCE_ROW, ROOM_PREFIX
from mapping.rooms.tally import TALLY_ROW

LIVE = "PartitionKey eq @pk and LastSeen gt @cutoff"
PARTITION = "PartitionKey eq @pk"
MAX_ROOMS = 100  # the contract: at most 100 rooms per user
IF_MATCH = MatchConditions.IfNotModified

Operation = tuple[str, dict[str, Any], dict[str, Any]]


class _Client:
    """One shared async client and the live-rows read every floor makes the same way."""

    def __init__(self, connection_string: str, table_name: str, *, ttl: timedelta) -> None:
        self.client = TableClient.from_connection_string(connection_string, table_name)
        self.ttl = ttl

    async def close(self) -> None:
        """Close the client."""
        await self.client.close()

    async def connections_of(self, user: str) -> list[Any]:
        """Read the user's live rows (what sending and presence both need)."""
        cutoff = datetime.now(UTC) - self.ttl
        query = self.client.query_entities(LIVE, parameters={"pk": user, "cutoff": cutoff}, results_per_page=1000)
        return [row async for row in query]

    async def _partition(self, user: str) -> list[Any]:
        return [row async for row in self.client.query_entities(PARTITION, parameters={"pk": user})]

    @staticmethod
    def _row(rows: list[Any], key: str) -> Any:
        return next((row for row in rows if row["RowKey"] == key), None)

    def _online(self, rows: list[Any], *, without: str | None = None) -> bool:
        cutoff = datetime.now(UTC) - self.ttl
        return any(
            row["RowKey"] not in (PRESENCE_ROW, without) and row.get("LastSeen") and row["LastSeen"] > cutoff
            for row in rows
        )


class Floor(_Client):
    """The design floor: the app's table requests as bare SDK calls."""

    async def connect(self, user: str, connection: str, *, presence: bool = True) -> None:
        """Read the partition, write the index entry, then the row in one transaction with the presence row on its
        ETag (deciding presence, or, without presence, unchanged: a join racing the connect is serialised with it,
        and the read gives the user's rooms, whose groups the new connection joins)."""
        now = datetime.now(UTC)
        rows = await self._partition(user)
        bucket = int(now.timestamp()) // 60 * 60
        entry = {"PartitionKey": f"%~x{bucket:012d}", "RowKey": f"{user}|{connection}", "UserKey": user}
        await self.client.upsert_entity(entry, mode=UpdateMode.MERGE)
        row = {"PartitionKey": user, "RowKey": connection, "ConnectedAt": now, "LastSeen": now}
        guard = self._presence(user, rows, True) if presence else self._guard(user, rows)
        await self.client.submit_transaction([("upsert", row, {"mode": UpdateMode.MERGE}), guard])

    async def disconnect(self, user: str, connection: str, *, presence: bool = True) -> None:
        """Delete the row; with presence, read the partition first and decide in the same transaction."""
        if not presence:
            await self.client.delete_entity(user, connection)
            return
        rows = await self._partition(user)
        online = self._online(rows, without=connection)
        delete = ("delete", {"PartitionKey": user, "RowKey": connection})
        await self.client.submit_transaction([delete, self._presence(user, rows, online)])

    def _presence(self, user: str, rows: list[Any], online: bool) -> tuple[str, dict[str, Any], dict[str, Any]]:
        state = next((row for row in rows if row["RowKey"] == PRESENCE_ROW), None)
        entity: dict[str, Any] = {"PartitionKey": user, "RowKey": PRESENCE_ROW, "Writer": uuid.uuid4().hex}
        if state is None or state.get("Online") is not online:
            entity.update(
                Online=online, Version=EntityProperty(int(datetime.now(UTC).timestamp() * 1000), EdmType.INT64)
            )
        if state is None:
            return ("create", entity, {})
        return (
            "update",
            entity,
            {
                "mode": UpdateMode.MERGE,
                "etag": state.metadata["etag"],
                "match_condition": MatchConditions.IfNotModified,
            },
        )

    async def join(self, user: str, room: str) -> bool:
        """Join as the app's design does (R1, R2): read the user, write the member-index row, then one transaction
        with the membership row and the presence row (unchanged, conditional on its ETag). False: already a member."""
        rows = await self._partition(user)
        if self._row(rows, MEMBERSHIP_PREFIX + room) is not None:
            await self._roster(room)  # the caller's snapshot
            # Within a minute of the join the announcement is repeated (rooms R5), with the room's tally as it stands.
            await self._tally(room, TALLY_ROW)
            return False
        if sum(str(row["RowKey"]).startswith(MEMBERSHIP_PREFIX) for row in rows) >= MAX_ROOMS:
            raise ValueError("at most 100 rooms")
        now = datetime.now(UTC)
        index = {"PartitionKey": ROOM_PREFIX + room, "RowKey": user, "UserName": user, "JoinedAt": now}
        # The member-index row with the room's tally (rooms T1): read both in one query, write both in one
        # transaction; a room without a tally is counted by a scan first (T3).
        written = await self._with_tally(room, user, ("upsert", {**index, "Pending": True, "PendingAt": now}, {}))
        membership = {"PartitionKey": user, "RowKey": MEMBERSHIP_PREFIX + room, "Room": room, "JoinedAt": now}
        await self.client.submit_transaction([("create", membership, {}), self._guard(user, rows)])
        confirm = {"PartitionKey": ROOM_PREFIX + room, "RowKey": user, "Pending": False}
        options = {"etag": written["etag"], "match_condition": IF_MATCH}
        await self.client.update_entity(confirm, mode=UpdateMode.MERGE, **options)  # roster C3: the flag goes
        await self._roster(room)  # the caller's snapshot (roster: one query a thousand members)
        return True

    async def _tally(self, room: str, user: str) -> Any:
        """Read a member's index row and the room's tally in one query; a room with no tally is scanned (T3)."""
        query = "PartitionKey eq @pk and ( RowKey eq @rk or RowKey eq @tally )"
        parameters = {"pk": ROOM_PREFIX + room, "rk": user, "tally": TALLY_ROW}
        rows = [row async for row in self.client.query_entities(query, parameters=parameters)]
        tally = next((row for row in rows if row["RowKey"] == TALLY_ROW), None)
        if tally is None:
            await self._roster(room)
        return tally

    async def _with_tally(self, room: str, user: str, operation: Any) -> dict[str, Any]:
        """Read the row and the room's tally, then write the row and the tally (its count moved) in one transaction
        on the tally's ETag; read again when another writer of the room came first (as the app does)."""
        fields = {"PartitionKey": ROOM_PREFIX + room, "RowKey": TALLY_ROW, "Members": 1, "Online": 1}
        while True:
            tally = await self._tally(room, user)
            try:
                if tally is None:
                    written = await self.client.submit_transaction([operation, ("create", fields, {})])
                else:
                    options = {"etag": tally.metadata["etag"], "match_condition": IF_MATCH, "mode": UpdateMode.MERGE}
                    written = await self.client.submit_transaction([operation, ("update", fields, options)])
                return dict(written[0])
            except TableTransactionError as error:
                if error.status_code not in (409, 412):
                    raise

    async def _roster(self, room: str) -> None:
        async for _row in self.client.query_entities("PartitionKey eq @pk", parameters={"pk": ROOM_PREFIX + room}):
            pass

    async def leave(self, user: str, room: str) -> bool:
        """Leave as the app's design does: read the user, one transaction deleting the membership row (on its ETag)
        with the presence row. The member-index row stays for a reader of the room to clear (R1). False: was not a
        member."""
        rows = await self._partition(user)
        membership = self._row(rows, MEMBERSHIP_PREFIX + room)
        if membership is not None:
            flag = {"PartitionKey": ROOM_PREFIX + room, "RowKey": user, "Pending": True, "PendingAt": datetime.now(UTC)}
            await self._with_tally(room, user, ("upsert", flag, {}))  # roster C3 and the tally (rooms T1)
            keys = {"PartitionKey": user, "RowKey": MEMBERSHIP_PREFIX + room}
            delete = ("delete", keys, {"etag": membership.metadata["etag"], "match_condition": IF_MATCH})
            await self.client.submit_transaction([delete, self._guard(user, rows)])
        return membership is not None

    async def set_status(self, user: str, connection: str, status: str) -> bool:
        """Set a status as the app's design does: read the user, write the expiry-index entry (the row's LastSeen
        moves), then one transaction with the row (on its ETag) and a new presence pair. False: no such row."""
        rows = await self._partition(user)
        row = self._row(rows, connection)
        if row is None:
            return False
        now = datetime.now(UTC)
        bucket = f"%~x{int(now.timestamp()) // 60 * 60:012d}"
        entry = {"PartitionKey": bucket, "RowKey": f"{user}|{connection}", "UserKey": user}
        await self.client.upsert_entity(entry, mode=UpdateMode.MERGE)
        patch = {
            "PartitionKey": user,
            "RowKey": connection,
            "LastSeen": now,
            "IndexBucket": bucket,
            "Status": status,
            "StatusAt": now,
        }
        update = (
            "update",
            patch,
            {"mode": UpdateMode.MERGE, "etag": row.metadata["etag"], "match_condition": IF_MATCH},
        )
        pair = {"Online": True, "Status": status, "Version": EntityProperty(_millis(now), EdmType.INT64)}
        await self.client.submit_transaction([update, self._guard(user, rows, pair)])
        return True

    def _guard(self, user: str, rows: list[Any], fields: dict[str, Any] | None = None) -> Operation:
        """The presence-row write of a transaction, conditional on the ETag read (with a new pair if `fields`)."""
        state = self._row(rows, PRESENCE_ROW)
        entity: dict[str, Any] = {
            "PartitionKey": user,
            "RowKey": PRESENCE_ROW,
            "Writer": uuid.uuid4().hex,
            **(fields or {}),
        }
        if state is None:
            return ("create", entity, {})
        return (
            "update",
            entity,
            {"mode": UpdateMode.MERGE, "etag": state.metadata["etag"], "match_condition": IF_MATCH},
        )


class MinimalFloor(_Client):
    """The least any correct solution needs, event by event, whatever the design (its own keys throughout)."""

    GUARD = "~joins"  # in the user's partition: rewritten by every join, so joins of one user serialise
    VERSIONS = "~status"  # in the user's partition: the user's status and its version
    MEMBER = "~in|"  # RowKey prefix of a membership in the user's partition ("rooms of a user")
    MEMBERS = "~room|"  # PartitionKey prefix of a room's members ("members of a room")

    async def connect(self, user: str, connection: str, *, presence: bool = True) -> None:
        """Read whether the user was online (with presence), then write the row."""
        now = datetime.now(UTC)
        if presence:
            self._online(await self._partition(user))
        row = {"PartitionKey": user, "RowKey": connection, "ConnectedAt": now, "LastSeen": now}
        await self.client.upsert_entity(row, mode=UpdateMode.MERGE)

    async def disconnect(self, user: str, connection: str, *, presence: bool = True) -> None:
        """Delete the row, then read whether the user is still online (with presence)."""
        await self.client.delete_entity(user, connection)
        if presence:
            self._online(await self._partition(user))

    async def join(self, user: str, room: str) -> bool:
        """Four requests (two when already a member): the membership's three (one), then the snapshot's query.

        "Members of a room" and "rooms of a user" are each one partition query, so a membership is a row in
        the room's partition and a row in the user's: two partitions (a room's members are many users),
        and Table Storage has no transaction across partitions, so two writes at least. The limit of 100
        rooms needs the user's memberships read first (no conditional write tests a count), and two joins
        of one user racing must not both pass it, so the user's write is conditional on what was read:
        one transaction with a guard row on its ETag. Never half-written: the room's row goes first and a
        reader of the room keeps a member only if the user's row is there (written last, it is the truth);
        the other order would list nobody half-way but could leave a member no reader of the room finds.
        Already a member: the read says so. (A user's very first room could skip the read by creating the
        guard blind, failing over to a read when it exists: two requests then, four for every later room.)

        A join answers the caller a snapshot of the room's members with their presence, read after the
        caller is a member (a change committed meanwhile must be in it or heard): at least one query of the
        room's partition (1,000 rows a page), whatever holds the presence, since the room's members are known
        only from there; a design whose snapshot needs more (one read per member) costs more, never less.
        """
        rows = await self._partition(user)
        if self._row(rows, self.MEMBER + room) is not None:
            await self._members(room)
            return False
        if sum(str(row["RowKey"]).startswith(self.MEMBER) for row in rows) >= MAX_ROOMS:
            raise ValueError("at most 100 rooms")
        await self.client.upsert_entity({"PartitionKey": self.MEMBERS + room, "RowKey": user}, mode=UpdateMode.MERGE)
        membership: Operation = ("create", {"PartitionKey": user, "RowKey": self.MEMBER + room}, {})
        guard = self._row(rows, self.GUARD)
        bump: dict[str, Any] = {"PartitionKey": user, "RowKey": self.GUARD, "LastJoined": room}
        if guard is None:
            await self.client.submit_transaction([membership, ("create", bump, {})])
        else:
            options = {"mode": UpdateMode.MERGE, "etag": guard.metadata["etag"], "match_condition": IF_MATCH}
            await self.client.submit_transaction([membership, ("update", bump, options)])
        await self._members(room)
        return True

    async def _members(self, room: str) -> None:
        """The snapshot: the room's partition, one query a thousand members."""
        query = self.client.query_entities(PARTITION, parameters={"pk": self.MEMBERS + room}, results_per_page=1000)
        async for _row in query:
            pass

    async def leave(self, user: str, room: str) -> bool:
        """One request: the user's row, the truth, deleted blind.

        No read: leaving tests no limit, and deleting a row that is not there is harmless. A reader of the
        room already keeps a member only if the user's row is there, so the room's row may stay; deleting
        it in the leave would race a join of the same user (the join's row written, then deleted by the
        leave's late second request): a reader clears it instead, on the ETag it read, once no join can be
        writing it. This is the least for the leave alone; it leaves a snapshot (the join's) to verify each
        listed member, so a design whose snapshot is the one query of the room's partition must also mark
        the room's row in the leave (2 requests, as the app does: roster C3).
        """
        await self.client.delete_entity(user, self.MEMBER + room)
        return True

    async def set_status(self, user: str, connection: str, status: str) -> bool:
        """Two requests: the user's partition read, then one transaction (the status and the version).

        The status is stored in the connection's row, and the user's status after this call is this one
        (the most recently set). Announced with a version whose highest is the current state: a later
        decision (this set, another tab's set, a disconnect that makes an older status current) must get
        a higher version than every earlier one, on a state that includes every earlier write. A version
        from the clock alone cannot promise that across instances; a version read and rewritten on its
        ETag can, and only a read gives the ETag. One transaction: the status into the row (which must
        exist) and the new version, both in the user's partition. False: no such connection.
        """
        rows = await self._partition(user)
        if self._row(rows, connection) is None:
            return False
        now = datetime.now(UTC)
        recorded = self._row(rows, self.VERSIONS)
        version = max(int(recorded["Version"]) + 1 if recorded is not None else 0, _millis(now))
        patch = {"PartitionKey": user, "RowKey": connection, "Status": status, "StatusAt": now}
        pair = {
            "PartitionKey": user,
            "RowKey": self.VERSIONS,
            "Status": status,
            "Version": EntityProperty(version, EdmType.INT64),
        }
        record: Operation
        if recorded is None:
            record = ("create", pair, {})
        else:
            record = (
                "update",
                pair,
                {"mode": UpdateMode.MERGE, "etag": recorded.metadata["etag"], "match_condition": IF_MATCH},
            )
        await self.client.submit_transaction([("update", patch, {"mode": UpdateMode.MERGE}), record])
        return True


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
