"""Delayed actions on an Azure Storage queue: a message enqueued with an initial visibility delay.

`QueueDelayedActions` implements `mapping.storage.queue.DelayedActions` on the queue a queue-triggered function
reads. Messages are Base64-encoded text, which the Functions queue trigger decodes by default
(`host.json` `extensions.queues.messageEncoding`). The queue is created on first use, and again when it
disappears. Azure errors are translated into the `mapping.errors` tree by `mapping.storage.errors`, as
for the table. Delivery is at least once: a Put Message whose answer is lost is retried and may enqueue the
message twice, so the handler must be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from mapping.errors import ConfigurationError, StorageUnavailableError
from mapping.settings import QueueConnection
from mapping.storage.client import CachedClient, identity_credential
from mapping.storage.errors import ContainerGoneError, Translation, error_code

logger = logging.getLogger(__name__)

MAX_DELAY = timedelta(days=7)  # Put Message: visibilitytimeout is 0 s to 7 days
MESSAGE_TTL_SECONDS = 7 * 24 * 3600  # a message lives this long once it is due (its delay is added to it)
MAX_BODY_BYTES = 48 * 1024  # 64 KiB per message once Base64-encoded


class QueueDelayedActions:
    """Schedules messages on one queue; one client per instance, opened on first use."""

    def __init__(
        self,
        connection: QueueConnection,
        queue_name: str,
        *,
        retry_total: int = 3,
        retry_backoff: float = 0.5,
        connection_timeout: float = 3.0,
        read_timeout: float = 5.0,
        call_timeout: float = 20.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        # The storage SDK's own retry policy (its default first backoff is 15 s) has no overall deadline:
        # here it waits `retry_backoff` seconds (jittered by half) between attempts, and `call_timeout`
        # bounds one schedule(), queue creation included.
        self.connection = connection
        self.queue_name = queue_name
        self._call_timeout = call_timeout
        self._client_options: dict[str, Any] = {
            # The SDK's ExponentialRetry waits initial_backoff + increment_base ** n: a constant with base 0.
            "retry_total": retry_total,
            "initial_backoff": retry_backoff,
            "increment_base": 0,
            "random_jitter_range": retry_backoff / 2,
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
            **(client_options or {}),
            "message_encode_policy": TextBase64EncodePolicy(),
        }
        self._client = CachedClient(self._new_client, self._create_queue)

    async def schedule(self, body: str, *, delay: timedelta) -> None:
        """Enqueue `body`, invisible for `delay` (rounded up to whole seconds; negative means now)."""
        seconds = visibility_seconds(delay)
        if len(body.encode("utf-8")) > MAX_BODY_BYTES:
            raise ValueError(f"a delayed action's body is at most {MAX_BODY_BYTES} bytes of UTF-8")
        action = f"schedule a message on queue {self.queue_name}"
        try:
            async with asyncio.timeout(self._call_timeout):
                await self._send(body, seconds, action)
        except TimeoutError:
            logger.warning("queue storage did not answer within %.0f s (%s)", self._call_timeout, action)
            raise StorageUnavailableError(f"queue storage is unavailable ({action})") from None

    async def close(self) -> None:
        """Close the client and any credential; the next schedule opens them again."""
        await self._client.close()

    async def _send(self, body: str, seconds: int, action: str) -> None:
        for attempt in (1, 2):
            client = await self._client.get()
            try:
                with _TRANSLATION.translated(action):
                    await client.send_message(
                        body, visibility_timeout=seconds, time_to_live=seconds + MESSAGE_TTL_SECONDS
                    )
                return
            except ContainerGoneError:
                # Nothing was enqueued: create the queue again and send once more.
                self._client.vanished()
                if attempt == 2:
                    raise

    async def _create_queue(self, client: QueueClient) -> None:
        with _TRANSLATION.translated(f"create queue {self.queue_name}"):
            try:
                await client.create_queue()
                logger.info("created queue %s", self.queue_name)
            except ResourceExistsError as error:
                if error_code(error) == "QueueBeingDeleted":
                    raise ContainerGoneError(
                        f"queue {self.queue_name} is being deleted", retry_after_seconds=30
                    ) from None

    def _new_client(self) -> tuple[QueueClient, AsyncTokenCredential | None]:
        connection = self.connection
        if connection.connection_string:
            try:
                client = QueueClient.from_connection_string(
                    connection.connection_string, self.queue_name, **self._client_options
                )
                return client, None
            except ValueError:
                raise ConfigurationError(f"the connection string in {connection.source} is malformed") from None
        assert connection.queue_service_uri is not None
        credential = identity_credential(connection.client_id, managed=connection.managed_identity)
        try:
            client = QueueClient(
                connection.queue_service_uri, self.queue_name, credential=credential, **self._client_options
            )
        except ValueError as error:
            asyncio.get_running_loop().create_task(credential.close())
            raise ConfigurationError(f"{connection.source}__queueServiceUri is not usable: {error}") from None
        return client, credential


def visibility_seconds(delay: timedelta) -> int:
    """Return a delay as Put Message's visibility timeout: whole seconds rounded up, 0 to 7 days."""
    if delay > MAX_DELAY:
        raise ValueError(f"a delay is at most {MAX_DELAY.days} days")
    return max(0, -(-delay // timedelta(seconds=1)))


_TRANSLATION = Translation("queue", gone_code="QueueNotFound")


class DelayedActions(Protocol):
    """Where the app schedules a message to itself, to be handled no sooner than `delay` from now."""

    async def schedule(self, body: str, *, delay: timedelta) -> None:
        """Schedule `body` (text) for delivery after `delay`; raise StorageError when it could not be sent."""
        ...

    async def close(self) -> None:
        """Release the client; the next schedule opens it again."""
        ...
