"""The sweep's step on one user: delete the rows judged gone, refresh those judged alive, decide presence (P2, P4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from mapping.presence.state import PresenceChange, PresenceState, Recorded, decide, presence_write
from mapping.presence.user_view import UserView
from mapping.presence.write_loop import Attempts, Commit, Done, UserWrites, repeat
from mapping.storage.table import Operation, delete, merge


@dataclass(frozen=True, slots=True)
class Settled:
    """What settling a user did (the sweep): rows deleted and refreshed, and the presence to announce."""

    deleted: int = 0
    refreshed: int = 0
    change: PresenceChange | None = None
    online: bool = False
    recorded: Recorded = field(default_factory=Recorded)


async def settle(
    writes: UserWrites,
    view: UserView,
    *,
    user_name: str,
    gone: Mapping[str, str],
    alive: Mapping[str, str],
    now: datetime,
    gone_known_alive_until: datetime | None = None,
) -> Settled:
    """Delete the `gone` rows, refresh the `alive` ones (RowKey -> ETag judged) and decide the user's presence.

    Rows that changed since they were judged are left alone (their newer index entry covers them).
    A conflict reads the user again and applies what still holds (P2, P4). A user left offline was
    last seen at their rows' latest LastSeen, or `gone_known_alive_until` when the service vouched
    for the `gone` rows later than that (a reconciling sweep's listing).
    """
    deciding = writes.settings.presence_events

    async def step(view: UserView, attempts: Attempts) -> Done[Settled] | Commit[Settled]:
        if attempts.mine(view):
            return Done(
                Settled(online=bool(view.presence.online), recorded=view.presence, change=repeat(view, user_name))
            )
        doomed = _still(gone, view)
        renewed = _still(alive, view)
        after = {
            key: replace(row, last_seen=now) if key in renewed else row
            for key, row in view.rows.items()
            if key not in doomed
        }
        ends = [row.ended_at or row.last_seen for row in view.rows.values()]  # a disconnect ends it
        if doomed and gone_known_alive_until is not None:
            ends.append(gone_known_alive_until)
        state = view.state(writes.lease, now=now, ended_at=max(ends, default=None), rows=after)
        version = decide(view.presence, state, now=now) if deciding else None
        operations = await _writes(
            writes, view, doomed, renewed, name=user_name, state=state, version=version, writer=attempts.writer, now=now
        )
        change = PresenceChange.of(user_name, state, version, rooms=view.rooms) if version is not None else None
        settled = Settled(
            len(doomed), len(renewed), attempts.announce(view, user_name, change), state.online, view.presence
        )
        return Commit(operations, settled, deciding=version is not None) if operations else Done(settled)

    return await writes.write(view.partition, step, action="sweep a user", view=view)


def _still(judged: Mapping[str, str], view: UserView) -> list[str]:
    """The judged rows that have not changed since they were judged."""
    return [key for key, etag in judged.items() if key in view.rows and view.rows[key].etag == etag]


async def _writes(
    writes: UserWrites,
    view: UserView,
    doomed: Sequence[str],
    renewed: Sequence[str],
    *,
    name: str,
    state: PresenceState,
    version: int | None,
    writer: str,
    now: datetime,
) -> list[Operation]:
    """Write the renewed rows' index entries (E1), and return the row writes with the presence write last."""
    partition = view.partition
    bucket = writes.index.bucket(now, partition)
    if renewed:
        await writes.index.write_many(
            [writes.index.entry(partition, key, now, announces=version is not None) for key in renewed]
        )
    operations: list[Operation] = [delete(partition, key, etag=view.rows[key].etag) for key in doomed]
    operations += [
        merge(
            {"PartitionKey": partition, "RowKey": key, "LastSeen": now, "IndexBucket": bucket},
            etag=view.rows[key].etag,
        )
        for key in renewed
    ]
    if writes.settings.presence_events and (operations or version is not None):
        operations.append(
            presence_write(partition, view.presence, writer=writer, user_name=name, state=state, version=version)
        )
    return operations
