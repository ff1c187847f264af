"""The event transaction loop: read the user, plan the row write, decide presence, commit on that read, retry.

A write of a row made live at a moment (a connect, a revival, a status) goes through `write_live_row`:
the index entry first (E1), then one transaction conditional on the user's read that writes the row and
the presence decision together (P2-P4); a conflict reads the user again and plans anew.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from mapping.contention import Attempts
from mapping.entity import ConnectionEntity
from mapping.errors import BatchRejectedError, ConflictError, StorageError
from mapping.presence import PresenceChange, decide, presence_write
from mapping.table import Operation, Table
from mapping.user_store import UserStore
from mapping.user_view import UserView

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RowWrite:
    """A row as it will be, the writes that make it so, and the ended row it replaces (a reload), if any."""

    stored: ConnectionEntity
    operations: list[Operation]
    replaces: str | None = None


@dataclass(frozen=True, slots=True)
class Written:
    """What a row write with a presence decision did: the row written, the change, the view decided on."""

    entity: ConnectionEntity | None
    change: PresenceChange | None
    view: UserView


PlanRowWrite = Callable[[ConnectionEntity | None, str, UserView], RowWrite | None]


async def write_live_row(
    store: UserStore, partition: str, row: str, name: str, moment: datetime, plan: PlanRowWrite, *, action: str
) -> Written:
    """Write a row live at `moment` (connect, revival, status) with the presence decision (P2-P4).

    `plan` gives the row after the write and the write itself, or None to decline (the row being gone);
    the result says which row was written (None: declined), the change to announce, and the view the
    decision was made on.
    """
    writer = uuid.uuid4().hex
    attempts = Attempts()
    async with store.turns.turn(partition):
        for attempt in attempts.tries():
            view = await store.read_user(partition)
            attempts.read(view)
            existing = view.rows.get(row)
            if view.presence.writer == writer:
                return Written(existing, view.presence.announced_as(name, rooms=view.rooms), view)
            planned = plan(existing, store.index.bucket(moment, partition), view)
            if planned is None:
                return Written(None, attempts.announce(view, name, None), view)
            after = {key: entity for key, entity in view.rows.items() if key != planned.replaces}
            state = view.state(store.lease, now=moment, rows={**after, row: planned.stored})
            version = decide(view.presence, state, now=moment) if store.settings.presence_events else None
            await _entry_first(store, attempts, partition, row, moment, version=version)
            if existing is None:
                attempts.pending = False  # our row is not there: no attempt of ours committed
            operations = [
                *planned.operations,
                presence_write(partition, view.presence, writer=writer, user_name=name, state=state, version=version),
            ]
            try:
                await store.transact(operations, action=action, singly=attempts.singly)
            except ConflictError:
                await attempts.failed(view, attempt, deciding=version is not None)
                continue
            change = PresenceChange.of(name, state, version, rooms=view.rooms) if version is not None else None
            return Written(planned.stored, attempts.announce(view, name, change), view)
        raise StorageError(f"{action}: the user's connections kept changing; try again")


async def transact(table: Table, operations: Sequence[Operation], *, action: str, singly: bool = False) -> None:
    """Run a transaction, or one call at a time when the service refuses this partition's transactions."""
    if not singly:
        try:
            await table.transact(operations, action=action)
            return
        except BatchRejectedError:
            logger.info("%s: a transaction the service cannot carry; one call at a time", action)
    for operation in operations:
        await table.write(operation, action=action)


async def _entry_first(
    store: UserStore, attempts: Attempts, partition: str, row: str, moment: datetime, *, version: int | None
) -> None:
    """Write the row's index entry before the row write (E1): once, and again only to flag it (E5)."""
    flagged = version is not None
    if attempts.indexed is None or (flagged and not attempts.indexed):
        await store.index.write(partition, row, moment, announces=flagged)
        attempts.indexed = flagged
