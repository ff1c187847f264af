"""The local stack as processes: the SignalR emulator and the local host running the app, on free ports.

Shared by the benchmarks, `testkit/serve_stack.py` and the end-to-end tests (`testkit/stack.py`):
`running_local_stack(settings)` starts both with the app settings given (the stack adds the hub and the SignalR
connection string to the emulator), and stops them when the block ends; `HostOptions` says which app the host runs
and how; `LocalStack.restart_host` runs the host again on the same port with changed settings, while the emulator
keeps its client connections open (they are the emulator's, not the host's).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.azurite import ROOT, _wait_listening, free_port, stop_process

# Keys of the local stack's emulator only; not secrets.
ACCESS_KEY = "local-stack-primary-key-0123456789abcdefghijklmnopq"
SECONDARY_KEY = "local-stack-secondary-key-0123456789abcdefghijklmno"
HUB = "chat"
START_SECONDS = 60.0


def signalr_connection_string(emulator_port: int, access_key: str = ACCESS_KEY) -> str:
    """Return the `AzureSignalRConnectionString` of an emulator on 127.0.0.1:`emulator_port`."""
    return f"Endpoint=http://127.0.0.1;Port={emulator_port};AccessKey={access_key};Version=1.0;"


@dataclass(frozen=True)
class HostOptions:
    """How the local host runs besides its app settings: which app, with which keys and static directories."""

    app: str | None = None  # module:attribute of the func.FunctionApp; None for function_app.py's
    app_dirs: tuple[Path, ...] = ()  # on PYTHONPATH ahead of the repository, for `app`'s module
    python: Path | None = None  # another interpreter (an environment the wheel is installed in); None: this one
    app_dir: Path | None = None  # an app outside the repository: run there, with only `app_dirs` on PYTHONPATH
    function_key: str | None = None  # with a key the host checks keys as Azure does
    static: Mapping[str, Path] = field(default_factory=dict)  # URL prefix -> directory, also served

    def arguments(self) -> list[str]:
        """Return the local host's command-line options for these choices."""
        arguments = [] if self.function_key is None else ["--function-key", self.function_key]
        for prefix, directory in self.static.items():
            arguments += ["--static", f"{prefix}={directory}"]
        return arguments if self.app is None else [*arguments, "--app", self.app]

    def environment(self) -> dict[str, str] | None:
        """Return the local host's environment: this one with `app_dirs` on PYTHONPATH, or None to inherit it."""
        if self.app_dir is not None:  # nothing of the repository but what `app_dirs` names
            return {"PATH": os.environ.get("PATH", ""), "HOME": str(self.app_dir), "PYTHONPATH": self._path()}
        if not self.app_dirs:
            return None
        return {**os.environ, "PYTHONPATH": os.pathsep.join([self._path(), str(ROOT)])}

    def command(self) -> list[str]:
        """Return the interpreter and module that run the local host."""
        return [str(self.python or sys.executable), "-m", "local.host"]

    def _path(self) -> str:
        return os.pathsep.join(map(str, self.app_dirs))


@dataclass
class LocalStack:
    """A running emulator and local host: their URLs, the app settings the host runs with, and their logs."""

    emulator_port: int
    host_port: int
    settings: dict[str, str]
    logs: Path
    host_json: Path
    host_log_level: str | None  # None: the host's own default
    hub: str = HUB
    access_key: str = ACCESS_KEY
    host_options: HostOptions = field(default_factory=HostOptions)
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def emulator_url(self) -> str:
        """Return the emulator's base URL (clients negotiate at `<url>/client/negotiate`)."""
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def host_url(self) -> str:
        """Return the local host's base URL (`<url>/api/...`)."""
        return f"http://127.0.0.1:{self.host_port}"

    def start_host(self) -> None:
        """Start the local host with `settings` (written to a local.settings.json of its own)."""
        path = self.logs / "local.settings.json"
        path.write_text(json.dumps({"IsEncrypted": False, "Values": self.settings}))
        command = [
            *self.host_options.command(),
            *("--host", "127.0.0.1", "--port", str(self.host_port)),
            *("--settings", str(path), "--host-json", str(self.host_json)),
            *_log_level_option(self.host_log_level),
            *self.host_options.arguments(),
        ]
        log = self.logs / "host.log"
        options = self.host_options
        self._processes["host"] = _start(command, self.host_port, log, env=options.environment(), cwd=options.app_dir)

    def start_emulator(
        self,
        *,
        secondary_key: str,
        client_timeout: float,
        keepalive: float,
        log_level: str | None,
        options: Sequence[str] = (),
    ) -> None:
        """Start the emulator, its upstream the local host's SignalR webhook, with `options` on its command line."""
        command = [
            *(sys.executable, "-m", "local.emulator", "--host", "127.0.0.1", "--port", str(self.emulator_port)),
            *("--public-url", self.emulator_url, "--upstream", f"{self.host_url}/runtime/webhooks/signalr"),
            *("--access-key", self.access_key, "--secondary-key", secondary_key),
            *("--client-timeout", str(client_timeout), "--keepalive", str(keepalive)),
            *_log_level_option(log_level),
            *options,
        ]
        self._processes["emulator"] = _start(command, self.emulator_port, self.logs / "emulator.log")

    def stop_host(self) -> None:
        """Stop the local host (the emulator and its client connections stay)."""
        process = self._processes.pop("host", None)
        if process is not None:
            stop_process(process, timeout=15)

    def restart_host(self, **changes: str) -> None:
        """Stop the host and start it again on the same port, with `changes` among its app settings."""
        self.stop_host()
        self.settings.update(changes)
        self.start_host()

    def stop(self) -> None:
        """Stop the host, then the emulator."""
        self.stop_host()
        process = self._processes.pop("emulator", None)
        if process is not None:
            stop_process(process, timeout=15)

    def log_tail(self, lines: int = 60) -> str:
        """Return the end of both processes' logs, for failure messages."""
        return log_tail(self.logs, lines)


def log_tail(logs: Path, lines: int = 60) -> str:
    """Return the end of the emulator's and the host's logs in the folder `logs`, for failure messages."""
    parts = []
    for name in ("emulator.log", "host.log"):
        path = logs / name
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        parts.append(f"--- {name}\n" + "\n".join(text))
    return "\n".join(parts)


def _log_level_option(log_level: str | None) -> list[str]:
    return [] if log_level is None else ["--log-level", log_level]


def _start(
    command: list[str], port: int, log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        process = subprocess.Popen(command, cwd=cwd or ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env)
    if not _wait_listening(port, process, timeout=START_SECONDS):
        stop_process(process, timeout=5)
        raise RuntimeError(f"{command[2]} did not start: " + log.read_text(errors="replace")[-3000:])
    return process


@contextlib.contextmanager
def running_local_stack(
    settings: Mapping[str, str],
    *,
    hub: str = HUB,
    client_timeout: float = 30.0,
    keepalive: float = 15.0,
    log_level: str | None = "INFO",
    host_json: Mapping[str, Any] | None = None,
    access_key: str = ACCESS_KEY,
    secondary_key: str = SECONDARY_KEY,
    host_options: HostOptions | None = None,
    log_prefix: str = "local-stack-",
    emulator_options: Sequence[str] = (),
) -> Iterator[LocalStack]:
    """Start the emulator and the local host running `function_app.py` (or `host_options.app`) with `settings`
    (plus the hub and the emulator's connection string); stop both when the block ends. `client_timeout` and
    `keepalive` are the emulator's (seconds a client may stay silent, seconds between its pings); `log_level` is
    both processes' (None: their defaults); `host_json` replaces the repository's host.json; `emulator_options` go
    on the emulator's command line."""
    logs = Path(tempfile.mkdtemp(prefix=log_prefix))
    stack: LocalStack | None = None
    try:
        host_json_path = ROOT / "host.json"
        if host_json is not None:
            host_json_path = logs / "host.json"
            host_json_path.write_text(json.dumps(host_json))
        for attempt in range(3):
            emulator_port, host_port = free_port(), free_port()
            values = {
                "FUNCTIONS_WORKER_RUNTIME": "python",
                "SIGNALR_HUB": hub,
                "AzureSignalRConnectionString": signalr_connection_string(emulator_port, access_key),
                **settings,
            }
            stack = LocalStack(
                emulator_port,
                host_port,
                values,
                logs,
                host_json_path,
                log_level,
                hub=hub,
                access_key=access_key,
                host_options=host_options or HostOptions(),
            )
            try:
                stack.start_emulator(
                    secondary_key=secondary_key,
                    client_timeout=client_timeout,
                    keepalive=keepalive,
                    log_level=log_level,
                    options=emulator_options,
                )
                stack.start_host()
                break
            except RuntimeError:  # a port taken meanwhile: try others
                stack.stop()
                if attempt == 2:
                    raise
        assert stack is not None
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        shutil.rmtree(logs, ignore_errors=True)
