"""Rooms: joining, leaving, listing and sending, through the functions and the store, against Azurite."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from mapping.errors import InvalidRequestError, StorageError
from mapping.functions import runtime
from mapping.keys import ROOM_PREFIX
from mapping.presence.rows import Membership
from mapping.presence.store import ConnectionStore
from mapping.rooms.index import STALE_INDEX_ROW, index_row
from mapping.rooms.membership import MAX_ROOMS_PER_USER, Rooms
from mapping.rooms.tally import TALLY_ROW
from mapping.storage.table import delete, upsert
from testkit.azurite import Azurite
from testkit.faultproxy import Fault, fault_proxy
from testkit.functions_host import Out, client_sent, connected, disconnected, http, http_request
from testkit.tables import all_rows, drop_table, make_settings, unique_table_name

pytestmark = pytest.mark.usefixtures("app_env")


async def join(user: str, connection_id: str, room: Any) -> Out:
    """A client's `join(room)`."""
    return await client_sent("join_room", "join", user, connection_id, room)


async def leave(user: str, connection_id: str, room: Any) -> Out:
    """A client's `leave(room)`."""
    return await client_sent("leave_room", "leave", user, connection_id, room)


async def members(room: str, **params: str) -> tuple[int, Any]:
    """GET /api/rooms/{room}; return the status and JSON body."""
    request = http_request("GET", f"rooms/{room}", route_params={"room": room}, params=params)
    status, body, _ = await http("room_members", request, signalr=Out())
    return status, body


async def user_presence(user: str) -> dict[str, Any]:
    """GET /api/users/{user}; return the JSON body (asserting a 200)."""
    status, body, _ = await http("user_presence", http_request("GET", f"users/{user}", route_params={"user": user}))
    assert status == 200
    assert isinstance(body, dict)
    return body


def groups(out: Out, action: str) -> set[tuple[str, str]]:
    """Return the (group, connection) pairs of an output's group actions of one kind."""
    return {(m["groupName"], m["connectionId"]) for m in out.messages if m.get("action") == action}


def room_announcements(out: Out) -> list[dict[str, Any]]:
    """Return the `room` announcements of an output (each sent to the room's group)."""
    found = [m for m in out.messages if m.get("target") == "room"]
    assert all(m["groupName"] == m["arguments"][0]["room"] for m in found)
    return [m["arguments"][0] for m in found]


def errors(out: Out) -> list[dict[str, Any]]:
    """Return the `error` messages of an output, asserting each goes to one connection only."""
    found = [m for m in out.messages if m.get("target") == "error"]
    assert all(m.get("connectionId") for m in found)
    return found


# -- join and leave ----------------------------------------------------------------------------


async def test_join_adds_every_live_connection_and_announces_to_the_room() -> None:
    """A join adds all the user's live tabs to the room's group, then tells the room who joined."""
    await connected("Alice", "a1")
    await connected("alice", "a2")
    out = await join("ALICE", "a1", "lobby")
    assert groups(out, "add") == {("lobby", "a1"), ("lobby", "a2")}
    assert room_announcements(out) == [{"room": "lobby", "user": "ALICE", "joined": True}]
    adds = [i for i, m in enumerate(out.messages) if m.get("action") == "add"]
    announced = next(i for i, m in enumerate(out.messages) if m.get("target") == "room")
    assert max(adds) < announced  # the joiner's own tabs hear it
    assert (await user_presence("alice"))["rooms"] == ["lobby"]
    status, body = await members("lobby")
    assert status == 200
    assert body == {
        "room": "lobby",
        "members": [{"user": "Alice", "online": True, "connections": 2, "status": None, "lastSeen": None}],
        "next": None,
    }


async def test_a_repeated_join_adds_and_announces_again() -> None:
    """R3: a join that finds the membership done repeats its group actions and announcement (a retry converges)."""
    await connected("bob", "b1")
    first = await join("bob", "b1", "room.1")
    second = await join("bob", "b1", "room.1")
    assert groups(first, "add") == groups(second, "add") == {("room.1", "b1")}
    assert (
        room_announcements(first) == room_announcements(second) == [{"room": "room.1", "user": "bob", "joined": True}]
    )
    assert (await user_presence("bob"))["rooms"] == ["room.1"]


async def test_a_connection_opened_later_joins_the_users_rooms() -> None:
    """SignalR forgets groups when a connection ends: each new connection is added to its user's rooms."""
    await connected("carol", "c1")
    await join("carol", "c1", "b-room")
    await join("carol", "c1", "a_room")
    await disconnected("carol", "c1")
    out = await connected("Carol", "c2")
    assert groups(out, "add") == {("a_room", "c2"), ("b-room", "c2")}
    body = await user_presence("carol")
    assert (body["online"], body["rooms"]) == (True, ["a_room", "b-room"])


async def test_leave_announces_then_removes_every_live_connection() -> None:
    """A leave tells the room first (the leaver hears it too), then takes every live tab out of the group."""
    await connected("dave", "d1")
    await connected("dave", "d2")
    await join("dave", "d1", "lobby")
    out = await leave("dave", "d2", "lobby")
    assert room_announcements(out) == [{"room": "lobby", "user": "dave", "joined": False}]
    assert groups(out, "remove") == {("lobby", "d1"), ("lobby", "d2")}
    announced = next(i for i, m in enumerate(out.messages) if m.get("target") == "room")
    assert announced < min(i for i, m in enumerate(out.messages) if m.get("action") == "remove")
    assert (await user_presence("dave"))["rooms"] == []
    assert (await members("lobby"))[1]["members"] == []
    assert groups(await connected("dave", "d3"), "add") == set()


async def test_leaving_a_room_one_is_not_in_is_harmless() -> None:
    """A leave of a room the user is not in (nor left within the minute) still removes its tabs from the group,
    writes nothing and tells the room nothing (rooms R5)."""
    await connected("erin", "e1")
    out = await leave("erin", "e1", "nowhere")
    assert room_announcements(out) == []
    assert groups(out, "remove") == {("nowhere", "e1")}
    assert errors(out) == []


@pytest.mark.parametrize(
    "room",
    ["", "a" * 65, "has space", "slash/room", "ümlaut", "tab\troom", "~connections", None, 7, ["lobby"], {"r": 1}],
)
async def test_a_bad_room_name_answers_the_caller_with_one_error(
    room: Any, app_env: dict[str, str], azurite: Azurite
) -> None:
    """A room name outside the rule gets one `error` to the caller and writes nothing."""
    await connected("frank", "f1")
    before = await all_rows(azurite, app_env["MAPPING_TABLE"])
    for call in (join, leave):
        out = await call("frank", "f1", room)
        [error] = errors(out)
        assert error["connectionId"] == "f1"
        assert "room" in error["arguments"][0]["error"]
        assert len(out.messages) == 1
    assert await all_rows(azurite, app_env["MAPPING_TABLE"]) == before


@pytest.mark.parametrize("arguments", [[], ["a", "b"]])
async def test_join_with_the_wrong_arguments_answers_one_error(arguments: list[Any]) -> None:
    """join and leave take exactly one argument."""
    await connected("gina", "g1")
    out = await client_sent("join_room", "join", "gina", "g1", *arguments)
    [error] = errors(out)
    assert "one argument" in error["arguments"][0]["error"]


async def test_join_without_a_user_answers_one_error() -> None:
    """A connection without a user id cannot hold a membership."""
    out = await client_sent("join_room", "join", None, "anon-1", "lobby")
    [error] = errors(out)
    assert error["connectionId"] == "anon-1"


async def test_the_room_limit_answers_the_caller_and_writes_nothing(app_env: dict[str, str], azurite: Azurite) -> None:
    """The 101st room is refused with one error; the user keeps exactly 100 rooms."""
    await connected("hank", "h1")
    rooms = Rooms(runtime.store())
    for n in range(MAX_ROOMS_PER_USER):
        await rooms.join("hank", f"r{n:03d}")
    out = await join("hank", "h1", "one-too-many")
    [error] = errors(out)
    assert "100" in error["arguments"][0]["error"]
    assert len((await user_presence("hank"))["rooms"]) == MAX_ROOMS_PER_USER
    index = [
        r
        for r in await all_rows(azurite, app_env["MAPPING_TABLE"])
        if r["PartitionKey"] == f"{ROOM_PREFIX}one-too-many"
    ]
    assert index == []


async def test_concurrent_joins_keep_the_room_limit() -> None:
    """R2: joins racing for the last two places: exactly two win, the user ends with 100 rooms."""
    store = runtime.store()
    rooms = Rooms(store)
    for n in range(MAX_ROOMS_PER_USER - 2):
        await rooms.join("ivy", f"r{n:03d}")
    results = await asyncio.gather(*(rooms.join("ivy", f"late{n}") for n in range(6)), return_exceptions=True)
    assert sum(not isinstance(result, BaseException) for result in results) == 2
    assert all(isinstance(result, InvalidRequestError) for result in results if isinstance(result, BaseException))
    assert len((await store.presence_of("ivy")).rooms) == MAX_ROOMS_PER_USER


async def test_a_connect_racing_a_join_ends_in_the_group() -> None:
    """R2: a tab that opens while its user joins a room is added to the room's group by one of the two."""
    await connected("jack", "j0")
    for round_ in range(8):
        room, tab = f"race{round_}", f"j{round_ + 1}"
        joined, opened = await asyncio.gather(join("jack", "j0", room), connected("jack", tab))
        assert (room, tab) in groups(joined, "add") | groups(opened, "add")


# -- listing a room ----------------------------------------------------------------------------


async def test_room_members_page_with_next_and_offline_members_show_last_seen() -> None:
    """Members come a page at a time in key order; an offline member has online false and a last-seen time."""
    rooms = Rooms(runtime.store())
    for n in range(5):
        await connected(f"m{n}", f"m{n}-tab")
        await rooms.join(f"m{n}", "club")
    await disconnected("m3", "m3-tab")
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        status, body = await members("club", limit="2", **({"next": cursor} if cursor else {}))
        assert status == 200
        assert len(body["members"]) <= 2
        seen += body["members"]
        cursor = body["next"]
        if cursor is None:
            break
    assert [m["user"] for m in seen] == [f"m{n}" for n in range(5)]
    [offline] = [m for m in seen if not m["online"]]
    assert (offline["user"], offline["connections"]) == ("m3", 0)
    assert offline["lastSeen"] is not None


async def test_a_half_written_join_lists_nobody(azurite: Azurite) -> None:
    """R1: a join that wrote the member index and then failed lists nobody; its retry lists the member."""
    table = unique_table_name()
    async with fault_proxy(azurite.port) as proxy:
        through = azurite.connection_string.replace(f":{azurite.port}/", f":{proxy.port}/")
        direct = ConnectionStore(make_settings(azurite.connection_string, table))
        faulty = ConnectionStore(make_settings(through, table), retry_total=0)
        try:
            await direct.connect("kim", "k1")
            await direct.connect("lee", "l1")
            await Rooms(direct).join("lee", "club")
            # read the user, write the member index, then the transaction meets an outage
            proxy.rule = _fail_transactions
            with pytest.raises(StorageError):
                await Rooms(faulty).join("kim", "club")
            index = [
                r
                for r in await all_rows(azurite, table)
                if r["PartitionKey"] == f"{ROOM_PREFIX}club" and r["RowKey"] != TALLY_ROW
            ]
            assert sorted(str(r["RowKey"]) for r in index) == ["kim", "lee"]  # the half-written join left its index row
            page = await Rooms(direct).members("club")
            assert [m.user for m in page.members] == ["lee"]
            assert (await direct.presence_of("kim")).rooms == ()
            proxy.rule = None
            await Rooms(faulty).join("kim", "club")
            assert [m.user for m in (await Rooms(direct).members("club")).members] == ["kim", "lee"]
        finally:
            await direct.close()
            await faulty.close()
            await drop_table(azurite, table)


def _fail_transactions(request: web.Request, body: bytes) -> Fault | None:
    """Fail every table transaction (a `$batch` POST) of a user's partition with an outage; pass everything else (a
    room's index and its tally, written together, among it)."""
    batch = request.method == "POST" and "$batch" in request.path
    return Fault.answer(503) if batch and ROOM_PREFIX.encode() not in body.replace(b"%25", b"%") else None


async def test_a_page_is_filled_past_index_rows_without_a_membership(app_env: dict[str, str]) -> None:
    """Index rows whose membership is gone are skipped, and the page still holds `limit` members."""
    store = runtime.store()
    rooms = Rooms(store)
    for name in ("n0", "n1", "n2", "n3", "n4"):
        await rooms.join(name, "hall")
    for name in ("n1", "n2"):  # leave the index row behind, as a leave that stopped half way would
        view = await store.read_user(name)
        await store.table.write(delete(name, "%~rhall", etag=view.rooms["hall"].etag), action="test")
    page = await rooms.members("hall", limit=2)
    assert [m.user for m in page.members] == ["n0", "n3"]
    assert page.next is not None
    rest = await rooms.members("hall", limit=2, cursor=page.next)
    assert ([m.user for m in rest.members], rest.next) == (["n4"], None)


@pytest.mark.parametrize(
    ("room", "params"),
    [("bad room", {}), ("x" * 65, {}), ("lobby", {"limit": "0"}), ("lobby", {"limit": "x"}), ("lobby", {"next": "zz"})],
)
async def test_room_members_bad_input_is_400(room: str, params: dict[str, str]) -> None:
    """A bad room name, limit or cursor is a 400 with a JSON error."""
    status, body = await members(room, **params)
    assert status == 400
    assert isinstance(body["error"], str)


# -- sending to a room -------------------------------------------------------------------------


async def test_http_room_send_delivers_to_the_group() -> None:
    """POST /api/rooms/{room}/send sends one message to the room's group, from the signed-in caller."""
    out = Out()
    request = http_request(
        "POST",
        "rooms/lobby/send",
        body={"message": {"text": "hi"}, "target": "roomMessage"},
        headers={"x-ms-client-principal-name": "ops"},
        route_params={"room": "lobby"},
    )
    status, body, _ = await http("send_to_room", request, signalr=out)
    assert (status, body) == (200, {"room": "lobby"})
    assert out.messages == [
        {
            "target": "roomMessage",
            "groupName": "lobby",
            "arguments": [{"from": "ops", "room": "lobby", "message": {"text": "hi"}}],
        }
    ]


@pytest.mark.parametrize(
    ("room", "body", "expected"),
    [
        ("lobby", b"not json", 400),
        ("lobby", json.dumps({"text": "no message"}).encode(), 400),
        ("lobby", json.dumps({"message": 1, "target": ""}).encode(), 400),
        ("lobby", json.dumps({"message": 1, "target": "Presence"}).encode(), 400),  # no forged presence
        ("no room!", json.dumps({"message": 1}).encode(), 400),
        ("lobby", json.dumps({"message": "x" * (70 * 1024)}).encode(), 413),
    ],
)
async def test_http_room_send_bad_input_sends_nothing(room: str, body: bytes, expected: int) -> None:
    """Bad bodies and room names are answered with a JSON error, and nothing is sent."""
    out = Out()
    request = http_request("POST", f"rooms/{room}/send", body=body, route_params={"room": room})
    status, payload, _ = await http("send_to_room", request, signalr=out)
    assert status == expected
    assert isinstance(payload["error"], str)
    assert out.value is None


async def test_a_member_sends_to_the_room_and_a_stranger_is_refused() -> None:
    """sendToRoom reaches the room's group from a member; a non-member gets one error and nothing is sent."""
    await connected("olga", "o1")
    await connected("pete", "p1")
    await join("olga", "o1", "club")
    sent = await client_sent("send_to_room_message", "sendToRoom", "olga", "o1", "club", {"text": "hello"})
    assert [m for m in sent.messages if m.get("groupName") == "club"] == [
        {
            "target": "newMessage",
            "groupName": "club",
            "arguments": [{"from": "olga", "room": "club", "message": {"text": "hello"}}],
        }
    ]
    refused = await client_sent("send_to_room_message", "sendToRoom", "pete", "p1", "club", "let me in")
    [error] = errors(refused)
    assert error["arguments"][0] == {"error": "not a member of this room", "room": "club", "call": "sendToRoom"}
    assert not any(m.get("groupName") for m in refused.messages)


@pytest.mark.parametrize("arguments", [["club"], ["bad room", 1], [None, 1]])
async def test_send_to_room_with_bad_arguments_answers_one_error(arguments: list[Any]) -> None:
    """Wrong argument counts, bad room names and non-JSON messages each get one error."""
    await connected("quinn", "q1")
    await join("quinn", "q1", "club")
    out = await client_sent("send_to_room_message", "sendToRoom", "quinn", "q1", *arguments)
    [error] = errors(out)
    assert error["connectionId"] == "q1"
    assert not any(m.get("groupName") for m in out.messages)


# -- R1 under races, and stale index rows ------------------------------------------------------


async def test_a_leave_racing_a_join_keeps_the_member_listed(azurite: Azurite) -> None:
    """R1: a join that commits right after a racing leave's transaction stays listed (a leave deletes no index row)."""
    table = unique_table_name()
    first = ConnectionStore(make_settings(azurite.connection_string, table))
    second = ConnectionStore(make_settings(azurite.connection_string, table))
    try:
        await first.connect("amy", "t1")
        await Rooms(first).join("amy", "club")
        transact = first.writes.transact

        async def leave_then_a_racing_join(operations: Any, *, action: str, singly: bool = False) -> None:
            await transact(operations, action=action, singly=singly)
            await Rooms(second).join("amy", "club")  # another instance, between the leave's steps

        first.writes.transact = leave_then_a_racing_join  # type: ignore[method-assign]
        await Rooms(first).leave("amy", "club")
        assert (await first.presence_of("amy")).rooms == ("club",)
        assert [m.user for m in (await Rooms(second).members("club")).members] == ["amy"]
    finally:
        await first.close()
        await second.close()
        await drop_table(azurite, table)


async def test_a_reader_clears_stale_index_rows_but_never_a_fresh_one(
    app_env: dict[str, str], azurite: Azurite
) -> None:
    """A member-index row without its membership is deleted by a reader only once it is older than any join can
    run, and only if nobody rewrote it since the reader read it."""
    store = runtime.store()
    rooms = Rooms(store)
    t0 = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
    await rooms.join("gone", "club", now=t0)
    await rooms.leave("gone", "club", now=t0)

    async def index() -> list[str]:
        return [
            str(r["RowKey"])
            for r in await all_rows(azurite, app_env["MAPPING_TABLE"])
            if r["PartitionKey"] == f"{ROOM_PREFIX}club" and r["RowKey"] != TALLY_ROW
        ]

    assert (await rooms.members("club", now=t0 + STALE_INDEX_ROW / 2)).members == []
    assert await index() == ["gone"]  # fresh: a join may be writing it
    read_user = store.read_user

    async def a_join_rewrites_the_row_meanwhile(partition: str) -> Any:
        view = await read_user(partition)
        await store.table.write(upsert(index_row(Membership("club", t0), partition, "gone")), action="test")
        return view

    store.read_user = a_join_rewrites_the_row_meanwhile  # type: ignore[method-assign]
    assert (await rooms.members("club", now=t0 + STALE_INDEX_ROW * 2)).members == []
    assert await index() == ["gone"]  # rewritten after the reader read it: the conditional delete fails
    store.read_user = read_user  # type: ignore[method-assign]
    assert (await rooms.members("club", now=t0 + STALE_INDEX_ROW * 2)).members == []
    assert await index() == []


async def test_a_lapsed_tab_made_live_again_rejoins_its_rooms() -> None:
    """R3: a tab whose lease lapsed (it may have missed a join) is put back into its user's rooms by its next call."""
    store = runtime.store()
    await store.connect("liv", "quiet", now=datetime.now(UTC) - timedelta(hours=2))
    await Rooms(store).join("liv", "club")
    out = await client_sent("send_message", "send", "liv", "quiet", "liv", "ping")
    assert ("club", "quiet") in groups(out, "add")
    again = await client_sent("send_message", "send", "liv", "quiet", "liv", "ping")
    assert groups(again, "add") == set()  # live now: nothing to redo


async def test_leave_removes_lapsed_tabs_too() -> None:
    """R3: a leave takes every connection with a row out of the group, a lapsed (maybe quiet, still open) one too."""
    store = runtime.store()
    await store.connect("max", "quiet", now=datetime.now(UTC) - timedelta(hours=2))
    await connected("max", "busy")
    await Rooms(store).join("max", "club")
    out = await leave("max", "busy", "club")
    assert groups(out, "remove") == {("club", "quiet"), ("club", "busy")}


@pytest.mark.parametrize(
    ("function", "route", "body"),
    [
        ("send_to_room", "rooms/lobby/send", b'{"message": "\\ud800"}'),
        ("send_to_room", "rooms/lobby/send", b'{"message": {"k": ["\\udfff"]}}'),
        ("send_to_room", "rooms/lobby/send", b'{"message": 1, "target": "\\ud800"}'),
        ("send", "send", b'{"to": "bob", "message": "\\ud800"}'),
    ],
)
async def test_a_lone_surrogate_in_a_message_is_400_and_sends_nothing(function: str, route: str, body: bytes) -> None:
    """A JSON escape of a lone surrogate parses but cannot be sent as UTF-8: a 400 naming it, nothing sent."""
    out = Out()
    request = http_request("POST", route, body=body, route_params={"room": "lobby"})
    status, payload, _ = await http(function, request, signalr=out)
    assert (status, out.value) == (400, None)
    assert "surrogate" in payload["error"]


async def test_a_lone_surrogate_in_a_room_message_answers_one_error() -> None:
    """sendToRoom with a lone surrogate in the message gets one error that says so."""
    await connected("sue", "s1")
    await join("sue", "s1", "club")
    out = await client_sent("send_to_room_message", "sendToRoom", "sue", "s1", "club", "\ud800")
    [error] = errors(out)
    assert "surrogate" in error["arguments"][0]["error"]
