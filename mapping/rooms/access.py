"""Who may reach whom: the direct-message decision for each client `send` (the app's policy, else `DIRECT_MESSAGES`).

`shared-room` (the default): a client may send to users who share a room with its user; `anyone`; `nobody`; a
blocked sender reaches nobody. The app's policy (`mapping.rooms.policy`), when it answers, decides instead of the
setting. The decision reads the same whatever it decides (the recipient's partition and the sender's standing,
concurrently: two table requests, while the policy is asked), so neither its cost nor its failures tell a refused
message from one to an offline recipient, which is answered alike. Servers (`POST /api/send`, function key) are not
subject to it.
"""

from __future__ import annotations

import asyncio

from mapping.keys import user_key
from mapping.presence.store import ConnectionStore
from mapping.presence.user_view import UserView
from mapping.rooms.membership import Rooms
from mapping.rooms.policy import SETTINGS_DECIDE, AccessPolicy, Claims, asked


async def reachable(
    store: ConnectionStore,
    sender: str,
    recipient: str,
    *,
    policy: AccessPolicy = SETTINGS_DECIDE,
    claims: Claims | None = None,
) -> UserView | None:
    """Return the recipient's partition as read if `sender` may send them a direct message, else None."""
    partition = user_key(recipient)
    view, standing, answer = await asyncio.gather(
        store.read_user(partition),
        Rooms(store).standing(sender),
        asked(policy.may_message(sender, recipient, dict(claims or {})), what="may_message"),
    )
    if standing.blocked:
        return None
    if answer is not None:
        return view if answer else None
    setting = store.settings.direct_messages
    shared = user_key(sender) == partition or bool(view.rooms.keys() & standing.rooms)
    return view if setting == "anyone" or (setting == "shared-room" and shared) else None
