"""Upstream calls: what the service POSTs to the function app on connect, disconnect and client invocations."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

logger = logging.getLogger(__name__)

CONNECTIONS = "connections"
MESSAGES = "messages"


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    """The app's answer to one upstream call (status 0 when it could not be reached)."""

    status: int
    body: bytes = b""

    @property
    def ok(self) -> bool:
        """Tell whether the app accepted the call (2xx)."""
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Caller:
    """The connection an upstream call is about."""

    hub: str
    connection_id: str
    user_id: str | None
    claims: Sequence[tuple[str, str]]
    query: str


def signature(connection_id: str, keys: Sequence[str]) -> str:
    """Return the `X-ASRS-Signature` value: `sha256=<hex>` of the connection id under each access key."""
    return ",".join(
        "sha256=" + hmac.new(key.encode(), connection_id.encode(), hashlib.sha256).hexdigest() for key in keys
    )


def expand_url(template: str, *, hub: str, category: str, event: str) -> str:
    """Fill the `{hub}`, `{category}` and `{event}` placeholders of an upstream URL template."""
    return (
        template.replace("{hub}", quote(hub, safe=""))
        .replace("{category}", quote(category, safe=""))
        .replace("{event}", quote(event, safe=""))
    )


class Upstream:
    """POSTs events to the app's SignalR webhook."""

    def __init__(self, url_template: str, keys: Sequence[str], *, timeout: float) -> None:
        self.url_template = url_template
        self.keys = list(keys)
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def call(self, caller: Caller, *, category: str, event: str, body: dict[str, Any]) -> UpstreamResult:
        """POST one event; never raises for an unreachable or failing app (the service does not retry). The headers
        are the service's own (`HttpUpstreamTrigger` in Microsoft's emulator): no User-Agent, the browser's neither."""
        url = expand_url(self.url_template, hub=caller.hub, category=category, event=event)
        headers = {
            "Content-Type": "application/json",
            "X-ASRS-Hub": caller.hub,
            "X-ASRS-Category": category,
            "X-ASRS-Event": event,
            "X-ASRS-Connection-Id": caller.connection_id,
            "X-ASRS-Signature": signature(caller.connection_id, self.keys),
        }
        if caller.user_id:
            headers["X-ASRS-User-Id"] = caller.user_id
        if caller.claims:
            headers["X-ASRS-User-Claims"] = ", ".join(f"{name}: {value}" for name, value in caller.claims)
        if caller.query:
            headers["X-ASRS-Client-Query"] = caller.query
        payload = json.dumps(body, ensure_ascii=False).encode()
        try:
            async with self._client().post(url, data=payload, headers=headers) as response:
                result = UpstreamResult(response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError) as error:
            logger.warning("upstream %s/%s for %s failed: %s", category, event, caller.connection_id, error)
            return UpstreamResult(0)
        level = logging.INFO if result.ok else logging.WARNING
        logger.log(level, "upstream %s/%s for %s: %d", category, event, caller.connection_id, result.status)
        return result

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout, skip_auto_headers=["User-Agent"])
        return self._session
