"""Delayed actions on a storage queue (mapping/storage/queue.py) against a real Azurite queue service, and what that
Azurite does with visibility timeouts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from azure.core.exceptions import AzureError
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from mapping.errors import StorageError, StorageUnavailableError
from mapping.settings import QueueConnection
from mapping.storage.queue import MAX_BODY_BYTES, QueueDelayedActions, visibility_seconds
from testkit.azurite import DEV_KEY, Azurite, free_port, queue_connection_string

WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="


def unique_queue() -> str:
    """Return a queue name no other test uses."""
    return f"q-{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def queue_name(azurite: Azurite) -> AsyncIterator[str]:
    """A fresh queue name; the queue is deleted after the test if it was created."""
    name = unique_queue()
    yield name
    async with QueueClient.from_connection_string(azurite.connection_string, name) as client:
        with contextlib.suppress(AzureError):
            await client.delete_queue()


@pytest.fixture
async def actions(azurite: Azurite, queue_name: str) -> AsyncIterator[QueueDelayedActions]:
    """Delayed actions on the test's queue in Azurite (through the combined connection string)."""
    delayed = QueueDelayedActions(QueueConnection(connection_string=azurite.connection_string), queue_name)
    yield delayed
    await delayed.close()


def raw_client(azurite: Azurite, queue_name: str) -> QueueClient:
    """Return a client that reads message content as stored (no decoding)."""
    return QueueClient.from_connection_string(azurite.queue_connection_string, queue_name)


async def visible(azurite: Azurite, queue_name: str) -> list[str]:
    """Return the raw content of the messages visible now, without leasing them."""
    async with raw_client(azurite, queue_name) as client:
        return [str(message.content) for message in await client.peek_messages(max_messages=32)]


async def queue_names(azurite: Azurite) -> set[str]:
    """Return the names of every queue in Azurite."""
    async with QueueServiceClient.from_connection_string(azurite.queue_connection_string) as service:
        return {queue.name async for queue in service.list_queues()}


async def test_a_scheduled_message_is_invisible_before_its_delay_and_visible_after(
    actions: QueueDelayedActions, azurite: Azurite, queue_name: str
) -> None:
    """A message scheduled 2 s ahead is not visible at 1 s, and is visible shortly after 2 s."""
    started = time.monotonic()
    await actions.schedule("later", delay=timedelta(seconds=2))
    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    assert await visible(azurite, queue_name) == []
    await asyncio.sleep(max(0.0, 2.3 - (time.monotonic() - started)))
    assert len(await visible(azurite, queue_name)) == 1


async def test_a_message_without_delay_is_visible_at_once(
    actions: QueueDelayedActions, azurite: Azurite, queue_name: str
) -> None:
    """A zero (or negative) delay makes the message visible immediately."""
    await actions.schedule("now", delay=timedelta(seconds=-5))
    assert len(await visible(azurite, queue_name)) == 1


async def test_the_body_is_base64_of_utf8_as_the_queue_trigger_decodes_it(
    actions: QueueDelayedActions, azurite: Azurite, queue_name: str
) -> None:
    """The stored content is Base64 of the body's UTF-8 bytes, so the trigger's default decoding gives the body."""
    body = json.dumps({"user": "zoë", "note": "naïve ☃ 🚀", "version": 7}, ensure_ascii=False)
    await actions.schedule(body, delay=timedelta(0))
    [content] = await visible(azurite, queue_name)
    assert base64.b64decode(content, validate=True).decode("utf-8") == body


async def test_the_queue_is_created_on_first_use(
    actions: QueueDelayedActions, azurite: Azurite, queue_name: str
) -> None:
    """The queue does not exist before the first schedule and holds the message after it."""
    assert queue_name not in await queue_names(azurite)
    await actions.schedule("first", delay=timedelta(0))
    assert queue_name in await queue_names(azurite)
    assert len(await visible(azurite, queue_name)) == 1


async def test_a_deleted_queue_is_created_again_by_the_next_schedule(
    actions: QueueDelayedActions, azurite: Azurite, queue_name: str
) -> None:
    """Deleting the queue under a cached client does not break scheduling: the next call recreates it and sends."""
    await actions.schedule("before", delay=timedelta(0))
    async with raw_client(azurite, queue_name) as client:
        await client.delete_queue()
    assert queue_name not in await queue_names(azurite)
    await actions.schedule("after", delay=timedelta(0))
    [content] = await visible(azurite, queue_name)
    assert base64.b64decode(content).decode() == "after"


async def test_close_then_schedule_opens_a_new_client(
    actions: QueueDelayedActions, azurite: Azurite, queue_name: str
) -> None:
    """After close(), the next schedule works again on a fresh client."""
    await actions.schedule("one", delay=timedelta(0))
    await actions.close()
    await actions.schedule("two", delay=timedelta(0))
    assert len(await visible(azurite, queue_name)) == 2


async def test_an_unreachable_queue_service_raises_storage_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    """A closed port gives StorageUnavailableError (a StorageError, not an Azure exception), quickly, with no key
    in the logs."""
    dead = QueueDelayedActions(
        QueueConnection(connection_string=queue_connection_string(free_port())), unique_queue(), retry_total=1
    )
    started = time.monotonic()
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(StorageUnavailableError) as caught:
            await dead.schedule("lost", delay=timedelta(seconds=1))
    finally:
        await dead.close()
    assert not isinstance(caught.value, AzureError)
    assert caught.value.__cause__ is None
    assert time.monotonic() - started < 10
    assert DEV_KEY not in caplog.text


async def test_an_unanswered_call_is_cut_at_the_call_timeout() -> None:
    """A server that accepts the connection but never answers costs at most `call_timeout`, then is unavailable."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    slow = QueueDelayedActions(
        QueueConnection(connection_string=queue_connection_string(port)), unique_queue(), call_timeout=1.0
    )
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailableError):
            await slow.schedule("late", delay=timedelta(0))
    finally:
        await slow.close()
        server.close()
    assert time.monotonic() - started < 3


async def test_rejected_credentials_are_a_storage_error_not_unavailable(azurite: Azurite) -> None:
    """A wrong account key is a StorageError that does not claim the service is unavailable."""
    wrong = QueueDelayedActions(
        QueueConnection(connection_string=azurite.queue_connection_string.replace(DEV_KEY, WRONG_KEY)),
        unique_queue(),
        retry_total=0,
    )
    try:
        with pytest.raises(StorageError) as caught:
            await wrong.schedule("refused", delay=timedelta(0))
    finally:
        await wrong.close()
    assert not isinstance(caught.value, StorageUnavailableError)


async def test_a_body_over_the_message_limit_is_refused_before_sending() -> None:
    """A body that would exceed 64 KiB once Base64-encoded raises ValueError without touching the network."""
    dead = QueueDelayedActions(QueueConnection(connection_string=queue_connection_string(free_port())), "big")
    try:
        with pytest.raises(ValueError, match="at most"):
            await dead.schedule("x" * (MAX_BODY_BYTES + 1), delay=timedelta(0))
    finally:
        await dead.close()


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        (timedelta(0), 0),
        (timedelta(seconds=-3), 0),
        (timedelta(milliseconds=1), 1),
        (timedelta(seconds=2), 2),
        (timedelta(seconds=2, microseconds=1), 3),
        (timedelta(days=7), 7 * 24 * 3600),
    ],
)
def test_delays_round_up_to_whole_seconds(delay: timedelta, seconds: int) -> None:
    """A delay becomes whole seconds rounded up, never negative, up to seven days."""
    assert visibility_seconds(delay) == seconds


def test_a_delay_over_seven_days_is_refused() -> None:
    """Put Message accepts at most seven days of visibility delay."""
    with pytest.raises(ValueError, match="7 days"):
        visibility_seconds(timedelta(days=7, seconds=1))


async def test_azurite_redelivers_a_received_message_once_its_visibility_timeout_passes(
    azurite: Azurite, queue_name: str
) -> None:
    """Azurite (3.35 here) hides a received, undeleted message for its visibility timeout, then delivers it again
    with a higher dequeue count; the old pop receipt is then stale (the local host's retries rely on this)."""
    async with raw_client(azurite, queue_name) as client:
        await client.create_queue()
        await client.send_message("lease")
        first = await client.receive_message(visibility_timeout=1)
        assert first is not None
        assert first.dequeue_count == 1
        assert await client.receive_message() is None
        await asyncio.sleep(1.3)
        again = await client.receive_message(visibility_timeout=30)
        assert again is not None
        assert (again.id, again.dequeue_count) == (first.id, 2)
        with pytest.raises(AzureError):
            await client.delete_message(first.id, first.pop_receipt)
        await client.delete_message(again.id, again.pop_receipt)
