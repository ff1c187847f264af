"""Put the connection mapper's functions on a `func.FunctionApp`, refusing at indexing any name or route clash."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import azure.functions as func

from mapping.blueprint import blueprint
from mapping.errors import ConfigurationError

MAPPER_MODULE = "mapping.blueprint"
ALL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_PARAMETER = re.compile(r"\{[^}]*\}")
_OPTIONAL = re.compile(r"^\{[^}*]*(\?|=[^}]*)\}$")  # `{x?}`, `{x=default}`: one segment, or none
_CATCH_ALL = re.compile(r"^\{\*")  # `{*rest}`, `{**rest}`: any number of segments, none included
_REGISTERED = "_connection_mapper_registered"


class RegistrationError(ConfigurationError):
    """The app's own functions and the connection mapper's cannot be indexed together."""


@dataclass(frozen=True)
class Registered:
    """One indexed function as the clash checks see it: its name, whose it is, and its HTTP route if it has one."""

    name: str
    mapper: bool
    route: str | None
    methods: frozenset[str]

    @classmethod
    def of(cls, function: Any) -> Registered:
        """Read a `Function` of `app.get_functions()`."""
        name = str(function.get_function_name())
        mapper = getattr(function.get_user_function(), "__module__", "") == MAPPER_MODULE
        for binding in json.loads(function.get_function_json())["bindings"]:
            if binding.get("type") == "httpTrigger":
                methods = frozenset(str(m).upper() for m in binding.get("methods") or ()) or ALL_METHODS
                return cls(name, mapper, str(binding.get("route") or name), methods)
        return cls(name, mapper, None, frozenset())

    def segments(self) -> tuple[str, ...]:
        """The route's segments as the host matches them: a literal (without case), or one of the kinds
        `{}` (a parameter: one segment), `{?}` (optional: one or none) and `{*}` (catch-all: any number)."""
        return tuple(_kind(segment) for segment in (self.route or "").strip("/").split("/") if segment)


def register(app: func.FunctionApp) -> None:
    """Register the mapper's functions on `app`; indexing then fails with a clear message on a clash with the app's."""
    if getattr(app, _REGISTERED, False):
        raise RegistrationError("the connection mapper's functions are registered on this app already")
    setattr(app, _REGISTERED, True)
    app.register_functions(blueprint)
    index: Callable[[], list[Any]] = app.get_functions
    app.get_functions = lambda: _checked(app, index)  # type: ignore[method-assign]


def clashes(functions: Iterable[Registered]) -> list[str]:
    """Describe each pair of one mapper function and one of the app's that clash: a name, or a request both answer."""
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
    return found


def _checked(app: func.FunctionApp, index: Callable[[], list[Any]]) -> list[Any]:
    # The SDK keeps the names it saw on the app, so a second indexing would find every name twice: forget them.
    app.functions_bindings = None
    try:
        functions = index()
    except ValueError as error:
        if "unique function name" not in str(error):
            raise
        raise RegistrationError(
            f"{error} The connection mapper's functions (mapping.blueprint) take part in this app: "
            "rename the app's function."
        ) from error
    found = clashes(Registered.of(function) for function in functions)
    if found:
        raise RegistrationError(
            "the connection mapper's functions clash with this app's: "
            + "; ".join(found)
            + ". Rename the app's function or change its route; the mapper's names and routes are its contract."
        )
    return functions


def _same_route(mine: Registered, other: Registered) -> bool:
    return (
        mine.route is not None
        and other.route is not None
        and _overlap(mine.segments(), other.segments())
        and bool(mine.methods & other.methods)
    )


def _overlap(first: tuple[str, ...], second: tuple[str, ...]) -> bool:
    """Whether some request path matches both routes (the host's precedence aside: either may take it)."""
    if (first and first[0] == "{*}") or (second and second[0] == "{*}"):
        return True
    if not first or not second:
        return all(segment == "{?}" for segment in first + second)
    if first[0] == "{?}" and _overlap(first[1:], second):
        return True
    if second[0] == "{?}" and _overlap(first, second[1:]):
        return True
    literals = not first[0].startswith("{") and not second[0].startswith("{")
    return (not literals or first[0] == second[0]) and _overlap(first[1:], second[1:])


def _kind(segment: str) -> str:
    if _CATCH_ALL.match(segment):
        return "{*}"
    if _OPTIONAL.match(segment):
        return "{?}"
    return "{}" if _PARAMETER.search(segment) else segment.casefold()
