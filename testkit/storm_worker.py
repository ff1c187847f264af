"""One storm worker: a process like one function instance, with its own event loop and its own default store."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

# An event of the storm log: (event id, function, user id, connection id, arguments or None).
Event = tuple[int, str, str, str, list[Any] | None]


def run_lanes(env: dict[str, str], lanes: list[list[Event]], concurrency: int) -> list[dict[str, Any]]:
    """Replay lanes (each in order, lanes concurrently) through the app's functions; return one record per event."""
    os.environ.update(env)
    return asyncio.run(_replay(lanes, concurrency))


async def _replay(lanes: list[list[Event]], concurrency: int) -> list[dict[str, Any]]:
    from mapping.functions import runtime
    from testkit.functions_host import invocation, signalr_event

    records: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(concurrency)

    async def play(lane: list[Event]) -> None:
        async with gate:
            for event_id, function, user, connection, arguments in lane:
                kind = "send" if function == "send_message" else function
                payload = invocation(kind, user_id=user, connection_id=connection, arguments=arguments)
                start = time.monotonic()
                try:
                    out = await signalr_event(function, payload)
                    error = None
                except Exception as failure:  # recorded and asserted on by the test: no event may fail
                    out, error = None, f"{type(failure).__name__}: {failure}"
                presence = [
                    (m["arguments"][0]["version"], m["arguments"][0]["online"])
                    for m in (out.messages if out else [])
                    if m["target"] == "presence"
                ]
                records.append(
                    {"id": event_id, "function": function, "user": user, "connection": connection,
                     "start": start, "end": time.monotonic(), "error": error, "presence": presence}
                )  # fmt: skip

    try:
        await asyncio.gather(*(play(lane) for lane in lanes))
    finally:
        await runtime.reset()
    return records
