"""Fuzzing (hypothesis) through the functions as the host invokes them: no exception, no 500, 400 JSON for bad input.

Every example is counted into the reliability figures (at least 2,000 per run in total). The rooms and
status properties check the functions against models written here from the contract (room names,
statuses, memberships), not against mapping's own rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import string
import unicodedata
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from mapping.functions import runtime
from mapping.keys import encode_cursor
from mapping.rooms.tally import TALLY_ROW
from mapping.settings import DEFAULT_CLIENT_MESSAGE_BYTES
from testkit.azurite import Azurite
from testkit.figures import FIGURES
from testkit.functions_host import Out, http, http_request, invocation, signalr_event
from testkit.tables import all_rows, drop_table, unique_table_name

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("app_env", "figures")]


def segment(text: str) -> str:
    """Return text percent-encoded as one URL path segment, as a client would send it (lone surrogates too)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def fuzz(examples: int) -> settings:
    """Hypothesis settings for a fuzz test: `examples` inputs, no deadline (storage calls vary), no health checks."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))


# Any text, lone surrogates and control characters included, sometimes huge.
any_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=300),
    st.text(st.sampled_from("aZ /\\#?%'\"()$=&*\x00\x1f\x7f\u0130\u00df\ufb01 \t\n\ud800"), max_size=20),
    st.builds(lambda c, n: c * n, st.sampled_from("x#é😀"), st.integers(250, 70_000)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
TRIGGER_KEYS = [
    "Arguments",
    "Error",
    "Category",
    "Event",
    "Hub",
    "ConnectionId",
    "UserId",
    "Headers",
    "Query",
    "Claims",
]


def valid_name(value: object) -> bool:
    """The contract's name rule, independent of mapping.keys: NFC, stripped, 1-256 characters, no surrogates."""
    if not isinstance(value, str) or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        return False
    return 1 <= len(unicodedata.normalize("NFC", value).strip()) <= 256


def valid_user_name(value: object) -> bool:
    """The contract's rule for signing in (negotiate): a valid name with no format character (Cf: bidi, zero-width)."""
    return valid_name(value) and not any(unicodedata.category(ch) == "Cf" for ch in str(value))


def count(kind: str) -> None:
    """Count one fuzzed input."""
    FIGURES.add("fuzzing", "examples")
    FIGURES.add("fuzzing", f"examples_{kind}")


async def checked_http(name: str, request: Any, **outputs: Any) -> tuple[int, Any]:
    """Call an HTTP function; any status other than the contract's, or a non-JSON error, fails the example."""
    try:
        status, body, _ = await http(name, request, **outputs)
    except Exception:
        FIGURES.add("fuzzing", "http_500")  # the host would answer 500
        raise
    FIGURES.add("fuzzing", "http_500", int(status >= 500))
    assert status in (200, 400, 401, 404, 413), (status, body)
    if status != 200:
        assert isinstance(body, dict)
        assert isinstance(body.get("error"), str)
        assert body["error"]
        assert all(out.value is None for out in outputs.values() if isinstance(out, Out)), "nothing sent on an error"
    return status, body


@fuzz(400)
@given(user=any_text, connection=any_text)
async def test_fuzzed_names_round_trip_or_are_refused(user: str, connection: str) -> None:
    """Valid user and connection ids are mapped and read back as sent; others are not mapped and HTTP says 400."""
    count("names")
    out = await signalr_event("connected", invocation("connected", user_id=user, connection_id=connection))
    accepted = valid_name(user) and valid_name(connection)
    status, body = await checked_http("user_presence", http_request("GET", "users/x", route_params={"user": user}))
    if not valid_name(user):
        assert status == 400
        assert out.value is None
        return
    assert status == 200
    normalized = unicodedata.normalize("NFC", user).strip()
    assert body["user"] == normalized
    ids = [c["connectionId"] for c in body["connections"]]
    if accepted:
        assert unicodedata.normalize("NFC", connection).strip() in ids
    await signalr_event("disconnected", invocation("disconnected", user_id=user, connection_id=connection))
    status, body = await checked_http("user_presence", http_request("GET", "users/x", route_params={"user": user}))
    assert status == 200
    assert unicodedata.normalize("NFC", connection).strip() not in [c["connectionId"] for c in body["connections"]]


@fuzz(500)
@given(
    function=st.sampled_from(
        ["connected", "disconnected", "send_message", "set_status", "join_room", "leave_room", "send_to_room_message"]
    ),
    payload=st.one_of(
        st.dictionaries(st.sampled_from(TRIGGER_KEYS), json_values, max_size=10).map(json.dumps),
        json_values.map(json.dumps),
        any_text,
    ),
)
async def test_fuzzed_trigger_payloads_never_raise(function: str, payload: str) -> None:
    """Missing keys, wrong types and huge values in a trigger payload: no exception, and the output is a JSON array."""
    count("trigger_payloads")
    out = await signalr_event(function, payload)
    if out.value is not None:
        messages = json.loads(out.value)
        assert isinstance(messages, list)
        assert messages


@fuzz(500)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {}, optional={"to": json_values | st.just("bob"), "message": json_values, "target": json_values}
        ).map(lambda v: json.dumps(v).encode()),
    ),
    sender=st.none() | any_text,
)
async def test_fuzzed_send_bodies_get_a_contract_answer(body: bytes, sender: str | None) -> None:
    """Any body to POST send: 200, 404, 400 or 413 with a JSON error, never a 500, and nothing sent on an error."""
    count("send_bodies")
    await signalr_event("connected", invocation("connected", user_id="bob", connection_id="bob-1"))
    headers = {"x-ms-client-principal-name": sender} if sender is not None else {}
    out = Out()
    status, payload = await checked_http("send", http_request("POST", "send", body=body, headers=headers), signalr=out)
    if status == 200:
        assert payload["delivered"] == len(out.messages) >= 1


@fuzz(400)
@given(
    params=st.dictionaries(st.sampled_from(["limit", "next", "code", "$filter", "x"]), any_text, max_size=4),
    headers=st.dictionaries(
        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20), any_text, max_size=4
    ),
)
async def test_fuzzed_query_strings_and_headers_on_the_users_list(
    params: dict[str, str], headers: dict[str, str]
) -> None:
    """Any query string and headers on GET users: 200 for a usable limit and cursor, else 400 JSON."""
    count("query_strings")
    status, body = await checked_http("online_users", http_request("GET", "users", params=params, headers=headers))
    limit = params.get("limit", "")
    try:
        limit_ok = limit == "" or 1 <= int(limit) <= 1000
    except ValueError:
        limit_ok = False
    if not limit_ok:
        assert status == 400
    elif "next" not in params:
        assert status == 200
    if status == 200:
        assert isinstance(body["users"], list)


@fuzz(300)
@given(
    principal=st.none() | any_text,
    extra=st.dictionaries(
        st.sampled_from(["authorization", "x-ms-client-principal-id", "cookie"]), any_text, max_size=2
    ),
)
async def test_fuzzed_principals_on_negotiate(principal: str | None, extra: dict[str, str]) -> None:
    """Negotiate hands out the token only for a usable principal name: else 401 (none) or 400 (unusable)."""
    count("negotiate_headers")
    headers = {**extra, **({"x-ms-client-principal-name": principal} if principal is not None else {})}
    info = {"url": "https://example.invalid/client/?hub=chat", "accessToken": "token-for-test"}
    status, body = await checked_http(
        "negotiate", http_request("POST", "negotiate", headers=headers), connection_info=json.dumps(info)
    )
    if principal is None or not principal.strip():
        assert status == 401
    elif not valid_user_name(principal):
        assert status == 400
    else:
        assert (status, body) == (200, info)
    if status != 200:
        assert "accessToken" not in json.dumps(body)


# -- rooms and status ---------------------------------------------------------------------------------

ROOM_CHARS = string.ascii_letters + string.digits + "-_."
MAX_ROOMS = 100
MAX_MESSAGE_BYTES = 64 * 1024  # a server's (HTTP) message
CLIENT_MESSAGE_BYTES = DEFAULT_CLIENT_MESSAGE_BYTES  # a client's (send, sendToRoom): CLIENT_MESSAGE_MAX_BYTES
MAX_MESSAGE_DEPTH = 64
# One step outside the room rule: ASCII punctuation, spaces and controls, and look-alikes of allowed
# characters (dotless i, long s, Kelvin sign, fullwidth and Arabic-Indic digits, one-dot leader...).
NEAR_ROOM = (
    " \t\n\r/\\#?%~:+@!,;'\"*()[]{}<>=&|^`$\x00\x1f\x7f\x85\u00a0\u0130\u0131\u017f\u212a\uff41\uff11\u0661\u00e9"
    "\u2010\u2024\u2028\u200b\ufeff\ud800\U0001f600"
)
EDGE_ROOMS = ["", ".", "..", "-", "_", "a\n", "\na", " a", "a ", "a" * 64, "a" * 65, "Z" * 63 + ".", "\u212a", "k"]
room_text = st.text(st.sampled_from(ROOM_CHARS), min_size=1, max_size=64)


@st.composite
def near_miss_rooms(draw: st.DrawFn) -> str:
    """A room name with one character from just outside the rule put anywhere in a valid one."""
    base = draw(st.text(st.sampled_from(ROOM_CHARS), max_size=63))
    at = draw(st.integers(0, len(base)))
    return base[:at] + draw(st.sampled_from(NEAR_ROOM)) + base[at:]


room_like = st.one_of(
    room_text,
    st.text(st.sampled_from(ROOM_CHARS), min_size=62, max_size=67),  # around the length bound
    near_miss_rooms(),
    st.sampled_from(EDGE_ROOMS),
    any_text,
)
# Statuses around the rule: NFC that shortens (combining marks, jamo) or lengthens (U+0958) a text
# near 64 characters, controls and format characters, lone surrogates, and values of other types.
status_like = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=70),
    st.text(st.characters(codec="utf-8"), max_size=70),
    st.text(st.sampled_from("ab \t\n\x00\x1f\x7f\x85\u00ad\u200b\u2028\ufeff\ufffe\ud800\U0001f600"), max_size=66),
    st.builds(
        lambda piece, n: piece * n,
        st.sampled_from(["x", "e\u0301", "\u1100\u1161", "\u0958", "\u212b", "\u00e9", "\U0001f600", " "]),
        st.integers(20, 70),
    ),
    json_values,
)
# Statuses the rule accepts, mostly: short texts without controls (NFC may still lengthen one past 64).
statuses = st.one_of(
    st.none(),
    st.just(""),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=64),
    st.builds(lambda piece, n: piece * n, st.sampled_from(["e\u0301", "\u1100\u1161", "\u0958"]), st.integers(30, 64)),
)


def nested(depth: int) -> Any:
    """Return a value whose arrays nest `depth` levels."""
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


message_like = st.one_of(
    json_values,
    st.integers(MAX_MESSAGE_DEPTH - 2, MAX_MESSAGE_DEPTH + 2).map(nested),
    st.integers(MAX_MESSAGE_BYTES - 4, MAX_MESSAGE_BYTES + 2).map(lambda n: "x" * n),  # 2 quotes around it
    st.integers(CLIENT_MESSAGE_BYTES - 4, CLIENT_MESSAGE_BYTES + 2).map(lambda n: "x" * n),
)
event_arguments = st.one_of(
    st.none(),
    json_values,  # anything; a non-array reads as no arguments
    st.lists(st.one_of(room_like, status_like, message_like), max_size=3),
    st.tuples(room_like).map(list),
    st.tuples(status_like).map(list),
    st.tuples(room_like, message_like).map(list),
)
# The four client events: function name -> the hub method a client invokes.
ROOM_EVENTS = {
    "set_status": "setStatus",
    "join_room": "join",
    "leave_room": "leave",
    "send_to_room_message": "sendToRoom",
}


def valid_room(value: object) -> bool:
    """The contract's room rule, independent of mapping.keys: a string of 1-64 ASCII letters, digits, '-', '_', '.'."""
    return isinstance(value, str) and 1 <= len(value) <= 64 and all(ch in ROOM_CHARS for ch in value)


def stored_status(value: object) -> tuple[bool, str | None]:
    """The contract's status rule: (accepted, the status stored); null or "" clear, else NFC, <= 64, no controls and
    no format characters (Cf)."""
    if value is None:
        return True, None
    if not isinstance(value, str) or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        return False, None
    text = unicodedata.normalize("NFC", value)
    if len(text) > 64 or any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text):
        return False, None
    return True, text or None


def depth(value: object) -> int:
    """Return how many levels arrays and objects nest in a JSON value."""
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


def finite(value: object) -> bool:
    """Return whether a JSON value holds no NaN or infinity (which JSON cannot carry)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite(item) for item in value)
    if isinstance(value, dict):
        return all(finite(item) for item in value.values())
    return True


def client_message_ok(message: object) -> bool | None:
    """Whether a client message is accepted: plain JSON, <= 64 levels, <= CLIENT_MESSAGE_MAX_BYTES (16 KiB); None where
    the contract is silent."""
    if not finite(message) or depth(message) > MAX_MESSAGE_DEPTH:
        return False
    text = json.dumps(message, ensure_ascii=False)
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return False  # a lone surrogate: not text, it cannot be sent as UTF-8
    return len(text.encode()) <= CLIENT_MESSAGE_BYTES


def user_name(value: str) -> str:
    """The contract's display form of a user name: NFC, stripped."""
    return unicodedata.normalize("NFC", value).strip()


def event_payload(event: str, *, user: str | None, connection: str | None, arguments: Any) -> str:
    """Return a client event's trigger payload with any JSON value as its `Arguments`."""
    payload = json.loads(invocation(event, user_id=user, connection_id=connection))
    payload["Arguments"] = arguments
    return json.dumps(payload)


async def client_event(function: str, user: str | None, connection: str | None, *arguments: Any) -> Out:
    """Invoke one of the four client events with these arguments."""
    return await signalr_event(
        function, event_payload(ROOM_EVENTS[function], user=user, connection=connection, arguments=list(arguments))
    )


async def connect(user: str, connection: str) -> Out:
    """Invoke the connected event."""
    return await signalr_event("connected", invocation("connected", user_id=user, connection_id=connection))


async def disconnect(user: str, connection: str) -> Out:
    """Invoke the disconnected event."""
    return await signalr_event("disconnected", invocation("disconnected", user_id=user, connection_id=connection))


def kind_of(message: Any, caller: str | None) -> str:
    """Classify one output message, failing on any that is none of the contract's shapes."""
    assert isinstance(message, dict), message
    if message.get("target") == "error":
        assert set(message) == {"target", "connectionId", "arguments"}, message
        assert message["connectionId"] == caller, "an error goes to the caller only"
        [detail] = message["arguments"]
        assert isinstance(detail["error"], str)
        assert detail["error"]
        return "error"
    if message.get("target") == "presence":
        shapes = (
            {"target", "arguments"},
            {"target", "groupName", "arguments"},
            {"target", "connectionId", "arguments"},
        )
        assert set(message) in shapes, message
        if "connectionId" in message:  # a status set again: the caller alone hears it (rooms R5)
            assert message["connectionId"] == caller, "a presence message to one connection goes to the caller"
        [state] = message["arguments"]
        if "groupName" in message and valid_room(message["groupName"]):
            assert state.pop("room") == message["groupName"], "a room's copy names the room"
        elif "groupName" in message:
            assert message["groupName"].startswith("~presence."), message
        presence_state_ok(state, version_at_least=1)
        return "presence"
    if message.get("target") == "presenceSync":
        assert set(message) == {"target", "connectionId", "arguments"}, message
        assert message["connectionId"] == caller, "a snapshot goes to the caller only"
        [sync] = message["arguments"]
        assert set(sync) == {"room", "users", "page", "pages"}, sync
        assert sync["room"] is None or valid_room(sync["room"])
        assert 1 <= sync["page"] <= sync["pages"]
        for state in sync["users"]:
            presence_state_ok(state, version_at_least=0)
        return "sync"
    if message.get("target") == "occupancy":
        assert set(message) in ({"target", "groupName", "arguments"}, {"target", "connectionId", "arguments"}), message
        [occupancy] = message["arguments"]
        assert set(occupancy) == {"room", "members", "online", "version"}, occupancy
        assert valid_room(occupancy["room"])
        assert message.get("groupName", f"~occupancy.{occupancy['room']}") == f"~occupancy.{occupancy['room']}"
        assert 0 <= occupancy["online"] <= occupancy["members"], occupancy
        assert occupancy["version"] >= 0, occupancy
        return "occupancy"
    if "action" in message:
        assert set(message) == {"action", "groupName", "connectionId"}, message
        assert message["action"] in ("add", "remove")
        assert valid_room(message["groupName"]) or message["groupName"].startswith("~"), message
        assert isinstance(message["connectionId"], str)
        assert message["connectionId"]
        return str(message["action"])
    assert set(message) == {"target", "groupName", "arguments"}, message
    assert valid_room(message["groupName"]), message
    [body] = message["arguments"]
    if message["target"] == "room":
        assert set(body) == {"room", "user", "joined"}, body
        assert body["room"] == message["groupName"]
        assert isinstance(body["joined"], bool)
        return "announcement"
    assert set(body) == {"from", "room", "message"}, body
    assert body["room"] == message["groupName"]
    return "delivery"


def presence_state_ok(state: dict[str, Any], *, version_at_least: int) -> None:
    """Assert a presence entry's shape: user, online, connections, status, lastSeen, version."""
    assert set(state) == {"user", "online", "connections", "status", "lastSeen", "version"}, state
    assert isinstance(state["online"], bool)
    assert isinstance(state["connections"], int)
    assert state["connections"] >= int(state["online"])
    assert state["status"] is None or stored_status(state["status"]) == (True, state["status"])
    assert isinstance(state["version"], int)
    assert state["version"] >= version_at_least


def kinds(out: Out, caller: str | None) -> list[str]:
    """Return the kinds of a function's output messages, each checked for its shape."""
    return [kind_of(message, caller) for message in out.messages]


def one_error(out: Out, caller: str | None) -> None:
    """Assert the output is exactly one error to the caller (beside presence broadcasts of a refreshed lease)."""
    found = kinds(out, caller)
    assert found.count("error") == 1, out.messages
    assert set(found) <= {"error", "presence"}, out.messages


@contextlib.asynccontextmanager
async def fresh_table(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """Give one example a table of its own: the app's store is rebuilt on it, and the table dropped after."""
    table = unique_table_name()
    monkeypatch.setenv("MAPPING_TABLE", table)
    await runtime.reset()
    try:
        yield table
    finally:
        await runtime.reset()
        await drop_table(azurite, table)


async def memberships_in_table(azurite: Azurite, table: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Read (user key, room) pairs straight from Azurite: from membership rows, and from member-index rows."""
    rows = await all_rows(azurite, table)
    members = {
        (str(row["PartitionKey"]), str(row["RowKey"])[3:])
        for row in rows
        if str(row["RowKey"]).startswith("%~r") and not str(row["PartitionKey"]).startswith("%~")
    }
    indexed = {
        (str(row["RowKey"]), str(row["PartitionKey"])[3:])
        for row in rows
        if str(row["PartitionKey"]).startswith("%~m") and row["RowKey"] != TALLY_ROW
    }
    return members, indexed


async def rooms_of(user: str) -> list[str]:
    """Return the `rooms` of GET /api/users/{user}."""
    status, body = await checked_http("user_presence", http_request("GET", "users/x", route_params={"user": user}))
    assert status == 200
    rooms: list[str] = body["rooms"]
    return rooms


async def members_of(room: str, limit: int) -> list[dict[str, Any]]:
    """Return every member GET /api/rooms/{room} lists, following `next` a page of `limit` at a time."""
    members: list[dict[str, Any]] = []
    params = {"limit": str(limit)}
    for _ in range(50):
        request = http_request(
            "GET",
            f"rooms/{segment(room)}",
            params=params,
            route_params={"room": room},
        )
        status, body = await checked_http("room_members", request, signalr=Out())
        assert status == 200
        assert body["room"] == room
        assert len(body["members"]) <= limit
        members += body["members"]
        if body["next"] is None:
            return members
        params = {"limit": str(limit), "next": body["next"]}
    raise AssertionError("the room's pages never ended")


USERS_OK = ["alice", " Alice", "AL\u0130CE", "zoe\u0301"]
CONNECTIONS_OK = ["conn-1", " conn-1 ", "c/1#?%"]


@st.composite
def room_event_calls(draw: st.DrawFn) -> dict[str, Any]:
    """A client event, its caller and arguments: well-formed (sizes near the bounds), near the rules, or anything."""
    function = draw(st.sampled_from(sorted(ROOM_EVENTS)))
    mode = draw(st.sampled_from(["well-formed", "near", "anything"]))
    if mode == "well-formed":
        rooms, texts, messages = room_text, statuses, message_like
        odd_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).filter(valid_name)
        users = st.one_of(st.sampled_from(USERS_OK), odd_names)
        connections, flags = st.sampled_from(CONNECTIONS_OK), st.just(True)
    else:
        rooms, texts, messages = room_like, st.one_of(statuses, status_like), message_like
        users = st.one_of(st.sampled_from(USERS_OK), any_text, st.none())
        connections, flags = st.one_of(st.sampled_from(CONNECTIONS_OK), any_text, st.none()), st.booleans()
    shaped = {
        "set_status": st.tuples(texts).map(list),
        "join_room": st.tuples(rooms).map(list),
        "leave_room": st.tuples(rooms).map(list),
        "send_to_room_message": st.tuples(rooms, messages).map(list),
    }[function]
    return {
        "function": function,
        "arguments": draw(event_arguments if mode == "anything" else shaped),
        "user": draw(users),
        "connection": draw(connections),
        "connected": draw(flags),  # the caller's connection was mapped first
        "member": draw(flags),  # the user joined the room named first
    }


@fuzz(300)
@given(call=room_event_calls())
async def test_fuzzed_room_and_status_arguments_get_one_error_or_their_actions(
    call: dict[str, Any], azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any arguments to setStatus, join, leave and sendToRoom: one error to the caller, or their actions when valid."""
    count("room_event_arguments")
    function, arguments, user, connection = call["function"], call["arguments"], call["user"], call["connection"]
    connected, member = call["connected"], call["member"]
    args = arguments if isinstance(arguments, list) else None
    room = args[0] if args else None
    user_ok = user is not None and valid_name(user)
    async with fresh_table(azurite, monkeypatch) as table:
        joined: set[str] = set()
        ever: set[str] = set()  # rooms joined at some point: a leave leaves their index rows to readers (R1)
        if connected and user_ok and connection is not None and valid_name(connection):
            await connect(str(user), connection)
        if member and user_ok and valid_room(room):
            joined.add(str(room))
            ever.add(str(room))
            assert "error" not in kinds(await client_event("join_room", user, "setup", room), "setup")
        out = await signalr_event(
            function, event_payload(ROOM_EVENTS[function], user=user, connection=connection, arguments=arguments)
        )
        found = kinds(out, connection)
        if not connection:
            assert out.value is None, "no connection to answer"
            await rooms_agree(azurite, table, user, joined, ever)
            return
        ok: bool | None
        if function in ("join_room", "leave_room"):
            ok = user_ok and args is not None and len(args) == 1 and valid_room(room)
        elif function == "set_status":
            ok = (
                user_ok
                and connected
                and valid_name(connection)
                and args is not None
                and len(args) == 1
                and stored_status(args[0])[0]
            )
        elif user_ok and args is not None and len(args) == 2 and valid_room(room) and room in joined:
            ok = client_message_ok(args[1])
        else:
            ok = False
        event(f"{function}: {'refused' if ok is False else 'accepted' if ok else 'either'}")
        if ok is False:
            one_error(out, connection)
        elif ok:
            assert "error" not in found, out.messages
            assert user is not None
            assert args is not None
            if function == "set_status":
                assert found == ["presence"]
                [state] = out.messages[0]["arguments"]
                assert (state["online"], state["status"]) == (True, stored_status(args[0])[1])
            elif function == "send_to_room_message":
                assert set(found) == {"presence", "delivery"} or found == ["delivery"]
                [delivery] = [m for m in out.messages if "groupName" in m]
                assert delivery == {
                    "target": "newMessage",
                    "groupName": room,
                    "arguments": [{"from": user, "room": room, "message": json.loads(json.dumps(args[1]))}],
                }
            else:
                joining = function == "join_room"
                action = "add" if joining else "remove"
                assert set(found) <= {"presence", action, "announcement", "sync", "occupancy"}
                # Rooms R5: a leave of a room the user is not in (a fresh table: never joined) tells the room nothing.
                announced = [m for m in out.messages if m.get("target") == "room"]
                assert len(announced) == (1 if joining or room in joined else 0), out.messages
                assert found.count("sync") == (1 if joining else 0), "a join answers the caller the room's snapshot"
                for announcement in announced:
                    assert announcement["arguments"] == [{"room": room, "user": user_name(user), "joined": joining}]
                grouped = [m["connectionId"] for m in out.messages if m.get("action") == action]
                assert connection in grouped, "the caller's connection follows the membership"
                assert all(m["groupName"] == room for m in out.messages if "action" in m)
                joined = joined | {str(room)} if joining else joined - {str(room)}
                ever |= joined
        await rooms_agree(azurite, table, user, joined, ever)


async def rooms_agree(azurite: Azurite, table: str, user: str | None, joined: set[str], ever: set[str]) -> None:
    """Assert the table holds exactly the user's `joined` rooms, every one indexed (R1), the index's other rows
    only rooms the user left (kept for readers to clear), and both routes say so."""
    members, indexed = await memberships_in_table(azurite, table)
    assert members <= indexed, "R1: every membership row has its index row"
    assert {room for _, room in indexed - members} <= ever - joined, "only rooms left keep an index row"
    assert len(members) == len(joined)
    if user is not None and valid_name(user):
        assert sorted(await rooms_of(user)) == sorted(joined)
        for name in joined:
            assert [member["user"] for member in await members_of(name, 100)] == [user_name(user)]


USERS = ["ann", "Ann", "ANN ", "bob", "zo\u00eb", "ZOE\u0308"]  # three users, each under several spellings
PERSON = [0, 0, 0, 1, 2, 2]  # the user each spelling names
USER_KEYS = ["ann", "bob", "zo\u00eb"]  # their partitions: the casefolded NFC name
ROOM_POOL = ["lobby", "Lobby", "a" * 64, "a" * 65, "lobby ", "", "lob/by", "\u017fo"]  # three valid, then not


@fuzz(60)
@given(
    extra_rooms=st.lists(room_like, max_size=2),
    opening=st.lists(st.tuples(st.integers(0, len(USERS) - 1), st.integers(0, 2)), min_size=2, max_size=6),
    operations=st.lists(
        st.tuples(
            st.sampled_from(["join", "join", "leave", "leave", "connect", "connect", "disconnect"]),
            st.integers(0, len(USERS) - 1),
            st.integers(0, 2),
            st.one_of(st.integers(0, 2), st.integers(0, 20)),  # mostly the valid rooms, so leaves meet joins
        ),
        min_size=6,
        max_size=16,
    ),
    limit=st.integers(1, 3),
)
async def test_fuzzed_joins_and_leaves_agree_with_a_model(
    extra_rooms: list[str],
    opening: list[tuple[int, int]],
    operations: list[tuple[str, int, int, int]],
    limit: int,
    azurite: Azurite,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any joins, leaves, connects and disconnects: group actions, user rooms, room lists and rows match a model."""
    count("room_sequences")
    pool = ROOM_POOL + extra_rooms
    rooms: dict[int, set[str]] = {person: set() for person in range(len(USER_KEYS))}
    ever: set[tuple[str, str]] = set()  # (user key, room) pairs joined at some point
    live: dict[int, set[str]] = {person: set() for person in range(len(USER_KEYS))}
    async with fresh_table(azurite, monkeypatch) as table:
        # Some connections open first, so joins and leaves meet users with several tabs (R3).
        for operation, spelling, slot, pick in [("connect", *connection, 0) for connection in opening] + operations:
            user, person, room = USERS[spelling], PERSON[spelling], pool[pick % len(pool)]
            caller = f"c{slot}-{USER_KEYS[person]}"
            if operation == "connect":
                out = await connect(user, caller)
                assert set(kinds(out, caller)) <= {"add", "presence", "occupancy"}
                assert sorted(m["groupName"] for m in out.messages if "action" in m) == sorted(rooms[person])
                assert all(m["connectionId"] == caller for m in out.messages if "action" in m)
                live[person].add(caller)
            elif operation == "disconnect":
                assert set(kinds(await disconnect(user, caller), caller)) <= {"presence", "occupancy"}
                live[person].discard(caller)
            else:
                out = await client_event("join_room" if operation == "join" else "leave_room", user, caller, room)
                event(f"{operation}: {'accepted' if valid_room(room) else 'refused'}")
                if not valid_room(room):
                    one_error(out, caller)
                    continue
                event(f"{operation}: {'a member' if room in rooms[person] else 'not a member'}")
                event(f"{operation}: {min(len(live[person] - {caller}), 2)} other live connections")
                action = "add" if operation == "join" else "remove"
                assert set(kinds(out, caller)) <= {action, "announcement", "presence", "sync", "occupancy"}
                grouped = {m["connectionId"] for m in out.messages if m.get("action") == action}
                assert grouped == live[person] | {caller}, "R3: the group follows the membership"
                # Rooms R5: a leave of a room the user is not in is announced only when its index row was written
                # within the minute (a join or leave of this run: every one is that recent); a join always here.
                repeats = operation == "join" or room in rooms[person] or (USER_KEYS[person], room) in ever
                announced = [m for m in out.messages if m.get("target") == "room"]
                assert len(announced) == (1 if repeats else 0), out.messages
                assert all(m["arguments"][0]["joined"] is (operation == "join") for m in announced)
                if operation == "join":
                    rooms[person].add(room)
                    ever.add((USER_KEYS[person], room))
                else:
                    rooms[person].discard(room)
        for spelling, user in enumerate(USERS):
            assert sorted(await rooms_of(user)) == sorted(rooms[PERSON[spelling]]), user
        for room in {room for room in pool if valid_room(room)}:
            listed = await members_of(room, limit)
            keys = [unicodedata.normalize("NFC", member["user"].casefold()) for member in listed]
            expected = {USER_KEYS[person] for person in rooms if room in rooms[person]}
            assert sorted(keys) == sorted(expected), room
            for member, key in zip(listed, keys, strict=True):
                person = USER_KEYS.index(key)
                assert (member["online"], member["connections"]) == (bool(live[person]), len(live[person]))
        members, indexed = await memberships_in_table(azurite, table)
        expected_rows = {(USER_KEYS[person], room) for person in rooms for room in rooms[person]}
        assert members == expected_rows
        assert expected_rows <= indexed <= ever, "R1: every member indexed; other index rows only of pairs that left"


CONCURRENT_ROOMS = ["lobby", "den"]
OTHER_SPELLINGS = ["ANN ", "Bob", "ZOE\u0308"]  # the three users of USER_KEYS, spelled otherwise
RACE_EVERYWHERE = [("join", person, room) for person in range(3) for room in range(2)] + [
    ("leave", person, room) for person in range(3) for room in range(2)
]


@fuzz(15)
@example(batches=[RACE_EVERYWHERE] * 3)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(st.sampled_from(["join", "leave"]), st.integers(0, 2), st.integers(0, 1)), min_size=2, max_size=8
        ),
        min_size=1,
        max_size=4,
    )
)
async def test_fuzzed_concurrent_joins_and_leaves_keep_the_member_index(
    batches: list[list[tuple[str, int, int]]], azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Joins and leaves run at once: every membership row keeps its index row, and the lists agree with the rows."""
    count("room_races")
    ever: set[tuple[str, str]] = set()  # (user key, room) pairs joined at some point
    async with fresh_table(azurite, monkeypatch) as table:
        for batch in batches:
            ever |= {
                (USER_KEYS[person], CONCURRENT_ROOMS[room]) for operation, person, room in batch if operation == "join"
            }
            calls = [
                client_event(
                    f"{operation}_room",
                    OTHER_SPELLINGS[person] if step % 2 else USER_KEYS[person],
                    f"c{step}-{USER_KEYS[person]}",
                    CONCURRENT_ROOMS[room],
                )
                for step, (operation, person, room) in enumerate(batch)
            ]
            for step, out in enumerate(await asyncio.gather(*calls)):
                assert "error" not in kinds(out, f"c{step}-{USER_KEYS[batch[step][1]]}"), out.messages
            members, indexed = await memberships_in_table(azurite, table)
            for operation, person, room in batch:  # a pair only joined ends a member, only left ends not
                done = {op for op, p, r in batch if (p, r) == (person, room)}
                if len(done) == 1:
                    assert ((USER_KEYS[person], CONCURRENT_ROOMS[room]) in members) is (operation == "join")
            assert members <= indexed, "R1: every membership row has its member-index row"
            assert indexed <= ever, "index rows only of pairs that joined"
            for room_name in CONCURRENT_ROOMS:
                found = await members_of(room_name, 100)
                listed = {unicodedata.normalize("NFC", member["user"].casefold()) for member in found}
                assert listed == {key for key, name in members if name == room_name}, room_name
            for key in USER_KEYS:
                assert sorted(await rooms_of(key)) == sorted(name for user, name in members if user == key)


@fuzz(3)
@given(
    spellings=st.lists(st.sampled_from(["lim", "LIM", " Lim"]), min_size=MAX_ROOMS + 3, max_size=MAX_ROOMS + 3),
    rooms=st.lists(room_text, min_size=MAX_ROOMS + 3, max_size=MAX_ROOMS + 3, unique=True),
    again=st.integers(0, MAX_ROOMS - 1),
)
async def test_fuzzed_joins_stop_at_the_room_limit(
    spellings: list[str], rooms: list[str], again: int, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user joins 100 rooms at most: a 101st join is one error, a repeated join still works, a leave frees a place."""
    count("room_limit")
    async with fresh_table(azurite, monkeypatch):
        for spelling, room in zip(spellings, rooms[:MAX_ROOMS], strict=False):
            assert "error" not in kinds(await client_event("join_room", spelling, "c1", room), "c1")
        for spelling, room in zip(spellings[MAX_ROOMS:], rooms[MAX_ROOMS:], strict=True):
            one_error(await client_event("join_room", spelling, "c1", room), "c1")
        assert "error" not in kinds(await client_event("join_room", "lim", "c1", rooms[again]), "c1")
        assert sorted(await rooms_of("lim")) == sorted(rooms[:MAX_ROOMS])
        assert "error" not in kinds(await client_event("leave_room", "lim", "c1", rooms[again]), "c1")
        assert "error" not in kinds(await client_event("join_room", "lim", "c1", rooms[-1]), "c1")
        assert sorted(await rooms_of("lim")) == sorted({*rooms[:MAX_ROOMS], rooms[-1]} - {rooms[again]})


limit_like = st.one_of(
    st.integers(-2, 1002).map(str), st.sampled_from(["", " 5", "+5", "1_0", "\u0665", "5.0", "1e2", "9" * 5000])
)
# Cursors this API did not return: any text, and well-formed cursors naming any key.
cursor_like = st.one_of(any_text, st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).map(encode_cursor))


def limit_ok(raw: str | None) -> bool:
    """The page-size rule of the listing routes: absent or empty, or a whole number from 1 to 1000."""
    if raw is None or raw == "":
        return True
    try:
        return 1 <= int(raw) <= 1000
    except ValueError:
        return False


@fuzz(300)
@given(
    room=st.one_of(room_text, room_like),
    params=st.dictionaries(
        st.sampled_from(["limit", "next", "x", "$filter"]), st.one_of(limit_like, cursor_like, any_text), max_size=3
    ),
)
async def test_fuzzed_room_lists_get_a_contract_answer(room: str, params: dict[str, str]) -> None:
    """Any room and query string on GET rooms/{room}: 200 listing exactly the members for valid input, else 400 JSON."""
    count("room_lists")
    if valid_room(room):  # one known member in every valid room the fuzzer names (the table is shared)
        assert "error" not in kinds(await client_event("join_room", "roomie", "r-1", room), "r-1")
    request = http_request(
        "GET",
        f"rooms/{segment(room)}",
        params=params,
        route_params={"room": room},
    )
    status, body = await checked_http("room_members", request, signalr=Out())
    event(f"room list: {status}")
    assert status in (200, 400)
    if not valid_room(room) or not limit_ok(params.get("limit")):
        assert status == 400
    elif not params.get("next"):
        assert status == 200
        assert body["room"] == room
        assert [member["user"] for member in body["members"]] == ["roomie"]
        assert body["next"] is None
    if status == 200:
        assert isinstance(body["members"], list)


def room_send_statuses(room: str, body: bytes) -> set[int]:
    """The contract's answers to POST rooms/{room}/send: 400 bad room, 413 over 64 KiB, 400 bad body, else 200."""
    refusals = {400} if not valid_room(room) else set()
    if len(body) > MAX_MESSAGE_BYTES:
        refusals.add(413)
    if refusals:
        return refusals  # a bad room in a big body: either answer
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {400}
    if not isinstance(data, dict) or "message" not in data or not finite(data):
        return {400}
    target = data.get("target", "newMessage")
    if not isinstance(target, str) or not target.strip():
        return {400}
    if not utf8_encodable([data["message"], target]):
        return {400}  # a lone surrogate (a valid JSON escape) cannot be sent as UTF-8
    if len(target) > 256 or depth(data) > MAX_MESSAGE_DEPTH + 1:
        return {200, 400}  # bounds the contract leaves to the implementation
    return {200}


def utf8_encodable(value: Any) -> bool:
    """Return whether a JSON value's text encodes as UTF-8 (it holds no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


@fuzz(400)
@given(
    room=st.one_of(room_text, room_like),
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({}, optional={"message": message_like, "target": json_values | st.just("onRoom")}).map(
            lambda v: json.dumps(v).encode()
        ),
        st.fixed_dictionaries({"message": message_like}, optional={"target": st.just("onRoom") | any_text}).map(
            lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ),
        st.integers(MAX_MESSAGE_BYTES - 20, MAX_MESSAGE_BYTES - 10).map(
            lambda n: json.dumps({"message": "x" * n}).encode()  # 15 bytes around the text: straddles 64 KiB
        ),
    ),
    sender=st.none() | any_text,
)
async def test_fuzzed_room_sends_get_a_contract_answer(room: str, body: bytes, sender: str | None) -> None:
    """Any room and body to POST rooms/{room}/send: 200, 400 or 413 as the model says; one delivery only on 200."""
    count("room_send_bodies")
    headers = {"x-ms-client-principal-name": sender} if sender is not None else {}
    out = Out()
    request = http_request(
        "POST",
        f"rooms/{segment(room)}/send",
        body=body,
        headers=headers,
        route_params={"room": room},
    )
    status, payload = await checked_http("send_to_room", request, signalr=out)
    event(f"room send: {status}")
    assert status in room_send_statuses(room, body), (status, payload)
    if status == 200:
        data = json.loads(body.decode("utf-8-sig"))
        assert payload == {"room": room}
        assert out.messages == [
            {
                "target": data.get("target", "newMessage"),
                "groupName": room,
                "arguments": [{"from": (sender or "").strip() or None, "room": room, "message": data["message"]}],
            }
        ]


@fuzz(80)
@given(
    operations=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["connect", "connect", "disconnect"]), st.integers(0, 2), st.just([])),
            st.tuples(st.just("set"), st.integers(0, 2), st.tuples(statuses).map(list)),
            st.tuples(st.just("set"), st.integers(0, 3), st.tuples(status_like).map(list)),
            st.tuples(st.just("set"), st.integers(0, 2), st.lists(status_like, max_size=3)),
        ),
        min_size=4,
        max_size=12,
    ).map(lambda operations: [("connect", 0, []), ("connect", 1, []), *operations]),
    spellings=st.lists(st.sampled_from(["sam", "SAM", " Sam"]), min_size=14, max_size=14),
)
async def test_fuzzed_statuses_agree_with_a_model(
    operations: list[tuple[str, int, list[Any]]],
    spellings: list[str],
    azurite: Azurite,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any setStatus values across connects and disconnects: stored NFC or one error; the user's is the latest live."""
    count("statuses")
    statuses: dict[str, str | None] = {}  # live connection -> its status as stored
    set_at: dict[str, int] = {}  # live connection -> when it last set one (never: absent)
    async with fresh_table(azurite, monkeypatch):
        for step, ((operation, slot, arguments), spelling) in enumerate(zip(operations, spellings, strict=False)):
            caller = f"s{slot}"
            if operation == "connect":
                out = await connect(spelling, caller)
                if caller not in statuses:  # a repeated connected event keeps the status
                    statuses[caller] = None
            elif operation == "disconnect":
                out = await disconnect(spelling, caller)
                statuses.pop(caller, None)
                set_at.pop(caller, None)
            else:
                out = await client_event("set_status", spelling, caller, *arguments)
                accepted, stored = stored_status(arguments[0]) if len(arguments) == 1 else (False, None)
                event(f"setStatus: {'accepted' if accepted and caller in statuses else 'refused'}")
                if not accepted or caller not in statuses:
                    one_error(out, caller)
                    assert kinds(out, caller) == ["error"]
                else:
                    assert kinds(out, caller) == ["presence"], "a status set is announced, even unchanged"
                    statuses[caller], set_at[caller] = stored, step
            if len(set_at) > 1:
                event("statuses set on two live connections or more")
            latest = max(set_at, key=lambda connection: set_at[connection], default=None)
            expected = statuses[latest] if latest is not None else None
            for message in out.messages:
                if kind_of(message, caller) == "presence":
                    [state] = message["arguments"]
                    assert (state["connections"], state["status"]) == (len(statuses), expected), state
            request = http_request("GET", "users/x", route_params={"user": spelling})
            status, body = await checked_http("user_presence", request)
            assert status == 200
            assert (body["online"], body["status"]) == (bool(statuses), expected)
            assert (body["lastSeen"] is None) is bool(statuses), "last seen is for a user offline"
            assert {c["connectionId"]: c["status"] for c in body["connections"]} == statuses
