"""The local host's queue triggers (local/host/queues.py): host.json options, binding resolution, the poller against a
real Azurite queue, and the whole host running testkit/queue_app.py end to end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import AzureError
from azure.storage.queue.aio import QueueClient

from local.host import settings
from local.host.functions import FunctionSpec
from local.host.queues import PollingBackoff, QueueBinding, QueueOptions, QueuePoller
from mapping.settings import QueueConnection
from mapping.storage.queue import QueueDelayedActions
from testkit.azurite import ROOT, Azurite
from testkit.stack import SignalRClients, Stack, running_stack, unique_user, wait_until


def unique_queue(prefix: str = "q") -> str:
    """Return a queue name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def raw_contents(azurite: Azurite, queue_name: str) -> list[str]:
    """Return the raw content of the visible messages of a queue (none when it does not exist)."""
    async with QueueClient.from_connection_string(azurite.queue_connection_string, queue_name) as client:
        try:
            return [str(m.content) for m in await client.peek_messages(max_messages=32)]
        except AzureError:
            return []


async def send_raw(azurite: Azurite, queue_name: str, content: str) -> None:
    """Enqueue `content` as it is (no encoding), creating the queue if needed."""
    async with QueueClient.from_connection_string(azurite.queue_connection_string, queue_name) as client:
        with contextlib.suppress(AzureError):
            await client.create_queue()
        await client.send_message(content)


async def delete_queues(azurite: Azurite, *names: str) -> None:
    """Delete queues (missing ones are fine)."""
    for name in names:
        async with QueueClient.from_connection_string(azurite.queue_connection_string, name) as client:
            with contextlib.suppress(AzureError):
                await client.delete_queue()


def b64(text: str) -> str:
    """Return text as the queue trigger expects it by default: Base64 of its UTF-8 bytes."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# ---- host.json options and the binding ------------------------------------------------------------------------


def test_host_json_without_queue_options_gives_the_defaults() -> None:
    """No `extensions.queues`: the Functions host's defaults, deployed: Base64, five tries, retry at once, batches of
    16, an idle queue polled once a minute (QueuesOptions, QueuePollingIntervals.DefaultMaximum)."""
    assert QueueOptions.from_host_json({"version": "2.0"}) == QueueOptions(
        message_encoding="base64", max_dequeue_count=5, visibility_timeout=0.0, batch_size=16, max_polling_interval=60.0
    )
    assert QueueOptions.from_host_json({"extensions": {"queues": {}}}).max_polling_interval == 60.0


def test_the_shipped_host_json_polls_an_idle_queue_every_two_seconds() -> None:
    """The repository's host.json sets maxPollingInterval to 2 s: a grace decision runs within grace + 2 s (+ a cold
    start) in Azure, and the local host, which reads the same file, polls as often."""
    document = json.loads((ROOT / "host.json").read_text())
    assert document["extensions"]["queues"]["maxPollingInterval"] == "00:00:02"
    assert QueueOptions.from_host_json(document).max_polling_interval == 2.0


def test_host_json_queue_options_are_read() -> None:
    """messageEncoding, maxDequeueCount, visibilityTimeout, batchSize and maxPollingInterval come from host.json."""
    document = {
        "extensions": {
            "queues": {
                "messageEncoding": "None",
                "maxDequeueCount": 2,
                "visibilityTimeout": "00:00:03",
                "batchSize": 4,
                "maxPollingInterval": "00:00:00.500",
            }
        }
    }
    assert QueueOptions.from_host_json(document) == QueueOptions(
        message_encoding="none", max_dequeue_count=2, visibility_timeout=3.0, batch_size=4, max_polling_interval=0.5
    )


@pytest.mark.parametrize(
    "queues",
    [
        {"messageEncoding": "utf8"},
        {"maxDequeueCount": 0},
        {"maxDequeueCount": "5"},
        {"batchSize": 33},
        {"visibilityTimeout": "3 seconds"},
        {"maxPollingInterval": 2},
        {"maxPollingInterval": "00:00:00.050"},
    ],
)
def test_bad_host_json_queue_options_raise(queues: dict[str, Any]) -> None:
    """A malformed queue option is a SettingsError naming it, not a silent default."""
    with pytest.raises(settings.SettingsError, match=r"host\.json"):
        QueueOptions.from_host_json({"extensions": {"queues": queues}})


def test_a_binding_resolves_its_queue_name_and_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """`%SETTING%` in queueName is resolved and the connection defaults to AzureWebJobsStorage."""
    monkeypatch.setenv("JOBS_QUEUE", "jobs-1")
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    binding = QueueBinding.of({"type": "queueTrigger", "queueName": "%JOBS_QUEUE%", "connection": ""})
    assert (binding.queue_name, binding.connection_string) == ("jobs-1", "UseDevelopmentStorage=true")
    assert binding.poison_queue_name == "jobs-1-poison"


@pytest.mark.parametrize(
    ("trigger", "env", "message"),
    [
        ({"queueName": "Jobs"}, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, "not a queue name"),
        ({"queueName": "a--b"}, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, "not a queue name"),
        ({"queueName": "jobs", "connection": "Other"}, {}, "'Other'"),
        ({"queueName": "jobs"}, {"AzureWebJobsStorage__queueServiceUri": "https://a.queue.x"}, "identity-based"),
        ({"queueName": "jobs"}, {"AzureWebJobsStorage": "not a connection string"}, "not a usable"),
    ],
)
def test_a_binding_that_cannot_be_served_raises(
    trigger: dict[str, str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad queue name, an unset or identity-only connection, or a malformed one is a SettingsError."""
    for name in ("AzureWebJobsStorage", "AzureWebJobsStorage__queueServiceUri", "Other"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError, match=message):
        QueueBinding.of({"type": "queueTrigger", **trigger})


def backoff_delays(maximum: float, found: list[bool], seed: int = 7) -> list[float]:
    """Return a PollingBackoff's waits after polls whose `found` (messages since the last wait) is as given."""
    backoff = PollingBackoff(maximum, rng=random.Random(seed))
    return [backoff.next_delay(f) for f in found]


def test_an_idle_queue_is_polled_as_the_functions_host_polls_it() -> None:
    """Empty polls in a row wait 0.1 s, then 0.1 s + 0.1 s x 2^(n-1) x [0.8, 1.2), until that reaches the maximum,
    which holds from then on (RandomizedExponentialBackoffStrategy with QueuePollingIntervals.Minimum)."""
    delays = backoff_delays(2.0, [False] * 12)
    assert delays[0] == pytest.approx(0.1)
    for n, delay in enumerate(delays[1:6], start=1):
        assert 0.1 + 0.8 * 0.1 * 2 ** (n - 1) <= delay < 0.1 + 1.2 * 0.1 * 2 ** (n - 1)
    assert delays[6:] == [2.0] * 6  # 0.1 + 0.1 x 32 x [0.8, 1.2) is past 2 s
    assert delays == sorted(delays)


def test_messages_reset_the_polling_to_its_minimum() -> None:
    """After polls that found messages the first wait is 0.1 s, and the backoff climbs again from there."""
    delays = backoff_delays(2.0, [False] * 10 + [True, False, False])
    assert delays[9] == 2.0
    assert delays[10] == pytest.approx(0.1)
    assert 0.18 <= delays[11] < 0.22
    assert 0.26 <= delays[12] < 0.34


def test_with_the_default_maximum_an_idle_queue_is_polled_once_a_minute() -> None:
    """With the default minute the waits climb for 10 or 11 polls (under about two minutes in all), then hold a
    minute: an idle instance polls its queue 1,440 times a day (43,200 times at the shipped 2 s)."""
    for seed in range(20):
        delays = backoff_delays(60.0, [False] * 14, seed=seed)
        climbing = [d for d in delays if d < 60.0]
        assert len(climbing) in (10, 11)
        assert sum(climbing) < 125
        assert delays[len(climbing) :] == [60.0] * (14 - len(climbing))
    assert round(86_400 / 60.0) == 1_440
    assert round(86_400 / 2.0) == 43_200


# ---- the poller against Azurite -------------------------------------------------------------------------------


Handler = Callable[[func.QueueMessage], Awaitable[Any]]


@contextlib.asynccontextmanager
async def polling(
    azurite: Azurite, queue_name: str, handler: Handler, options: QueueOptions | None = None
) -> AsyncIterator[None]:
    """Run a poller for `queue_name` with `handler` as the function until the block ends; delete its queues then."""
    spec = FunctionSpec("test", {"type": "queueTrigger", "name": "message"}, [], lambda: None)
    binding = QueueBinding(queue_name, azurite.connection_string)
    poller = QueuePoller(spec, binding, options or QueueOptions(max_polling_interval=0.2), invoke=handler)
    task = asyncio.create_task(poller.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await delete_queues(azurite, queue_name, binding.poison_queue_name)


class Calls:
    """What a test function was called with."""

    def __init__(self, *, fail: bool = False) -> None:
        self.messages: list[func.QueueMessage] = []
        self.fail = fail

    async def __call__(self, message: func.QueueMessage) -> None:
        """Record the message; raise when told to fail."""
        self.messages.append(message)
        if self.fail:
            raise RuntimeError("told to fail")


async def test_the_poller_runs_the_function_on_the_decoded_body_then_deletes_the_message(azurite: Azurite) -> None:
    """A message sent by QueueDelayedActions reaches the function decoded, with its metadata, and is then deleted."""
    queue_name, calls = unique_queue(), Calls()
    body = json.dumps({"user": "zoë", "decide": "offline"}, ensure_ascii=False)
    sender = QueueDelayedActions(QueueConnection(connection_string=azurite.connection_string), queue_name)
    async with polling(azurite, queue_name, calls):
        await sender.schedule(body, delay=timedelta(0))
        await wait_until(lambda: calls.messages, what="the function to run")
        await wait_until(lambda: _empty(azurite, queue_name), what="the message to be deleted")
        await asyncio.sleep(0.5)
    await sender.close()
    [message] = calls.messages
    assert message.get_body().decode("utf-8") == body
    assert message.dequeue_count == 1
    assert message.id
    assert message.pop_receipt
    assert message.insertion_time is not None
    assert message.expiration_time is not None


async def _empty(azurite: Azurite, queue_name: str) -> bool:
    async with QueueClient.from_connection_string(azurite.queue_connection_string, queue_name) as client:
        return (await client.get_queue_properties()).approximate_message_count == 0


async def test_message_encoding_none_hands_over_the_text_as_stored(azurite: Azurite) -> None:
    """With messageEncoding none, the stored text is the body, even when it happens to look like Base64."""
    queue_name, calls = unique_queue(), Calls()
    await send_raw(azurite, queue_name, "aGVsbG8=")
    options = QueueOptions(message_encoding="none", max_polling_interval=0.2)
    async with polling(azurite, queue_name, calls, options):
        await wait_until(lambda: calls.messages, what="the function to run")
    assert calls.messages[0].get_body() == b"aGVsbG8="


async def test_a_failing_message_is_tried_max_dequeue_count_times_then_poisoned(azurite: Azurite) -> None:
    """A function that always fails sees the message maxDequeueCount times; then it sits in <queue>-poison, as sent."""
    queue_name, calls = unique_queue(), Calls(fail=True)
    await send_raw(azurite, queue_name, b64("doomed"))
    options = QueueOptions(max_dequeue_count=3, max_polling_interval=0.2)
    async with polling(azurite, queue_name, calls, options):
        await wait_until(lambda: raw_contents(azurite, f"{queue_name}-poison"), what="the poison message")
        assert await raw_contents(azurite, queue_name) == []
        await asyncio.sleep(0.5)
        assert [m.dequeue_count for m in calls.messages] == [1, 2, 3]
        assert await raw_contents(azurite, f"{queue_name}-poison") == [b64("doomed")]


async def test_a_failed_message_comes_back_after_the_visibility_timeout(azurite: Azurite) -> None:
    """host.json visibilityTimeout delays the next try of a failed message by that long."""
    queue_name, calls = unique_queue(), Calls(fail=True)
    await send_raw(azurite, queue_name, b64("slow retry"))
    options = QueueOptions(max_dequeue_count=2, visibility_timeout=2.0, max_polling_interval=0.2)
    async with polling(azurite, queue_name, calls, options):
        await wait_until(lambda: calls.messages, what="the first try")
        await asyncio.sleep(1.2)
        assert len(calls.messages) == 1
        await wait_until(lambda: len(calls.messages) == 2, within=5, what="the second try")


async def test_a_message_that_is_not_base64_is_poisoned_without_running(azurite: Azurite) -> None:
    """Under the default Base64 encoding, a message that does not decode never reaches the function."""
    queue_name, calls = unique_queue(), Calls()
    await send_raw(azurite, queue_name, "not base64 at all!")
    async with polling(azurite, queue_name, calls, QueueOptions(max_dequeue_count=2, max_polling_interval=0.2)):
        await wait_until(lambda: raw_contents(azurite, f"{queue_name}-poison"), what="the poison message")
    assert calls.messages == []


async def test_a_message_dequeued_too_often_already_is_poisoned_without_running(azurite: Azurite) -> None:
    """A message whose earlier leases ran out (a crashed host) and that has had its tries goes straight to poison."""
    queue_name, calls = unique_queue(), Calls()
    await send_raw(azurite, queue_name, b64("crashed thrice"))
    async with QueueClient.from_connection_string(azurite.queue_connection_string, queue_name) as client:
        for _ in range(3):
            leased = await client.receive_message(visibility_timeout=30)
            assert leased is not None
            await client.update_message(leased.id, leased.pop_receipt, visibility_timeout=0)
    async with polling(azurite, queue_name, calls, QueueOptions(max_dequeue_count=2, max_polling_interval=0.2)):
        await wait_until(lambda: raw_contents(azurite, f"{queue_name}-poison"), what="the poison message")
    assert calls.messages == []


async def test_the_poller_keeps_polling_when_its_queue_is_deleted(azurite: Azurite) -> None:
    """A queue deleted under a running poller is created again, and later messages still run."""
    queue_name, calls = unique_queue(), Calls()
    async with polling(azurite, queue_name, calls):
        await send_raw(azurite, queue_name, b64("one"))
        await wait_until(lambda: len(calls.messages) == 1, what="the first message")
        await delete_queues(azurite, queue_name)
        await asyncio.sleep(0.5)
        await send_raw(azurite, queue_name, b64("two"))
        await wait_until(lambda: len(calls.messages) == 2, what="the message after the queue came back")
    assert [m.get_body() for m in calls.messages] == [b"one", b"two"]


# ---- the local host end to end ----------------------------------------------------------------------------------


ECHO_QUEUE = unique_queue("echo")
FAILING_QUEUE = unique_queue("failing")
MAX_TRIES = 3


@pytest.fixture(scope="module")
def queue_stack(azurite: Azurite) -> Iterator[Stack]:
    """The emulator and the local host running testkit/queue_app.py, with maxDequeueCount 3 in its host.json."""
    host_json = {
        "version": "2.0",
        "extensions": {"queues": {"maxDequeueCount": MAX_TRIES, "maxPollingInterval": "00:00:01"}},
    }
    extra = {"ECHO_QUEUE": ECHO_QUEUE, "FAILING_QUEUE": FAILING_QUEUE}
    with running_stack(azurite, app="testkit.queue_app:app", extra_settings=extra, host_json=host_json) as stack:
        yield stack


def executions(stack: Stack, function: str, outcome: str) -> int:
    """Count the host log's `Executed 'Functions.<function>' (<outcome>` lines."""
    log = (stack.logs / "host.log").read_text(errors="replace")
    return log.count(f"Executed 'Functions.{function}' ({outcome}")


@pytest.mark.slow
async def test_the_local_host_runs_a_queue_function_and_flushes_its_signalr_output(
    queue_stack: Stack, azurite: Azurite
) -> None:
    """A message scheduled with a delay runs the queue function once, after the delay; its signalR output reaches a
    client with the body, and the message is deleted."""
    body = json.dumps({"grace": unique_user("u")})
    sender = QueueDelayedActions(QueueConnection(connection_string=azurite.connection_string), ECHO_QUEUE)
    async with SignalRClients(queue_stack) as clients:
        await clients.connect("listener", unique_user("listener"), targets=["echo", "failing"])
        await sender.schedule(body, delay=timedelta(seconds=1))
        started = asyncio.get_running_loop().time()
        [seen] = await clients.wait_message("listener", "echo")
        assert asyncio.get_running_loop().time() - started >= 0.9
        assert (seen["body"], seen["dequeueCount"]) == (body, 1)
        await wait_until(lambda: _empty(azurite, ECHO_QUEUE), what="the message to be deleted")
        await asyncio.sleep(1.5)
        assert len(clients.received("listener", "echo")) == 1
    await sender.close()
    assert executions(queue_stack, "echo", "Succeeded") == 1


@pytest.mark.slow
async def test_a_queue_function_that_always_fails_ends_in_the_poison_queue(
    queue_stack: Stack, azurite: Azurite
) -> None:
    """The host tries a failing function's message maxDequeueCount (3) times, drops its outputs each time, and then
    moves the message unchanged to <queue>-poison."""
    sender = QueueDelayedActions(QueueConnection(connection_string=azurite.connection_string), FAILING_QUEUE)
    async with SignalRClients(queue_stack) as clients:
        await clients.connect("watcher", unique_user("watcher"), targets=["failing"])
        await sender.schedule("never works", delay=timedelta(0))
        poison = f"{FAILING_QUEUE}-poison"
        await wait_until(lambda: raw_contents(azurite, poison), what=f"the message in {poison}")
        await asyncio.sleep(0.5)
        assert clients.received("watcher", "failing") == []
    await sender.close()
    assert await raw_contents(azurite, poison) == [b64("never works")]
    assert await raw_contents(azurite, FAILING_QUEUE) == []
    assert executions(queue_stack, "failing", "Failed") == MAX_TRIES
