"""The app's functions as the host sees them: binding metadata from `app.get_functions()`, and how to run them."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.functions as func

logger = logging.getLogger(__name__)

HTTP_TRIGGER = "httpTrigger"
TIMER_TRIGGER = "timerTrigger"
SIGNALR_TRIGGER = "signalRTrigger"
QUEUE_TRIGGER = "queueTrigger"
SUPPORTED_BINDINGS = frozenset(
    {HTTP_TRIGGER, TIMER_TRIGGER, SIGNALR_TRIGGER, QUEUE_TRIGGER, "http", "signalR", "signalRConnectionInfo"}
)


@dataclass(frozen=True)
class FunctionSpec:
    """One function: its name, trigger, other bindings and Python code."""

    name: str
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]]
    code: Callable[..., Any]

    def inputs(self, binding_type: str) -> list[dict[str, Any]]:
        """Return the non-trigger bindings of a type."""
        return [b for b in self.bindings if b["type"] == binding_type and b is not self.trigger]

    def outputs(self) -> dict[str, Output]:
        """Return a fresh value holder for each output binding (by argument name), for one invocation."""
        return {
            b["name"]: Output() for b in self.bindings if b["direction"].upper() == "OUT" and b["name"] != "$return"
        }


class Output(func.Out[Any]):
    """An output binding's value, as the worker's `func.Out` holds it."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, val: Any) -> None:
        """Set the output value."""
        self.value = val

    def get(self) -> Any:
        """Return the output value."""
        return self.value


def load_functions(app: Any) -> list[FunctionSpec]:
    """Read every function of a `func.FunctionApp` through its public metadata (`get_functions()`)."""
    specs: list[FunctionSpec] = []
    for function in app.get_functions():
        bindings: list[dict[str, Any]] = json.loads(function.get_function_json())["bindings"]
        name = str(function.get_function_name())
        triggers = [b for b in bindings if b["type"].endswith("Trigger")]
        unsupported = sorted({b["type"] for b in bindings} - SUPPORTED_BINDINGS)
        if len(triggers) != 1 or unsupported:
            logger.error("function %s is not served locally: unsupported bindings %s", name, unsupported or triggers)
            continue
        specs.append(FunctionSpec(name, triggers[0], bindings, function.get_user_function()))
    return specs


async def run(spec: FunctionSpec, arguments: dict[str, Any], after: Callable[[], Any] | None = None) -> Any:
    """Run a function (async on the loop, sync in a thread), then `after` (outputs); log one line with the duration."""
    invocation_id = uuid.uuid4()
    started = time.perf_counter()
    try:
        if inspect.iscoroutinefunction(spec.code):
            result = await spec.code(**arguments)
        else:
            result = await asyncio.to_thread(spec.code, **arguments)
        if after is not None:
            await after()
    except Exception:
        elapsed = (time.perf_counter() - started) * 1000
        logger.exception("Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)", spec.name, invocation_id, elapsed)
        raise
    elapsed = (time.perf_counter() - started) * 1000
    logger.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)", spec.name, invocation_id, elapsed)
    return result
