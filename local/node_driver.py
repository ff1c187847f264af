"""Real `@microsoft/signalr` clients in one Node process (tests/e2e/signalr_driver.mjs), spoken to in JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "e2e" / "signalr_driver.mjs"
_STDERR_LINES = 20


class NodeDriver:
    """The driver process: commands go in as JSON lines; answers, messages and closes come back as JSON lines."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stderr: list[str] = []
        self._next = 0

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            "node", str(DRIVER), cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )  # fmt: skip
        self._tasks = [asyncio.create_task(self._read_events()), asyncio.create_task(self._read_stderr())]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        process = self._running()
        if process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout=15)
        except TimeoutError:
            process.kill()
            await process.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def first(self, predicate: Callable[[dict[str, Any]], bool], *, within: float) -> dict[str, Any] | None:
        """Return the first event (past or future) matching `predicate`, or None after `within` seconds."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: any(map(predicate, self.events))), within)
            except TimeoutError:
                return None
            return next(event for event in self.events if predicate(event))

    async def request(self, op: str, *, within: float, **fields: Any) -> dict[str, Any] | None:
        """Send one command; return its answer, or None when none comes within `within` seconds.

        Raises ConnectionError when the driver process is gone.
        """
        stdin = self._running().stdin
        assert stdin is not None
        self._next += 1
        request = self._next
        stdin.write((json.dumps({"req": request, "op": op, **fields}) + "\n").encode())
        await stdin.drain()
        return await self.first(lambda event: event.get("req") == request, within=within)

    def stderr_tail(self, lines: int = 3) -> str:
        """Return the driver's last stderr lines, joined on one line."""
        return " | ".join(self._stderr[-lines:])

    def _running(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RuntimeError("the driver is not started: use `async with`")
        return self._process

    async def _read_events(self) -> None:
        stdout = self._running().stdout
        assert stdout is not None
        async for line in stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    async with self._changed:
                        self.events.append(event)
                        self._changed.notify_all()

    async def _read_stderr(self) -> None:
        stderr = self._running().stderr
        assert stderr is not None
        async for line in stderr:
            self._stderr = [*self._stderr[-_STDERR_LINES:], line.decode(errors="replace").rstrip()]
