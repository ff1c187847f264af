"""Who is connected: connections per hub, their users, and group memberships of connections and users."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web

from local.emulator import protocol
from local.emulator.upstream import Caller

logger = logging.getLogger(__name__)


def hub_key(hub: str) -> str:
    """Hub names compare case-insensitively."""
    return hub.casefold()


@dataclass(eq=False)
class ClientConnection:
    """One live WebSocket connection of a client."""

    caller: Caller
    socket: web.WebSocketResponse
    last_received: float = field(default_factory=time.monotonic)
    close_error: str | None = None
    closed_by_service: bool = False
    connected_status: int | None = None  # the app's answer to connected (0: unreachable), once it came
    # Until the handshake is answered, records for the client wait here (e.g. a send during its connected event).
    backlog: list[str] | None = field(default_factory=list)

    @property
    def id(self) -> str:
        """Return the connection id."""
        return self.caller.connection_id

    async def send(self, record: str) -> bool:
        """Send one framed record; False if the socket is already closing."""
        if self.socket.closed:
            return False
        if self.backlog is not None:
            self.backlog.append(record)
            return True
        try:
            await self.socket.send_str(record)
        except (ConnectionError, RuntimeError) as error:
            logger.debug("send to %s failed: %s", self.id, error)
            return False
        return True

    async def open(self, handshake_response: str) -> None:
        """Answer the handshake, then deliver what waited for it."""
        waiting, self.backlog = self.backlog or [], None
        for record in [handshake_response, *waiting]:
            await self.send(record)

    async def close(self, error: str | None = None) -> None:
        """Close from the service side: a close record, then the WebSocket close."""
        self.closed_by_service = True
        self.close_error = error
        if self.backlog is None:
            await self.send(protocol.close(error))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.socket.close()


@dataclass(frozen=True, slots=True)
class PendingConnection:
    """A negotiated connection the client has not opened yet."""

    connection_id: str
    hub: str
    user_id: str | None
    claims: tuple[tuple[str, str], ...]
    expires: float


class Registry:
    """Live connections and groups, keyed by hub (case-insensitive)."""

    def __init__(self) -> None:
        self.connections: dict[str, ClientConnection] = {}
        self.pending: dict[str, PendingConnection] = {}
        self._connection_groups: dict[tuple[str, str], set[str]] = defaultdict(set)  # (hub, group) -> ids
        self._user_groups: dict[tuple[str, str], set[str]] = defaultdict(set)  # (hub, group) -> users
        self._simulated: dict[tuple[str, str], int] = {}  # (hub, group) -> members without a socket (benchmarks)
        self.lock = asyncio.Lock()

    def add_pending(self, token: str, pending: PendingConnection) -> None:
        """Remember a negotiated connection until the client opens it."""
        now = time.monotonic()
        for stale in [key for key, value in self.pending.items() if value.expires < now]:
            del self.pending[stale]
        self.pending[token] = pending

    def take_pending(self, token: str) -> PendingConnection | None:
        """Return and forget a negotiated connection (None if unknown or expired)."""
        pending = self.pending.pop(token, None)
        if pending is None or pending.expires < time.monotonic():
            return None
        return pending

    def add(self, connection: ClientConnection) -> None:
        """Register a connection whose handshake completed."""
        self.connections[connection.id] = connection

    def remove(self, connection: ClientConnection) -> None:
        """Forget a connection and its group memberships."""
        if self.connections.get(connection.id) is connection:
            del self.connections[connection.id]
        for members in self._connection_groups.values():
            members.discard(connection.id)

    def connection(self, hub: str, connection_id: str) -> ClientConnection | None:
        """Return a live connection of a hub (not one the service is closing: it is gone for the REST API at once)."""
        found = self.connections.get(connection_id)
        if found is None or found.closed_by_service:
            return None
        return found if hub_key(found.caller.hub) == hub_key(hub) else None

    def of_hub(self, hub: str) -> list[ClientConnection]:
        """Return every live connection of a hub."""
        return [c for c in self.connections.values() if hub_key(c.caller.hub) == hub_key(hub)]

    def of_user(self, hub: str, user: str) -> list[ClientConnection]:
        """Return the live connections of a user in a hub (user ids compare exactly, as in the service)."""
        return [c for c in self.of_hub(hub) if c.caller.user_id == user]

    def of_group(self, hub: str, group: str) -> list[ClientConnection]:
        """Return the live connections in a group, directly or through their user."""
        key = (hub_key(hub), group)
        ids = self._connection_groups.get(key, set())
        users = self._user_groups.get(key, set())
        return [
            c for c in self.of_hub(hub) if c.id in ids or (c.caller.user_id is not None and c.caller.user_id in users)
        ]

    def add_to_group(self, hub: str, group: str, *, connection_id: str | None = None, user: str | None = None) -> None:
        """Add a connection or a user (all their connections, now and later) to a group."""
        key = (hub_key(hub), group)
        if connection_id is not None:
            self._connection_groups[key].add(connection_id)
        if user is not None:
            self._user_groups[key].add(user)

    def remove_from_group(
        self, hub: str, group: str, *, connection_id: str | None = None, user: str | None = None
    ) -> None:
        """Remove a connection or a user from a group."""
        key = (hub_key(hub), group)
        if connection_id is not None:
            self._connection_groups[key].discard(connection_id)
        if user is not None:
            self._user_groups[key].discard(user)

    def remove_from_all_groups(self, hub: str, *, connection_id: str | None = None, user: str | None = None) -> None:
        """Remove a connection or a user from every group of the hub."""
        for (group_hub, _group), members in self._connection_groups.items():
            if group_hub == hub_key(hub) and connection_id is not None:
                members.discard(connection_id)
        for (group_hub, _group), users in self._user_groups.items():
            if group_hub == hub_key(hub) and user is not None:
                users.discard(user)

    def simulate(self, hub: str, group: str, count: int) -> None:
        """Make a group hold `count` simulated connections besides its real ones: sends to the group are billed for
        them as for a real recipient, and delivered to nobody (a room of 10,000 without 10,000 sockets)."""
        if count:
            self._simulated[(hub_key(hub), group)] = count
        else:
            self._simulated.pop((hub_key(hub), group), None)

    def simulated_in(self, hub: str, group: str) -> int:
        """Return how many simulated connections a group holds."""
        return self._simulated.get((hub_key(hub), group), 0)

    def user_in_group(self, hub: str, group: str, user: str) -> bool:
        """Tell whether a user is a member of a group."""
        return user in self._user_groups.get((hub_key(hub), group), set())


async def send_to(connections: Iterable[ClientConnection], record: str) -> list[str]:
    """Send one record to many connections; return the ids of those that took it."""
    targets = list(connections)
    results = await asyncio.gather(*(connection.send(record) for connection in targets))
    return [connection.id for connection, took in zip(targets, results, strict=True) if took]
