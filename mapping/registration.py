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

    def route_shape(self) -> str:
        """The route as the host matches it: literals without case, parameters without their names."""
        segments = [s for s in (self.route or "").strip("/").split("/") if s]
        return "/".join(_PARAMETER.sub(_parameter_shape, segment).casefold() for segment in segments)


def register(app: func.FunctionApp) -> None:
    """Register the mapper's functions on `app`; indexing then fails with a clear message on a clash with the app's."""
    app.register_functions(blueprint)
    index: Callable[[], list[Any]] = app.get_functions
    app.get_functions = lambda: _checked(index)  # type: ignore[method-assign]


def clashes(functions: Iterable[Registered]) -> list[str]:
    """Describe each pair of one mapper function and one of the app's that the host could not tell apart."""
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


def _checked(index: Callable[[], list[Any]]) -> list[Any]:
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
        and mine.route_shape() == other.route_shape()
        and bool(mine.methods & other.methods)
    )


def _parameter_shape(match: re.Match[str]) -> str:
    return "{*}" if match.group(0).startswith("{*") else "{}"
