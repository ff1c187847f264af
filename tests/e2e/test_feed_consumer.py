"""The presence feed's example consumer (client/python/feed_consumer, docs/feed.md) as another function app in its own
local host, hearing the mapper's feed queue in Azurite while real SignalR clients come and go."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from testkit.azurite import Azurite
from testkit.local_stack import HostOptions, LocalStack, running_local_stack
from testkit.stack import SignalRClients, Stack, running_stack, unique_user, wait_until
from testkit.tables import table_rows, unique_table_name

pytestmark = pytest.mark.slow

CONSUMER = "client.python.feed_consumer.function_app:app"


@pytest.fixture(scope="module")
def feed_queue() -> str:
    """The feed's queue for this module."""
    return f"feed-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def mapper(azurite: Azurite, feed_queue: str) -> Iterator[Stack]:
    """The mapper, its feed on `feed_queue`."""
    with running_stack(azurite, extra_settings={"PRESENCE_FEED_QUEUE": feed_queue}) as running:
        yield running


@pytest.fixture(scope="module")
def consumer(azurite: Azurite, feed_queue: str) -> Iterator[tuple[LocalStack, str]]:
    """The consumer app in a local host of its own, reading the same queue; yields it and its push table's name."""
    pushes = unique_table_name()
    settings = {
        "AzureWebJobsStorage": azurite.connection_string,
        "FEED_STORAGE": azurite.connection_string,
        "PRESENCE_FEED_QUEUE": feed_queue,
        "FEED_STATE_TABLE": unique_table_name(),
        "FEED_PUSH_TABLE": pushes,
    }
    with running_local_stack(settings, host_options=HostOptions(app=CONSUMER), log_prefix="feed-consumer-") as stack:
        yield stack, pushes


async def consumer_call(stack: LocalStack, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """Call the consumer's HTTP API; return the status and the JSON body."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{stack.host_url}/api/{path}", json=body) as response,
    ):
        return response.status, dict(await response.json())


async def test_the_consumer_pushes_a_direct_message_only_while_its_recipient_is_offline(
    azurite: Azurite, mapper: Stack, consumer: tuple[LocalStack, str]
) -> None:
    """While Ann's tab is open the consumer, fed by the queue, says a message to her goes through SignalR; once she
    closes it, the feed says offline and the consumer sends a push instead, one row in its push table."""
    stack, pushes = consumer
    ann = unique_user("Ann")
    subject = quote(f"user:{ann.casefold()}", safe="")
    room = f"room-{uuid.uuid4().hex[:8]}"

    async def consumer_says(online: bool) -> bool:
        status, body = await consumer_call(stack, "GET", f"subject?subject={subject}")
        return status == 200 and body["online"] is online

    async with SignalRClients(mapper) as clients:
        await clients.connect("a1", ann)
        await clients.send("a1", "join", room)
        await wait_until(lambda: consumer_says(True), within=30, what="the consumer to hear Ann online")
        member = quote(f"member:{room}/{ann.casefold()}", safe="")

        async def joined() -> bool:
            status, body = await consumer_call(stack, "GET", f"subject?subject={member}")
            return status == 200 and (body["kind"], body["by"]) == ("joined", "user")

        await wait_until(joined, within=30, what="the consumer to hear Ann join")
        assert await consumer_call(stack, "POST", "notify", {"to": ann.upper(), "message": "hi"}) == (
            200,
            {"push": False, "online": True},
        )
        await clients.stop("a1")
    await wait_until(lambda: consumer_says(False), within=30, what="the consumer to hear Ann offline")
    status, answer = await consumer_call(stack, "POST", "notify", {"to": ann, "message": "while you were away"})
    assert (status, answer["push"], answer["online"]) == (200, True, False)
    assert answer["lastSeen"] is not None
    rows = await table_rows(azurite, pushes)
    assert [(row["PartitionKey"], row["Message"]) for row in rows] == [(ann.casefold(), "while you were away")]


async def test_the_consumer_marks_a_room_vacated_when_its_last_member_goes_offline(
    mapper: Stack, consumer: tuple[LocalStack, str]
) -> None:
    """Two agents in a support room: the consumer says it is attended while either is online, and unattended (the
    feed's `vacated`) once the last one closes their tab; a room never heard of is unattended."""
    stack, _pushes = consumer
    room = f"support-{uuid.uuid4().hex[:8]}"
    bo, cy = unique_user("Bo"), unique_user("Cy")

    async def consumer_says(attended: bool, online: int) -> bool:
        status, body = await consumer_call(stack, "GET", f"rooms/{room}/attended")
        return status == 200 and (body["attended"], body["online"]) == (attended, online)

    assert await consumer_says(False, 0)  # never heard of
    async with SignalRClients(mapper) as clients:
        await clients.connect("b1", bo)
        await clients.send("b1", "join", room)
        await wait_until(lambda: consumer_says(True, 1), within=30, what="the room occupied")
        await clients.connect("c1", cy)
        await clients.send("c1", "join", room)
        await clients.stop("b1")
        await wait_until(lambda: mapper_says_online(mapper, room, 1), within=30, what="Bo gone, Cy still in")
        assert await consumer_says(True, 1)  # still attended: the feed has no message between the crossings
        await clients.stop("c1")
    await wait_until(lambda: consumer_says(False, 0), within=30, what="the room vacated")
    _status, body = await consumer_call(stack, "GET", f"rooms/{room}/attended")
    assert body["since"] is not None


async def mapper_says_online(mapper: Stack, room: str, online: int) -> bool:
    """Whether the mapper's occupancy of `room` says `online` members online."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{mapper.host_url}/api/rooms/{room}/occupancy") as response,
    ):
        return response.status == 200 and (await response.json())["online"] == online


async def test_the_consumer_refuses_a_body_without_a_recipient(consumer: tuple[LocalStack, str]) -> None:
    """A notify without `to` is a 400 with a JSON error, and nothing is pushed."""
    stack, _pushes = consumer
    status, body = await consumer_call(stack, "POST", "notify", {"message": "to nobody"})
    assert status == 400
    assert "to" in body["error"]
