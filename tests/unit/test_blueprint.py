"""The blueprint on another app: registered beside its functions, refused at indexing on a name or route clash."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import azure.functions as func
import pytest

from mapping.functions.blueprint import blueprint
from mapping.functions.registration import Registered, RegistrationError, clashes, register

MAPPER_FUNCTIONS = 25


def _app_with(*define: Callable[[func.FunctionApp], None], level: func.AuthLevel = func.AuthLevel.FUNCTION) -> Any:
    """An "existing app" with the mapper registered first and then the app's own functions."""
    app = func.FunctionApp(http_auth_level=level)
    register(app)
    for step in define:
        step(app)
    return app


def _route(route: str, *, methods: list[str] | None = None, name: str = "mine") -> Callable[[func.FunctionApp], None]:
    def define(app: func.FunctionApp) -> None:
        @app.function_name(name)
        @app.route(route=route, methods=methods)
        def handler(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse("mine")

    return define


def _timer(name: str) -> Callable[[func.FunctionApp], None]:
    def define(app: func.FunctionApp) -> None:
        @app.function_name(name)
        @app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *")
        def tick(timer: func.TimerRequest) -> None:
            return None

    return define


def _queue(queue: str, *, connection: str = "AzureWebJobsStorage") -> Callable[[func.FunctionApp], None]:
    def define(app: func.FunctionApp) -> None:
        @app.function_name("my_queue")
        @app.queue_trigger(arg_name="message", queue_name=queue, connection=connection)
        def take(message: func.QueueMessage) -> None:
            return None

    return define


def _signalr(hub: str, category: str, event: str) -> Callable[[func.FunctionApp], None]:
    def define(app: func.FunctionApp) -> None:
        @app.function_name("my_signalr")
        @app.generic_trigger(
            arg_name="invocation",
            type="signalRTrigger",
            hub_name=hub,
            category=category,
            event=event,
            connection_string_setting="AzureSignalRConnectionString",
        )
        def hear(invocation: str) -> None:
            return None

    return define


def _auth_levels(app: Any) -> dict[str, str]:
    levels: dict[str, str] = {}
    for function in app.get_functions():
        for binding in json.loads(function.get_function_json())["bindings"]:
            if binding["type"] == "httpTrigger":
                levels[str(function.get_function_name())] = binding["authLevel"]
    return levels


def test_the_mapper_and_the_apps_own_functions_index_together() -> None:
    """An app's own HTTP function and timer index beside the mapper's 21 functions."""
    app = _app_with(_route("hello", methods=["GET"], name="hello"), _timer("nightly"))
    names = {str(function.get_function_name()) for function in app.get_functions()}
    assert len(names) == MAPPER_FUNCTIONS + 2
    assert {"hello", "nightly", "send", "negotiate", "sweep", "connected"} <= names


def test_an_anonymous_app_does_not_open_the_mappers_keyed_routes() -> None:
    """An app whose default auth level is anonymous still gets the mapper's keyed routes with a function key."""
    levels = _auth_levels(_app_with(_route("hello", name="hello"), level=func.AuthLevel.ANONYMOUS))
    assert levels["hello"] == "ANONYMOUS"
    assert levels["send"] == levels["user_presence"] == levels["room_members"] == "FUNCTION"
    assert levels["negotiate"] == levels["openapi"] == "ANONYMOUS"


@pytest.mark.parametrize("name", ["send", "sweep", "Negotiate"])
def test_a_function_name_clash_fails_at_indexing(name: str) -> None:
    """An app function named like one of the mapper's (in any case) is refused when the host indexes the app."""
    app = _app_with(_timer(name))
    with pytest.raises(RegistrationError, match=f"(?i){name}.*(mapper|rename)"):
        app.get_functions()


@pytest.mark.parametrize(
    ("route", "methods", "theirs"),
    [
        ("users/{id}", ["GET"], "user_presence"),
        ("Users/{name:alpha}/", None, "user_presence"),
        ("rooms/{r}/send", ["POST", "PUT"], "send_to_room"),
        ("negotiate", None, "negotiate"),
        ("OpenAPI.json", ["GET"], "openapi"),
        ("users/me", ["GET"], "user_presence"),
        ("rooms/{id}/{extra?}", ["GET"], "room_members"),
        ("negotiate/{step=start}", ["POST"], "negotiate"),
        ("rooms/{*rest}", ["POST"], "send_to_room"),
        ("{*anything}", ["GET"], "online_users"),
        ("openapi.{ext}", ["GET"], "openapi"),
        ("{name}.JSON", None, "openapi"),
        ("neg{rest}", ["POST"], "negotiate"),
        ("users/{id:regex(^[a-z]{3}$)}", ["GET"], "user_presence"),
    ],
)
def test_a_route_clash_fails_at_indexing(route: str, methods: list[str] | None, theirs: str) -> None:
    """An app route that could answer a request of one of the mapper's routes, with a method in common, is refused."""
    app = _app_with(_route(route, methods=methods))
    with pytest.raises(RegistrationError) as raised:
        app.get_functions()
    message = str(raised.value)
    assert "'mine'" in message
    assert repr(theirs) in message
    assert "Rename the app's function or change its route" in message


@pytest.mark.parametrize(
    ("route", "methods"),
    [
        ("users/{id}", ["POST"]),
        ("users/{id}/rooms", ["GET"]),
        ("presence/send", ["POST"]),
        ("hello/{name?}", ["GET"]),
        ("rooms/{room}/send/{*rest}", ["GET"]),
        ("v{version}", ["GET"]),
        ("v{n:regex(^[0-9]{2}$)}/users", ["GET"]),
        ("report-{id}.csv", ["GET"]),
        ("rooms/{room}/send-{kind}", ["POST"]),
        ("{name}.yaml", ["GET"]),
    ],
)
def test_routes_no_request_of_the_mappers_can_reach_are_accepted(route: str, methods: list[str]) -> None:
    """Another method, a longer route, another literal, or a pattern no mapper route fits do not clash."""
    app = _app_with(_route(route, methods=methods))
    assert len(app.get_functions()) == MAPPER_FUNCTIONS + 1


def test_clashes_lists_every_pair() -> None:
    """Two clashing app functions give two described clashes, and the mapper's functions alone give none."""
    ours = [Registered("send", True, "send", frozenset({"POST"})), Registered("sweep", True, None, frozenset())]
    theirs = [
        Registered("send", False, None, frozenset()),
        Registered("post_it", False, "SEND", frozenset({"POST"})),
        Registered("other", False, "send", frozenset({"GET"})),
    ]
    assert clashes(ours) == []
    found = clashes(ours + theirs)
    assert len(found) == 2
    assert "'send' has the name" in found[0]
    assert "'post_it'" in found[1]


def test_the_blueprint_holds_every_mapper_function() -> None:
    """Each function of the blueprint is code of mapping.functions.blueprint: clash checks know it as the mapper's."""
    app = func.FunctionApp()
    app.register_functions(blueprint)
    registered = [Registered.of(function) for function in app.get_functions()]
    assert len(registered) == MAPPER_FUNCTIONS
    assert all(function.mapper for function in registered)


def test_indexing_twice_gives_the_same_functions() -> None:
    """The host may index an app more than once: the second indexing is no name clash of the app with itself."""
    app = _app_with(_route("hello", name="hello"))
    assert len(app.get_functions()) == len(app.get_functions()) == MAPPER_FUNCTIONS + 1


def test_a_real_name_clash_is_refused_at_every_indexing() -> None:
    """Forgetting the names seen by an earlier indexing does not let a real clash through the next one."""
    app = _app_with(_timer("send"))
    for _ in range(2):
        with pytest.raises(RegistrationError, match="send"):
            app.get_functions()


def test_registering_twice_is_refused_with_a_clear_message() -> None:
    """A second register() on one app fails at once, naming the cause, not as 21 name clashes at indexing."""
    app = _app_with()
    with pytest.raises(RegistrationError, match="registered on this app already"):
        register(app)


def test_two_functions_of_the_app_with_one_name_keep_the_sdks_own_error() -> None:
    """A name the app repeats among its own functions is the SDK's error, not blamed on the mapper."""
    app = _app_with(_route("hello", name="hello"), _timer("hello"))
    with pytest.raises(ValueError, match="hello does not have a unique function name") as raised:
        app.get_functions()
    assert not isinstance(raised.value, RegistrationError)


def test_a_queue_trigger_on_the_grace_queue_fails_at_indexing() -> None:
    """An app function that would take the grace decisions off the mapper's queue is refused, naming the queue."""
    app = _app_with(_queue("presence-grace"))
    with pytest.raises(RegistrationError, match="'my_queue' takes the messages of queue 'presence-grace'"):
        app.get_functions()


def test_a_queue_named_by_a_setting_is_compared_by_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue name given as %SETTING% and another setting with the same storage connection are the same source."""
    monkeypatch.setenv("MY_QUEUE", "presence-grace")
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("OTHER_STORAGE", "UseDevelopmentStorage=true")
    with pytest.raises(RegistrationError, match="presence-grace"):
        _app_with(_queue("%MY_QUEUE%", connection="OTHER_STORAGE")).get_functions()


@pytest.mark.parametrize(
    ("queue", "connection"), [("my-work", "AzureWebJobsStorage"), ("presence-grace", "ELSEWHERE_STORAGE")]
)
def test_another_queue_or_another_storage_is_accepted(
    queue: str, connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue of another name, or one of the same name in another storage account, takes no mapper message."""
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("ELSEWHERE_STORAGE", "DefaultEndpointsProtocol=https;AccountName=elsewhere")
    assert len(_app_with(_queue(queue, connection=connection)).get_functions()) == MAPPER_FUNCTIONS + 1


@pytest.mark.parametrize(("hub", "event"), [("%SIGNALR_HUB%", "send"), ("Chat", "Join")])
def test_a_signalr_trigger_on_a_mapper_event_fails_at_indexing(
    hub: str, event: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app function on the hub's messages/send or join event, however the hub is named, is refused."""
    monkeypatch.setenv("SIGNALR_HUB", "chat")
    with pytest.raises(RegistrationError, match=f"'my_signalr' takes the SignalR messages/{event.lower()} events"):
        _app_with(_signalr(hub, "messages", event)).get_functions()


@pytest.mark.parametrize(
    ("hub", "category", "event"), [("chat", "messages", "typing"), ("other", "connections", "connected")]
)
def test_signalr_triggers_on_other_events_or_hubs_are_accepted(
    hub: str, category: str, event: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app's own SignalR event, or the mapper's events on another hub, index beside the mapper."""
    monkeypatch.setenv("SIGNALR_HUB", "chat")
    assert len(_app_with(_signalr(hub, category, event)).get_functions()) == MAPPER_FUNCTIONS + 1


def test_two_patterns_clash_when_one_segment_fits_both() -> None:
    """Mixed segments clash when their fixed heads and tails agree, and not when either differs."""
    ours = [Registered("export", True, "v{n}.json", frozenset({"GET"}))]

    def clash_with(route: str) -> bool:
        return bool(clashes([*ours, Registered("mine", False, route, frozenset({"GET"}))]))

    assert clash_with("{name}.json")
    assert clash_with("v2{rest}")
    assert not clash_with("w{rest}")
    assert not clash_with("v{n}.csv")


def test_an_asgi_app_whose_catch_all_takes_every_route_is_refused() -> None:
    """`func.AsgiFunctionApp` answers `{*route}` for every method, so registering the mapper on it is refused."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    app = func.AsgiFunctionApp(app=asgi, http_auth_level=func.AuthLevel.ANONYMOUS)
    register(app)
    with pytest.raises(RegistrationError, match=r"'http_app_func' \(route '/\{\*route\}'\) answers"):
        app.get_functions()


def test_an_asgi_app_under_a_route_of_its_own_is_accepted() -> None:
    """An ASGI app served from a function of its own under `app/{*route}` indexes beside the mapper."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    middleware = func.AsgiMiddleware(asgi)  # type: ignore[no-untyped-call]

    def define(app: func.FunctionApp) -> None:
        @app.route(route="app/{*route}", auth_level=func.AuthLevel.ANONYMOUS)
        async def web(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
            response: func.HttpResponse = await middleware.handle_async(req, context)
            return response

    assert len(_app_with(define).get_functions()) == MAPPER_FUNCTIONS + 1
