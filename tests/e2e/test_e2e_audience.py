"""Presence audiences end to end, with real `@microsoft/signalr` Node clients: the emulator, the local host, the
function app and Azurite, with PRESENCE_AUDIENCE=scoped (rooms, watchers, own tabs), snapshots and watch policies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from azure.data.tables.aio import TableClient
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from local.host.queues import QueueOptions
from mapping.keys import connection_key, room_partition, user_key
from mapping.presence.grace import Decision
from mapping.settings import GRACE_QUEUE
from mapping.signalr.audience import presence_group
from testkit.azurite import ROOT, Azurite, running_azurite
from testkit.emulator_billing import billed_messages
from testkit.stack import SignalRClients, Stack, api, running_stack, unique_user, wait_until
from testkit.tables import drop_table

pytestmark = pytest.mark.slow

TARGETS = ["newMessage", "presence", "presenceSync", "room", "error"]
FUNCTION_KEY = {"x-functions-key": "e2e-function-key"}  # the local host does not check it, as Core Tools does not
ENTRY_KEYS = {"user", "online", "connections", "status", "lastSeen", "version"}
QUIET = 1.0  # seconds without news after which nothing more is on its way


@pytest.fixture(scope="module")
async def stack(azurite: Azurite) -> AsyncIterator[Stack]:
    """One emulator and local host with the shipped audience (scoped) and no grace, on their own table (dropped)."""
    with running_stack(azurite, audience="scoped") as running:
        yield running
    await drop_table(azurite, running.table)


@pytest.fixture
async def clients(stack: Stack) -> AsyncIterator[SignalRClients]:
    """A Node process with real SignalR clients; every connection is stopped afterwards."""
    async with SignalRClients(stack) as driver:
        yield driver


@contextlib.asynccontextmanager
async def drop_afterwards(azurite: Azurite, stack: Stack) -> AsyncIterator[None]:
    """Drop the stack's table when the block ends."""
    try:
        yield
    finally:
        await drop_table(azurite, stack.table)


def room_name(prefix: str) -> str:
    """Return a room name no other test uses."""
    return unique_user(prefix)


def presence_heard(clients: SignalRClients, client: str, user: str) -> list[dict[str, Any]]:
    """Return every presence entry about `user` a client received, in order (room copies included)."""
    key = user.casefold()
    return [args[0] for args in clients.received(client, "presence") if args and args[0]["user"].casefold() == key]


def syncs(clients: SignalRClients, client: str) -> list[dict[str, Any]]:
    """Return the presenceSync snapshots a client received, in order."""
    return [args[0] for args in clients.received(client, "presenceSync")]


def errors(clients: SignalRClients, client: str) -> list[dict[str, Any]]:
    """Return the error messages a client received, in order."""
    return [args[0] for args in clients.received(client, "error")]


def merged(clients: SignalRClients, client: str) -> dict[str, dict[str, Any]]:
    """Merge a client's snapshots and presence messages by version, as the README's client does; by user key."""
    latest: dict[str, dict[str, Any]] = {}

    def keep(entry: dict[str, Any]) -> None:
        key = entry["user"].casefold()
        if latest.get(key, {}).get("version", 0) < entry["version"] or key not in latest:
            latest[key] = {k: v for k, v in entry.items() if k != "room"}

    for event in clients.events:
        if event.get("id") != client or event.get("event") != "message":
            continue
        if event["target"] == "presence":
            keep(event["args"][0])
        elif event["target"] == "presenceSync":
            for entry in event["args"][0]["users"]:
                keep(entry)
    return latest


def state(entry: dict[str, Any]) -> tuple[bool, int, str | None, str | None]:
    """Return what a client shows of a presence entry: online, connections, status, last seen."""
    return entry["online"], entry["connections"], entry["status"], entry["lastSeen"]


async def server_state(stack: Stack, user: str) -> tuple[bool, int, str | None, str | None]:
    """Return a user's presence as `GET /api/users/{user}` tells it (with the function key)."""
    status, body = await api(stack, "GET", f"users/{user}", headers=FUNCTION_KEY)
    assert status == 200, body
    return body["online"], len(body["connections"]), body["status"], body["lastSeen"]


async def live_connections(stack: Stack) -> set[str]:
    """Return the ids of the emulator's live connections."""
    async with aiohttp.ClientSession() as session, session.get(f"{stack.emulator_url}/admin/connections") as answer:
        assert answer.status == 200, await answer.text()
        return {c["connectionId"] for c in (await answer.json())["connections"]}


async def quiet_billing(stack: Stack, mine: set[str]) -> None:
    """Wait until only `mine` are connected and nothing is being delivered, then start the billing count at zero."""

    async def only_mine() -> bool:
        return await live_connections(stack) == mine

    await wait_until(only_mine, what="connections of earlier tests to close")
    for _ in range(20):
        await billed_messages(stack.emulator_url, reset=True)
        await asyncio.sleep(QUIET / 2)
        if (await billed_messages(stack.emulator_url))["total"] == 0:
            await billed_messages(stack.emulator_url, reset=True)
            return
    pytest.fail("the emulator kept delivering messages")


async def settled_billing(stack: Stack) -> dict[str, Any]:
    """Return the billing counts once they have stopped changing for a while."""
    last = await billed_messages(stack.emulator_url)
    while True:
        await asyncio.sleep(QUIET)
        now = await billed_messages(stack.emulator_url)
        if now == last:
            return now
        last = now


async def partition_rows(azurite: Azurite, stack: Stack, partitions: set[str]) -> list[tuple[Any, ...]]:
    """Return the rows of some partitions with their ETags, straight from the table, in key order."""
    async with TableClient.from_connection_string(azurite.connection_string, stack.table) as table:
        rows = [
            (row["PartitionKey"], row["RowKey"], row.metadata["etag"], sorted(dict(row).items(), key=str))
            async for row in table.list_entities()
            if row["PartitionKey"] in partitions
        ]
    return sorted(rows, key=lambda row: (row[0], row[1]))


async def joined(clients: SignalRClients, client: str, room: str, user: str) -> dict[str, Any]:
    """Join a room from a client and return the snapshot it is answered with (after the room heard the join)."""
    before = len(syncs(clients, client))
    await clients.send(client, "join", room)
    await clients.wait_message(client, "room", lambda a: a[0] == {"room": room, "user": user, "joined": True})
    await wait_until(lambda: len(syncs(clients, client)) > before, what=f"{client}'s snapshot of {room}")
    return syncs(clients, client)[before]


async def watched(clients: SignalRClients, client: str, users: list[str]) -> dict[str, Any]:
    """Watch users from a client and return the snapshot it is answered with."""
    before = len(syncs(clients, client))
    await clients.send(client, "watch", users)
    await wait_until(lambda: len(syncs(clients, client)) > before, what=f"{client}'s snapshot of {users}")
    return syncs(clients, client)[before]


async def billed_for_statuses(
    stack: Stack, clients: SignalRClients, changes: list[tuple[str, str, str, str]]
) -> dict[str, Any]:
    """Send each (client, user, status, listener) setStatus, wait until its listener hears it; return the billing."""
    for client, _user, status, _listener in changes:
        await clients.send(client, "setStatus", status)
    for _client, user, status, listener in changes:
        await heard_status(clients, listener, user, status)
    return await settled_billing(stack)


async def heard_status(clients: SignalRClients, listener: str, user: str, status: str) -> None:
    """Wait until a client hears a user's presence with the given status."""
    await clients.wait_message(listener, "presence", lambda a: a[0]["user"] == user and a[0]["status"] == status)


async def test_a_change_reaches_its_audience_once_and_is_billed_for_it_alone(
    stack: Stack, clients: SignalRClients
) -> None:
    """Scoped: a status change reaches a watcher and a room member once each and the user's other tab, never the
    four strangers, and the emulator bills presence for the 6 recipients of the audience, not the 8 of the hub."""
    ann, rita, walt = unique_user("ann"), unique_user("rita"), unique_user("walt")
    room = room_name("den")
    mine = {await clients.connect("a1", ann, targets=TARGETS), await clients.connect("r1", rita, targets=TARGETS)}
    mine.add(await clients.connect("w1", walt, targets=TARGETS))
    strangers = [f"s{number}" for number in range(4)]
    for number, client in enumerate(strangers):
        mine.add(await clients.connect(client, unique_user(f"stranger{number}"), targets=TARGETS))
    await joined(clients, "a1", room, ann)
    await joined(clients, "r1", room, rita)
    await watched(clients, "w1", [ann])
    mine.add(await clients.connect("a2", ann, targets=TARGETS))
    await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == ann and a[0]["connections"] == 2)
    await quiet_billing(stack, mine)

    await clients.send("a1", "setStatus", "busy")
    for client in ("w1", "r1", "a1", "a2"):
        await clients.wait_message(client, "presence", lambda a: a[0]["user"] == ann and a[0]["status"] == "busy")
    billed = await settled_billing(stack)
    [change] = [e for e in presence_heard(clients, "w1", ann) if e["status"] == "busy"]
    assert set(change) == ENTRY_KEYS
    assert [e for e in presence_heard(clients, "r1", ann) if e["status"] == "busy"] == [{**change, "room": room}]
    for tab in ("a1", "a2"):  # own tabs: the presence group's copy, and the room's (they are members)
        copies = [e for e in presence_heard(clients, tab, ann) if e["version"] == change["version"]]
        assert sorted(copies, key=lambda e: "room" in e) == [change, {**change, "room": room}]
    for client in strangers:
        assert presence_heard(clients, client, ann) == []  # not one of ann's changes, from the first on
    assert billed["byTarget"] == {"presence": 6}, billed
    assert billed["byGroup"] == {presence_group(ann): 3, room: 3}, billed
    assert len(mine) == 8  # what PRESENCE_AUDIENCE=hub would have billed


async def test_a_stranger_hears_nothing_while_a_watcher_and_a_room_mate_hear_each_change_once(
    stack: Stack, clients: SignalRClients
) -> None:
    """A connection sharing no room with a user and not watching them hears none of their changes (online, a new
    count, a status, a tab closing, offline), while a watcher (who named the user in other case) and a room mate each
    hear every one of them exactly once, in version order."""
    ann, rita, stranger = unique_user("ann"), unique_user("rita"), unique_user("stranger")
    room = room_name("den")
    await clients.connect("stranger", stranger, targets=TARGETS)
    await clients.connect("w1", unique_user("walt"), targets=TARGETS)
    await watched(clients, "w1", [ann.upper()])
    await clients.connect("a1", ann, targets=TARGETS)
    await joined(clients, "a1", room, ann)
    await clients.connect("r1", rita, targets=TARGETS)
    await joined(clients, "r1", room, rita)
    await clients.connect("a2", ann, targets=TARGETS)
    await clients.wait_message("r1", "presence", lambda a: a[0]["user"] == ann and a[0]["connections"] == 2)
    await clients.send("a2", "setStatus", "here")
    [here] = await clients.wait_message("r1", "presence", lambda a: a[0]["user"] == ann and a[0]["status"] == "here")
    await clients.stop("a2")
    await clients.wait_message("r1", "presence", lambda a: a[0]["user"] == ann and a[0]["version"] > here["version"])
    await clients.stop("a1")
    await clients.wait_message("r1", "presence", lambda a: a[0]["user"] == ann and not a[0]["online"])
    await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == ann and not a[0]["online"])
    # A message to the stranger sent after the last change reaches it after anything sent to it before.
    await clients.send("w1", "send", stranger, "marker")
    await clients.wait_message("stranger", "newMessage", lambda a: a[0]["message"] == "marker")
    assert presence_heard(clients, "stranger", ann) == []
    watched_changes = presence_heard(clients, "w1", ann)
    changes = [(True, 1, None), (True, 2, None), (True, 2, "here"), (True, 1, None), (False, 0, None)]
    assert [state(e)[:3] for e in watched_changes] == changes
    room_changes = presence_heard(clients, "r1", ann)
    assert room_changes == [{**e, "room": room} for e in watched_changes[1:]]  # from her join on, the same pairs
    versions = [e["version"] for e in watched_changes]
    assert versions == sorted(set(versions))  # each change once, in order


async def test_unwatch_ends_a_subscription(stack: Stack, clients: SignalRClients) -> None:
    """After unwatch (naming the user in other case) a watcher hears no more of the user's changes, and is billed
    none; another user it still watches is heard."""
    ann, bob = unique_user("ann"), unique_user("bob")
    mine = {await clients.connect("w1", unique_user("walt"), targets=TARGETS)}
    await watched(clients, "w1", [ann, bob])
    mine |= {await clients.connect("a1", ann, targets=TARGETS), await clients.connect("b1", bob, targets=TARGETS)}
    await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == ann and a[0]["online"])
    await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == bob and a[0]["online"])
    await clients.send("w1", "unwatch", [ann.upper()])
    await quiet_billing(stack, mine)
    await clients.send("w1", "sync", "no-such-room")  # the unwatch ran before it: calls of one connection keep order
    await clients.wait_message("w1", "error")
    billed = await billed_for_statuses(
        stack, clients, [("a1", ann, "gone quiet", "a1"), ("b1", bob, "still heard", "w1")]
    )
    assert billed["byGroup"] == {presence_group(ann): 1, presence_group(bob): 2}, billed
    assert [e for e in presence_heard(clients, "w1", ann) if e["status"]] == []
    assert errors(clients, "w1") == [{"error": "not a member of this room", "room": "no-such-room", "call": "sync"}]


async def test_join_and_watch_answer_snapshots_that_converge_with_changes_by_version(
    stack: Stack, clients: SignalRClients
) -> None:
    """join and watch answer the caller a presenceSync snapshot of recorded pairs; merged by version with the changes
    that follow, it gives what `GET /api/users/{user}` says, and a sync re-sends the room's snapshot as merged."""
    ann, bob, cat, dan, vic = (unique_user(name) for name in ("ann", "bob", "cat", "dan", "vic"))
    room = room_name("hall")
    await clients.connect("a1", ann, targets=TARGETS)
    await clients.send("a1", "setStatus", "busy")
    await clients.wait_message("a1", "presence", lambda a: a[0]["status"] == "busy")
    await joined(clients, "a1", room, ann)
    await clients.connect("b1", bob, targets=TARGETS)
    await joined(clients, "b1", room, bob)
    await clients.stop("b1")
    await clients.wait_message("a1", "presence", lambda a: a[0]["user"] == bob and not a[0]["online"])
    await clients.connect("d1", dan, targets=TARGETS)

    await clients.connect("v1", vic, targets=TARGETS)
    snapshot = await joined(clients, "v1", room, vic)
    assert set(snapshot) == {"room", "users", "page", "pages"}
    assert (snapshot["room"], snapshot["page"], snapshot["pages"]) == (room, 1, 1)
    assert all(set(entry) == ENTRY_KEYS for entry in snapshot["users"])
    by_user = {entry["user"]: entry for entry in snapshot["users"]}
    assert {user: state(entry) for user, entry in by_user.items()} == {
        ann: (True, 1, "busy", None),
        bob: await server_state(stack, bob),  # offline, last seen when his tab closed
        vic: (True, 1, None, None),
    }
    assert by_user[bob]["lastSeen"] is not None
    assert all(entry["version"] > 0 for entry in snapshot["users"])
    watching = await watched(clients, "v1", [dan, cat])
    assert set(watching) == {"room", "users", "page", "pages"}
    assert (watching["room"], watching["page"], watching["pages"]) == (None, 1, 1)
    assert all(set(entry) == ENTRY_KEYS for entry in watching["users"])
    assert [(e["user"], state(e), e["version"] > 0) for e in watching["users"]] == [
        (dan, (True, 1, None, None), True),
        (cat, (False, 0, None, None), False),  # never seen: version 0
    ]
    assert watching["users"][1]["version"] == 0

    await clients.send("a1", "setStatus", "away")
    await clients.connect("a2", ann, targets=TARGETS)
    await clients.stop("d1")
    await clients.connect("c1", cat, targets=TARGETS)
    await clients.connect("b2", bob, targets=TARGETS)
    users = [ann, bob, cat, dan, vic]

    async def converged() -> bool:
        latest = merged(clients, "v1")
        truth = [await server_state(stack, user) for user in users]
        return [state(latest[u.casefold()]) if u.casefold() in latest else None for u in users] == truth

    await wait_until(converged, what="vic's merged presence to match the server's")
    latest = merged(clients, "v1")
    assert state(latest[ann.casefold()]) == (True, 2, "away", None)
    assert state(latest[dan.casefold()])[:3] == (False, 0, None)
    assert state(latest[cat.casefold()]) == (True, 1, None, None)
    assert state(latest[bob.casefold()]) == (True, 1, None, None)

    before = len(syncs(clients, "v1"))
    await clients.send("v1", "sync", room)
    await wait_until(lambda: len(syncs(clients, "v1")) > before, what="the answer to sync")
    [again] = syncs(clients, "v1")[before:]
    assert (again["room"], again["page"], again["pages"]) == (room, 1, 1)
    assert {e["user"].casefold(): e for e in again["users"]} == {
        user.casefold(): latest[user.casefold()] for user in (ann, bob, vic)
    }


async def test_a_big_rooms_snapshot_comes_in_pages(stack: Stack, clients: SignalRClients) -> None:
    """A room of 121 members (120 of them offline, as membership outlives connections) answers a join and a sync
    with two presenceSync pages, 100 and 21 entries, naming every member once."""
    room = room_name("arena")
    members = [unique_user(f"m{number:03}") for number in range(120)]
    started = time.monotonic()

    async def join_and_leave(number: int, user: str) -> None:
        client = f"m{number}"
        await clients.connect(client, user, targets=["room"])
        await clients.send(client, "join", room)
        await clients.wait_message(client, "room", lambda a: a[0]["user"] == user)
        await clients.stop(client)

    for first in range(0, len(members), 20):
        await asyncio.gather(*(join_and_leave(n, members[n]) for n in range(first, min(first + 20, len(members)))))
    vic = unique_user("vic")
    await clients.connect("v1", vic, targets=TARGETS)
    await clients.send("v1", "join", room)
    await wait_until(lambda: len(syncs(clients, "v1")) >= 2, what="both pages of the snapshot")
    await clients.send("v1", "sync", room)
    await wait_until(lambda: len(syncs(clients, "v1")) >= 4, what="both pages of the sync")
    pages = syncs(clients, "v1")
    assert [(p["room"], p["page"], p["pages"], len(p["users"])) for p in pages] == [
        (room, 1, 2, 100),
        (room, 2, 2, 21),
    ] * 2, f"in {time.monotonic() - started:.1f} s"
    for answer in (pages[:2], pages[2:]):
        names = [entry["user"] for page in answer for entry in page["users"]]
        assert sorted(names) == sorted([*members, vic])
    assert all(not e["online"] and e["lastSeen"] for p in pages for e in p["users"] if e["user"] != vic)


HAL_ROOM = "ROOM"  # placeholders in the cases below, filled in per test
OTHER_ROOM = "OTHER"
TOM = "TOM"
TESS = "TESS"
BAD_INPUT = {  # the call, its arguments, and what the error says
    "watch a name, not a list": ("watch", [TOM], "must be a list"),
    "watch 101 names": ("watch", [[TOM, *(f"u{number}" for number in range(100))]], "at most 100"),
    "watch an empty name": ("watch", [[TOM, ""]], "must not be empty"),
    "watch a number": ("watch", [[TOM, 5]], "must be a string"),
    "watch with no argument": ("watch", [], "expects one argument"),
    "watch with two arguments": ("watch", [[TOM], [TOM]], "expects one argument"),
    "unwatch an object": ("unwatch", [{"users": [TESS]}], "must be a list"),
    "unwatch 101 names": ("unwatch", [[TESS, *(f"u{number}" for number in range(100))]], "at most 100"),
    "unwatch a blank name": ("unwatch", [[TESS, "   "]], "must not be empty"),
    "unwatch with no argument": ("unwatch", [], "expects one argument"),
    "sync a bad room name": ("sync", ["not a room!"], "room must be"),
    "sync a room not joined": ("sync", [OTHER_ROOM], "not a member of this room"),
    "sync a number": ("sync", [7], "room must be a string"),
    "sync with no argument": ("sync", [], "expects one argument"),
    "sync with two arguments": ("sync", [HAL_ROOM, HAL_ROOM], "expects one argument"),
}


def filled(value: Any, names: dict[str, str]) -> Any:
    """Return a case's arguments with the placeholders replaced by this test's names."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [filled(item, names) for item in value]
    if isinstance(value, dict):
        return {key: filled(item, names) for key, item in value.items()}
    return value


@pytest.mark.parametrize(("method", "arguments", "says"), list(BAD_INPUT.values()), ids=list(BAD_INPUT))
async def test_bad_input_gets_one_error_and_changes_nothing(
    azurite: Azurite, stack: Stack, clients: SignalRClients, method: str, arguments: list[Any], says: str
) -> None:
    """Bad input to watch, unwatch or sync is one `error` to the caller and nothing else: no row written, no other
    connection hears anything, no subscription added (tom's change does not reach hal) or removed (tess's does)."""
    hal, ivy, wes, tom, tess = (unique_user(name) for name in ("hal", "ivy", "wes", "tom", "tess"))
    room, other = room_name("club"), room_name("other")
    names = {HAL_ROOM: room, OTHER_ROOM: other, TOM: tom, TESS: tess}
    mine = {await clients.connect(client, user, targets=TARGETS) for client, user in (("h1", hal), ("i1", ivy))}
    mine |= {await clients.connect(client, user, targets=TARGETS) for client, user in (("w1", wes), ("t1", tom))}
    mine.add(await clients.connect("s1", tess, targets=TARGETS))
    await joined(clients, "h1", room, hal)
    await joined(clients, "i1", room, ivy)
    await joined(clients, "i1", other, ivy)
    await watched(clients, "w1", [hal])
    await watched(clients, "h1", [tess])
    partitions = {user_key(user) for user in (hal, ivy, wes, tom, tess)} | {room_partition(room), room_partition(other)}
    await quiet_billing(stack, mine)
    rows = await partition_rows(azurite, stack, partitions)
    seen = len(clients.events)

    await clients.send("h1", method, *filled(arguments, names))
    [error] = await clients.wait_message("h1", "error")
    billed = await settled_billing(stack)
    assert says in error["error"], error
    assert error.get("retry") is None
    if method == "sync" and arguments == [OTHER_ROOM]:
        assert error == {"error": "not a member of this room", "room": other, "call": "sync"}
    assert error["call"] == method
    assert [e for e in clients.events[seen:] if e.get("event") == "message"] == [
        {"id": "h1", "event": "message", "target": "error", "args": [error]}
    ]
    assert billed["total"] == 1, billed
    assert billed["byTargetAndKind"] == {"error": {"connection": 1}}, billed
    assert await partition_rows(azurite, stack, partitions) == rows

    billed = await billed_for_statuses(stack, clients, [("t1", tom, "probe", "t1"), ("s1", tess, "probe", "h1")])
    assert billed["byGroup"] == {presence_group(tom): 1, presence_group(tess): 2}, billed
    assert presence_heard(clients, "h1", tom) == []


@pytest.mark.parametrize("policy", ["room-members", "nobody"])
async def test_the_watch_policy_refuses_with_one_error_and_allows_room_mates(azurite: Azurite, policy: str) -> None:
    """PRESENCE_WATCH=room-members refuses (one error naming the user) a watch of someone sharing no room, and allows
    one of a room mate, who is then heard through their presence group too; `nobody` refuses both."""
    kim, lee, max_ = unique_user("kim"), unique_user("lee"), unique_user("max")
    room = room_name("club")
    with running_stack(azurite, audience="scoped", watch=policy) as stack:
        async with drop_afterwards(azurite, stack), SignalRClients(stack) as clients:
            for client, user in (("k1", kim), ("l1", lee), ("m1", max_)):
                await clients.connect(client, user, targets=TARGETS)
            await joined(clients, "k1", room, kim)
            await joined(clients, "l1", room, lee)
            await quiet_billing(stack, await live_connections(stack))

            await clients.send("k1", "watch", [lee, max_])
            [refused] = await clients.wait_message("k1", "error")
            billed = await settled_billing(stack)
            assert billed["byTargetAndKind"] == {"error": {"connection": 1}}, billed
            if policy == "nobody":
                assert refused == {"error": "watching users is turned off (PRESENCE_WATCH=nobody)", "call": "watch"}
            else:
                says = "may watch only users who share a room with you"
                assert refused == {"error": says, "refused": [max_], "call": "watch"}
            assert syncs(clients, "k1")[1:] == []  # only the join's snapshot

            await clients.send("k1", "watch", [lee])
            if policy == "nobody":
                await clients.wait_for(lambda e: len(errors(clients, "k1")) == 2, what="the second refusal")
                assert errors(clients, "k1") == [refused, refused]
            else:
                await wait_until(lambda: len(syncs(clients, "k1")) == 2, what="the watch's snapshot")
                snapshot = syncs(clients, "k1")[1]
                assert (snapshot["room"], [e["user"] for e in snapshot["users"]]) == (None, [lee])
            await clients.send("m1", "setStatus", "max here")
            await clients.send("l1", "setStatus", "lee here")
            await clients.wait_message("k1", "presence", lambda a: a[0]["user"] == lee and a[0].get("room") == room)
            await clients.wait_message("m1", "presence", lambda a: a[0]["user"] == max_ and a[0]["status"])
            await settled_billing(stack)
            copies = [e for e in presence_heard(clients, "k1", lee) if e["status"] == "lee here"]
            # Either way the room's copy only: under room-members the watch of a room-mate subscribes to nothing, as
            # lee's presence reaches kim through the room they share already.
            assert ["room" in e for e in copies] == [True]
            assert presence_heard(clients, "k1", max_) == []
            assert len(errors(clients, "k1")) == (2 if policy == "nobody" else 1)


GRACE = 3  # seconds: PRESENCE_GRACE_SECONDS of the grace tests
# host.json's extensions.queues.maxPollingInterval (the Functions host's default, a minute, when absent): the longest
# the local host, as the Functions host, lets an idle queue's visible decision wait for its poll.
POLLING = QueueOptions.from_host_json(json.loads((ROOT / "host.json").read_text())).max_polling_interval
DECIDED = "Executed 'Functions.presence_grace' (Succeeded"


@contextlib.contextmanager
def grace_stack(**options: Any) -> Iterator[tuple[Azurite, Stack]]:
    """A stack with a 3 s grace on an Azurite of its own: its `presence-grace` queue is nobody else's."""
    with running_azurite() as own, running_stack(own, audience="scoped", grace_seconds=GRACE, **options) as stack:
        yield own, stack


def decisions_made(stack: Stack) -> int:
    """Return how many grace decisions (queue-triggered runs) the local host has completed."""
    return (stack.logs / "host.log").read_text(errors="replace").count(DECIDED)


async def ended_at(azurite: Azurite, stack: Stack, user: str, connection_id: str) -> datetime:
    """Wait until a closed connection's row is stamped ended (the grace holds it) and return when it ended."""

    async def stamped() -> datetime | None:
        async with TableClient.from_connection_string(azurite.connection_string, stack.table) as table:
            row = await table.get_entity(user_key(user), connection_key(connection_id))
        value = row.get("EndedAt")
        return value.astimezone(UTC) if isinstance(value, datetime) else None

    moment: datetime = await wait_until(stamped, what="the closed connection's row to be stamped ended")
    return moment


@contextlib.asynccontextmanager
async def queued(azurite: Azurite) -> AsyncIterator[QueueClient]:
    """A client of the grace queue (Base64 text, as the app writes it), once a decision waits on it."""
    async with QueueClient.from_connection_string(
        azurite.queue_connection_string, GRACE_QUEUE, message_encode_policy=TextBase64EncodePolicy()
    ) as queue:

        async def waiting() -> bool:
            return ((await queue.get_queue_properties()).approximate_message_count or 0) > 0

        await wait_until(waiting, what="a decision to be queued")
        yield queue


def offline_heard(clients: SignalRClients, client: str, user: str) -> list[dict[str, Any]]:
    """Return the offline announcements of `user` a client received."""
    return [entry for entry in presence_heard(clients, client, user) if not entry["online"]]


def went_offline(arguments: list[Any], user: str) -> bool:
    """Return whether a presence message announces `user` offline."""
    return bool(arguments[0]["user"] == user and not arguments[0]["online"])


def as_time(text: str) -> datetime:
    """Parse a `lastSeen` of the API."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def audience_of(clients: SignalRClients, ann: str, room: str) -> str:
    """Give ann one tab (a1, its id returned) in `room`, a watcher (w1) and a room mate (r1, rita)."""
    await clients.connect("w1", unique_user("walt"), targets=TARGETS)
    await watched(clients, "w1", [ann])
    rita = unique_user("rita")
    await clients.connect("r1", rita, targets=TARGETS)
    await joined(clients, "r1", room, rita)
    connection_id = await clients.connect("a1", ann, targets=TARGETS)
    await joined(clients, "a1", room, ann)
    await clients.wait_message("r1", "presence", lambda a: a[0]["user"] == ann and a[0]["online"])
    return connection_id


async def test_a_reload_within_the_grace_announces_nothing_to_anyone() -> None:
    """Closing the last tab and opening another within the grace announces nothing (no presence message is billed
    at all: the watcher and the room mate hear nothing), the decision finds nothing to do, the status carries over,
    and the new tab is in the user's room."""
    ann, room = unique_user("ann"), room_name("den")
    with grace_stack() as (_, stack):
        async with SignalRClients(stack) as clients:
            await audience_of(clients, ann, room)
            await clients.send("a1", "setStatus", "busy")
            await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == ann and a[0]["status"] == "busy")
            await quiet_billing(stack, await live_connections(stack))
            heard = len(presence_heard(clients, "w1", ann))
            started = time.monotonic()
            await clients.stop("a1")
            reloaded = await clients.connect("a2", ann, targets=TARGETS)
            assert time.monotonic() - started < GRACE
            await wait_until(lambda: decisions_made(stack) >= 1, within=GRACE + 10, what="the grace decision")
            billed = await settled_billing(stack)
            assert "presence" not in billed["byTarget"], billed
            assert len(presence_heard(clients, "w1", ann)) == heard
            assert presence_heard(clients, "a2", ann) == []
            status, body = await api(stack, "GET", f"users/{ann}", headers=FUNCTION_KEY)
            assert status == 200
            assert (body["online"], body["status"], [c["connectionId"] for c in body["connections"]]) == (
                True,
                "busy",
                [reloaded],
            )
            assert body["rooms"] == [room]
            await clients.send("r1", "sendToRoom", room, "still here?")
            await clients.wait_message("a2", "newMessage", lambda a: a[0]["message"] == "still here?")


async def test_the_grace_expiring_announces_offline_once_last_seen_at_the_disconnect() -> None:
    """A last tab closing stays online through the grace; then the decision announces offline exactly once, with
    lastSeen the disconnect's time (EndedAt), not the decision's (the version, a time in ms, is past the grace), to
    the watcher and the room mate (the copy naming the room), and in time: within grace + host.json's
    maxPollingInterval + 2 s of the tab closing."""
    ann, room = unique_user("ann"), room_name("den")
    with grace_stack() as (azurite, stack):
        async with SignalRClients(stack) as clients:
            connection_id = await audience_of(clients, ann, room)
            await quiet_billing(stack, await live_connections(stack))
            closing = time.monotonic()
            await clients.stop("a1")
            ended = await ended_at(azurite, stack, ann, connection_id)
            assert (await server_state(stack, ann))[0] is True  # the grace holds it online
            [offline] = await clients.wait_message(
                "w1", "presence", lambda a: a[0]["user"] == ann and not a[0]["online"]
            )
            assert time.monotonic() - closing <= GRACE + POLLING + 2  # heard by the watcher in time
            assert offline["version"] <= (ended + timedelta(seconds=GRACE + POLLING + 2)).timestamp() * 1000
            await wait_until(lambda: decisions_made(stack) >= 1, what="the grace decision to be logged")
            billed = await settled_billing(stack)
            assert offline_heard(clients, "w1", ann) == [offline]
            assert offline_heard(clients, "r1", ann) == [{**offline, "room": room}]
            assert billed["byGroup"] == {presence_group(ann): 1, room: 1}, billed  # ann has no tab left
            assert billed["byTarget"] == {"presence": 2}, billed
            assert as_time(offline["lastSeen"]) == ended
            assert offline["version"] >= (ended + timedelta(seconds=GRACE)).timestamp() * 1000
            assert await server_state(stack, ann) == (False, 0, None, offline["lastSeen"])


async def test_two_tabs_closing_together_leave_one_offline() -> None:
    """Two tabs of a user closing at once, each with its own decision, leave the watcher one offline announcement
    (and no count that goes back), and the server agrees."""
    ann = unique_user("ann")
    with grace_stack() as (_, stack):
        async with SignalRClients(stack) as clients:
            await clients.connect("w1", unique_user("walt"), targets=TARGETS)
            await watched(clients, "w1", [ann])
            await clients.connect("a1", ann, targets=TARGETS)
            await clients.connect("a2", ann, targets=TARGETS)
            await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == ann and a[0]["connections"] == 2)
            heard = len(presence_heard(clients, "w1", ann))
            await asyncio.gather(clients.stop("a1"), clients.stop("a2"))
            await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == ann and not a[0]["online"])
            await wait_until(lambda: decisions_made(stack) >= 2, what="both grace decisions")
            await settled_billing(stack)
            after = presence_heard(clients, "w1", ann)[heard:]
            assert await server_state(stack, ann) == (False, 0, None, after[-1]["lastSeen"])
            assert [e["version"] for e in after] == sorted(e["version"] for e in after)
            distinct = [state(e)[:2] for e in {e["version"]: e for e in after}.values()]
            assert distinct in ([(True, 1), (False, 0)], [(False, 0)])  # a count may come first, if decided apart
            offline = offline_heard(clients, "w1", ann)
            assert len(offline) == 1, offline


async def test_a_lost_decision_still_converges_through_the_sweep() -> None:
    """With the queued decision deleted from the queue, the sweep (every second, 4 s lease) ends the row once the
    grace is over and announces offline exactly once, to the watcher and the room; the grace decision never runs."""
    ann, room = unique_user("ann"), room_name("den")
    with grace_stack(ttl_seconds=4, sweep_schedule="* * * * * *") as (azurite, stack):
        async with SignalRClients(stack) as clients:
            connection_id = await audience_of(clients, ann, room)
            await clients.stop("a1")
            async with queued(azurite) as queue:
                await queue.clear_messages()
                assert (await queue.get_queue_properties()).approximate_message_count == 0
            ended = await ended_at(azurite, stack, ann, connection_id)
            [offline] = await clients.wait_message(
                "w1", "presence", lambda a: a[0]["user"] == ann and not a[0]["online"]
            )
            await asyncio.sleep(GRACE)  # several sweeps more: none repeats it with another state
            assert decisions_made(stack) == 0
            assert offline["version"] >= (ended + timedelta(seconds=GRACE)).timestamp() * 1000  # never in the grace
            assert offline_heard(clients, "w1", ann) == [offline]
            assert offline_heard(clients, "r1", ann) == [{**offline, "room": room}]
            assert as_time(offline["lastSeen"]) >= ended
            assert await server_state(stack, ann) == (False, 0, None, offline["lastSeen"])
            assert as_time(offline["lastSeen"]) == ended  # the disconnect's time, not the sweep's


async def test_a_decision_and_a_sweep_meeting_one_ended_row_announce_one_offline_pair() -> None:
    """With the sweep every second and a 4 s lease, the queued decision and the sweep both reach the ended row when
    the grace is over: whichever wins, the watcher hears one offline pair (a repeat of it with its version is the
    sweep's documented repeat for the index entry of a deleted row), last seen at the disconnect."""
    ann = unique_user("ann")
    with grace_stack(ttl_seconds=4, sweep_schedule="* * * * * *") as (azurite, stack):
        async with SignalRClients(stack) as clients:
            await clients.connect("w1", unique_user("walt"), targets=TARGETS)
            await watched(clients, "w1", [ann])
            connection_id = await clients.connect("a1", ann, targets=TARGETS)
            await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == ann and a[0]["online"])
            await asyncio.sleep(2)  # older than half the lease: every sweep looks at the row
            await clients.stop("a1")
            ended = await ended_at(azurite, stack, ann, connection_id)
            [offline] = await clients.wait_message("w1", "presence", lambda a: went_offline(a, ann))
            await wait_until(lambda: decisions_made(stack) >= 1, what="the grace decision")
            await asyncio.sleep(GRACE)  # several sweeps more
            assert await server_state(stack, ann) == (False, 0, None, offline["lastSeen"])
            assert offline["version"] >= (ended + timedelta(seconds=GRACE)).timestamp() * 1000
            heard = presence_heard(clients, "w1", ann)
            assert [e for e in heard if e["version"] > offline["version"]] == []
            assert [e for e in heard if not e["online"]] == [offline] * len(offline_heard(clients, "w1", ann))
            assert len(heard) <= 3, heard  # the watch's snapshot aside: online, offline, at most one repeat
            assert as_time(offline["lastSeen"]) == ended  # the disconnect's time, not the sweep's


COPIES = {  # when the copy of a decision becomes visible: seconds after it is due (None: at once, before it is due)
    "copy-early": None,
    "copy-due-together": 0,
    "copy-due-2s-later": 2,
}


@pytest.mark.parametrize("copy_delay", list(COPIES.values()), ids=list(COPIES))
async def test_a_doubled_decision_still_announces_offline_once(copy_delay: int | None) -> None:
    """A copy of the queued decision (as a retried Put Message leaves) runs too, whether it comes before the decision
    is due (it waits for the rest of the grace), together with it or later, and the watcher still hears offline once,
    last seen at the disconnect."""
    ann = unique_user("ann")
    with grace_stack() as (azurite, stack):
        async with SignalRClients(stack) as clients:
            await clients.connect("w1", unique_user("walt"), targets=TARGETS)
            await watched(clients, "w1", [ann])
            connection_id = await clients.connect("a1", ann, targets=TARGETS)
            await clients.wait_message("w1", "presence", lambda a: a[0]["user"] == ann and a[0]["online"])
            await clients.stop("a1")
            ended = await ended_at(azurite, stack, ann, connection_id)
            due = ended + timedelta(seconds=GRACE)
            async with queued(azurite) as queue:
                until_due = max(0, math.ceil((due - datetime.now(UTC)).total_seconds()))
                wait = 0 if copy_delay is None else until_due + copy_delay
                await queue.send_message(Decision(ann, due).to_body(), visibility_timeout=wait)
            if copy_delay is None:  # the early copy ran and put itself back for the rest of the grace
                await wait_until(lambda: decisions_made(stack) >= 1, within=GRACE, what="the early copy to run")
                assert offline_heard(clients, "w1", ann) == []
            [offline] = await clients.wait_message("w1", "presence", lambda a: went_offline(a, ann))
            runs = 3 if copy_delay is None else 2
            await wait_until(lambda: decisions_made(stack) >= runs, what="every copy of the decision to run")
            await settled_billing(stack)
            assert as_time(offline["lastSeen"]) == ended
            assert offline["version"] >= due.timestamp() * 1000  # not decided before the grace was over
            assert await server_state(stack, ann) == (False, 0, None, offline["lastSeen"])
            heard = offline_heard(clients, "w1", ann)
            assert heard == [offline]
