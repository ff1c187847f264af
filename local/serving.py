"""What the local servers (the SignalR emulator and the local host) share as processes: logging, running, stopping."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any


def run(serve: Coroutine[Any, Any, None], *, log_level: str, log_format: str, quiet_logger: str) -> int:
    """Set up logging (`quiet_logger` at warnings only), run `serve` to its end; return the exit status."""
    logging.basicConfig(level=log_level.upper(), format=log_format)
    logging.getLogger(quiet_logger).setLevel(logging.WARNING)
    asyncio.run(serve)
    return 0


async def until_stopped() -> None:
    """Return once SIGINT or SIGTERM arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
