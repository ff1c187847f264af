"""What guards each path of the deployed app, read from the template, and the local host modelling it.

- App Service Authentication (`authsettingsV2`) requires a signed-in caller and answers 401 itself (`Return401`) on
  every path but its `excludedPaths`: negotiate is not excluded (it trusts `x-ms-client-principal-name`, which only
  the platform may set); the SignalR webhook and the function-key routes are (their callers, Azure SignalR Service
  and servers, carry no Entra token; the Functions host checks their keys).
- The SignalR upstream URL the postdeploy hook sets carries `code=<signalr_extension system key>`: with the
  template's identity-based SignalR connection the extension checks no signature, so that key is the webhook's only
  guard. The local host, given the template's connection settings, requires it the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from local.host.functions import SIGNALR_TRIGGER, load_functions
from local.host.server import SIGNALR_WEBHOOK, create_app
from testkit.azurite import ROOT
from tests.infra.test_infra import (
    FUNCTION_APP_BICEP,
    INFRA,
    SIGNALR_BICEP,
    _app_settings,
    _bicep,
    _property_block,
    _resource_block,
)

POSTDEPLOY_SH = INFRA / "hooks" / "postdeploy.sh"
POSTDEPLOY_PS1 = INFRA / "hooks" / "postdeploy.ps1"
PRINCIPAL_HEADER = "x-ms-client-principal-name"
SYSTEM_KEY = "deployed-auth-test-signalr-extension-key-0123"


def _global_validation() -> str:
    auth = _property_block(_resource_block(_bicep(FUNCTION_APP_BICEP), "authsettingsV2"), "properties")
    return _property_block(auth, "globalValidation")


def excluded_paths() -> list[str]:
    """Return authsettingsV2's excludedPaths: a variable of string literals in function-app.bicep."""
    validation = _global_validation()
    match = re.search(r"^\s*excludedPaths:\s*(\w+)\s*$", validation, re.MULTILINE)
    assert match, "excludedPaths must name a variable (the list, with its reasons, above the resource)"
    text = _bicep(FUNCTION_APP_BICEP)
    listing = re.search(rf"^var {match.group(1)} = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert listing, f"no var {match.group(1)} = [...]"
    items = [line.strip() for line in listing.group(1).splitlines() if line.strip()]
    assert all(re.fullmatch(r"'[^']+'", item) for item in items), items
    return [item.strip("'") for item in items]


def is_excluded(path: str, patterns: list[str]) -> bool:
    """Whether App Service Authentication lets `path` through unauthenticated: an exact path, or one under a
    `<prefix>/*` pattern (the form the configuration file reference shows, `/path3/subpath/*`)."""
    for pattern in patterns:
        if pattern.endswith("/*"):
            if path.startswith(pattern[:-1]):
                return True
        elif path == pattern:
            return True
    return False


def _route_prefix() -> str:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    return str(host.get("extensions", {}).get("http", {}).get("routePrefix", "api")).strip("/")


def http_paths() -> dict[str, tuple[str, bool]]:
    """Every HTTP function of the app: name to (a concrete path, whether it trusts the principal header)."""
    import function_app

    paths: dict[str, tuple[str, bool]] = {}
    for spec in load_functions(function_app.app):
        if spec.trigger["type"] != "httpTrigger":
            continue
        route = re.sub(r"\{[^}]+\}", "x", str(spec.trigger.get("route") or spec.name))
        trusts = any(PRINCIPAL_HEADER in json.dumps(binding) for binding in spec.bindings)
        paths[spec.name] = (f"/{_route_prefix()}/{route}", trusts)
    return paths


def test_easy_auth_answers_401_before_the_app() -> None:
    """Unauthenticated calls are refused by the platform with 401 (not redirected, not let through)."""
    validation = _global_validation()
    assert re.search(r"^\s*requireAuthentication:\s*true\s*$", validation, re.MULTILINE)
    assert re.search(r"^\s*unauthenticatedClientAction:\s*'Return401'\s*$", validation, re.MULTILINE)


def test_excluded_paths_are_exact_or_a_trailing_wildcard() -> None:
    """Each excluded path is absolute and either exact or `<prefix>/*`, the only wildcard form documented."""
    for pattern in excluded_paths():
        assert pattern.startswith("/"), pattern
        assert "*" not in pattern or (pattern.endswith("/*") and pattern.count("*") == 1), pattern


def test_negotiate_is_not_excluded_and_every_other_route_is() -> None:
    """A route that trusts the principal header (negotiate) must be behind App Service Authentication; every other
    route (function keys, or anonymous like the OpenAPI document) is excluded, so servers reach it without a token."""
    patterns = excluded_paths()
    paths = http_paths()
    assert paths["negotiate"][1], "negotiate binds the principal header"
    for name, (path, trusts_principal) in paths.items():
        assert is_excluded(path, patterns) is not trusts_principal, f"{name} ({path})"
    for parameter_value in ("alice@contoso.com", "a/b"):  # a user id may hold anything, even a slash
        assert is_excluded(f"/{_route_prefix()}/users/{parameter_value}/block", patterns)


def test_the_signalr_webhook_is_excluded() -> None:
    """Azure SignalR Service carries no Entra token: its upstream path is let through, to the host's key check."""
    assert is_excluded(SIGNALR_WEBHOOK, excluded_paths())


def test_the_postdeploy_hook_wakes_the_host_on_an_excluded_path() -> None:
    """The hook's wake-up request must reach the Functions host, not stop at App Service Authentication's 401."""
    sh = re.search(r'curl [^\n]*"https://\$host(/[^"]*)"', POSTDEPLOY_SH.read_text(encoding="utf-8"))
    ps1 = re.search(r'Invoke-WebRequest -Uri "https://\$appHost(/[^"]*)"', POSTDEPLOY_PS1.read_text(encoding="utf-8"))
    assert sh
    assert ps1
    for path in (sh.group(1), ps1.group(1)):
        assert is_excluded(path, excluded_paths()), path


def upstream_url_templates() -> dict[str, str]:
    """The upstream URL template each postdeploy hook gives `az signalr upstream update`, variables expanded."""
    sh = POSTDEPLOY_SH.read_text(encoding="utf-8")
    base = re.search(r'^url_base="([^"]+)"$', sh, re.MULTILINE)
    template = re.search(r'--template url-template="([^"]+)"', sh)
    assert base
    assert template
    found = {"postdeploy.sh": template.group(1).replace("$url_base", base.group(1))}
    ps1 = POSTDEPLOY_PS1.read_text(encoding="utf-8")
    base = re.search(r'^\$urlBase = "([^"]+)"$', ps1, re.MULTILINE)
    template = re.search(r'"url-template=([^"]+)"', ps1)
    assert base
    assert template
    found["postdeploy.ps1"] = template.group(1).replace("$urlBase`", base.group(1)).replace("$urlBase", base.group(1))
    return found


def test_the_upstream_url_carries_the_signalr_extension_key() -> None:
    """Both hooks point the upstream at `/runtime/webhooks/signalr?code=<key>`, the key read from
    `systemKeys.signalr_extension`: with no access key, that `code` is all that keeps strangers off the webhook."""
    templates = upstream_url_templates()
    assert set(templates) == {"postdeploy.sh", "postdeploy.ps1"}
    for hook, template in templates.items():
        url = urlsplit(template)
        assert url.scheme == "https", hook
        assert url.path == SIGNALR_WEBHOOK, hook
        assert parse_qs(url.query) == {"code": ["$code"]}, hook
        text = (INFRA / "hooks" / hook).read_text(encoding="utf-8")
        assert "systemKeys.signalr_extension" in text, hook


def test_the_signalr_connection_has_no_access_key() -> None:
    """The service's keys are off and the app's connection is an identity section: the extension will check no
    X-ASRS-Signature, so the upstream URL's code is needed."""
    assert re.search(r"^\s*disableLocalAuth:\s*true\s*$", _bicep(SIGNALR_BICEP), re.MULTILINE)
    settings = _app_settings()
    assert "AzureSignalRConnectionString" not in settings
    assert "AzureSignalRConnectionString__serviceUri" in settings


@pytest.fixture
async def deployed_like_host(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The local host serving the app's SignalR triggers with the template's SignalR settings (identity-based) and
    a signalr_extension system key."""
    import function_app

    for name in list(_app_settings()):
        if name.startswith("AzureSignalRConnectionString"):
            monkeypatch.setenv(name, "managedidentity" if name.endswith("__credential") else "https://x.example")
    monkeypatch.delenv("AzureSignalRConnectionString", raising=False)
    monkeypatch.setenv("SIGNALR_HUB", "chat")
    specs = [spec for spec in load_functions(function_app.app) if spec.trigger["type"] == SIGNALR_TRIGGER]
    client = TestClient(TestServer(create_app(specs, system_keys={"signalr_extension": SYSTEM_KEY})))
    await client.start_server()
    yield client
    await client.close()


async def test_the_local_host_requires_the_code_the_hook_puts_on_the_url(
    deployed_like_host: TestClient[web.Request, web.Application],
) -> None:
    """An unsigned upstream call to the hook's URL gets past the host with the key (the extension then answers 404:
    no function for the event) and is refused without it (401): the code, not a signature, decides."""
    for hook, template in upstream_url_templates().items():
        url = urlsplit(template.replace("$code", SYSTEM_KEY))
        headers = {
            "Content-Type": "application/json",
            "X-ASRS-Hub": "chat",
            "X-ASRS-Category": "messages",
            "X-ASRS-Event": "no-such-event",
            "X-ASRS-Connection-Id": "c1",
        }
        body = json.dumps({"type": 1, "target": "no-such-event", "arguments": []})
        keyed = await deployed_like_host.post(f"{url.path}?{url.query}", data=body, headers=headers)
        assert keyed.status == 404, hook
        bare = await deployed_like_host.post(url.path, data=body, headers=headers)
        assert bare.status == 401, hook
