"""The process's shared state, built on first use: the settings, the store and the SignalR checkers; one reset()."""

from __future__ import annotations

from mapping.liveness import AGE_ONLY, LivenessCheck, SignalRLiveness
from mapping.settings import Settings, SignalRConnection
from mapping.store import ConnectionStore

_settings: Settings | None = None
_store: ConnectionStore | None = None
_checkers: dict[SignalRConnection, SignalRLiveness] = {}


def settings() -> Settings:
    """Return the process-wide settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = Settings.from_environment()
    return _settings


def store() -> ConnectionStore:
    """Return the process-wide store, built from the app settings on first use."""
    global _store
    if _store is None:
        _store = ConnectionStore(settings())
    return _store


def liveness_for(connection: SignalRConnection | None) -> LivenessCheck:
    """Return the process's checker for a SignalR connection, or the age-only check when there is none."""
    if connection is None:
        return AGE_ONLY
    if connection not in _checkers:
        _checkers[connection] = SignalRLiveness(connection)
    return _checkers[connection]


async def reset() -> None:
    """Close and forget the store and the checkers, and forget the settings (for shutdown, tests, reconfiguration)."""
    global _settings, _store
    current, _store, _settings = _store, None, None
    checkers = list(_checkers.values())
    _checkers.clear()
    if current is not None:
        await current.close()
    for checker in checkers:
        await checker.close()
