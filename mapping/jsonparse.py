"""Strict JSON input: no NaN or Infinity, and a bound on how deeply arrays and objects nest."""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64


def load_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse strict JSON (no NaN or Infinity, at most `max_depth` levels deep); raise ValueError otherwise."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not within_depth(value, max_depth):
        raise ValueError(f"JSON nested more than {max_depth} levels deep")
    return value


def within_depth(value: Any, max_depth: int) -> bool:
    """Return whether arrays and objects in `value` nest at most `max_depth` levels."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return False
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value
