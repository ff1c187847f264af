"""The emulator's count of outbound messages as Azure SignalR Service bills them (`/admin/messages`): one per
recipient connection per started 2 KB; against a real emulator and local host on 127.0.0.1, with WebSocket clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from testkit.azurite import Azurite
from testkit.emulator_billing import billed_messages
from testkit.stack import HUB, Stack, running_stack, unique_user, wait_until
from tests.e2e.test_emulator_groups import (
    RECORD_SEPARATOR,
    Client,
    bearer,
    connect,
    join,
    leave,
    next_invocation,
    output,
)

pytestmark = pytest.mark.slow

SEND_VERSION = "2022-06-01"
UNIT = 2048


def nothing_billed() -> dict[str, Any]:
    """Return the counts right after a reset."""
    kinds = {"connection": 0, "user": 0, "group": 0, "broadcast": 0}
    empty = {"byKind": kinds, "byTarget": {}, "byTargetAndKind": {}, "byGroup": {}}
    return {"total": 0, "upstream": 0, "billed": 0, **empty}


def billed(kind: str, target: str, n: int, *, group: str | None = None) -> dict[str, Any]:
    """Return the counts after sends of one kind and target that billed `n` messages in all."""
    expected = nothing_billed()
    expected.update(total=n, billed=n, byTarget={target: n}, byTargetAndKind={target: {kind: n}})
    expected["byKind"][kind] = n
    if group is not None:
        expected["byGroup"] = {group: n}
    return expected


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """An emulator pinging every second and a local host running testkit/group_app.py (no storage needed)."""
    with running_stack(Azurite(port=1), app="testkit.group_app:app", client_timeout=600, keepalive=1.0) as running:
        yield running


@pytest.fixture(scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client for the module; unlimited, as every open WebSocket holds one of its connections."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


@asynccontextmanager
async def clients(session: aiohttp.ClientSession, stack: Stack, users: list[str]) -> AsyncIterator[list[Client]]:
    """Open one connection per user (a user may repeat), and close them all when the block ends."""
    opened = [await connect(session, stack, user) for user in users]
    try:
        yield opened
    finally:
        await asyncio.gather(*(c.socket.close() for c in opened))


async def rest_send(
    session: aiohttp.ClientSession, stack: Stack, path: str, target: str, arguments: list[Any], **params: str
) -> None:
    """POST `{target, arguments}` to a REST send route (`path` is after `/api/hubs/{hub}`), asserting 202."""
    url = f"{stack.emulator_url}/api/hubs/{HUB}{path}"
    body = {"target": target, "arguments": arguments}
    query = {"api-version": SEND_VERSION, **params}
    async with session.post(url, params=query, json=body, headers=bearer(url)) as response:
        assert response.status == 202, await response.text()


async def next_frame(client: Client) -> str:
    """Return the next WebSocket text frame a client receives that is not a ping."""
    while True:
        text = await client.socket.receive_str(timeout=10)
        if json.loads(text.rstrip(RECORD_SEPARATOR)).get("type") != 6:
            return text


async def frames_until_closed(client: Client) -> list[str]:
    """Return the text frames a client receives until its WebSocket closes."""
    frames: list[str] = []
    while True:
        message = await client.socket.receive(timeout=10)
        if message.type != aiohttp.WSMsgType.TEXT:
            return frames
        frames.append(message.data)


def record_types(frames: list[str]) -> set[int]:
    """Return the hub-protocol message types the frames carry."""
    return {json.loads(r)["type"] for frame in frames for r in filter(None, frame.split(RECORD_SEPARATOR))}


async def live_connections(session: aiohttp.ClientSession, stack: Stack) -> set[str]:
    """Return the ids of the emulator's live connections."""
    async with session.get(f"{stack.emulator_url}/admin/connections") as response:
        assert response.status == 200, await response.text()
        return {c["connectionId"] for c in (await response.json())["connections"]}


async def test_a_send_to_a_user_with_three_connections_counts_three(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """The output binding's send to a user reaches their three connections and bills three `user` messages."""
    user, bystander = unique_user("three-tabs"), unique_user("bystander")
    async with clients(session, stack, [user, user, user, bystander]) as opened:
        await billed_messages(stack.emulator_url, reset=True)
        await output(session, stack, [{"target": "note", "arguments": ["hello"], "userId": user}])
        for client in opened[:3]:
            assert await next_invocation(client, "note") == ["hello"]
        assert await billed_messages(stack.emulator_url) == billed("user", "note", 3)


async def test_a_group_send_to_two_members_counts_two(stack: Stack, session: aiohttp.ClientSession) -> None:
    """A REST send to a group of two bills two `group` messages, counted under the group's name."""
    group = unique_user("pair")
    async with clients(session, stack, [unique_user("member"), unique_user("member"), unique_user("out")]) as opened:
        for client in opened[:2]:
            await join(session, stack, group, client.connection_id)
        await billed_messages(stack.emulator_url, reset=True)
        await rest_send(session, stack, f"/groups/{quote(group, safe='')}/:send", "presence", [{"online": True}])
        for client in opened[:2]:
            assert await next_invocation(client, "presence") == [{"online": True}]
        assert await billed_messages(stack.emulator_url) == billed("group", "presence", 2, group=group)


async def test_simulated_members_of_a_group_are_billed_and_sent_nothing(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """A group of one real member and 9,999 simulated ones bills 10,000 messages a send of under 2 KB, and 20,000 one
    of over 2 KB; the real member receives it; removing the simulated ones bills the real member alone."""
    group = unique_user("big")
    url = f"{stack.emulator_url}/admin/hubs/{HUB}/groups/{quote(group, safe='')}/simulated"
    async with clients(session, stack, [unique_user("member")]) as (member,):
        await join(session, stack, group, member.connection_id)
        async with session.put(url, params={"count": "9999"}) as response:
            assert response.status == 200, await response.text()
        await billed_messages(stack.emulator_url, reset=True)
        await rest_send(session, stack, f"/groups/{quote(group, safe='')}/:send", "presence", [{"online": True}])
        assert await next_invocation(member, "presence") == [{"online": True}]
        assert (await billed_messages(stack.emulator_url))["byGroup"] == {group: 10_000}
        await rest_send(session, stack, f"/groups/{quote(group, safe='')}/:send", "big", ["x" * 2100])
        assert await next_invocation(member, "big") == ["x" * 2100]
        assert (await billed_messages(stack.emulator_url))["byGroup"] == {group: 30_000}
        assert (await billed_messages(stack.emulator_url, connection=member.connection_id))["total"] == 3
        async with session.put(url, params={"count": "0"}) as response:
            assert response.status == 200
        await billed_messages(stack.emulator_url, reset=True)
        await rest_send(session, stack, f"/groups/{quote(group, safe='')}/:send", "presence", [{"online": False}])
        assert await next_invocation(member, "presence") == [{"online": False}]
        assert await billed_messages(stack.emulator_url) == billed("group", "presence", 1, group=group)
    async with session.put(url, params={"count": "-1"}) as response:
        assert response.status == 400


async def test_a_broadcast_counts_every_connection(stack: Stack, session: aiohttp.ClientSession) -> None:
    """A broadcast bills one `broadcast` message per live connection of the hub, and none for an excluded one."""
    async with clients(session, stack, [unique_user("everyone") for _ in range(4)]) as opened:
        mine = {c.connection_id for c in opened}

        async def only_mine() -> bool:
            return await live_connections(session, stack) == mine

        await wait_until(only_mine, what="connections of earlier tests to close")
        await billed_messages(stack.emulator_url, reset=True)
        await output(session, stack, [{"target": "news", "arguments": [1]}])
        for client in opened:
            assert await next_invocation(client, "news") == [1]
        assert await billed_messages(stack.emulator_url, reset=True) == billed("broadcast", "news", 4)
        await rest_send(session, stack, "/:send", "news", [2], excluded=opened[0].connection_id)
        for client in opened[1:]:
            assert await next_invocation(client, "news") == [2]
        assert await billed_messages(stack.emulator_url) == billed("broadcast", "news", 3)


async def test_a_5_kb_message_to_one_connection_counts_3(stack: Stack, session: aiohttp.ClientSession) -> None:
    """A message of 5 KB to one connection bills three `connection` messages, one per started 2 KB."""
    async with clients(session, stack, [unique_user("reader")]) as [client]:
        await billed_messages(stack.emulator_url, reset=True)
        await rest_send(session, stack, f"/connections/{client.connection_id}/:send", "big", ["x" * 5 * 1024])
        assert await next_invocation(client, "big") == ["x" * 5 * 1024]
        assert await billed_messages(stack.emulator_url) == billed("connection", "big", 3)


async def test_size_is_counted_in_utf8_bytes_of_the_frame_at_2_kb_boundaries(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """A frame of exactly 2048 bytes bills one message, 2049 bytes two, and 1100 two-byte characters two."""
    async with clients(session, stack, [unique_user("sizer")]) as [client]:
        path = f"/connections/{client.connection_id}/:send"
        await rest_send(session, stack, path, "size", [""])
        overhead = len((await next_frame(client)).encode())
        for argument, units in (("x" * (UNIT - overhead), 1), ("x" * (UNIT + 1 - overhead), 2), ("é" * 1100, 2)):
            await billed_messages(stack.emulator_url, reset=True)
            await rest_send(session, stack, path, "size", [argument])
            frame = (await next_frame(client)).encode()
            assert -(-len(frame) // UNIT) == units  # the frame on the wire has the size the case is about
            assert await billed_messages(stack.emulator_url) == billed("connection", "size", units)


async def test_group_management_handshakes_pings_and_closes_count_nothing(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """Handshakes, group adds and removes (REST and output binding), pings and a service-side close bill nothing."""
    await billed_messages(stack.emulator_url, reset=True)
    user, group = unique_user("joiner"), unique_user("room")
    async with clients(session, stack, [user]) as [client]:
        cid = client.connection_id
        await join(session, stack, group, cid)
        await leave(session, stack, group, cid)
        await output(session, stack, [{"action": "add", "groupName": group, "userId": user}])
        await output(session, stack, [{"action": "remove", "groupName": group, "userId": user}])
        await output(session, stack, [{"action": "add", "groupName": group, "connectionId": cid}])
        await output(session, stack, [{"action": "removeAll", "connectionId": cid}])
        ping = json.loads((await client.socket.receive_str(timeout=10)).rstrip(RECORD_SEPARATOR))
        assert ping == {"type": 6}  # the emulator pinged the client (every second here)
        url = f"{stack.emulator_url}/api/hubs/{HUB}/connections/{cid}"
        async with session.delete(url, params={"api-version": SEND_VERSION}, headers=bearer(url)) as response:
            assert response.status == 200
        assert record_types(await frames_until_closed(client)) >= {7}  # the close record came
    assert await billed_messages(stack.emulator_url) == nothing_billed()


async def test_delete_answers_the_counts_and_resets_them(stack: Stack, session: aiohttp.ClientSession) -> None:
    """DELETE /admin/messages answers what GET answers, and the next GET counts from zero again."""
    async with clients(session, stack, [unique_user("resetter")]) as [client]:
        await billed_messages(stack.emulator_url, reset=True)
        await rest_send(session, stack, f"/connections/{client.connection_id}/:send", "tick", [1])
        await rest_send(session, stack, f"/users/{client.user}/:send", "tick", [2])
        assert await next_invocation(client, "tick") == [1]
        assert await next_invocation(client, "tick") == [2]
        expected = nothing_billed()
        expected.update(total=2, billed=2, byTarget={"tick": 2}, byTargetAndKind={"tick": {"connection": 1, "user": 1}})
        expected["byKind"].update(connection=1, user=1)
        assert await billed_messages(stack.emulator_url) == expected
        assert await billed_messages(stack.emulator_url, reset=True) == expected
        assert await billed_messages(stack.emulator_url) == nothing_billed()


async def test_a_client_message_passed_upstream_is_billed_per_started_2_kb(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """A client's 5 KB invocation, passed to the app's upstream, bills 3 messages as `upstream` (in `billed`, not in
    `total`, which counts deliveries to clients); a small one bills 1."""
    async with clients(session, stack, [unique_user("talker")]) as [client]:
        await billed_messages(stack.emulator_url, reset=True)
        for target, argument in (("shout", "x" * 5 * 1024), ("whisper", "x")):
            record = json.dumps({"type": 1, "target": target, "arguments": [argument]})
            await client.socket.send_str(record + RECORD_SEPARATOR)

        async def counted() -> bool:
            return bool((await billed_messages(stack.emulator_url))["upstream"] >= 4)

        await wait_until(counted, what="both invocations passed upstream")
    counts = await billed_messages(stack.emulator_url)
    assert (counts["upstream"], counts["total"], counts["billed"]) == (4, 0, 4)
