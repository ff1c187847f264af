"""Ask Azure SignalR Service which connections are still open (data-plane REST API).

Two questions: `HEAD /api/hubs/{hub}/connections/{id}` (2022-06-01) about one connection, and, since
2024-12-01, `GET /api/hubs/{hub}/groups/{group}/connections` listing a group's connections in pages
of at most 200. Every mapped connection joins one of K listing groups (`listing_group`: `~connections.<k>` by a
hash of the connection id, K from MAPPING_LISTING_GROUPS; K = 1 is the one hub-wide `~connections` of before)
when it connects, so listing the K groups concurrently (`list_groups`) tells the sweep which connections the
service still has. A connection in none of them (K changed since it connected) is HEAD-checked and added to its
group again, so changing K loses nobody. The same client also adds a
connection to a group at once (`PUT .../groups/{group}/connections/{id}`), for a snapshot that must not
miss a change: the group first, then the read (`mapping.events`, join and watch).

A 404 means "does not exist" only with the `x-ms-error-code` the service sends for it; a bare 404 (a wrong endpoint,
a proxy, a route the service lacks) says nothing about the connection. As the Management SDK reads them
(Azure/azure-signalr @ 31686ed, src/Microsoft.Azure.SignalR.Management/RestHubLifetimeManager.cs,
`FilterExpectedResponse`; the codes in src/Microsoft.Azure.SignalR.Common/Constants.cs):

- HEAD .../connections/{id} (`check`): 200 is ALIVE; 404 with Warning.Connection.NotExisted (or
  Error.Connection.NotExisted) is GONE; any other 404, any other status or no answer is UNKNOWN (429: wait, ask again).
- PUT .../groups/{group}/connections/{id} (`add_to_group`): 2xx is True; 404 with a connection's not-existed code is
  False and no failure (not added: the connection is gone); anything else is False, logged.
- DELETE .../groups/{group}/connections/{id} (`remove_from_group`): 2xx (what the service answers for a gone connection
  too) or 404 with a connection's not-existed code is True (in no group); anything else, a bare 404 included, False.
- DELETE .../connections/{id} (`close_connection`): 2xx, or 404 with a connection's not-existed code, is True;
  POST .../users/{user}/:closeConnections (`close_user`): 2xx, or 404 with Warning.User.NotExisted, is True; anything
  else, a bare 404 included, False.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from yarl import URL

from mapping.settings import SignalRConnection
from mapping.signalr.tokens import access_key_token
from mapping.storage.client import gather_bounded, identity_credential

logger = logging.getLogger(__name__)

API_VERSION = "2022-06-01"
LIST_API_VERSION = "2024-12-01"
MAPPED_GROUP = "~connections"  # the listing group when K = 1 (and before K existed); `~` is never in a room name
_LISTINGS_IN_FLIGHT = 16  # group listings at once
_LIST_PAGE_SIZE = 200
_UNSUPPORTED = frozenset({400, 404, 501})  # an older service: no listing
TOKEN_SCOPE = "https://signalr.azure.com/.default"  # noqa: S105 - an OAuth scope, not a secret
_MAX_RETRY_AFTER_SECONDS = 30
ERROR_CODE_HEADER = "x-ms-error-code"
# "The connection does not exist", as the service says it on a 404 (Azure/azure-signalr @ 31686ed,
# src/Microsoft.Azure.SignalR.Common/Constants.cs `ErrorCodes`): HEAD and DELETE of a connection send the warning, a
# PUT into a group the error; either names the same fact, so either is read as it on every connection route.
_CONNECTION_NOT_EXISTED = frozenset({"warning.connection.notexisted", "error.connection.notexisted"})
_USER_NOT_EXISTED = frozenset({"warning.user.notexisted"})  # HEAD .../users/{user} (`UserExistsAsync`)


class Liveness(enum.Enum):
    """What the service said about a connection."""

    ALIVE = "alive"  # 200: the connection is open
    GONE = "gone"  # 404 with the service's "connection does not exist" code: the service does not know it
    UNKNOWN = "unknown"  # anything else, a bare 404 included: ask again later


class Listing(enum.Enum):
    """How a group listing went."""

    LISTED = "listed"  # the service listed the group: `connection_ids` is complete
    UNSUPPORTED = "unsupported"  # an older service (404, 400, 501): ask about connections one by one
    UNAVAILABLE = "unavailable"  # the service could not be reached or failed: nobody can be judged


@dataclass(frozen=True, slots=True)
class GroupMembers:
    """A group's connections as the service listed them."""

    listing: Listing
    connection_ids: frozenset[str] = frozenset()
    requests: int = 0


def listing_group(connection_id: str, groups: int) -> str:
    """Return the listing group a connection joins: one of `groups`, the same on every instance."""
    if groups <= 1:
        return MAPPED_GROUP
    shard = int.from_bytes(hashlib.sha256(connection_id.encode()).digest()[:8], "big") % groups
    return f"{MAPPED_GROUP}.{shard}"


def listing_groups(groups: int) -> list[str]:
    """Return every listing group of a deployment with `groups` of them."""
    return [MAPPED_GROUP] if groups <= 1 else [f"{MAPPED_GROUP}.{shard}" for shard in range(groups)]


async def list_groups(check: LivenessCheck, hub: str, groups: list[str], *, deadline: float) -> GroupMembers:
    """List `groups` concurrently (a bounded number at once) into one answer: listed only if every one was."""

    async def one(group: str) -> GroupMembers:
        return await check.members(hub, group, deadline=deadline)

    answers = await gather_bounded(groups, one, limit=_LISTINGS_IN_FLIGHT)
    requests = sum(answer.requests for answer in answers)
    for failed in (Listing.UNAVAILABLE, Listing.UNSUPPORTED):
        if any(answer.listing is failed for answer in answers):
            return GroupMembers(failed, requests=requests)
    return GroupMembers(Listing.LISTED, frozenset().union(*(a.connection_ids for a in answers)), requests=requests)


class LivenessCheck(Protocol):
    """Asks the service which connections are open; the sweep's seam to the service (and to test fakes)."""

    asks_service: bool  # False: no service to ask, a row's age alone decides (`AgeOnly`)

    async def check(self, hub: str, connection_id: str) -> Liveness:
        """Return ALIVE, GONE, or UNKNOWN when the service cannot say."""
        ...

    async def members(self, hub: str, group: str, *, deadline: float) -> GroupMembers:
        """List a group's connections (stopping at the monotonic `deadline`), or say why not."""
        ...


class GroupAdder(Protocol):
    """Adds a connection to a group, or removes it, before the function returns (its output binding would act only
    after, and unconfirmed)."""

    asks_service: bool  # False: no service to ask (`AgeOnly`): group actions are the output binding's alone

    async def add_to_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Return whether the service confirmed the addition (False: it is left to the output binding)."""
        ...

    async def remove_from_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Return whether the service confirmed the removal (False: it is left to the output binding)."""
        ...


class ConnectionCloser(Protocol):
    """Closes a user's connections through the service's REST API (an operator's disconnect)."""

    async def close_user(self, hub: str, user_id: str, *, reason: str) -> bool:
        """Close every connection the service has of `user_id` (matched exactly); False when it did not confirm."""
        ...

    async def close_connection(self, hub: str, connection_id: str, *, reason: str) -> bool:
        """Close one connection; False when the service did not confirm it."""
        ...


class AgeOnly:
    """The check of a deployment without SignalR REST access: it never asks, so a row's age alone decides."""

    asks_service = False

    async def check(self, hub: str, connection_id: str) -> Liveness:
        """Return UNKNOWN: nobody is asked; the sweep judges the row by its age."""
        return Liveness.UNKNOWN

    async def members(self, hub: str, group: str, *, deadline: float) -> GroupMembers:
        """Return UNSUPPORTED: there is no listing to ask for."""
        return GroupMembers(Listing.UNSUPPORTED)

    async def add_to_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Return False: without REST access only the output binding adds connections to groups."""
        return False

    async def remove_from_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Return False: without REST access only the output binding removes connections from groups."""
        return False

    async def close_user(self, hub: str, user_id: str, *, reason: str) -> bool:
        """Return False: without REST access no connection can be closed."""
        return False

    async def close_connection(self, hub: str, connection_id: str, *, reason: str) -> bool:
        """Return False: without REST access no connection can be closed."""
        return False


AGE_ONLY = AgeOnly()


class SignalRLiveness:
    """Checks connections with `HEAD /api/hubs/{hub}/connections/{id}`: bounded concurrency, timeouts, 429-aware."""

    asks_service = True

    def __init__(
        self,
        connection: SignalRConnection,
        *,
        concurrency: int = 16,
        timeout_seconds: float = 5.0,
        max_attempts: int = 3,
    ) -> None:
        self.connection = connection
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_attempts = max_attempts
        self._paused_until = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._credential: AsyncTokenCredential | None = None
        self._token: tuple[str, float] | None = None

    async def check(self, hub: str, connection_id: str) -> Liveness:
        """Return whether the service still has the connection; UNKNOWN when it cannot say."""
        url = f"{self.connection.endpoint}/api/hubs/{quote(hub, safe='')}/connections/{quote(connection_id, safe='')}"
        for _attempt in range(self._max_attempts):
            await self._wait_if_throttled()
            async with self._slots:
                status, retry_after, code = await self._head(url)
            if status == 200:
                return Liveness.ALIVE
            if status == 404:
                if _says(status, code, _CONNECTION_NOT_EXISTED):
                    return Liveness.GONE
                logger.warning("liveness check: 404 without the service's not-existed code (%r): unknown", code)
                return Liveness.UNKNOWN
            if status != 429:
                return Liveness.UNKNOWN
            self._throttle(retry_after)
        return Liveness.UNKNOWN

    async def members(self, hub: str, group: str, *, deadline: float) -> GroupMembers:
        """List a group's connections page by page (2024-12-01), following `nextLink`."""
        url: str | None = (
            f"{self.connection.endpoint}/api/hubs/{quote(hub, safe='')}/groups/{quote(group, safe='')}/connections"
        )
        query: dict[str, str] | None = {"api-version": LIST_API_VERSION, "maxpagesize": str(_LIST_PAGE_SIZE)}
        ids: set[str] = set()
        requests = 0
        while url is not None:
            if time.monotonic() > deadline:
                logger.warning("group listing: out of time after %d pages", requests)
                return GroupMembers(Listing.UNAVAILABLE, requests=requests)
            status, page = await self._get_page(url, query)
            requests += 1
            if status in _UNSUPPORTED and requests == 1:
                logger.info("group listing not supported (%s): checking connections one by one", status)
                return GroupMembers(Listing.UNSUPPORTED, requests=requests)
            if status != 200 or page is None:
                logger.warning("group listing failed (%s): no connection is judged this time", status)
                return GroupMembers(Listing.UNAVAILABLE, requests=requests)
            ids.update(_connection_ids(page))
            url, query = _next_link(self.connection.endpoint, page), None
        return GroupMembers(Listing.LISTED, frozenset(ids), requests=requests)

    async def add_to_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Add a connection to a group now; False when the service did not confirm it (best effort), or answered
        that the connection does not exist (404 with its code: not added, and no failure)."""
        return await self._group_action("PUT", hub, group, connection_id)

    async def remove_from_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Remove a connection from a group now (`DELETE .../groups/{group}/connections/{id}`); False when the service
        did not confirm it (a connection it says does not exist, 404 with its code, is in no group: True)."""
        return await self._group_action("DELETE", hub, group, connection_id)

    async def _group_action(self, method: str, hub: str, group: str, connection_id: str) -> bool:
        url = (
            f"{self.connection.endpoint}/api/hubs/{quote(hub, safe='')}/groups/{quote(group, safe='')}"
            f"/connections/{quote(connection_id, safe='')}"
        )
        try:
            await self._wait_if_throttled()
            headers = {"Authorization": f"Bearer {await self._bearer(url)}"}
            async with (
                self._slots,
                self._http().request(method, url, params={"api-version": API_VERSION}, headers=headers) as response,
            ):
                if response.status == 429:
                    self._throttle(_retry_after(response.headers.get("Retry-After")))
                if 200 <= response.status < 300:
                    return True
                if _says(response.status, response.headers.get(ERROR_CODE_HEADER), _CONNECTION_NOT_EXISTED):
                    return method == "DELETE"  # gone: in no group, so removed; and not added
                logger.warning("group action %s answered %d", method, response.status)
                return False
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            logger.warning("group action failed: %s", type(error).__name__)
        except Exception as error:  # a credential failure: the output binding's group action still follows
            logger.warning("group action could not authenticate: %s", type(error).__name__)
        return False

    async def close_user(self, hub: str, user_id: str, *, reason: str) -> bool:
        """Close every connection of a user (`POST .../users/{user}/:closeConnections`, 2024-12-01: 204); False when the
        service did not confirm it."""
        url = (
            f"{self.connection.endpoint}/api/hubs/{quote(hub, safe='')}/users/{quote(user_id, safe='')}"
            "/:closeConnections"
        )
        return await self._close("POST", url, reason=reason, not_existed=_USER_NOT_EXISTED)

    async def close_connection(self, hub: str, connection_id: str, *, reason: str) -> bool:
        """Close one connection (`DELETE .../connections/{id}`: 200, or 404 with the service's code for a connection
        it does not have); False when the service did not confirm it."""
        url = f"{self.connection.endpoint}/api/hubs/{quote(hub, safe='')}/connections/{quote(connection_id, safe='')}"
        return await self._close("DELETE", url, reason=reason, not_existed=_CONNECTION_NOT_EXISTED)

    async def _close(self, method: str, url: str, *, reason: str, not_existed: frozenset[str]) -> bool:
        try:
            await self._wait_if_throttled()
            headers = {"Authorization": f"Bearer {await self._bearer(url)}"}
            query = {"api-version": LIST_API_VERSION, "reason": reason}
            async with self._slots, self._http().request(method, url, params=query, headers=headers) as response:
                if response.status == 429:
                    self._throttle(_retry_after(response.headers.get("Retry-After")))
                if 200 <= response.status < 300:
                    return True
                # 404 with the code: no such connection or user, so none is open; a bare 404 confirms nothing.
                if _says(response.status, response.headers.get(ERROR_CODE_HEADER), not_existed):
                    return True
                logger.warning("closing connections answered %d", response.status)
                return False
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            logger.warning("closing connections failed: %s", type(error).__name__)
        except Exception as error:  # a credential failure
            logger.warning("closing connections could not authenticate: %s", type(error).__name__)
        return False

    async def close(self) -> None:
        """Close the HTTP session and any credential."""
        session, credential = self._session, self._credential
        self._session = self._credential = None
        if session is not None:
            await session.close()
        if credential is not None:
            await credential.close()

    async def _head(self, url: str) -> tuple[int | None, float | None, str | None]:
        """HEAD a connection: the status, its Retry-After, its `x-ms-error-code` (None, None, None: no answer)."""
        try:
            headers = {"Authorization": f"Bearer {await self._bearer(url)}"}
            async with self._http().head(url, params={"api-version": API_VERSION}, headers=headers) as response:
                retry_after = _retry_after(response.headers.get("Retry-After"))
                return response.status, retry_after, response.headers.get(ERROR_CODE_HEADER)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            logger.warning("liveness check failed: %s", type(error).__name__)
            return None, None, None
        except Exception as error:  # a credential failure must not stop the sweep; the row is kept
            logger.warning("liveness check could not authenticate: %s", type(error).__name__)
            return None, None, None

    async def _get_page(self, url: str, query: dict[str, str] | None) -> tuple[int | None, dict[str, Any] | None]:
        for _attempt in range(self._max_attempts):
            await self._wait_if_throttled()
            try:
                audience = str(URL(url).with_query(None))
                headers = {"Authorization": f"Bearer {await self._bearer(audience)}"}
                async with self._http().get(URL(url, encoded=True), params=query, headers=headers) as response:
                    if response.status == 429:
                        self._throttle(_retry_after(response.headers.get("Retry-After")))
                        continue
                    if response.status != 200:
                        return response.status, None
                    body = await response.json(content_type=None)
                    return 200, body if isinstance(body, dict) else None
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
                logger.warning("group listing failed: %s", type(error).__name__)
                return None, None
            except Exception as error:  # a credential failure must not stop the sweep; nothing is judged
                logger.warning("group listing could not authenticate: %s", type(error).__name__)
                return None, None
        return 429, None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _bearer(self, url: str) -> str:
        if self.connection.access_key:
            return access_key_token(self.connection.access_key, audience=url)
        if self._token and self._token[1] > time.time() + 60:
            return self._token[0]
        if self._credential is None:
            self._credential = identity_credential(self.connection.client_id)
        token = await self._credential.get_token(TOKEN_SCOPE)
        self._token = (token.token, float(token.expires_on))
        return token.token

    async def _wait_if_throttled(self) -> None:
        delay = self._paused_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _throttle(self, retry_after: float | None) -> None:
        # One 429 pauses every check of this instance: the service throttles per instance, not per call.
        pause = retry_after if retry_after is not None else 1.0
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        logger.info("liveness checks throttled for %.1f s", pause)


def _connection_ids(page: dict[str, Any]) -> list[str]:
    value = page.get("value")
    items = value if isinstance(value, list) else []
    return [
        item["connectionId"] for item in items if isinstance(item, dict) and isinstance(item.get("connectionId"), str)
    ]


def _next_link(endpoint: str, page: dict[str, Any]) -> str | None:
    link = page.get("nextLink")
    if not isinstance(link, str) or not link:
        return None
    return link if link.startswith(("http://", "https://")) else endpoint + "/" + link.lstrip("/")


def _says(status: int | None, code: str | None, codes: frozenset[str]) -> bool:
    """Whether an answer is a 404 whose (first) `x-ms-error-code` is one of `codes` (lower case), ignoring case, as
    the Management SDK compares it."""
    return status == 404 and code is not None and code.strip().casefold() in codes


def _retry_after(header: str | None) -> float | None:
    try:
        return min(max(float(header), 0.0), _MAX_RETRY_AFTER_SECONDS) if header else None
    except ValueError:
        return None
