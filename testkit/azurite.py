"""Run Azurite's table service from node_modules, in memory, on a free port: shared by the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-table"
DEV_ACCOUNT = "devstoreaccount1"
# Azurite's published development key; not a secret.
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not start."""


@dataclass(frozen=True)
class Azurite:
    """A running Azurite table service."""

    port: int

    @property
    def connection_string(self) -> str:
        """Return a connection string for this Azurite's table endpoint."""
        return connection_string(self.port)


def connection_string(port: int) -> str:
    """Return a connection string for an Azurite-style table endpoint on 127.0.0.1:`port`."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def running_azurite(*, port: int | None = None) -> Iterator[Azurite]:
    """Run Azurite's table service in memory on `port` (default: a free one) until the block ends."""
    if not AZURITE.exists():
        raise AzuriteError(f"{AZURITE} is missing: run `npm ci` (make install) first")
    workdir = tempfile.mkdtemp(prefix="azurite-")
    for _attempt in range(3):
        chosen = port or free_port()
        process = subprocess.Popen(
            [
                *(str(AZURITE), "--tableHost", "127.0.0.1", "--tablePort", str(chosen)),
                *("--inMemoryPersistence", "--disableTelemetry", "--silent"),
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_listening(chosen, process, timeout=30):
            break
        process.kill()
        process.wait()
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        raise AzuriteError("Azurite did not start")
    try:
        yield Azurite(chosen)
    finally:
        stop_process(process, timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """Terminate a process we started; kill it if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
