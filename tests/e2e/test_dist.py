"""The wheel: built from pyproject.toml, installed in a fresh virtual environment beside an existing app, run there."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from packaging.requirements import Requirement

from testkit.azurite import ROOT, Azurite
from testkit.hub_client import HubClient
from testkit.local_stack import ACCESS_KEY, HostOptions, LocalStack, running_local_stack
from testkit.tables import unique_table_name

pytestmark = pytest.mark.slow

HUB = "chat"
EXISTING_APP = """
import json
import os
from pathlib import Path

import azure.functions as func
import mapping
from mapping.functions.registration import register

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
register(app)


@app.function_name("{hello_name}")
@app.route(route="{hello_route}", methods=["GET"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    body = {{"hello": req.params.get("name", "world"), "mapping": mapping.__file__}}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.timer_trigger(arg_name="timer", schedule="* * * * * *")
def tick(timer: func.TimerRequest) -> None:
    with Path(os.environ["TICKS_FILE"]).open("a") as ticks:
        ticks.write("tick\\n")
"""


def _requirement_lines(text: str) -> set[str]:
    return {line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()}


def _requirements(lines: set[str]) -> set[tuple[str, frozenset[str]]]:
    """Each requirement as its name and its set of version clauses (order and spacing do not matter)."""
    return {(r.name, frozenset(str(s) for s in r.specifier)) for r in map(Requirement, lines)}


def test_the_declared_dependencies_are_requirements_txt() -> None:
    """pyproject.toml declares exactly the runtime requirements that requirements.txt gives the Functions build."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["dependencies"]) == _requirement_lines((ROOT / "requirements.txt").read_text())
    assert len(project["dependencies"]) == len(set(project["dependencies"]))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `make dist` builds (the same command), in a directory of its own."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [built] = out.glob("*.whl")
    return built


def test_the_wheel_holds_the_library_its_blueprint_and_nothing_of_the_repository(wheel: Path) -> None:
    """The wheel has every module of mapping/ and its sub-packages (blueprint and OpenAPI document included), typed,
    and no app or tests."""
    names = zipfile.ZipFile(wheel).namelist()
    modules = {name for name in names if name.startswith("mapping/")}
    library = ROOT / "mapping"
    assert modules == {f"mapping/{path.relative_to(library).as_posix()}" for path in library.rglob("*.py")} | {
        "mapping/py.typed"
    }
    assert {
        "mapping/functions/blueprint.py",
        "mapping/functions/registration.py",
        "mapping/functions/openapi.py",
    } <= modules
    assert not [name for name in names if re.match(r"(tests|local|bench|testkit|client|infra)/|function_app", name)]
    [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
    required = {
        line.removeprefix("Requires-Dist: ")
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist: ")
    }
    assert _requirements(required) == _requirements(_requirement_lines((ROOT / "requirements.txt").read_text()))


def _declared() -> set[str]:
    return {Requirement(line).name for line in _requirement_lines((ROOT / "requirements.txt").read_text())}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_the_library_imports_is_declared() -> None:
    """Each third-party package that mapping/ imports comes from a distribution requirements.txt names itself."""
    providers = importlib.metadata.packages_distributions()
    declared = {_canonical(name) for name in _declared()}
    undeclared: dict[str, list[str]] = {}
    for module in (ROOT / "mapping").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "mapping":
                    continue
                # A namespace package (azure) has many distributions: the module's own is the one that matters.
                distributions = providers.get(top, [])
                if top == "azure":
                    distributions = [d for d in distributions if _provides(d, name)]
                if not declared & {_canonical(d) for d in distributions}:
                    undeclared.setdefault(name, []).append(module.name)
    assert undeclared == {}


def _provides(distribution: str, module: str) -> bool:
    path = "/".join(module.split("."))
    return any(
        str(f).startswith((path + "/", path + ".py")) for f in importlib.metadata.distribution(distribution).files or ()
    )


def _closure(requirements: Iterable[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions these requirements need, their own requirements followed (extras and markers
    that do not apply left out)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [Requirement(line) for line in requirements]
    while pending:
        requirement = pending.pop()
        if _canonical(requirement.name) in found:
            continue
        distribution = importlib.metadata.distribution(requirement.name)
        found[_canonical(requirement.name)] = distribution
        for line in distribution.requires or ():
            needed = Requirement(line)
            if needed.marker is None or needed.marker.evaluate({"extra": ""}):
                pending.append(needed)
    return list(found.values())


def _link_installed(distributions: Iterable[importlib.metadata.Distribution], site: Path) -> int:
    """Link each file these distributions installed (their metadata included) into `site`; return how many."""
    linked = 0
    for distribution in distributions:
        for file in distribution.files or ():
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # scripts outside site-packages; bytecode is made again
            target = site / file
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path(str(file.locate())).resolve())
            linked += 1
    return linked


@pytest.fixture(scope="module")
def fresh_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed offline: it holds only the distributions requirements.txt
    needs (linked from this environment), so a dependency the wheel does not declare is missing there."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert _link_installed(_closure(_requirement_lines((ROOT / "requirements.txt").read_text())), Path(site)) > 0
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-index", str(wheel)], check=True, capture_output=True
    )
    return python


def test_the_fresh_environment_holds_only_the_declared_closure(fresh_python: Path) -> None:
    """The fresh environment has the wheel and its requirements' closure, and none of this one's development tools."""
    listed = subprocess.run(
        [str(fresh_python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    ).stdout
    installed = {_canonical(entry["name"]) for entry in json.loads(listed)}
    assert {"signalr-connection-mapper", *map(_canonical, _declared())} <= installed
    assert not installed & {"pytest", "ruff", "mypy", "build", "hatchling", "packaging"}


@dataclass(frozen=True)
class ExistingApp:
    """An app of its own in a directory outside the repository, with the mapper registered beside its functions."""

    directory: Path
    ticks: Path


def _existing_app(directory: Path, *, hello_name: str = "hello", hello_route: str = "hello") -> ExistingApp:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "function_app.py").write_text(EXISTING_APP.format(hello_name=hello_name, hello_route=hello_route))
    (directory / "host.json").write_text((ROOT / "host.json").read_text())
    # Only the local host comes from the repository (it is the stand-in for the Functions host), not mapping/.
    tools = directory / "host-tools"
    tools.mkdir(exist_ok=True)
    (tools / "local").symlink_to(ROOT / "local")
    return ExistingApp(directory, directory / "ticks.txt")


def _host_options(python: Path, app: ExistingApp) -> HostOptions:
    """The local host from the fresh environment, in the app's folder, with only the local host on PYTHONPATH."""
    return HostOptions(python=python, app_dir=app.directory, app_dirs=(app.directory / "host-tools",))


def _settings(azurite: Azurite, app: ExistingApp) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "MAPPING_STORAGE": azurite.connection_string,
        "MAPPING_TABLE": unique_table_name(),
        "SWEEP_SCHEDULE": "0 */5 * * * *",
        "TICKS_FILE": str(app.ticks),
    }


@pytest.fixture
def running(fresh_python: Path, azurite: Azurite, tmp_path: Path) -> Iterator[tuple[ExistingApp, LocalStack]]:
    """The emulator (from this repository) and the existing app's host (from the fresh environment)."""
    app = _existing_app(tmp_path / "existing-app")
    options = _host_options(fresh_python, app)
    with running_local_stack(_settings(azurite, app), hub=HUB, host_options=options) as stack:
        yield app, stack


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session for the test."""
    async with aiohttp.ClientSession() as client:
        yield client


async def _eventually_received(client: HubClient, *, seconds: float = 15.0) -> None:
    for _ in range(int(seconds * 10)):
        if client.messages:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the message never arrived")


async def test_the_installed_mapper_and_the_apps_own_functions_both_work(
    running: tuple[ExistingApp, LocalStack], session: aiohttp.ClientSession, fresh_python: Path
) -> None:
    """Served from the fresh environment, the mapper maps and delivers, and the app's HTTP function and timer run."""
    app, stack = running
    async with session.get(f"{stack.host_url}/api/hello", params={"name": "team"}) as response:
        assert response.status == 200
        hello = await response.json()
    assert hello["hello"] == "team"
    assert Path(hello["mapping"]).is_relative_to(fresh_python.parent.parent)  # the wheel's copy, not the repository's

    client = await HubClient.open(session, stack.emulator_url, hub=HUB, user="Ada", access_key=ACCESS_KEY)
    try:
        async with session.get(f"{stack.host_url}/api/users/ada") as response:
            assert response.status == 200
            presence = await response.json()
        assert presence["online"] is True
        assert [c["connectionId"] for c in presence["connections"]] == [client.connection_id]
        async with session.post(f"{stack.host_url}/api/send", json={"to": "ada", "message": "hi"}) as response:
            assert (response.status, await response.json()) == (200, {"to": "ada", "delivered": 1})
        await _eventually_received(client)
        assert any(arguments[-1] == "hi" or "hi" in json.dumps(arguments) for _, arguments in client.messages)
    finally:
        await client.close()

    async with session.get(f"{stack.host_url}/api/openapi.json") as response:
        assert response.status == 200
        assert (await response.json())["openapi"].startswith("3.1")
    for _ in range(50):
        if app.ticks.exists() and app.ticks.read_text().count("tick") >= 2:
            break
        await asyncio.sleep(0.1)
    assert app.ticks.read_text().count("tick") >= 2


@pytest.mark.parametrize(
    ("hello_name", "hello_route", "expected"),
    [
        ("send", "hello", r"Function send does not have a unique function name.*connection mapper's functions"),
        ("Sweep", "hello", r"'Sweep' has the name of the mapper's 'sweep'"),
        (
            "hello",
            "users/{id}",
            r"'hello' \(route 'users/\{id\}'\) answers GET on the route of the mapper's 'user_presence'",
        ),
    ],
)
def test_a_clash_with_the_apps_functions_fails_at_indexing(
    fresh_python: Path, azurite: Azurite, tmp_path: Path, hello_name: str, hello_route: str, expected: str
) -> None:
    """An app function with a mapper function's name, or its route and method, stops the host before it serves."""
    app = _existing_app(tmp_path / "clashing-app", hello_name=hello_name, hello_route=hello_route)
    with (
        pytest.raises(RuntimeError, match=r"local\.host did not start") as raised,
        running_local_stack(_settings(azurite, app), hub=HUB, host_options=_host_options(fresh_python, app)),
    ):
        pass
    log = str(raised.value)
    assert "Worker failed to index functions: RegistrationError" in log
    assert re.search(expected, log), log
