"""What the app does on each SignalR event; each handler returns the messages to send."""

from __future__ import annotations

import logging

from mapping.errors import InvalidNameError, InvalidRequestError, UserOfflineError
from mapping.invocation import Invocation
from mapping.liveness import AGE_ONLY, MAPPED_GROUP, LivenessCheck
from mapping.messages import Message, error_message, join_group, presence_message
from mapping.presence import PresenceChange
from mapping.send import parse_send_arguments, send_to_user
from mapping.store import ConnectionStore
from mapping.sweep import sweep

logger = logging.getLogger(__name__)


async def on_connected(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Map a new connection to its user; announce the user online on their first live connection."""
    if not event.user_id or not event.connection_id:
        logger.warning("connected: connection %s has no user id; not mapped", event.connection_id)
        return []
    try:
        outcome = await store.connect(
            event.user_id, event.connection_id, hub=event.hub, user_agent=event.header("User-Agent")
        )
    except InvalidNameError as error:
        logger.warning("connected: connection not mapped: %s", error)
        return []
    logger.info("connected: %s", outcome.entity.connection_id)
    if store.lease.reconciled:
        # The sweep lists this group to learn which connections the service still has (no table request).
        return [join_group(outcome.entity.connection_id, MAPPED_GROUP), *_announced(outcome.presence)]
    return _announced(outcome.presence)


async def on_disconnected(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Remove a closed connection's row; announce the user offline when no live connection is left."""
    if not event.user_id or not event.connection_id:
        return []
    try:
        outcome = await store.disconnect(event.user_id, event.connection_id)
    except InvalidNameError as error:
        logger.warning("disconnected: ignored: %s", error)
        return []
    return _announced(outcome.presence)


async def on_send(store: ConnectionStore, event: Invocation) -> list[Message]:
    """Deliver a client's `send(to, message)` to the recipient, or answer the caller with one error."""
    if not event.connection_id:
        logger.warning("send: event without a connection id ignored")
        return []
    revived = await _refresh(store, event.user_id, event.connection_id) if event.user_id else []
    try:
        request = parse_send_arguments(event.arguments)
        return revived + await send_to_user(store, request, sender=event.user_id)
    except InvalidRequestError as error:
        return [*revived, error_message(event.connection_id, str(error))]
    except UserOfflineError:
        return [*revived, error_message(event.connection_id, "recipient is offline", to=request.to)]


async def on_timer(store: ConnectionStore, *, liveness: LivenessCheck = AGE_ONLY) -> list[Message]:
    """Sweep stale rows (liveness-checked unless age-only); announce users who went offline."""
    result = await sweep(store, liveness=liveness)
    return [presence_message(c.user, online=c.online, version=c.version) for c in result.presence]


def _announced(change: PresenceChange | None) -> list[Message]:
    if change is None:
        return []
    return [presence_message(change.user, online=change.online, version=change.version)]


async def _refresh(store: ConnectionStore, user_id: str, connection_id: str) -> list[Message]:
    """Refresh the caller's lease; a lease made live again after it lapsed is a presence change."""
    try:
        outcome = await store.touch(user_id, connection_id)
    except InvalidNameError as error:
        logger.warning("send: caller not refreshed: %s", error)
        return []
    if not outcome.found:
        logger.info("send: caller %s has no row to refresh", connection_id)
    return _announced(outcome.presence)
