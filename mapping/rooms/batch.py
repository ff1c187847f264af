"""Batched presence for big rooms: a room's pending flush, kept on its tally row, and the flush that sends its members'
latest pairs as `presenceBatch` messages.

A room with more members than `ROOM_BATCH_ABOVE` does not send each member's presence change to its group as it
happens. The change is copied onto the member's index row as in any room (roster C2), in one transaction with a write
of the room's tally, and a flush is due. Invariants (each named by the test that checks it):

B1. At most one flush is pending per room: the copy that finds none pending (or one overdue by `FLUSH_LOST_AFTER`:
    its queue message was lost) marks the tally `FlushDue` in the transaction of its write, on the ETags read, and
    then puts one delayed queue message (`ROOM_BATCH_SECONDS`); a put that fails raises, so the event fails and its
    announcement is made again (presence P5), and the mark becomes overdue and is taken over by the next change.
B2. Every copy into a big room writes the tally too, on its ETag, taking the tally's next sequence number (`Seq`) for
    itself and the tally; so copies and a flush's clearing of its mark are ordered. A flush clears its mark on the
    ETag of the tally it read, noting the tally's `Seq` as `Flushed`, then reads the rows numbered after the
    previous flush's `Flushed` (one query; the room's first flush: every copy since the room is big) and sends each
    member's latest pair once. A copy before the clearing is in that read; a copy after it finds no mark, marks the
    next flush, and is numbered after `Flushed`, where that flush reads from. No clock is compared. A row flagged
    pending is skipped: its member's copies are sent to the room at once. Sending again is harmless: entries are
    pairs as recorded (roster C1), and clients merge them by version alone. So a flush is idempotent and safe to
    run twice, and the message of a flush whose function failed is delivered again (the queue retries it) and reads
    the same rows; a repeat (the sweep's) queues a pending flush again.
B3. The latency bound: a change reaches a big room's members within `ROOM_BATCH_SECONDS` and the queue's polling
    (host.json `maxPollingInterval`, 2 s) of its copy; a lost flush is taken over by the room's next change once it
    is overdue, or by the sweep's repeat of the user (presence P5), which copies again.
(test_batch: test_a_big_room_hears_each_members_latest_state_once_per_flush,
test_a_lost_or_doubled_flush_converges)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mapping.errors import ConflictError, InvalidNameError, InvalidRequestError, StorageError
from mapping.keys import parse_room, room_partition
from mapping.presence.rows import iso
from mapping.presence.state import PresenceChange, recorded_from
from mapping.presence.store import ConnectionStore
from mapping.presence.write_loop import back_off, timed_tries
from mapping.rooms.tally import TALLY_ROW, is_leave_flag
from mapping.storage.table import etag_of, int64, int_value, merge

logger = logging.getLogger(__name__)

FLUSH_LOST_AFTER = timedelta(seconds=60)  # a flush this overdue was lost (its message, or its function for good)
NOT_DUE = datetime(1970, 1, 1, tzinfo=UTC)  # a tally's FlushDue when no flush is pending (a property cannot be unset)


@dataclass(frozen=True, slots=True)
class Batching:
    """How big rooms are batched: above how many members, and every how many seconds."""

    above: int
    seconds: int

    def flush_of(self, room: str, tally_row: Mapping[str, Any] | None, *, now: datetime) -> Flush | None:
        """The flush a copy into a room marks (B1): None for a room not big, or with a flush pending not overdue."""
        if not self.big(tally_row):
            return None
        row = tally_row or {}
        due = row.get("FlushDue")
        if isinstance(due, datetime) and now - _aware(due) < FLUSH_LOST_AFTER:
            return None
        return Flush(room, now + timedelta(seconds=self.seconds), int_value(row.get("Flushed")))

    def pending(self, room: str, tally_row: Mapping[str, Any] | None) -> Flush | None:
        """The flush a room's tally marks pending, if any (to queue again: a duplicate is harmless, B2)."""
        row = tally_row or {}
        due = row.get("FlushDue")
        if not isinstance(due, datetime) or _aware(due) <= NOT_DUE:
            return None
        return Flush(room, _aware(due), int_value(row.get("Flushed")))

    def big(self, tally_row: Mapping[str, Any] | None) -> bool:
        """Whether a room, by its tally as read, is batched."""
        members = (tally_row or {}).get("Members")
        return isinstance(members, int) and members > self.above


@dataclass(frozen=True, slots=True)
class Flush:
    """A room's flush as queued: the room, when it was due (its mark on the tally), and the tally's sequence number
    after which it reads copies (0: every copy since the room is big)."""

    room: str
    due: datetime
    since: int

    def to_body(self) -> str:
        """Return the queue message's text."""
        return json.dumps({"flush": self.room, "due": iso(self.due), "since": self.since})

    @classmethod
    def from_body(cls, body: str) -> Flush | None:
        """Parse a queue message's text: a flush, or None for any other message of the queue."""
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if not isinstance(value, dict) or "flush" not in value:
            return None
        try:
            since = value["since"]
            if not isinstance(since, int) or isinstance(since, bool) or since < 0:
                raise TypeError("since must be a whole number")
            return cls(parse_room(value["flush"]), _moment(value["due"]), since)
        except (ValueError, KeyError, TypeError, InvalidNameError) as error:
            raise InvalidRequestError(f"not a flush: {error}") from None


def mark_fields(flush: Flush) -> dict[str, Any]:
    """The tally's properties that mark a flush pending."""
    return {"FlushDue": flush.due}


async def run_flush(store: ConnectionStore, flush: Flush) -> list[PresenceChange]:
    """Clear the flush's mark, then read the room's rows numbered after the flush's `since` (B2); return each
    member's latest pair, for `presenceBatch` messages."""
    await _clear_mark(store, flush)
    pairs: dict[str, PresenceChange] = {}
    # An Int64 literal written out (a whole number: nothing to escape); the SDK's parameters would send 0 and 1 as
    # booleans and small numbers as Int32.
    query = f"PartitionKey eq @pk and Seq gt {int(flush.since)}L"
    async for page in store.table.pages(query, {"pk": room_partition(flush.room)}, action="flush a room"):
        for row in page:
            if row["RowKey"] == TALLY_ROW or row.get("Pending") or is_leave_flag(row) or not row.get("UserName"):
                continue  # a join or leave in flight: its own messages tell the room
            pair = recorded_from(row).announced_as(str(row["UserName"]))
            held = pairs.get(pair.user) if pair is not None else None
            if pair is not None and (held is None or pair.version > held.version):
                pairs[pair.user] = pair
    return sorted(pairs.values(), key=lambda pair: pair.version)


async def _clear_mark(store: ConnectionStore, flush: Flush) -> None:
    """Clear the tally's mark of this flush on its ETag, noting the tally's sequence number as where the next flush
    reads from (B2); copies write the tally too: read again on a conflict."""
    key = {"PartitionKey": room_partition(flush.room), "RowKey": TALLY_ROW}
    for attempt in timed_tries():
        rows = await store.table.query(
            "PartitionKey eq @pk and RowKey eq @rk", {"pk": key["PartitionKey"], "rk": TALLY_ROW}, action="flush a room"
        )
        due = rows[0].get("FlushDue") if rows else None
        if not isinstance(due, datetime) or _aware(due) != flush.due:
            return  # cleared already (a flush run twice), or marked again since: that flush reads on from here
        fields = {**key, "FlushDue": NOT_DUE, "Flushed": int64(int_value(rows[0].get("Seq")))}
        try:
            await store.table.write(merge(fields, etag=etag_of(rows[0])), action="flush a room")
            return
        except ConflictError:
            await back_off(attempt)
    raise StorageError(f"room {flush.room}: its tally kept changing; the flush is retried")


def _moment(value: Any) -> datetime:
    return _aware(datetime.fromisoformat(str(value)))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
