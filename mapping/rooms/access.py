"""Who may reach whom: the direct-message policy (`DIRECT_MESSAGES`), decided for each client `send`.

`shared-room` (the default): a client may send to users who share a room with its user; `anyone`; `nobody`. A
refused message is answered as an offline recipient is, so `send` is no presence oracle. Servers (`POST /api/send`,
function key) are not subject to it.
"""

from __future__ import annotations

from mapping.keys import user_key
from mapping.presence.store import ConnectionStore
from mapping.presence.user_view import UserView
from mapping.rooms.membership import Rooms


async def may_message(store: ConnectionStore, sender: str, recipient: UserView) -> bool:
    """Return whether `sender` may send a direct message to the user whose partition `recipient` is."""
    policy = store.settings.direct_messages
    if policy == "anyone" or user_key(sender) == recipient.partition:
        return True
    if policy == "nobody" or not recipient.rooms:
        return False
    return bool(recipient.rooms.keys() & await Rooms(store).rooms_of(sender))  # one more request: the sender's rooms
