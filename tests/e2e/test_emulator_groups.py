"""The emulator's REST 2024-12-01 listing of a group's connections, group actions sent through the local host's
`signalR` output binding, and the emulator's count of REST calls; against real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest

from mapping.settings import SignalRConnection
from mapping.signalr.liveness import SignalRLiveness
from mapping.signalr.tokens import access_key_token
from testkit.azurite import Azurite
from testkit.stack import ACCESS_KEY, HUB, Stack, running_stack, unique_user, wait_until

pytestmark = pytest.mark.slow

LISTING_VERSION = "2024-12-01"
LIST_ROUTE = "GET /api/hubs/{hub}/groups/{group}/connections"
CROWD = 450
RECORD_SEPARATOR = "\x1e"


@dataclass
class Client:
    """One SignalR client connection, speaking the JSON hub protocol over a WebSocket."""

    connection_id: str
    user: str
    socket: aiohttp.ClientWebSocketResponse


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """An emulator and a local host running testkit/group_app.py (which never touches storage: no Azurite needed)."""
    with running_stack(Azurite(port=1), app="testkit.group_app:app", client_timeout=600) as running:
        yield running


@pytest.fixture(scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client for the module; unlimited, as every open WebSocket holds one of its connections."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


@pytest.fixture(scope="module")
async def crowd(stack: Stack, session: aiohttp.ClientSession) -> AsyncIterator[list[Client]]:
    """450 live connections of 150 users (three each), all added to the group `crowd`."""
    gate = asyncio.Semaphore(50)

    async def one(index: int) -> Client:
        async with gate:
            return await connect(session, stack, f"crowd-{index // 3}")

    clients = list(await asyncio.gather(*(one(i) for i in range(CROWD))))
    await asyncio.gather(*(join(session, stack, "crowd", c.connection_id) for c in clients))
    yield clients
    await asyncio.gather(*(c.socket.close() for c in clients))


async def connect(session: aiohttp.ClientSession, stack: Stack, user: str) -> Client:
    """Negotiate through the app, then open and hand-shake a WebSocket connection with the emulator."""
    async with session.post(f"{stack.api}/negotiate", headers={"x-ms-client-principal-name": user}) as response:
        assert response.status == 200, await response.text()
        info = await response.json()
    auth = {"Authorization": f"Bearer {info['accessToken']}"}
    base = f"{stack.emulator_url}/client"
    params = {"hub": HUB, "negotiateVersion": "1"}
    async with session.post(f"{base}/negotiate", params=params, headers=auth) as response:
        assert response.status == 200, await response.text()
        negotiated = await response.json()
    query = {"hub": HUB, "id": negotiated["connectionToken"], "access_token": info["accessToken"]}
    socket = await session.ws_connect(f"{base}/", params=query)
    await socket.send_str(json.dumps({"protocol": "json", "version": 1}) + RECORD_SEPARATOR)
    assert await socket.receive_str(timeout=10) == "{}" + RECORD_SEPARATOR
    return Client(negotiated["connectionId"], user, socket)


def bearer(url: str, *, key: str = ACCESS_KEY) -> dict[str, str]:
    """Return the Authorization header for a REST call: a token whose audience is the URL without its query."""
    audience = url.split("?", 1)[0]
    token = access_key_token(key, audience=audience, lifetime_seconds=600)
    return {"Authorization": f"Bearer {token}"}


def group_url(stack: Stack, group: str, suffix: str = "/connections") -> str:
    """Return the emulator URL of a group resource."""
    return f"{stack.emulator_url}/api/hubs/{HUB}/groups/{quote(group, safe='')}{suffix}"


async def rest(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Call the emulator's REST API (a fresh token for the URL unless `headers` are given): status and JSON body."""
    sent = bearer(url) if headers is None else headers
    async with session.request(method, url, params=params, headers=sent) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def join(session: aiohttp.ClientSession, stack: Stack, group: str, connection_id: str) -> None:
    """Add a connection to a group through the REST API."""
    url = group_url(stack, group, f"/connections/{quote(connection_id, safe='')}")
    status, body = await rest(session, "PUT", url, params={"api-version": LISTING_VERSION})
    assert status == 200, body


async def leave(session: aiohttp.ClientSession, stack: Stack, group: str, connection_id: str) -> None:
    """Remove a connection from a group through the REST API."""
    url = group_url(stack, group, f"/connections/{quote(connection_id, safe='')}")
    status, body = await rest(session, "DELETE", url, params={"api-version": LISTING_VERSION})
    assert status == 200, body


async def first_page(session: aiohttp.ClientSession, stack: Stack, group: str, **params: Any) -> dict[str, Any]:
    """Return the first page of a group's listing (asserting 200)."""
    status, body = await rest(
        session, "GET", group_url(stack, group), params={"api-version": LISTING_VERSION, **params}
    )
    assert status == 200, body
    return dict(body)


async def follow(session: aiohttp.ClientSession, link: str) -> dict[str, Any]:
    """GET a nextLink as it is, with a token for its URL (asserting 200)."""
    status, body = await rest(session, "GET", link)
    assert status == 200, body
    return dict(body)


async def all_pages(session: aiohttp.ClientSession, stack: Stack, group: str, **params: Any) -> list[list[str]]:
    """Return the connection ids of every page of a listing, following nextLink to the end."""
    page = await first_page(session, stack, group, **params)
    pages = [[m["connectionId"] for m in page["value"]]]
    while "nextLink" in page:
        page = await follow(session, page["nextLink"])
        pages.append([m["connectionId"] for m in page["value"]])
    return pages


async def listed(session: aiohttp.ClientSession, stack: Stack, group: str) -> set[str]:
    """Return every connection id a group's listing names."""
    return {i for page in await all_pages(session, stack, group) for i in page}


async def output(session: aiohttp.ClientSession, stack: Stack, items: list[dict[str, Any]]) -> None:
    """Run the app's `output` function: its `signalR` output is `items`, delivered by the local host."""
    async with session.post(f"{stack.api}/output", data=json.dumps(items)) as response:
        assert response.status == 204, await response.text()


async def admin(session: aiohttp.ClientSession, stack: Stack, method: str) -> dict[str, Any]:
    """Call the emulator's REST-call counter (GET reads, DELETE reads and resets)."""
    async with session.request(method, f"{stack.emulator_url}/admin/rest-calls") as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def next_invocation(client: Client, target: str) -> list[Any]:
    """Return the arguments of the next invocation of `target` the client receives (pings skipped)."""
    while True:
        text = await client.socket.receive_str(timeout=10)
        for record in filter(None, text.split(RECORD_SEPARATOR)):
            message = json.loads(record)
            if message.get("type") == 1 and message.get("target") == target:
                return list(message["arguments"])


async def test_450_members_come_in_three_pages_of_at_most_200(
    stack: Stack, session: aiohttp.ClientSession, crowd: list[Client]
) -> None:
    """With maxpagesize 200, 450 members come as 200, 200 and 50, in id order, each once, with their user ids."""
    page = await first_page(session, stack, "crowd", maxpagesize=200)
    members = {m["connectionId"]: m.get("userId") for m in page["value"]}
    sizes = [len(page["value"])]
    links = []
    while "nextLink" in page:
        links.append(page["nextLink"])
        page = await follow(session, page["nextLink"])
        members.update({m["connectionId"]: m.get("userId") for m in page["value"]})
        sizes.append(len(page["value"]))
    assert sizes == [200, 200, 50]
    assert members == {c.connection_id: c.user for c in crowd}
    for link in links:
        parts = urlsplit(link)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == group_url(stack, "crowd")
        assert parse_qs(parts.query)["api-version"] == [LISTING_VERSION]
    assert await all_pages(session, stack, "crowd") == await all_pages(session, stack, "crowd", maxpagesize=200)
    ordered = [i for p in await all_pages(session, stack, "crowd", maxpagesize=7) for i in p]
    assert ordered == sorted(c.connection_id for c in crowd)


async def test_continuation_token_and_next_link_give_the_same_page(
    stack: Stack, session: aiohttp.ClientSession, crowd: list[Client]
) -> None:
    """The continuationToken of a nextLink, passed to the first URL, gives the page the nextLink gives."""
    page = await first_page(session, stack, "crowd", maxpagesize=100)
    [token] = parse_qs(urlsplit(page["nextLink"]).query)["continuationToken"]
    by_token = await first_page(session, stack, "crowd", continuationToken=token)
    assert by_token == await follow(session, page["nextLink"])
    assert len(by_token["value"]) == 100  # the page size travels in the token
    assert by_token["value"][0]["connectionId"] > page["value"][-1]["connectionId"]
    bigger = await first_page(session, stack, "crowd", continuationToken=token, maxpagesize=150)
    assert bigger["value"][:100] == by_token["value"]
    assert len(bigger["value"]) == 150  # an explicit maxpagesize wins over the token's


@pytest.mark.parametrize(
    ("params", "sizes"),
    [
        ({"top": 250, "maxpagesize": 200}, [200, 50]),
        ({"top": 150}, [150]),
        ({"top": 200}, [200]),
        ({"top": 1000, "maxpagesize": 200}, [200, 200, 50]),
        ({"top": 5, "maxpagesize": 2}, [2, 2, 1]),
    ],
)
async def test_top_caps_the_whole_listing(
    stack: Stack, session: aiohttp.ClientSession, crowd: list[Client], params: dict[str, int], sizes: list[int]
) -> None:
    """`top` bounds the total over all pages; no nextLink once it is reached."""
    pages = await all_pages(session, stack, "crowd", **params)
    assert [len(p) for p in pages] == sizes
    flat = [i for p in pages for i in p]
    assert flat == sorted(c.connection_id for c in crowd)[: len(flat)]


async def test_paging_is_stable_while_members_join_and_leave(
    stack: Stack, session: aiohttp.ClientSession, crowd: list[Client]
) -> None:
    """Between pages, members leave and join: stayers come once, leavers not yet listed never, joiners after the
    cursor do."""
    ids = sorted(c.connection_id for c in crowd)
    members, outsiders = ids[::2], ids[1::2]  # 225 in the group `churn`, 225 not
    await asyncio.gather(*(join(session, stack, "churn", i) for i in members))
    page = await first_page(session, stack, "churn", maxpagesize=100)
    seen = [m["connectionId"] for m in page["value"]]
    cursor = seen[-1]
    unlisted = [i for i in members if i > cursor]
    leavers = seen[:10] + unlisted[:10]
    joiners = outsiders[:10] + outsiders[-10:]
    await asyncio.gather(*(leave(session, stack, "churn", i) for i in leavers))
    await asyncio.gather(*(join(session, stack, "churn", i) for i in joiners))
    while "nextLink" in page:
        page = await follow(session, page["nextLink"])
        seen += [m["connectionId"] for m in page["value"]]
    assert len(seen) == len(set(seen))
    stayers = set(members) - set(leavers)
    expected = stayers | set(seen[:10]) | {i for i in joiners if i > cursor}
    assert set(seen) == expected
    assert await listed(session, stack, "churn") == stayers | set(joiners)


async def test_an_unknown_group_lists_nothing(stack: Stack, session: aiohttp.ClientSession) -> None:
    """A group nobody joined answers 200 with an empty value and no nextLink."""
    assert await first_page(session, stack, unique_user("nobody-here")) == {"value": []}
    assert await first_page(session, stack, "empty room é", maxpagesize=1, top=3) == {"value": []}


async def test_a_group_name_with_a_space_and_an_accent_pages_too(stack: Stack, session: aiohttp.ClientSession) -> None:
    """A percent-encoded group name keeps its encoding in nextLink, so the same kind of token serves every page."""
    clients = [await connect(session, stack, unique_user("guest")) for _ in range(3)]
    for client in clients:
        await join(session, stack, "room é", client.connection_id)
    pages = await all_pages(session, stack, "room é", maxpagesize=1)
    assert pages == [[i] for i in sorted(c.connection_id for c in clients)]
    await asyncio.gather(*(c.socket.close() for c in clients))


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({}, {}, 401),
        ({}, {"Authorization": "Bearer not-a-token"}, 401),
        ({}, "wrong key", 401),
        ({}, "other audience", 401),
        ({"api-version": "2022-06-01"}, None, 400),
        ({"maxpagesize": "0"}, None, 400),
        ({"maxpagesize": "201"}, None, 400),
        ({"maxpagesize": "ten"}, None, 400),
        ({"top": "0"}, None, 400),
        ({"top": "-1"}, None, 400),
        ({"continuationToken": "bm90IGEgdG9rZW4"}, None, 400),
    ],
)
async def test_listing_refuses_bad_tokens_and_parameters(
    stack: Stack, session: aiohttp.ClientSession, params: dict[str, str], headers: Any, status: int
) -> None:
    """401 without a valid token for the URL (as every REST route), 400 for a bad api-version or paging parameter."""
    url = group_url(stack, "crowd")
    if headers == "wrong key":
        headers = bearer(url, key="not-the-key-0123456789abcdefghijklmnop")
    elif headers == "other audience":
        headers = bearer(group_url(stack, "another"))
    answer, body = await rest(session, "GET", url, headers=headers, params={"api-version": LISTING_VERSION, **params})
    assert answer == status, body
    assert "error" in body


async def test_a_continuation_token_serves_only_its_own_group(
    stack: Stack, session: aiohttp.ClientSession, crowd: list[Client]
) -> None:
    """A token from one group's listing is refused (400) for another group."""
    page = await first_page(session, stack, "crowd", maxpagesize=10)
    [token] = parse_qs(urlsplit(page["nextLink"]).query)["continuationToken"]
    status, body = await rest(
        session, "GET", group_url(stack, "churn"), params={"api-version": LISTING_VERSION, "continuationToken": token}
    )
    assert status == 400, body


async def test_a_closed_connection_leaves_every_group(stack: Stack, session: aiohttp.ClientSession) -> None:
    """A connection that closes disappears from its groups' listings, and its user's next connection is not in them."""
    user = unique_user("leaver")
    first, other = await connect(session, stack, user), await connect(session, stack, unique_user("stayer"))
    for client in (first, other):
        await join(session, stack, "leavers", client.connection_id)
    assert await listed(session, stack, "leavers") >= {first.connection_id, other.connection_id}
    await first.socket.close()

    async def gone() -> bool:
        return first.connection_id not in await listed(session, stack, "leavers")

    await wait_until(gone, what="the closed connection to leave the listing")
    again = await connect(session, stack, user)
    assert again.connection_id != first.connection_id
    assert other.connection_id in await listed(session, stack, "leavers")
    assert again.connection_id not in await listed(session, stack, "leavers")
    await asyncio.gather(other.socket.close(), again.socket.close())


async def test_group_actions_from_the_output_binding_reach_the_emulator(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    """add, remove and removeAll items of a function's `signalR` output become the matching REST calls."""
    user = unique_user("member")
    client = await connect(session, stack, user)
    cid = client.connection_id
    by_connection, by_user = unique_user("by-connection"), unique_user("by-user")
    await admin(session, stack, "DELETE")
    await output(
        session,
        stack,
        [
            {"action": "add", "groupName": by_connection, "connectionId": cid},
            {"action": "add", "groupName": by_user, "userId": user},
        ],
    )
    assert await first_page(session, stack, by_connection) == {"value": [{"connectionId": cid, "userId": user}]}
    assert await first_page(session, stack, by_user) == {"value": [{"connectionId": cid, "userId": user}]}
    await output(session, stack, [{"action": "remove", "groupName": by_connection, "connectionId": cid}])
    await output(session, stack, [{"action": "removeAll", "userId": user}])
    assert await listed(session, stack, by_connection) == set()
    assert await listed(session, stack, by_user) == set()
    await output(session, stack, [{"Action": "Add", "GroupName": by_connection, "ConnectionId": cid}])
    assert await listed(session, stack, by_connection) == {cid}
    await output(session, stack, [{"action": "removeAll", "connectionId": cid}])
    assert await listed(session, stack, by_connection) == set()
    counts = (await admin(session, stack, "GET"))["byRoute"]
    assert {route: n for route, n in counts.items() if route != LIST_ROUTE} == {
        "PUT /api/hubs/{hub}/groups/{group}/connections/{connection}": 2,
        "PUT /api/hubs/{hub}/users/{user}/groups/{group}": 1,
        "DELETE /api/hubs/{hub}/groups/{group}/connections/{connection}": 1,
        "DELETE /api/hubs/{hub}/users/{user}/groups": 1,
        "DELETE /api/hubs/{hub}/connections/{connection}/groups": 1,
    }
    await client.socket.close()


async def test_an_output_item_with_a_target_stays_a_message(stack: Stack, session: aiohttp.ClientSession) -> None:
    """An item with both a target and an action is sent as a message; nobody joins a group."""
    client = await connect(session, stack, unique_user("reader"))
    group = unique_user("not-joined")
    item = {"target": "note", "arguments": ["hello"], "connectionId": client.connection_id}
    await output(session, stack, [{**item, "action": "add", "groupName": group}])
    assert await next_invocation(client, "note") == ["hello"]
    assert await first_page(session, stack, group) == {"value": []}
    await client.socket.close()


async def test_rest_calls_are_counted_per_route_and_reset(stack: Stack, session: aiohttp.ClientSession) -> None:
    """The admin count grows with every REST call answered (refused ones too), and DELETE answers it and resets it."""
    await admin(session, stack, "DELETE")
    assert await admin(session, stack, "GET") == {"total": 0, "byRoute": {}}
    await first_page(session, stack, "crowd", top=1)
    await first_page(session, stack, "crowd", top=1)
    status, _ = await rest(
        session, "GET", group_url(stack, "crowd"), headers={}, params={"api-version": LISTING_VERSION}
    )
    assert status == 401
    connection_url = f"{stack.emulator_url}/api/hubs/{HUB}/connections/nobody"
    async with session.head(connection_url, params={"api-version": "2022-06-01"}, headers=bearer(connection_url)) as r:
        assert r.status == 404
    async with session.get(f"{stack.emulator_url}/health") as r:
        assert r.status == 200  # not a REST call
    expected = {"total": 4, "byRoute": {LIST_ROUTE: 3, "HEAD /api/hubs/{hub}/connections/{connection}": 1}}
    assert await admin(session, stack, "GET") == expected
    assert await admin(session, stack, "DELETE") == expected
    assert await admin(session, stack, "GET") == {"total": 0, "byRoute": {}}


async def test_the_app_adds_a_connection_to_a_group_over_rest(stack: Stack, session: aiohttp.ClientSession) -> None:
    """SignalRLiveness.add_to_group puts a live connection in a group at once; an unknown connection is refused."""
    client = await connect(session, stack, unique_user("early"))
    rest_client = SignalRLiveness(SignalRConnection(endpoint=stack.emulator_url, access_key=ACCESS_KEY))
    try:
        assert await rest_client.add_to_group(HUB, "~presence.early", client.connection_id) is True
        assert client.connection_id in await listed(session, stack, "~presence.early")
        assert await rest_client.add_to_group(HUB, "~presence.early", "no-such-connection") is False
    finally:
        await rest_client.close()
        await client.socket.close()
