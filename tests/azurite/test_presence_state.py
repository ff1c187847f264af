"""The presence state beyond online: connection count, status (`setStatus`) and last seen, against Azurite."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mapping.functions import runtime
from mapping.presence.rows import iso
from mapping.presence.state import PresenceChange, PresenceState
from mapping.presence.store import ConnectionStore
from mapping.settings import SignalRConnection
from mapping.signalr.liveness import Listing, Liveness
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.fake_service import FakeService
from testkit.functions_host import Out, http, http_request, invocation, signalr_event
from testkit.tables import all_rows

pytestmark = pytest.mark.usefixtures("app_env")

T0 = datetime(2026, 8, 1, 10, 0, tzinfo=UTC)


async def set_status(user: str | None, connection_id: str, *arguments: Any) -> Out:
    """A client's `setStatus(...)`."""
    payload = invocation("setStatus", user_id=user, connection_id=connection_id, arguments=list(arguments))
    return await signalr_event("set_status", payload)


async def user_presence(user: str) -> dict[str, Any]:
    """GET /api/users/{user}; return the JSON body (asserting a 200)."""
    status, body, _ = await http("user_presence", http_request("GET", f"users/{user}", route_params={"user": user}))
    assert status == 200
    assert isinstance(body, dict)
    return body


def presence_of(out: Out) -> dict[str, Any]:
    """Return the one presence message's state in an output."""
    [message] = [m for m in out.messages if m.get("target") == "presence"]
    assert "connectionId" not in message  # a broadcast to the hub
    state: dict[str, Any] = message["arguments"][0]
    return state


# -- status ------------------------------------------------------------------------------------


async def test_the_latest_status_among_live_connections_is_the_users() -> None:
    """Each setting is announced; the most recent among live tabs wins, and closing that tab falls back."""
    store = runtime.store()
    await store.connect("Rita", "r1", now=T0)
    await store.connect("rita", "r2", now=T0)
    busy = presence_of(await set_status("rita", "r1", "busy"))
    away = presence_of(await set_status("RITA", "r2", "away"))
    assert (busy["status"], away["status"]) == ("busy", "away")
    assert busy["version"] < away["version"]
    assert (await user_presence("rita"))["status"] == "away"
    closed = (await store.disconnect("rita", "r2")).presence
    assert closed is not None
    assert (closed.state.status, closed.state.connections) == ("busy", 1)
    body = await user_presence("rita")
    assert (body["status"], [c["status"] for c in body["connections"]]) == ("busy", ["busy"])


async def test_a_null_or_empty_status_clears_it() -> None:
    """null and "" clear the caller's status; the clear is the latest setting, so it wins over older ones."""
    store = runtime.store()
    await store.connect("sam", "s1")
    await store.connect("sam", "s2")
    await set_status("sam", "s1", "lunch")
    await set_status("sam", "s2", "meeting")
    assert presence_of(await set_status("sam", "s2", None))["status"] is None
    await set_status("sam", "s2", "back")
    assert presence_of(await set_status("sam", "s2", ""))["status"] is None
    assert (await user_presence("sam"))["status"] is None


async def test_setting_the_same_status_again_repeats_the_recorded_state() -> None:
    """A repeated setStatus answers the recorded pair again (same version), to the caller alone (rooms R5): a retrying
    client hears it, nobody else is told twice."""
    await runtime.store().connect("tess", "t1")
    first = presence_of(await set_status("tess", "t1", "here"))
    [again] = [m for m in (await set_status("tess", "t1", "here")).messages if m.get("target") == "presence"]
    assert again["connectionId"] == "t1"
    assert again["arguments"][0] == first


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["a", "b"],
        ["x" * 65],
        [7],
        [["busy"]],
        [{"s": 1}],
        ["bell\x07"],
        ["line\nbreak"],
        ["in a meeting\u202e"],  # a bidirectional override: the text would read otherwise than it is
        ["a\u200bway"],  # a zero-width space
    ],
)
async def test_a_bad_status_answers_the_caller_with_one_error(
    arguments: list[Any], app_env: dict[str, str], azurite: Azurite
) -> None:
    """A status that is not a string of at most 64 visible characters (or null) gets one error and changes nothing."""
    await runtime.store().connect("uma", "u1")
    before = await all_rows(azurite, app_env["MAPPING_TABLE"])
    out = await set_status("uma", "u1", *arguments)
    [error] = out.messages
    assert (error["target"], error["connectionId"]) == ("error", "u1")
    assert await all_rows(azurite, app_env["MAPPING_TABLE"]) == before


async def test_a_status_of_64_characters_after_nfc_is_accepted() -> None:
    """The limit counts characters of the NFC form: 64 decomposed é (128 code points) fit."""
    await runtime.store().connect("vic", "v1")
    decomposed = "e\u0301" * 64
    assert presence_of(await set_status("vic", "v1", decomposed))["status"] == "\u00e9" * 64


async def test_set_status_from_an_unmapped_connection_answers_one_error() -> None:
    """A connection with no row (never mapped, or swept) cannot hold a status; it is told to reconnect."""
    out = await set_status("walt", "ghost", "busy")
    [error] = out.messages
    assert error["target"] == "error"
    assert "reconnect" in error["arguments"][0]["error"]
    assert (await user_presence("walt"))["online"] is False


async def test_set_status_refreshes_the_lease_and_revives_a_lapsed_one() -> None:
    """setStatus is a sign of life: a lapsed lease made live again announces the user online."""
    store = runtime.store()
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    await store.connect("xena", "x1", now=long_ago)
    assert (await user_presence("xena"))["online"] is False
    state = presence_of(await set_status("xena", "x1", "back"))
    assert (state["online"], state["connections"], state["status"]) == (True, 1, "back")
    assert (await user_presence("xena"))["online"] is True


# -- last seen ---------------------------------------------------------------------------------


async def test_last_seen_is_the_disconnect_time_and_clears_online(app_env: dict[str, str]) -> None:
    """The last disconnect records when; GET answers it while offline and null once the user is back."""
    store = runtime.store()
    await store.connect("yara", "y1", now=T0)
    await store.connect("yara", "y2", now=T0)
    assert (await store.disconnect("yara", "y1", now=T0 + timedelta(minutes=1))).presence is not None
    offline = (await store.disconnect("yara", "y2", now=T0 + timedelta(minutes=2))).presence
    assert offline == PresenceChange(
        "yara", PresenceState(False, last_seen=T0 + timedelta(minutes=2)), offline.version if offline else 0
    )
    body = await user_presence("yara")
    assert (body["online"], body["lastSeen"]) == (False, iso(T0 + timedelta(minutes=2)))
    await store.connect("yara", "y3")
    assert (await user_presence("yara"))["lastSeen"] is None


async def test_a_user_never_seen_has_no_last_seen() -> None:
    """An unknown user is offline with lastSeen null."""
    assert (await user_presence("zed"))["lastSeen"] is None


async def test_a_swept_user_was_last_seen_when_their_lease_was_last_renewed() -> None:
    """Age-based: a user whose lease lapsed was last seen at the row's LastSeen, not at the sweep."""
    store = runtime.store()
    await store.connect("abe", "a1", now=T0)
    await store.touch("abe", "a1", now=T0 + timedelta(minutes=4))
    result = await sweep(store, now=T0 + timedelta(hours=1))
    [change] = result.presence
    assert (change.state.online, change.state.last_seen) == (False, T0 + timedelta(minutes=4))
    assert (await store.presence_of("abe", now=T0 + timedelta(hours=1))).state.last_seen == T0 + timedelta(minutes=4)


async def test_a_reconciling_sweep_dates_a_lost_disconnect_at_the_sweep(app_env: dict[str, str]) -> None:
    """Reconciled: a quiet connection the listing vouched for until lately was last seen at the sweep that lost it."""
    settings = runtime.store().settings
    reconciled = ConnectionStore(
        replace(settings, signalr=SignalRConnection(endpoint="http://127.0.0.1:9", access_key="k"))
    )
    try:
        await reconciled.connect("bea", "b1", now=T0)
        moment = T0 + timedelta(hours=3)
        service = FakeService({"b1": Liveness.GONE}, listing=Listing.LISTED, listed=[])
        result = await sweep(reconciled, liveness=service, now=moment)
        [change] = result.presence
        assert (change.state.online, change.state.last_seen) == (False, moment)
    finally:
        await reconciled.close()


async def test_offline_presence_messages_carry_last_seen_and_online_ones_do_not() -> None:
    """The presence message's lastSeen is an ISO 8601 UTC time when offline, null when online."""
    online = presence_of(await signalr_event("connected", invocation("connected", user_id="cyd", connection_id="c1")))
    offline = presence_of(
        await signalr_event("disconnected", invocation("disconnected", user_id="cyd", connection_id="c1"))
    )
    assert online["lastSeen"] is None
    assert offline["lastSeen"].endswith("Z")
    assert datetime.fromisoformat(offline["lastSeen"]) <= datetime.now(UTC)
