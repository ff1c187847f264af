"""Smoke-test a running connection mapper, deployed (`azure`) or local (`local`), and print a pass/fail table.

    python local/scripts/smoke.py azure --env-file <(azd env get-values)   # what `make smoke-azure` runs
    python local/scripts/smoke.py local --url http://localhost:7071          # against `make run`

Checks: negotiate without a token is refused (Azure: App Service Authentication's 401, before the app; locally,
where nothing stands in for it, the Functions host's 500 with no body: negotiate's binding has no principal header to
read); with only a forged principal header it is 401 (Azure); `GET /api/users` is 401 without the function key
(Azure) and 200 with it; `PUT /api/rooms/{room}/members/{user}` with the function key gets past App Service
Authentication (an excluded path: any answer of the app but 401; the grant, to a made-up user, is deleted at once);
the SignalR webhook is 401 without its key (Azure); the SignalR upstream is set for the hub (Azure); and, given a
token (Azure: SMOKE_ACCESS_TOKEN) or locally with the principal header the local stack trusts, a real
`@microsoft/signalr` client (tests/e2e/signalr_driver.mjs) negotiates, connects, sees itself online, sends itself a
message and receives it, disconnects and is reported offline. Azure-only checks are SKIP locally, with the reason.
Exit status: 0 when nothing failed, 1 otherwise, 2 for a usage error. Keys and tokens are never printed: every
message goes through a redactor first.

Environment: SMOKE_ACCESS_TOKEN (a Microsoft Entra access token for the app registration; Azure only),
SMOKE_FUNCTION_KEY (a function key; by default read with `az functionapp keys list`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script (`python local/scripts/smoke.py`): the repository's packages
    sys.path.insert(0, str(ROOT))

from local.node_driver import NodeDriver  # noqa: E402

PRINCIPAL_HEADER = "x-ms-client-principal-name"
FUNCTION_KEY_HEADER = "x-functions-key"
WEBHOOK = "/runtime/webhooks/signalr"
LOCAL_KEYS = "the local host does not check function or system keys (as Core Tools); Azure does"
NEGOTIATE_WITHOUT_TOKEN = "negotiate without a token -> refused (Azure: 401, local: 500)"  # noqa: S105 - a check
EXCLUDED_ROUTE = "PUT /api/rooms/{room}/members/{user} with the function key -> not 401"
REDACTED = "<redacted>"
# Secrets that can show up inside error text: query-string keys and tokens, bearer tokens, JWTs.
_SECRET_PARAMETER = re.compile(r"(?i)\b(code|access_token|sig|key)=[^&\s\"']+")
_SECRET_PATTERNS = (
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
)

Status = Literal["PASS", "FAIL", "SKIP"]


class Redactor:
    """Removes known secret values and secret-looking text from anything about to be printed."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Remember a secret value (and its URL-encoded form) to blank out."""
        if secret and len(secret) >= 4:
            self._secrets.update({secret, quote(secret, safe="")})

    def __call__(self, text: str) -> str:
        """Return `text` with every known secret and every secret-looking fragment replaced."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        text = _SECRET_PARAMETER.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(REDACTED, text)
        return text


@dataclass(frozen=True)
class Target:
    """What to check and how to reach it."""

    mode: Literal["azure", "local"]
    base_url: str
    hub: str
    function_key: str | None = None
    function_key_error: str = ""
    access_token: str | None = None
    resource_group: str | None = None
    app_name: str | None = None
    signalr_name: str | None = None
    subscription: str | None = None

    @property
    def api(self) -> str:
        """Return the HTTP API base (`<app>/api`)."""
        return f"{self.base_url}/api"


@dataclass(frozen=True)
class Result:
    """One row of the table."""

    name: str
    status: Status
    detail: str = ""


@dataclass
class Smoke:
    """Runs the checks in order and collects their results."""

    target: Target
    redact: Redactor
    wait_seconds: float = 30.0
    results: list[Result] = field(default_factory=list)

    def record(self, name: str, status: Status, detail: str = "") -> bool:
        """Add a row (its detail redacted); return whether it passed."""
        self.results.append(Result(name, status, self.redact(detail)))
        return status == "PASS"

    @property
    def failed(self) -> bool:
        """Tell whether any check failed."""
        return any(result.status == "FAIL" for result in self.results)

    async def run(self) -> None:
        """Run every check against the target."""
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await self._negotiate_without_token(session)
            if self.target.mode == "azure":
                await self._expect(
                    session,
                    "negotiate with a forged principal header -> 401",
                    "POST",
                    "negotiate",
                    401,
                    headers={PRINCIPAL_HEADER: f"smoke-forged-{uuid.uuid4().hex[:8]}@example.invalid"},
                )
                await self._expect(session, "GET /api/users without the function key -> 401", "GET", "users", 401)
                if self.target.function_key:
                    await self._expect(
                        session, "GET /api/users with the function key -> 200", "GET", "users", 200, keyed=True
                    )
                else:
                    self.record("GET /api/users with the function key -> 200", "FAIL", self.target.function_key_error)
                await self._excluded_route(session)
                await self._webhook_without_key(session)
                await self._upstream_configured()
            else:
                self.record(
                    "negotiate with a forged principal header -> 401", "SKIP", "the local stack trusts the header"
                )
                self.record("GET /api/users without the function key -> 401", "SKIP", LOCAL_KEYS)
                await self._expect(
                    session, "GET /api/users with the function key -> 200", "GET", "users", 200, keyed=True
                )
                await self._excluded_route(session)
                self.record("SignalR webhook without its key -> 401", "SKIP", LOCAL_KEYS)
                self.record(
                    "SignalR upstream configured for the hub",
                    "SKIP",
                    "the emulator takes its upstream from its command line; the client steps exercise it",
                )
            await self._client_flow(session)

    async def _request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        keyed: bool = False,
        body: bytes | None = None,
    ) -> tuple[int, str]:
        all_headers = dict(headers or {})
        if keyed and self.target.function_key:
            all_headers[FUNCTION_KEY_HEADER] = self.target.function_key
        async with session.request(method, url, headers=all_headers, data=body) as response:
            return response.status, await response.text()

    async def _expect(
        self,
        session: aiohttp.ClientSession,
        name: str,
        method: str,
        path: str,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        keyed: bool = False,
    ) -> bool:
        try:
            got, _ = await self._request(session, method, f"{self.target.api}/{path}", headers=headers, keyed=keyed)
        except (aiohttp.ClientError, TimeoutError) as error:
            return self.record(name, "FAIL", f"request failed: {_describe(error)}")
        return self.record(name, "PASS" if got == status else "FAIL", f"got {got}")

    async def _negotiate_without_token(self, session: aiohttp.ClientSession) -> None:
        """Deployed, App Service Authentication answers 401 (none of the app's JSON) before negotiate runs; locally
        nothing stands in for it, and the binding (`{headers.x-ms-client-principal-name}`) fails: 500, no body."""
        name = NEGOTIATE_WITHOUT_TOKEN
        try:
            got, text = await self._request(session, "POST", f"{self.target.api}/negotiate")
        except (aiohttp.ClientError, TimeoutError) as error:
            self.record(name, "FAIL", f"request failed: {_describe(error)}")
            return
        if self.target.mode == "azure":
            if got == 401 and not _app_error(text):
                self.record(name, "PASS", "got 401 from App Service Authentication")
            elif got == 401:
                self.record(name, "FAIL", "got the app's own 401: App Service Authentication let the call through")
            else:
                why = " (the binding: no principal)" if got == 500 else ""
                hint = "is App Service Authentication on, with Return401, and negotiate not excluded?"
                self.record(name, "FAIL", f"got {got}{why}, not App Service Authentication's 401: {hint}")
        elif got == 500 and not text.strip():
            self.record(name, "PASS", "got 500 with no body: the binding found no principal header (as in Azure)")
        else:
            self.record(name, "FAIL", f"got {got}, not the binding's 500 with no body")

    async def _excluded_route(self, session: aiohttp.ClientSession) -> None:
        """A function-key route is an excluded path: App Service Authentication lets it through without a token and
        the app answers. Grant a made-up room to a made-up user, and take it back at once."""
        name = EXCLUDED_ROUTE
        if self.target.mode == "azure" and not self.target.function_key:
            self.record(name, "FAIL", self.target.function_key_error)
            return
        suffix = uuid.uuid4().hex[:10]
        url = f"{self.target.api}/rooms/smoke-{suffix}/members/smoke-{suffix}"
        answers: list[str] = []
        for method in ("PUT", "DELETE"):
            try:
                got, _ = await self._request(session, method, url, keyed=True)
            except (aiohttp.ClientError, TimeoutError) as error:
                self.record(name, "FAIL", f"{method}: request failed: {_describe(error)}")
                return
            if got == 401:
                self.record(name, "FAIL", f"{method} got 401 with the key: is /api/rooms/* an excluded path?")
                return
            answers.append(f"{method} {got}")
        self.record(name, "PASS", f"the app answered ({', '.join(answers)})")

    async def _webhook_without_key(self, session: aiohttp.ClientSession) -> None:
        name = "SignalR webhook without its key -> 401"
        headers = {
            "Content-Type": "application/json",
            "X-ASRS-Hub": self.target.hub,
            "X-ASRS-Category": "connections",
            "X-ASRS-Event": "connected",
            "X-ASRS-Connection-Id": f"smoke-{uuid.uuid4().hex}",
        }
        try:
            got, _ = await self._request(
                session, "POST", f"{self.target.base_url}{WEBHOOK}", headers=headers, body=b'{"type":10}'
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            self.record(name, "FAIL", f"request failed: {_describe(error)}")
            return
        self.record(name, "PASS" if got == 401 else "FAIL", f"got {got}")

    async def _upstream_configured(self) -> None:
        name = "SignalR upstream configured for the hub"
        target = self.target
        if not (target.resource_group and target.signalr_name):
            self.record(name, "FAIL", "AZURE_RESOURCE_GROUP or AZURE_SIGNALR_NAME missing from the azd environment")
            return
        command = ["az", "signalr", "upstream", "list", "--resource-group", target.resource_group]
        command += ["--name", target.signalr_name, "--output", "json"]
        if target.subscription:
            command += ["--subscription", target.subscription]
        ok, output = await _run_az(command)
        if not ok:
            self.record(name, "FAIL", output)
            return
        try:
            document: Any = json.loads(output or "null")
        except ValueError:
            self.record(name, "FAIL", "az signalr upstream list did not answer JSON")
            return
        self.record(name, *upstream_verdict(document, target.base_url, target.hub))

    async def _client_flow(self, session: aiohttp.ClientSession) -> None:
        steps = (
            "client negotiates signed in -> 200",
            "client connects (@microsoft/signalr)",
            "client sees itself online",
            "client sends itself a message and receives it",
            "client disconnects and is reported offline",
        )
        if self.target.mode == "azure" and not self.target.access_token:
            for step in steps:
                self.record(step, "SKIP", "no SMOKE_ACCESS_TOKEN (a token for the app registration) given")
            return
        if self.target.mode == "azure" and not self.target.function_key:
            for step in steps:
                self.record(step, "SKIP", "no function key to read GET /api/users/{user} with")
            return
        if shutil.which("node") is None:
            for step in steps:
                self.record(step, "FAIL", "node is not installed (the client is @microsoft/signalr on Node)")
            return
        local_user = f"smoke-{uuid.uuid4().hex[:10]}" if self.target.mode == "local" else None
        remaining = list(steps)

        def done(passed: bool) -> bool:
            remaining.pop(0)
            if not passed:
                for step in remaining:
                    self.record(step, "SKIP", "not run: an earlier client step failed")
                remaining.clear()
            return passed

        user = await self._negotiate_as_client(session, remaining[0], local_user)
        if not done(user is not None) or user is None:
            return
        async with DriverProcess(self.redact) as driver:
            connect: dict[str, Any] = {"url": self.target.api, "targets": ["newMessage", "error"]}
            if local_user:
                connect["user"] = local_user
            else:
                connect["accessToken"] = self.target.access_token or ""
            answer = await driver.command("connect", id="smoke", within=self.wait_seconds * 2, **connect)
            connection_id = str(answer.get("connectionId") or "")
            if not done(self.record(remaining[0], *_answer_verdict(answer, f"connected as user {user}"))):
                return
            online = await self._poll_presence(session, user, connection_id, want_online=True)
            if not done(self.record(remaining[0], *online)):
                await driver.command("stop", id="smoke")
                return
            nonce = uuid.uuid4().hex
            sent = await driver.command("send", id="smoke", method="send", args=[user, {"smoke": nonce}])
            received = None
            if sent.get("event") == "ok":
                received = await driver.first(
                    lambda e: e.get("target") == "newMessage" and _carries(e, nonce), within=self.wait_seconds
                )
            verdict: tuple[Status, str] = (
                ("PASS", "newMessage came back")
                if received is not None
                else ("FAIL", _failure(sent, f"no newMessage within {self.wait_seconds:g}s"))
            )
            if not done(self.record(remaining[0], *verdict)):
                await driver.command("stop", id="smoke")
                return
            stopped = await driver.command("stop", id="smoke")
            if stopped.get("event") != "ok":
                done(self.record(remaining[0], "FAIL", _failure(stopped, "stop failed")))
                return
            offline = await self._poll_presence(session, user, connection_id, want_online=False)
            done(self.record(remaining[0], *offline))

    async def _negotiate_as_client(
        self, session: aiohttp.ClientSession, name: str, local_user: str | None
    ) -> str | None:
        headers = {PRINCIPAL_HEADER: local_user} if local_user else {}
        if not local_user:
            headers["Authorization"] = f"Bearer {self.target.access_token}"
        try:
            got, text = await self._request(session, "POST", f"{self.target.api}/negotiate", headers=headers)
        except (aiohttp.ClientError, TimeoutError) as error:
            self.record(name, "FAIL", f"request failed: {_describe(error)}")
            return None
        if got != 200:
            self.record(name, "FAIL", f"got {got}")
            return None
        try:
            info = json.loads(text)
            self.redact.add(str(info.get("accessToken") or ""))
            user = token_user(str(info["accessToken"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            self.record(name, "FAIL", "got 200 without a url and a SignalR access token naming the user")
            return None
        if not user or not str(info.get("url") or "").startswith(("http://", "https://")):
            self.record(name, "FAIL", "got 200 without a url and a SignalR access token naming the user")
            return None
        if local_user and user != local_user:
            self.record(name, "FAIL", f"the token names {user!r}, not {local_user!r}")
            return None
        how = "the local principal header" if local_user else "SMOKE_ACCESS_TOKEN"
        self.record(name, "PASS", f"got 200 with {how}, user {user}")
        return user

    async def _poll_presence(
        self, session: aiohttp.ClientSession, user: str, connection_id: str, *, want_online: bool
    ) -> tuple[Status, str]:
        url = f"{self.target.api}/users/{quote(user, safe='')}"
        started = asyncio.get_running_loop().time()
        deadline = started + self.wait_seconds
        last = "no answer"
        while True:
            try:
                got, text = await self._request(session, "GET", url, keyed=True)
                body: Any = json.loads(text) if got == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                got, body, last = 0, None, f"request failed: {_describe(error)}"
            if got == 200 and isinstance(body, dict):
                connections = [c for c in body.get("connections") or [] if isinstance(c, dict)]
                ids = {c.get("connectionId") for c in connections}
                online = body.get("online") is True
                if want_online and online and connection_id in ids:
                    # Only a deployment shows how long after the client's start the service ran connected, and
                    # which User-Agent its upstream carries (docs/deploy.md): reported, not judged.
                    agent = next(
                        (c.get("userAgent") for c in connections if c.get("connectionId") == connection_id), ""
                    )
                    waited = asyncio.get_running_loop().time() - started
                    return (
                        "PASS",
                        f"online with connection {connection_id} {waited:.1f}s after start, "
                        f"upstream User-Agent {agent!r}",
                    )
                if not want_online and not online and connection_id not in ids:
                    return "PASS", "offline"
                last = f"online={online}, {len(ids)} connection(s)"
            elif got:
                last = f"got {got}"
            if asyncio.get_running_loop().time() > deadline:
                return "FAIL", f"after {self.wait_seconds:g}s: {last}"
            await asyncio.sleep(0.5)


class DriverProcess(NodeDriver):
    """The Node driver of the end-to-end tests (one `@microsoft/signalr` client per id), its errors redacted."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    async def command(self, op: str, *, within: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send one command; return its answer (`event` ok or failed), or a failed answer when none comes."""
        try:
            answer = await self.request(op, within=within, **fields)
        except ConnectionError as error:
            return {"event": "failed", "error": f"the driver is gone: {error}; {self.stderr_tail()}"}
        if answer is None:
            return {"event": "failed", "error": f"no answer to {op} within {within:g}s; {self.stderr_tail()}"}
        return answer

    def stderr_tail(self, lines: int = 3) -> str:
        """Return the driver's last stderr lines, redacted."""
        return self._redact(super().stderr_tail(lines))


def _answer_verdict(answer: dict[str, Any], success: str) -> tuple[Status, str]:
    if answer.get("event") == "ok" and answer.get("connectionId"):
        return "PASS", f"{success}, connection {answer['connectionId']}"
    return "FAIL", _failure(answer, "no connection id")


def _failure(answer: dict[str, Any], fallback: str) -> str:
    return str(answer.get("error") or fallback)


def _carries(event: dict[str, Any], nonce: str) -> bool:
    args = event.get("args") or []
    first = args[0] if args and isinstance(args[0], dict) else {}
    message = first.get("message")
    return isinstance(message, dict) and message.get("smoke") == nonce


def _app_error(text: str) -> bool:
    """Tell whether a body is the app's JSON error (`{"error": ...}`), which App Service Authentication never sends."""
    try:
        body = json.loads(text)
    except ValueError:
        return False
    return isinstance(body, dict) and "error" in body


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def token_user(token: str) -> str | None:
    """Return the `nameid` claim of a JWT (not verified: it only names the user the app mapped)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    user = claims.get("nameid") if isinstance(claims, dict) else None
    return str(user) if user else None


def _pattern_matches(pattern: object, value: str) -> bool:
    """Tell whether an upstream hub/category/event pattern (unset, `*`, `a,b` or `a`) matches `value`."""
    if pattern is None or str(pattern).strip() in ("", "*"):
        return True
    return value.casefold() in {part.strip().casefold() for part in str(pattern).split(",")}


def upstream_verdict(document: Any, app_url: str, hub: str) -> tuple[Status, str]:
    """Judge `az signalr upstream list` output: a template for the hub, every category, the app's webhook with a key."""
    templates = document.get("templates") if isinstance(document, dict) else document
    if not isinstance(templates, list) or not templates:
        return "FAIL", "no upstream template is set (run `azd hooks run postdeploy`)"
    host = (urlsplit(app_url).hostname or "").casefold()
    for template in templates:
        if not isinstance(template, dict) or not _pattern_matches(template.get("hubPattern"), hub):
            continue
        # The first template matching the hub gets its events: it must be the app's webhook, for every event.
        url = urlsplit(str(template.get("urlTemplate") or ""))
        checks = {
            "an https URL": url.scheme == "https",
            "the app's host": (url.hostname or "").casefold() == host,
            f"the path {WEBHOOK}": url.path.rstrip("/") == WEBHOOK,
            "a code= key": re.search(r"(^|&)code=[^&]+", url.query) is not None,
            "both categories": all(
                _pattern_matches(template.get("categoryPattern"), c) for c in ("connections", "messages")
            ),
            "every event": str(template.get("eventPattern") or "*").strip() == "*",
        }
        missing = [what for what, ok in checks.items() if not ok]
        if missing:
            return "FAIL", f"the template for hub {hub!r} lacks: {', '.join(missing)}"
        return "PASS", f"hub {hub!r} -> https://{host}{WEBHOOK} with a key (not shown), all events"
    return "FAIL", f"no upstream template matches hub {hub!r}"


async def _run_az(command: list[str]) -> tuple[bool, str]:
    """Run an `az` command; return (ok, stdout) or (False, a short redacted reason)."""
    if shutil.which("az") is None:
        return False, "the Azure CLI (az) is not installed"
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        first = (err.decode(errors="replace").strip().splitlines() or ["no message"])[0]
        return False, f"`{' '.join(command[:3])}` failed: {first}"
    return True, out.decode().strip()


def read_env_file(path: Path) -> dict[str, str]:
    """Read `azd env get-values` output (KEY="value" lines, double quotes and backslash escapes)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if not match:
            continue
        raw = match.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif len(raw) >= 2 and raw[0] == raw[-1] == "'":
            raw = raw[1:-1]
        values[match.group(1)] = raw
    return values


async def azure_target(env: dict[str, str], redact: Redactor) -> Target:
    """Build the Azure target from the azd environment's values; read the function key with `az` unless given."""
    base_url = env.get("SERVICE_API_URI", "").rstrip("/")
    if not base_url.startswith(("https://", "http://")):
        raise SystemExit("smoke: SERVICE_API_URI is missing from the azd environment (run `azd up` first)")
    key = os.environ.get("SMOKE_FUNCTION_KEY") or None
    key_error = ""
    resource_group, app = env.get("AZURE_RESOURCE_GROUP"), env.get("AZURE_FUNCTION_APP_NAME")
    subscription = env.get("AZURE_SUBSCRIPTION_ID") or None
    if key is None:
        if resource_group and app:
            command = ["az", "functionapp", "keys", "list", "--resource-group", resource_group, "--name", app]
            command += ["--query", "functionKeys.default", "--output", "tsv"]
            if subscription:
                command += ["--subscription", subscription]
            ok, output = await _run_az(command)
            key, key_error = (output or None, "") if ok else (None, output)
            if ok and not output:
                key_error = "the app has no default function key yet"
        else:
            key_error = "AZURE_RESOURCE_GROUP or AZURE_FUNCTION_APP_NAME missing from the azd environment"
        key_error = key_error or "no function key"
        key_error += "; set SMOKE_FUNCTION_KEY or sign in with `az login`" if key is None else ""
    token = os.environ.get("SMOKE_ACCESS_TOKEN") or None
    redact.add(key)
    redact.add(token)
    return Target(
        mode="azure",
        base_url=base_url,
        hub=env.get("SIGNALR_HUB") or "chat",
        function_key=key,
        function_key_error=key_error,
        access_token=token,
        resource_group=resource_group,
        app_name=app,
        signalr_name=env.get("AZURE_SIGNALR_NAME"),
        subscription=subscription,
    )


def local_target(url: str, hub: str, redact: Redactor) -> Target:
    """Build the local target; a SMOKE_FUNCTION_KEY, if set, is sent (and ignored by the local host)."""
    key = os.environ.get("SMOKE_FUNCTION_KEY") or None
    redact.add(key)
    return Target(mode="local", base_url=url.rstrip("/"), hub=hub, function_key=key)


def render(results: list[Result]) -> str:
    """Return the results as an aligned text table with a summary line."""
    width = max([len("check"), *(len(r.name) for r in results)])
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{r.name:<{width}}  {r.status:<6}  {r.detail}".rstrip() for r in results]
    counts = {status: sum(r.status == status for r in results) for status in ("PASS", "FAIL", "SKIP")}
    lines.append(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python local/scripts/smoke.py", description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    azure = modes.add_parser("azure", help="check the deployed app of an azd environment")
    azure.add_argument("--env-file", type=Path, required=True, help="output of `azd env get-values`")
    local = modes.add_parser("local", help="check a local stack (`make run`)")
    local.add_argument("--url", default="http://localhost:7071", help="the local host's base URL")
    local.add_argument("--hub", default="chat")
    for sub in (azure, local):
        sub.add_argument("--wait", type=float, default=30.0, help="seconds to wait for presence and messages")
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    """Run the checks, print the table, return the exit status."""
    redact = Redactor()
    if args.mode == "azure":
        target = await azure_target(read_env_file(args.env_file), redact)
    else:
        target = local_target(args.url, args.hub, redact)
    print(f"smoke: {target.mode} app at {target.base_url} (hub {target.hub})", flush=True)
    smoke = Smoke(target, redact, wait_seconds=args.wait)
    await smoke.run()
    print(render(smoke.results), flush=True)
    return 1 if smoke.failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
