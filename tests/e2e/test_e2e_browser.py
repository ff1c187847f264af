"""End to end in a real browser: the demo page in headless Chromium against the local stack.

Each test runs one scenario of `tests/e2e/browser_demo.mjs` (a fresh Chromium profile, fresh user names) on
one stack shared by the module, and checks the steps it reports.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.azurite import ROOT, Azurite
from testkit.stack import Stack, running_stack

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCRIPT = ROOT / "tests" / "e2e" / "browser_demo.mjs"
FUNCTION_KEY = "browser-test-function-key"  # the host checks keys, as Azure does: the page must need none
STATIC = {
    "/": ROOT / "local" / "demo",
    "/client": ROOT / "client",
    "/vendor/signalr": ROOT / "node_modules" / "@microsoft" / "signalr" / "dist" / "browser",
}
SCENARIO_SECONDS = 180

HAVE_CHROMIUM = CHROMIUM.exists()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(azurite: Azurite) -> Iterator[Stack]:
    """One emulator and local host serving the demo page and checking function keys, for this module's scenarios."""
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: run `make install-browser`")
    with running_stack(azurite, static=STATIC, audience="scoped", function_key=FUNCTION_KEY) as running:
        yield running


async def run_scenario(stack: Stack, scenario: str) -> str:
    """Run one scenario of the browser script against the stack; fail with its output unless it succeeded."""
    process = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), f"{stack.host_url}/", scenario, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=SCENARIO_SECONDS)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"{text}\n{stack.log_tail()}"
    assert "the page requested no route but negotiate" in text
    return text


async def test_two_users_chat_on_the_demo_page(stack: Stack) -> None:
    """Alice watches Bob on the demo page, sees him come online, they exchange a message, and Bob leaves."""
    text = await run_scenario(stack, "chat")
    assert "bob received alice's message" in text
    assert "alice received bob's reply" in text
    assert "alice sees bob go offline" in text


async def test_closing_one_of_two_tabs_drops_the_count_on_another_page(stack: Stack) -> None:
    """A watching page's online list shows a user's connections go from 2 to 1 when one tab closes, then offline."""
    text = await run_scenario(stack, "connections")
    assert "carol sees alice with 2 connections" in text
    assert "carol sees alice with 1 connection after a tab closed" in text
    assert "carol sees alice offline with a last-seen time" in text
    assert "carol's page was never reloaded" in text


async def test_a_status_set_on_one_page_shows_on_another(stack: Stack) -> None:
    """A status set on Alice's page shows next to her on the page of Bob, who watches her, and clearing removes it."""
    text = await run_scenario(stack, "status")
    assert "a status over 64 characters is refused on the page" in text
    assert "bob sees alice's status in the online list" in text
    assert "bob sees alice's status cleared" in text


async def test_a_room_message_reaches_the_other_member(stack: Stack) -> None:
    """Two pages join a room and one's message shows in the other's room; a new tab lists it; a leave is followed."""
    text = await run_scenario(stack, "rooms")
    assert "both pages list both members of the room" in text
    assert "bob's room shows alice's message" in text
    assert "bob's new tab lists the room it is in" in text
    assert "alice's member list follows bob's connections" in text
    assert "bob left: alice's member list and bob's other tab follow" in text


async def test_a_bad_room_name_shows_an_error(stack: Stack) -> None:
    """A bad room name is refused on the page, and the server's errors for rooms are shown as well."""
    text = await run_scenario(stack, "bad-room")
    assert "the page refuses a bad room name" in text
    assert "the page shows the server's error for a bad room name" in text
    assert "the page shows the server's error for a room it is not in" in text


async def test_a_join_answered_retry_is_retried(stack: Stack) -> None:
    """A join answered with `retry: true` is sent again and succeeds; answered so every time, the library gives up."""
    text = await run_scenario(stack, "retry")
    assert "a join answered retry was sent again and the room joined" in text
    assert "a join answered retry every time gave up after two retries" in text
