"""What the app does on each SignalR event; each handler returns the messages to send."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec

from mapping.errors import (
    InvalidNameError,
    InvalidRequestError,
    RefusedError,
    SignalRUnavailableError,
    StorageError,
    UserOfflineError,
)
from mapping.keys import normalize_user_name, parse_room, user_key
from mapping.presence.budget import weight_of
from mapping.presence.feed import BY_SERVER, BY_USER, membership_message
from mapping.presence.grace import Decision, Grace
from mapping.presence.state import PresenceChange
from mapping.presence.store import ConnectionStore, ConnectOutcome, TouchOutcome
from mapping.rooms.batch import Flush, run_flush
from mapping.rooms.membership import MembersPage, RoomChange, Rooms
from mapping.rooms.policy import SETTINGS_DECIDE, AccessPolicy
from mapping.rooms.roster import Roster, RosterEntry, put_tallies
from mapping.rooms.tally import TallyChange
from mapping.rooms.watch import Watching, parse_users
from mapping.signalr.audience import (
    SYNC_PAGE,
    batch_messages,
    occupancy_group,
    occupancy_message,
    occupancy_messages,
    presence_group,
    presence_messages,
    room_presence,
    sync_messages,
)
from mapping.signalr.invocation import Invocation
from mapping.signalr.liveness import AGE_ONLY, ConnectionCloser, GroupAdder, LivenessCheck, listing_group
from mapping.signalr.messages import (
    ERROR_TARGET,
    PRESENCE_TARGET,
    Message,
    error_message,
    join_group,
    leave_group,
    room_message,
)
from mapping.signalr.send import parse_room_send_arguments, parse_send_arguments, room_delivery_of, send_direct
from mapping.storage.client import gather_bounded
from mapping.sweep import sweep

if TYPE_CHECKING:  # the queue carrier's SDK loads only where a queue is used (functions.runtime)
    from mapping.storage.queue import DelayedActions

logger = logging.getLogger(__name__)

_EARLY_ADDS = 16  # group additions in flight at once before a snapshot


@dataclass(frozen=True, slots=True)
class _Caller:
    """The checked caller of a client call: its user (every client call needs a signed-in one), its connection,
    the call's arguments as sent, and its one argument (None for calls that do not take exactly one)."""

    user: str
    connection: str
    arguments: list[Any] | None = None
    argument: object = None
    claims: Mapping[str, str] = field(default_factory=dict)  # the client token's, for the app's access policy


_Options = ParamSpec("_Options")
_Handler = Callable[Concatenate[ConnectionStore, _Caller, _Options], Awaitable[list[Message]]]
_EventHandler = Callable[Concatenate[ConnectionStore, Invocation, _Options], Awaitable[list[Message]]]


def _client_call(
    method: str, *, one_argument: str | None = None, refreshes: bool = True
) -> Callable[[_Handler[_Options]], _EventHandler[_Options]]:
    """Make a client-call handler of an event: the caller checked first (`_caller`) and charged to its budget, its
    lease refreshed (unless the call `refreshes` nothing), a refused, invalid or failed call answered with one error
    (`_answered`), and the call named in every error to the caller; a retryable one echoes the arguments, so a
    client knows what to send again."""

    def wrap(handler: _Handler[_Options]) -> _EventHandler[_Options]:
        async def handle(
            store: ConnectionStore, event: Invocation, /, *args: _Options.args, **options: _Options.kwargs
        ) -> list[Message]:
            caller = _caller(event, method, one_argument=one_argument)
            if isinstance(caller, list):
                messages = caller
            elif (refused := _over_budget(store, caller, method)) is not None:
                messages = refused
            else:
                revived = await _refresh(store, caller.user, caller.connection) if refreshes else []
                answer = await _answered(handler(store, caller, *args, **options), caller, method)
                messages = [*revived, *answer]
                await store.writes.budgets.publish(caller.user, caller.connection, now=store.now())
            return [_named(message, event, method) for message in messages]

        functools.update_wrapper(handle, handler)
        return handle

    return wrap


async def _answered(call: Awaitable[list[Message]], caller: _Caller, method: str) -> list[Message]:
    """A client call's messages, or the one error that answers the caller a refused, invalid or failed call
    (nothing else is sent: what failed wrote nothing it cannot finish on the client's retry)."""
    try:
        return await call
    except RefusedError as error:
        return [error_message(caller.connection, str(error), **error.details)]
    except (InvalidRequestError, InvalidNameError) as error:
        return [error_message(caller.connection, str(error))]
    except StorageError as error:
        return [_unavailable(caller.connection, method, error)]


def _over_budget(store: ConnectionStore, caller: _Caller, method: str) -> list[Message] | None:
    """What to answer a call its connection's budget cannot pay for (one error a second at most; nothing read,
    written or sent), or None when it may run (mapping.presence.budget)."""
    weight = weight_of(method, caller.arguments)
    verdict = store.writes.budgets.take(caller.user, caller.connection, weight, now=store.now())
    if verdict.allowed:
        return None
    if not verdict.answer:
        return []  # refused silently: logged once a second, with the answer
    logger.info("%s: a connection over its call budget was refused (told so at most once a second)", method)
    return [error_message(caller.connection, "too many calls", retry=True, retryAfter=verdict.retry_after)]


def _charge_snapshot(store: ConnectionStore, caller: _Caller, entries: list[RosterEntry]) -> None:
    """Charge a snapshot's pages beyond the first to the caller's budget (its reads and messages grow with them)."""
    store.writes.budgets.charge(caller.user, caller.connection, max(0, -(-len(entries) // SYNC_PAGE) - 1))


def _named(message: Message, event: Invocation, method: str) -> Message:
    """Return `message` with the call named, when it is an error to the caller."""
    if message.get("target") != ERROR_TARGET or message.get("connectionId") != event.connection_id:
        return message
    [details] = message["arguments"]
    named = {**details, "call": method}
    if details.get("retry"):
        named["arguments"] = list(event.arguments or [])
    return {**message, "arguments": [named]}


async def on_connected(
    store: ConnectionStore, event: Invocation, *, service: ConnectionCloser = AGE_ONLY
) -> list[Message]:
    """Map a new connection to its user; announce the user online on their first live connection. A blocked user's
    connection is not mapped, and closed through the service (refused by raising where the service cannot close)."""
    if not event.user_id or not event.connection_id:
        logger.warning("connected: connection %s has no user id; not mapped", event.connection_id)
        return []
    try:
        outcome = await store.connect(
            event.user_id, event.connection_id, hub=event.hub, user_agent=event.header("User-Agent")
        )
    except InvalidNameError as error:
        logger.warning("connected: connection not mapped: %s", error)
        return []
    except StorageError:
        # A failing `connected` need not refuse the client (Azure may keep it connected): closed here where the
        # service can, it reconnects; if not, its first call maps it (`_map_late`).
        closed = await service.close_connection(store.settings.hub, event.connection_id, reason="not mapped, reconnect")
        logger.warning("connected: connection %s not mapped (storage failed); closed: %s", event.connection_id, closed)
        raise
    if outcome.blocked or outcome.over_cap:
        reason = "blocked" if outcome.blocked else "too many connections"
        logger.warning("connected: connection %s is closed, not mapped: %s", event.connection_id, reason)
        if not await service.close_connection(store.settings.hub, event.connection_id, reason=reason):
            raise RefusedError(reason)  # the extension answers 403: refused where the service cannot close it
        return []
    logger.info("connected: %s", outcome.entity.connection_id)
    return await _mapped(store, outcome)


async def _mapped(store: ConnectionStore, outcome: ConnectOutcome) -> list[Message]:
    """What a connection just mapped is sent: its groups (rooms, the sweep's listing, its user's presence group), the
    removal from revoked rooms' groups, and the user's presence when it changed."""
    connection_id = outcome.entity.connection_id
    # SignalR forgets groups when a connection ends: every new connection joins its user's rooms (R3).
    groups = [join_group(connection_id, room) for room in outcome.rooms]
    if store.lease.reconciled:
        # The sweep lists this group to learn which connections the service still has (no table request).
        groups.append(join_group(connection_id, listing_group(connection_id, store.settings.listing_groups)))
    if store.settings.presence_audience == "scoped":
        groups.append(join_group(connection_id, presence_group(outcome.entity.user_name)))  # hears its own user
    groups += _left_revoked(outcome.lingering)  # a revoke's (rooms R4)
    try:
        return groups + await _announced(store, outcome.presence)
    except StorageError as error:
        # Mapped: its groups still go out. The lost announcement (copies, feed) is the sweep's to repeat (P5).
        logger.warning("connected: %s mapped, its announcement left to the sweep: %s", connection_id, error)
        return groups


async def on_disconnected(
    store: ConnectionStore, event: Invocation, *, delayed: Callable[[], DelayedActions]
) -> list[Message]:
    """Remove a closed connection's row and announce the user's new state; with a grace, hold it and decide later."""
    if not event.user_id or not event.connection_id:
        return []
    try:
        if store.lease.grace:
            await Grace(store.writes, delayed()).end(event.user_id, event.connection_id)
            return []  # nothing changes until the grace is over (mapping.presence.grace)
        outcome = await store.disconnect(event.user_id, event.connection_id)
    except InvalidNameError as error:
        logger.warning("disconnected: ignored: %s", error)
        return []
    return await _announced(store, outcome.presence)


@dataclass(frozen=True, slots=True)
class UserDisconnected:
    """What an operator's disconnect did: how many live connections of the user were closed, and what to announce."""

    user: str
    closed: int
    messages: list[Message]


async def on_disconnect_user(store: ConnectionStore, user_name: str, *, service: ConnectionCloser) -> UserDisconnected:
    """Close every connection of a user through the service's REST API (each live row's connection by its id, then
    each spelling of the name they connected with, for connections the app never mapped: the service matches user
    ids exactly), then end their live rows as a disconnect does; raise SignalRUnavailableError when the service did
    not confirm a close (no row ended: send it again)."""
    name = normalize_user_name(user_name)
    view = await store.read_user(user_key(name))
    live = view.live(store.lease, now=store.now())
    hub, reason = store.settings.hub, "disconnected by an operator"
    spellings = sorted({name, *(row.user_name for row in view.rows.values() if row.user_name)})
    confirmed = [await service.close_connection(hub, row.connection_id, reason=reason) for row in live]
    confirmed += [await service.close_user(hub, spelling, reason=reason) for spelling in spellings]
    if not all(confirmed):
        raise SignalRUnavailableError("SignalR Service did not close the user's connections; try again")
    # One transaction for all of them, no grace (nobody reloads a page an operator closed): one announcement. The
    # service's own disconnected events follow and find the rows gone.
    outcome = await store.disconnect_all(name, [row.connection_id for row in live], view=view)
    return UserDisconnected(name, len(live), await _announced(store, outcome.presence))


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """What a server's grant or revoke did: the room, the user, whether they are a member now, what to send."""

    room: str
    user: str
    member: bool
    messages: list[Message]


async def on_grant(store: ConnectionStore, user_name: str, room: str, *, service: GroupAdder) -> RoomAccess:
    """Grant a room to a user and make them a member at once: their live connections join its group, the room hears
    the join and their presence, and their connections hear it and a snapshot of the room (`presenceSync`)."""
    change = await Rooms(store).grant(user_name, room)
    occupancy = await _feed_membership(store, change, by=BY_SERVER)

    async def add(connection: str) -> None:
        await _join_first(service, store, connection, [change.room])

    await gather_bounded(list(change.connections), add, limit=_EARLY_ADDS)  # the tabs at once, a few at a time
    entries, settled = await _roster(store, change.room)
    presence = [room_presence(change.presence, change.room)] if change.presence is not None else []
    messages = [
        *settled,
        *(join_group(connection, change.room) for connection in change.connections),
        room_message(change.room, user=change.user, joined=True),
        *presence,
        *occupancy,
        *(m for connection in change.connections for m in sync_messages(connection, entries, room=change.room)),
    ]
    return RoomAccess(change.room, change.user, True, messages)


async def on_revoke(store: ConnectionStore, user_name: str, room: str, *, service: GroupAdder) -> RoomAccess:
    """Take a user out of a room and revoke its grant: their connections leave its group before this answers (through
    the REST API; SignalRUnavailableError when the service did not confirm it: the revocation is recorded and the
    next event or sweep removes them again, rooms R4), then the room and the user's connections hear them leave."""
    change = await Rooms(store).revoke(user_name, room)
    occupancy = await _feed_membership(store, change, by=BY_SERVER)
    hub = store.settings.hub

    async def remove(connection: str) -> bool:
        return await service.remove_from_group(hub, change.room, connection)

    confirmed = await gather_bounded(list(change.connections), remove, limit=_EARLY_ADDS)
    if service.asks_service and not all(confirmed):
        raise SignalRUnavailableError("SignalR Service did not confirm the removal from the room's group; try again")
    # Removed through REST already where the service can: the output binding's removals only where it cannot.
    messages = [] if service.asks_service else [leave_group(c, change.room) for c in change.connections]
    # A watch of the room's occupancy ends with its access (best effort: the output binding's removal).
    messages += [leave_group(c, occupancy_group(change.room)) for c in change.connections]
    if change.announce:  # not for a user who was no member (rooms R5)
        messages.append(room_message(change.room, user=change.user, joined=False))
        messages += [room_message(change.room, user=change.user, joined=False, to=c) for c in change.connections]
        messages += occupancy
    return RoomAccess(change.room, change.user, False, messages)


async def on_list_members(
    store: ConnectionStore, room: str, *, limit: int, cursor: str | None
) -> tuple[MembersPage, list[Message]]:
    """A page of a room's members (`GET /api/rooms/{room}`), and the room's `occupancy` if settling a stale row on
    the way changed it (its feed message put: feed F2)."""
    page = await Rooms(store).members(room, limit=limit, cursor=cursor)
    await put_tallies(store, list(page.tallies))
    return page, occupancy_messages(page.tallies)


async def on_grace(store: ConnectionStore, body: str, *, delayed: Callable[[], DelayedActions]) -> list[Message]:
    """Do a delayed action (a queue message): a grace decision (announce who went offline, or nothing if they came
    back), or a big room's flush (its members' latest presence, batched: `mapping.rooms.batch`)."""
    try:
        if (flush := Flush.from_body(body)) is not None:
            return batch_messages(flush.room, await run_flush(store, flush))
        decision = Decision.from_body(body)
    except (InvalidRequestError, InvalidNameError) as error:
        logger.error("grace: a message that is no decision was dropped: %s", error)
        return []  # retrying cannot mend it
    return await _announced(store, await Grace(store.writes, delayed()).decide(decision))


@_client_call("send")
async def on_send(store: ConnectionStore, caller: _Caller, *, access: AccessPolicy = SETTINGS_DECIDE) -> list[Message]:
    """Deliver a client's `send(to, message)` to the recipient when the app's policy or `DIRECT_MESSAGES` allows it,
    or answer the caller one error (a refused message as an offline recipient: `send` tells nothing of presence)."""
    request = parse_send_arguments(caller.arguments, max_bytes=store.settings.client_message_max_bytes)
    try:
        return await send_direct(store, request, sender=caller.user, policy=access, claims=caller.claims)
    except UserOfflineError:
        return [error_message(caller.connection, "recipient is offline", to=request.to)]


@_client_call("setStatus", one_argument="(status)", refreshes=False)
async def on_set_status(store: ConnectionStore, caller: _Caller) -> list[Message]:
    """Record the caller's `setStatus(status)` (which refreshes its lease) and announce the user's presence, or
    answer the caller an error."""
    outcome = await store.set_status(caller.user, caller.connection, caller.argument)
    if not outcome.found:
        mapped = await _map_late(store, caller.user, caller.connection)
        if not mapped:
            return [error_message(caller.connection, "this connection is not mapped; reconnect")]
        try:
            outcome = await store.set_status(caller.user, caller.connection, caller.argument)
        except StorageError as error:
            return [*mapped, _unavailable(caller.connection, "setStatus", error)]
        if not outcome.found:
            return [*mapped, error_message(caller.connection, "this connection is not mapped; reconnect")]
        return [*mapped, *await _set_status_answer(store, caller, outcome)]
    return await _set_status_answer(store, caller, outcome)


async def _set_status_answer(store: ConnectionStore, caller: _Caller, outcome: TouchOutcome) -> list[Message]:
    """The answer to a recorded status: the caller alone for the status it had, else its announcement."""
    if outcome.unchanged and outcome.presence is not None:  # the status it had: the caller alone (rooms R5)
        return [
            {"target": PRESENCE_TARGET, "connectionId": caller.connection, "arguments": [outcome.presence.to_json()]}
        ]
    try:
        announcement = await _announced(store, outcome.presence)
    except StorageError as error:
        return [_unavailable(caller.connection, "setStatus", error)]
    return [*_rejoined(caller.connection, outcome.rooms), *announcement]


@_client_call("join", one_argument="(room)")
async def on_join(
    store: ConnectionStore,
    caller: _Caller,
    *,
    service: GroupAdder = AGE_ONLY,
    access: AccessPolicy = SETTINGS_DECIDE,
) -> list[Message]:
    """Make the caller's user a member of `join(room)` when it is open, granted or the app's policy admits them: add
    their live connections to its group, announce it; a refused join is one error to the caller, nothing else."""
    return await _membership(store, caller, joining=True, service=service, access=access)


@_client_call("leave", one_argument="(room)")
async def on_leave(store: ConnectionStore, caller: _Caller) -> list[Message]:
    """End the caller's user's membership of `leave(room)`: announce it, remove their connections from the group."""
    return await _membership(store, caller, joining=False)


@_client_call("sendToRoom")
async def on_send_to_room(store: ConnectionStore, caller: _Caller) -> list[Message]:
    """Deliver a member's `sendToRoom(room, message)` to the room's group, or answer the caller an error."""
    request = parse_room_send_arguments(caller.arguments, max_bytes=store.settings.client_message_max_bytes)
    standing = await Rooms(store).standing(caller.user)
    if standing.blocked:
        return [error_message(caller.connection, "this user is blocked", room=request.room)]
    if request.room not in standing.rooms:
        # A connection still in the group of a room revoked from its user leaves it (rooms R4).
        revoked = [(caller.connection, request.room)] if request.room in standing.revoked else []
        return [
            *_left_revoked(revoked),
            error_message(caller.connection, "not a member of this room", room=request.room),
        ]
    return [room_delivery_of(request, sender=caller.user)]


async def on_timer(
    store: ConnectionStore, *, liveness: LivenessCheck = AGE_ONLY, now: datetime | None = None
) -> list[Message]:
    """Sweep stale rows (liveness-checked unless age-only); announce users whose presence changed."""
    result = await sweep(store, liveness=liveness, now=now)
    groups = store.settings.listing_groups
    regrouped = [join_group(c, listing_group(c, groups)) for c in result.unlisted_alive]
    regrouped += _left_revoked(result.lingering)  # rooms R4
    audience = store.settings.presence_audience
    return (
        regrouped
        + [message for change in result.presence for message in presence_messages(change, audience=audience)]
        + occupancy_messages(result.occupancy)
    )


@_client_call("watch", one_argument="(users)")
async def on_watch(
    store: ConnectionStore,
    caller: _Caller,
    *,
    service: GroupAdder = AGE_ONLY,
    access: AccessPolicy = SETTINGS_DECIDE,
) -> list[Message]:
    """Watch the presence of `watch(users)` when the app's policy or `PRESENCE_WATCH` allows it (at most 200 users a
    connection), and answer the caller their snapshot (`presenceSync`)."""
    users = parse_users("watch", caller.argument)
    watching = Watching(store, policy=access, claims=caller.claims)
    admitted = await watching.admit(caller.user, caller.connection, users)
    if not admitted.mapped:
        return [_not_mapped_yet(caller.connection)]
    subscriptions = [presence_group(user) for user in admitted.subscribed]
    await _join_first(service, store, caller.connection, subscriptions)
    entries = await watching.snapshot(users)
    groups = [join_group(caller.connection, group) for group in subscriptions]
    return [*groups, *sync_messages(caller.connection, entries, room=None)]


@_client_call("unwatch", one_argument="(users)")
async def on_unwatch(store: ConnectionStore, caller: _Caller) -> list[Message]:
    """End the caller's watch of `unwatch(users)` (watching nobody of them does no harm)."""
    users = parse_users("unwatch", caller.argument)
    mapped = await Watching(store).forget(caller.user, caller.connection, users)
    left = [leave_group(caller.connection, presence_group(user)) for user in users]
    return left if mapped else [*left, _not_mapped_yet(caller.connection)]


@_client_call("watchOccupancy", one_argument="(room)")
async def on_watch_occupancy(
    store: ConnectionStore,
    caller: _Caller,
    *,
    service: GroupAdder = AGE_ONLY,
    access: AccessPolicy = SETTINGS_DECIDE,
) -> list[Message]:
    """Watch a room's occupancy (`watchOccupancy(room)`) when the caller may see the room (a member, or one a join
    would admit: rooms R4): join its occupancy group, and answer the caller the occupancy now."""
    room = parse_room(caller.argument)
    rooms = Rooms(store)
    await rooms.check_visible(caller.user, room, policy=access, claims=caller.claims)
    # In the group before the counts are read: no change falls between the two.
    await _join_first(service, store, caller.connection, [occupancy_group(room)])
    tally = await rooms.tally(room)
    group = join_group(caller.connection, occupancy_group(room))
    return [group, occupancy_message(room, tally, to=caller.connection)]


@_client_call("unwatchOccupancy", one_argument="(room)", refreshes=False)
async def on_unwatch_occupancy(store: ConnectionStore, caller: _Caller) -> list[Message]:
    """End the caller's watch of a room's occupancy (`unwatchOccupancy(room)`; watching it not does no harm): no table
    request, so no lease refreshed."""
    return [leave_group(caller.connection, occupancy_group(parse_room(caller.argument)))]


def _left_revoked(lingering: Sequence[tuple[str, str]]) -> list[Message]:
    """The group removals of connections a revoke took out of rooms (rooms R4): each room's group, and its occupancy
    group (a watch of the room's counts ends with the access)."""
    return [leave_group(c, group) for c, room in lingering for group in (room, occupancy_group(room))]


def _not_mapped_yet(connection_id: str) -> Message:
    """The caller's answer when its connection has no row yet (its `connected` event is still on its way)."""
    return error_message(connection_id, "this connection is not mapped yet, try again", retry=True)


@_client_call("sync", one_argument="(room)")
async def on_sync(store: ConnectionStore, caller: _Caller) -> list[Message]:
    """Answer the caller a fresh snapshot of a room it is a member of (`sync(room)`)."""
    room = parse_room(caller.argument)
    view = await store.read_user(user_key(caller.user))
    if view.blocked:
        return [error_message(caller.connection, "this user is blocked", room=room)]
    if room not in view.rooms:
        left = _left_revoked([(connection, gone) for connection, gone in view.lingering() if gone == room])  # R4
        return [*left, error_message(caller.connection, "not a member of this room", room=room)]
    entries, settled = await _roster(store, room)
    _charge_snapshot(store, caller, entries)
    return [*settled, *sync_messages(caller.connection, entries, room=room)]


async def _membership(
    store: ConnectionStore,
    caller: _Caller,
    *,
    joining: bool,
    service: GroupAdder = AGE_ONLY,
    access: AccessPolicy = SETTINGS_DECIDE,
) -> list[Message]:
    rooms = Rooms(store)
    if joining:
        room = parse_room(caller.argument)
        change = await rooms.join(caller.user, room, policy=access, claims=caller.claims)
        await _join_first(service, store, caller.connection, [change.room])
        entries, settled = await _roster(store, change.room)
        _charge_snapshot(store, caller, entries)
    else:
        settled = []
        change = await rooms.leave(caller.user, parse_room(caller.argument))
    occupancy = await _feed_membership(store, change, by=BY_USER)
    # The caller first (it is surely connected: it asked), even should its row be missing.
    connections = dict.fromkeys([caller.connection, *change.connections])
    if not change.announce:  # nothing changed of long standing: the room hears nothing (rooms R5), the groups follow
        if not joining:
            return [leave_group(c, change.room) for c in connections]
        joins = [join_group(c, change.room) for c in connections]
        return [*joins, *settled, *sync_messages(caller.connection, entries, room=change.room)]
    announcement = room_message(change.room, user=change.user, joined=joining)
    if not joining:
        return [announcement, *occupancy, *(leave_group(c, change.room) for c in connections)]
    presence = [room_presence(change.presence, change.room)] if change.presence is not None else []
    return [
        *(join_group(c, change.room) for c in connections),
        announcement,
        *presence,
        *settled,
        *occupancy,
        *sync_messages(caller.connection, entries, room=change.room),
    ]


async def _join_first(service: GroupAdder, store: ConnectionStore, connection_id: str, names: list[str]) -> None:
    """Add the caller to the groups before its snapshot is read, so no change falls between the two (best effort:
    the output's group actions add it again)."""

    async def add(group: str) -> bool:
        return await service.add_to_group(store.settings.hub, group, connection_id)

    await gather_bounded(names, add, limit=_EARLY_ADDS)


async def _roster(store: ConnectionStore, room: str) -> tuple[list[RosterEntry], list[Message]]:
    """Return a room's snapshot: every member with their presence pair (one index query a thousand members); and the
    room's `occupancy` if settling a stale row changed it (its feed message put: feed F2)."""
    roster = Roster(store)
    entries = [entry async for page in roster.snapshot(room) for entry in page]
    await put_tallies(store, roster.index.changes)
    return entries, occupancy_messages(roster.index.changes)


def _caller(event: Invocation, method: str, *, one_argument: str | None = None) -> _Caller | list[Message]:
    """The caller checks of every client call: a connection, a signed-in user, one
    argument when it takes one (`one_argument` names it); what to answer instead when a check fails."""
    if not event.connection_id:
        logger.warning("%s: event without a connection id ignored", method)
        return []
    if not event.user_id:
        return [error_message(event.connection_id, f"{method} needs a signed-in user")]
    argument = None
    if one_argument is not None:
        if event.arguments is None or len(event.arguments) != 1:
            return [error_message(event.connection_id, f"{method} expects one argument: {one_argument}")]
        argument = event.arguments[0]
    return _Caller(event.user_id, event.connection_id, event.arguments, argument, event.claims)


def _unavailable(connection_id: str, method: str, error: StorageError) -> Message:
    """The caller's answer when storage failed: nothing to lose by retrying (every event is idempotent)."""
    logger.warning("%s: storage failed: %s", method, error)
    return error_message(connection_id, "the connection store is unavailable, try again", retry=True)


async def _feed_membership(store: ConnectionStore, change: RoomChange, *, by: str) -> list[Message]:
    """Put a membership change that is announced, and the room's tally if occupied or vacated, on the presence feed
    (feed F2: a failure raises, and the caller's retry repeats the announcement within a minute, rooms R5); return the
    room's `occupancy` message. A repeat that changed no tally tells the tally as it stands (one read)."""
    if not change.announce:
        return []
    message = membership_message(
        change.room, change.user, joined=change.joined, by=by, changed_at=change.changed_at, at=store.now()
    )
    await store.feed.put(message)
    tallies = list(change.tallies)
    if not tallies:
        tally = await Rooms(store).tally(change.room)
        tallies = [TallyChange.repeated(change.room, tally, user=user_key(change.user))]
    await put_tallies(store, tallies)
    return occupancy_messages(tallies)


async def _announced(store: ConnectionStore, change: PresenceChange | None) -> list[Message]:
    """Copy a pair onto the user's rooms' rosters, then return its announcements (roster C2: copies first)."""
    if change is None:
        return []
    published = await Roster(store).publish(change)
    audience = store.settings.presence_audience
    return presence_messages(published.unbatched(change), audience=audience) + occupancy_messages(published.tallies)


async def _refresh(store: ConnectionStore, user_id: str, connection_id: str) -> list[Message]:
    """Refresh the caller's lease (best effort); a lease made live again after it lapsed is a presence change."""
    try:
        outcome = await store.touch(user_id, connection_id)
    except (InvalidNameError, StorageError) as error:
        logger.warning("client message: caller not refreshed: %s", error)
        return []
    if not outcome.found:
        return await _map_late(store, user_id, connection_id)
    try:
        announcement = await _announced(store, outcome.presence)
    except StorageError as error:
        logger.warning("client message: a revival's announcement is left to the sweep: %s", error)
        announcement = []
    return [*_rejoined(connection_id, outcome.rooms), *announcement]


async def _map_late(store: ConnectionStore, user_id: str, connection_id: str) -> list[Message]:
    """Map a calling connection that has no row (its `connected` failed without closing it, or is still on its way)
    when the service confirms it is open: not a call that outlived its disconnect, nor, without REST access to ask,
    any (the client maps itself by reconnecting). Best effort: a failure leaves it to the next call."""
    try:
        if await store.probe.alive(store.settings.hub, connection_id) is not True:
            logger.info("client message: caller %s has no row and the service does not vouch for it", connection_id)
            return []
        outcome = await store.connect(user_id, connection_id, hub=store.settings.hub)
        if outcome.blocked or outcome.over_cap:
            return []
        logger.info("client message: caller %s had no row: mapped now", connection_id)
        return await _mapped(store, outcome)
    except (InvalidNameError, StorageError) as error:
        logger.warning("client message: caller %s not mapped: %s", connection_id, error)
        return []


def _rejoined(connection_id: str, rooms: tuple[str, ...]) -> list[Message]:
    """Group actions that put a connection whose lapsed lease came back into its user's rooms (R3)."""
    return [join_group(connection_id, room) for room in rooms]
