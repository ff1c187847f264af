"""The presence feed (mapping/presence/feed.py) on a real Azurite queue: every kind of change, its subject and version,
what a consumer keeping the highest version per subject ends with, and a put that fails."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import AzureError
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from client.python.feed_consumer.function_app import keep_if_newer, state_of
from mapping import events
from mapping.errors import StorageUnavailableError
from mapping.presence.feed import NO_FEED, QueueFeed
from mapping.presence.rows import Membership
from mapping.presence.state import Recorded
from mapping.presence.store import ConnectionStore
from mapping.rooms.index import MemberIndex
from mapping.rooms.membership import Rooms
from mapping.settings import QueueConnection
from mapping.signalr.invocation import Invocation
from mapping.signalr.liveness import AGE_ONLY
from mapping.storage.queue import QueueDelayedActions
from testkit.azurite import Azurite
from testkit.delayed import FakeDelayedActions
from testkit.tables import drop_table, make_settings, unique_table_name

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def feed_queue(azurite: Azurite) -> AsyncIterator[str]:
    """A fresh queue name, deleted after the test."""
    name = f"feed-{uuid.uuid4().hex[:12]}"
    yield name
    async with QueueClient.from_connection_string(azurite.queue_connection_string, name) as client:
        with contextlib.suppress(AzureError):
            await client.delete_queue()


@pytest.fixture
async def store(azurite: Azurite, feed_queue: str) -> AsyncIterator[ConnectionStore]:
    """A store on a fresh table whose feed puts on the test's queue in Azurite."""
    table = unique_table_name()
    store = ConnectionStore(make_settings(azurite.connection_string, table, rooms_open=("lobby",)))
    store.feed = QueueFeed(
        QueueDelayedActions(QueueConnection(connection_string=azurite.connection_string), feed_queue)
    )
    try:
        yield store
    finally:
        await store.feed.close()
        await store.close()
        await drop_table(azurite, table)


async def feed_of(azurite: Azurite, queue: str) -> list[dict[str, Any]]:
    """Read and delete every message on the feed's queue, decoded as a queue trigger would (Base64, then JSON)."""
    read: list[dict[str, Any]] = []
    async with QueueClient.from_connection_string(azurite.queue_connection_string, queue) as client:
        while batch := [message async for message in client.receive_messages(max_messages=32)]:
            for message in batch:
                read.append(json.loads(base64.b64decode(str(message.content)).decode("utf-8")))
                await client.delete_message(message)
    return read


def latest(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a consumer keeps: the highest version per subject."""
    kept: dict[str, dict[str, Any]] = {}
    for message in messages:
        held = kept.get(message["subject"])
        if held is None or message["version"] > held["version"]:
            kept[message["subject"]] = message
    return kept


def event(category: str, name: str, user: str, connection: str, *arguments: object) -> Invocation:
    """A SignalR event of `connection`."""
    return Invocation(category, name, "chat", connection, user, list(arguments) if arguments else None)


async def test_every_kind_of_change_is_on_the_feed_with_its_subject_and_version(
    store: ConnectionStore, azurite: Azurite, feed_queue: str
) -> None:
    """Online, a status, a join and a leave by the user, a grant and a revoke by a server, offline with last seen: each
    is one feed message (a room its only member enters online is occupied, then vacated when they leave), and the
    highest version per subject states what GET and the rooms say."""
    await events.on_connected(store, event("connections", "connected", "Ann", "a1"))
    await events.on_set_status(store, event("messages", "setStatus", "Ann", "a1", "away"))
    await events.on_join(store, event("messages", "join", "Ann", "a1", "lobby"))
    await events.on_leave(store, event("messages", "leave", "Ann", "a1", "lobby"))
    await events.on_grant(store, "Ann", "staff", service=AGE_ONLY)
    await events.on_revoke(store, "Ann", "staff", service=AGE_ONLY)
    await events.on_disconnected(store, event("connections", "disconnected", "Ann", "a1"), delayed=FakeDelayedActions)
    messages = await feed_of(azurite, feed_queue)
    kinds = [(m["kind"], m.get("room"), m.get("by"), m.get("online"), m.get("status")) for m in messages]
    assert kinds == [
        ("presence", None, None, True, None),
        ("presence", None, None, True, "away"),
        ("joined", "lobby", "user", None, None),
        ("occupied", "lobby", None, 1, None),
        ("left", "lobby", "user", None, None),
        ("vacated", "lobby", None, 0, None),
        ("joined", "staff", "server", None, None),
        ("occupied", "staff", None, 1, None),
        ("left", "staff", "server", None, None),
        ("vacated", "staff", None, 0, None),
        ("presence", None, None, False, None),
    ]
    kept = latest(messages)
    assert set(kept) == {"user:ann", "member:lobby/ann", "member:staff/ann", "room:lobby", "room:staff"}
    assert (kept["room:lobby"]["kind"], kept["room:lobby"]["members"]) == ("vacated", 0)
    truth = (await store.presence_of("ann")).state
    offline = kept["user:ann"]
    assert (offline["online"], offline["connections"], offline["user"]) == (truth.online, 0, "Ann")
    assert offline["lastSeen"] is not None
    assert kept["member:lobby/ann"]["kind"] == "left"
    assert kept["member:staff/ann"]["kind"] == "left"
    assert all(m["at"].endswith("Z") for m in messages)


async def test_a_repeated_join_within_the_minute_puts_the_same_version_again(
    store: ConnectionStore, azurite: Azurite, feed_queue: str
) -> None:
    """A join its caller retries (its answer lost) repeats its announcement and its feed message, under the same
    version (feed F1): a consumer holds one membership."""
    await events.on_connected(store, event("connections", "connected", "bo", "b1"))
    await events.on_join(store, event("messages", "join", "bo", "b1", "lobby"))
    await events.on_join(store, event("messages", "join", "bo", "b1", "lobby"))
    joined = [m for m in await feed_of(azurite, feed_queue) if m["kind"] == "joined"]
    assert len(joined) == 2
    assert joined[0]["version"] == joined[1]["version"]


class FailingSender:
    """A queue that refuses the next `failures` puts (nothing enqueued), then takes every message."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[str] = []

    async def schedule(self, body: str, *, delay: object) -> None:
        """Enqueue, or fail as planned."""
        if self.failures > 0:
            self.failures -= 1
            raise StorageUnavailableError("queue storage is unavailable (test)")
        self.bodies.append(body)

    async def close(self) -> None:
        """Nothing to release."""


async def test_a_put_that_fails_fails_the_call_and_its_retry_puts_it(azurite: Azurite) -> None:
    """A join whose feed put fails is answered `retry` (its membership committed); the retry, within the minute,
    announces again and puts the message, with the version of the join that committed."""
    table = unique_table_name()
    store = ConnectionStore(make_settings(azurite.connection_string, table, rooms_open=("lobby",)))
    sender = FailingSender(failures=0)
    store.feed = QueueFeed(sender)
    try:
        await events.on_connected(store, event("connections", "connected", "cy", "c1"))
        sender.failures = 1
        first = await events.on_join(store, event("messages", "join", "cy", "c1", "lobby"))
        [error] = [m["arguments"][0] for m in first if m.get("target") == "error"]
        assert error["retry"] is True
        assert "lobby" in (await store.presence_of("cy")).rooms  # the membership committed before the put
        again = await events.on_join(store, event("messages", "join", "cy", "c1", "lobby"))
        assert [m for m in again if m.get("target") == "room"]  # announced again
        joined = [json.loads(body) for body in sender.bodies if json.loads(body)["kind"] == "joined"]
        assert [(m["room"], m["user"], m["by"]) for m in joined] == [("lobby", "cy", "user")]
    finally:
        await store.close()
        await drop_table(azurite, table)


async def test_with_the_feed_off_nothing_is_put(azurite: Azurite, feed_queue: str) -> None:
    """Without PRESENCE_FEED_QUEUE the store's feed is NO_FEED: the same changes put nothing anywhere."""
    table = unique_table_name()
    store = ConnectionStore(make_settings(azurite.connection_string, table))
    assert store.feed is NO_FEED
    try:
        await events.on_connected(store, event("connections", "connected", "dee", "d1"))
        await events.on_set_status(store, event("messages", "setStatus", "dee", "d1", "busy"))
    finally:
        await store.close()
        await drop_table(azurite, table)
    async with QueueServiceClient.from_connection_string(azurite.queue_connection_string) as service:
        assert feed_queue not in {queue.name async for queue in service.list_queues()}  # never created


async def test_the_example_consumer_keeps_the_highest_version_whatever_the_order(azurite: Azurite) -> None:
    """The example consumer's store (client/python/feed_consumer) keeps, of messages delivered out of order and
    twice, the highest version per subject."""
    table_name = unique_table_name()
    async with TableClient.from_connection_string(azurite.connection_string, table_name) as table:
        await table.create_table()
        try:
            versions = [1796000000002, 1796000000001, 1796000000003, 1796000000002, 1796000000003]
            kept = [
                await keep_if_newer(table, {"subject": "user:eve", "version": v, "kind": "presence", "online": v % 2})
                for v in versions
            ]
            assert kept == [True, False, True, False, False]
            state = await state_of(table, "user:eve")
            assert state is not None
            assert (state["version"], state["online"]) == (1796000000003, 1)
        finally:
            await table.delete_table()


async def test_a_membership_version_grows_whatever_the_clocks_and_a_grant_restates_the_join(
    store: ConnectionStore,
) -> None:
    """A leave stamped by a clock behind the join's still takes a later version; a grant of a member, and a join
    repeated, state the join's version (feed F1)."""
    rooms = Rooms(store)
    joined = await rooms.join("fay", "lobby", now=T0)
    granted = await rooms.grant("fay", "lobby", now=T0 + timedelta(seconds=5))
    repeated = await rooms.join("fay", "lobby", now=T0 + timedelta(seconds=6))
    left = await rooms.leave("fay", "lobby", now=T0 - timedelta(seconds=30))  # an instance whose clock is behind
    assert joined.changed_at == granted.changed_at == repeated.changed_at == T0
    assert joined.changed_at < left.changed_at


async def test_a_leave_of_a_room_whose_join_stopped_half_way_announces_nothing(store: ConnectionStore) -> None:
    """A join that wrote its index row but never its membership leaves a flagged row; a leave within the minute is of
    a room the user is not in, so it puts nothing on the feed and the room hears nothing (rooms R5)."""
    partition = "gus"
    await MemberIndex(store.table).joining(Membership("lobby", T0), partition, "gus", recorded=Recorded())
    left = await Rooms(store).leave("gus", "lobby", now=T0 + timedelta(seconds=10))
    assert left.announce is False
