"""THE FLOOR: the bare azure-data-tables async calls each event needs, and nothing else.

No function wrapper, no parsing, no validation, no key escaping, no output messages: one shared
async TableClient and the same table requests the app's design makes (on connect the expiry-index
entry and the row; a delete on disconnect; with presence, the row change and the bump of the user's
presence row in one transaction, a query of the live rows and the presence row, and on a change of
state the conditional write of its new version; one live-rows query to send or to read presence).
The app cannot do less work on the table than this. (Without the expiry index a connect would be one
write less; the index is what keeps the sweep's cost proportional to the stale rows. Without presence
versions a change would be one write less; they are what orders presence across instances.)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from mapping.presence import PRESENCE_ROW

LIVE = "PartitionKey eq @pk and LastSeen gt @cutoff"
LIVE_AND_PRESENCE = "PartitionKey eq @pk and ( RowKey eq @presence or LastSeen gt @cutoff )"


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
        """Write the index entry and the row; with presence, bump, read and record the user's state."""
        now = datetime.now(UTC)
        bucket = int(now.timestamp()) // 60 * 60
        entry = {"PartitionKey": f"%~x{bucket:012d}", "RowKey": f"{user}|{connection}", "UserKey": user}
        await self.client.upsert_entity(entry, mode=UpdateMode.REPLACE)
        row = {"PartitionKey": user, "RowKey": connection, "ConnectedAt": now, "LastSeen": now}
        if not presence:
            await self.client.upsert_entity(row, mode=UpdateMode.MERGE)
            return
        await self.client.submit_transaction([("upsert", row, {"mode": UpdateMode.MERGE}), self._bump(user)])
        await self._record_presence(user)

    async def disconnect(self, user: str, connection: str, *, presence: bool = True) -> None:
        """Delete the row; with presence, bump, read and record the user's state."""
        if not presence:
            await self.client.delete_entity(user, connection)
            return
        await self.client.submit_transaction(
            [("delete", {"PartitionKey": user, "RowKey": connection}), self._bump(user)]
        )
        await self._record_presence(user)

    def _bump(self, user: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        keys = {"PartitionKey": user, "RowKey": PRESENCE_ROW, "Bump": uuid.uuid4().hex}
        return ("upsert", keys, {"mode": UpdateMode.MERGE})

    async def _record_presence(self, user: str) -> None:
        cutoff = datetime.now(UTC) - self.ttl
        query = self.client.query_entities(
            LIVE_AND_PRESENCE,
            parameters={"pk": user, "presence": PRESENCE_ROW, "cutoff": cutoff},
            select=["RowKey", "Online", "Version"],
        )
        rows = [row async for row in query]
        state = next((row for row in rows if row["RowKey"] == PRESENCE_ROW), None)
        online = len(rows) > (state is not None)
        if state is None or state.get("Online") is online:
            return
        patch = {
            "PartitionKey": user,
            "RowKey": PRESENCE_ROW,
            "Online": online,
            "Version": int(state.get("Version") or 0) + 1,
        }
        await self.client.update_entity(
            patch, mode=UpdateMode.MERGE, etag=state.metadata["etag"], match_condition=MatchConditions.IfNotModified
        )

    async def connections_of(self, user: str) -> list[Any]:
        """Read the user's live rows (what sending and presence both need)."""
        return await self._live(user)
