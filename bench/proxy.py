"""A loopback HTTP proxy in front of Azurite that records every request: table (or queue) round trips, counted on the
wire."""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Hop-by-hop headers are the proxy's own business; everything else (incl. the SharedKey signature) passes through.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)
_ENTITY_PATH = re.compile(r"/[^/]+/[^/(]+\(PartitionKey='.*',RowKey='.*'\)$")
_QUERY_PATH = re.compile(r"/[^/]+/[^/(]+\(\)$")
_QUEUE_MESSAGES = re.compile(r"^/[^/]+/[^/]+/messages$")
_QUEUE_MESSAGE = re.compile(r"^/[^/]+/[^/]+/messages/[^/]+$")
_QUEUE = re.compile(r"^/[^/]+/[^/]+$")
# The queue operations an app makes (enqueue a delayed action, create its queue) beside those its trigger's poller
# makes (get, delete, update a message): Azure bills both, but only the first are the app's requests.
APP_QUEUE_OPERATIONS = frozenset({"put message", "create queue"})

Classifier = Callable[[str, str], str]


def classify(method: str, path: str) -> str:
    """Name the Table operation a request is: create table, upsert, query, batch, ..."""
    path = path.split("?", 1)[0]
    if path.endswith("/Tables") and method == "POST":
        return "create table"
    if path.endswith("/$batch"):
        return "batch"
    if _ENTITY_PATH.search(path):
        return {"PUT": "upsert (replace)", "MERGE": "upsert/update (merge)", "PATCH": "upsert/update (merge)"}.get(
            method, "delete" if method == "DELETE" else "point read" if method == "GET" else method
        )
    if _QUERY_PATH.search(path) or (method == "GET" and "$filter" in path):
        return "query"
    if method == "POST":
        return "insert"
    return f"{method} other"


def classify_queue(method: str, path: str) -> str:
    """Name the Queue operation a request is: put message (an enqueue), get messages (a poll), delete message, ..."""
    path, _, query = path.partition("?")
    if _QUEUE_MESSAGES.match(path):
        return {
            "POST": "put message",
            "GET": "peek messages" if "peekonly=true" in query.lower() else "get messages",
            "DELETE": "clear messages",
        }.get(method, f"{method} messages")
    if _QUEUE_MESSAGE.match(path):
        return {"DELETE": "delete message", "PUT": "update message"}.get(method, f"{method} message")
    if _QUEUE.match(path) and "comp=" not in query:
        return {"PUT": "create queue", "DELETE": "delete queue"}.get(method, f"{method} queue")
    return f"{method} other"


@dataclass
class Recorder:
    """The requests seen since the last reset, as (operation, status) pairs."""

    requests: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, operation: str, status: int) -> None:
        """Record one request."""
        with self.lock:
            self.requests.append((operation, status))

    def seen(self, operation: str) -> int:
        """Return how many `operation` requests were recorded since the last take (the record is kept)."""
        with self.lock:
            return sum(1 for name, _status in self.requests if name == operation)

    def take(self) -> list[tuple[str, int]]:
        """Return the requests recorded so far and start again."""
        with self.lock:
            taken, self.requests = self.requests, []
        return taken


class CountingProxy:
    """Forward HTTP/1.1 requests from 127.0.0.1:`port` to Azurite, recording each one (named by `classifier`: table
    operations by default, `classify_queue` in front of a queue service)."""

    def __init__(self, upstream_port: int, *, classifier: Classifier = classify) -> None:
        self.recorder = Recorder()
        handler = _handler(upstream_port, self.recorder, classifier)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="counting-proxy", daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        """Count the requests made inside the block, by operation (filled in when the block ends)."""
        self.recorder.take()
        counts: Counter[str] = Counter()
        try:
            yield counts
        finally:
            counts.update(operation for operation, _status in self.recorder.take())


def _handler(upstream_port: int, recorder: Recorder, classifier: Classifier) -> type[BaseHTTPRequestHandler]:
    local = threading.local()

    def upstream() -> http.client.HTTPConnection:
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
        connection: http.client.HTTPConnection = local.connection
        return connection

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            try:
                response = _send(upstream(), self.command, self.path, body, headers)
            except (OSError, http.client.HTTPException):
                local.connection = None  # Azurite closed the kept-alive connection: open a fresh one.
                response = _send(upstream(), self.command, self.path, body, headers)
            payload = response.read()
            recorder.add(classifier(self.command, self.path), response.status)
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = do_HEAD = _forward

        def log_message(self, format: str, *args: object) -> None:
            """Keep the benchmark's output quiet."""

    return Handler


def _send(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> http.client.HTTPResponse:
    connection.request(method, path, body=body, headers=headers)
    return connection.getresponse()


@contextlib.contextmanager
def storage_proxies(
    table_port: int, queue_port: int | None, *, classifier: Callable[[str, str], str] = classify
) -> Iterator[tuple[CountingProxy, CountingProxy]]:
    """A counting proxy in front of Azurite's table service (requests named by `classifier`), and one in front of its
    queue service."""
    if queue_port is None:
        raise RuntimeError("this section needs Azurite's queue service")
    with (
        CountingProxy(table_port, classifier=classifier) as table,
        CountingProxy(queue_port, classifier=classify_queue) as queue,
    ):
        yield table, queue
