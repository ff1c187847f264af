"""A connection that has just closed, met by a group change, against real processes on 127.0.0.1: the emulator says
"does not exist" as the service does (404 with `x-ms-error-code`), the local host's `signalR` output goes on past it
as the Functions extension does (its SDK takes `Error.Connection.NotExisted` on an add as done), and the app's REST
client reads it as gone. The (method, status, code) table itself: tests/unit/test_rest_error_codes.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from mapping.settings import SignalRConnection
from mapping.signalr.liveness import Liveness, SignalRLiveness
from testkit.azurite import Azurite
from testkit.stack import ACCESS_KEY, HUB, Stack, running_stack, unique_user, wait_until
from tests.e2e.test_emulator_groups import admin, connect, listed, next_invocation, output

pytestmark = pytest.mark.slow

ADD_ROUTE = "PUT /api/hubs/{hub}/groups/{group}/connections/{connection}"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """An emulator and a local host running testkit/group_app.py (no storage: no Azurite needed)."""
    with running_stack(Azurite(port=1), app="testkit.group_app:app") as running:
        yield running


@pytest.fixture(scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client for the module."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def rest(stack: Stack) -> AsyncIterator[SignalRLiveness]:
    """The app's SignalR REST client, pointed at the emulator."""
    client = SignalRLiveness(SignalRConnection(endpoint=stack.emulator_url, access_key=ACCESS_KEY))
    yield client
    await client.close()


async def closed(rest: SignalRLiveness, connection_id: str) -> None:
    """Wait until the emulator answers that the connection does not exist."""

    async def gone() -> bool:
        return await rest.check(HUB, connection_id) is Liveness.GONE

    await wait_until(gone, what=f"{connection_id} to be gone")


async def test_an_output_adding_a_just_closed_connection_still_delivers_what_follows(
    stack: Stack, session: aiohttp.ClientSession, rest: SignalRLiveness
) -> None:
    """[add a closed connection, add a live one, send to the group, send to the live one]: the output succeeds, both
    messages arrive and only the live connection is in the group (before: the add failed the output, all was lost)."""
    leaver = await connect(session, stack, unique_user("leaver"))
    stayer = await connect(session, stack, unique_user("stayer"))
    group = unique_user("room")
    await leaver.socket.close()
    await closed(rest, leaver.connection_id)
    await admin(session, stack, "DELETE")
    await output(
        session,
        stack,
        [
            {"action": "add", "groupName": group, "connectionId": leaver.connection_id},
            {"action": "add", "groupName": group, "connectionId": stayer.connection_id},
            {"target": "roomNote", "arguments": ["to the room"], "groupName": group},
            {"target": "directNote", "arguments": ["to you"], "connectionId": stayer.connection_id},
        ],
    )
    assert await next_invocation(stayer, "roomNote") == ["to the room"]
    assert await next_invocation(stayer, "directNote") == ["to you"]
    assert await listed(session, stack, group) == {stayer.connection_id}
    assert (await admin(session, stack, "GET"))["byRoute"][ADD_ROUTE] == 2
    await stayer.socket.close()


async def test_the_app_reads_a_closed_connection_as_the_sdk_does(
    stack: Stack, session: aiohttp.ClientSession, rest: SignalRLiveness
) -> None:
    """Open: alive, and added. Closed: gone (404 with the not-existed code), not added (no failure), removed from the
    group and closed (nothing to do)."""
    client = await connect(session, stack, unique_user("tab"))
    group = unique_user("room")
    assert await rest.check(HUB, client.connection_id) is Liveness.ALIVE
    assert await rest.add_to_group(HUB, group, client.connection_id) is True
    await client.socket.close()
    await closed(rest, client.connection_id)
    assert await rest.add_to_group(HUB, group, client.connection_id) is False
    assert await rest.remove_from_group(HUB, group, client.connection_id) is True
    assert await rest.close_connection(HUB, client.connection_id, reason="test") is True
    assert await listed(session, stack, group) == set()
