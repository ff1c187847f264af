"""Map SignalR users to their connections in Azure Table Storage: the library behind the function app."""

from mapping.entity import ConnectionEntity
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
from mapping.invocation import Invocation, parse_invocation
from mapping.keys import connection_key, normalize_user_name, user_key
from mapping.liveness import Liveness, SignalRLiveness, liveness_for
from mapping.send import SendRequest, parse_send_body, send_to_user
from mapping.settings import Settings, get_settings
from mapping.store import ConnectionStore, UsersPage, default_store, reset_default_store
from mapping.sweep import SweepResult, sweep

__all__ = [
    "ConfigurationError",
    "ConnectionEntity",
    "ConnectionStore",
    "InvalidNameError",
    "InvalidRequestError",
    "Invocation",
    "Liveness",
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
    "default_store",
    "get_settings",
    "liveness_for",
    "normalize_user_name",
    "on_connected",
    "on_disconnected",
    "on_send",
    "on_timer",
    "parse_invocation",
    "parse_send_body",
    "reset_default_store",
    "send_to_user",
    "sweep",
    "user_key",
]
