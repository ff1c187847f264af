"""Several instances of the app behind one front, as SignalR's upstream and a load balancer spread them.

`RoundRobinFront` is an HTTP front on 127.0.0.1 that sends each request to the next of its backends in turn: per
request, not per connection (every request goes out on a fresh connection), so the emulator's kept-alive upstream
connection is spread too. It counts what each backend was sent, by SignalR event (`X-ASRS-Event`) or path.

`running_round_robin_stack` starts the emulator, `hosts` local hosts of the app on one table and the front: the
emulator's upstream and the clients' negotiate both go through the front, so one connection's calls alternate
between the hosts, each with its own memory, as instances of the app in Azure do.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import shutil
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testkit.azurite import ROOT, Azurite, free_port
from testkit.local_stack import HUB, SECONDARY_KEY, LocalStack, signalr_connection_string
from testkit.stack import Stack
from testkit.tables import unique_table_name

# Hop-by-hop headers are the front's own business; the rest (the SignalR signature among them) passes through.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)


class RoundRobinFront:
    """Forward each HTTP/1.1 request on 127.0.0.1:`port` to the next of `backends` (ports of 127.0.0.1) in turn."""

    def __init__(self, backends: Sequence[int] = ()) -> None:
        self.backends = list(backends)  # may be set after construction, before the first request
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._served: Counter[tuple[int, str, int]] = Counter()  # (backend index, event or path, status)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="round-robin-front", daemon=True)

    def __enter__(self) -> RoundRobinFront:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        """Return the front's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def served(self, what: str | None = None, *, ok_only: bool = False) -> list[int]:
        """Return how many requests each backend was sent (of the SignalR event or path `what`; answered 2xx)."""
        with self._lock:
            counts = [0] * len(self.backends)
            for (index, name, status), count in self._served.items():
                if (what is None or name == what) and (not ok_only or 200 <= status < 300):
                    counts[index] += count
            return counts

    def next_backend(self) -> int:
        """Return the index of the backend whose turn it is."""
        with self._lock:
            return next(self._turn) % len(self.backends)

    def record(self, index: int, what: str, status: int) -> None:
        """Count one request sent to backend `index`."""
        with self._lock:
            self._served[(index, what, status)] += 1


def _handler(front: RoundRobinFront) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # The answer's head and body leave in two writes: without this, Nagle and the client's delayed ACK hold
            # the body back about 40 ms a request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            index = front.next_backend()
            what = self.headers.get("X-ASRS-Event") or self.path.split("?", 1)[0]
            connection = http.client.HTTPConnection("127.0.0.1", front.backends[index], timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers={**headers, "Connection": "close"})
                response = connection.getresponse()
                status, reason, answer = response.status, response.reason, response.getheaders()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                status, reason, answer, payload = 502, "Bad Gateway", [], b""
            finally:
                connection.close()
            front.record(index, what, status)
            self.send_response_only(status, reason)
            for name, value in answer:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = do_HEAD = do_OPTIONS = _forward

        def log_message(self, format: str, *args: object) -> None:
            """Keep the tests' output quiet."""

    return Handler


@dataclass(frozen=True)
class RoundRobinStack(Stack):
    """The emulator, the hosts and the front: `host_url` is the front's (clients negotiate through it)."""

    front: RoundRobinFront
    host_urls: tuple[str, ...]
    host_logs: tuple[Path, ...]

    def host_log(self, index: int) -> str:
        """Return the whole log of host `index`."""
        path = self.host_logs[index]
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        """Return the end of the emulator's and every host's log, for failure messages."""
        parts = []
        for path in (self.logs / "emulator.log", *self.host_logs):
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            parts.append(f"--- {path.relative_to(self.logs)}\n" + "\n".join(text))
        return "\n".join(parts)


@contextlib.contextmanager
def running_round_robin_stack(
    azurite: Azurite,
    settings: Mapping[str, str] | None = None,
    *,
    hosts: int = 2,
    client_timeout: float = 30.0,
    keepalive: float = 15.0,
    storage: str | None = None,
) -> Iterator[RoundRobinStack]:
    """Start the emulator, `hosts` local hosts of function_app.py on one fresh table and a round-robin front before
    them; stop them all when the block ends. `settings` are app settings over the stack's (the table, no sweep for 5
    minutes, presence events on; the app's defaults otherwise); `storage` is MAPPING_STORAGE's connection string
    (Azurite's by default, e.g. a counting proxy's)."""
    table = unique_table_name()
    values = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "SIGNALR_HUB": HUB,
        "AzureWebJobsStorage": azurite.connection_string,
        "MAPPING_STORAGE": storage or azurite.connection_string,
        "MAPPING_TABLE": table,
        "MAPPING_TTL_SECONDS": "600",
        "PRESENCE_EVENTS": "true",
        "SWEEP_SCHEDULE": "0 */5 * * * *",
        **(settings or {}),
    }
    logs = Path(tempfile.mkdtemp(prefix="e2e-round-robin-"))
    started: list[LocalStack] = []
    try:
        with RoundRobinFront() as front:
            for attempt in range(3):
                emulator_port = free_port()
                values["AzureSignalRConnectionString"] = signalr_connection_string(emulator_port)
                front.backends = [free_port() for _ in range(hosts)]
                # The emulator's "host" is the front: its upstream is the front's SignalR webhook.
                emulator = LocalStack(emulator_port, front.port, values, logs, ROOT / "host.json", None)
                instances = []
                for index, port in enumerate(front.backends):
                    (logs / f"host{index}").mkdir(exist_ok=True)
                    instances.append(
                        LocalStack(emulator_port, port, values, logs / f"host{index}", ROOT / "host.json", None)
                    )
                try:
                    started.append(emulator)
                    emulator.start_emulator(
                        secondary_key=SECONDARY_KEY, client_timeout=client_timeout, keepalive=keepalive, log_level=None
                    )
                    for instance in instances:
                        started.append(instance)
                        instance.start_host()
                    break
                except RuntimeError:  # a port taken meanwhile: try others
                    _stop(started)
                    if attempt == 2:
                        raise
            yield RoundRobinStack(
                host_url=front.url,
                emulator_url=emulator.emulator_url,
                table=table,
                logs=logs,
                front=front,
                host_urls=tuple(instance.host_url for instance in instances),
                host_logs=tuple(logs / f"host{index}" / "host.log" for index in range(hosts)),
            )
    finally:
        _stop(started)
        shutil.rmtree(logs, ignore_errors=True)


def _stop(started: list[LocalStack]) -> None:
    """Stop the hosts, then the emulator (each LocalStack stops what it started)."""
    while started:
        started.pop().stop()
