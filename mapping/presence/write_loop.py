"""The one write loop of a user's partition: take the user's turn, read the partition, plan, commit on the read's
ETag, and retry within a time bound (presence P2, P4).

Every writer of a user (connect, disconnect, refresh, setStatus, the sweep's and the grace's settling, join and
leave) reads the user's partition with one query and commits conditional on the presence row's ETag, so two
writers of one user conflict and one reads again. On one instance they never need to: events of one user wait
for each other (`UserTurns`), so a burst of one user's connects on one instance commits one after another.
Across instances conflicts remain; a writer retries with a growing, capped, random back-off for as long as
`ATTEMPT_SECONDS` allows (bounded by time, not by a count), then reports a conflict storm as a StorageError,
raised here and nowhere else. A plan says what to write for one read (`Commit`) or that the event is done
(`Done`); `UserWrites.write` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from mapping.errors import BatchRejectedError, ConflictError, StorageError
from mapping.presence.budget import Budgets
from mapping.presence.expiry import ExpiryIndex
from mapping.presence.lease import Lease
from mapping.presence.rows import Clock, ConnectionEntity, moment_of
from mapping.presence.state import PresenceChange, decide, presence_write
from mapping.presence.user_view import UserView, read_user
from mapping.settings import Settings
from mapping.storage.table import MAX_BATCH, Operation, Table

logger = logging.getLogger(__name__)

ATTEMPT_SECONDS = 20.0  # how long one event keeps reading and committing again after conflicts
_BACKOFF_SECONDS = 0.005  # the first conflict waits up to this long, doubling with every further one
_MAX_BACKOFF_SECONDS = 0.25

_Outcome = TypeVar("_Outcome")


class UserTurns:
    """One lock per user partition while anyone holds or awaits it: this instance's events of a user in turn.

    A turn is re-entrant for the task that holds it: a step that takes the turn may call one that takes it again.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._holders: dict[str, asyncio.Task[Any] | None] = {}

    @contextlib.asynccontextmanager
    async def turn(self, partition: str) -> AsyncIterator[None]:
        """Wait for the user's turn, and hold it for the block."""
        task = asyncio.current_task()
        if task is not None and self._holders.get(partition) is task:
            yield  # this task holds the turn already
            return
        lock, waiting = self._locks.get(partition, (asyncio.Lock(), 0))
        self._locks[partition] = (lock, waiting + 1)
        try:
            async with lock:
                self._holders[partition] = task
                try:
                    yield
                finally:
                    del self._holders[partition]
        finally:
            lock, waiting = self._locks[partition]
            if waiting == 1:
                del self._locks[partition]
            else:
                self._locks[partition] = (lock, waiting - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Attempts:
    """The memory of one run of the write loop (P4): its writer id, whether an attempt was sent, whether a failed one
    may have recorded a change, and whether the service refuses this partition's transactions (a conflict although
    nothing had changed)."""

    def __init__(self, *, seconds: float = ATTEMPT_SECONDS) -> None:
        self.writer = uuid.uuid4().hex  # names this event's presence writes, so it knows its own commit (P4)
        self.pending = False
        self.tried = False  # an attempt sent its writes (which may have committed though answered with an error)
        self.singly = False
        self.indexed: bool | None = None  # the entry written so far: none, plain, or announcing online (E5)
        self._failed: UserView | None = None
        self._seconds = seconds

    def tries(self) -> Iterator[int]:
        """Yield attempt numbers: the first always, further ones while the time allowed lasts."""
        return timed_tries(self._seconds)

    def mine(self, view: UserView) -> bool:
        """Return whether `view` shows this event's own presence write: an attempt answered with an error committed."""
        return view.presence.writer == self.writer

    def announce(self, view: UserView, name: str, change: PresenceChange | None) -> PresenceChange | None:
        """Return the change to announce: this attempt's, else the recorded pair if an earlier one may have
        committed (P4)."""
        return change or (repeat(view, name) if self.pending else None)

    def read(self, view: UserView) -> None:
        """Note a fresh read; identical to the one a failed transaction was built on: the refusal was not a race."""
        if self._failed is not None and _same(self._failed, view):
            # Azurite answers 404 (or 400) to a transaction whose keys it cannot parse (U+2028, U+00AD, ...).
            logger.info("a transaction was refused with nothing changed: one call at a time for this user")
            self.singly = True

    async def failed(self, view: UserView, attempt: int, *, deciding: bool) -> None:
        """Note a transaction that met a conflict, and wait a little before reading again."""
        self.pending = self.pending or deciding
        self._failed = view
        await back_off(attempt)


def repeat(view: UserView, user_name: str) -> PresenceChange | None:
    """The recorded pair, announced again after an outcome that could not be told apart (P4)."""
    return view.presence.announced_as(user_name, rooms=view.rooms)


def _same(first: UserView, second: UserView) -> bool:
    return first.presence.etag == second.presence.etag and {k: r.etag for k, r in first.rows.items()} == {
        k: r.etag for k, r in second.rows.items()
    }


def timed_tries(seconds: float = ATTEMPT_SECONDS) -> Iterator[int]:
    """Yield attempt numbers: the first always, further ones for `seconds` (a conflict storm is bounded by time)."""
    deadline = time.monotonic() + seconds
    attempt = 0
    while attempt == 0 or time.monotonic() < deadline:
        yield attempt
        attempt += 1


async def back_off(attempt: int, *, most: float = _MAX_BACKOFF_SECONDS) -> None:
    """Wait a random while after a conflict (up to `most` seconds), so writers racing on one partition spread out."""
    ceiling = min(_BACKOFF_SECONDS * 2 ** min(attempt, 16), most)
    await asyncio.sleep(random.uniform(0, ceiling))  # noqa: S311 - jitter, not a secret


@dataclass(frozen=True, slots=True)
class Done(Generic[_Outcome]):
    """A plan's answer when the read shows nothing (more) to write: the event's outcome."""

    outcome: _Outcome


@dataclass(frozen=True, slots=True)
class Commit(Generic[_Outcome]):
    """A plan's writes, committed together on the read they were planned on, and the outcome once they are."""

    operations: Sequence[Operation]
    outcome: _Outcome
    deciding: bool = False  # the writes record a presence decision: a failed attempt may have committed it (P4)
    then: Callable[[], Awaitable[None]] | None = None  # best-effort work once committed (a join's confirmation)


Plan = Callable[[UserView, "Attempts"], Awaitable[Done[_Outcome] | Commit[_Outcome]]]


class UserWrites:
    """One user's partition as its writers see it: the table, the expiry index, the lease rules, the settings,
    the clock and this instance's turns; `write` runs the one write loop."""

    def __init__(self, table: Table, index: ExpiryIndex, lease: Lease, settings: Settings, *, clock: Clock) -> None:
        self.table = table
        self.index = index
        self.lease = lease
        self.settings = settings
        self.clock = clock
        self.turns = UserTurns()  # this instance's events of one user, one at a time
        self.budgets = Budgets(table, settings, clock=clock)  # what this process knows of each connection's call budget

    async def read_user(self, partition: str) -> UserView:
        """Read a user's connection rows, presence row and memberships with one query (P2); the connections' call
        budgets are learnt on the way (budget B1)."""
        view = await read_user(self.table, partition)
        self.budgets.observe(partition, view.rows)
        return view

    def now(self, now: datetime | None = None) -> datetime:
        """Return `now` in UTC when given (callers pin the time), else the clock's current time."""
        return moment_of(now, self.clock)

    async def write(
        self, partition: str, plan: Plan[_Outcome], *, action: str, view: UserView | None = None
    ) -> _Outcome:
        """Run `plan` in the user's turn on a fresh read (or `view`, for the first attempt) until it is done or its
        writes commit on the ETags it read; a conflict reads again, for as long as `ATTEMPT_SECONDS` allows."""
        attempts = Attempts()
        async with self.turns.turn(partition):
            for attempt in attempts.tries():
                if view is None:
                    view = await self.read_user(partition)
                attempts.read(view)
                step = await plan(view, attempts)
                if isinstance(step, Done):
                    return step.outcome
                attempts.tried = True
                try:
                    await self.transact(step.operations, action=action, singly=attempts.singly)
                except ConflictError:
                    await attempts.failed(view, attempt, deciding=step.deciding)
                    view = None
                    continue
                if step.then is not None:
                    await step.then()
                return step.outcome
            raise StorageError(f"{action}: the user's rows kept changing; try again")

    async def transact(self, operations: Sequence[Operation], *, action: str, singly: bool = False) -> None:
        """Commit `operations` in transactions of at most 100 (a user with more rows than one holds: the presence
        write, last, goes with the last), or one call at a time when the service refuses this partition's."""
        for start in range(0, len(operations), MAX_BATCH):
            await _transact(self.table, operations[start : start + MAX_BATCH], action=action, singly=singly)


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
    unchanged: bool = False  # the row was as asked: nothing written


PlanRowWrite = Callable[[ConnectionEntity | None, str, UserView], RowWrite | None]


async def write_live_row(
    writes: UserWrites, partition: str, row: str, name: str, moment: datetime, plan: PlanRowWrite, *, action: str
) -> Written:
    """Write a row live at `moment` (connect, revival, status) with the presence decision (P2-P4).

    `plan` gives the row after the write and the write itself (none: the row is as asked), or None to decline (the
    row being gone);
    the result says which row was written (None: declined), the change to announce, and the view the
    decision was made on.
    """

    async def step(view: UserView, attempts: Attempts) -> Done[Written] | Commit[Written]:
        existing = view.rows.get(row)
        if attempts.mine(view):
            return Done(Written(existing, view.presence.announced_as(name, rooms=view.rooms), view))
        planned = plan(existing, writes.index.bucket(moment, partition), view)
        if planned is None:
            return Done(Written(None, attempts.announce(view, name, None), view))
        if not planned.operations:  # the row is as asked already: nothing to write or decide
            return Done(Written(existing, None, view, unchanged=True))
        after = {key: entity for key, entity in view.rows.items() if key != planned.replaces}
        state = view.state(writes.lease, now=moment, rows={**after, row: planned.stored})
        version = decide(view.presence, state, now=moment) if writes.settings.presence_events else None
        await _entry_first(writes, attempts, partition, row, moment, version=version)
        if existing is None:
            attempts.pending = False  # our row is not there: no attempt of ours committed
        operations = [
            *planned.operations,
            presence_write(
                partition, view.presence, writer=attempts.writer, user_name=name, state=state, version=version
            ),
        ]
        change = PresenceChange.of(name, state, version, rooms=view.rooms) if version is not None else None
        written = Written(planned.stored, attempts.announce(view, name, change), view)
        return Commit(operations, written, deciding=version is not None)

    return await writes.write(partition, step, action=action)


async def _transact(table: Table, operations: Sequence[Operation], *, action: str, singly: bool) -> None:
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
    writes: UserWrites, attempts: Attempts, partition: str, row: str, moment: datetime, *, version: int | None
) -> None:
    """Write the row's index entry before the row write (E1): once, and again only to flag it (E5)."""
    flagged = version is not None
    if attempts.indexed is None or (flagged and not attempts.indexed):
        await writes.index.write(partition, row, moment, announces=flagged)
        attempts.indexed = flagged
