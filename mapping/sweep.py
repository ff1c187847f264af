"""Stale-row removal: the timer function is the TTL that Table Storage does not have.

The sweep reads only the expiry index's buckets that began before its cutoff (`mapping.presence.expiry`), so
its cost follows the stale rows, not the table. It groups the entries by user and, for each user,
reads the partition once (rows and presence row) and acts on what it finds:

- an entry whose row is gone, or whose row names a later entry (refreshed since), is spent;
- a row past the cutoff is judged: with a SignalR connection, rows past half their lease are asked
  about (`HEAD .../connections/{id}`): alive → LastSeen is refreshed; gone → deleted; unknown → kept
  for the next sweep, unless LastSeen is older than MAPPING_MAX_AGE_SECONDS, then deleted; without
  one, a row past its lease is deleted (age-based);
- the verdicts and the user's presence decision commit in one transaction (`mapping.presence.state`, P2),
  and the user's spent entries are dropped only after it (expiry E3);
- with presence events on, every change of state is announced, and so is the recorded state of a
  user whose announcement an event may have lost (presence P5); a user left offline was last seen at
  their rows' latest LastSeen, or, in a reconciling sweep, at this sweep (the listing vouched for
  the connection until lately).

The sweep keeps to its time budget inside a page: a user is started only while time is left, and
each liveness check is bounded by what is left; rows not judged keep their entries for the next run.
A failure for one user is logged and leaves that user's entries for the next run; it never costs
another user's announcement (the timer raises only when it failed before deciding anything, since a
function that raises has all its outputs dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mapping.errors import InvalidNameError, MappingError, StorageError
from mapping.keys import connection_key, user_key
from mapping.presence.expiry import IndexEntry, bucket_start
from mapping.presence.rows import ConnectionEntity
from mapping.presence.settle import settle
from mapping.presence.state import PresenceChange
from mapping.presence.store import ConnectionStore
from mapping.rooms.membership import settle_revocations
from mapping.rooms.roster import Roster
from mapping.rooms.tally import TallyChange
from mapping.signalr.liveness import AGE_ONLY, Listing, Liveness, LivenessCheck, list_groups, listing_groups

logger = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET = timedelta(minutes=4)  # the Functions timeout in host.json is 5 minutes
_USER_CONCURRENCY = 16
_WRITE_RESERVE = 0.2  # share of the budget kept for the writes after the last liveness check


@dataclass(slots=True)
class SweepResult:
    """What one sweep read and did."""

    entries_read: int = 0
    rows_read: int = 0
    users_read: int = 0
    checked: int = 0
    refreshed: int = 0
    deleted: int = 0
    kept: int = 0
    entries_dropped: int = 0
    listed: int = 0
    listing: str = "none"
    unlisted_alive: list[str] = field(default_factory=list)  # connection ids the listing lacked but a HEAD found
    lingering: list[tuple[str, str]] = field(default_factory=list)  # (connection id, revoked room): to leave its group
    signalr_requests: int = 0
    failed_users: int = 0
    presence: list[PresenceChange] = field(default_factory=list)
    occupancy: list[TallyChange] = field(default_factory=list)  # rooms' tallies the announcements changed or repeat
    complete: bool = True

    @property
    def offline_users(self) -> list[str]:
        """Return the users this sweep announces offline."""
        return [change.user for change in self.presence if not change.state.online]

    @property
    def entities_read(self) -> int:
        """Return the table entities the sweep read: index entries plus the rows of the users it read."""
        return self.entries_read + self.rows_read


@dataclass(frozen=True, slots=True)
class _Clock:
    """The sweep's moment and deadlines (monotonic seconds)."""

    now: datetime
    cutoff: datetime
    deadline: float
    checks_deadline: float
    seen: dict[str, IndexEntry] = field(default_factory=dict)  # the latest entry read per row (reconciling)
    announced: dict[str, int] = field(default_factory=dict)  # user key -> position in result.presence
    # Users settled at once, across the index's shards: bounds the requests in flight.
    users: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_USER_CONCURRENCY))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def announce(self, result: SweepResult, change: PresenceChange) -> None:
        """Add a presence message; a user met twice in one sweep (across pages) is announced once, newest."""
        key = user_key(change.user)
        position = self.announced.get(key)
        if position is None:
            self.announced[key] = len(result.presence)
            result.presence.append(change)
        elif change.version > result.presence[position].version:
            result.presence[position] = change


@dataclass(frozen=True, slots=True)
class _Service:
    """What this run knows of the service: how to ask it, and what its listing said (connection keys)."""

    check: LivenessCheck = AGE_ONLY
    listing: Listing | None = None  # None: no listing asked (age-based, or not reconciled)
    listed: frozenset[str] = frozenset()

    @property
    def reconciling(self) -> bool:
        return self.listing is Listing.LISTED

    @property
    def unreachable(self) -> bool:
        return self.listing is Listing.UNAVAILABLE

    @property
    def asked(self) -> bool:
        """Whether this run asks the service about rows (not age-only, and the service is reachable)."""
        return self.check.asks_service and not self.unreachable


async def sweep(
    store: ConnectionStore,
    *,
    liveness: LivenessCheck = AGE_ONLY,
    now: datetime | None = None,
    time_budget: timedelta = DEFAULT_TIME_BUDGET,
) -> SweepResult:
    """Remove stale connection rows (liveness-checked unless `liveness` is age-only); report presence changes."""
    moment = store.now(now)
    budget = time_budget.total_seconds()
    start = time.monotonic()
    clock = _Clock(
        now=moment,
        cutoff=store.lease.due_before(moment, asks_service=liveness.asks_service),
        deadline=start + budget,
        checks_deadline=start + budget * (1 - _WRITE_RESERVE),
    )
    result = SweepResult()
    service = await _ask_service(store, liveness, clock=clock, result=result)

    async def sweep_shard(reader: AsyncIterator[list[IndexEntry]]) -> None:
        async for entries in reader:
            if clock.left() <= 0:
                result.complete = False
                break
            result.entries_read += len(entries)
            await _sweep_page(store, entries, service=service, clock=clock, result=result)

    # The index's shards hold disjoint users: read and settled concurrently (clock.users bounds the work in flight).
    outcomes = await asyncio.gather(
        *(sweep_shard(reader) for reader in store.index.readers(before=clock.cutoff)), return_exceptions=True
    )
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    for failure in failures:
        if not isinstance(failure, StorageError):
            raise failure
    if failures:
        if not result.presence:
            raise failures[0]  # nothing decided yet: fail visibly; the next run starts over
        logger.error(
            "sweep: stopped early (%s); %d announcements kept, the next run resumes", failures[0], len(result.presence)
        )
        result.complete = False
    if clock.left() <= 0:
        result.complete = False
    _log(result)
    return result


async def _ask_service(
    store: ConnectionStore, liveness: LivenessCheck, *, clock: _Clock, result: SweepResult
) -> _Service:
    """List the listing groups once per run when reconciling; otherwise HEAD checks (or age) decide."""
    if not liveness.asks_service or not store.lease.reconciled:
        return _Service(check=liveness)
    groups = listing_groups(store.settings.listing_groups)
    members = await list_groups(liveness, store.settings.hub, groups, deadline=clock.checks_deadline)
    result.signalr_requests += members.requests
    result.listing = members.listing.value
    if members.listing is Listing.UNSUPPORTED:
        return _Service(check=liveness)  # an older service: today's HEAD checks
    listed = frozenset(_keys(members.connection_ids))
    return _Service(check=liveness, listing=members.listing, listed=listed)


def _keys(connection_ids: frozenset[str]) -> list[str]:
    keys = []
    for connection_id in connection_ids:
        with contextlib.suppress(InvalidNameError):
            keys.append(connection_key(connection_id))
    return keys


async def _sweep_page(
    store: ConnectionStore,
    entries: list[IndexEntry],
    *,
    service: _Service,
    clock: _Clock,
    result: SweepResult,
) -> None:
    superseded: list[IndexEntry] = []
    if service.reconciling:
        entries, superseded = _latest_per_row(entries, clock.seen)
        listed = [entry for entry in entries if entry.connection_key in service.listed]
        result.listed += len(listed)
        # A listed row is never written while its connection is quiet; before it nears the max age, the
        # listing's word renews it (one write per connection per half max age), or readers would expire it.
        renew_before = clock.now - store.lease.max_age / 2
        entries = [
            entry
            for entry in entries
            if entry.connection_key not in service.listed or entry.bucket_start < renew_before
        ]
    elif service.unreachable:
        # Nobody can be judged: read only what may be past the max age (an entry's bucket bounds its row's age).
        oldest = clock.now - store.lease.max_age
        result.kept += sum(entry.bucket_start >= oldest for entry in entries)
        entries = [entry for entry in entries if entry.bucket_start < oldest]
    by_user: dict[str, list[IndexEntry]] = {}
    for entry in entries:
        by_user.setdefault(entry.user_key, []).append(entry)

    async def settle(user_key: str, user_entries: list[IndexEntry]) -> list[IndexEntry]:
        async with clock.users:
            if clock.left() <= 0:
                result.complete = False
                return []
            try:
                return await _sweep_user(store, user_key, user_entries, service=service, clock=clock, result=result)
            except MappingError as error:
                result.failed_users += 1
                logger.warning("sweep: a user was left for the next run: %s", error)
                return []

    spent = await asyncio.gather(*(settle(user, user_entries) for user, user_entries in by_user.items()))
    done = superseded + [entry for entries_of_user in spent for entry in entries_of_user]
    if done:
        try:
            await store.index.drop(done)
            result.entries_dropped += len(done)
        except StorageError as error:
            logger.warning("sweep: spent entries stay for the next run: %s", error)


async def _sweep_user(
    store: ConnectionStore,
    user_key: str,
    entries: list[IndexEntry],
    *,
    service: _Service,
    clock: _Clock,
    result: SweepResult,
) -> list[IndexEntry]:
    """Judge one user's due rows, commit the verdicts with the presence decision; return the spent entries."""
    view = await store.read_user(user_key)
    result.users_read += 1
    result.rows_read += len(view.rows)
    spent: list[IndexEntry] = []
    due: list[tuple[IndexEntry, ConnectionEntity]] = []
    row_gone = False
    adopted = {row.adopted for row in view.rows.values() if row.adopted}
    for entry in entries:
        row = view.rows.get(entry.connection_key)
        if row is None:
            # A row a reload took over (grace G1) changed no presence: nothing of it can have been lost.
            row_gone = row_gone or entry.connection_key not in adopted
            spent.append(entry)
        elif not _covers(entry, row, store):
            spent.append(entry)  # refreshed since: a later entry covers the row (E2)
        elif store.lease.in_grace(row, clock.now):
            continue  # a grace holds it: its decision is pending (grace G3); the entry stays
        elif row.last_seen < clock.cutoff or store.lease.ended(row, clock.now):
            due.append((entry, row))
        # else: the entry's bucket straddles the cutoff and this row is not due yet; keep the entry
    verdicts = await _verdicts([row for _, row in due], store=store, service=service, clock=clock, result=result)
    # A row whose grace is over ended for sure: its lost decision is made here (grace G3).
    verdicts = [
        Liveness.GONE if store.lease.ended(row, clock.now) else verdict
        for (_, row), verdict in zip(due, verdicts, strict=True)
    ]
    gone = {
        row.row_key: row.etag or "" for (_, row), verdict in zip(due, verdicts, strict=True) if verdict is Liveness.GONE
    }
    alive = {
        row.row_key: row.etag or ""
        for (_, row), verdict in zip(due, verdicts, strict=True)
        if verdict is Liveness.ALIVE
    }
    spent += [entry for (entry, _), verdict in zip(due, verdicts, strict=True) if verdict is not Liveness.UNKNOWN]
    result.kept += sum(verdict is Liveness.UNKNOWN for verdict in verdicts)
    if Liveness.UNKNOWN in verdicts and time.monotonic() >= clock.checks_deadline:
        result.complete = False  # some rows went unasked for want of time
    name = view.name()
    # A reconciling sweep's listing vouched for its connections until lately: a row it lacks ended since.
    # A row a disconnect ended says when itself (EndedAt); the listing vouches only for rows nothing ended.
    unended = any(not row.ended_at for (_, row), verdict in zip(due, verdicts, strict=True) if verdict is Liveness.GONE)
    vouched = clock.now if service.reconciling and unended else None
    settled = await settle(
        store.writes, view, user_name=name, gone=gone, alive=alive, now=clock.now, gone_known_alive_until=vouched
    )
    result.deleted += settled.deleted
    result.refreshed += settled.refreshed
    if view.revoked:
        result.lingering += await settle_revocations(store, view, gone=set(gone))
    announce = settled.change
    if announce is None and store.settings.presence_events:
        # P5: an event may have recorded a change and failed before announcing it.
        # Once per entry: when the sweep is done with it (a kept entry repeats nothing until then).
        maybe_lost = any(entry.announces for entry in spent) or row_gone
        announce = settled.recorded.announced_as(name, rooms=view.rooms) if maybe_lost else None
    if announce is not None:
        # Roster C2: the copies first, over lower versions only; failing, the user's entries stay for the next run.
        published = await Roster(store).publish(announce, guarded=True)
        result.occupancy += published.tallies
        clock.announce(result, published.unbatched(announce))  # a big room hears it in its next batch
    return spent


def _covers(entry: IndexEntry, row: ConnectionEntity, store: ConnectionStore) -> bool:
    """Return whether `entry` still covers the row: the row names no later bucket (E2, E4)."""
    if row.index_bucket is not None:
        return bucket_start(row.index_bucket) <= entry.bucket_start  # by time: another S names its shards otherwise
    return row.last_seen < entry.bucket_start + store.bucket_width()  # a row written before IndexBucket existed


async def _verdicts(
    rows: Sequence[ConnectionEntity], *, store: ConnectionStore, service: _Service, clock: _Clock, result: SweepResult
) -> list[Liveness]:
    if not rows:
        return []
    # Reconciling, the listing vouches for the rows it names (those reach here only to be renewed).
    vouched = [service.reconciling and row.row_key in service.listed for row in rows]
    unasked = [row for row, listed in zip(rows, vouched, strict=True) if not listed]
    if not service.asked:
        asked = [Liveness.UNKNOWN] * len(unasked)  # age-only, or nobody can be judged: kept, unless too old
    else:
        asked = list(await asyncio.gather(*(_bounded_check(service.check, row, clock) for row in unasked)))
        result.checked += len(unasked)
        result.signalr_requests += len(unasked)
    if service.reconciling:
        # A connection the listing lacked but a HEAD finds: the listing lagged, or the connection predates the
        # group. Kept as it is, no write; the timer adds it to the group so the next listing names it.
        result.unlisted_alive += [
            row.connection_id for row, a in zip(unasked, asked, strict=True) if a is Liveness.ALIVE
        ]
        asked = [Liveness.UNKNOWN if answer is Liveness.ALIVE else answer for answer in asked]
    answers_of_unasked = iter(asked)
    answers = [Liveness.ALIVE if listed else next(answers_of_unasked) for listed in vouched]
    too_old = store.lease.given_up_before(clock.now, asks_service=service.check.asks_service)
    return [
        Liveness.GONE if answer is Liveness.UNKNOWN and row.last_seen < too_old else answer
        for row, answer in zip(rows, answers, strict=True)
    ]


def _latest_per_row(
    entries: list[IndexEntry], seen: dict[str, IndexEntry]
) -> tuple[list[IndexEntry], list[IndexEntry]]:
    """Split a page into the latest entry of each row and the older ones, which may go unread (expiry E2)."""
    superseded: list[IndexEntry] = []
    for entry in entries:
        earlier = seen.get(entry.key)
        if earlier is not None and earlier.bucket < entry.bucket:
            superseded.append(earlier)
        if earlier is None or earlier.bucket < entry.bucket:
            seen[entry.key] = entry
    dropped = {id(entry) for entry in superseded}
    return [entry for entry in entries if id(entry) not in dropped], superseded


async def _bounded_check(liveness: LivenessCheck, row: ConnectionEntity, clock: _Clock) -> Liveness:
    left = clock.checks_deadline - time.monotonic()
    if left <= 0:
        return Liveness.UNKNOWN  # no time to ask: kept, asked again next run
    try:
        return await asyncio.wait_for(liveness.check(row.hub, row.connection_id), timeout=left)
    except TimeoutError:
        return Liveness.UNKNOWN


def _log(result: SweepResult) -> None:
    logger.info(
        "sweep: %d entries, %d users, %d rows read, %d checked, %d refreshed, %d deleted, %d kept, "
        "%d presence messages, %d users failed%s",
        result.entries_read,
        result.users_read,
        result.rows_read,
        result.checked,
        result.refreshed,
        result.deleted,
        result.kept,
        len(result.presence),
        result.failed_users,
        "" if result.complete else " (incomplete)",
    )
