"""Fixtures of more than one test folder: a real Azurite started once per run from node_modules, the app's settings
on a fresh table, the environment put back after the benchmarks. The helpers are testkit's (testkit.tables,
testkit.azurite); the fixtures of the Azurite tests alone are in tests/azurite/conftest.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from mapping.functions import runtime
from testkit.azurite import Azurite, running_azurite
from testkit.tables import drop_table, unique_table_name


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Start Azurite's table service (in memory) on a free port for the whole test run."""
    with running_azurite() as service:
        yield service


@pytest.fixture
async def app_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, str]]:
    """App settings in the environment for the function app, on a fresh table; the app's store is reset around it."""
    env = {
        "MAPPING_STORAGE": azurite.connection_string,
        "MAPPING_TABLE": unique_table_name(),
        "MAPPING_TTL_SECONDS": "600",
        "SIGNALR_HUB": "chat",
        "PRESENCE_EVENTS": "true",
        "PRESENCE_AUDIENCE": "hub",
        "PRESENCE_GRACE_SECONDS": "0",
        "SWEEP_SCHEDULE": "0 */5 * * * *",
        # Open rooms and watching, and no call budget, unlike the app's defaults: the tests written before access and
        # budgets were decided.
        "ROOMS_OPEN": "*",
        "PRESENCE_WATCH": "anyone",
        "CLIENT_CALL_RATE": "0",
    }
    for name in list(os.environ):
        if name.startswith(("MAPPING_", "AzureWebJobsStorage", "DIRECT_MESSAGES", "ROOMS_OPEN", "CLIENT_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    await runtime.reset()
    yield env
    await runtime.reset()
    await drop_table(azurite, env["MAPPING_TABLE"])


@pytest.fixture
async def restored_environment() -> AsyncIterator[None]:
    """The bench points the app at its tables through the environment: put the environment back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    await runtime.reset()
