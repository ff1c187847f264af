"""Presence audiences, watching and snapshots, through the functions against Azurite (roster C1-C3)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench.proxy import CountingProxy
from mapping import events
from mapping.functions import runtime
from mapping.keys import room_partition, user_key
from mapping.presence.rows import Membership
from mapping.presence.state import PresenceChange, PresenceState
from mapping.presence.store import ConnectionStore
from mapping.rooms.index import STALE_INDEX_ROW, index_row
from mapping.rooms.roster import Roster
from mapping.rooms.tally import TALLY_ROW
from mapping.signalr.audience import presence_group
from mapping.signalr.invocation import parse_invocation
from mapping.storage.table import merge, upsert
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.functions_host import Out, client_sent, connected, disconnected, invocation, signalr_event
from testkit.tables import all_rows, drop_table, make_settings, unique_table_name

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture(autouse=True)
async def scoped(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Presence scoped to its audience (the shipped default), read again by the app."""
    monkeypatch.setenv("PRESENCE_AUDIENCE", "scoped")
    await runtime.reset()


def presence(out: Out) -> list[dict[str, Any]]:
    """Return the output's presence messages (each with its routing)."""
    return [m for m in out.messages if m.get("target") == "presence"]


def syncs(out: Out) -> list[dict[str, Any]]:
    """Return the output's presenceSync arguments, asserting each goes to one connection."""
    found = [m for m in out.messages if m.get("target") == "presenceSync"]
    assert all(m.get("connectionId") and "groupName" not in m for m in found)
    return [m["arguments"][0] for m in found]


def errors(out: Out) -> list[dict[str, Any]]:
    """Return the output's error messages."""
    return [m["arguments"][0] for m in out.messages if m.get("target") == "error"]


def group_actions(out: Out) -> list[tuple[str, str, str]]:
    """Return the output's group actions as (action, group, connection)."""
    return [(m["action"], m["groupName"], m["connectionId"]) for m in out.messages if "action" in m]


async def test_a_change_goes_to_the_users_rooms_and_watchers_never_the_hub() -> None:
    """Scoped: a change reaches the user's presence group and each of their rooms' groups, naming the room."""
    await connected("ann", "a1")
    await client_sent("join_room", "join", "ann", "a1", "lobby")
    await client_sent("join_room", "join", "ann", "a1", "team")
    out = await connected("ann", "a2")
    messages = presence(out)
    assert {m.get("groupName") for m in messages} == {presence_group("ann"), "lobby", "team"}
    assert all("connectionId" not in m and "userId" not in m for m in messages)  # nothing hub-wide
    by_group = {m["groupName"]: m["arguments"][0] for m in messages}
    assert by_group["lobby"]["room"] == "lobby"
    assert "room" not in by_group[presence_group("ann")]
    assert {p["version"] for p in by_group.values()} == {by_group["team"]["version"]}
    assert by_group["team"]["connections"] == 2
    assert ("add", presence_group("ann"), "a2") in group_actions(out)  # its own tabs hear the user


async def test_hub_audience_broadcasts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """PRESENCE_AUDIENCE=hub: one message to the whole hub, and no presence group is joined."""
    monkeypatch.setenv("PRESENCE_AUDIENCE", "hub")
    await runtime.reset()
    out = await connected("ben", "b1")
    [message] = presence(out)
    assert "groupName" not in message
    assert message["arguments"][0]["online"] is True
    assert not [a for a in group_actions(out) if a[1].startswith("~presence.")]


async def test_watch_subscribes_and_answers_a_snapshot() -> None:
    """watch(users) adds the caller to each user's presence group and answers their recorded pairs."""
    online = presence(await connected("cora", "c1"))[0]["arguments"][0]
    await connected("dan", "d1")
    out = await client_sent("watch_users", "watch", "dan", "d1", ["Cora", "cora", "nobody-yet"])
    assert ("add", presence_group("cora"), "d1") in group_actions(out)
    assert ("add", presence_group("nobody-yet"), "d1") in group_actions(out)
    [sync] = syncs(out)
    assert (sync["room"], sync["page"], sync["pages"]) == (None, 1, 1)
    assert sync["users"] == [
        online,
        {"user": "nobody-yet", "online": False, "connections": 0, "status": None, "lastSeen": None, "version": 0},
    ]


async def test_unwatch_removes_the_subscriptions() -> None:
    """unwatch(users) removes the caller from each user's presence group (watching none of them, nothing is written)."""
    await connected("eve", "e1")
    out = await client_sent("unwatch_users", "unwatch", "eve", "e1", ["fay", "gus"])
    assert group_actions(out) == [("remove", presence_group("fay"), "e1"), ("remove", presence_group("gus"), "e1")]


@pytest.mark.parametrize(
    ("function", "event", "arguments"),
    [
        ("watch_users", "watch", ["cora"]),  # not a list
        ("watch_users", "watch", [[f"u{i}" for i in range(101)]]),
        ("watch_users", "watch", [["ok", ""]]),
        ("watch_users", "watch", [["ok", 5]]),
        ("watch_users", "watch", [["a"], ["b"]]),
        ("unwatch_users", "unwatch", [{"users": ["a"]}]),
        ("unwatch_users", "unwatch", []),
        ("sync_room", "sync", ["not a room!"]),
        ("sync_room", "sync", ["never-joined"]),
        ("sync_room", "sync", [7]),
    ],
)
async def test_bad_input_gets_one_error_and_changes_nothing(function: str, event: str, arguments: list[Any]) -> None:
    """A malformed watch, unwatch or sync answers one error to the caller, with no group action or snapshot."""
    await connected("hal", "h1")
    out = await client_sent(function, event, "hal", "h1", *arguments)
    assert len(errors(out)) == 1
    assert [m["connectionId"] for m in out.messages if m.get("target") == "error"] == ["h1"]
    assert group_actions(out) == []
    assert syncs(out) == []


async def test_watching_nobody_refuses_every_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """PRESENCE_WATCH=nobody: a watch is refused with one error; unwatch still works."""
    monkeypatch.setenv("PRESENCE_WATCH", "nobody")
    await runtime.reset()
    await connected("ida", "i1")
    out = await client_sent("watch_users", "watch", "ida", "i1", ["jay"])
    assert [e["error"] for e in errors(out)] == ["watching users is turned off (PRESENCE_WATCH=nobody)"]
    assert group_actions(out) == []


async def test_room_members_may_watch_only_those_sharing_a_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """PRESENCE_WATCH=room-members: a watch naming a user who shares no room with the caller is refused whole."""
    monkeypatch.setenv("PRESENCE_WATCH", "room-members")
    await runtime.reset()
    for user, tab in (("kim", "k1"), ("lee", "l1"), ("max", "m1")):
        await connected(user, tab)
    await client_sent("join_room", "join", "kim", "k1", "club")
    await client_sent("join_room", "join", "lee", "l1", "club")
    refused = await client_sent("watch_users", "watch", "kim", "k1", ["lee", "max"])
    assert [e.get("refused") for e in errors(refused)] == [["max"]]
    assert group_actions(refused) == []
    allowed = await client_sent("watch_users", "watch", "kim", "k1", ["lee"])
    assert group_actions(allowed) == []  # lee's presence reaches kim through club's group: no subscription to end
    assert [u["user"] for u in syncs(allowed)[0]["users"]] == ["lee"]
    changed = await client_sent("set_status", "setStatus", "lee", "l1", "busy")
    assert "club" in {m.get("groupName") for m in presence(changed)}


async def test_a_snapshot_then_changes_converge_by_version() -> None:
    """C1: a join's snapshot holds each member's recorded pair; merged with later changes by version, it is true."""
    heard: dict[str, dict[str, Any]] = {}
    await connected("nia", "n1")
    await client_sent("join_room", "join", "nia", "n1", "den")
    await connected("oli", "o1")
    await client_sent("set_status", "setStatus", "oli", "o1", "busy")
    await client_sent("join_room", "join", "oli", "o1", "den")
    await connected("pam", "p1")
    joined = await client_sent("join_room", "join", "pam", "p1", "den")
    for entry in (u for sync in syncs(joined) for u in sync["users"]):
        heard[entry["user"]] = entry
    assert {u: (e["online"], e["status"]) for u, e in heard.items()} == {
        "nia": (True, None),
        "oli": (True, "busy"),
        "pam": (True, None),
    }
    for out in (await disconnected("nia", "n1"), await client_sent("set_status", "setStatus", "oli", "o1", "away")):
        for message in presence(out):
            entry = message["arguments"][0]
            if message.get("groupName") == "den" and entry["version"] > heard[entry["user"]]["version"]:
                heard[entry["user"]] = {k: v for k, v in entry.items() if k != "room"}
    resync = await client_sent("sync_room", "sync", "pam", "p1", "den")
    assert {u["user"]: u for u in syncs(resync)[0]["users"]} == heard
    assert (heard["nia"]["online"], heard["oli"]["status"]) == (False, "away")


async def test_a_big_room_snapshot_comes_in_pages() -> None:
    """A room of 250 members answers a join with three presenceSync pages of at most 100 entries."""
    store = runtime.store()
    for number in range(249):
        await store.connect(f"m{number:03}", f"c{number}")
        await signalr_event(
            "join_room", invocation("join", user_id=f"m{number:03}", connection_id=f"c{number}", arguments=["hall"])
        )
    await connected("last", "z1")
    pages = syncs(await client_sent("join_room", "join", "last", "z1", "hall"))
    assert [(p["page"], p["pages"], len(p["users"])) for p in pages] == [(1, 3, 100), (2, 3, 100), (3, 3, 50)]
    assert len({u["user"] for p in pages for u in p["users"]}) == 250


async def _flag_pending(store: ConnectionStore, room: str, user: str, *, at: datetime) -> None:
    """Flag a user's member-index row of a room pending since `at`, as a join or leave in progress does."""
    row = {"PartitionKey": room_partition(room), "RowKey": user_key(user), "Pending": True, "PendingAt": at}
    await store.table.write(merge(row), action="test")


async def test_a_pending_row_is_verified_and_cleared_only_when_stale(azurite: Azurite) -> None:
    """C3: a pending index row is checked against the user's partition; its flag goes only once stale."""
    store = runtime.store()
    flagged_at = datetime.now(UTC)
    await connected("quin", "q1")
    await client_sent("join_room", "join", "quin", "q1", "lab")
    await _flag_pending(store, "lab", "quin", at=flagged_at)
    roster = Roster(store)
    fresh = [e async for page in roster.snapshot("lab", now=flagged_at + STALE_INDEX_ROW / 2) for e in page]
    assert [e.user for e in fresh] == ["quin"]
    assert await _pending(azurite, store.settings.table_name) == {"quin": True}
    await _flag_pending(store, "lab", "quin", at=flagged_at)  # a left member's row, flagged by the leave long ago
    stale = [e async for page in roster.snapshot("lab", now=flagged_at + STALE_INDEX_ROW * 2) for e in page]
    assert [e.user for e in stale] == ["quin"]
    assert await _pending(azurite, store.settings.table_name) == {"quin": False}


async def test_a_left_members_stale_row_is_dropped_from_snapshots(azurite: Azurite) -> None:
    """C3: after a leave, the member is gone from snapshots at once, and a reader deletes the row once stale."""
    store = runtime.store()
    await connected("rex", "r1")
    await connected("sue", "s1")
    await client_sent("join_room", "join", "rex", "r1", "pub")
    await client_sent("join_room", "join", "sue", "s1", "pub")
    await client_sent("leave_room", "leave", "rex", "r1", "pub")
    roster = Roster(store)
    assert [e.user for page in [p async for p in roster.snapshot("pub")] for e in page] == ["sue"]
    later = datetime.now(UTC) + STALE_INDEX_ROW * 2
    assert [e.user async for page in roster.snapshot("pub", now=later) for e in page] == ["sue"]
    assert set(await _pending(azurite, store.settings.table_name)) == {"sue"}


async def test_the_sweep_puts_a_set_back_copy_right() -> None:
    """C2: a roster copy set back to an older pair (a slow writer) is repaired by the sweep's repeat."""
    store = runtime.store()
    start = datetime.now(UTC) - timedelta(minutes=30)
    first = (await store.connect("tom", "t1", now=start)).presence
    await client_sent("join_room", "join", "tom", "t1", "yard")
    second = (await store.disconnect("tom", "t1", now=start + timedelta(seconds=1))).presence
    assert first is not None
    assert second is not None
    await Roster(store).publish(PresenceChange.of("tom", first.state, first.version, rooms=("yard",)))  # set back
    assert [e.pair.version async for page in Roster(store).snapshot("yard") for e in page] == [first.version]
    result = await sweep(store, now=start + timedelta(minutes=25))
    assert [c.version for c in result.presence if c.user == "tom"] == [second.version]
    assert [e.pair async for page in Roster(store).snapshot("yard") for e in page] == [
        PresenceChange.of("tom", second.state, second.version)
    ]


async def _pending(azurite: Azurite, table: str) -> dict[str, bool]:
    """Return the Pending flag of each member-index row, by user name."""
    return {
        str(row["UserName"]): bool(row.get("Pending"))
        for row in await all_rows(azurite, table)
        if str(row["PartitionKey"]).startswith("%~m") and row["RowKey"] != TALLY_ROW
    }


class _ChangeOnAdd:
    """A group adder that lets another member change the moment the caller's group addition is confirmed."""

    def __init__(self, change: Any) -> None:
        self.change = change
        self.added: list[tuple[str, str]] = []

    asks_service = True

    async def remove_from_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Confirm nothing: this adder only adds."""
        return False

    async def add_to_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Record the addition, then run the racing change."""
        self.added.append((group, connection_id))
        await self.change()
        return True


async def test_a_change_right_after_the_early_group_addition_is_in_the_snapshot() -> None:
    """The caller joins the room's group before the snapshot is read: a change just after the join is not missed."""
    store = runtime.store()
    await connected("uma", "u1")
    await client_sent("join_room", "join", "uma", "u1", "gym")
    await connected("vic", "v1")

    async def uma_sets_a_status() -> None:
        await client_sent("set_status", "setStatus", "uma", "u1", "lifting")

    adder = _ChangeOnAdd(uma_sets_a_status)
    payload = invocation("join", user_id="vic", connection_id="v1", arguments=["gym"])
    messages = await events.on_join(store, parse_invocation(payload), service=adder)
    assert adder.added == [("gym", "v1")]
    [sync] = [m["arguments"][0] for m in messages if m.get("target") == "presenceSync"]
    assert {u["user"]: u["status"] for u in sync["users"]} == {"uma": "lifting", "vic": None}


async def test_a_thousand_member_rooms_snapshot_takes_at_most_ten_table_requests(azurite: Azurite) -> None:
    """A join into a room of 1,000 members answers its snapshot from the member index: at most 10 table requests."""
    seeded = ConnectionStore(make_settings(azurite.connection_string, unique_table_name()))
    try:
        changes = [
            PresenceChange.of(f"member{n:04}", PresenceState(True, 1), 1_000 + n, rooms=("arena",)) for n in range(1000)
        ]
        rows = [
            {**index_row(Membership("arena", datetime.now(UTC)), user_key(c.user), c.user), "Pending": False}
            for c in changes
        ]
        for start in range(0, len(rows), 100):
            await seeded.table.transact([upsert(row) for row in rows[start : start + 100]], action="seed")
        await asyncio.gather(*(Roster(seeded).publish(change) for change in changes[:50]))  # some copies written
        with CountingProxy(azurite.port) as proxy:
            counted = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
            store = ConnectionStore(make_settings(counted, seeded.settings.table_name))
            try:
                await store.connections_of("warm-up")
                with proxy.counting() as requests:
                    entries = [e async for page in Roster(store).snapshot("arena") for e in page]
            finally:
                await store.close()
        assert len(entries) == 1000
        print(f"snapshot of 1,000 members: {dict(requests)}")
        assert sum(requests.values()) <= 10, requests
    finally:
        await seeded.close()
        await drop_table(azurite, seeded.settings.table_name)
