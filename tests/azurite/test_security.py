"""Security: OData injection, size limits, negotiate without a principal, secrets in logs, ruff S, ignored settings.

The local host's webhook signature check belongs to the local-stack issue and is not tested here.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import subprocess
import sys
import tomllib

import pytest
from azure.functions.timer import TimerRequest

from mapping.errors import StorageError
from mapping.keys import user_key
from mapping.presence.store import ConnectionStore
from mapping.signalr.send import MAX_BODY_BYTES
from testkit.azurite import DEV_KEY, ROOT, Azurite
from testkit.figures import Figures
from testkit.functions_host import Out, binding, call, http, http_request, invocation, signalr_event
from testkit.tables import make_settings, table_rows

pytestmark = pytest.mark.reliability


ODATA_INJECTIONS = [
    "' or 1 eq 1 or '",
    "alice' or PartitionKey ne '",
    "x') or true or ('",
    "' or PartitionKey gt '' or 'a' eq '",
    "zed' or LastSeen gt datetime'1900-01-01T00:00:00Z",
    "'' or true",
    "%27 or 1 eq 1",
    "PartitionKey ne ''",
    "alice' and false or 'a' eq 'a",
    "\\' or '1' eq '1",
    "'))--",
    "$filter=true",
    "@pk",
    "@cutoff' or '",
    "\u02bc or \u02bc1\u02bc eq \u02bc1",
    "x\u0000' or '",
    '" or "" eq "',
    "a' or RowKey ne 'b",
]


async def seed(store: ConnectionStore) -> None:
    """Two victims with connections that no injected name may reach."""
    await store.connect("alice", "alice-1")
    await store.connect("bob", "bob-1")


@pytest.mark.parametrize("payload", ODATA_INJECTIONS)
async def test_odata_injection_in_store_calls_reaches_no_other_row(
    store: ConnectionStore, azurite: Azurite, payload: str, figures: Figures
) -> None:
    """An injected user name or connection id is only ever a key: it reads, writes and deletes its own row."""
    figures.add("security", "odata_payloads")
    await seed(store)
    assert await store.connections_of(payload) == []
    outcome = await store.connect(payload, payload)
    assert outcome.came_online
    assert [c.connection_id for c in await store.connections_of(payload)] == [payload.strip()]
    assert (await store.disconnect(payload, payload)).went_offline
    assert not (await store.touch(payload, "alice-1")).found
    rows = await table_rows(azurite, store.settings.table_name)
    assert sorted(str(row["RowKey"]) for row in rows) == ["alice-1", "bob-1"]
    # A cursor carrying the payload is only a start key: every user listed sorts after it.
    cursor = "u1." + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    page = await store.online_users(cursor=cursor)
    assert all(user_key(u.user) > payload for u in page.users)


@pytest.mark.usefixtures("app_env")
@pytest.mark.parametrize("payload", ODATA_INJECTIONS)
async def test_odata_injection_over_http_reaches_no_other_row(payload: str, figures: Figures) -> None:
    """Injected names in the route, `to` and `next` get 200/404 about that name only, or 400; never others' data."""
    figures.add("security", "odata_http_requests", 3)
    await signalr_event("connected", invocation("connected", user_id="alice", connection_id="alice-1"))
    status, body, _ = await http("user_presence", http_request("GET", "users/x", route_params={"user": payload}))
    assert (status, body["online"], body["connections"]) == (200, False, [])
    out = Out()
    status, body, _ = await http("send", http_request("POST", "send", body={"to": payload, "message": 1}), signalr=out)
    assert status == 404
    assert out.value is None
    status, body, _ = await http("online_users", http_request("GET", "users", params={"next": payload}))
    assert status == 400
    assert "error" in body


@pytest.mark.usefixtures("app_env")
async def test_body_and_message_size_limits(figures: Figures) -> None:
    """A send body over 64 KiB is 413 and sends nothing; a client message over 64 KiB only gets the caller an error."""
    await signalr_event("connected", invocation("connected", user_id="bob", connection_id="bob-1"))
    envelope = len(json.dumps({"to": "bob", "message": ""}).encode())
    fits = {"to": "bob", "message": "x" * (MAX_BODY_BYTES - envelope)}
    out = Out()
    status, _, _ = await http("send", http_request("POST", "send", body=fits), signalr=out)
    assert status == 200
    assert len(out.messages) == 1
    too_big = {"to": "bob", "message": "x" * (MAX_BODY_BYTES - envelope + 1)}
    out = Out()
    status, body, _ = await http("send", http_request("POST", "send", body=too_big), signalr=out)
    assert (status, out.value) == (413, None)
    assert "error" in body
    payload = invocation("send", user_id="eve", connection_id="eve-1", arguments=["bob", "y" * (MAX_BODY_BYTES + 1)])
    messages = (await signalr_event("send_message", payload)).messages
    assert [(m["target"], m["connectionId"]) for m in messages] == [("error", "eve-1")]
    huge_agent = invocation("connected", user_id="carl", connection_id="carl-1", headers={"User-Agent": "u" * 100_000})
    await signalr_event("connected", huge_agent)
    status, body, _ = await http("user_presence", http_request("GET", "users/carl", route_params={"user": "carl"}))
    assert len(body["connections"][0]["userAgent"]) == 512
    figures.add("security", "size_limit_checks", 4)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-ms-client-principal-name": ""},
        {"x-ms-client-principal-name": " \t "},
        {"x-ms-client-principal-id": "00000000-0000-0000-0000-000000000001"},
        {"authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."},
        {"x-ms-client-principal": base64.b64encode(b'{"userId":"alice"}').decode()},
        {"cookie": "AppServiceAuthSession=forged"},
    ],
)
async def test_negotiate_never_hands_out_a_token_without_a_principal(headers: dict[str, str], figures: Figures) -> None:
    """Without the platform's principal-name header, negotiate answers 401 and the token never leaves."""
    figures.add("security", "negotiate_checks")
    info = json.dumps({"url": "https://x.service.signalr.net/client/?hub=chat", "accessToken": "secret-token"})
    status, body, response = await http(
        "negotiate",
        http_request("POST", "negotiate", headers=headers, params={"userId": "alice"}),
        connection_info=info,
    )
    assert status == 401
    assert "secret-token" not in response.get_body().decode()
    assert "error" in body


def test_negotiate_takes_the_user_id_from_the_platform_header_only() -> None:
    """The binding's userId comes from the principal-name header that App Service Authentication sets, not the query."""
    assert binding("negotiate", "signalRConnectionInfo")["userId"] == "{headers.x-ms-client-principal-name}"
    assert binding("negotiate", "httpTrigger")["authLevel"].lower() == "anonymous"


async def test_secrets_never_reach_the_logs(
    app_env: dict[str, str], azurite: Azurite, caplog: pytest.LogCaptureFixture, figures: Figures
) -> None:
    """Every path at DEBUG (azure SDK loggers included), failures too: no key, connection string, signature or token."""
    caplog.set_level(logging.DEBUG)
    for name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "mapping", "function_app"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    token = "eyJhbGciOiJIUzI1NiJ9.eyJuYW1laWQiOiJhbGljZSJ9.c2lnbmF0dXJlLW5vdC10by1sb2c"
    info = json.dumps({"url": "https://x.service.signalr.net/client/?hub=chat", "accessToken": token})
    headers = {"x-ms-client-principal-name": "alice"}
    await http("negotiate", http_request("POST", "negotiate", headers=headers), connection_info=info)
    await signalr_event("connected", invocation("connected", user_id="alice", connection_id="a1"))
    await signalr_event("send_message", invocation("send", user_id="alice", connection_id="a1", arguments=["alice", 1]))
    await http("send", http_request("POST", "send", body={"to": "alice", "message": 2}), signalr=Out())
    await http("online_users", http_request("GET", "users"))
    await call("sweep", timer=TimerRequest(past_due=True), signalr=Out())
    await signalr_event("disconnected", invocation("disconnected", user_id="alice", connection_id="a1"))
    wrong = ConnectionStore(make_settings(azurite.connection_string.replace(DEV_KEY, "d3Jvbmc=" * 11), "Wrongkey"))
    with pytest.raises(StorageError):
        await wrong.connect("alice", "a1")
    await wrong.close()
    text = caplog.text
    assert "http_logging_policy" in text or "Request URL" in text, "the SDK's HTTP logs were captured"
    for secret in (
        DEV_KEY,
        DEV_KEY[:20],
        "AccountKey",
        app_env["MAPPING_STORAGE"],
        token,
        "SharedKey devstoreaccount1:",
    ):
        assert secret not in text
    figures.add("security", "log_lines_checked", len(caplog.records))


def test_ruff_security_rules_are_clean() -> None:
    """Ruff runs bandit's rules (S) as configured, and reports no S finding anywhere in the project."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "S" in config["tool"]["ruff"]["lint"]["select"]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "json", "--exit-zero", str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    findings = [f"{f['filename']}:{f['code']}" for f in json.loads(result.stdout) if str(f["code"]).startswith("S")]
    assert findings == []


def test_local_settings_is_ignored_by_git_and_funcignore() -> None:
    """local.settings.json (local secrets) is in .gitignore and .funcignore: neither committed nor deployed."""
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "local.settings.json"],  # noqa: S607
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0
    patterns = [
        line.strip().rstrip("/")
        for line in (ROOT / ".funcignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert any(fnmatch.fnmatch("local.settings.json", pattern.lstrip("/")) for pattern in patterns)
