"""Settings for a store on a table of its own, for tests and benchmarks."""

from __future__ import annotations

import uuid

from mapping.settings import Settings, StorageConnection


def unique_table_name() -> str:
    """Return a table name no other test uses."""
    return f"t{uuid.uuid4().hex[:20]}"


def make_settings(connection_string: str, table: str, **overrides: object) -> Settings:
    """Build settings for a store on the given storage and table."""
    values: dict[str, object] = {
        "storage": StorageConnection(connection_string=connection_string),
        "table_name": table,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]
