"""The Python presence follower (client/python/follow_presence.py) end to end: Azurite, the SignalR emulator, the
local host, real Node SignalR clients as the other users."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from client.python.follow_presence import (
    Backoff,
    NegotiateError,
    Presence,
    PresenceFollower,
    UserState,
    fold_user_name,
)
from mapping.keys import user_key
from testkit.azurite import ROOT, Azurite
from testkit.stack import SignalRClients, Stack, api, failing_storage_stack, running_stack, unique_user, wait_until
from testkit.tables import presence_rows

PRINCIPAL = "x-ms-client-principal-name"
FOLLOWER = ROOT / "client" / "python" / "follow_presence.py"
# Names whose case folding differs from lower-casing, each with another spelling the server takes for the same user.
TRICKY = [
    ("Straße", "STRASSE"),  # ß folds to ss
    ("λόγος", "ΛΌΓΟΣ"),  # a final sigma folds to the other sigma
    ("İnci", "i\u0307nci"),  # İ folds to i + combining dot above
    ("ﬁne", "FINE"),  # the ligature ﬁ folds to fi
    ("ᏣᎳᎩ", "ꮳꮃꭹ"),  # Cherokee folds to the capitals
    ("A\u030angström", "ÅNGSTRÖM"),  # decomposed Å, and NFC on both sides
]


@pytest.fixture(scope="module")
def stack(azurite: Azurite) -> Iterator[Stack]:
    """One emulator and local host for this module, scoped audiences, no grace: every disconnect is announced."""
    settings = {"PRESENCE_AUDIENCE": "scoped", "PRESENCE_GRACE_SECONDS": "0"}
    with running_stack(azurite, extra_settings=settings) as running:
        yield running


@pytest.fixture
async def clients(stack: Stack) -> AsyncIterator[SignalRClients]:
    """A Node process with real SignalR clients; every connection is stopped afterwards."""
    async with SignalRClients(stack) as driver:
        yield driver


@contextlib.asynccontextmanager
async def following(stack: Stack, user: str, **options: Any) -> AsyncIterator[PresenceFollower]:
    """A started follower negotiating as `user` with the local header; closed afterwards."""
    follower = PresenceFollower(stack.api, headers={PRINCIPAL: user}, **options)
    async with asyncio.timeout(30):
        await follower.start()
    try:
        yield follower
    finally:
        await follower.close()


def room_name() -> str:
    """Return a room name no other test uses."""
    return f"room-{uuid.uuid4().hex[:8]}"


async def server_state(azurite: Azurite, stack: Stack, user: str) -> dict[str, Any]:
    """Return the app's view of a user: the HTTP route's answer, with the version recorded in the presence row."""
    status, body = await api(stack, "GET", f"users/{quote(user, safe='')}")
    assert status == 200, body
    row = (await presence_rows(azurite, stack.table)).get(user_key(user), {})
    version: Any = row.get("Version", 0)
    return {**body, "recordedVersion": int(getattr(version, "value", version))}  # an Int64 comes as EntityProperty


async def agrees(azurite: Azurite, stack: Stack, state: UserState | None) -> bool:
    """Return whether a state the follower holds is the app's: online, status, last seen and version."""
    if state is None:
        return False
    server = await server_state(azurite, stack, state.user)
    version = server.get("version", server["recordedVersion"])  # the route's own, where it reports one
    return (server["online"], server["status"], server["lastSeen"], server["recordedVersion"], version) == (
        state.online,
        state.status,
        state.last_seen,
        state.version,
        state.version,
    )


def test_the_fold_is_the_servers() -> None:
    """fold_user_name folds every tricky name, and its other spelling, exactly as mapping.keys.user_key does."""
    for name, other in TRICKY:
        for spelling in (name, other, f"  {name}\t", name.upper(), name.lower()):
            assert fold_user_name(spelling) == user_key(spelling), spelling
        assert fold_user_name(name) == fold_user_name(other), (name, other)
    assert fold_user_name("\uab70") == unicodedata.normalize("NFC", "\uab70".casefold()) == "\u13a0"  # Cherokee A


def entry(user: str, version: int, *, online: bool = True, status: str | None = None) -> dict[str, Any]:
    """Return a presence entry as the app sends it."""
    return {"user": user, "online": online, "connections": int(online), "status": status, "lastSeen": None,
            "version": version}  # fmt: skip


def test_the_map_merges_by_version_only() -> None:
    """A higher version replaces the state, a repeat or an older one changes nothing, any spelling finds the user."""
    changes: list[tuple[UserState, UserState | None]] = []
    presence = Presence(on_change=lambda state, previous: changes.append((state, previous)))
    assert presence.merge(entry("Straße", 5, status="in")) is not None
    assert presence.merge(entry("Straße", 5, status="in")) is None  # a repeat
    assert presence.merge(entry("STRASSE", 3, online=False)) is None  # older, whatever it says
    assert presence.merge({"user": "Straße", "version": "7"}) is None  # not an entry
    newer = presence.merge(entry("strasse", 9, online=False))
    assert newer is not None
    assert presence.of("STRAẞE") == newer
    assert [(state.version, previous.version if previous else None) for state, previous in changes] == [
        (5, None),
        (9, 5),
    ]


def test_a_paged_snapshot_is_assembled_with_the_joins_heard_meanwhile() -> None:
    """Pages arriving out of order make one sync; a leave heard between them applies; a page seen twice restarts."""
    synced: list[str | None] = []
    presence = Presence(on_sync=synced.append)
    presence.follow("big")
    page = {"room": "big", "page": 2, "pages": 2, "users": [entry("cy", 4), entry("dee", 4)]}
    assert presence.merge_sync(page) is False
    presence.merge_room({"room": "big", "user": "DEE", "joined": False})
    presence.merge_room({"room": "other", "user": "eve", "joined": True})  # not followed: ignored
    assert presence.merge_sync({**page, "page": 1, "users": [entry("ada", 2), entry("bob", 3)]}) is True
    assert synced == ["big"]
    assert [state.user for state in presence.members("big")] == ["ada", "bob", "cy"]  # in page order
    assert presence.merge_sync({**page, "users": [entry("fay", 1)]}) is False  # page 2 again: a newer snapshot
    assert presence.merge_sync({**page, "page": 1, "users": []}) is True
    assert [state.user for state in presence.members("big")] == ["fay"]
    assert presence.of("dee") is not None  # states stay, whoever is a member


@pytest.mark.slow
async def test_follows_a_room_merged_by_version(azurite: Azurite, stack: Stack, clients: SignalRClients) -> None:
    """The follower's snapshot holds an offline member; it hears the member come online, change status, go offline,
    and others join and leave, each state with the app's version."""
    room, ada, cy, bot = room_name(), unique_user("Ada"), unique_user("Cy"), unique_user("bot")
    await clients.connect("a1", ada, targets=["room"])
    await clients.send("a1", "join", room)
    await clients.wait_message("a1", "room", lambda a: a == [{"room": room, "user": ada, "joined": True}])
    await clients.stop("a1")
    await wait_until(lambda: _offline(azurite, stack, ada), what="ada offline, still a member (it is the user's)")

    changes: list[tuple[UserState, UserState | None]] = []
    synced: list[str | None] = []
    joins: list[tuple[str, str, bool]] = []
    async with following(
        stack,
        bot,
        rooms=[room],
        on_change=lambda state, previous: changes.append((state, previous)),
        on_sync=synced.append,
        on_members=lambda r, user, joined: joins.append((r, user, joined)),
    ) as follower:
        await wait_until(lambda: follower.presence.synced(room), what="the room's snapshot")
        assert synced == [room]
        assert {state.user for state in follower.presence.members(room)} == {ada, bot}
        assert await agrees(azurite, stack, follower.presence.of(ada.upper())), "the snapshot is the app's state"
        assert now(follower, ada).online is False
        assert now(follower, ada).last_seen is not None

        await clients.connect("a2", ada)
        await wait_until(lambda: now(follower, ada).online, what="ada online")
        assert await agrees(azurite, stack, follower.presence.of(ada))
        await clients.send("a2", "setStatus", "busy")
        await wait_until(lambda: now(follower, ada).status == "busy", what="ada busy")
        assert await agrees(azurite, stack, follower.presence.of(ada))
        await clients.stop("a2")
        await wait_until(lambda: not now(follower, ada).online, what="ada offline")
        assert await agrees(azurite, stack, follower.presence.of(ada))

        await clients.connect("c1", cy)
        await clients.send("c1", "join", room)
        await wait_until(lambda: (room, cy, True) in joins, what="cy's join")
        assert {state.user for state in follower.presence.members(room)} == {ada, bot, cy}
        await wait_until(lambda: now(follower, cy).online, what="cy's presence in the room")
        await clients.send("c1", "leave", room)
        await wait_until(lambda: (room, cy, False) in joins, what="cy's leave")
        assert {state.user for state in follower.presence.members(room)} == {ada, bot}

    ada_changes = [(state, previous) for state, previous in changes if state.user == ada]
    assert [(s.online, s.status) for s, _ in ada_changes] == [
        (False, None),
        (True, None),
        (True, "busy"),
        (False, None),
    ]
    assert all(previous is None or state.version > previous.version for state, previous in ada_changes)


_never = UserState("", False, 0, None, None, 0)


def now(follower: PresenceFollower, user: str) -> UserState:
    """Return the follower's state of `user`, or a never-seen one."""
    return follower.presence.of(user) or _never


async def _offline(azurite: Azurite, stack: Stack, user: str) -> bool:
    state = await server_state(azurite, stack, user)
    return state["online"] is False and state["recordedVersion"] > 0


@pytest.mark.slow
async def test_a_dropped_connection_reconnects_with_fresh_snapshots(
    azurite: Azurite, stack: Stack, clients: SignalRClients
) -> None:
    """After the emulator cuts the follower's socket it negotiates again, re-sends its join and watch, and the new
    snapshots bring what changed while it was away."""
    room, eve, fay, bot = room_name(), unique_user("eve"), unique_user("fay"), unique_user("bot")
    await clients.connect("e1", eve, targets=["room"])
    await clients.send("e1", "join", room)
    await clients.wait_message("e1", "room", lambda a: a[0]["user"] == eve)
    synced: list[str | None] = []
    reconnect = Backoff(first=4.0, ceiling=4.0)  # 2-4 s away: long enough to miss a change
    async with following(stack, bot, rooms=[room], users=[fay], on_sync=synced.append, reconnect=reconnect) as follower:
        await wait_until(lambda: synced.count(room) == 1 and synced.count(None) == 1, what="both snapshots")
        first = follower.connection_id
        assert first is not None
        drop = f"{stack.emulator_url}/admin/connections/{first}/drop"
        async with aiohttp.ClientSession() as session, session.post(drop) as response:
            assert response.status == 200
        await wait_until(lambda: follower.connection_id is None, what="the follower to notice the drop")
        await clients.send("e1", "setStatus", "away")
        await wait_until(
            lambda: _status_is(azurite, stack, eve, "away"), what="eve's status recorded"
        )  # while the follower is away
        assert follower.connection_id is None, "the change happened while the follower was disconnected"
        assert now(follower, eve).status is None

        await wait_until(lambda: synced.count(room) == 2 and synced.count(None) == 2, what="fresh snapshots")
        assert follower.connection_id not in (None, first)
        assert now(follower, eve).status == "away", "the new snapshot brought the missed change"
        assert await agrees(azurite, stack, follower.presence.of(eve))
        await clients.connect("f1", fay)
        await wait_until(lambda: now(follower, fay).online, what="fay, watched again, online")
        assert await agrees(azurite, stack, follower.presence.of(fay))


async def _status_is(azurite: Azurite, stack: Stack, user: str, status: str) -> bool:
    return bool((await server_state(azurite, stack, user))["status"] == status)


@pytest.mark.slow
async def test_names_fold_as_the_server_folds_them(azurite: Azurite, stack: Stack) -> None:
    """Members with tricky names (ß, ς, İ, ﬁ, Cherokee, a decomposed Å) are found under their other spellings, which
    the app takes for the same users."""
    room, suffix = room_name(), uuid.uuid4().hex[:6]
    pairs = [(f"{name}-{suffix}", f"{other}-{suffix}") for name, other in TRICKY]
    async with contextlib.AsyncExitStack() as members:
        for name, _other in pairs:
            await members.enter_async_context(following(stack, name, rooms=[room]))
        async with following(stack, unique_user("bot"), rooms=[room]) as follower:
            await wait_until(
                lambda: follower.presence.synced(room) and len(follower.presence.members(room)) == len(pairs) + 1,
                what="every member in the snapshot",
            )
            for name, other in pairs:
                state = follower.presence.of(other)
                assert state is not None, (name, other)
                assert state.online, (name, other)
                assert fold_user_name(state.user) == user_key(name) == user_key(other)
                status, body = await api(stack, "GET", f"users/{quote(other, safe='')}")
                assert (status, body["online"], body["rooms"]) == (200, True, [room]), (name, other)


@pytest.fixture
async def failing_storage(azurite: Azurite) -> AsyncIterator[tuple[Stack, asyncio.Event]]:
    """A stack whose table requests answer 503 while the event is set (scoped audience, no grace)."""
    settings = {"PRESENCE_AUDIENCE": "scoped", "PRESENCE_GRACE_SECONDS": "0"}
    async with failing_storage_stack(azurite, extra_settings=settings) as failing:
        yield failing


@pytest.mark.slow
async def test_a_call_answered_retry_is_sent_again_with_backoff(
    failing_storage: tuple[Stack, asyncio.Event], caplog: pytest.LogCaptureFixture
) -> None:
    """A join the app answers `error` with `retry: true` (storage down) is sent again with back-off until it
    succeeds, and no error reaches the handler."""
    stack, failing = failing_storage
    room, bot = room_name(), unique_user("bot")
    errors: list[Any] = []
    caplog.set_level(logging.INFO, logger="follow_presence")
    retry = Backoff(first=1.0, ceiling=2.0)
    async with following(stack, bot, on_error=errors.append, retry=retry, retries=20) as follower:

        async def mapped() -> bool:  # connected runs after the handshake: storage fails only once it has
            _status, body = await api(stack, "GET", f"users/{quote(bot, safe='')}")
            return bool(body.get("online"))

        await wait_until(mapped, what="the follower's connection mapped")
        failing.set()
        await follower.join(room)

        def retried() -> list[logging.LogRecord]:
            return [record for record in caplog.records if "join: storage failed" in record.getMessage()]

        await wait_until(lambda: len(retried()) >= 2, within=60, what="two retries of the join")
        failing.clear()
        await wait_until(lambda: follower.presence.synced(room), within=60, what="the join, retried, answered")
        assert [state.user for state in follower.presence.members(room)] == [bot]
        assert errors == []
        assert "(retry 2 of 20)" in retried()[1].getMessage()


async def refusal(api_url: str, headers: dict[str, str]) -> NegotiateError:
    """Return the NegotiateError a follower's start() raises with these headers."""
    follower = PresenceFollower(api_url, headers=headers, rooms=["lobby"])
    with pytest.raises(NegotiateError) as refused:
        async with asyncio.timeout(30):
            await follower.start()
    return refused.value


@pytest.mark.slow
async def test_negotiate_refused_without_a_principal(stack: Stack) -> None:
    """Without the principal header negotiate's binding fails before the function runs (the host's 500 with no body,
    as in Azure): start() raises it as not signed in, and the command line exits 2, as for a 401. A blank header
    reaches the function, whose 401 is not signed in too."""
    absent = await refusal(stack.api, {})
    assert (absent.status, absent.no_principal, absent.not_signed_in) == (500, True, True)
    assert "no principal" in str(absent)
    blank = await refusal(stack.api, {PRINCIPAL: " "})
    assert (blank.status, blank.no_principal, blank.not_signed_in) == (401, False, True)
    command = [sys.executable, str(FOLLOWER), "--api", stack.api, "--room", "lobby"]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd="/"
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 2, stderr
    assert b"negotiate answered 500: no principal" in stderr


async def test_only_a_bodiless_500_to_a_call_without_the_header_means_no_principal() -> None:
    """The follower tells the binding's 500 from another only where it can: no body, and no principal header sent.
    With the header sent, or with a body, a 500 is some other failure (not signed in: no; the CLI's exit status 1)."""

    async def negotiate(request: web.Request) -> web.Response:
        return web.Response(status=500, body=b'{"error": "boom"}' if "x-body" in request.headers else b"")

    app = web.Application()
    app.router.add_post("/api/negotiate", negotiate)
    async with TestServer(app) as server:
        base = str(server.make_url("/api"))
        bearer = await refusal(base, {"Authorization": "Bearer t"})  # deployed: the platform named no principal
        assert (bearer.status, bearer.no_principal, bearer.not_signed_in) == (500, True, True)
        sent = await refusal(base, {"X-MS-Client-Principal-Name": "bot"})
        assert (sent.status, sent.no_principal, sent.not_signed_in) == (500, False, False)
        bodied = await refusal(base, {"x-body": "1"})
        assert (bodied.status, bodied.no_principal, bodied.not_signed_in) == (500, False, False)
        assert "boom" in str(bodied)


@pytest.mark.slow
async def test_the_command_line_prints_json_lines(stack: Stack, clients: SignalRClients) -> None:
    """`follow_presence.py --api --user --room` prints the snapshot and the changes as JSON lines, until stopped."""
    room, bot, gus = room_name(), unique_user("bot"), unique_user("gus")
    command = [sys.executable, str(FOLLOWER), "--api", stack.api, "--user", bot, "--room", room]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, cwd="/")
    assert process.stdout is not None
    try:

        async def line(event: str, match: Any = lambda _e: True) -> dict[str, Any]:
            assert process.stdout is not None
            async with asyncio.timeout(30):
                while True:
                    parsed = json.loads(await process.stdout.readline() or "null")
                    assert parsed is not None, "the follower exited"
                    if parsed["event"] == event and match(parsed):
                        return dict(parsed)

        await line("connected")
        synced = await line("sync", lambda e: e["room"] == room)
        assert [member["user"] for member in synced["members"]] == [bot]
        await clients.connect("g1", gus)
        await clients.send("g1", "join", room)
        joined = await line("members", lambda e: e["user"] == gus)
        assert joined == {"event": "members", "room": room, "user": gus, "joined": True}
        changed = await line("change", lambda e: e["user"] == gus)
        assert changed["state"]["online"] is True
        assert changed["state"]["version"] > 0
    finally:
        process.send_signal(2)  # SIGINT, as Ctrl-C
        async with asyncio.timeout(15):
            assert await process.wait() in (0, 130)
