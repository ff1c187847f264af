"""Reading the local emulator's billed outbound messages (`/admin/messages`) from tests and benchmarks."""

from __future__ import annotations

from typing import Any

import aiohttp


async def billed_messages(emulator_url: str, *, reset: bool = False, connection: str | None = None) -> dict[str, Any]:
    """Return the emulator's billed-message counts (`/admin/messages`; those of one `connection`); with `reset`, also
    start them again from 0."""
    method = "DELETE" if reset else "GET"
    url = f"{emulator_url.rstrip('/')}/admin/messages"
    params = {"connection": connection} if connection else {}
    async with aiohttp.ClientSession() as session, session.request(method, url, params=params) as response:
        if response.status != 200:
            raise RuntimeError(f"{method} {url} answered {response.status}: {await response.text()}")
        return dict(await response.json())
