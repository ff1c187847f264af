"""The local host: `/api/<route>` for HTTP triggers, `/runtime/webhooks/signalr`, timers, queues, static files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from aiohttp import web
from azure.functions.timer import TimerRequest

from local.host import settings
from local.host.functions import (
    HTTP_TRIGGER,
    QUEUE_TRIGGER,
    SIGNALR_TRIGGER,
    TIMER_TRIGGER,
    FunctionSpec,
    Output,
    run,
)
from local.host.ncrontab import Schedule, ScheduleError
from local.host.queues import QueueBinding, QueueOptions, QueuePoller
from local.host.routes import RouteTemplate
from local.host.signalr import ServiceEndpoint, SignalRBindingError, SignalRClient
from local.host.upstream_auth import (
    SIGNALR_SYSTEM_KEY,
    UpstreamValidation,
    given_key,
    system_key_status,
    upstream_validation,
)

logger = logging.getLogger(__name__)

DEFAULT_SIGNALR_CONNECTION = "AzureSignalRConnectionString"
SIGNALR_WEBHOOK = "/runtime/webhooks/signalr"
REQUIRED_ASRS_HEADERS = ("X-ASRS-Connection-Id", "X-ASRS-Hub", "X-ASRS-Category", "X-ASRS-Event")
_EXPRESSION = re.compile(r"\{([^{}]+)\}")


@dataclass
class HostState:
    """What the host serves, resolved once at start-up."""

    routes: list[tuple[RouteTemplate, FunctionSpec]] = field(default_factory=list)
    signalr: dict[tuple[str, str, str], FunctionSpec] = field(default_factory=dict)
    timers: list[tuple[Schedule, FunctionSpec]] = field(default_factory=list)
    queues: list[tuple[QueueBinding, FunctionSpec]] = field(default_factory=list)
    queue_options: QueueOptions = field(default_factory=QueueOptions)
    function_keys: frozenset[str] = frozenset()  # empty: keys are not checked (the local default)
    system_keys: Mapping[str, str] = field(default_factory=dict)  # by name, e.g. signalr_extension
    client: SignalRClient = field(default_factory=SignalRClient)
    background_tasks: list[asyncio.Task[None]] = field(default_factory=list)


STATE = web.AppKey("state", HostState)


def create_app(
    specs: list[FunctionSpec],
    *,
    route_prefix: str = "api",
    static: Mapping[str, Path] | None = None,
    queue_options: QueueOptions | None = None,
    function_keys: Iterable[str] = (),
    system_keys: Mapping[str, str] | None = None,
) -> web.Application:
    """Build the host for the given functions; functions whose bindings cannot be resolved are reported and skipped.
    With `function_keys`, HTTP routes that are not anonymous need one of them, as in Azure. With a `signalr_extension`
    key in `system_keys`, or a SignalR trigger on an identity-based connection, the SignalR webhook needs that key
    (`?code=` or `x-functions-key`), as in Azure."""
    state = HostState(
        queue_options=queue_options or QueueOptions(),
        function_keys=frozenset(function_keys),
        system_keys=dict(system_keys or {}),
    )
    for spec in specs:
        try:
            _register(state, spec, route_prefix)
        except (settings.SettingsError, ScheduleError) as error:
            logger.error("function %s is in error and is not served: %s", spec.name, error)
    _report_upstream_auth(state)
    # More literal segments first, as the Functions host prefers `users/me` over `users/{user}`.
    state.routes.sort(key=lambda item: (-item[0].literal_segments, len(item[0].names)))
    app = web.Application(client_max_size=100 * 1024 * 1024)
    app[STATE] = state
    app.router.add_post(SIGNALR_WEBHOOK, signalr_webhook)
    prefix = "/" + route_prefix.strip("/") if route_prefix.strip("/") else ""
    app.router.add_route("*", prefix + "/{tail:.*}", http_trigger)
    # Longest prefix first, so `/vendor/x` is not swallowed by `/`.
    for url_prefix, directory in sorted((static or {}).items(), key=lambda item: -len(item[0].rstrip("/"))):
        app.router.add_get(url_prefix.rstrip("/") + "/{path:.*}", _static_handler(directory))
    app.on_startup.append(_start_background)
    app.on_cleanup.append(_stop)
    return app


def _register(state: HostState, spec: FunctionSpec, route_prefix: str) -> None:
    trigger = spec.trigger
    if trigger["type"] == HTTP_TRIGGER:
        template = RouteTemplate.compile(trigger.get("route") or spec.name, prefix=route_prefix)
        state.routes.append((template, spec))
        methods = ",".join(trigger.get("methods") or ["any method"])
        logger.info("%s: [%s] /%s/%s", spec.name, methods, route_prefix.strip("/"), template.template)
    elif trigger["type"] == SIGNALR_TRIGGER:
        hub = settings.resolve(str(trigger.get("hubName", "")))
        key = (hub.casefold(), str(trigger.get("category", "")).casefold(), str(trigger.get("event", "")).casefold())
        state.signalr[key] = spec
        logger.info("%s: signalRTrigger hub=%s %s/%s", spec.name, hub, key[1], key[2])
    elif trigger["type"] == TIMER_TRIGGER:
        schedule = Schedule.parse(settings.resolve(str(trigger.get("schedule", ""))))
        state.timers.append((schedule, spec))
        logger.info("%s: timerTrigger %s (UTC)", spec.name, schedule.expression)
    elif trigger["type"] == QUEUE_TRIGGER:
        binding = QueueBinding.of(trigger)
        state.queues.append((binding, spec))
        logger.info("%s: queueTrigger %s", spec.name, binding.queue_name)


# ---- HTTP triggers ------------------------------------------------------------------------------


async def http_trigger(request: web.Request) -> web.StreamResponse:
    """Run the HTTP-triggered function whose route and methods match the request."""
    state = request.app[STATE]
    path = request.rel_url.raw_path
    for template, spec in state.routes:
        route_params = template.match(path)
        if route_params is None:
            continue
        methods = [m.upper() for m in spec.trigger.get("methods") or []]
        if methods and request.method.upper() not in methods:
            continue
        if not _authorized(request, state, spec):
            return web.Response(status=401)  # as the Functions host: no body
        return await _run_http(request, state, spec, route_params)
    return web.Response(status=404)


def _authorized(request: web.Request, state: HostState, spec: FunctionSpec) -> bool:
    """Whether the request may run the function: an anonymous route, keys not checked, or a key given."""
    if not state.function_keys or str(spec.trigger.get("authLevel", "function")).lower() == "anonymous":
        return True
    given = request.query.get("code") or request.headers.get("x-functions-key")
    return given in state.function_keys


async def _run_http(
    request: web.Request, state: HostState, spec: FunctionSpec, route_params: dict[str, str]
) -> web.Response:
    body = await request.read()
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    params: dict[str, str] = {}
    for name, value in request.query.items():
        params.setdefault(name, value)
    http_request = func.HttpRequest(
        method=request.method,
        url=str(request.url),
        headers=headers,
        params=params,
        route_params=route_params,
        body=body,
    )
    inputs: dict[str, Any] = {}
    try:
        for binding in spec.inputs("signalRConnectionInfo"):
            try:
                user = _expression(str(binding.get("userId") or ""), request, route_params)
            except BindingExpressionError as error:
                # As the Functions host: the input binding fails before the function runs, and the call is a 500.
                logger.warning(
                    "Executed '%s' (Failed): Exception binding parameter '%s'. %s", spec.name, binding["name"], error
                )
                raise
            inputs[binding["name"]] = _service(binding).connection_info(_hub(binding), user or None)
        result, outputs = await _invoke(state, spec, http_request, inputs)
    except Exception:
        # As the Functions host: a failed invocation is a 500 with no body; the log has the details.
        return web.Response(status=500)
    http_outputs = [b["name"] for b in spec.bindings if b["type"] == "http" and b["name"] != "$return"]
    if http_outputs:
        result = outputs[http_outputs[0]].get()
    return _to_response(result)


def _to_response(result: Any) -> web.Response:
    if result is None:
        return web.Response(status=204)
    if isinstance(result, func.HttpResponse):
        headers = {name: value for name, value in result.headers.items()}
        if not any(name.lower() == "content-type" for name in headers) and result.mimetype:
            headers["Content-Type"] = (
                f"{result.mimetype}; charset={result.charset}" if result.charset else result.mimetype
            )
        return web.Response(status=result.status_code, body=result.get_body(), headers=headers)
    if isinstance(result, bytes):
        return web.Response(body=result, content_type="application/octet-stream")
    if isinstance(result, str):
        return web.Response(text=result, content_type="text/plain")
    return web.json_response(result)


class BindingExpressionError(Exception):
    """A binding expression names a value the request does not have (the binding fails, as in Azure)."""


def _expression(template: str, request: web.Request, route_params: Mapping[str, str]) -> str:
    """Resolve binding expressions: `{headers.x}`, `{query.x}`, `{routeParam}`, as the WebJobs SDK does: a header or
    query parameter that is absent raises `Error while accessing 'x': property doesn't exist.`, a route parameter
    that is absent `No value for named parameter 'x'.` (a present but empty value is empty, not an error)."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1).strip()
        source, _, name = key.partition(".")
        found: str | None
        if source.lower() in ("headers", "query") and name:
            found = (request.headers if source.lower() == "headers" else request.query).get(name)
            if found is None:
                raise BindingExpressionError(f"Error while accessing '{name}': property doesn't exist.")
            return found
        found = route_params.get(key)
        if found is None:
            raise BindingExpressionError(f"No value for named parameter '{key}'.")
        return found

    return _EXPRESSION.sub(value, settings.resolve(template)).strip()


# ---- SignalR triggers ---------------------------------------------------------------------------


async def signalr_webhook(request: web.Request) -> web.Response:
    """Dispatch an upstream call to its SignalR trigger, answering as the Functions host (the system key) and the
    SignalR extension (content type, headers, dispatch, signature) do."""
    state = request.app[STATE]
    if _webhook_needs_key(state):
        status = system_key_status(
            given_key(request.headers, request.query),
            system_key=state.system_keys.get(SIGNALR_SYSTEM_KEY),
            other_keys=state.function_keys,
        )
        if status is not None:
            logger.warning("SignalR webhook: %d (the %s system key is needed)", status, SIGNALR_SYSTEM_KEY)
            return web.Response(status=status)  # as the Functions host: no body
    if request.content_type.lower() != "application/json":
        return _problem(415, f"unsupported content type {request.content_type!r} (application/json expected)")
    missing = [name for name in REQUIRED_ASRS_HEADERS if not request.headers.get(name)]
    if missing:
        return _problem(400, f"missing header(s): {', '.join(missing)}")
    hub, category, event = (request.headers[name] for name in REQUIRED_ASRS_HEADERS[1:])
    spec = state.signalr.get((hub.casefold(), category.casefold(), event.casefold()))
    if spec is None:
        return _problem(404, f"no function for hub {hub!r}, category {category!r}, event {event!r}")
    connection_id = request.headers["X-ASRS-Connection-Id"]
    validation = _upstream_validation(spec.trigger)
    if validation is None:
        logger.error("function %s: its SignalR connection setting is not set", spec.name)
        return _problem(500, "the function's SignalR connection is not configured")
    if not validation.signature_matches(connection_id, request.headers.get("X-ASRS-Signature")):
        return _problem(401, "signature validation failed")
    try:
        message = json.loads(await request.read() or b"{}")
    except ValueError:
        return _problem(400, "the body is not JSON")
    if not isinstance(message, dict):
        return _problem(400, "the body is not a JSON object")
    payload = _invocation(request, message, hub=hub, category=category, event=event, connection_id=connection_id)
    try:
        await _invoke(state, spec, payload)
    except Exception:
        if category.casefold() == "connections" and event.casefold() == "connected":
            return _problem(403, "the connected function failed")
        if category.casefold() == "connections":
            return web.Response(status=200)
        return _problem(500, "the function failed")
    invocation_id = message.get("invocationId")
    if category.casefold() == "messages" and isinstance(invocation_id, str):
        # A blocking client invocation gets its completion back through the service.
        completion = json.dumps({"type": 3, "invocationId": invocation_id, "result": None}) + "\x1e"
        return web.Response(text=completion, content_type="application/json")
    return web.Response(status=200)


def _connection_setting(binding: Mapping[str, Any]) -> str:
    """Return the app setting that names a SignalR binding's connection."""
    return str(binding.get("connectionStringSetting") or binding.get("connection") or DEFAULT_SIGNALR_CONNECTION)


def _upstream_validation(trigger: Mapping[str, Any]) -> UpstreamValidation | None:
    return upstream_validation(_connection_setting(trigger))


def _identity_based_triggers(state: HostState) -> list[str]:
    """Return the SignalR triggers whose connection is identity-based (no access key: no signature check)."""
    names = []
    for spec in state.signalr.values():
        validation = _upstream_validation(spec.trigger)
        if validation is not None and validation.identity_based:
            names.append(spec.name)
    return names


def _webhook_needs_key(state: HostState) -> bool:
    """The webhook needs the system key when one is configured, and always when a trigger is identity-based."""
    return SIGNALR_SYSTEM_KEY in state.system_keys or bool(_identity_based_triggers(state))


def _report_upstream_auth(state: HostState) -> None:
    """Log how the SignalR webhook is guarded, once at start-up."""
    if not state.signalr:
        return
    identity = _identity_based_triggers(state)
    has_key = SIGNALR_SYSTEM_KEY in state.system_keys
    if identity and not has_key:
        logger.error(
            "SignalR webhook: %s use an identity-based connection (no access key, so no signature check), and no %s"
            " system key is configured: every upstream call is refused (401). Give --system-key %s=KEY and put"
            " ?code=KEY on the service's upstream URL",
            ", ".join(sorted(identity)),
            SIGNALR_SYSTEM_KEY,
            SIGNALR_SYSTEM_KEY,
        )
    elif identity:
        logger.info("SignalR webhook: identity-based: ?code=<%s key> checked, no signature", SIGNALR_SYSTEM_KEY)
    elif has_key:
        logger.info("SignalR webhook: ?code=<%s key> and X-ASRS-Signature checked", SIGNALR_SYSTEM_KEY)
    else:
        logger.info("SignalR webhook: X-ASRS-Signature checked (system key not checked, as with Core Tools)")


def _invocation(
    request: web.Request, message: dict[str, Any], *, hub: str, category: str, event: str, connection_id: str
) -> str:
    """Build the trigger payload the SignalR extension hands to a function: PascalCase keys, nulls included."""
    arguments = message.get("arguments") if category.casefold() == "messages" else None
    error = message.get("error") if category.casefold() == "connections" else None
    return json.dumps(
        {
            "Arguments": arguments if isinstance(arguments, list) else None,
            "Error": error if isinstance(error, str) else None,
            "Category": category,
            "Event": event,
            "Hub": hub,
            "ConnectionId": connection_id,
            "UserId": request.headers.get("X-ASRS-User-Id") or None,
            "Headers": {name: value for name, value in request.headers.items()},
            "Query": dict(parse_qsl(request.headers.get("X-ASRS-Client-Query", "").lstrip("?"))) or None,
            "Claims": _claims(request.headers.get("X-ASRS-User-Claims", "")) or None,
        },
        ensure_ascii=False,
    )


def _claims(header: str) -> dict[str, str]:
    """Parse `X-ASRS-User-Claims` ("type: value, type: value"); the first value of a type wins."""
    claims: dict[str, str] = {}
    for entry in header.split(","):
        name, sep, value = entry.partition(": ")
        if sep and name.strip():
            claims.setdefault(name.strip(), value.strip())
    return claims


def _problem(status: int, message: str) -> web.Response:
    logger.warning("SignalR webhook: %d %s", status, message)
    return web.json_response({"error": message}, status=status)


# ---- outputs, timers and queues -----------------------------------------------------------------


def _service(binding: Mapping[str, Any]) -> ServiceEndpoint:
    name = str(binding.get("connectionStringSetting") or binding.get("connection") or DEFAULT_SIGNALR_CONNECTION)
    value = settings.setting(name)
    if value is None:
        raise SignalRBindingError(f"the app setting {name!r} (SignalR connection string) is not set")
    return ServiceEndpoint.parse(value)


def _hub(binding: Mapping[str, Any]) -> str:
    return settings.resolve(str(binding.get("hubName") or ""))


async def _invoke(
    state: HostState, spec: FunctionSpec, trigger: Any, inputs: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Output]]:
    """Run a function on its trigger value and inputs with fresh outputs; deliver its `signalR` outputs after it."""
    outputs = spec.outputs()
    arguments = {spec.trigger["name"]: trigger, **(inputs or {}), **outputs}
    result = await run(spec, arguments, after=lambda: _flush(state, spec, outputs))
    return result, outputs


async def _flush(state: HostState, spec: FunctionSpec, outputs: Mapping[str, Output]) -> None:
    """Deliver what the function set on its `signalR` outputs (a failure fails the invocation, as in the host)."""
    for binding in spec.bindings:
        if binding["type"] == "signalR" and binding["direction"].upper() == "OUT":
            value = outputs[binding["name"]].get()
            if value is not None:
                await state.client.deliver(_service(binding), _hub(binding), value)


async def _start_background(app: web.Application) -> None:
    """Start a task per timer and per queue trigger (both stop with the host)."""
    state = app[STATE]
    for schedule, spec in state.timers:
        state.background_tasks.append(asyncio.create_task(_timer_loop(state, schedule, spec)))
    for binding, spec in state.queues:
        poller = QueuePoller(spec, binding, state.queue_options, invoke=_invoker(state, spec))
        state.background_tasks.append(asyncio.create_task(poller.run()))


def _invoker(state: HostState, spec: FunctionSpec) -> Callable[[func.QueueMessage], Awaitable[Any]]:
    """Return how a queue poller runs its function: with fresh outputs, `signalR` ones delivered after it."""

    async def invoke(message: func.QueueMessage) -> Any:
        return await _invoke(state, spec, message)

    return invoke


async def _timer_loop(state: HostState, schedule: Schedule, spec: FunctionSpec) -> None:
    """Run a timer function on its schedule; runs never overlap, a failed run is not retried."""
    if spec.trigger.get("runOnStartup"):
        await _tick(state, spec, past_due=False)
    while True:
        due = schedule.next_after(datetime.now(UTC))
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        late = (datetime.now(UTC) - due).total_seconds() > 1.0
        try:
            await _tick(state, spec, past_due=late)
        except Exception:
            logger.exception("timer %s could not run", spec.name)


async def _tick(state: HostState, spec: FunctionSpec, *, past_due: bool) -> None:
    with contextlib.suppress(Exception):  # run() logged it; failed runs are not retried, the next one runs as usual
        await _invoke(state, spec, TimerRequest(past_due=past_due))


async def _stop(app: web.Application) -> None:
    state = app[STATE]
    for task in state.background_tasks:
        task.cancel()
    await asyncio.gather(*state.background_tasks, return_exceptions=True)
    await state.client.close()


# ---- static files (the local demo page) ---------------------------------------------------------


def _static_handler(directory: Path) -> Any:
    root = directory.resolve()

    async def serve(request: web.Request) -> web.StreamResponse:
        target = (root / request.match_info["path"]).resolve()
        if not target.is_relative_to(root):
            return web.Response(status=404)
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            return web.Response(status=404)
        return web.FileResponse(target, headers={"Cache-Control": "no-cache"})

    return serve
