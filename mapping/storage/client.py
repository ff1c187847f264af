"""A storage client opened on first use with its container (table, queue) created, and created again if it vanishes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, Protocol, TypeVar

from azure.core.credentials_async import AsyncTokenCredential


class _Closable(Protocol):
    async def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Closable)


class CachedClient(Generic[ClientT]):
    """One client per owner: `get()` opens it (and its credential) once, `vanished()` has the container made again."""

    def __init__(
        self,
        new_client: Callable[[], tuple[ClientT, AsyncTokenCredential | None]],
        create: Callable[[ClientT], Awaitable[None]],
    ) -> None:
        self._new_client = new_client
        self._create = create
        self._client: ClientT | None = None
        self._credential: AsyncTokenCredential | None = None
        self._lock = asyncio.Lock()
        self._missing = False

    async def get(self) -> ClientT:
        """Return the client, opening it and creating its container on first use or after `vanished()`."""
        if self._client is not None and not self._missing:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._open()
            elif self._missing:
                # The container vanished under the cached client (deleted, or an emulator restarted):
                # create it again, as on first use, instead of failing until the process restarts.
                await self._create(self._client)
                self._missing = False
            return self._client

    def vanished(self) -> None:
        """Note that the service answered that the container does not exist."""
        self._missing = True

    async def close(self) -> None:
        """Close the client and any credential; the next `get()` opens them again."""
        async with self._lock:
            client, credential = self._client, self._credential
            self._client = self._credential = None
        if client is not None:
            await client.close()
        if credential is not None:
            await credential.close()

    async def _open(self) -> ClientT:
        client, credential = self._new_client()
        try:
            await self._create(client)
        except BaseException:
            await client.close()
            if credential is not None:
                await credential.close()
            raise
        self._credential = credential
        return client


def identity_credential(client_id: str | None, *, managed: bool = False) -> AsyncTokenCredential:
    """Return a managed identity (user-assigned for `client_id`, or system-assigned when `managed`), else
    DefaultAzureCredential."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    if managed:
        return ManagedIdentityCredential()
    return DefaultAzureCredential()


_Item = TypeVar("_Item")
_Answer = TypeVar("_Answer")


async def gather_bounded(
    items: Iterable[_Item], call: Callable[[_Item], Awaitable[_Answer]], *, limit: int
) -> list[_Answer]:
    """Return `call(item)` of every item in the items' order, with at most `limit` calls in flight."""
    slots = asyncio.Semaphore(limit)

    async def one(item: _Item) -> _Answer:
        async with slots:
            return await call(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
