"""App settings as the Functions host sees them: `local.settings.json` `Values` first, then the environment."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

_PERCENT = re.compile(r"%([^%]+)%")


class SettingsError(Exception):
    """A setting is missing or local.settings.json is unreadable."""


def load_local_settings(path: Path) -> dict[str, str]:
    """Read the `Values` of a local.settings.json file (an absent file gives no values)."""
    if not path.exists():
        logger.warning("%s not found: using the environment only", path)
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SettingsError(f"cannot read {path}: {error}") from None
    values = document.get("Values", {}) if isinstance(document, dict) else {}
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: 'Values' must be an object")
    return {str(name): str(value) for name, value in values.items() if value is not None}


def parse_name_value_pairs(items: list[str], option: str) -> dict[str, str]:
    """Read a command-line `option`'s NAME=VALUE items into a dict (a malformed one exits with a message)."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{option} must look like NAME=VALUE, not {item!r}")
        pairs[name] = value
    return pairs


def apply(values: Mapping[str, str]) -> None:
    """Put settings into the process environment, where the app reads them (they win over inherited variables)."""
    os.environ.update(values)


def setting(name: str) -> str | None:
    """Return one app setting (empty counts as unset)."""
    return os.environ.get(name) or None


def resolve(value: str) -> str:
    """Replace every `%NAME%` in a binding property with the app setting NAME."""

    def substitute(match: re.Match[str]) -> str:
        found = setting(match.group(1))
        if found is None:
            raise SettingsError(f"the app setting {match.group(1)!r} used as %{match.group(1)}% is not set")
        return found

    return _PERCENT.sub(substitute, value)
