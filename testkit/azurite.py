"""Run Azurite (table, queue and blob services) from node_modules, in memory, on free ports: shared by the tests and
the benchmarks."""

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
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-table"  # the table service alone (tests that restart it)
AZURITE_ALL = ROOT / "node_modules" / ".bin" / "azurite"  # blob, queue and table in one process
DEV_ACCOUNT = "devstoreaccount1"
# Azurite's published development key; not a secret.
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# azure-storage-queue sends a newer x-ms-version than Azurite 3.35 accepts: without this flag every queue call
# is refused with 400 InvalidHeaderValue ("The API version ... is not supported by Azurite").
AZURITE_FLAGS = ("--inMemoryPersistence", "--disableTelemetry", "--silent", "--skipApiVersionCheck")


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not start."""


@dataclass(frozen=True)
class Azurite:
    """A running Azurite: its table port, and its queue and blob ports when those services run too."""

    port: int
    queue_port: int | None = None
    blob_port: int | None = None

    @property
    def connection_string(self) -> str:
        """Return a connection string for every endpoint this Azurite serves (the table's, then queue, blob)."""
        return connection_string(self.port, queue_port=self.queue_port, blob_port=self.blob_port)

    @property
    def queue_connection_string(self) -> str:
        """Return a connection string for this Azurite's queue endpoint only."""
        if self.queue_port is None:
            raise AzuriteError("this Azurite runs no queue service")
        return queue_connection_string(self.queue_port)


def _endpoint(kind: str, port: int) -> str:
    return f"{kind}Endpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};"


def connection_string(port: int, *, queue_port: int | None = None, blob_port: int | None = None) -> str:
    """Return a connection string for an Azurite-style table endpoint on 127.0.0.1:`port` (and queue, blob ones)."""
    extra = "".join(_endpoint(kind, p) for kind, p in (("Queue", queue_port), ("Blob", blob_port)) if p is not None)
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"{_endpoint('Table', port)}{extra}"
    )


def queue_connection_string(port: int) -> str:
    """Return a connection string for an Azurite-style queue endpoint on 127.0.0.1:`port` only."""
    return f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};{_endpoint('Queue', port)}"


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


def _free_ports(count: int) -> list[int]:
    """Return `count` distinct free ports."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


@contextlib.contextmanager
def running_azurite(*, port: int | None = None) -> Iterator[Azurite]:
    """Run Azurite's table, queue and blob services in memory (table on `port`, default a free one; the others on
    free ports) until the block ends."""
    if not AZURITE_ALL.exists():
        raise AzuriteError(f"{AZURITE_ALL} is missing: run `npm ci` (make install) first")
    workdir = tempfile.mkdtemp(prefix="azurite-")
    for _attempt in range(3):
        table, queue, blob = _free_ports(3)
        table = port or table
        process = subprocess.Popen(
            [
                str(AZURITE_ALL),
                *("--tableHost", "127.0.0.1", "--tablePort", str(table)),
                *("--queueHost", "127.0.0.1", "--queuePort", str(queue)),
                *("--blobHost", "127.0.0.1", "--blobPort", str(blob)),
                *AZURITE_FLAGS,
            ],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # A port taken meanwhile by someone else makes Azurite exit: then try again on other ports.
        if all(_wait_listening(p, process, timeout=30) for p in (table, queue, blob)):
            break
        stop_process(process, timeout=5)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        raise AzuriteError("Azurite did not start")
    try:
        yield Azurite(table, queue_port=queue, blob_port=blob)
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
