"""The application's own access decisions: the policy an app passes to `register(app, access=...)`.

The settings decide who may go where (`ROOMS_OPEN` and a server's grants for rooms, `DIRECT_MESSAGES`,
`PRESENCE_WATCH`); an app that knows more (its own roles, a team's channels, a friends list) subclasses
`AccessPolicy` and overrides what it decides. Each decision is given the caller's user name, what they ask for,
and the claims of their client token as SignalR delivered them, and answers True (allow), False (refuse) or None
(the settings decide):

- `may_join`: asked only when the room is neither open nor granted to the user; True admits them.
- `may_message`: asked for each client `send` before `DIRECT_MESSAGES`; a bool decides instead of it.
- `may_watch`: asked for each watched user before `PRESENCE_WATCH`; a bool decides instead of it. A watch it
  allows lasts as long as the connection (or its `unwatch`), rooms or not.

A blocked user is refused before any policy is asked. A decision that raises refuses (fail closed; the error is
logged); a decision must not be slow, as every join, send and watch waits for it (a join holds the user's turn).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping

logger = logging.getLogger(__name__)

# Claim type -> value. SignalR's extension delivers one value per type (the first; Azure Functions SignalR extension,
# SignalRTriggerUtils.GetClaimDictionary); a claim whose value holds ": " does not arrive at all.
Claims = Mapping[str, str]


class AccessPolicy:
    """An application's access decisions; this base decides nothing (every answer None: the settings decide)."""

    async def may_join(self, user: str, room: str, claims: Claims) -> bool | None:
        """Whether `user` may join `room`, which is neither open nor granted to them (True admits)."""
        return None

    async def may_message(self, user: str, recipient: str, claims: Claims) -> bool | None:
        """Whether `user` may send `recipient` a direct message (None: `DIRECT_MESSAGES` decides)."""
        return None

    async def may_watch(self, user: str, watched: str, claims: Claims) -> bool | None:
        """Whether `user` may watch `watched`'s presence (None: `PRESENCE_WATCH` decides)."""
        return None


SETTINGS_DECIDE = AccessPolicy()  # the policy of an app that passes none


async def asked(decision: Awaitable[bool | None], *, what: str) -> bool | None:
    """Return a policy's answer; one that raised or answered no bool or None refuses (False), logged."""
    try:
        answer = await decision
    except Exception:
        logger.exception("access policy: %s raised; refused", what)
        return False
    if answer is not None and not isinstance(answer, bool):
        logger.error("access policy: %s answered %s, not True, False or None; refused", what, type(answer).__name__)
        return False
    return answer
