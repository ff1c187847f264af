"""Settings read once from the Functions app settings (environment variables) into a frozen dataclass."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from mapping.errors import ConfigurationError

# Connections: each is set either as a plain value (a connection string) or as an identity-based
# section `<NAME>__...` (`__tableServiceUri`, `__serviceUri`, `__accountName`, `__clientId`, ...).
CONNECTION_SETTINGS: tuple[str, ...] = (
    "AzureWebJobsStorage",
    "MAPPING_STORAGE",
    "AzureSignalRConnectionString",
)
# Plain values; each has a default, but a deployment sets them all explicitly.
VALUE_SETTINGS: tuple[str, ...] = (
    "MAPPING_TABLE",
    "MAPPING_TTL_SECONDS",
    "SIGNALR_HUB",
    "PRESENCE_EVENTS",
    "SWEEP_SCHEDULE",
    "MAPPING_MAX_AGE_SECONDS",
    "PRESENCE_AUDIENCE",
    "PRESENCE_WATCH",
    "DIRECT_MESSAGES",
    "ROOMS_OPEN",
    "PRESENCE_FEED_QUEUE",
    "CLIENT_CALL_BURST",
    "CLIENT_CALL_RATE",
    "CLIENT_MESSAGE_MAX_BYTES",
    "ROOM_MAX_MEMBERS",
    "ROOM_BATCH_ABOVE",
    "ROOM_BATCH_SECONDS",
    "USER_MAX_CONNECTIONS",
    "PRESENCE_GRACE_SECONDS",
    "MAPPING_INDEX_SHARDS",
    "MAPPING_LISTING_GROUPS",
)
# Every app setting the app reads, by name: the one list deployment templates are checked against.
APP_SETTING_NAMES: tuple[str, ...] = CONNECTION_SETTINGS + VALUE_SETTINGS

DEFAULT_TABLE = "Connections"
DEFAULT_TTL_SECONDS = 600
DEFAULT_MAX_AGE_SECONDS = 24 * 3600
DEFAULT_HUB = "chat"
DEFAULT_SWEEP_SCHEDULE = "0 */5 * * * *"
MAX_SECONDS = 366 * 24 * 3600  # durations above a year are configuration mistakes
DEFAULT_GRACE_SECONDS = 15
MAX_GRACE_SECONDS = 3600  # a grace longer than an hour is a configuration mistake
AUDIENCES = ("scoped", "hub")  # PRESENCE_AUDIENCE: rooms, watchers and own tabs; or the whole hub
# PRESENCE_WATCH: whom a connection may watch: users sharing a room with its user (the default), anyone, or nobody.
WATCH_POLICIES = ("room-members", "anyone", "nobody")
_ROOM_PATTERN = re.compile(r"\*|[A-Za-z0-9._-]{1,63}\*|[A-Za-z0-9._-]{1,64}")  # ROOMS_OPEN: a name, prefix* or *
# DIRECT_MESSAGES: to whom a client may `send`: users sharing a room with the sender, anyone, or nobody.
DM_POLICIES = ("shared-room", "anyone", "nobody")
# MAPPING_INDEX_SHARDS: partitions per expiry-index bucket. Each takes about 2,000 writes/s (Table Storage's
# per-partition target); at half that for headroom, S = ceil(peak connects and refreshes per second / 1,000).
DEFAULT_INDEX_SHARDS = 8
MAX_INDEX_SHARDS = 999
# MAPPING_LISTING_GROUPS: SignalR groups the sweep lists concurrently (200 connections a request). At latency L per
# request and N connections a sweep lists for about N / 200 / min(K, 16) * L: K = 16 lists 1,000,000 at 30 ms in ~10 s.
DEFAULT_LISTING_GROUPS = 16
MAX_LISTING_GROUPS = 999
# CLIENT_CALL_BURST and CLIENT_CALL_RATE: a connection's client calls, as a token bucket (mapping.presence.budget).
DEFAULT_CALL_BURST = 20
DEFAULT_CALL_RATE = 5
MAX_CALL_BUDGET = 10_000
MAX_CAP = 1_000_000  # ROOM_MAX_MEMBERS and USER_MAX_CONNECTIONS at most
# ROOM_BATCH_ABOVE and ROOM_BATCH_SECONDS: a room with more members than this hears its members' presence coalesced,
# one `presenceBatch` per room per this many seconds (mapping.rooms.batch).
DEFAULT_BATCH_ABOVE = 200
DEFAULT_BATCH_SECONDS = 2
MAX_BATCH_SECONDS = 60
# CLIENT_MESSAGE_MAX_BYTES: a client's send or sendToRoom message as JSON (the HTTP API for servers keeps 64 KiB).
DEFAULT_CLIENT_MESSAGE_BYTES = 16 * 1024
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
GRACE_QUEUE = "presence-grace"  # the queue in AzureWebJobsStorage that carries the grace period's decisions
# A Storage queue's name: 3-63 lowercase letters, digits and single hyphens, starting and ending alphanumeric.
QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")

_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_HUB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True, slots=True)
class StorageConnection:
    """How to reach the table: a connection string, or an endpoint plus a managed identity."""

    connection_string: str | None = None
    table_service_uri: str | None = None
    client_id: str | None = None
    source: str = "MAPPING_STORAGE"

    def __repr__(self) -> str:
        # Connection strings hold account keys: never let them reach a log through repr().
        kind = "connection string" if self.connection_string else f"identity at {self.table_service_uri}"
        return f"StorageConnection({kind} from {self.source})"


@dataclass(frozen=True, slots=True)
class QueueConnection:
    """How to reach the host storage's queues: a connection string, or a queue endpoint plus a managed identity."""

    connection_string: str | None = None
    queue_service_uri: str | None = None
    client_id: str | None = None
    managed_identity: bool = False  # `__credential=managedidentity`: a managed identity, never developer credentials
    source: str = "AzureWebJobsStorage"

    def __repr__(self) -> str:
        # Connection strings hold account keys: never let them reach a log through repr().
        kind = "connection string" if self.connection_string else f"identity at {self.queue_service_uri}"
        return f"QueueConnection({kind} from {self.source})"


@dataclass(frozen=True, slots=True)
class SignalRConnection:
    """How to reach the SignalR Service REST API: an endpoint plus an access key or a managed identity."""

    endpoint: str
    access_key: str | None = None
    client_id: str | None = None

    def __repr__(self) -> str:
        auth = "access key" if self.access_key else "identity"
        return f"SignalRConnection({self.endpoint}, {auth})"


@dataclass(frozen=True, slots=True)
class Settings:
    """The app settings the mapping library uses, validated."""

    storage: StorageConnection
    table_name: str = DEFAULT_TABLE
    ttl: timedelta = timedelta(seconds=DEFAULT_TTL_SECONDS)
    hub: str = DEFAULT_HUB
    presence_events: bool = True
    sweep_schedule: str = DEFAULT_SWEEP_SCHEDULE
    max_age: timedelta = timedelta(seconds=DEFAULT_MAX_AGE_SECONDS)
    signalr: SignalRConnection | None = None
    queue: QueueConnection | None = None  # None: AzureWebJobsStorage has no queue endpoint the app can use
    presence_audience: str = "scoped"
    presence_watch: str = WATCH_POLICIES[0]
    direct_messages: str = DM_POLICIES[0]
    client_call_burst: int = DEFAULT_CALL_BURST  # CLIENT_CALL_BURST: a connection's budget of client calls at once
    client_call_rate: int = DEFAULT_CALL_RATE  # CLIENT_CALL_RATE: tokens a second it refills (0: no budget)
    client_message_max_bytes: int = DEFAULT_CLIENT_MESSAGE_BYTES  # CLIENT_MESSAGE_MAX_BYTES: a client send's message
    room_max_members: int | None = None  # ROOM_MAX_MEMBERS: members a client's join may make a room (None: no cap)
    user_max_connections: int | None = None  # USER_MAX_CONNECTIONS: a user's live connections (None: no cap)
    room_batch_above: int = DEFAULT_BATCH_ABOVE  # ROOM_BATCH_ABOVE: members beyond which a room's presence is batched
    room_batch_seconds: int = DEFAULT_BATCH_SECONDS  # ROOM_BATCH_SECONDS: how often a big room hears a batch
    rooms_open: tuple[str, ...] = ()  # ROOMS_OPEN: rooms any signed-in user may join (names, `prefix*`, `*`)
    presence_feed_queue: str = ""  # PRESENCE_FEED_QUEUE: the queue of AzureWebJobsStorage backends hear on ("": off)
    # No grace unless asked: the app setting's default (15 s) is applied by from_environment.
    presence_grace: timedelta = timedelta(0)
    index_shards: int = DEFAULT_INDEX_SHARDS
    listing_groups: int = DEFAULT_LISTING_GROUPS

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        return cls(
            storage=_storage_connection(env),
            table_name=_table_name(env),
            ttl=timedelta(seconds=_positive_int(env, "MAPPING_TTL_SECONDS", DEFAULT_TTL_SECONDS)),
            hub=_hub_name(env),
            presence_events=_boolean(env, "PRESENCE_EVENTS", default=True),
            sweep_schedule=_value(env, "SWEEP_SCHEDULE") or DEFAULT_SWEEP_SCHEDULE,
            max_age=timedelta(seconds=_positive_int(env, "MAPPING_MAX_AGE_SECONDS", DEFAULT_MAX_AGE_SECONDS)),
            signalr=_signalr_connection(env),
            queue=_queue_connection(env),
            presence_audience=_choice(env, "PRESENCE_AUDIENCE", AUDIENCES),
            presence_watch=_choice(env, "PRESENCE_WATCH", WATCH_POLICIES),
            direct_messages=_choice(env, "DIRECT_MESSAGES", DM_POLICIES),
            rooms_open=_rooms_open(env),
            presence_feed_queue=_feed_queue(env),
            client_call_burst=_count(env, "CLIENT_CALL_BURST", DEFAULT_CALL_BURST, MAX_CALL_BUDGET),
            client_call_rate=_whole_number(
                env, "CLIENT_CALL_RATE", DEFAULT_CALL_RATE, minimum=0, maximum=MAX_CALL_BUDGET
            ),
            room_max_members=_cap(env, "ROOM_MAX_MEMBERS"),
            user_max_connections=_cap(env, "USER_MAX_CONNECTIONS"),
            room_batch_above=_whole_number(env, "ROOM_BATCH_ABOVE", DEFAULT_BATCH_ABOVE, minimum=0, maximum=MAX_CAP),
            room_batch_seconds=_count(env, "ROOM_BATCH_SECONDS", DEFAULT_BATCH_SECONDS, MAX_BATCH_SECONDS),
            client_message_max_bytes=_count(
                env, "CLIENT_MESSAGE_MAX_BYTES", DEFAULT_CLIENT_MESSAGE_BYTES, MAX_CLIENT_MESSAGE_BYTES
            ),
            presence_grace=timedelta(seconds=_grace_seconds(env)),
            index_shards=_count(env, "MAPPING_INDEX_SHARDS", DEFAULT_INDEX_SHARDS, MAX_INDEX_SHARDS),
            listing_groups=_count(env, "MAPPING_LISTING_GROUPS", DEFAULT_LISTING_GROUPS, MAX_LISTING_GROUPS),
        )

    def batches(self, members: int) -> bool:
        """Return whether a room of `members` hears its members' presence in batches (`ROOM_BATCH_ABOVE`)."""
        return members > self.room_batch_above

    def opens(self, room: str) -> bool:
        """Return whether `ROOMS_OPEN` lets any signed-in user join `room` (by its name or a `prefix*` pattern)."""
        return any(room.startswith(p[:-1]) if p.endswith("*") else room == p for p in self.rooms_open)


def _value(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _storage_connection(env: Mapping[str, str]) -> StorageConnection:
    for name in ("MAPPING_STORAGE", "AzureWebJobsStorage"):
        if connection_string := _value(env, name):
            # `UseDevelopmentStorage=true;` is common; the SDK recognises it only without the `;`.
            return StorageConnection(connection_string=connection_string.rstrip("; "), source=name)
        if uri := _value(env, f"{name}__tableServiceUri"):
            return StorageConnection(
                table_service_uri=uri.rstrip("/"), client_id=_value(env, f"{name}__clientId"), source=name
            )
    if account := _value(env, "AzureWebJobsStorage__accountName"):
        return StorageConnection(
            table_service_uri=f"https://{account}.table.core.windows.net",
            client_id=_value(env, "AzureWebJobsStorage__clientId"),
            source="AzureWebJobsStorage",
        )
    raise ConfigurationError(
        "no table storage connection: set MAPPING_STORAGE (a connection string) or "
        "MAPPING_STORAGE__tableServiceUri, or AzureWebJobsStorage"
    )


def _queue_connection(env: Mapping[str, str]) -> QueueConnection | None:
    """Return the queues of AzureWebJobsStorage, as the Functions host reads that connection; None when unusable."""
    name = "AzureWebJobsStorage"
    if raw := _value(env, name):
        return _queue_connection_string(raw)
    uri = _value(env, f"{name}__queueServiceUri")
    if uri is None and (account := _value(env, f"{name}__accountName")):
        uri = f"https://{account}.queue.core.windows.net"
    if uri is None:
        return None
    credential = _value(env, f"{name}__credential")
    if credential is not None and credential.lower() != "managedidentity":
        raise ConfigurationError(f"{name}__credential must be managedidentity, got {credential!r}")
    return QueueConnection(
        queue_service_uri=uri.rstrip("/"),
        client_id=_value(env, f"{name}__clientId"),
        managed_identity=credential is not None,
        source=name,
    )


def _queue_connection_string(raw: str) -> QueueConnection | None:
    """Keep a connection string that reaches a queue service: the emulator's shorthand, an explicit QueueEndpoint,
    or an account whose endpoints are all derived from its name; one naming other endpoints but no queue is unusable."""
    parts: dict[str, str] = {}
    for part in raw.split(";"):
        key, _, value = part.partition("=")
        if key.strip():
            parts[key.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        # The SDK recognises only the exact `UseDevelopmentStorage=true`.
        return QueueConnection(connection_string="UseDevelopmentStorage=true")
    explicit = {key for key in parts if key.endswith("endpoint") and key != "queueendpoint"}
    if "queueendpoint" in parts or ("accountname" in parts and not explicit):
        return QueueConnection(connection_string=raw.strip())
    return None


def _signalr_connection(env: Mapping[str, str]) -> SignalRConnection | None:
    name = "AzureSignalRConnectionString"
    if raw := _value(env, name):
        return _parse_signalr_connection_string(raw)
    if uri := _value(env, f"{name}__serviceUri"):
        return SignalRConnection(endpoint=uri.rstrip("/"), client_id=_value(env, f"{name}__clientId"))
    return None


def _parse_signalr_connection_string(raw: str) -> SignalRConnection:
    parts: dict[str, str] = {}
    for part in raw.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            parts[key.strip().lower()] = value.strip()
    endpoint = parts.get("endpoint", "").rstrip("/")
    if not re.match(r"^https?://[^/\s]+", endpoint):
        raise ConfigurationError("AzureSignalRConnectionString has no valid Endpoint=https://...")
    if port := parts.get("port"):
        if not port.isdigit():
            raise ConfigurationError("AzureSignalRConnectionString has a Port that is not a number")
        url = urlsplit(endpoint)
        endpoint = str(urlunsplit(url._replace(netloc=f"{url.hostname}:{port}")))
    if access_key := parts.get("accesskey"):
        return SignalRConnection(endpoint=endpoint, access_key=access_key)
    if parts.get("authtype", "").lower() in {"azure.msi", "azure"}:
        return SignalRConnection(endpoint=endpoint, client_id=parts.get("clientid") or None)
    raise ConfigurationError("AzureSignalRConnectionString has neither AccessKey= nor AuthType=azure.msi")


def _table_name(env: Mapping[str, str]) -> str:
    name = _value(env, "MAPPING_TABLE") or DEFAULT_TABLE
    if not _TABLE_NAME.match(name) or name.lower() == "tables":
        raise ConfigurationError(
            f"MAPPING_TABLE {name!r} is not a valid table name (3-63 letters and digits, starting with a letter)"
        )
    return name


def _hub_name(env: Mapping[str, str]) -> str:
    hub = _value(env, "SIGNALR_HUB") or DEFAULT_HUB
    if not _HUB_NAME.match(hub):
        raise ConfigurationError(f"SIGNALR_HUB {hub!r} is not a valid hub name")
    return hub


def _whole_number(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int, unit: str = ""
) -> int:
    """Return a whole-number setting between `minimum` and `maximum`, or its default when unset."""
    raw = _value(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number{unit}, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigurationError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int, *, maximum: int = MAX_SECONDS) -> int:
    return _whole_number(env, name, default, minimum=1, maximum=maximum, unit=" of seconds")


def _boolean(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = _value(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """Return a setting that takes one of `choices` (case-insensitive); the first is the default."""
    raw = _value(env, name)
    if raw is None:
        return choices[0]
    if raw.lower() not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw.lower()


def _feed_queue(env: Mapping[str, str]) -> str:
    name = _value(env, "PRESENCE_FEED_QUEUE") or ""
    if name and not QUEUE_NAME.match(name):
        raise ConfigurationError(
            f"PRESENCE_FEED_QUEUE={name!r} is not a queue name: 3 to 63 lowercase letters, digits and single hyphens, "
            "starting and ending with a letter or digit"
        )
    if name == GRACE_QUEUE:
        raise ConfigurationError(f"PRESENCE_FEED_QUEUE may not be {GRACE_QUEUE!r}: the app reads that queue itself")
    return name


def _rooms_open(env: Mapping[str, str]) -> tuple[str, ...]:
    """Return ROOMS_OPEN's patterns (space-separated room names and prefixes ending in `*`); empty: none is open."""
    patterns = tuple(dict.fromkeys((_value(env, "ROOMS_OPEN") or "").split()))
    for pattern in patterns:
        if not _ROOM_PATTERN.fullmatch(pattern):
            raise ConfigurationError(
                "ROOMS_OPEN must list room names and prefixes ending in '*' (letters, digits, '-', '_', '.'), "
                f"separated by spaces; got {pattern!r}"
            )
    return patterns


def _cap(env: Mapping[str, str], name: str) -> int | None:
    """Return a cap (1 to 1,000,000), or None when unset or empty (no cap)."""
    if _value(env, name) is None:
        return None
    return _whole_number(env, name, 0, minimum=1, maximum=MAX_CAP)


def _count(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    """Return a count setting from 1 (one partition or group: the layout before shards) up to `maximum`."""
    return _whole_number(env, name, default, minimum=1, maximum=maximum)


def _grace_seconds(env: Mapping[str, str]) -> int:
    """Return PRESENCE_GRACE_SECONDS: 0 (announce offline at once) up to an hour."""
    return _whole_number(
        env, "PRESENCE_GRACE_SECONDS", DEFAULT_GRACE_SECONDS, minimum=0, maximum=MAX_GRACE_SECONDS, unit=" of seconds"
    )
