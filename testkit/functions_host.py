"""Invoke the app's functions the way the Functions host does: from `app.get_functions()`, with real request objects."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
from azure.functions.decorators.function_app import Function

import function_app
from local.host.functions import Output
from testkit.openapi_contract import check_answer

# get_functions() builds the list once per app; a second call would raise about duplicate names.
FUNCTIONS: dict[str, Function] = {str(fn.get_function_name()): fn for fn in function_app.app.get_functions()}


class Out(Output):
    """Stands in for `func.Out[str]` (the local host's output holder): remembers what the function set."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Return the SignalR messages set, decoded from the JSON array (empty when unset)."""
        if self.value is None:
            return []
        decoded = json.loads(self.value)
        assert isinstance(decoded, list), "the signalR output must be a JSON array"
        return decoded


def bindings(name: str) -> list[dict[str, Any]]:
    """Return a function's binding metadata as the host reads it (function.json form)."""
    bindings: list[dict[str, Any]] = json.loads(FUNCTIONS[name].get_function_json())["bindings"]
    return bindings


def binding(name: str, binding_type: str) -> dict[str, Any]:
    """Return the one binding of a given type of a function."""
    [found] = [b for b in bindings(name) if b["type"] == binding_type]
    return found


def invocation(
    event: str,
    *,
    connection_id: str | None = "conn-1",
    user_id: str | None = "alice",
    arguments: list[Any] | None = None,
    category: str | None = None,
    hub: str = "chat",
    headers: Mapping[str, str] | None = None,
    error: str | None = None,
    claims: Mapping[str, str] | None = None,
) -> str:
    """Return a SignalR trigger payload as the extension produces it: PascalCase keys, nulls included."""
    return json.dumps(
        {
            "Arguments": arguments,
            "Error": error,
            "Category": category or ("messages" if event not in ("connected", "disconnected") else "connections"),
            "Event": event,
            "Hub": hub,
            "ConnectionId": connection_id,
            "UserId": user_id,
            "Headers": dict(headers or {"User-Agent": "pytest-client/1.0"}),
            "Query": {},
            "Claims": dict(claims or {}),
        }
    )


def http_request(
    method: str,
    route: str,
    *,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    route_params: Mapping[str, str] | None = None,
) -> func.HttpRequest:
    """Build the `func.HttpRequest` the host would pass for a call to `/api/<route>`."""
    raw = json.dumps(body).encode() if isinstance(body, dict | list) else body
    raw = raw.encode() if isinstance(raw, str) else raw
    return func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{route}",
        headers=dict(headers or {}),
        params=dict(params or {}),
        route_params=dict(route_params or {}),
        body=raw or b"",
    )


async def call(name: str, **arguments: Any) -> Any:
    """Run a function's Python code with the arguments the host would bind."""
    return await FUNCTIONS[name].get_user_function()(**arguments)


async def http(name: str, request: func.HttpRequest, **inputs_and_outputs: Any) -> tuple[int, Any, func.HttpResponse]:
    """Call an HTTP function, check its answer against the OpenAPI document; return status, JSON body, response."""
    response: func.HttpResponse = await call(name, req=request, **inputs_and_outputs)
    assert response.mimetype == "application/json"
    body = json.loads(response.get_body())
    check_answer(
        request.method,
        urlsplit(request.url).path,
        response.status_code,
        headers=dict(response.headers),
        body=body,
        content_type=response.mimetype,
    )
    return response.status_code, body, response


async def signalr_event(name: str, payload: str) -> Out:
    """Call a SignalR-triggered function; return its `signalR` output."""
    out = Out()
    await call(name, invocation=payload, signalr=out)
    return out


async def connected(user: str, connection_id: str) -> Out:
    """Fire a connected event; return its `signalR` output."""
    return await signalr_event("connected", invocation("connected", user_id=user, connection_id=connection_id))


async def disconnected(user: str, connection_id: str) -> Out:
    """Fire a disconnected event; return its `signalR` output."""
    return await signalr_event("disconnected", invocation("disconnected", user_id=user, connection_id=connection_id))


async def client_sent(function: str, event: str, user: str | None, connection_id: str, *arguments: Any) -> Out:
    """Fire a client's `connection.send(event, ...arguments)`, handled by `function`; return its `signalR` output."""
    payload = invocation(event, user_id=user, connection_id=connection_id, arguments=list(arguments))
    return await signalr_event(function, payload)
