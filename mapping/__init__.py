"""Map SignalR users to their connections in Azure Table Storage: the library behind the function app."""

from mapping.errors import (
    ConfigurationError,
    InvalidNameError,
    InvalidRequestError,
    MappingError,
    PayloadTooLargeError,
    StorageError,
    StorageUnavailableError,
    UserOfflineError,
)
from mapping.events import on_connected, on_disconnected, on_send, on_timer
from mapping.keys import connection_key, normalize_user_name, user_key
from mapping.presence.readers import UsersPage
from mapping.presence.rows import ConnectionEntity
from mapping.presence.store import ConnectionStore
from mapping.rooms.policy import AccessPolicy, Claims
from mapping.settings import Settings
from mapping.signalr.invocation import Invocation, parse_invocation
from mapping.signalr.liveness import Liveness, LivenessCheck, SignalRLiveness
from mapping.signalr.send import SendRequest, parse_send_body, send_to_user
from mapping.sweep import SweepResult, sweep

__all__ = [
    "AccessPolicy",
    "Claims",
    "ConfigurationError",
    "ConnectionEntity",
    "ConnectionStore",
    "InvalidNameError",
    "InvalidRequestError",
    "Invocation",
    "Liveness",
    "LivenessCheck",
    "MappingError",
    "PayloadTooLargeError",
    "SendRequest",
    "Settings",
    "SignalRLiveness",
    "StorageError",
    "StorageUnavailableError",
    "SweepResult",
    "UserOfflineError",
    "UsersPage",
    "connection_key",
    "normalize_user_name",
    "on_connected",
    "on_disconnected",
    "on_send",
    "on_timer",
    "parse_invocation",
    "parse_send_body",
    "send_to_user",
    "sweep",
    "user_key",
]


def __getattr__(name: str) -> object:
    """`from mapping import runtime`: the process's shared state, loaded on first use (with the queue's SDK)."""
    if name == "runtime":
        from mapping.functions import runtime

        return runtime
    raise AttributeError(f"module 'mapping' has no attribute {name!r}")
