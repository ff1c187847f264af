"""Put the connection mapper's functions on a `func.FunctionApp`; indexing refuses a name, route or trigger clash."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from mapping.errors import ConfigurationError
from mapping.functions import runtime
from mapping.functions.blueprint import blueprint
from mapping.rooms.policy import SETTINGS_DECIDE, AccessPolicy

MAPPER_MODULE = "mapping.functions.blueprint"
ALL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_OPTIONAL = re.compile(r"^\{[^}*]*(\?|=[^}]*)\}$")  # `{x?}`, `{x=default}`: one segment, or none
_CATCH_ALL = re.compile(r"^\{\*")  # `{*rest}`, `{**rest}`: any number of segments, none included
_SETTING = re.compile(r"%([^%]+)%")  # a binding expression the host fills from an app setting
_DUPLICATE_NAME = re.compile(r"Function (\S+) does not have a unique function name")
_REGISTERED = "_connection_mapper_registered"
# The trigger options that say which messages a queue or SignalR trigger takes; the last one names a connection.
_SOURCE_FIELDS = {
    "queueTrigger": ("queueName", "connection"),
    "signalRTrigger": ("hubName", "category", "event", "connectionStringSetting"),
}


class RegistrationError(ConfigurationError):
    """The app's own functions and the connection mapper's cannot be indexed together."""


@dataclass(frozen=True)
class TriggerSource:
    """The messages a queue or SignalR trigger takes: two triggers with one source compete for them."""

    key: tuple[str, ...]
    text: str = field(compare=False)

    @classmethod
    def of(cls, binding: dict[str, Any]) -> TriggerSource:
        """Read a trigger binding, its setting expressions filled from the environment as the host fills them."""
        kind = str(binding["type"])
        *names, connection = _SOURCE_FIELDS[kind]
        values = [_filled(str(binding.get(name) or "")).casefold() for name in names]
        key = (kind, *values, _connection_identity(str(binding.get(connection) or "AzureWebJobsStorage")))
        if kind == "queueTrigger":
            return cls(key, f"the messages of queue {values[0]!r}")
        return cls(key, f"the SignalR {values[1]}/{values[2]} events of hub {values[0]!r}")


@dataclass(frozen=True)
class Registered:
    """One indexed function as the clash checks see it: name, whose it is, HTTP route or trigger source."""

    name: str
    mapper: bool
    route: str | None
    methods: frozenset[str]
    source: TriggerSource | None = None

    @classmethod
    def of(cls, function: Any) -> Registered:
        """Read a `Function` of `app.get_functions()`."""
        name = str(function.get_function_name())
        mapper = getattr(function.get_user_function(), "__module__", "") == MAPPER_MODULE
        for binding in json.loads(function.get_function_json())["bindings"]:
            if binding.get("type") == "httpTrigger":
                methods = frozenset(str(m).upper() for m in binding.get("methods") or ()) or ALL_METHODS
                return cls(name, mapper, str(binding.get("route") or name), methods)
            if binding.get("type") in _SOURCE_FIELDS:
                return cls(name, mapper, None, frozenset(), TriggerSource.of(binding))
        return cls(name, mapper, None, frozenset())

    def segments(self) -> tuple[str, ...]:
        """The route's segments as the host matches them: a literal (without case), `{}` (a parameter: one
        segment), `{?}` (optional: one or none), `{*}` (catch-all: any number) or `~` and a pattern (`v{n}`)."""
        return tuple(_kind(segment) for segment in (self.route or "").strip("/").split("/") if segment)


def register(app: func.FunctionRegister, *, access: AccessPolicy = SETTINGS_DECIDE) -> None:
    """Register the mapper's functions on `app` (any function app), with the app's access policy (who may join, send
    and watch beyond what the settings allow: `mapping.rooms.policy`); indexing then refuses a clash with the app's."""
    if getattr(app, _REGISTERED, False):
        raise RegistrationError("the connection mapper's functions are registered on this app already")
    if not isinstance(access, AccessPolicy):
        raise RegistrationError("access must be an AccessPolicy (subclass mapping.AccessPolicy)")
    setattr(app, _REGISTERED, True)
    runtime.use_access(access)
    app.register_functions(blueprint)
    index: Callable[[], list[Any]] = app.get_functions
    app.get_functions = lambda: _checked(app, index)  # type: ignore[method-assign]


def clashes(functions: Iterable[Registered]) -> list[str]:
    """Describe each pair of one mapper function and one of the app's that clash: a name, a request both could
    answer, or the messages both triggers would take."""
    listed = list(functions)
    ours = [f for f in listed if f.mapper]
    theirs = [f for f in listed if not f.mapper]
    found: list[str] = []
    for mine in ours:
        for other in theirs:
            if mine.name.casefold() == other.name.casefold():
                found.append(f"the app's function {other.name!r} has the name of the mapper's {mine.name!r}")
            elif _same_route(mine, other):
                methods = ", ".join(sorted(mine.methods & other.methods))
                found.append(
                    f"the app's function {other.name!r} (route {other.route!r}) answers {methods} on the route of "
                    f"the mapper's {mine.name!r} (route {mine.route!r})"
                )
            elif mine.source is not None and mine.source == other.source:
                found.append(
                    f"the app's function {other.name!r} takes {mine.source.text}, as the mapper's {mine.name!r}"
                )
    return found


@functools.cache
def mapper_names() -> frozenset[str]:
    """The names of the mapper's functions, without case."""
    app = func.FunctionApp()
    app.register_functions(blueprint)
    return frozenset(str(function.get_function_name()).casefold() for function in app.get_functions())


def _checked(app: func.FunctionRegister, index: Callable[[], list[Any]]) -> list[Any]:
    # The SDK keeps the names it saw on the app, so a second indexing would find every name twice: forget them.
    app.functions_bindings = None
    try:
        functions = index()
    except ValueError as error:
        duplicate = _DUPLICATE_NAME.search(str(error))
        if duplicate is None or duplicate[1].casefold() not in mapper_names():
            raise
        raise RegistrationError(
            f"{error} The connection mapper's functions (mapping.functions.blueprint) take part in this app and "
            f"{duplicate[1]!r} is one of them: rename the app's function."
        ) from error
    found = clashes(Registered.of(function) for function in functions)
    if found:
        raise RegistrationError(
            "the connection mapper's functions clash with this app's: "
            + "; ".join(found)
            + ". Rename the app's function or change its route or trigger; the mapper's names, routes and "
            "triggers are its contract."
        )
    return functions


def _filled(expression: str) -> str:
    return _SETTING.sub(lambda setting: os.environ.get(setting[1], setting[0]), expression)


def _connection_identity(setting: str) -> str:
    # Two setting names with one connection string are one connection; the value itself is kept only as a digest.
    value = os.environ.get(setting)
    return "value " + hashlib.sha256(value.encode()).hexdigest() if value else "setting " + setting.casefold()


def _same_route(mine: Registered, other: Registered) -> bool:
    return (
        mine.route is not None
        and other.route is not None
        and _overlap(mine.segments(), other.segments())
        and bool(mine.methods & other.methods)
    )


def _overlap(first: tuple[str, ...], second: tuple[str, ...]) -> bool:
    """Whether some request path matches both routes. The host tries its routes in the order of their
    functions' names, not the more specific first, so either function may take such a request."""
    if (first and first[0] == "{*}") or (second and second[0] == "{*}"):
        return True
    if not first or not second:
        return all(segment == "{?}" for segment in first + second)
    if first[0] == "{?}" and _overlap(first[1:], second):
        return True
    if second[0] == "{?}" and _overlap(first, second[1:]):
        return True
    return _segments_meet(first[0], second[0]) and _overlap(first[1:], second[1:])


def _segments_meet(first: str, second: str) -> bool:
    """Whether one path segment can match both kinds."""
    if first in ("{}", "{?}") or second in ("{}", "{?}"):
        return True
    if first.startswith("~") and second.startswith("~"):
        return _patterns_meet(first[1:], second[1:])
    if first.startswith("~"):
        return _pattern(first[1:]).fullmatch(second) is not None
    if second.startswith("~"):
        return _pattern(second[1:]).fullmatch(first) is not None
    return first == second


def _patterns_meet(first: str, second: str) -> bool:
    # Two patterns share a segment when their fixed heads and tails agree: a parameter takes any middle.
    (head, *_, tail), (other_head, *_, other_tail) = _pieces(first), _pieces(second)
    heads_agree = head.startswith(other_head) or other_head.startswith(head)
    return heads_agree and (tail.endswith(other_tail) or other_tail.endswith(tail))


@functools.cache
def _pattern(segment: str) -> re.Pattern[str]:
    """A mixed segment (`v{version}`, `{name}.json`) as a regular expression: a parameter takes 1+ characters."""
    return re.compile(".+".join(re.escape(piece) for piece in _pieces(segment)))


def _pieces(segment: str) -> list[str]:
    """The literal text around a segment's parameters: one piece more than there are parameters."""
    pieces, end = [], 0
    for start, stop in _parameters(segment):
        pieces.append(segment[end:start])
        end = stop
    return [*pieces, segment[end:]]


def _parameters(segment: str) -> list[tuple[int, int]]:
    """The spans of a segment's `{...}` parameters, braces inside a constraint (`{n:regex(^\\d{3}$)}`) included."""
    spans: list[tuple[int, int]] = []
    depth = start = 0
    for at, character in enumerate(segment):
        if character == "{":
            start = at if depth == 0 else start
            depth += 1
        elif character == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append((start, at + 1))
    return spans


def _kind(segment: str) -> str:
    spans = _parameters(segment)
    if spans == [(0, len(segment))]:
        if _CATCH_ALL.match(segment):
            return "{*}"
        return "{?}" if _OPTIONAL.match(segment) else "{}"
    return "~" + segment.casefold() if spans else segment.casefold()
