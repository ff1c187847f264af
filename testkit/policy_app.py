"""A function app for the end-to-end access tests: the connection mapper registered with an access policy that
decides on the client token's claims (`register(app, access=...)`), and an HTTP function that tells what the policy
was asked.

The policy admits a token carrying the claim `role: staff` to every room whose name starts with `staff`, and leaves
every other decision to the settings (None); it records each question with the claims it was given, which
`GET /api/policy/questions` answers (anonymous: a test helper, never deployed).
"""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from mapping import AccessPolicy, Claims
from mapping.registration import register

STAFF_ROOMS = "staff"  # the rooms staff may join unasked: names starting with this


class ClaimsPolicy(AccessPolicy):
    """Staff (claim `role: staff`) may join staff rooms; the settings decide the rest; every question is recorded."""

    def __init__(self) -> None:
        self.questions: list[dict[str, Any]] = []

    async def may_join(self, user: str, room: str, claims: Claims) -> bool | None:
        """Admit staff to staff rooms; the settings decide the rest (closed, unless open or granted)."""
        self._record("join", user, room, claims)
        return True if room.startswith(STAFF_ROOMS) and claims.get("role") == "staff" else None

    async def may_message(self, user: str, recipient: str, claims: Claims) -> bool | None:
        """Record the question; DIRECT_MESSAGES decides."""
        self._record("message", user, recipient, claims)
        return None

    async def may_watch(self, user: str, watched: str, claims: Claims) -> bool | None:
        """Record the question; PRESENCE_WATCH decides."""
        self._record("watch", user, watched, claims)
        return None

    def _record(self, call: str, user: str, target: str, claims: Claims) -> None:
        self.questions.append({"call": call, "user": user, "target": target, "claims": dict(claims)})


POLICY = ClaimsPolicy()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
register(app, access=POLICY)


@app.function_name("policy_questions")
@app.route(route="policy/questions", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def policy_questions(req: func.HttpRequest) -> func.HttpResponse:
    """Answer every question the policy was asked so far, oldest first: call, user, target and claims."""
    return func.HttpResponse(json.dumps(POLICY.questions), mimetype="application/json")
