"""Bounded concurrency: one call over many items, at most a given number in flight, answers in the items' order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

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
