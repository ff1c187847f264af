"""A small function app for the local host's queue-trigger tests: negotiate and no-op connection events (so a client
can listen), a queue function that broadcasts what it received, and one that always fails."""

from __future__ import annotations

import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

SIGNALR = {"hub_name": "%SIGNALR_HUB%", "connection_string_setting": "AzureSignalRConnectionString"}


@app.function_name("negotiate")
@app.route(route="negotiate", methods=["POST"])
@app.generic_input_binding(
    arg_name="connection_info", type="signalRConnectionInfo", user_id="{headers.x-ms-client-principal-name}", **SIGNALR
)
def negotiate(req: func.HttpRequest, connection_info: str) -> func.HttpResponse:
    """Hand the client its SignalR URL and access token."""
    return func.HttpResponse(connection_info, mimetype="application/json")


@app.function_name("connected")
@app.generic_trigger(arg_name="invocation", type="signalRTrigger", category="connections", event="connected", **SIGNALR)
def connected(invocation: str) -> None:
    """Accept every connection."""


@app.function_name("disconnected")
@app.generic_trigger(
    arg_name="invocation", type="signalRTrigger", category="connections", event="disconnected", **SIGNALR
)
def disconnected(invocation: str) -> None:
    """Nothing to forget."""


@app.function_name("echo")
@app.queue_trigger(arg_name="message", queue_name="%ECHO_QUEUE%", connection="AzureWebJobsStorage")
@app.generic_output_binding(arg_name="signalr", type="signalR", **SIGNALR)
async def echo(message: func.QueueMessage, signalr: func.Out[str]) -> None:
    """Broadcast the message's body and metadata to the hub as `echo`."""
    seen = {"id": message.id, "body": message.get_body().decode("utf-8"), "dequeueCount": message.dequeue_count}
    signalr.set(json.dumps({"target": "echo", "arguments": [seen]}))


@app.function_name("failing")
@app.queue_trigger(arg_name="message", queue_name="%FAILING_QUEUE%", connection="")
@app.generic_output_binding(arg_name="signalr", type="signalR", **SIGNALR)
def failing(message: func.QueueMessage, signalr: func.Out[str]) -> None:
    """Set an output, then fail: the host drops the output and tries the message again."""
    signalr.set(json.dumps({"target": "failing", "arguments": [message.dequeue_count]}))
    raise RuntimeError("this function always fails")
