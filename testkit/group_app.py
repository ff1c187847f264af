"""A small function app for the emulator's group tests: negotiate, no-op connection events, and an HTTP function
whose `signalR` output is exactly the JSON array it was posted (messages and group actions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

SIGNALR = {"hub_name": "%SIGNALR_HUB%", "connection_string_setting": "AzureSignalRConnectionString"}


def connection_event(event: str) -> Callable[..., Any]:
    """Bind a function to one of SignalR's connection events."""
    return app.generic_trigger(
        arg_name="invocation", type="signalRTrigger", category="connections", event=event, **SIGNALR
    )


@app.function_name("negotiate")
@app.route(route="negotiate", methods=["POST"])
@app.generic_input_binding(
    arg_name="connection_info",
    type="signalRConnectionInfo",
    user_id="{headers.x-ms-client-principal-name}",
    **SIGNALR,
)
def negotiate(req: func.HttpRequest, connection_info: str) -> func.HttpResponse:
    """Hand the client its SignalR URL and access token."""
    return func.HttpResponse(connection_info, mimetype="application/json")


@app.function_name("connected")
@connection_event("connected")
def connected(invocation: str) -> None:
    """Accept every connection."""


@app.function_name("disconnected")
@connection_event("disconnected")
def disconnected(invocation: str) -> None:
    """Nothing to forget."""


@app.function_name("output")
@app.route(route="output", methods=["POST"])
@app.generic_output_binding(arg_name="signalr", type="signalR", **SIGNALR)
def output(req: func.HttpRequest, signalr: func.Out[str]) -> func.HttpResponse:
    """Set the posted JSON array as the `signalR` output, as is."""
    signalr.set(req.get_body().decode())
    return func.HttpResponse(status_code=204)
