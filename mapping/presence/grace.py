"""The grace period: a disconnect is announced only if no connection came back within PRESENCE_GRACE_SECONDS.

With a grace (and presence events on), a disconnect does not delete its row: it stamps `EndedAt` on it
(one blind write; a missing row means a repeated event) and schedules a decision to the app itself,
delivered after the grace (`mapping.storage.queue`: a queue message with an initial visibility delay). Until
then the ended row still counts for presence (`Lease.holds`), but for nothing else: no send, no group
action goes to it. Invariants (each named by the test that checks it):

G1. A connection that opens while a grace holds an ended row of its user takes that row's place in one
    transaction with the presence write (P2): the ended row is deleted, its status carried over, so the
    user's state does not change and a page reload announces nothing.
    (test_grace: test_a_reload_within_the_grace_announces_nothing)
G2. The decision deletes the rows whose grace is over and decides presence in one transaction (the
    sweep's step, `mapping.presence.settle`); offline is last seen at the disconnect. Delivered twice,
    late or concurrently, it finds nothing left to do, or repeats the recorded pair (P4). Delivered
    early, it schedules itself again for the rest of the grace.
    (test_grace: test_the_grace_expiring_announces_offline_once, test_a_doubled_decision_converges)
G3. A lost decision is the sweep's: a row whose grace is over is not live, so the sweep that reaches its
    index entry deletes it and announces the user, within the same bound as a lost disconnect. The sweep
    never deletes a row while a grace holds it.
    (test_grace: test_a_lost_decision_is_made_by_the_sweep)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from mapping.errors import InvalidRequestError, RowChangedError
from mapping.keys import connection_key, normalize_user_name, user_key
from mapping.presence.rows import as_utc, iso
from mapping.presence.settle import settle
from mapping.presence.state import PresenceChange
from mapping.storage.table import merge

if TYPE_CHECKING:  # the queue carrier's SDK loads only where a queue is used (functions.runtime)
    from mapping.presence.write_loop import UserWrites
    from mapping.storage.queue import DelayedActions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    """A scheduled grace decision: whose, and when it is due."""

    user: str
    due: datetime

    def to_body(self) -> str:
        """Return the queue message's text."""
        return json.dumps({"user": self.user, "due": iso(self.due)}, ensure_ascii=False)

    @classmethod
    def from_body(cls, body: str) -> Decision:
        """Parse a queue message's text, or raise InvalidRequestError (a poison message)."""
        try:
            value = json.loads(body)
            return cls(normalize_user_name(value["user"]), as_utc(datetime.fromisoformat(value["due"])))
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidRequestError(f"not a grace decision: {error}") from None


class Grace:
    """Disconnects held for a grace, and the decisions that end them."""

    def __init__(self, writes: UserWrites, delayed: DelayedActions) -> None:
        self.writes = writes
        self.delayed = delayed

    async def end(self, user_name: str, connection_id: str, *, now: datetime | None = None) -> bool:
        """Stamp a closed connection's row ended and schedule its decision; False when the row is gone."""
        name = normalize_user_name(user_name)
        moment = self.writes.now(now)
        patch = {"PartitionKey": user_key(name), "RowKey": connection_key(connection_id), "EndedAt": moment}
        try:
            await self.writes.table.write(merge(patch), action="end a connection")
        except RowChangedError:
            return False  # gone already: a repeated disconnect, a sweep, or a reload took its place
        grace = self.writes.lease.grace
        await self.delayed.schedule(Decision(name, moment + grace).to_body(), delay=grace)
        return True

    async def decide(self, decision: Decision, *, now: datetime | None = None) -> PresenceChange | None:
        """End the user's rows whose grace is over, with the presence decision (G2); return what to announce."""
        moment = self.writes.now(now)
        if moment < decision.due:
            await self.delayed.schedule(decision.to_body(), delay=decision.due - moment)
            return None
        partition = user_key(decision.user)
        # Read and settle in the user's turn: two decisions of one user on this instance announce one offline.
        async with self.writes.turns.turn(partition):
            view = await self.writes.read_user(partition)
            ended = {key: row for key, row in view.rows.items() if self.writes.lease.ended(row, moment)}
            if not ended:
                return None
            last = max(row.ended_at for row in ended.values() if row.ended_at is not None)
            settled = await settle(
                self.writes,
                view,
                user_name=view.name(),
                gone={key: row.etag or "" for key, row in ended.items()},
                alive={},
                now=moment,
                gone_known_alive_until=last,
            )
        logger.info("grace: %d ended connection(s) of a user removed", settled.deleted)
        return settled.change
