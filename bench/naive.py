"""THE ANTI-PATTERN BASELINE. Never used by the app; it exists only so the benchmarks can measure against it.

This is the naive way, in the style of the original SignalR + Table Storage samples: synchronous
functions with a synchronous TableClient, the table created on every call, and the filter built by
pasting the user name into the string (an injection hole: a name like `x' or 'a' eq 'a` reads every
row). It does the same job as the app's functions and produces the same outputs for plain names, so
the two can be timed side by side. To be charitable it shares one client (one connection pool) per
process instead of opening one per call, and it skips the app's validation and lease checks.

Its client events (join, leave, setStatus) read and write without ETags: a membership is a row in the
user's partition and one in the room's, written one after the other (the user's first, so a crash in
between leaves a member the room does not list), with the 100-room limit checked on a read that a
racing join can make stale; a status is merged into the row found by the read (bringing back, as a
fragment, a row deleted meanwhile) and announced with the time as its version, unchecked.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode


class NaiveFunctions:
    """The events the naive way; each method is a synchronous function body as the host would run it."""

    def __init__(self, connection_string: str, table_name: str) -> None:
        self.client = TableClient.from_connection_string(connection_string, table_name)

    def close(self) -> None:
        """Close the shared client."""
        self.client.close()

    def _create_table(self) -> None:
        # The anti-pattern: a round trip on every call to create a table that exists.
        with contextlib.suppress(ResourceExistsError):
            self.client.create_table()

    def _rows_of(self, user: str) -> list[Any]:
        # The anti-pattern: user input pasted into the filter.
        return list(self.client.query_entities(f"PartitionKey eq '{user}'"))

    def _connections_of(self, user: str, rows: list[Any] | None = None) -> list[Any]:
        # The user's partition also holds their memberships: keep the connection rows.
        return [row for row in (self._rows_of(user) if rows is None else rows) if "ConnectionId" in row]

    def connected(self, invocation: str, signalr: Any) -> None:
        """Store the connection; broadcast presence when it is the user's only row."""
        event = json.loads(invocation)
        user, connection = event["UserId"], event["ConnectionId"]
        now = datetime.now(UTC)
        self._create_table()
        self.client.upsert_entity(
            {
                "PartitionKey": user,
                "RowKey": connection,
                "UserName": user,
                "ConnectionId": connection,
                "Hub": event["Hub"],
                "ConnectedAt": now,
                "LastSeen": now,
                "UserAgent": (event.get("Headers") or {}).get("User-Agent", ""),
            },
            mode=UpdateMode.MERGE,
        )
        if len(self._connections_of(user)) == 1:
            signalr.set(json.dumps([{"target": "presence", "arguments": [{"user": user, "online": True}]}]))

    def disconnected(self, invocation: str, signalr: Any) -> None:
        """Delete the connection's row; broadcast presence when the user has no row left."""
        event = json.loads(invocation)
        user, connection = event["UserId"], event["ConnectionId"]
        self._create_table()
        with contextlib.suppress(ResourceNotFoundError):
            self.client.delete_entity(user, connection)
        if not self._connections_of(user):
            signalr.set(json.dumps([{"target": "presence", "arguments": [{"user": user, "online": False}]}]))

    def send(self, req: func.HttpRequest, signalr: Any) -> func.HttpResponse:
        """Send `message` to every connection of `to`."""
        body = req.get_json()
        to, message, target = body["to"], body["message"], body.get("target", "newMessage")
        sender = req.headers.get("x-ms-client-principal-name")
        self._create_table()
        rows = self._connections_of(to)
        if not rows:
            return func.HttpResponse(json.dumps({"error": "offline"}), status_code=404, mimetype="application/json")
        argument = {"from": sender, "to": to, "message": message}
        signalr.set(
            json.dumps([{"target": target, "connectionId": row["RowKey"], "arguments": [argument]} for row in rows])
        )
        return func.HttpResponse(json.dumps({"to": to, "delivered": len(rows)}), mimetype="application/json")

    def user_presence(self, req: func.HttpRequest) -> func.HttpResponse:
        """Return whether the user is online, with their connections."""
        user = req.route_params["user"]
        self._create_table()
        connections = [
            {
                "connectionId": row["ConnectionId"],
                "hub": row["Hub"],
                "connectedAt": row["ConnectedAt"].isoformat(),
                "lastSeen": row["LastSeen"].isoformat(),
                "userAgent": row.get("UserAgent", ""),
            }
            for row in self._connections_of(user)
        ]
        body = {"user": user, "online": bool(connections), "connections": connections}
        return func.HttpResponse(json.dumps(body), mimetype="application/json")

    def join(self, invocation: str, signalr: Any) -> None:
        """A client's `join(room)`: record the membership, add the user's connections to the room's group."""
        event = json.loads(invocation)
        user, connection, room = event["UserId"], event["ConnectionId"], event["Arguments"][0]
        self._create_table()
        rows = self._rows_of(user)
        rooms = [row for row in rows if str(row["RowKey"]).startswith(ROOM_KEY)]
        if not any(row["RowKey"] == ROOM_KEY + room for row in rooms):
            if len(rooms) >= 100:
                signalr.set(json.dumps([_error(connection, "at most 100 rooms")]))
                return
            now = datetime.now(UTC)
            self.client.upsert_entity({"PartitionKey": user, "RowKey": ROOM_KEY + room, "Room": room, "JoinedAt": now})
            self.client.upsert_entity({"PartitionKey": ROOM_KEY + room, "RowKey": user, "UserName": user})
        connections = {row["RowKey"] for row in self._connections_of(user, rows)} | {connection}
        actions = [{"action": "add", "groupName": room, "connectionId": c} for c in sorted(connections)]
        announcement = {
            "target": "room",
            "groupName": room,
            "arguments": [{"room": room, "user": user, "joined": True}],
        }
        signalr.set(json.dumps([*actions, announcement]))

    def leave(self, invocation: str, signalr: Any) -> None:
        """A client's `leave(room)`: delete the membership, take the user's connections out of the room's group."""
        event = json.loads(invocation)
        user, connection, room = event["UserId"], event["ConnectionId"], event["Arguments"][0]
        self._create_table()
        connections = {row["RowKey"] for row in self._connections_of(user)} | {connection}
        self.client.delete_entity(user, ROOM_KEY + room)
        self.client.delete_entity(ROOM_KEY + room, user)
        announcement = {
            "target": "room",
            "groupName": room,
            "arguments": [{"room": room, "user": user, "joined": False}],
        }
        actions = [{"action": "remove", "groupName": room, "connectionId": c} for c in sorted(connections)]
        signalr.set(json.dumps([announcement, *actions]))

    def set_status(self, invocation: str, signalr: Any) -> None:
        """A client's `setStatus(status)`: store it on the connection's row, announce the user's latest status."""
        event = json.loads(invocation)
        user, connection, status = event["UserId"], event["ConnectionId"], event["Arguments"][0]
        self._create_table()
        rows = self._connections_of(user)
        if not any(row["RowKey"] == connection for row in rows):
            signalr.set(json.dumps([_error(connection, "this connection is not mapped; reconnect")]))
            return
        now = datetime.now(UTC)
        self.client.upsert_entity(
            {"PartitionKey": user, "RowKey": connection, "Status": status, "StatusAt": now}, mode=UpdateMode.MERGE
        )
        presence = {
            "user": user,
            "online": True,
            "connections": len(rows),
            "status": status,  # the one just set is the latest
            "version": int(now.timestamp() * 1000),  # the clock, unchecked: racing instances may disagree
        }
        signalr.set(json.dumps([{"target": "presence", "arguments": [presence]}]))


ROOM_KEY = "room-"  # a membership's RowKey in the user's partition, and a room's PartitionKey


def _error(connection: str, text: str) -> dict[str, Any]:
    return {"target": "error", "connectionId": connection, "arguments": [{"error": text}]}
