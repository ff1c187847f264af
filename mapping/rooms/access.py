"""Who may reach whom: the direct-message policy (`DIRECT_MESSAGES`), decided for each client `send`.

`shared-room` (the default): a client may send to users who share a room with its user; `anyone`; `nobody`; a
blocked sender reaches nobody. The decision reads the same whatever it decides (the recipient's partition and the
sender's standing, concurrently: two table requests), so neither its cost nor its failures tell a refused message
from one to an offline recipient, which is answered alike. Servers (`POST /api/send`, function key) are not subject
to it.
"""

from __future__ import annotations

import asyncio

from mapping.keys import user_key
from mapping.presence.store import ConnectionStore
from mapping.presence.user_view import UserView
from mapping.rooms.membership import Rooms


async def reachable(store: ConnectionStore, sender: str, recipient: str) -> UserView | None:
    """Return the recipient's partition as read if `sender` may send them a direct message, else None."""
    partition = user_key(recipient)
    view, standing = await asyncio.gather(store.read_user(partition), Rooms(store).standing(sender))
    policy = store.settings.direct_messages
    if standing.blocked or policy == "nobody":
        return None
    shared = user_key(sender) == partition or bool(view.rooms.keys() & standing.rooms)
    return view if policy == "anyone" or shared else None
