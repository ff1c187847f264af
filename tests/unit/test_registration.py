"""Registration metadata: the triggers, bindings, routes, methods and auth levels the host indexes."""

from __future__ import annotations

import pytest

from testkit.functions_host import FUNCTIONS, binding, bindings

SIGNALR_EVENTS = {
    "connected": ("connections", "connected"),
    "disconnected": ("connections", "disconnected"),
    "send_message": ("messages", "send"),
    "set_status": ("messages", "setStatus"),
    "join_room": ("messages", "join"),
    "leave_room": ("messages", "leave"),
    "send_to_room_message": ("messages", "sendToRoom"),
    "watch_users": ("messages", "watch"),
    "unwatch_users": ("messages", "unwatch"),
    "sync_room": ("messages", "sync"),
    "watch_occupancy": ("messages", "watchOccupancy"),
    "unwatch_occupancy": ("messages", "unwatchOccupancy"),
}
HTTP_ROUTES = {
    "negotiate": ("negotiate", ["POST"], "ANONYMOUS"),
    "send": ("send", ["POST"], "FUNCTION"),
    "online_users": ("users", ["GET"], "FUNCTION"),
    "user_presence": ("users/{user}", ["GET"], "FUNCTION"),
    "disconnect_user": ("users/{user}/disconnect", ["POST"], "FUNCTION"),
    "block_user": ("users/{user}/block", ["PUT", "DELETE"], "FUNCTION"),
    "room_members": ("rooms/{room}", ["GET"], "FUNCTION"),
    "send_to_room": ("rooms/{room}/send", ["POST"], "FUNCTION"),
    "room_member": ("rooms/{room}/members/{user}", ["PUT", "DELETE"], "FUNCTION"),
    "room_occupancy": ("rooms/{room}/occupancy", ["GET"], "FUNCTION"),
    "openapi": ("openapi.json", ["GET"], "ANONYMOUS"),
}


def test_the_app_has_exactly_the_documented_functions() -> None:
    """Exactly the documented functions are registered: the SignalR events, the HTTP routes, the timer, the queue."""
    assert set(FUNCTIONS) == set(SIGNALR_EVENTS) | set(HTTP_ROUTES) | {"sweep", "presence_grace"}


@pytest.mark.parametrize(("name", "expected"), HTTP_ROUTES.items())
def test_http_routes_methods_and_auth_levels(name: str, expected: tuple[str, list[str], str]) -> None:
    """Each HTTP trigger has its route, methods and auth level, and returns through `$return`."""
    trigger = binding(name, "httpTrigger")
    assert (trigger["route"], trigger["methods"], trigger["authLevel"]) == expected
    assert binding(name, "http")["name"] == "$return"


def test_negotiate_binds_connection_info_for_the_authenticated_user() -> None:
    """negotiate's input is signalRConnectionInfo on the configured hub, user id from the principal header."""
    info = binding("negotiate", "signalRConnectionInfo")
    assert info["direction"] == "IN"
    assert info["hubName"] == "%SIGNALR_HUB%"
    assert info["userId"] == "{headers.x-ms-client-principal-name}"
    assert info["connectionStringSetting"] == "AzureSignalRConnectionString"


@pytest.mark.parametrize(("name", "expected"), SIGNALR_EVENTS.items())
def test_signalr_triggers_and_outputs(name: str, expected: tuple[str, str]) -> None:
    """Each SignalR function triggers on its category and event of `%SIGNALR_HUB%` and has a signalR output."""
    trigger = binding(name, "signalRTrigger")
    assert (trigger["category"], trigger["event"]) == expected
    assert trigger["hubName"] == "%SIGNALR_HUB%"
    assert trigger["connectionStringSetting"] == "AzureSignalRConnectionString"
    assert trigger["name"] == "invocation"
    output = binding(name, "signalR")
    assert (output["direction"], output["hubName"], output["name"]) == ("OUT", "%SIGNALR_HUB%", "signalr")


@pytest.mark.parametrize("name", ["send", "send_to_room", "disconnect_user", "block_user", "room_members"])
def test_http_functions_that_announce_have_a_signalr_output(name: str) -> None:
    """The HTTP sends, the operator's disconnect and block, and the member listing (a settled row corrects the
    occupancy) deliver through a signalR output on the configured hub."""
    output = binding(name, "signalR")
    assert (output["direction"], output["hubName"]) == ("OUT", "%SIGNALR_HUB%")


def test_presence_endpoints_send_nothing() -> None:
    """The read-only endpoints have no signalR output."""
    for name in ("online_users", "user_presence", "openapi"):
        assert not [b for b in bindings(name) if b["type"] == "signalR"]


def test_sweep_runs_on_the_configured_schedule() -> None:
    """The sweep is a timer on `%SWEEP_SCHEDULE%` that does not run on startup and can broadcast presence."""
    timer = binding("sweep", "timerTrigger")
    assert timer["schedule"] == "%SWEEP_SCHEDULE%"
    assert timer["runOnStartup"] is False
    output = binding("sweep", "signalR")
    assert (output["direction"], output["hubName"], output["name"]) == ("OUT", "%SIGNALR_HUB%", "signalr")


def test_the_grace_decision_is_a_queue_trigger_on_the_host_storage() -> None:
    """presence_grace reads the `presence-grace` queue of AzureWebJobsStorage and can announce presence."""
    trigger = binding("presence_grace", "queueTrigger")
    assert (trigger["queueName"], trigger["connection"]) == ("presence-grace", "AzureWebJobsStorage")
    output = binding("presence_grace", "signalR")
    assert (output["direction"], output["hubName"], output["name"]) == ("OUT", "%SIGNALR_HUB%", "signalr")
