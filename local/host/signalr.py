"""The SignalR bindings: connection info for negotiate, output messages and group actions over the REST API.

A `signalR` output is delivered as the Functions extension delivers it (Azure/azure-sdk-for-net,
sdk/signalr/Microsoft.Azure.WebJobs.Extensions.SignalRService/src/Bindings/SignalRAsyncCollector.cs @ 6a0a7cc and
src/Client/AzureSignalRClient.cs @ 1a7d340): item by item, each sent as it is added, through the Management SDK, whose
first failure fails the output (the items after it are not sent) and the invocation. The SDK fails a call on any
answer but 2xx, except a 404 whose `x-ms-error-code` says the one thing that call may not find (Azure/azure-signalr
src/Microsoft.Azure.SignalR.Management/RestHubLifetimeManager.cs @ 31686ed, `FilterExpectedResponse`): of the output's
calls only adding a connection to a group has one, `Error.Connection.NotExisted`, so adding a connection that has just
closed fails nothing and the items after it are sent. A bare 404 fails as any error does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from mapping.signalr.tokens import access_key_token

logger = logging.getLogger(__name__)

API_VERSION = "2022-06-01"
ERROR_CODE_HEADER = "x-ms-error-code"  # Azure/azure-signalr src/Microsoft.Azure.SignalR.Common/Constants.cs
# The one output call whose 404 the SDK accepts, and the code it must carry (RestHubLifetimeManager.AddToGroupAsync).
ADD_CONNECTION_NOT_EXISTED = "Error.Connection.NotExisted"
_CONNECTION_IN_GROUP = re.compile(r"^/api/hubs/[^/]+/groups/[^/]+/connections/[^/]+$")  # segments are %-encoded


class SignalRBindingError(Exception):
    """A SignalR binding cannot work: a bad connection string, a bad output value, or the service refused it."""


@dataclass(frozen=True, slots=True)
class ServiceEndpoint:
    """A SignalR Service endpoint with an access key, from a connection string."""

    endpoint: str
    access_key: str

    @classmethod
    def parse(cls, connection_string: str) -> ServiceEndpoint:
        """Parse `Endpoint=...;[Port=...;]AccessKey=...;Version=1.0;`."""
        fields: dict[str, str] = {}
        for part in connection_string.split(";"):
            name, sep, value = part.partition("=")
            if sep:
                fields[name.strip().lower()] = value.strip()
        endpoint, key = fields.get("endpoint"), fields.get("accesskey")
        if not endpoint or not key:
            raise SignalRBindingError(
                "the SignalR connection string needs Endpoint and AccessKey"
                " (identity-based connections work in Azure only)"
            )
        url = URL(endpoint.rstrip("/"))
        if port := fields.get("port"):
            url = url.with_port(int(port))
        return cls(str(url).rstrip("/"), key)

    def client_url(self, hub: str) -> str:
        """Return the URL clients connect to for a hub."""
        return f"{self.endpoint}/client/?hub={quote(hub, safe='')}"

    def token(self, audience: str, **claims: Any) -> str:
        """Return an HS256 access token for `audience`, valid for an hour."""
        now = int(time.time())
        return access_key_token(self.access_key, audience=audience, claims={"iat": now, "nbf": now, **claims})

    def connection_info(self, hub: str, user_id: str | None) -> str:
        """Return the `signalRConnectionInfo` value: `{"url", "accessToken"}` as JSON."""
        url = self.client_url(hub)
        claims = {"nameid": user_id} if user_id else {}
        return json.dumps({"url": url, "accessToken": self.token(url, **claims)})

    def signature_matches(self, connection_id: str, header: str) -> bool:
        """Check `X-ASRS-Signature` (`sha256=<hex>[,sha256=<hex>]`): any entry may match, compared in constant time."""
        expected = hmac.new(self.access_key.encode(), connection_id.encode(), hashlib.sha256).hexdigest()
        matched = False
        for entry in header.split(","):
            algorithm, _, digest = entry.strip().partition("=")
            if algorithm.lower() == "sha256" and hmac.compare_digest(digest.lower().encode(), expected.encode()):
                matched = True
        return matched


class SignalRClient:
    """Delivers `signalR` output values through the service's data-plane REST API."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, service: ServiceEndpoint, hub: str, value: Any) -> int:
        """Send every message and apply every group action of one output value; return how many were processed."""
        items = _items(value)
        for item in items:
            method, path, body = _request_for(hub, item)
            await self._call(service, method, path, body, accepted_code=_accepted_not_found(method, path))
        return len(items)

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        service: ServiceEndpoint,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        accepted_code: str | None = None,
    ) -> None:
        """Make one REST call; raise SignalRBindingError unless it answered 2xx, or 404 with `accepted_code`."""
        url = service.endpoint + path
        headers = {"Authorization": f"Bearer {service.token(url)}"}
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        target = URL(f"{url}?api-version={API_VERSION}", encoded=True)
        try:
            async with self._client().request(method, target, data=data, headers=headers) as response:
                if accepted_code is not None and not_found_with(response.status, response.headers, accepted_code):
                    logger.info("SignalR REST %s %s answered 404 %s: done, as in Azure", method, path, accepted_code)
                    return
                if not 200 <= response.status < 300:
                    detail = (await response.text())[:200]
                    raise SignalRBindingError(f"SignalR REST {method} {path} answered {response.status}: {detail}")
        except (aiohttp.ClientError, TimeoutError) as error:
            raise SignalRBindingError(f"SignalR REST {method} {path} failed: {error}") from None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session


def not_found_with(status: int, headers: Mapping[str, str], code: str) -> bool:
    """Whether an answer is the 404 the SDK takes as done: its first `x-ms-error-code` is `code`, ignoring case."""
    return status == 404 and headers.get(ERROR_CODE_HEADER, "").strip().casefold() == code.casefold()


def _accepted_not_found(method: str, path: str) -> str | None:
    """The `x-ms-error-code` whose 404 completes this output call, as the SDK's: only adding a connection to a
    group (PUT /api/hubs/{hub}/groups/{group}/connections/{id}) has one."""
    return ADD_CONNECTION_NOT_EXISTED if method == "PUT" and _CONNECTION_IN_GROUP.match(path) else None


def _items(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, bytes | str):
        try:
            value = json.loads(value)
        except ValueError:
            raise SignalRBindingError("a signalR output must be JSON: a message, a group action, or an array") from None
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, dict) for item in items):
        raise SignalRBindingError("each signalR output item must be a JSON object")
    return items


def _segment(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise SignalRBindingError(f"{what} must be a non-empty string")
    return quote(value, safe="")


def _request_for(hub: str, item: Mapping[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """Map one output item to its REST call: (method, path, body)."""
    base = f"/api/hubs/{_segment(hub, 'the hub')}"
    fields = {key.lower(): value for key, value in item.items()}
    # As the extension's output converter: an item with a target is a message, else it must be a group action.
    if "target" not in fields and "action" in fields:
        return _group_action(base, fields)
    target = fields.get("target")
    if not isinstance(target, str) or not target:
        raise SignalRBindingError("a signalR message needs a non-empty string 'target'")
    arguments = fields.get("arguments") or []
    if not isinstance(arguments, list):
        raise SignalRBindingError("a signalR message's 'arguments' must be an array")
    body = {"target": target, "arguments": arguments}
    if fields.get("connectionid"):
        return "POST", f"{base}/connections/{_segment(fields['connectionid'], 'connectionId')}/:send", body
    if fields.get("userid"):
        return "POST", f"{base}/users/{_segment(fields['userid'], 'userId')}/:send", body
    if fields.get("groupname"):
        return "POST", f"{base}/groups/{_segment(fields['groupname'], 'groupName')}/:send", body
    return "POST", f"{base}/:send", body


def _group_action(base: str, fields: Mapping[str, Any]) -> tuple[str, str, None]:
    action = str(fields["action"]).lower()
    connection, user = fields.get("connectionid"), fields.get("userid")
    if not connection and not user:
        raise SignalRBindingError("a group action needs a connectionId or a userId")
    if action == "removeall":
        if connection:
            return "DELETE", f"{base}/connections/{_segment(connection, 'connectionId')}/groups", None
        return "DELETE", f"{base}/users/{_segment(user, 'userId')}/groups", None
    if action not in ("add", "remove"):
        raise SignalRBindingError(f"unknown group action {fields['action']!r} (add, remove or removeAll)")
    method = "PUT" if action == "add" else "DELETE"
    group = _segment(fields.get("groupname"), "groupName")
    if connection:
        return method, f"{base}/groups/{group}/connections/{_segment(connection, 'connectionId')}", None
    return method, f"{base}/users/{_segment(user, 'userId')}/groups/{group}", None
