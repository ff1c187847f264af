"""What one client may spend: a token bucket per connection that holds across the app's instances.

Each connection has `CLIENT_CALL_BURST` tokens (default 20), refilled at `CLIENT_CALL_RATE` a second (default 5;
0 turns the budget off). Every client call takes tokens before it runs (`weight_of`); a call the bucket cannot pay
for is refused with nothing read, written or sent, and its caller told so at most once a second per connection.

Across instances (SignalR's upstream spreads one connection's calls over all of them) the bucket is shared through
the connection's own row, whose `Tokens` and `TokensAt` properties hold its level as last published:

B1. Reading rides on the calls: every client call reads its caller's partition (a write loop, a standing, a watch),
    and every read of a partition tells this process's `Budgets` the published level of each connection it holds
    (`observe`). So checking costs no request.
B2. Spending is counted here first: a process keeps the bucket's level as it knows it (the last level published by
    another process, refilled since, less what it spent itself since that publication; its own spends refill like
    any level) and accepts a call the level pays for. Once it has spent `PUBLISH_EVERY` (10) tokens it publishes its
    level with one merge on the ETag it read (at most one table request per 10 accepted calls). A publish that finds
    the row changed (another instance published, a refresh) is skipped and tried again after the next call's read:
    nothing is lost, as the unpublished spend stays counted here and is taken off the next level it learns.
B3. The bound: a process sees every other's spend once it is published, and no process holds more than
    `PUBLISH_EVERY` - 1 tokens unpublished, nor reads a level older than its previous call. So with N instances the
    calls accepted in any span exceed the bucket's own bound (burst + rate x span) by at most about
    (N - 1) x 2 x PUBLISH_EVERY; what is over drives the published level below zero, and calls are refused until it
    refills. A process that knows nothing of a connection (it has not read its row yet) lets one call through to
    learn it. A lost publish lets through at most what it held; nothing refuses for ever (the level refills with time;
    a clock that goes backwards refills nothing).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mapping.errors import InvalidNameError, StorageError
from mapping.keys import connection_key, user_key
from mapping.presence.rows import Clock, ConnectionEntity, utc_now
from mapping.settings import Settings
from mapping.storage.table import Table, merge

logger = logging.getLogger(__name__)

PUBLISH_EVERY = 10  # tokens a process spends before it publishes the level (one merge)
REFUSALS_EVERY = timedelta(seconds=1)  # at most one "too many calls" answer per connection per process this often
_REMEMBERED = 50_000  # connections a process keeps budgets of (the least recently used are forgotten: one free call)


@dataclass(frozen=True, slots=True)
class Bucket:
    """The bucket's arithmetic: `burst` tokens at most, `rate` tokens a second."""

    burst: float
    rate: float

    def level(self, tokens: float, at: datetime, now: datetime) -> float:
        """Return the level at `now` of a bucket that held `tokens` at `at` (no refill for a clock gone backwards)."""
        elapsed = max(0.0, (now - at).total_seconds())
        return min(self.burst, tokens + self.rate * elapsed) if tokens < self.burst else tokens

    def wait(self, level: float, weight: float) -> float:
        """Return the seconds until a bucket at `level` can pay `weight` (0 when it can now)."""
        missing = min(weight, self.burst) - level
        return 0.0 if missing <= 0 else missing / self.rate


@dataclass(slots=True)
class _Known:
    """What this process knows of one connection's bucket: its level at `at` (the last published level it read, less
    what it spent here since, refilled in between), the row's ETag and the publication it was read from, what it
    spent since that publication, and when it last told the caller it was over."""

    tokens: float
    at: datetime
    etag: str | None
    published_at: datetime | None
    spent: float = 0.0
    answered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A budget check: whether the call may run; if not, the seconds to wait and whether to tell the caller."""

    allowed: bool
    retry_after: float = 0.0
    answer: bool = True


ALLOWED = Verdict(True)


class Budgets:
    """This process's knowledge of each connection's budget (B1-B3)."""

    def __init__(self, table: Table, settings: Settings, *, clock: Clock = utc_now) -> None:
        self._table = table
        self._clock = clock
        self.bucket = Bucket(float(settings.client_call_burst), float(settings.client_call_rate))
        self.enabled = settings.client_call_rate > 0
        self._known: OrderedDict[tuple[str, str], _Known] = OrderedDict()

    def observe(self, partition: str, rows: dict[str, ConnectionEntity]) -> None:
        """Learn the published level of each connection row read (B1); what was spent here since stays counted."""
        if not self.enabled:
            return
        for key, row in rows.items():
            known = self._known.get((partition, key))
            if known is None:
                tokens = row.tokens if row.tokens_at is not None else self.bucket.burst
                at = row.tokens_at or row.connected_at
                self._remember((partition, key), _Known(tokens, at, row.etag, row.tokens_at))
            elif row.etag != known.etag:
                known.etag = row.etag
                if row.tokens_at is not None and row.tokens_at != known.published_at:  # another process published
                    now = self._clock()
                    known.tokens = self.bucket.level(row.tokens, row.tokens_at, now) - known.spent
                    known.at, known.published_at = max(now, known.at), row.tokens_at

    def take(self, user: str, connection: str, weight: float, *, now: datetime) -> Verdict:
        """Take `weight` tokens for a call of `connection` if its bucket, as known here, can pay (B2)."""
        slot = _slot(user, connection) if self.enabled else None
        if slot is None:  # no budget, or names no row could have (the call refuses them itself)
            return ALLOWED
        known = self._known.get(slot)
        if known is None:  # never read here: one call goes through, and its read teaches the level (B3)
            self._remember(slot, _Known(self.bucket.burst - weight, now, None, None, spent=weight))
            return ALLOWED
        self._known.move_to_end(slot)
        level = self.bucket.level(known.tokens, known.at, now)
        if level >= min(weight, self.bucket.burst):
            known.tokens, known.at, known.spent = level - weight, max(now, known.at), known.spent + weight
            return ALLOWED
        answer = known.answered_at is None or not (timedelta(0) <= now - known.answered_at < REFUSALS_EVERY)
        if answer:
            known.answered_at = now
        return Verdict(False, round(max(self.bucket.wait(level, weight), 0.1), 1), answer)

    def charge(self, user: str, connection: str, weight: float) -> None:
        """Add what a call turned out to cost beyond what it took (a big room's snapshot) to its connection's spend."""
        slot = _slot(user, connection) if self.enabled else None
        known = self._known.get(slot) if slot is not None else None
        if known is not None and weight > 0:
            known.tokens -= weight
            known.spent += weight

    async def publish(self, user: str, connection: str, *, now: datetime) -> None:
        """Publish the connection's level once this process has spent `PUBLISH_EVERY` tokens of it (B2): one merge on
        the ETag last read; a changed or gone row, or a failure, leaves the spend counted here for the next try."""
        slot = _slot(user, connection) if self.enabled else None
        known = self._known.get(slot) if slot is not None else None
        if slot is None or known is None or known.spent < PUBLISH_EVERY or known.etag is None:
            return
        tokens = self.bucket.level(known.tokens, known.at, now)
        fields = {"PartitionKey": slot[0], "RowKey": slot[1], "Tokens": tokens, "TokensAt": now}
        try:
            etag = await self._table.write(merge(fields, etag=known.etag), action="publish a budget")
        except StorageError as error:  # 412: another wrote it since; 404: the row is gone; or storage failed
            logger.info("budget of a connection not published (next call tries again): %s", type(error).__name__)
            return
        known.tokens, known.at, known.etag, known.published_at, known.spent = tokens, now, etag, now, 0.0

    def riding(self, partition: str, row_key: str, *, now: datetime) -> dict[str, Any]:
        """Return the level to publish within a write the call makes to its own connection row anyway (a status), so
        that write's ETag never leaves a publish stale (B2); empty when there is nothing to publish."""
        known = self._known.get((partition, row_key))
        if not self.enabled or known is None or known.spent <= 0:
            return {}
        return {"Tokens": self.bucket.level(known.tokens, known.at, now), "TokensAt": now}

    def rode(self, partition: str, row_key: str, fields: dict[str, Any]) -> None:
        """Record that a committed write published `fields` (from `riding`): nothing spent here is unpublished now;
        the row's new ETag is learnt from the next read."""
        known = self._known.get((partition, row_key))
        if known is None or not fields:
            return
        known.tokens, known.at, known.published_at = fields["Tokens"], fields["TokensAt"], fields["TokensAt"]
        known.spent, known.etag = 0.0, None

    def _remember(self, slot: tuple[str, str], known: _Known) -> None:
        self._known[slot] = known
        if len(self._known) > _REMEMBERED:
            self._known.popitem(last=False)


def _slot(user: str, connection: str) -> tuple[str, str] | None:
    """Return the keys of a connection's row, or None for names no row can have."""
    try:
        return user_key(user), connection_key(connection)
    except InvalidNameError:
        return None


def weight_of(method: str, arguments: list[object] | None) -> float:
    """Return the tokens a client call takes before it runs: one, and for a `watch` one more per 10 users named (the
    reads and group additions it makes); a snapshot's pages beyond the first are charged after (`charge`)."""
    if method == "watch" and arguments and isinstance(arguments[0], list):
        return 1.0 + len(arguments[0]) // 10
    return 1.0
