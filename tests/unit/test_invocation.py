"""The SignalR trigger's payload as parsed: headers and the client token's claims kept, bad shapes dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mapping.signalr.invocation import parse_invocation


def test_the_claims_of_the_client_token_are_kept() -> None:
    """`Claims` (one value per type; a list joined) reach the parsed invocation beside the user and headers."""
    payload = {
        "Category": "messages",
        "Event": "join",
        "ConnectionId": "c1",
        "UserId": "alice",
        "Headers": {"User-Agent": "test"},
        "Claims": {"roles": ["editor", "viewer"], "tenant": "contoso", "aud": "https://x/client/?hub=chat"},
    }
    invocation = parse_invocation(json.dumps(payload))
    assert invocation.claims == {"roles": "editor, viewer", "tenant": "contoso", "aud": "https://x/client/?hub=chat"}
    assert (invocation.user_id, invocation.header("user-agent")) == ("alice", "test")


@pytest.mark.parametrize("claims", [None, "role: admin", ["admin"], 7, {"ok": "yes", "n": 1, "x": None}])
def test_claims_of_the_wrong_shape_are_dropped(claims: Any) -> None:
    """Claims that are not an object of strings read as missing; only string (or string-list) values stay."""
    invocation = parse_invocation(json.dumps({"ConnectionId": "c1", "UserId": "alice", "Claims": claims}))
    assert invocation.claims == ({"ok": "yes"} if isinstance(claims, dict) else {})
