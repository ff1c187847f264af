"""Outbound messages counted as Azure SignalR Service bills them: one per recipient connection per started 2 KB, and
one per started 2 KB of each client message the service forwards to the app's upstream ("One client sends a 4-KB
message to let the server broadcast to all clients. The billed message count is eight: one message from the service
to the application server and three messages from the service to the clients. Each message is counted as two 2-KB
messages", learn.microsoft.com/azure/azure-signalr/signalr-concept-messages-and-connections)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

BILLING_UNIT_BYTES = 2048
# How a REST send picks its recipients; the admin API always shows all four.
KINDS = ("connection", "user", "group", "broadcast")


def billed_units(record: str) -> int:
    """Return what one framed record costs per recipient: one message per started 2 KB of its UTF-8 bytes."""
    size = len(record.encode("utf-8"))
    return max(1, -(-size // BILLING_UNIT_BYTES))


@dataclass
class Counts:
    """Billed messages by kind, target (hub method) and group."""

    by_kind: Counter[str] = field(default_factory=Counter)
    by_target: Counter[str] = field(default_factory=Counter)
    by_target_and_kind: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    by_group: Counter[str] = field(default_factory=Counter)

    def add(self, billed: int, *, kind: str, target: str, group: str | None) -> None:
        """Count `billed` messages of one send."""
        self.by_kind[kind] += billed
        self.by_target[target] += billed
        self.by_target_and_kind[target][kind] += billed
        if group is not None:
            self.by_group[group] += billed

    def snapshot(self, *, upstream: int = 0) -> dict[str, Any]:
        """Return the counts as the admin API shows them: `total` to clients, `upstream` to the app, `billed` both."""
        total = sum(self.by_kind.values())
        return {
            "total": total,
            "upstream": upstream,
            "billed": total + upstream,
            "byKind": {kind: self.by_kind[kind] for kind in KINDS},
            "byTarget": dict(sorted(self.by_target.items())),
            "byTargetAndKind": {
                target: dict(sorted(kinds.items())) for target, kinds in sorted(self.by_target_and_kind.items())
            },
            "byGroup": dict(sorted(self.by_group.items())),
        }


@dataclass
class BilledMessages:
    """Billed outbound messages since the start or the last reset, in all and per recipient connection."""

    overall: Counts = field(default_factory=Counts)
    by_connection: defaultdict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))
    upstream: int = 0  # client messages forwarded to the app, billed as messages from the service

    def count(
        self,
        record: str,
        *,
        kind: str,
        target: str,
        recipients: Collection[str],
        group: str | None = None,
        simulated: int = 0,
    ) -> int:
        """Count one record delivered to the `recipients` connections (their ids) and to `simulated` connections of a
        group (billed in all only); return the messages billed."""
        if not recipients and not simulated:
            return 0
        units = billed_units(record)
        billed = units * (len(recipients) + simulated)
        self.overall.add(billed, kind=kind, target=target, group=group)
        for connection_id in recipients:
            self.by_connection[connection_id].add(units, kind=kind, target=target, group=group)
        logger.debug("billed %d message(s): %s send of %s to %d connection(s)", billed, kind, target, len(recipients))
        return billed

    def count_upstream(self, body: str) -> int:
        """Count one client message forwarded to the app's upstream (its JSON body); return the messages billed."""
        billed = billed_units(body)
        self.upstream += billed
        return billed

    def snapshot(self, connection_id: str | None = None) -> dict[str, Any]:
        """Return the counts as the admin API shows them: in all, or those billed to one connection (deliveries to
        it; what it sent upstream counts only in all)."""
        if connection_id is None:
            return self.overall.snapshot(upstream=self.upstream)
        found = self.by_connection.get(connection_id)
        return (found or Counts()).snapshot()

    def reset(self) -> None:
        """Start counting again from zero."""
        self.overall = Counts()
        self.by_connection.clear()
        self.upstream = 0
