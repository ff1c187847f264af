"""THE FLOORS: bare azure-data-tables async calls on one shared client, with nothing else around them.

No function wrapper, no parsing, no validation, no key escaping, no output messages. Two floors:

- `Floor`, the design floor: the table requests of the app's design and no others (with presence,
  one query of the user's partition, the expiry-index entry on connect, and one transaction that
  changes the row and writes the presence row conditional on the ETag the query returned; without
  presence, the index entry and the row). The app cannot do less work on the table than this; the
  ratio ours/floor is the cost of the app's own code.
- `MinimalFloor`, the least any correct presence needs, whatever the design: one write per connect
  and disconnect, and one query of the user's partition to tell whether presence changed. It keeps
  no expiry index (a sweep would scan the table) and no ordered versions (racing instances could
  announce in the wrong order); the gap ours/minimal is what those two guarantees cost.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import EdmType, EntityProperty, UpdateMode
from azure.data.tables.aio import TableClient

from mapping.presence import PRESENCE_ROW

LIVE = "PartitionKey eq @pk and LastSeen gt @cutoff"
PARTITION = "PartitionKey eq @pk"


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

    def _online(self, rows: list[Any], *, without: str | None = None) -> bool:
        cutoff = datetime.now(UTC) - self.ttl
        return any(
            row["RowKey"] not in (PRESENCE_ROW, without) and row.get("LastSeen") and row["LastSeen"] > cutoff
            for row in rows
        )


class Floor(_Client):
    """The design floor: the app's table requests as bare SDK calls."""

    async def connect(self, user: str, connection: str, *, presence: bool = True) -> None:
        """Write the index entry and the row; with presence, read the partition first and decide in the write."""
        now = datetime.now(UTC)
        rows = await self._partition(user) if presence else []
        bucket = int(now.timestamp()) // 60 * 60
        entry = {"PartitionKey": f"%~x{bucket:012d}", "RowKey": f"{user}|{connection}", "UserKey": user}
        await self.client.upsert_entity(entry, mode=UpdateMode.MERGE)
        row = {"PartitionKey": user, "RowKey": connection, "ConnectedAt": now, "LastSeen": now}
        if not presence:
            await self.client.upsert_entity(row, mode=UpdateMode.MERGE)
            return
        await self.client.submit_transaction(
            [("upsert", row, {"mode": UpdateMode.MERGE}), self._presence(user, rows, True)]
        )

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


class MinimalFloor(_Client):
    """The least any correct presence needs: one write per change, one partition read to decide presence."""

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
