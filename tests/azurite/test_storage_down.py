"""Storage failures are visible: typed errors from the store, 503 from HTTP, raised from triggers, no secrets logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from azure.functions.timer import TimerRequest

from mapping.errors import ConfigurationError, StorageError, StorageUnavailableError
from mapping.functions import runtime
from mapping.presence.store import ConnectionStore
from mapping.sweep import sweep
from testkit.azurite import DEV_KEY, Azurite, free_port
from testkit.functions_host import Out, call, http, http_request, invocation, signalr_event
from testkit.tables import make_settings, table_rows

WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="


def dead_connection_string() -> str:
    """Return a connection string for a port nothing listens on."""
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={DEV_KEY};TableEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;"
    )


@pytest.fixture
async def dead_store() -> AsyncIterator[ConnectionStore]:
    """A store whose storage is not reachable."""
    store = ConnectionStore(make_settings(dead_connection_string(), "Connections"), retry_total=0)
    yield store
    await store.close()


async def test_every_store_operation_raises_storage_unavailable(dead_store: ConnectionStore) -> None:
    """Connect, disconnect, touch, reads and sweep each raise StorageUnavailableError with a retry hint."""
    operations = [
        dead_store.connect("alice", "c1"),
        dead_store.disconnect("alice", "c1"),
        dead_store.touch("alice", "c1"),
        dead_store.connections_of("alice"),
        dead_store.online_users(),
        sweep(dead_store),
    ]
    for operation in operations:
        with pytest.raises(StorageUnavailableError) as caught:
            await operation
        assert caught.value.retry_after_seconds >= 1


async def test_rejected_credentials_are_a_storage_error(azurite: Azurite) -> None:
    """A wrong account key is a StorageError (not retried as unavailable), and nothing is written."""
    bad = azurite.connection_string.replace(DEV_KEY, WRONG_KEY)
    store = ConnectionStore(make_settings(bad, "Wrongkey"), retry_total=0)
    try:
        with pytest.raises(StorageError) as caught:
            await store.connect("alice", "c1")
        assert not isinstance(caught.value, StorageUnavailableError)
    finally:
        await store.close()
    assert await table_rows(azurite, "Wrongkey") == []


async def test_the_store_recovers_once_storage_is_back(azurite: Azurite) -> None:
    """A failed first use caches nothing: the same store works when it can reach storage again."""
    store = ConnectionStore(make_settings(azurite.connection_string, "Recovers"), retry_total=0)
    reachable = store.table.settings
    store.table.settings = make_settings(dead_connection_string(), "Recovers")
    with pytest.raises(StorageUnavailableError):
        await store.connect("alice", "c1")
    store.table.settings = reachable
    try:
        assert (await store.connect("alice", "c1")).came_online is True
    finally:
        await store.close()


@pytest.fixture
async def app_on_dead_storage(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The function app configured with unreachable storage; yields the connection string it uses."""
    connection_string = dead_connection_string()
    monkeypatch.setenv("MAPPING_STORAGE", connection_string)
    monkeypatch.setenv("MAPPING_TABLE", "Connections")
    monkeypatch.setenv("PRESENCE_GRACE_SECONDS", "0")  # no queue here: a disconnect deletes at once
    await runtime.reset()
    yield connection_string
    await runtime.reset()


@pytest.mark.parametrize(
    ("name", "request_"),
    [
        ("send", http_request("POST", "send", body={"to": "bob", "message": "hi"})),
        ("online_users", http_request("GET", "users")),
        ("user_presence", http_request("GET", "users/bob", route_params={"user": "bob"})),
    ],
)
async def test_http_routes_answer_503_with_retry_after(
    app_on_dead_storage: str, caplog: pytest.LogCaptureFixture, name: str, request_: object
) -> None:
    """Storage down: 503 JSON with Retry-After, nothing sent, and no account key in the logs."""
    outputs = {"signalr": Out()} if name == "send" else {}
    with caplog.at_level(logging.DEBUG):
        status, body, response = await http(name, request_, **outputs)  # type: ignore[arg-type]
    assert status == 503
    assert "error" in body
    assert int(response.headers["Retry-After"]) >= 1
    assert all(out.value is None for out in outputs.values())
    assert DEV_KEY not in caplog.text
    assert "AccountKey" not in caplog.text


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("connected", invocation("connected")),
        ("disconnected", invocation("disconnected")),
    ],
)
async def test_signalr_triggers_raise_when_storage_is_down(app_on_dead_storage: str, name: str, payload: str) -> None:
    """Triggers raise a StorageError: a connected that fails makes SignalR refuse the connection."""
    with pytest.raises(StorageError):
        await signalr_event(name, payload)


@pytest.mark.parametrize(
    ("name", "call", "arguments"),
    [
        ("send_message", "send", ["bob", "hi"]),
        ("set_status", "setStatus", ["busy"]),
        ("join_room", "join", ["lobby"]),
        ("leave_room", "leave", ["lobby"]),
        ("send_to_room_message", "sendToRoom", ["lobby", "hi"]),
        ("watch_users", "watch", [["bob"]]),
        ("sync_room", "sync", ["lobby"]),
    ],
)
async def test_client_calls_answer_the_caller_to_retry_when_storage_is_down(
    app_on_dead_storage: str, name: str, call: str, arguments: list[object]
) -> None:
    """A client's call that meets dead storage answers the caller one error naming the call to send again."""
    out = await signalr_event(name, invocation(call, arguments=arguments))
    [error] = out.messages
    assert (error["target"], error["connectionId"]) == ("error", "conn-1")
    details = error["arguments"][0]
    assert (details["retry"], details["call"], details["arguments"]) == (True, call, arguments)


async def test_timer_sweep_raises_when_storage_is_down(app_on_dead_storage: str) -> None:
    """A failed sweep is a failed function run, not a silent success."""
    with pytest.raises(StorageError):
        await call("sweep", timer=TimerRequest(past_due=False), signalr=Out())


async def test_missing_configuration_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    """No storage setting at all: HTTP answers 503 JSON, a trigger raises ConfigurationError."""
    for name in ("MAPPING_STORAGE", "AzureWebJobsStorage", "AzureWebJobsStorage__accountName"):
        monkeypatch.delenv(name, raising=False)
    await runtime.reset()
    try:
        status, body, _ = await http(
            "send", http_request("POST", "send", body={"to": "b", "message": 1}), signalr=Out()
        )
        assert status == 503
        assert "error" in body
        with pytest.raises(ConfigurationError):
            await signalr_event("connected", invocation("connected"))
    finally:
        await runtime.reset()
