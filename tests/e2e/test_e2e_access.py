"""Who may go where, end to end with real `@microsoft/signalr` Node clients through the emulator and the local host:
a private room refuses a stranger and tells them nothing, a server's grant (PUT /api/rooms/{room}/members/{user})
makes them a member at once, its revoke (DELETE) takes them out at once, and the access policy an app passes to
`register()` decides on the claims of the client token.

The stacks run the app's defaults (PRESENCE_AUDIENCE=scoped, PRESENCE_WATCH=room-members,
DIRECT_MESSAGES=shared-room) with only `lobby` open. A refused direct message answered as an offline recipient,
the operator's disconnect and block: tests/e2e/test_e2e_signalr.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from mapping.signalr.tokens import access_key_token
from testkit.azurite import Azurite
from testkit.stack import ACCESS_KEY, HUB, SignalRClients, Stack, api, running_stack, unique_user
from testkit.tables import drop_table

pytestmark = pytest.mark.slow

TARGETS = ["newMessage", "presence", "presenceSync", "room", "error", "note"]
REMOVE_FROM_GROUP = "DELETE /api/hubs/{hub}/groups/{group}/connections/{connection}"


def access_stack(azurite: Azurite, *, rooms_open: str, app: str | None = None) -> AbstractContextManager[Stack]:
    """Start a stack with the app's access defaults (PRESENCE_AUDIENCE=scoped, PRESENCE_WATCH=room-members,
    DIRECT_MESSAGES=shared-room) and `rooms_open` (ROOMS_OPEN), for the app or `app`."""
    return running_stack(
        azurite, app=app, rooms_open=rooms_open, audience="scoped", watch="room-members", direct_messages="shared-room"
    )


@pytest.fixture(scope="module")
async def stack(azurite: Azurite) -> AsyncIterator[Stack]:
    """One emulator and local host with the app's access defaults and only `lobby` open, on a table dropped after."""
    with access_stack(azurite, rooms_open="lobby") as running:
        yield running
    await drop_table(azurite, running.table)


@pytest.fixture
async def clients(stack: Stack) -> AsyncIterator[SignalRClients]:
    """A Node process with real SignalR clients; every connection is stopped afterwards."""
    async with SignalRClients(stack) as driver:
        yield driver


def private_room() -> str:
    """Return the name of a room no other test uses, open to nobody (`staff-...`)."""
    return unique_user("staff")


async def membership(stack: Stack, method: str, room: str, user: str) -> tuple[int, Any]:
    """PUT (grant) or DELETE (revoke) /api/rooms/{room}/members/{user}; return status and body."""
    return await api(stack, method, f"rooms/{room}/members/{user}")


async def emulator(stack: Stack, method: str, path: str) -> Any:
    """Call the emulator's loopback admin API; return the JSON answer."""
    async with aiohttp.ClientSession() as session, session.request(method, f"{stack.emulator_url}{path}") as answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def billed_for_room(stack: Stack, connection_id: str, room: str) -> int:
    """Return the messages the emulator billed to one connection for the room's group."""
    counts = await emulator(stack, "GET", f"/admin/messages?connection={quote(connection_id, safe='')}")
    return int(counts["byGroup"].get(room, 0))


async def removals_from_groups(stack: Stack) -> int:
    """Return how many REST removals of a connection from a group the emulator answered."""
    return int((await emulator(stack, "GET", "/admin/rest-calls"))["byRoute"].get(REMOVE_FROM_GROUP, 0))


async def group_members(stack: Stack, group: str) -> set[str]:
    """Return the connection ids in a group, as the service lists them (REST, 2024-12-01)."""
    url = f"{stack.emulator_url}/api/hubs/{HUB}/groups/{quote(group, safe='')}/connections"
    headers = {"Authorization": f"Bearer {access_key_token(ACCESS_KEY, audience=url)}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params={"api-version": "2024-12-01"}, headers=headers) as answer,
    ):
        assert answer.status == 200, await answer.text()
        return {member["connectionId"] for member in (await answer.json())["value"]}


async def mark(stack: Stack, clients: SignalRClients, user: str, *tabs: str) -> None:
    """Send the user a `note` through the app and wait until each of their tabs has it: whatever was delivered to
    them before has arrived by then."""
    token = unique_user("marker")
    status, body = await api(stack, "POST", "send", json={"to": user, "message": token, "target": "note"})
    assert (status, body["delivered"]) == (200, len(tabs))
    for tab in tabs:
        await clients.wait_message(tab, "note", says(token))


def says(text: str) -> Callable[[list[Any]], bool]:
    """Match a message whose `message` is `text`."""
    return lambda args: args[0]["message"] == text


def heard(clients: SignalRClients, tab: str, *, but: str) -> list[tuple[str, Any]]:
    """Return every message a tab received (target, argument) but markers and presence about its own user `but`."""
    return [
        (event["target"], event["args"][0] if event["args"] else None)
        for event in clients.events
        if event.get("id") == tab and event.get("event") == "message" and event["target"] != "note"
        if not (event["target"] == "presence" and event["args"][0]["user"] == but)
    ]


async def test_a_stranger_cannot_join_hear_list_or_post_to_a_private_room(
    stack: Stack, clients: SignalRClients
) -> None:
    """A user the room was never granted to is answered one refusal per call (join, sync, sendToRoom, a watch of its
    members) and nothing else: no snapshot, no member's presence or status, no room message; no row, no group."""
    alice, bob, mallory = unique_user("alice"), unique_user("bob"), unique_user("mallory")
    room = private_room()
    await clients.connect("a1", alice, targets=TARGETS)
    await clients.connect("b1", bob, targets=TARGETS)
    m1 = await clients.connect("m1", mallory, targets=TARGETS)
    for user in (alice, bob):
        assert await membership(stack, "PUT", room, user) == (200, {"room": room, "user": user, "member": True})
    await clients.wait_message("a1", "room", lambda args: args[0] == {"room": room, "user": bob, "joined": True})

    await clients.send("m1", "join", room)
    await clients.send("m1", "sync", room)
    await clients.send("m1", "sendToRoom", room, "let me in")
    await clients.send("m1", "watch", [alice, bob])
    await clients.wait_for(lambda _event: len(clients.received("m1", "error")) >= 4, what="mallory's four refusals")
    await clients.send("a1", "setStatus", "reviewing acquisition")
    await clients.send("a1", "sendToRoom", room, "Q3 numbers attached")
    await clients.wait_message("b1", "newMessage", says("Q3 numbers attached"))
    await clients.wait_message("b1", "presence", lambda args: args[0].get("status") == "reviewing acquisition")
    await mark(stack, clients, mallory, "m1")

    assert heard(clients, "m1", but=mallory) == [
        ("error", {"error": "this room is closed to you", "room": room, "refused": True, "call": "join"}),
        ("error", {"error": "not a member of this room", "room": room, "call": "sync"}),
        ("error", {"error": "not a member of this room", "room": room, "call": "sendToRoom"}),
        (
            "error",
            {"error": "may watch only users who share a room with you", "refused": [alice, bob], "call": "watch"},
        ),
    ]
    status, body = await api(stack, "GET", f"rooms/{room}")
    assert (status, sorted(m["user"] for m in body["members"])) == (200, sorted([alice, bob]))
    status, body = await api(stack, "GET", f"users/{mallory}")
    assert (status, body["rooms"], body["grants"]) == (200, [], [])
    assert m1 not in await group_members(stack, room)
    assert await billed_for_room(stack, m1, room) == 0


async def test_a_grant_makes_the_user_a_member_at_once(stack: Stack, clients: SignalRClients) -> None:
    """PUT /api/rooms/{room}/members/{user} makes both open tabs of a refused user members with no call of theirs:
    each hears the join and gets the room's snapshot, the room hears them join with their presence, and they hear
    and post to the room."""
    alice, carol = unique_user("alice"), unique_user("carol")
    room = private_room()
    a1 = await clients.connect("a1", alice, targets=TARGETS)
    assert (await membership(stack, "PUT", room, alice))[0] == 200
    c1 = await clients.connect("c1", carol, targets=TARGETS)
    c2 = await clients.connect("c2", carol, targets=TARGETS)
    await clients.send("c1", "join", room)
    [refused] = await clients.wait_message("c1", "error")
    assert refused["refused"] is True

    assert await membership(stack, "PUT", room, carol) == (200, {"room": room, "user": carol, "member": True})
    for tab in ("c1", "c2"):
        await clients.wait_message(tab, "room", lambda args: args[0] == {"room": room, "user": carol, "joined": True})
        [snapshot] = await clients.wait_message(tab, "presenceSync", lambda args: args[0]["room"] == room)
        assert {entry["user"] for entry in snapshot["users"]} == {alice, carol}
    await clients.wait_message("a1", "room", lambda args: args[0] == {"room": room, "user": carol, "joined": True})
    [presence] = await clients.wait_message("a1", "presence", lambda args: args[0]["user"] == carol)
    assert (presence["room"], presence["online"], presence["connections"]) == (room, True, 2)
    assert await group_members(stack, room) == {a1, c1, c2}

    await clients.send("a1", "sendToRoom", room, "welcome")
    for tab in ("c1", "c2"):
        await clients.wait_message(
            tab, "newMessage", lambda args: args[0] == {"from": alice, "room": room, "message": "welcome"}
        )
    await clients.send("c2", "sendToRoom", room, "thanks")
    await clients.wait_message(
        "a1", "newMessage", lambda args: args[0] == {"from": carol, "room": room, "message": "thanks"}
    )
    status, body = await api(stack, "GET", f"users/{carol}")
    assert (status, body["rooms"], body["grants"]) == (200, [room], [room])


async def test_a_revoke_takes_the_member_out_at_once(stack: Stack, clients: SignalRClients) -> None:
    """DELETE /api/rooms/{room}/members/{user} removes both tabs of the user from the room's group through the REST
    API before it answers: a room message sent right after the answer reaches the others and not them, the emulator
    bills their connections nothing more for the room, the room and they hear them leave, and a later join of theirs
    is refused."""
    alice, dave = unique_user("alice"), unique_user("dave")
    room = private_room()
    a1 = await clients.connect("a1", alice, targets=TARGETS)
    tabs = {
        "d1": await clients.connect("d1", dave, targets=TARGETS),
        "d2": await clients.connect("d2", dave, targets=TARGETS),
    }
    for user in (alice, dave):
        assert (await membership(stack, "PUT", room, user))[0] == 200
    await clients.send("a1", "sendToRoom", room, "before")
    for tab in tabs:
        await clients.wait_message(tab, "newMessage", says("before"))
    billed_before = {tab: await billed_for_room(stack, connection, room) for tab, connection in tabs.items()}
    assert all(billed_before.values())  # billed for the room while members: the count works
    removals = await removals_from_groups(stack)

    assert await membership(stack, "DELETE", room, dave) == (200, {"room": room, "user": dave, "member": False})
    assert await group_members(stack, room) == {a1}  # out before the answer
    assert await removals_from_groups(stack) >= removals + 2  # one REST removal a tab
    status, _ = await api(stack, "POST", f"rooms/{room}/send", json={"message": "after the revoke"})
    assert status == 200
    await clients.send("a1", "sendToRoom", room, "after the revoke, from alice")
    for text in ("after the revoke", "after the revoke, from alice"):
        await clients.wait_message("a1", "newMessage", says(text))
    await clients.wait_message("a1", "room", lambda args: args[0] == {"room": room, "user": dave, "joined": False})
    for tab in tabs:
        await clients.wait_message(tab, "room", lambda args: args[0] == {"room": room, "user": dave, "joined": False})
    await mark(stack, clients, dave, *tabs)

    for tab, connection in tabs.items():
        assert [args[0]["message"] for args in clients.received(tab, "newMessage")] == ["before"]
        assert await billed_for_room(stack, connection, room) == billed_before[tab]
    await clients.send("d1", "join", room)
    await clients.send("d2", "sendToRoom", room, "still here?")
    [refused] = await clients.wait_message("d1", "error")
    assert refused == {"error": "this room is closed to you", "room": room, "refused": True, "call": "join"}
    [not_member] = await clients.wait_message("d2", "error")
    assert not_member == {"error": "not a member of this room", "room": room, "call": "sendToRoom"}
    status, body = await api(stack, "GET", f"users/{dave}")
    assert (status, body["rooms"], body["grants"]) == (200, [], [])


async def test_the_access_policy_passed_to_register_sees_the_token_claims(azurite: Azurite) -> None:
    """An app's policy (testkit/policy_app.py) is given the claims of the client token as the service forwards them
    (X-ASRS-User-Claims, the first value of a type): a token claiming `role: staff` joins a closed staff room, a
    token from the app's negotiate (its user only) is refused, and a direct message is asked with the same claims."""
    with access_stack(azurite, rooms_open="", app="testkit.policy_app:app") as stack:
        try:
            async with SignalRClients(stack) as clients:
                staffer, guest = unique_user("staffer"), unique_user("guest")
                room = private_room()
                url = f"{stack.emulator_url}/client/?hub={HUB}"  # a token the app's server signed, with claims
                claims = {"nameid": staffer, "role": "staff", "team": ["blue", "red"]}
                token = access_key_token(ACCESS_KEY, audience=url, claims=claims)
                await clients.command("connect", id="s1", url=url, user=None, accessToken=token, targets=TARGETS)
                await clients.connect("g1", guest, targets=TARGETS)

                await clients.send("s1", "join", room)
                await clients.wait_message(
                    "s1", "room", lambda args: args[0] == {"room": room, "user": staffer, "joined": True}
                )
                await clients.send("g1", "join", room)
                [refused] = await clients.wait_message("g1", "error")
                assert refused == {"error": "this room is closed to you", "room": room, "refused": True, "call": "join"}
                await clients.send("s1", "send", guest, "hello")
                [offline] = await clients.wait_message("s1", "error")  # the policy left it to shared-room
                assert offline == {"error": "recipient is offline", "to": guest, "call": "send"}

                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{stack.api}/policy/questions") as answer,
                ):
                    questions = {(q["call"], q["user"], q["target"]): q["claims"] for q in await answer.json()}
        finally:
            await drop_table(azurite, stack.table)
    forwarded = questions[("join", staffer, room)]
    assert forwarded.items() >= {"nameid": staffer, "role": "staff", "team": "blue"}.items()
    assert not forwarded.keys() & {"aud", "exp"}  # the token's own claims are not the user's
    assert questions[("message", staffer, guest)] == forwarded
    negotiated = questions[("join", guest, room)]
    assert negotiated.get("nameid") == guest
    assert "role" not in negotiated
