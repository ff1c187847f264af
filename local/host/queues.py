"""Queue triggers: poll a storage queue (Azurite locally) and run a function on each message, as the Functions host.

A message is leased for 10 minutes when received (a crashed host's message comes back after that), deleted
when the function succeeds, released to be tried again after `visibilityTimeout` when it fails, and moved
to `<queue>-poison` once it has been tried `maxDequeueCount` times. The options come from `host.json`
`extensions.queues`, with the Functions host's defaults when absent; an idle queue is polled as the Functions host
polls it (`PollingBackoff`), at most `maxPollingInterval` apart (see README.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.functions.queue import QueueMessage as TriggerMessage
from azure.storage.queue import QueueMessage as StoredMessage
from azure.storage.queue.aio import QueueClient

from local.host import settings
from local.host.functions import FunctionSpec

logger = logging.getLogger(__name__)

DEFAULT_CONNECTION = "AzureWebJobsStorage"
LEASE_SECONDS = 600  # the Functions host's visibility timeout while a message is being processed
# The storage queues extension's polling (Azure/azure-sdk-for-net, sdk/storage/
# Microsoft.Azure.WebJobs.Extensions.Storage.Common/src/Shared/Queues/QueuePollingIntervals.cs): at least 100 ms
# apart, at most a minute by default; Timers/RandomizedExponentialBackoffStrategy.cs randomizes each step by 20%.
MIN_POLL_SECONDS = 0.1
DEFAULT_MAX_POLL_SECONDS = 60.0
POLL_RANDOMIZATION = 0.2
POISON_SUFFIX = "-poison"
_QUEUE_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)$")

Invoke = Callable[[func.QueueMessage], Awaitable[Any]]


@dataclass(frozen=True)
class QueueOptions:
    """`host.json` `extensions.queues`: what the local host honours, with its local defaults."""

    message_encoding: str = "base64"
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0  # seconds before a failed message is tried again (the host's default)
    batch_size: int = 16
    max_polling_interval: float = DEFAULT_MAX_POLL_SECONDS  # the Functions host's default, deployed

    @classmethod
    def from_host_json(cls, document: Mapping[str, Any]) -> QueueOptions:
        """Read `extensions.queues` of a parsed host.json; a bad value raises SettingsError."""
        extensions = document.get("extensions")
        queues = extensions.get("queues") if isinstance(extensions, Mapping) else None
        if not isinstance(queues, Mapping):
            return cls()
        encoding = str(queues.get("messageEncoding", cls.message_encoding)).lower()
        if encoding not in ("base64", "none"):
            raise settings.SettingsError(f"host.json: messageEncoding must be base64 or none, not {encoding!r}")
        return cls(
            message_encoding=encoding,
            max_dequeue_count=_count(queues, "maxDequeueCount", cls.max_dequeue_count, maximum=1000),
            visibility_timeout=_seconds(queues, "visibilityTimeout", cls.visibility_timeout),
            batch_size=_count(queues, "batchSize", cls.batch_size, maximum=32),
            max_polling_interval=_polling_interval(queues),
        )


@dataclass(frozen=True)
class QueueBinding:
    """A queue trigger's queue and the connection string it is read with."""

    queue_name: str
    connection_string: str

    @property
    def poison_queue_name(self) -> str:
        """Return the queue that takes messages which failed `maxDequeueCount` times."""
        return self.queue_name + POISON_SUFFIX

    @classmethod
    def of(cls, trigger: Mapping[str, Any]) -> QueueBinding:
        """Resolve a `queueTrigger` binding's `queueName` (`%SETTING%` allowed) and `connection` app setting."""
        queue_name = settings.resolve(str(trigger.get("queueName") or ""))
        if not _QUEUE_NAME.match(queue_name):
            raise settings.SettingsError(f"{queue_name!r} is not a queue name (3-63 lowercase letters, digits, -)")
        name = str(trigger.get("connection") or DEFAULT_CONNECTION)
        value = settings.setting(name)
        if value is None:
            identity = settings.setting(f"{name}__queueServiceUri") or settings.setting(f"{name}__accountName")
            hint = " (identity-based connections are not served locally)" if identity else ""
            raise settings.SettingsError(f"the app setting {name!r} (a storage connection string) is not set{hint}")
        try:
            QueueClient.from_connection_string(value, queue_name)  # parses only; opens nothing
        except ValueError:
            raise settings.SettingsError(
                f"the app setting {name!r} is not a usable storage connection string"
            ) from None
        return cls(queue_name, value)


def _count(queues: Mapping[str, Any], name: str, default: int, *, maximum: int) -> int:
    value = queues.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise settings.SettingsError(f"host.json: {name} must be a whole number from 1 to {maximum}, not {value!r}")
    return value


def _seconds(queues: Mapping[str, Any], name: str, default: float) -> float:
    """Read a host.json timespan (`hh:mm:ss[.fff]`, optionally `d.` first) as seconds."""
    value = queues.get(name)
    if value is None:
        return default
    match = _TIMESPAN.match(str(value))
    if not match:
        raise settings.SettingsError(f"host.json: {name} must be a timespan like 00:00:02, not {value!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _polling_interval(queues: Mapping[str, Any]) -> float:
    """Read `maxPollingInterval`: below 100 ms the Functions host refuses it (QueuesOptions.MaxPollingInterval)."""
    value = _seconds(queues, "maxPollingInterval", DEFAULT_MAX_POLL_SECONDS)
    if value < MIN_POLL_SECONDS:
        raise settings.SettingsError(f"host.json: maxPollingInterval must not be less than 00:00:00.1, not {value} s")
    return value


class PollingBackoff:
    """The Functions host's wait before the next poll (RandomizedExponentialBackoffStrategy, as QueueListener uses it).

    After a poll that found messages the next follows at once; the first empty one after them waits 0.1 s. The n-th
    empty poll in a row waits 0.1 s + 0.1 s x 2^(n-1) x a random factor in [0.8, 1.2) (about 0.2, 0.3, 0.5, 0.9,
    1.7 s, ...) until that reaches `maximum`, and `maximum` from then on: an idle queue is polled every `maximum`.
    """

    def __init__(self, maximum: float, *, minimum: float = MIN_POLL_SECONDS, rng: random.Random | None = None) -> None:
        if not 0 <= minimum <= maximum:
            raise ValueError(f"the polling interval must be from {minimum} s up, not {maximum} s")
        self.minimum = minimum
        self.maximum = maximum
        self._current = 0.0
        self._exponent = 0
        self._random = rng or random.Random()  # noqa: S311  # jitter, not a secret

    def next_delay(self, found_messages: bool) -> float:
        """Return the wait after an empty poll; `found_messages`: whether polls since the last wait found any."""
        if found_messages:
            self._current, self._exponent = self.minimum, 1
        elif self._current != self.maximum:
            delay = self.minimum
            if self._exponent > 0:
                factor = self._random.uniform(1 - POLL_RANDOMIZATION, 1 + POLL_RANDOMIZATION)
                delay += factor * 2 ** (self._exponent - 1) * self.minimum
            if delay < self.maximum:
                self._current, self._exponent = delay, self._exponent + 1
            else:
                self._current = self.maximum
        return self._current


class QueuePoller:
    """Runs one queue-triggered function on the messages of its queue until cancelled."""

    def __init__(self, spec: FunctionSpec, binding: QueueBinding, options: QueueOptions, invoke: Invoke) -> None:
        self.spec = spec
        self.binding = binding
        self.options = options
        self._invoke = invoke
        self._created: set[str] = set()  # queues created (or found) since the last failed poll
        self._failing = False

    async def run(self) -> None:
        """Poll: at once again after messages; after an empty (or failed) poll, wait as `PollingBackoff` says."""
        queue = self._client(self.binding.queue_name)
        poison = self._client(self.binding.poison_queue_name)
        backoff = PollingBackoff(self.options.max_polling_interval)
        try:
            found = False
            while True:
                messages = await self._poll(queue)
                if messages:
                    found = True
                    await self._handle_batch(queue, poison, messages)
                    continue
                await asyncio.sleep(backoff.next_delay(found))
                found = False
        finally:
            await queue.close()
            await poison.close()

    def _client(self, queue_name: str) -> QueueClient:
        # Raw content both ways: the trigger decodes it, and a poison message keeps the original text.
        # Few, short retries: the poll loop retries anyway.
        return QueueClient.from_connection_string(
            self.binding.connection_string,
            queue_name,
            retry_total=2,
            initial_backoff=0.5,
            increment_base=0,
            random_jitter_range=0.25,
            connection_timeout=3,
            read_timeout=10,
        )

    async def _poll(self, queue: QueueClient) -> list[StoredMessage]:
        """Receive up to `batch_size` messages in one request, leasing them; none when storage fails."""
        try:
            await self._ensure_queue(queue)
            pages = queue.receive_messages(
                messages_per_page=self.options.batch_size, visibility_timeout=LEASE_SECONDS
            ).by_page()
            messages: list[StoredMessage] = []
            async for page in pages:
                messages = [m async for m in page]
                break
        except (AzureError, OSError) as error:
            # Azurite restarted, or the queue was deleted: create it again on the next poll.
            self._created.clear()
            if not self._failing:
                logger.warning("queue %s: cannot poll (%s); retrying", self.binding.queue_name, type(error).__name__)
            self._failing = True
            return []
        if self._failing:
            logger.info("queue %s: polling again", self.binding.queue_name)
            self._failing = False
        return messages

    async def _ensure_queue(self, client: QueueClient) -> None:
        """Create the queue once (the Functions host creates a trigger's queue too)."""
        if client.queue_name in self._created:
            return
        with contextlib.suppress(ResourceExistsError):
            await client.create_queue()
        self._created.add(client.queue_name)

    async def _handle_batch(self, queue: QueueClient, poison: QueueClient, messages: list[StoredMessage]) -> None:
        """Handle a batch concurrently, as the Functions host does; one message's trouble never stops the poller."""
        results = await asyncio.gather(*(self._handle(queue, poison, m) for m in messages), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.error("queue %s: a message could not be handled", self.binding.queue_name, exc_info=result)

    async def _handle(self, queue: QueueClient, poison: QueueClient, message: StoredMessage) -> None:
        """Run the function on one message; then delete, release or poison it."""
        if message.dequeue_count is not None and message.dequeue_count > self.options.max_dequeue_count:
            # Leased before and never finished (a crash): it has had its tries.
            await self._poison(queue, poison, message)
            return
        try:
            await self._invoke(self._trigger_value(message))
        except Exception:  # run() logged it
            await self._failed(queue, poison, message)
            return
        try:
            await queue.delete_message(message.id, message.pop_receipt)
        except AzureError as error:
            logger.warning(
                "queue %s: message %s ran but could not be deleted (%s): it will run again",
                self.binding.queue_name,
                message.id,
                type(error).__name__,
            )

    def _trigger_value(self, message: StoredMessage) -> func.QueueMessage:
        """Build what the worker hands a queue-triggered function: the body and the message's metadata."""
        return TriggerMessage(  # type: ignore[no-untyped-call]  # the worker's class, untyped
            id=message.id,
            body=self._body(message),
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )

    def _body(self, message: StoredMessage) -> bytes:
        content = str(message.content or "")
        if self.options.message_encoding == "none":
            return content.encode("utf-8")
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            logger.error(
                "queue %s: message %s is not Base64 (host.json messageEncoding is base64)",
                self.binding.queue_name,
                message.id,
            )
            raise

    async def _failed(self, queue: QueueClient, poison: QueueClient, message: StoredMessage) -> None:
        if (message.dequeue_count or 0) >= self.options.max_dequeue_count:
            await self._poison(queue, poison, message)
            return
        try:
            await queue.update_message(
                message.id, message.pop_receipt, visibility_timeout=math.ceil(self.options.visibility_timeout)
            )
        except AzureError as error:
            logger.warning(
                "queue %s: message %s could not be released (%s): it comes back after its lease",
                self.binding.queue_name,
                message.id,
                type(error).__name__,
            )

    async def _poison(self, queue: QueueClient, poison: QueueClient, message: StoredMessage) -> None:
        """Copy the message as it is to `<queue>-poison`, then delete it from its queue."""
        try:
            await self._ensure_queue(poison)
            await poison.send_message(message.content)
            await queue.delete_message(message.id, message.pop_receipt)
        except AzureError as error:
            logger.error(
                "queue %s: message %s could not be moved to %s (%s)",
                self.binding.queue_name,
                message.id,
                self.binding.poison_queue_name,
                type(error).__name__,
            )
            return
        logger.warning(
            "queue %s: message %s failed %s times; moved to %s",
            self.binding.queue_name,
            message.id,
            message.dequeue_count,
            self.binding.poison_queue_name,
        )
