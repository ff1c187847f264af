"""Offline checks of the deployment template (infra/, azure.yaml) against the settings the app reads.

The Bicep compiler is not available here, so these tests read the Bicep text directly: a small scanner that
skips strings and comments finds the `{...}` block of a resource and the `key: value` lines in it.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mapping.settings import (
    APP_SETTING_NAMES,
    AUDIENCES,
    CONNECTION_SETTINGS,
    DEFAULT_CALL_BURST,
    DEFAULT_CALL_RATE,
    DEFAULT_CLIENT_MESSAGE_BYTES,
    DEFAULT_GRACE_SECONDS,
    DM_POLICIES,
    MAX_CALL_BUDGET,
    MAX_CLIENT_MESSAGE_BYTES,
    MAX_GRACE_SECONDS,
    VALUE_SETTINGS,
    WATCH_POLICIES,
    Settings,
)
from testkit.azurite import ROOT

INFRA = ROOT / "infra"
FUNCTION_APP_BICEP = INFRA / "app" / "function-app.bicep"
RBAC_BICEP = INFRA / "app" / "rbac.bicep"
MAIN_BICEP = INFRA / "main.bicep"
MONITORING_BICEP = INFRA / "core" / "monitor" / "monitoring.bicep"
STORAGE_BICEP = INFRA / "core" / "storage" / "storage-account.bicep"
SIGNALR_BICEP = INFRA / "core" / "signalr" / "signalr.bicep"
DEPLOYER_ACCESS_BICEP = INFRA / "app" / "deployer-access.bicep"
MAIN_PARAMETERS = INFRA / "main.parameters.json"
README = ROOT / "README.md"
LOCAL_SETTINGS_SAMPLE = ROOT / "local.settings.sample.json"

# Built-in role ids (Azure built-in roles; PLATFORM.md and the deployment issue), by variable name in rbac.bicep.
ROLE_IDS: dict[str, str] = {
    "storageBlobDataOwnerRoleId": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageQueueDataContributorRoleId": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "storageTableDataContributorRoleId": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "signalRServiceOwnerRoleId": "7e4f1700-ea5a-4f59-8f37-079cfe29dce3",
    "monitoringMetricsPublisherRoleId": "3913510d-42f4-4e42-8a64-420c390055eb",
}

# Text that marks a key, a SAS or a connection string in an app-setting value.
_SECRET_MARKERS = re.compile(
    r"accountkey\s*=|accesskey\s*=|sharedaccesskey|sharedaccesssignature|[?&;]sig=|defaultendpointsprotocol"
    r"|endpoint\s*=|listkeys\s*\(|listconnectionstrings|primarykey|secondarykey|primaryconnectionstring"
    r"|secondaryconnectionstring|connectionstring|masterkey|password|secret",
    re.IGNORECASE,
)
# The one "connection string" a Functions app needs: Application Insights'. It holds the component's
# instrumentation key, an identifier that grants nothing once the component has DisableLocalAuth: true.
_APPINSIGHTS_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
_APPINSIGHTS_VALUE = re.compile(r"^\w+\.properties\.ConnectionString$")


def _strip_comments(text: str) -> str:
    """Return Bicep text with // and /* */ comments blanked out (strings are kept, offsets preserved)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        elif text[i] == "'":
            end = i + 1
            while end < n and text[end] != "'":
                end += 2 if text[end] == "\\" else 1
            out.append(text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _block_at(text: str, start: int) -> str:
    """Return the `{...}` block that opens at or after `start`, braces inside strings ignored."""
    opening = text.index("{", start)
    depth, i, n = 0, opening, len(text)
    while i < n:
        char = text[i]
        if char == "'":
            i += 1
            while i < n and text[i] != "'":
                i += 2 if text[i] == "\\" else 1
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[opening : i + 1]
        i += 1
    raise AssertionError(f"unbalanced braces after offset {start}")


def _bicep(path: Path) -> str:
    """Read a Bicep file with its comments blanked out."""
    return _strip_comments(path.read_text(encoding="utf-8"))


def _resource_block(text: str, config_name: str) -> str:
    """Return the body of the resource whose `name:` is the literal `config_name`."""
    for match in re.finditer(r"^resource\s+\w+\s+'[^']+'\s*=\s*\{", text, re.MULTILINE):
        block = _block_at(text, match.start())
        if re.search(rf"^\s*name:\s*'{re.escape(config_name)}'\s*$", block, re.MULTILINE):
            return block
    raise AssertionError(f"no resource named {config_name!r}")


def _resource_of_type(text: str, resource_type: str) -> str:
    """Return the body of the only resource of `resource_type` (for example Microsoft.Insights/components)."""
    pattern = rf"^resource\s+\w+\s+'{re.escape(resource_type)}@[^']+'\s*=\s*\{{"
    blocks = [_block_at(text, match.start()) for match in re.finditer(pattern, text, re.MULTILINE)]
    assert len(blocks) == 1, f"expected one {resource_type}, found {len(blocks)}"
    return blocks[0]


def _property_block(block: str, key: str) -> str:
    """Return the `{...}` value of the first `key: {` inside `block`."""
    match = re.search(rf"^\s*{re.escape(key)}:\s*\{{", block, re.MULTILINE)
    assert match, f"no {key}: {{ ... }} in block"
    return _block_at(block, match.start())


def _flat_entries(block: str) -> dict[str, str]:
    """Return the `key: value` lines directly inside a flat object block, keys unquoted."""
    inner = block.strip()[1:-1]
    entries: dict[str, str] = {}
    for line in inner.splitlines():
        line = line.strip()
        if not line:
            continue
        match = re.fullmatch(r"('[^']+'|[A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+)", line)
        assert match, f"not a flat key: value line: {line!r}"
        key, value = match.group(1).strip("'"), match.group(2).strip()
        assert not value.startswith(("{", "[")), f"{key} is not a flat value: {value!r}"
        assert key not in entries, f"{key} is set twice"
        entries[key] = value
    return entries


def _param_decorators(path: Path, name: str) -> str:
    """Return the decorator lines (comments blanked) directly above `param <name>` in a Bicep file."""
    lines = _bicep(path).splitlines()
    for index, line in enumerate(lines):
        if re.match(rf"^param {re.escape(name)}\b", line):
            back = index
            while back > 0 and (lines[back - 1].startswith("@") or lines[back - 1].startswith((" ", "}", "]", ")"))):
                back -= 1
            return "\n".join(lines[back:index])
    raise AssertionError(f"no param {name} in {path}")


def _param_line(path: Path, name: str) -> str:
    """Return the `param <name> ...` line of a Bicep file."""
    match = re.search(rf"^param {re.escape(name)}\b.*$", _bicep(path), re.MULTILINE)
    assert match, f"no param {name} in {path}"
    return match.group(0).strip()


def _allowed(path: Path, name: str) -> list[str | int]:
    """Return the values of a parameter's `@allowed([...])` decorator (strings unquoted, numbers as int)."""
    match = re.search(r"@allowed\(\[(.*?)\]\)", _param_decorators(path, name), re.DOTALL)
    assert match, f"param {name} in {path} has no @allowed list"
    values: list[str | int] = []
    for item in match.group(1).split():
        values.append(item.strip("'") if item.startswith("'") else int(item))
    return values


def _symbolic_resources(text: str) -> dict[str, str]:
    """Return every resource's body by its symbolic name."""
    return {
        match.group(1): _block_at(text, match.start())
        for match in re.finditer(r"^resource\s+(\w+)\s+'[^']+'\s*=", text, re.MULTILINE)
    }


def _depends_on(block: str) -> list[str]:
    """Return the symbolic names in a resource's top-level `dependsOn: [...]` list (empty when it has none)."""
    match = re.search(r"^  dependsOn:\s*\[(.*?)\]", block, re.MULTILINE | re.DOTALL)
    return match.group(1).split() if match else []


def _app_settings() -> dict[str, str]:
    """Return the function app's app settings (name to Bicep expression) from function-app.bicep."""
    resource = _resource_block(_bicep(FUNCTION_APP_BICEP), "appsettings")
    return _flat_entries(_property_block(resource, "properties"))


def _is_set(name: str, settings: Mapping[str, object], *, connection: bool) -> bool:
    """Tell whether `name` is set: as itself, or for a connection also as an identity-based `name__...` section."""
    if name in settings:
        return True
    return connection and any(key.startswith(f"{name}__") and len(key) > len(name) + 2 for key in settings)


def _holds_secret(value: str) -> bool:
    """Tell whether a setting value looks like a key, a SAS or a connection string."""
    return bool(_SECRET_MARKERS.search(value))


def _local_values() -> dict[str, str]:
    """Return the Values section of local.settings.sample.json."""
    data = json.loads(LOCAL_SETTINGS_SAMPLE.read_text(encoding="utf-8"))
    values = data["Values"]
    assert isinstance(values, dict)
    return {str(key): str(value) for key, value in values.items()}


def _readme_deploy_section() -> str:
    """Return README's "Deploy to Azure" section."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Deploy to Azure")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _is_local_development_value(value: str) -> bool:
    """Tell whether a connection-ish value is a well-known local one: Azurite, or a SignalR emulator on localhost."""
    if value.strip() == "UseDevelopmentStorage=true":
        return True
    parts = {
        key.strip().lower(): val.strip() for key, _, val in (item.partition("=") for item in value.split(";") if item)
    }
    endpoint = urlsplit(parts.get("endpoint", ""))
    return endpoint.scheme == "http" and endpoint.hostname in {"localhost", "127.0.0.1"}


def test_setting_names_come_from_the_settings_module() -> None:
    """The one list of settings is non-empty and split into connections and plain values without overlap."""
    assert APP_SETTING_NAMES
    assert set(APP_SETTING_NAMES) == set(CONNECTION_SETTINGS) | set(VALUE_SETTINGS)
    assert not set(CONNECTION_SETTINGS) & set(VALUE_SETTINGS)


@pytest.mark.parametrize("name", APP_SETTING_NAMES)
def test_every_setting_is_in_the_bicep_app_settings(name: str) -> None:
    """Each setting the app reads is set by the function app's appsettings (connections as NAME or NAME__...)."""
    assert _is_set(name, _app_settings(), connection=name in CONNECTION_SETTINGS), (
        f"{name} missing in {FUNCTION_APP_BICEP}"
    )


@pytest.mark.parametrize("name", CONNECTION_SETTINGS)
def test_connections_are_identity_based_in_bicep(name: str) -> None:
    """Each connection is an identity section naming the managed identity, never a plain connection string."""
    settings = _app_settings()
    assert name not in settings, f"{name} is set as a plain value (a connection string); use {name}__... instead"
    assert settings.get(f"{name}__credential") == "'managedidentity'", f"{name}__credential is not managedidentity"
    assert settings.get(f"{name}__clientId") == "identityClientId", f"{name}__clientId is not the identity's client id"
    endpoints = [key for key in settings if re.fullmatch(rf"{name}__(\w+ServiceUri|serviceUri)", key)]
    assert endpoints, f"{name} has no __...ServiceUri endpoint"


def test_host_storage_reaches_the_queue_endpoint_with_the_identity() -> None:
    """AzureWebJobsStorage has the account's queue endpoint (delayed actions, queue triggers), identity-based."""
    settings = _app_settings()
    assert settings["AzureWebJobsStorage__queueServiceUri"] == "storage.properties.primaryEndpoints.queue"
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert "AzureWebJobsStorage" not in settings


def test_the_identity_may_send_and_delete_queue_messages() -> None:
    """The app's identity holds Storage Queue Data Contributor on the storage account, before the app starts."""
    text = _bicep(RBAC_BICEP)
    block = _symbolic_resources(text)["storageQueueDataContributor"]
    assert re.search(r"roleDefinitions', storageQueueDataContributorRoleId\)", block)
    assert re.search(r"^\s*name:\s*guid\(storage\.id, principalId, storageQueueDataContributorRoleId\)", block, re.M)
    assert re.search(r"^\s*scope:\s*storage\s*$", block, re.MULTILINE)
    assert re.search(r"^\s*principalId:\s*principalId\s*$", block, re.MULTILINE)
    assert re.search(r"^var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'", text, re.M)
    main = _bicep(MAIN_BICEP)
    function_app = _block_at(main, main.index("module functionApp "))
    assert re.search(r"dependsOn:\s*\[\s*rbac\s*\]", function_app)


@pytest.mark.parametrize(
    ("parameter", "setting", "allowed", "default"),
    [
        ("presenceAudience", "PRESENCE_AUDIENCE", list(AUDIENCES), AUDIENCES[0]),
        ("presenceWatch", "PRESENCE_WATCH", list(WATCH_POLICIES), WATCH_POLICIES[0]),
        ("directMessages", "DIRECT_MESSAGES", list(DM_POLICIES), DM_POLICIES[0]),
    ],
)
def test_presence_choices_are_parameters_allowing_what_the_app_accepts(
    parameter: str, setting: str, allowed: list[str], default: str
) -> None:
    """PRESENCE_AUDIENCE, PRESENCE_WATCH and DIRECT_MESSAGES are main.bicep parameters with the app's choices and
    default, passed on."""
    for path in (MAIN_BICEP, FUNCTION_APP_BICEP):
        assert _allowed(path, parameter) == allowed, path
        assert "@description(" in _param_decorators(path, parameter), path
    assert _param_line(MAIN_BICEP, parameter) == f"param {parameter} string = '{default}'"
    assert _param_line(FUNCTION_APP_BICEP, parameter) == f"param {parameter} string"
    assert re.search(rf"^\s*{parameter}:\s*{parameter}\s*$", _bicep(MAIN_BICEP), re.MULTILINE)
    assert _app_settings()[setting] == parameter


def test_rooms_open_is_a_parameter_closed_by_default() -> None:
    """ROOMS_OPEN is a main.bicep string parameter defaulting to the app's default (empty: every room closed), passed
    on to the app setting and filled from the azd environment's ROOMS_OPEN."""
    assert Settings.from_environment({"MAPPING_STORAGE": "UseDevelopmentStorage=true"}).rooms_open == ()
    for path in (MAIN_BICEP, FUNCTION_APP_BICEP):
        assert "@description(" in _param_decorators(path, "roomsOpen"), path
        assert "@allowed(" not in _param_decorators(path, "roomsOpen"), path
    assert _param_line(MAIN_BICEP, "roomsOpen") == "param roomsOpen string = ''"
    assert _param_line(FUNCTION_APP_BICEP, "roomsOpen") == "param roomsOpen string"
    assert re.search(r"^\s*roomsOpen:\s*roomsOpen\s*$", _bicep(MAIN_BICEP), re.MULTILINE)
    assert _app_settings()["ROOMS_OPEN"] == "roomsOpen"
    parameters = json.loads(MAIN_PARAMETERS.read_text(encoding="utf-8"))["parameters"]
    assert parameters["roomsOpen"]["value"] == "${ROOMS_OPEN}"


def test_presence_grace_is_a_bounded_parameter_set_as_a_string() -> None:
    """PRESENCE_GRACE_SECONDS is an int parameter (0 to the app's maximum, the app's default) set as its string."""
    for path in (MAIN_BICEP, FUNCTION_APP_BICEP):
        decorators = _param_decorators(path, "presenceGraceSeconds")
        assert "@description(" in decorators, path
        assert "@minValue(0)" in decorators, path
        assert f"@maxValue({MAX_GRACE_SECONDS})" in decorators, path
    assert (
        _param_line(MAIN_BICEP, "presenceGraceSeconds") == f"param presenceGraceSeconds int = {DEFAULT_GRACE_SECONDS}"
    )
    assert re.search(r"^\s*presenceGraceSeconds:\s*presenceGraceSeconds\s*$", _bicep(MAIN_BICEP), re.MULTILINE)
    assert _app_settings()["PRESENCE_GRACE_SECONDS"] == "string(presenceGraceSeconds)"


@pytest.mark.parametrize(
    ("parameter", "setting", "minimum", "maximum", "default"),
    [
        ("clientCallBurst", "CLIENT_CALL_BURST", 1, MAX_CALL_BUDGET, DEFAULT_CALL_BURST),
        ("clientCallRate", "CLIENT_CALL_RATE", 0, MAX_CALL_BUDGET, DEFAULT_CALL_RATE),
        (
            "clientMessageMaxBytes",
            "CLIENT_MESSAGE_MAX_BYTES",
            1,
            MAX_CLIENT_MESSAGE_BYTES,
            DEFAULT_CLIENT_MESSAGE_BYTES,
        ),
    ],
)
def test_a_clients_budget_is_bounded_parameters_set_as_strings(
    parameter: str, setting: str, minimum: int, maximum: int, default: int
) -> None:
    """The call budget and the client message size are int parameters bounded as the app bounds them, defaulting to
    the app's defaults, passed on and set as strings."""
    for path in (MAIN_BICEP, FUNCTION_APP_BICEP):
        decorators = _param_decorators(path, parameter)
        assert "@description(" in decorators, path
        assert f"@minValue({minimum})" in decorators, path
        assert f"@maxValue({maximum})" in decorators, path
    assert _param_line(MAIN_BICEP, parameter) == f"param {parameter} int = {default}"
    assert re.search(rf"^\s*{parameter}:\s*{parameter}\s*$", _bicep(MAIN_BICEP), re.MULTILINE)
    assert _app_settings()[setting] == f"string({parameter})"


def test_mapping_storage_points_at_the_table_endpoint() -> None:
    """The app's table connection uses the storage account's table endpoint and the identity's client id."""
    settings = _app_settings()
    assert settings["MAPPING_STORAGE__tableServiceUri"] == "storage.properties.primaryEndpoints.table"
    assert settings["MAPPING_STORAGE__clientId"] == "identityClientId"


def test_signalr_connection_points_at_the_service() -> None:
    """The SignalR bindings reach the service by its https endpoint with the managed identity."""
    settings = _app_settings()
    assert settings["AzureSignalRConnectionString__serviceUri"] == "'https://${signalRHostName}'"
    assert settings["AzureSignalRConnectionString__credential"] == "'managedidentity'"


def test_no_bicep_app_setting_holds_a_key_or_connection_string() -> None:
    """No app setting value in the Bicep carries a key, a SAS or a connection string."""
    offenders = {
        name: value for name, value in _app_settings().items() if name != _APPINSIGHTS_SETTING and _holds_secret(value)
    }
    assert not offenders, f"settings that hold a key or connection string: {offenders}"


def test_application_insights_uses_entra_authentication() -> None:
    """App Insights' connection string comes from the component, which refuses key-only telemetry."""
    settings = _app_settings()
    assert _APPINSIGHTS_VALUE.match(settings[_APPINSIGHTS_SETTING]), settings[_APPINSIGHTS_SETTING]
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'ClientId=${identityClientId};Authorization=AAD'"
    component = _resource_of_type(_bicep(MONITORING_BICEP), "Microsoft.Insights/components")
    assert re.search(r"^\s*DisableLocalAuth:\s*true\s*$", component, re.MULTILINE)


def test_no_template_file_reads_keys() -> None:
    """No Bicep file lists keys or connection strings, and no output or parameter is marked secure."""
    for path in sorted(INFRA.rglob("*.bicep")):
        text = _bicep(path)
        assert not re.search(r"list(keys|connectionstrings|secrets)\s*\(", text, re.IGNORECASE), path
        assert not re.search(r"\.list\w*\(", text), path
        assert "@secure" not in text, path


def test_flex_consumption_python_runtime() -> None:
    """The app runs on a Flex Consumption (FC1) plan, Python from a parameter, identity-based deployment storage."""
    text = _bicep(FUNCTION_APP_BICEP)
    assert re.search(r"tier:\s*'FlexConsumption'", text)
    assert re.search(r"name:\s*'FC1'", text)
    runtime = _property_block(text, "runtime")
    assert re.search(r"name:\s*'python'", runtime)
    assert re.search(r"version:\s*pythonVersion\s*$", runtime, re.MULTILINE)
    authentication = _property_block(_property_block(text, "deployment"), "authentication")
    assert re.search(r"type:\s*'UserAssignedIdentity'", authentication)
    assert "FUNCTIONS_WORKER_RUNTIME" not in _app_settings()


def test_python_version_is_a_parameter_defaulting_to_the_tested_version() -> None:
    """pythonVersion allows what Flex runs (3.10-3.12) and defaults to the Python the tests and mypy use."""
    tested = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]["python_version"]
    assert tested == "3.11"
    for path in (MAIN_BICEP, FUNCTION_APP_BICEP):
        assert _allowed(path, "pythonVersion") == ["3.10", "3.11", "3.12"], path
        assert _param_line(path, "pythonVersion") == f"param pythonVersion string = '{tested}'", path
    assert re.search(r"^\s*pythonVersion:\s*pythonVersion\s*$", _bicep(MAIN_BICEP), re.MULTILINE)
    parameters = json.loads(MAIN_PARAMETERS.read_text(encoding="utf-8"))["parameters"]
    assert parameters["pythonVersion"]["value"] == f"${{PYTHON_VERSION={tested}}}"


def test_function_app_hardening() -> None:
    """The function app answers only over HTTPS with TLS 1.2 or later and has FTP and basic publishing off."""
    site = _bicep(FUNCTION_APP_BICEP)
    assert re.search(r"^\s*httpsOnly:\s*true\s*$", site, re.MULTILINE)
    assert re.search(r"^\s*minTlsVersion:\s*'1\.2'\s*$", site, re.MULTILINE)
    for policy in ("ftp", "scm"):
        assert re.search(r"allow:\s*false", _resource_block(site, policy)), policy


def test_no_ftps_state_anywhere() -> None:
    """No Bicep file sets siteConfig.ftpsState, which Flex Consumption rejects (ARM error 51021)."""
    for path in sorted(INFRA.rglob("*.bicep")):
        assert "ftpsState" not in _bicep(path), path


def test_site_config_holds_only_properties_flex_documents() -> None:
    """siteConfig keeps only minTlsVersion and cors; http20Enabled and scmMinTlsVersion are not confirmed for Flex."""
    site = _symbolic_resources(_bicep(FUNCTION_APP_BICEP))["functionApp"]
    site_config = _property_block(site, "siteConfig")
    keys = re.findall(r"^      (\w+):", site_config, re.MULTILINE)
    assert keys == ["minTlsVersion", "cors"], keys


def test_site_config_writes_are_chained_with_depends_on() -> None:
    """appsettings, authsettingsV2 and the two publishing policies are written one at a time, never in parallel."""
    resources = _symbolic_resources(_bicep(FUNCTION_APP_BICEP))
    parent = re.compile(r"^  parent:\s*functionApp\s*$", re.MULTILINE)
    children = {name: block for name, block in resources.items() if parent.search(block)}
    config_names = {name: re.search(r"^  name:\s*'([^']+)'", block, re.M) for name, block in children.items()}
    assert {name: match.group(1) for name, match in config_names.items() if match} == {
        "appSettings": "appsettings",
        "authSettings": "authsettingsV2",
        "ftpPublishing": "ftp",
        "scmPublishing": "scm",
    }
    assert _depends_on(children["appSettings"]) == []
    assert _depends_on(children["authSettings"]) == ["appSettings"]
    assert _depends_on(children["ftpPublishing"]) == ["authSettings"]
    assert _depends_on(children["scmPublishing"]) == ["ftpPublishing"]


def test_location_is_limited_to_flex_consumption_regions() -> None:
    """location allows only Flex Consumption regions, and the README says how to check the current list."""
    regions = _allowed(MAIN_BICEP, "location")
    assert all(isinstance(region, str) and re.fullmatch(r"[a-z0-9]+", region) for region in regions), regions
    assert len(regions) == len(set(regions)) >= 20
    assert {"eastus", "westeurope", "australiaeast", "swedencentral"} <= set(regions)
    assert "eastus2euap" not in regions  # an early-access region, not for general use
    raw = MAIN_BICEP.read_text(encoding="utf-8")
    assert "az functionapp list-flexconsumption-locations" in raw
    assert "az functionapp list-flexconsumption-locations" in _readme_deploy_section()


def test_signalr_capacity_allows_only_valid_unit_counts() -> None:
    """SignalR units are 1-10 or a multiple of 10 up to 100, in main.bicep and in the SignalR module."""
    valid = [*range(1, 11), *range(20, 101, 10)]
    assert _allowed(MAIN_BICEP, "signalRCapacity") == valid
    assert _allowed(SIGNALR_BICEP, "capacity") == valid
    for path in (MAIN_BICEP, SIGNALR_BICEP):
        decorators = _param_decorators(path, "signalRCapacity" if path == MAIN_BICEP else "capacity")
        assert "@minValue" not in decorators, path
        assert "@maxValue" not in decorators, path


def test_free_tier_limit_is_five_units_per_subscription_and_region() -> None:
    """The Free_F1 text states the real limit (five Free units per subscription and region), nowhere 'one'."""
    for path in (MAIN_BICEP, SIGNALR_BICEP):
        text = path.read_text(encoding="utf-8")
        assert "five Free units per subscription and region" in text, path
        assert "one per subscription" not in text, path
    assert "one per subscription" not in README.read_text(encoding="utf-8")


def test_deployer_gets_table_and_signalr_roles_when_principal_id_is_set() -> None:
    """An optional principalId (AZURE_PRINCIPAL_ID) gets Storage Table Data Contributor and SignalR Service Owner."""
    main = _bicep(MAIN_BICEP)
    assert _param_line(MAIN_BICEP, "principalId") == "param principalId string = ''"
    assert _allowed(MAIN_BICEP, "principalType") == ["User", "ServicePrincipal", "Group"]
    assert re.search(r"module deployerAccess 'app/deployer-access\.bicep' = if \(!empty\(principalId\)\)", main)
    parameters = json.loads(MAIN_PARAMETERS.read_text(encoding="utf-8"))["parameters"]
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    assert parameters["principalType"]["value"] == "${AZURE_PRINCIPAL_TYPE=User}"
    text = _bicep(DEPLOYER_ACCESS_BICEP)
    assignments = [
        block
        for name, block in _symbolic_resources(text).items()
        if re.search(rf"^resource {name} 'Microsoft\.Authorization/roleAssignments@", text, re.MULTILINE)
    ]
    expected = {
        "storageTableDataContributorRoleId": (ROLE_IDS["storageTableDataContributorRoleId"], "storage"),
        "signalRServiceOwnerRoleId": (ROLE_IDS["signalRServiceOwnerRoleId"], "signalR"),
    }
    assert len(assignments) == len(expected)
    for variable, (role_id, scope) in expected.items():
        assert re.search(rf"^var {variable} = '{role_id}'\s*$", text, re.MULTILINE), variable
        block = next(b for b in assignments if f"roleDefinitions', {variable})" in b)
        assert re.search(rf"^\s*name:\s*guid\({scope}\.id, principalId, {variable}\)", block, re.MULTILINE)
        assert re.search(rf"^\s*scope:\s*{scope}\s*$", block, re.MULTILINE)
        assert re.search(r"^\s*principalType:\s*principalType\s*$", block, re.MULTILINE)


def test_easy_auth_limits_client_applications_and_audiences() -> None:
    """authsettingsV2 takes allowed client applications and audiences from parameters, filled from the azd env."""
    text = _bicep(FUNCTION_APP_BICEP)
    auth = _property_block(_resource_block(text, "authsettingsV2"), "properties")
    entra = _property_block(_property_block(auth, "identityProviders"), "azureActiveDirectory")
    validation = _property_block(entra, "validation")
    assert re.search(r"^\s*allowedAudiences:\s*allowedAudiences\s*$", validation, re.MULTILINE)
    assert re.search(r"^\s*defaultAuthorizationPolicy:\s*defaultAuthorizationPolicy\s*$", validation, re.MULTILINE)
    policy = re.search(r"^var defaultAuthorizationPolicy = (.*?)\n}", text, re.MULTILINE | re.DOTALL)
    assert policy, "no var defaultAuthorizationPolicy"
    assert re.search(r"empty\(authAllowedApplications\) \? \{\} : \{", policy.group(1))
    assert re.search(r"allowedApplications:\s*authAllowedApplications", policy.group(1))
    audiences = re.search(r"^var allowedAudiences = (.*?)\] : authAllowedAudiences$", text, re.MULTILINE | re.DOTALL)
    assert audiences, "allowedAudiences must fall back to the client id only when authAllowedAudiences is empty"
    assert "authClientId" in audiences.group(1)
    assert "'api://${authClientId}'" in audiences.group(1)
    for name in ("authAllowedApplications", "authAllowedAudiences"):
        assert _param_line(FUNCTION_APP_BICEP, name) == f"param {name} array = []"
        assert _param_line(MAIN_BICEP, name) == f"param {name} string = ''"
    main = _bicep(MAIN_BICEP)
    assert re.search(r"^\s*authAllowedApplications:\s*allowedApplications\s*$", main, re.MULTILINE)
    assert re.search(r"^\s*authAllowedAudiences:\s*allowedAudiences\s*$", main, re.MULTILINE)
    parameters = json.loads(MAIN_PARAMETERS.read_text(encoding="utf-8"))["parameters"]
    assert parameters["authAllowedApplications"]["value"] == "${AUTH_ALLOWED_APPLICATIONS}"
    assert parameters["authAllowedAudiences"]["value"] == "${AUTH_ALLOWED_AUDIENCES}"
    section = _readme_deploy_section()
    for setting in ("AUTH_ALLOWED_APPLICATIONS", "AUTH_ALLOWED_AUDIENCES", "AZURE_PRINCIPAL_ID", "PYTHON_VERSION"):
        assert setting in section, f"README's deploy section does not document {setting}"


def test_readme_says_what_was_verified_offline_and_what_needs_a_deployment() -> None:
    """README's deploy section documents make smoke-azure and splits offline checks from deployment-only ones."""
    section = _readme_deploy_section()
    assert "make smoke-azure" in section
    assert re.search(r"verified offline", section, re.IGNORECASE)
    assert re.search(r"only a real deployment", section, re.IGNORECASE)


def test_storage_has_shared_key_access_off() -> None:
    """The storage account refuses shared keys and old TLS and serves HTTPS only."""
    text = _bicep(STORAGE_BICEP)
    assert re.search(r"^\s*allowSharedKeyAccess:\s*false\s*$", text, re.MULTILINE)
    assert re.search(r"^\s*minimumTlsVersion:\s*'TLS1_2'\s*$", text, re.MULTILINE)
    assert re.search(r"^\s*supportsHttpsTrafficOnly:\s*true\s*$", text, re.MULTILINE)
    assert re.search(r"^\s*allowBlobPublicAccess:\s*false\s*$", text, re.MULTILINE)


def test_signalr_is_serverless_with_local_auth_off() -> None:
    """Azure SignalR Service runs in Serverless mode with access keys disabled and no upstream key in Bicep."""
    text = _bicep(SIGNALR_BICEP)
    assert re.search(r"flag:\s*'ServiceMode'\s*\n\s*value:\s*'Serverless'", text)
    assert re.search(r"^\s*disableLocalAuth:\s*true\s*$", text, re.MULTILINE)
    assert "upstream" not in text
    assert "runtime/webhooks" not in text


@pytest.mark.parametrize(("variable", "role_id"), sorted(ROLE_IDS.items()))
def test_role_id_variables(variable: str, role_id: str) -> None:
    """Each role id sits in a named, commented variable and is assigned with a guid(...) name."""
    raw = RBAC_BICEP.read_text(encoding="utf-8")
    match = re.search(rf"^((?://[^\n]*\n)+)var {variable} = '([0-9a-f-]+)'\s*$", raw, re.MULTILINE)
    assert match, f"no commented `var {variable} = '<guid>'` in {RBAC_BICEP}"
    assert match.group(2) == role_id, f"{variable} is {match.group(2)}, expected {role_id}"
    text = _bicep(RBAC_BICEP)
    assert re.search(rf"name:\s*guid\([^)]*\b{variable}\)", text), f"no assignment named guid(..., {variable})"
    assert re.search(rf"roleDefinitions',\s*{variable}\)", text), f"{variable} is not used as a roleDefinitionId"


def test_role_assignments_are_all_named_with_guid() -> None:
    """Every role assignment in the template is named with guid(...), so redeploying finds the same one."""
    text = _bicep(RBAC_BICEP)
    blocks = [
        _block_at(text, match.start())
        for match in re.finditer(r"^resource\s+\w+\s+'Microsoft\.Authorization/roleAssignments@", text, re.MULTILINE)
    ]
    assert len(blocks) == len(ROLE_IDS)
    for block in blocks:
        assert re.search(r"^\s*name:\s*guid\(", block, re.MULTILINE), block


def test_authentication_is_on_and_refuses_unauthenticated_requests() -> None:
    """authsettingsV2 turns on Microsoft Entra ID with the client id parameter and answers 401 to unauthenticated
    calls (but on its excluded paths: tests/infra/test_deployed_auth.py)."""
    auth = _property_block(_resource_block(_bicep(FUNCTION_APP_BICEP), "authsettingsV2"), "properties")
    assert re.search(r"enabled:\s*true", _property_block(auth, "platform"))
    validation = _property_block(auth, "globalValidation")
    assert re.search(r"unauthenticatedClientAction:\s*'Return401'", validation)
    assert re.search(r"requireAuthentication:\s*true", validation)
    entra = _property_block(_property_block(auth, "identityProviders"), "azureActiveDirectory")
    assert re.search(r"^\s*enabled:\s*true\s*$", entra, re.MULTILINE)
    registration = _property_block(entra, "registration")
    assert re.search(r"clientId:\s*authClientId\s*$", registration, re.MULTILINE)
    assert re.search(r"openIdIssuer:\s*'.+/v2\.0'", registration)
    assert "clientSecret" not in auth


def test_auth_client_id_is_a_required_parameter() -> None:
    """main.bicep requires the app registration's client id and main.parameters.json fills it from azd env."""
    main = _bicep(MAIN_BICEP)
    assert re.search(r"^param authClientId string\s*$", main, re.MULTILINE), "authClientId must have no default"
    assert re.search(r"authClientId:\s*authClientId", main)
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["authClientId"]["value"] == "${AUTH_CLIENT_ID}"


def test_every_parameter_has_a_description() -> None:
    """Every `param` in every Bicep file is preceded by a @description decorator."""
    missing: list[str] = []
    for path in sorted(INFRA.rglob("*.bicep")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            if not line.startswith("param "):
                continue
            decorators: list[str] = []
            back = index - 1
            while back >= 0 and (lines[back].startswith("@") or lines[back].startswith((" ", "}", "]", ")"))):
                decorators.append(lines[back])
                back -= 1
            if not any(d.startswith("@description(") for d in decorators):
                missing.append(f"{path.relative_to(ROOT)}:{index + 1}: {line}")
    assert not missing, "parameters without @description:\n" + "\n".join(missing)


def test_azure_yaml_deploys_a_function_and_runs_the_postdeploy_hook() -> None:
    """azure.yaml deploys one Python function service and runs the postdeploy hook on POSIX and Windows."""
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(r"^\s+host:\s*function\s*$", text, re.MULTILINE)
    assert re.search(r"^\s+language:\s*python\s*$", text, re.MULTILINE)
    assert re.search(r"run:\s*\./infra/hooks/postdeploy\.sh", text)
    assert re.search(r"run:\s*\./infra/hooks/postdeploy\.ps1", text)
    for hook in ("postdeploy.sh", "postdeploy.ps1"):
        assert (INFRA / "hooks" / hook).is_file()
    main = _bicep(MAIN_BICEP)
    for output in ("AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME", "AZURE_SIGNALR_NAME", "SIGNALR_HUB"):
        assert re.search(rf"^output {output} string", main, re.MULTILINE), f"the hook needs output {output}"


@pytest.mark.parametrize("name", APP_SETTING_NAMES)
def test_every_setting_is_in_the_local_settings_sample(name: str) -> None:
    """Each setting the app reads appears in local.settings.sample.json (connections as NAME or NAME__...)."""
    assert _is_set(name, _local_values(), connection=name in CONNECTION_SETTINGS), f"{name} missing in the sample"


def test_local_settings_sample_holds_only_local_development_secrets() -> None:
    """Connection-ish values in the sample are only Azurite's or a SignalR emulator's on localhost."""
    connection_like = {
        name: value
        for name, value in _local_values().items()
        if _holds_secret(value) or "usedevelopmentstorage" in value.lower()
    }
    assert connection_like, "expected the sample's Azurite and SignalR emulator values"
    offenders = {name: value for name, value in connection_like.items() if not _is_local_development_value(value)}
    assert not offenders, f"non-local connection values in {LOCAL_SETTINGS_SAMPLE.name}: {offenders}"


@pytest.mark.parametrize(
    ("detector", "value", "flagged"),
    [
        (_holds_secret, "'DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abc=='", True),
        (_holds_secret, "storage.listKeys().keys[0].value", True),
        (_holds_secret, "'Endpoint=https://x.service.signalr.net;AccessKey=abc;Version=1.0;'", True),
        (_holds_secret, "'https://x.blob.core.windows.net/c?sv=2022&sig=abc'", True),
        (_holds_secret, "signalR.listKeys().primaryConnectionString", True),
        (_holds_secret, "storage.properties.primaryEndpoints.table", False),
        (_holds_secret, "'managedidentity'", False),
        (_holds_secret, "string(mappingTtlSeconds)", False),
        (_is_local_development_value, "UseDevelopmentStorage=true", True),
        (_is_local_development_value, "Endpoint=http://localhost;Port=8888;AccessKey=ABC;Version=1.0;", True),
        (_is_local_development_value, "Endpoint=https://x.service.signalr.net;AccessKey=ABC;Version=1.0;", False),
        (_is_local_development_value, "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abc==", False),
    ],
)
def test_the_value_detectors(detector: Callable[[str], bool], value: str, flagged: bool) -> None:
    """The detectors used above flag only what they name: keys, SAS tokens and connection strings; local values."""
    assert detector(value) is flagged
