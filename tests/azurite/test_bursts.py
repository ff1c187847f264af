"""Bursts of one user's connects: on one instance they take turns, across instances they retry for a while."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from mapping.functions import runtime
from mapping.keys import user_key
from mapping.presence.store import ConnectionStore
from mapping.storage.table import int_value
from testkit.azurite import Azurite
from testkit.storm_worker import Event, run_lanes
from testkit.tables import presence_rows

pytestmark = pytest.mark.slow


async def test_200_simultaneous_connects_of_one_user_on_one_instance_all_succeed(
    store: ConnectionStore, azurite: Azurite
) -> None:
    """200 connects of one user at once on one store all succeed, and the highest announced pair says 200 tabs."""
    started = time.monotonic()
    outcomes = await asyncio.gather(*(store.connect("kiosk", f"k{number}") for number in range(200)))
    elapsed = time.monotonic() - started
    changes = [outcome.presence for outcome in outcomes if outcome.presence is not None]
    latest = max(changes, key=lambda change: change.version)
    assert (latest.state.online, latest.state.connections) == (True, 200), f"in {elapsed:.1f} s"
    presence = await store.presence_of("kiosk")
    assert len(presence.connections) == 200
    recorded = (await presence_rows(azurite, store.settings.table_name))[user_key("kiosk")]
    assert int_value(recorded["Version"]) == latest.version
    assert not store.turns, "every turn was given back"


def test_4_processes_of_25_simultaneous_connects_of_one_user_all_succeed(
    app_env: dict[str, str], azurite: Azurite
) -> None:
    """4 processes each connect one user 25 times at once: all succeed, and presence converges on 100 tabs."""
    lanes: list[list[list[Event]]] = [
        [[(number, "connected", "kiosk", f"w{worker}-k{number}", None)] for number in range(25)] for worker in range(4)
    ]
    started = time.monotonic()
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_lanes, app_env, share, 25) for share in lanes]
        records: list[dict[str, Any]] = [record for future in futures for record in future.result(timeout=120)]
    elapsed = time.monotonic() - started
    assert [record["error"] for record in records if record["error"]] == [], f"in {elapsed:.1f} s"
    assert len(records) == 100
    announced = max((pair for record in records for pair in record["presence"]), key=lambda pair: pair[0])
    recorded = asyncio.run(_recorded(azurite, app_env["MAPPING_TABLE"]))
    assert (int_value(recorded["Version"]), recorded["Online"], recorded["Connections"]) == (announced[0], True, 100)


async def _recorded(azurite: Azurite, table: str) -> dict[str, Any]:
    """Read the kiosk user's presence row straight from Azurite."""
    rows = await presence_rows(azurite, table)
    await runtime.reset()
    return rows[user_key("kiosk")]
