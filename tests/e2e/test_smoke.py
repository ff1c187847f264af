"""`local/scripts/smoke.py` (what `make smoke-azure` runs) against the local stack, a stand-in for Azure, and nothing.

The local run is what CI relies on to keep the script from rotting. The Azure run puts a small gateway in front of
the local stack that behaves as the deployed app does where the local host does not (function and system keys; App
Service Authentication answering 401 itself, before the app, on every path but the template's excluded ones when
there is no valid bearer token, setting the principal header from a valid one and stripping a client's copy), and a
fake `az` on PATH, so that the Azure-only steps and the full client flow with a bearer token run too. Neither proves
anything about Azure itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from testkit.azurite import ROOT, Azurite, free_port
from testkit.stack import ACCESS_KEY, HUB, SECONDARY_KEY, Stack, running_stack
from tests.infra.test_deployed_auth import excluded_paths, is_excluded

pytestmark = pytest.mark.slow

SMOKE = ROOT / "local" / "scripts" / "smoke.py"
FUNCTION_KEY = "smoke-test-function-key-0123456789abcdef"
SYSTEM_KEY = "smoke-test-signalr-extension-key-0123456789"
ACCESS_TOKEN = "smoke-test-entra-token-0123456789abcdef"
TOKEN_USER = "smoke-user@example.com"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.")
NEGOTIATE = "negotiate without a token -> refused (Azure: 401, local: 500)"
FORGED = "negotiate with a forged principal header -> 401"
EXCLUDED_ROUTE = "PUT /api/rooms/{room}/members/{user} with the function key -> not 401"
CHECKS = 12  # rows of the table


@pytest.fixture(scope="module")
def stack(azurite: Azurite) -> Iterator[Stack]:
    """One emulator and local host for this module's tests, on their own table."""
    with running_stack(azurite) as running:
        yield running


async def run_smoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the smoke script with the test's Python; return its exit status and its whole output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SMOKE), *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    return process.returncode or 0, output.decode(errors="replace")


def rows(output: str) -> dict[str, str]:
    """Return check name to result (PASS, FAIL, SKIP) from the script's table."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"^(\S.*?)\s{2,}(PASS|FAIL|SKIP)\b", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def assert_no_secret(output: str, *secrets: str) -> None:
    """Fail if the output holds any of the given secrets or anything shaped like a JWT."""
    for secret in secrets:
        assert secret not in output, "the smoke script printed a secret"
    assert not JWT.search(output), "the smoke script printed a token"


async def test_smoke_passes_against_the_local_stack_and_prints_no_key(stack: Stack) -> None:
    """Locally every check but the Azure-only ones passes, the full client flow included, and no key is printed."""
    code, output = await run_smoke("local", "--url", stack.host_url, env={"SMOKE_FUNCTION_KEY": FUNCTION_KEY})
    assert code == 0, output
    results = rows(output)
    assert len(results) == CHECKS, output
    skipped = {name for name, result in results.items() if result == "SKIP"}
    assert skipped == {
        FORGED,
        "GET /api/users without the function key -> 401",
        "SignalR webhook without its key -> 401",
        "SignalR upstream configured for the hub",
    }, output
    assert all(result == "PASS" for name, result in results.items() if name not in skipped), output
    assert "client sends itself a message and receives it" in results
    assert "got 500 with no body" in output  # negotiate's binding, as the local host answers without the header
    assert_no_secret(output, FUNCTION_KEY, ACCESS_KEY, SECONDARY_KEY)


async def test_smoke_fails_when_nothing_listens() -> None:
    """Pointed at a port where nothing listens, the script reports failures and exits non-zero."""
    code, output = await run_smoke("local", "--url", f"http://127.0.0.1:{free_port()}", "--wait", "2")
    assert code == 1, output
    assert rows(output)[NEGOTIATE] == "FAIL"
    assert "client connects (@microsoft/signalr)" in rows(output)


# ---- a stand-in for the deployed app ------------------------------------------------------------


def gateway(
    stack: Stack, *, check_keys: bool = True, easy_auth: bool = True, excluded: list[str] | None = None
) -> web.Application:
    """An HTTP front for the local stack that enforces what Azure enforces and the local host does not. App Service
    Authentication as the template configures it (`easy_auth`; False: `AllowAnonymous`, as before it required
    authentication) with its excluded paths (`excluded`, by default the template's `authExcludedPaths`)."""
    unauthenticated_ok = excluded_paths() if excluded is None else excluded

    async def forward(request: web.Request) -> web.StreamResponse:
        path = request.rel_url.path
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "x-ms-client-principal-name")}
        # App Service Authentication: a valid bearer token sets the principal; a client's own copy never gets through.
        signed_in = headers.pop("Authorization", "") == f"Bearer {ACCESS_TOKEN}"
        if signed_in:
            headers["x-ms-client-principal-name"] = TOKEN_USER
        elif easy_auth and not is_excluded(path, unauthenticated_ok):
            return web.Response(status=401)  # Return401: before any function runs, none of the app's JSON
        if check_keys and path.startswith("/runtime/webhooks/") and request.query.get("code") != SYSTEM_KEY:
            return web.Response(status=401)
        keyed = path.startswith("/api/") and not path.startswith("/api/negotiate")
        if check_keys and keyed and headers.get("x-functions-key") != FUNCTION_KEY:
            return web.Response(status=401)
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, f"{stack.host_url}{request.rel_url}", headers=headers, data=await request.read()
            ) as answer,
        ):
            return web.Response(status=answer.status, body=await answer.read(), content_type=answer.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


@pytest.fixture
async def fake_azure(stack: Stack, tmp_path: Path) -> AsyncIterator[tuple[Path, dict[str, str]]]:
    """Start the gateway; write an azd env file and a fake `az` for it; yield the env file and the environment."""
    async with stand_in(gateway(stack), tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def stand_in(app: web.Application, tmp_path: Path) -> AsyncIterator[tuple[Path, dict[str, str]]]:
    """Serve a gateway; write an azd env file and a fake `az` for it; yield the env file and the environment."""
    port = free_port()
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    app_url = f"http://127.0.0.1:{port}"
    env_file = tmp_path / "azd.env"
    values = {
        "SERVICE_API_URI": app_url,
        "AZURE_RESOURCE_GROUP": "rg-smoke",
        "AZURE_FUNCTION_APP_NAME": "func-smoke",
        "AZURE_SIGNALR_NAME": "sigr-smoke",
        "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "SIGNALR_HUB": HUB,
    }
    env_file.write_text("".join(f'{name}="{value}"\n' for name, value in values.items()))
    upstream = {
        "templates": [
            {
                "urlTemplate": f"https://127.0.0.1/runtime/webhooks/signalr?code={SYSTEM_KEY}",
                "hubPattern": HUB,
                "categoryPattern": "*",
                "eventPattern": "*",
            }
        ]
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  'functionapp keys list'*) echo '{FUNCTION_KEY}' ;;\n"
        f"  'signalr upstream list'*) echo '{json.dumps(upstream)}' ;;\n"
        '  *) echo "fake az: unexpected $*" >&2; exit 2 ;;\n'
        "esac\n"
    )
    az.chmod(az.stat().st_mode | stat.S_IXUSR)
    try:
        yield env_file, {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    finally:
        await runner.cleanup()


async def test_smoke_runs_every_azure_step_against_a_stand_in(fake_azure: tuple[Path, dict[str, str]]) -> None:
    """With keys, Easy Auth and `az` stood in for, every Azure step and the token flow pass, and no secret shows."""
    env_file, env = fake_azure
    code, output = await run_smoke(
        "azure", "--env-file", str(env_file), env={**env, "SMOKE_ACCESS_TOKEN": ACCESS_TOKEN}
    )
    assert code == 0, output
    results = rows(output)
    assert len(results) == CHECKS, output
    assert set(results.values()) == {"PASS"}, output
    assert "got 401 from App Service Authentication" in output
    assert TOKEN_USER in output
    assert_no_secret(output, FUNCTION_KEY, SYSTEM_KEY, ACCESS_TOKEN, ACCESS_KEY, SECONDARY_KEY)


async def test_smoke_skips_the_client_steps_without_a_token(fake_azure: tuple[Path, dict[str, str]]) -> None:
    """Without SMOKE_ACCESS_TOKEN the client steps are SKIP with the reason; the rest still runs and passes."""
    env_file, env = fake_azure
    code, output = await run_smoke("azure", "--env-file", str(env_file), env={**env, "SMOKE_ACCESS_TOKEN": ""})
    assert code == 0, output
    results = rows(output)
    assert [name for name, result in results.items() if result == "SKIP"] == [
        name for name in results if name.startswith("client ")
    ]
    assert "no SMOKE_ACCESS_TOKEN" in output


async def smoke_a_broken_deployment(app: web.Application, tmp_path: Path) -> tuple[int, str]:
    """Run the Azure smoke, without a token (no client steps), against a gateway that gets something wrong."""
    async with stand_in(app, tmp_path) as (env_file, env):
        return await run_smoke(
            "azure", "--env-file", str(env_file), "--wait", "2", env={**env, "SMOKE_ACCESS_TOKEN": ""}
        )


async def test_smoke_fails_when_azure_does_not_check_keys(stack: Stack, tmp_path: Path) -> None:
    """A deployment that answered without keys (as the local host does) fails the key checks and exits non-zero."""
    code, output = await smoke_a_broken_deployment(gateway(stack, check_keys=False), tmp_path)
    assert code == 1, output
    results: dict[str, Any] = rows(output)
    assert results["GET /api/users without the function key -> 401"] == "FAIL"
    assert results[FORGED] == "PASS"
    assert results[NEGOTIATE] == "PASS"
    assert_no_secret(output, FUNCTION_KEY)


async def test_smoke_fails_when_app_service_authentication_lets_anyone_through(stack: Stack, tmp_path: Path) -> None:
    """Without App Service Authentication requiring a token (AllowAnonymous), negotiate without one reaches the
    binding (500), and a forged header, stripped, too: both checks fail, naming the binding."""
    code, output = await smoke_a_broken_deployment(gateway(stack, easy_auth=False), tmp_path)
    assert code == 1, output
    results: dict[str, Any] = rows(output)
    assert (results[NEGOTIATE], results[FORGED]) == ("FAIL", "FAIL"), output
    assert "got 500 (the binding: no principal), not App Service Authentication's 401" in output
    assert results[EXCLUDED_ROUTE] == "PASS", output
    assert_no_secret(output, FUNCTION_KEY)


async def test_smoke_fails_when_the_rooms_routes_are_not_excluded(stack: Stack, tmp_path: Path) -> None:
    """If App Service Authentication does not let `/api/rooms/*` through, a keyed PUT to a room's member gets its
    401: the check fails; everything else passes."""
    excluded = [path for path in excluded_paths() if path != "/api/rooms/*"]
    code, output = await smoke_a_broken_deployment(gateway(stack, excluded=excluded), tmp_path)
    assert code == 1, output
    failed = {name for name, result in rows(output).items() if result == "FAIL"}
    assert failed == {EXCLUDED_ROUTE}, output
    assert "PUT got 401 with the key" in output
    assert_no_secret(output, FUNCTION_KEY)
