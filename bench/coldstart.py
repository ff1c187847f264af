"""Cold start: importing `function_app` beside importing its dependencies alone, each in a fresh interpreter."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Each snippet prints the seconds its measured part took, timed inside the fresh interpreter.
SNIPPETS: dict[str, str] = {
    "interpreter only (no imports)": "pass",
    "dependencies alone: azure.functions, azure.data.tables.aio, azure.identity.aio, aiohttp": (
        "import azure.functions, azure.data.tables.aio, azure.identity.aio, aiohttp"
    ),
    "dependencies alone, without azure.identity.aio (the app imports it only for identity-based storage)": (
        "import azure.functions, azure.data.tables.aio, aiohttp"
    ),
    "import function_app": "import function_app",
    "import function_app + index the functions (app.get_functions())": (
        "import function_app; function_app.app.get_functions()"
    ),
}
FIRST_ANSWER = "import function_app + first GET users/{user} answered (client, table, query)"
_FIRST_ANSWER_CODE = """
import asyncio, azure.functions as func, function_app
async def main():
    fn = {f.get_function_name(): f for f in function_app.app.get_functions()}["user_presence"].get_user_function()
    req = func.HttpRequest(method="GET", url="http://localhost/api/users/bob", body=b"", route_params={"user": "bob"})
    response = await fn(req=req)
    assert response.status_code == 200, response.get_body()
asyncio.run(main())
"""


def _timed(code: str) -> str:
    return (
        "import time, sys\n_t = time.perf_counter()\n"
        + code
        + "\nsys.stdout.write(repr(time.perf_counter() - _t))\nsys.stdout.flush()\n"
    )


def _run(code: str, env: dict[str, str]) -> tuple[float, float]:
    """Return (seconds inside the interpreter, seconds of the whole process from spawn to exit)."""
    began = time.perf_counter()
    output = subprocess.run(  # noqa: S603 - this interpreter, our own snippet
        [sys.executable, "-c", _timed(code)], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return float(output.strip().splitlines()[-1]), time.perf_counter() - began


def measure_cold_start(*, repetitions: int, app_env: dict[str, str]) -> list[dict[str, Any]]:
    """Time each snippet `repetitions` times in a fresh interpreter (after one discarded warm-up run each)."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("MAPPING_", "AzureWebJobs"))}
    base["PYTHONPATH"] = str(ROOT)
    cases = [(label, code, base) for label, code in SNIPPETS.items()]
    cases.append((FIRST_ANSWER, _FIRST_ANSWER_CODE, {**base, **app_env}))
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _code, _env in cases}
    for _label, code, env in cases:
        _run(code, env)  # writes any missing .pyc files and warms the OS file cache
    # Interleave the cases so that a slow moment on the machine does not land on one case only.
    for _ in range(repetitions):
        for label, code, env in cases:
            runs[label].append(_run(code, env))
    return [
        {
            "case": label,
            "median_ms": _ms(statistics.median(inside for inside, _ in values)),
            "min_ms": _ms(min(inside for inside, _ in values)),
            "max_ms": _ms(max(inside for inside, _ in values)),
            "process_median_ms": _ms(statistics.median(whole for _, whole in values)),
            "repetitions": len(values),
        }
        for label, values in runs.items()
    ]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
