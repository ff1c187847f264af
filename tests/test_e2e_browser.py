"""End to end in a real browser: two users chat on the demo page in headless Chromium."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from stack import running_stack
from testkit.azurite import ROOT, Azurite

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCRIPT = ROOT / "tests" / "e2e" / "browser_chat.mjs"
STATIC = {
    "/": ROOT / "local" / "demo",
    "/vendor/signalr": ROOT / "node_modules" / "@microsoft" / "signalr" / "dist" / "browser",
}

HAVE_CHROMIUM = CHROMIUM.exists()

pytestmark = pytest.mark.slow


async def test_two_users_chat_on_the_demo_page(azurite: Azurite) -> None:
    """Alice and Bob connect on the demo page, see each other online, exchange a message, and Bob leaves."""
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: run `make install-browser`")
    with running_stack(azurite, static=STATIC) as stack:
        process = await asyncio.create_subprocess_exec(
            "node", str(SCRIPT), f"{stack.host_url}/", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
        except TimeoutError:
            process.kill()
            output, _ = await process.communicate()
        text = output.decode(errors="replace")
        assert process.returncode == 0, f"{text}\n{stack.log_tail()}"
    assert "bob received alice's message" in text
    assert "alice received bob's reply" in text
