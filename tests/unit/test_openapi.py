"""The OpenAPI document: valid OpenAPI 3.1, in step with the registered routes, served, and a checker that can fail."""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping
from typing import Any, cast

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from mapping.functions.openapi import document
from testkit.functions_host import FUNCTIONS, binding, bindings, http, http_request
from testkit.openapi_contract import HTTP_METHODS, check_answer

# Documented routes whose functions are not registered yet: the rooms routes are being added to function_app.py.
# Whoever registers one removes it from here (the route test fails until then).
CONNECTION = {
    "connectionId": "c1",
    "hub": "chat",
    "connectedAt": "2026-11-22T09:00:00.123456Z",
    "lastSeen": "2026-11-22T09:04:10.5Z",
    "userAgent": "Mozilla/5.0",
    "status": None,
}
PRESENCE = {
    "user": "bob",
    "online": True,
    "status": "away",
    "lastSeen": "2026-11-22T09:04:10.5Z",
    "rooms": ["lobby"],
    "blocked": False,
    "grants": [],
    "connections": [CONNECTION],
}


def http_triggers() -> list[tuple[str, str, str]]:
    """Return (METHOD, /path template, authLevel) for every HTTP trigger registered in `function_app.app`."""
    triggers = []
    for name in FUNCTIONS:
        for trigger in (b for b in bindings(name) if b["type"] == "httpTrigger"):
            # The host's template syntax: `{id:int}`, `{name?}` and `{*rest}` are `{id}`, `{name}`, `{rest}` here.
            path = "/" + re.sub(r"\{\*?([^}:?]+)[^}]*\}", r"{\1}", trigger.get("route") or name)
            triggers += [(method.upper(), path, str(trigger["authLevel"])) for method in trigger["methods"]]
    return triggers


def registered_routes() -> set[tuple[str, str]]:
    """Return (METHOD, /path template) for every registered HTTP route."""
    return {(method, path) for method, path, _ in http_triggers()}


def documented_routes() -> set[tuple[str, str]]:
    """Return (METHOD, /path template) for every operation in the document."""
    paths: dict[str, dict[str, Any]] = document()["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item if method in HTTP_METHODS}


def test_the_document_is_valid_openapi_3_1() -> None:
    """The document passes openapi-spec-validator's OpenAPI 3.1 checks and survives a JSON round trip."""
    spec = document()
    assert spec["openapi"] == "3.1.0"
    validate(cast(Mapping[Hashable, Any], spec), cls=OpenAPIV31SpecValidator)
    assert json.loads(json.dumps(spec)) == spec


def test_every_component_schema_is_json_schema_2020_12() -> None:
    """Each schema under components/schemas is a valid Draft 2020-12 schema."""
    for schema in document()["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_registered_route_is_documented_and_every_documented_route_registered() -> None:
    """The document's operations are exactly the app's HTTP routes."""
    registered, documented = registered_routes(), documented_routes()
    assert registered - documented == set(), "registered routes missing from mapping/functions/openapi.py"
    assert documented - registered == set(), "documented routes that no function serves"


def test_keyed_and_anonymous_routes_match_the_security_requirements() -> None:
    """Anonymous functions have `security: []`; the others inherit the function-key requirement."""
    spec = document()
    assert spec["security"] == [{"functionKeyHeader": []}, {"functionKeyQuery": []}]
    for method, path, auth_level in http_triggers():
        expected: list[Any] | None = [] if auth_level == "ANONYMOUS" else None
        assert spec["paths"][path][method.lower()].get("security") == expected, (method, path)


async def test_the_openapi_function_serves_the_document() -> None:
    """GET /api/openapi.json is anonymous and answers 200 with the document as JSON."""
    assert binding("openapi", "httpTrigger")["authLevel"] == "ANONYMOUS"
    status, body, response = await http("openapi", http_request("GET", "openapi.json"))
    assert (status, response.mimetype) == (200, "application/json")
    assert body == document()


def test_the_checker_accepts_documented_answers() -> None:
    """Answers the document describes pass, with a percent-encoded path and header names in any case."""
    check_answer("GET", "/api/users/bob%20x", 200, body=PRESENCE)
    check_answer("GET", "/api/users", 200, body={"users": [{"user": "bob", "connections": 2}], "next": None})
    check_answer("POST", "/api/send", 503, headers={"retry-after": "5"}, body={"error": "storage is down"})
    check_answer("POST", "/api/negotiate", 200, body={"url": "u", "accessToken": "t", "availableTransports": []})
    check_answer("GET", "/api/rooms/lobby.1", 200, body={"room": "lobby.1", "members": [], "next": None})
    check_answer("POST", "/api/send", 401, content_type=None)
    check_answer("POST", "/api/negotiate", 401, body={"error": "sign in first: no authenticated principal"})
    check_answer("POST", "/api/negotiate", 500, content_type=None)


def test_negotiate_documents_who_refuses_a_call_without_a_principal() -> None:
    """negotiate lists the app's 401 (a blank header, JSON), the binding's 500 (no header, no body), and says that
    deployed App Service Authentication answers 401 first."""
    operation = document()["paths"]["/negotiate"]["post"]
    responses = operation["responses"]
    assert set(responses) == {"200", "400", "401", "403", "500", "503"}
    assert "content" in responses["401"], "the app's 401 is its JSON"
    assert "blank" in responses["401"]["description"]
    assert "content" not in responses["500"], "the host's 500 has no body"
    assert "binding" in responses["500"]["description"]
    for text in (operation["description"], responses["401"]["description"]):
        assert "App Service Authentication answers" in text
    with pytest.raises(AssertionError, match="no body, but the document gives it application/json"):
        check_answer("POST", "/api/negotiate", 401, content_type=None)


def test_the_checker_rejects_an_undocumented_status() -> None:
    """A status the operation does not list fails, naming the documented ones."""
    with pytest.raises(AssertionError, match=r"answered 404 .*status not documented; documented: 200, 400"):
        check_answer("GET", "/api/users", 404, body={"error": "no such thing"})


def test_the_checker_rejects_an_undocumented_path_or_method() -> None:
    """A path no template matches, or a method the path does not have, fails."""
    with pytest.raises(AssertionError, match="no documented path matches /nowhere"):
        check_answer("GET", "/api/nowhere", 200, body={})
    with pytest.raises(AssertionError, match="documents only GET"):
        check_answer("DELETE", "/api/users/bob", 200, body=PRESENCE)


def test_the_checker_rejects_a_body_missing_a_required_field() -> None:
    """A 200 from GET /users/{user} without `rooms` fails, naming the field."""
    body = {key: value for key, value in PRESENCE.items() if key != "rooms"}
    with pytest.raises(AssertionError, match="'rooms' is a required property"):
        check_answer("GET", "/api/users/bob", 200, body=body)


def test_the_checker_rejects_a_wrong_type() -> None:
    """`delivered` as a string, or a closed object with an extra property, fails with the JSON path."""
    with pytest.raises(AssertionError, match=r"at \$\.delivered: '2' is not of type 'integer'"):
        check_answer("POST", "/api/send", 200, body={"to": "bob", "delivered": "2"})
    with pytest.raises(AssertionError, match="Additional properties are not allowed"):
        check_answer("POST", "/api/send", 200, body={"to": "bob", "delivered": 2, "extra": True})


def test_the_checker_checks_date_time_formats() -> None:
    """A connection time that is not an RFC 3339 date-time in UTC fails."""
    for bad in ("2026-13-01T00:00:00Z", "yesterday", "2026-11-22T09:00:00+01:00"):
        body = {**PRESENCE, "connections": [{**CONNECTION, "connectedAt": bad}]}
        with pytest.raises(AssertionError, match=r"at \$\.connections\[0\]\.connectedAt"):
            check_answer("GET", "/api/users/bob", 200, body=body)


def test_the_checker_rejects_a_missing_or_bad_retry_after() -> None:
    """A 503 without Retry-After, or with one that is not whole seconds, fails."""
    with pytest.raises(AssertionError, match="the required header Retry-After is missing"):
        check_answer("GET", "/api/users", 503, headers={}, body={"error": "storage is down"})
    with pytest.raises(AssertionError, match="Retry-After does not match"):
        check_answer("GET", "/api/users", 503, headers={"Retry-After": "soon"}, body={"error": "storage is down"})


def test_the_checker_rejects_the_wrong_content_type() -> None:
    """A text answer, or no body where JSON is documented, fails."""
    with pytest.raises(AssertionError, match="Content-Type text/plain"):
        check_answer("GET", "/api/users", 200, body="hi", content_type="text/plain")
    with pytest.raises(AssertionError, match="no body"):
        check_answer("GET", "/api/users", 200, content_type=None)
