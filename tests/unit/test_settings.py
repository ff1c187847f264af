"""Settings: read by their app-setting names, validated, connection fallbacks."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from mapping.errors import ConfigurationError
from mapping.settings import APP_SETTING_NAMES, GRACE_QUEUE, Settings


def test_defaults_apply_when_only_a_connection_is_set() -> None:
    """Every setting but the storage connection has a default."""
    settings = Settings.from_environment({"MAPPING_STORAGE": "UseDevelopmentStorage=true"})
    assert settings.table_name == "Connections"
    assert settings.ttl == timedelta(seconds=600)
    assert settings.hub == "chat"
    assert settings.presence_events is True
    assert settings.sweep_schedule == "0 */5 * * * *"
    assert settings.storage.connection_string == "UseDevelopmentStorage=true"
    assert (settings.presence_audience, settings.presence_watch) == ("scoped", "room-members")
    assert (settings.direct_messages, settings.rooms_open) == ("shared-room", ())
    assert settings.presence_grace == timedelta(seconds=15)


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("MAPPING_TABLE", "Links2", "table_name", "Links2"),
        ("MAPPING_TTL_SECONDS", "90", "ttl", timedelta(seconds=90)),
        ("SIGNALR_HUB", "news_feed", "hub", "news_feed"),
        ("PRESENCE_EVENTS", "False", "presence_events", False),
        ("SWEEP_SCHEDULE", "*/30 * * * * *", "sweep_schedule", "*/30 * * * * *"),
        ("PRESENCE_AUDIENCE", "Hub", "presence_audience", "hub"),  # case-insensitive
        ("PRESENCE_WATCH", "anyone", "presence_watch", "anyone"),
        ("ROOMS_OPEN", "lobby  public.* lobby", "rooms_open", ("lobby", "public.*")),
        ("PRESENCE_FEED_QUEUE", "presence-feed", "presence_feed_queue", "presence-feed"),
        ("CLIENT_CALL_BURST", "40", "client_call_burst", 40),
        ("CLIENT_CALL_RATE", "0", "client_call_rate", 0),  # 0 allowed: no budget
        ("CLIENT_MESSAGE_MAX_BYTES", "65536", "client_message_max_bytes", 65536),
        ("ROOM_MAX_MEMBERS", "500", "room_max_members", 500),
        ("USER_MAX_CONNECTIONS", "5", "user_max_connections", 5),
        ("DIRECT_MESSAGES", "nobody", "direct_messages", "nobody"),
        ("PRESENCE_GRACE_SECONDS", "0", "presence_grace", timedelta(0)),  # 0 allowed: no grace
    ],
)
def test_every_setting_is_read_by_its_app_setting_name(name: str, value: str, field: str, expected: object) -> None:
    """Each documented name changes its field, away from the default, and is listed among the app settings."""
    default = getattr(Settings.from_environment({"MAPPING_STORAGE": "x"}), field)
    assert getattr(Settings.from_environment({"MAPPING_STORAGE": "x", name: value}), field) == expected != default
    assert name in APP_SETTING_NAMES


def test_shard_and_group_counts_are_read_by_their_names() -> None:
    """MAPPING_INDEX_SHARDS and MAPPING_LISTING_GROUPS are read; unset, they default to 8 and 16."""
    settings = Settings.from_environment(
        {"MAPPING_STORAGE": "x", "MAPPING_INDEX_SHARDS": "1", "MAPPING_LISTING_GROUPS": "3"}
    )
    assert (settings.index_shards, settings.listing_groups) == (1, 3)
    defaults = Settings.from_environment({"MAPPING_STORAGE": "x"})
    assert (defaults.index_shards, defaults.listing_groups) == (8, 16)


def test_mapping_storage_wins_over_the_host_storage() -> None:
    """MAPPING_STORAGE is used when both it and AzureWebJobsStorage are set."""
    settings = Settings.from_environment({"MAPPING_STORAGE": "A=1", "AzureWebJobsStorage": "B=2"})
    assert settings.storage.connection_string == "A=1"


def test_identity_connection_with_client_id() -> None:
    """MAPPING_STORAGE__tableServiceUri and __clientId select a managed identity."""
    settings = Settings.from_environment(
        {
            "MAPPING_STORAGE__tableServiceUri": "https://acct.table.core.windows.net/",
            "MAPPING_STORAGE__clientId": "1111-2222",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    assert settings.storage.connection_string is None
    assert settings.storage.table_service_uri == "https://acct.table.core.windows.net"
    assert settings.storage.client_id == "1111-2222"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, ("UseDevelopmentStorage=true", None, None)),
        (
            {
                "AzureWebJobsStorage__tableServiceUri": "https://h.table.core.windows.net",
                "AzureWebJobsStorage__clientId": "c",
            },
            (None, "https://h.table.core.windows.net", "c"),
        ),
        ({"AzureWebJobsStorage__accountName": "hostacct"}, (None, "https://hostacct.table.core.windows.net", None)),
    ],
)
def test_host_storage_fallbacks(env: dict[str, str], expected: tuple[str | None, str | None, str | None]) -> None:
    """Without MAPPING_STORAGE, AzureWebJobsStorage and its identity forms are used."""
    storage = Settings.from_environment(env).storage
    assert (storage.connection_string, storage.table_service_uri, storage.client_id) == expected
    assert storage.source == "AzureWebJobsStorage"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MAPPING_STORAGE": "x", "MAPPING_TTL_SECONDS": "ten"},
        {"MAPPING_STORAGE": "x", "MAPPING_TTL_SECONDS": "0"},
        {"MAPPING_STORAGE": "x", "MAPPING_TABLE": "no-dashes"},
        {"MAPPING_STORAGE": "x", "MAPPING_TABLE": "ab"},
        {"MAPPING_STORAGE": "x", "PRESENCE_EVENTS": "maybe"},
        {"MAPPING_STORAGE": "x", "SIGNALR_HUB": "bad hub"},
        {"MAPPING_STORAGE": "x", "PRESENCE_AUDIENCE": "everyone"},
        {"MAPPING_STORAGE": "x", "PRESENCE_WATCH": "friends"},
        {"MAPPING_STORAGE": "x", "PRESENCE_FEED_QUEUE": "Presence_Feed"},
        {"MAPPING_STORAGE": "x", "PRESENCE_FEED_QUEUE": "ab"},
        {"MAPPING_STORAGE": "x", "PRESENCE_FEED_QUEUE": "feed--x"},
        {"MAPPING_STORAGE": "x", "PRESENCE_FEED_QUEUE": "presence-grace"},
        {"MAPPING_STORAGE": "x", "DIRECT_MESSAGES": "friends"},
        {"MAPPING_STORAGE": "x", "PRESENCE_GRACE_SECONDS": "-1"},
        {"MAPPING_STORAGE": "x", "PRESENCE_GRACE_SECONDS": "3601"},
        {"MAPPING_STORAGE": "x", "PRESENCE_GRACE_SECONDS": "1.5"},
        {"MAPPING_STORAGE": "x", "MAPPING_INDEX_SHARDS": "0"},
        {"MAPPING_STORAGE": "x", "MAPPING_INDEX_SHARDS": "1000"},
        {"MAPPING_STORAGE": "x", "MAPPING_LISTING_GROUPS": "many"},
        {"MAPPING_STORAGE": "x", "MAPPING_LISTING_GROUPS": "0"},
    ],
)
def test_bad_settings_raise_a_configuration_error(env: dict[str, str]) -> None:
    """A missing connection or a malformed value is a ConfigurationError naming the setting."""
    with pytest.raises(ConfigurationError):
        Settings.from_environment(env)


def test_repr_never_shows_a_connection_string() -> None:
    """Settings can be logged without leaking the account key."""
    settings = Settings.from_environment({"MAPPING_STORAGE": "AccountName=a;AccountKey=SECRETKEY=="})
    assert "SECRETKEY" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k==;EndpointSuffix=x.net"},
            ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k==;EndpointSuffix=x.net", None, None, False),
        ),
        (
            {"AzureWebJobsStorage": "AccountName=a;AccountKey=k;QueueEndpoint=http://127.0.0.1:1/a;"},
            ("AccountName=a;AccountKey=k;QueueEndpoint=http://127.0.0.1:1/a;", None, None, False),
        ),
        ({"AzureWebJobsStorage": "UseDevelopmentStorage=True;"}, ("UseDevelopmentStorage=true", None, None, False)),
        (
            {
                "AzureWebJobsStorage__queueServiceUri": "https://h.queue.core.windows.net/",
                "AzureWebJobsStorage__clientId": "c",
                "AzureWebJobsStorage__credential": "managedidentity",
            },
            (None, "https://h.queue.core.windows.net", "c", True),
        ),
        (
            {"AzureWebJobsStorage__accountName": "hostacct"},
            (None, "https://hostacct.queue.core.windows.net", None, False),
        ),
    ],
)
def test_the_queue_connection_comes_from_the_host_storage(
    env: dict[str, str], expected: tuple[str | None, str | None, str | None, bool]
) -> None:
    """AzureWebJobsStorage gives the queue connection: a connection string, the emulator, an endpoint or an account."""
    queue = Settings.from_environment({"MAPPING_STORAGE": "UseDevelopmentStorage=true", **env}).queue
    assert queue is not None
    assert (queue.connection_string, queue.queue_service_uri, queue.client_id, queue.managed_identity) == expected
    assert queue.source == "AzureWebJobsStorage"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MAPPING_STORAGE": "AccountName=a;AccountKey=k;QueueEndpoint=http://127.0.0.1:1/a;"},
        {"AzureWebJobsStorage": "AccountName=a;AccountKey=k;TableEndpoint=http://127.0.0.1:1/a;"},
        {"AzureWebJobsStorage__tableServiceUri": "https://h.table.core.windows.net"},
        {"AzureWebJobsStorage__blobServiceUri": "https://h.blob.core.windows.net"},
    ],
)
def test_no_queue_without_a_queue_endpoint_in_the_host_storage(env: dict[str, str]) -> None:
    """Without a usable AzureWebJobsStorage queue endpoint (MAPPING_STORAGE does not count), the queue is None."""
    assert Settings.from_environment({"MAPPING_STORAGE": "UseDevelopmentStorage=true", **env}).queue is None


def test_a_queue_credential_other_than_managed_identity_is_refused() -> None:
    """AzureWebJobsStorage__credential takes only managedidentity, as the Functions host does."""
    with pytest.raises(ConfigurationError, match="credential"):
        Settings.from_environment(
            {
                "MAPPING_STORAGE": "x",
                "AzureWebJobsStorage__queueServiceUri": "https://h.queue.core.windows.net",
                "AzureWebJobsStorage__credential": "password",
            }
        )


def test_the_queue_connection_repr_never_shows_a_key() -> None:
    """The queue connection can be logged without leaking the account key, and so can the settings holding it."""
    settings = Settings.from_environment({"AzureWebJobsStorage": "AccountName=a;AccountKey=SECRETKEY=="})
    assert settings.queue is not None
    assert "SECRETKEY" not in repr(settings.queue)
    assert "SECRETKEY" not in repr(settings)


def test_the_grace_queue_has_a_valid_queue_name() -> None:
    """GRACE_QUEUE is a storage queue name (lowercase letters, digits, single hyphens) with room for -poison."""
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?!-))+[a-z0-9]", GRACE_QUEUE)
    assert len(GRACE_QUEUE + "-poison") <= 63
