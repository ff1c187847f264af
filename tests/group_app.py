"""A small function app for the emulator's group tests: negotiate, no-op connection events, and an HTTP function
whose `signalR` output is exactly the JSON array it was posted (messages and group actions)."""

from __future__ import annotations

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

HUB = "%SIGNALR_HUB%"
SIGNALR_CONNECTION = "AzureSignalRConnectionString"


@app.function_name("negotiate")
@app.route(route="negotiate", methods=["POST"])
@app.generic_input_binding(
    arg_name="connection_info",
    type="signalRConnectionInfo",
    hub_name=HUB,
    user_id="{headers.x-ms-client-principal-name}",
    connection_string_setting=SIGNALR_CONNECTION,
)
def negotiate(req: func.HttpRequest, connection_info: str) -> func.HttpResponse:
    """Hand the client its SignalR URL and access token."""
    return func.HttpResponse(connection_info, mimetype="application/json")


@app.function_name("connected")
@app.generic_trigger(
    arg_name="invocation",
    type="signalRTrigger",
    hub_name=HUB,
    category="connections",
    event="connected",
    connection_string_setting=SIGNALR_CONNECTION,
)
def connected(invocation: str) -> None:
    """Accept every connection."""


@app.function_name("disconnected")
@app.generic_trigger(
    arg_name="invocation",
    type="signalRTrigger",
    hub_name=HUB,
    category="connections",
    event="disconnected",
    connection_string_setting=SIGNALR_CONNECTION,
)
def disconnected(invocation: str) -> None:
    """Nothing to forget."""


@app.function_name("output")
@app.route(route="output", methods=["POST"])
@app.generic_output_binding(
    arg_name="signalr", type="signalR", hub_name=HUB, connection_string_setting=SIGNALR_CONNECTION
)
def output(req: func.HttpRequest, signalr: func.Out[str]) -> func.HttpResponse:
    """Set the posted JSON array as the `signalR` output, as is."""
    signalr.set(req.get_body().decode())
    return func.HttpResponse(status_code=204)
