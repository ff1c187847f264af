"""THE FLOOR: the bare azure-data-tables async calls each event needs, and nothing else.

No function wrapper, no parsing, no validation, no key escaping, no output messages: one shared
async TableClient and the same table requests the app's design makes (on connect the expiry-index
entry, the row, and with presence a live-rows query; a delete plus a one-row live query on
disconnect; one live-rows query to send or to read presence). The app cannot do less work on the
table than this. (Without the expiry index a connect would be one write less; the index is what
keeps the sweep's cost proportional to the stale rows.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

LIVE = "PartitionKey eq @pk and LastSeen gt @cutoff"


class Floor:
    """The events as bare SDK calls on one async client."""

    def __init__(self, connection_string: str, table_name: str, *, ttl: timedelta) -> None:
        self.client = TableClient.from_connection_string(connection_string, table_name)
        self.ttl = ttl

    async def close(self) -> None:
        """Close the client."""
        await self.client.close()

    async def _live(self, user: str, *, select: list[str] | None = None, limit: int | None = None) -> list[Any]:
        cutoff = datetime.now(UTC) - self.ttl
        rows = []
        query = self.client.query_entities(
            LIVE, parameters={"pk": user, "cutoff": cutoff}, select=select, results_per_page=limit or 1000
        )
        async for row in query:
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
        return rows

    async def connect(self, user: str, connection: str, *, presence: bool = True) -> None:
        """Upsert the row; with presence, read the user's live rows."""
        now = datetime.now(UTC)
        bucket = int(now.timestamp()) // 60 * 60
        entry = {"PartitionKey": f"%~x{bucket:012d}", "RowKey": f"{user}|{connection}", "UserKey": user}
        await self.client.upsert_entity(entry, mode=UpdateMode.REPLACE)
        row = {"PartitionKey": user, "RowKey": connection, "ConnectedAt": now, "LastSeen": now}
        await self.client.upsert_entity(row, mode=UpdateMode.MERGE)
        if presence:
            await self._live(user, select=["RowKey", "ConnectedAt"])

    async def disconnect(self, user: str, connection: str, *, presence: bool = True) -> None:
        """Delete the row; with presence, look for one live row left."""
        await self.client.delete_entity(user, connection)
        if presence:
            await self._live(user, select=["RowKey"], limit=1)

    async def connections_of(self, user: str) -> list[Any]:
        """Read the user's live rows (what sending and presence both need)."""
        return await self._live(user)
