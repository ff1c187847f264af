"""The process's shared state, built on first use: the settings, the store and the SignalR checkers; one reset()."""

from __future__ import annotations

from mapping.errors import ConfigurationError
from mapping.presence.feed import NO_FEED, Feed, QueueFeed
from mapping.presence.store import ConnectionStore
from mapping.rooms.policy import SETTINGS_DECIDE, AccessPolicy
from mapping.settings import GRACE_QUEUE, Settings, SignalRConnection
from mapping.signalr.liveness import (
    AGE_ONLY,
    AgeOnly,
    ConnectionCloser,
    GroupAdder,
    Liveness,
    LivenessCheck,
    SignalRLiveness,
)
from mapping.storage.queue import DelayedActions, QueueDelayedActions

_settings: Settings | None = None
_store: ConnectionStore | None = None
_delayed: QueueDelayedActions | None = None
_checkers: dict[SignalRConnection, SignalRLiveness] = {}
_access: AccessPolicy = SETTINGS_DECIDE  # the app's, as passed to register(app, access=...)


def settings() -> Settings:
    """Return the process-wide settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = Settings.from_environment()
    return _settings


def store() -> ConnectionStore:
    """Return the process-wide store, built from the app settings on first use, asking the service about a connection
    that calls without a row (events `_map_late`) where the app has SignalR REST access."""
    global _store
    if _store is None:
        _store = ConnectionStore(settings())
        _store.probe = _Probe(_client(_store.settings.signalr))
        _store.feed = _feed(_store.settings)
        if _store.settings.queue is not None:  # big rooms' flushes wait on the delayed actions' queue
            _store.later = delayed_actions()
    return _store


def _feed(current: Settings) -> Feed:
    """The presence feed: on the queue `PRESENCE_FEED_QUEUE` names, in AzureWebJobsStorage, or none."""
    if not current.presence_feed_queue:
        return NO_FEED
    if current.queue is None:
        raise ConfigurationError("PRESENCE_FEED_QUEUE needs a queue: set AzureWebJobsStorage (or leave it empty)")
    return QueueFeed(QueueDelayedActions(current.queue, current.presence_feed_queue))


class _Probe:
    """The liveness check as a connection probe: alive, gone, or unknown."""

    def __init__(self, check: LivenessCheck) -> None:
        self._check = check

    async def alive(self, hub: str, connection_id: str) -> bool | None:
        """Ask the service (one HEAD); None without REST access or when it cannot say."""
        if not self._check.asks_service:
            return None
        verdict = await self._check.check(hub, connection_id)
        return True if verdict is Liveness.ALIVE else False if verdict is Liveness.GONE else None


def delayed_actions() -> DelayedActions:
    """Return the process-wide queue of delayed actions (the grace decisions), in AzureWebJobsStorage."""
    global _delayed
    if _delayed is None:
        queue = settings().queue
        if queue is None:
            raise ConfigurationError(
                "PRESENCE_GRACE_SECONDS needs a queue: set AzureWebJobsStorage (or PRESENCE_GRACE_SECONDS=0)"
            )
        _delayed = QueueDelayedActions(queue, GRACE_QUEUE)
    return _delayed


def access() -> AccessPolicy:
    """Return the app's access policy (the settings decide alone unless the app passed one to `register`)."""
    return _access


def use_access(policy: AccessPolicy) -> None:
    """Make `policy` the app's access policy (`register(app, access=...)`); it outlives reset()."""
    global _access
    _access = policy


def liveness_for(connection: SignalRConnection | None) -> LivenessCheck:
    """Return the process's checker for a SignalR connection, or the age-only check when there is none."""
    return _client(connection)


def groups_for(connection: SignalRConnection | None) -> GroupAdder:
    """Return the process's SignalR REST client for group additions, or the age-only check (adds nothing)."""
    return _client(connection)


def closer_for(connection: SignalRConnection | None) -> ConnectionCloser:
    """Return the process's SignalR REST client for closing connections, or the age-only check (closes nothing)."""
    return _client(connection)


def _client(connection: SignalRConnection | None) -> SignalRLiveness | AgeOnly:
    if connection is None:
        return AGE_ONLY
    if connection not in _checkers:
        _checkers[connection] = SignalRLiveness(connection)
    return _checkers[connection]


async def reset() -> None:
    """Close and forget the store, the delayed actions and the checkers, and the settings (shutdown, tests)."""
    global _settings, _store, _delayed
    current, _store, _settings = _store, None, None
    delayed, _delayed = _delayed, None
    if delayed is not None:
        await delayed.close()
    checkers = list(_checkers.values())
    _checkers.clear()
    if current is not None:
        await current.feed.close()
        await current.close()
    for checker in checkers:
        await checker.close()
