"""What the local servers (the SignalR emulator and the local host) share as processes: logging, running, stopping."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web


def run(serve: Coroutine[Any, Any, None], *, component: str, log_level: str, quiet_logger: str) -> int:
    """Log with lines tagged `component` (`quiet_logger` at warnings only), run `serve`; return the exit status."""
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s")
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


async def serve_until_stopped(app: web.Application, host: str, port: int, *, banner: str, access_log: bool) -> None:
    """Listen on `host:port`, print `banner` once listening, and serve `app` until SIGINT or SIGTERM."""
    quiet: dict[str, Any] = {} if access_log else {"access_log": None}
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5, **quiet)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        print(banner, flush=True)
        await until_stopped()
    finally:
        await runner.cleanup()
