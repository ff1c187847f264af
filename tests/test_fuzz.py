"""Fuzzing (hypothesis) through the functions as the host invokes them: no exception, no 500, 400 JSON for bad input.

Every example is counted into the reliability figures (at least 2,000 per run in total).
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from figures import FIGURES
from testkit.functions_host import Out, http, http_request, invocation, signalr_event

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("app_env", "figures")]


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
    function=st.sampled_from(["connected", "disconnected", "send_message"]),
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
    elif not valid_name(principal):
        assert status == 400
    else:
        assert (status, body) == (200, info)
    if status != 200:
        assert "accessToken" not in json.dumps(body)
