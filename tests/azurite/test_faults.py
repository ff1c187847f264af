"""Storage faults: Azurite killed and restarted mid-stream, and a proxy that throttles, fails, delays and cuts."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from mapping.errors import StorageError, StorageUnavailableError
from mapping.functions import runtime
from mapping.keys import connection_key
from mapping.presence.store import ConnectionStore
from testkit.azurite import AZURITE, Azurite, free_port
from testkit.faultproxy import CUT, HANG, PASS, Fault, FaultProxy, fault_proxy
from testkit.figures import Figures
from testkit.functions_host import Out, http, http_request, invocation, signalr_event
from testkit.tables import make_settings, table_rows, unique_table_name

pytestmark = pytest.mark.reliability

# The documented worst case of one storage call with the store's defaults (see ConnectionStore).
WORST_CASE_SECONDS = 20.0


# -- Azurite killed and restarted ---------------------------------------------------------------


class RestartableAzurite:
    """An Azurite table service on a fixed port that a test can kill (SIGKILL) and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="azurite-restart-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start Azurite (in memory: a restart loses every table) and wait until it listens."""
        self.process = subprocess.Popen(
            [
                *(str(AZURITE), "--tableHost", "127.0.0.1", "--tablePort", str(self.port)),
                *("--inMemoryPersistence", "--disableTelemetry", "--silent"),
            ],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "Azurite exited at start (port taken?)"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.05)
        pytest.fail("Azurite did not start again")

    def kill(self) -> None:
        """Kill the process outright, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def service(self) -> Azurite:
        """Return the connection details."""
        return Azurite(self.port)


@pytest.fixture
def restartable() -> Iterator[RestartableAzurite]:
    """An Azurite of this test's own, killed at the end whatever happened."""
    azurite = RestartableAzurite()
    azurite.start()
    yield azurite
    azurite.kill()
    shutil.rmtree(azurite.workdir, ignore_errors=True)


@pytest.fixture
async def app_on(restartable: RestartableAzurite, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The function app (its default store) on the restartable Azurite; yields the table name."""
    table = unique_table_name()
    monkeypatch.setenv("MAPPING_STORAGE", restartable.service.connection_string)
    monkeypatch.setenv("MAPPING_TABLE", table)
    monkeypatch.setenv("PRESENCE_EVENTS", "true")
    monkeypatch.setenv("MAPPING_TTL_SECONDS", "600")
    monkeypatch.setenv("PRESENCE_GRACE_SECONDS", "0")  # disconnects delete at once (no queue here)
    monkeypatch.setenv("PRESENCE_AUDIENCE", "hub")  # one broadcast per change, no group actions
    await runtime.reset()
    yield table
    await runtime.reset()


@dataclass
class Outcome:
    """One event of the stream: what it was, when it ran, and whether it succeeded or failed visibly."""

    kind: str
    connection: str
    start: float
    end: float = 0.0
    ok: bool = False
    details: dict[str, Any] = field(default_factory=dict)


async def run_event(kind: str, user: str, connection: str, figures: Figures) -> Outcome:
    """Run one event as the host would; a success or a visible failure, anything else fails the test."""
    outcome = Outcome(kind, connection, start=time.monotonic())
    try:
        if kind in ("connected", "disconnected"):
            await signalr_event(kind, invocation(kind, user_id=user, connection_id=connection))
            outcome.ok = True
        elif kind == "send_message":
            out = await signalr_event(
                "send_message", invocation("send", user_id=user, connection_id=connection, arguments=[user, "hi"])
            )
            # Storage down: the caller is answered one error asking it to retry, and nothing is delivered.
            retry = [m for m in out.messages if m.get("target") == "error" and m["arguments"][0].get("retry")]
            assert not retry or out.messages == retry, out.messages
            outcome.ok = not retry
        else:
            route = {"user_presence": f"users/{user}", "online_users": "users", "send": "send"}[kind]
            body = {"to": user, "message": "ping"} if kind == "send" else None
            request = http_request("POST" if body else "GET", route, body=body, route_params={"user": user})
            outputs = {"signalr": Out()} if kind == "send" else {}
            status, payload, response = await http(kind, request, **outputs)
            figures.add("storage_faults", "http_500", int(status == 500))
            if status == 503:
                assert "error" in payload
                assert int(response.headers["Retry-After"]) >= 1
                assert all(out.value is None for out in outputs.values()), "nothing is sent when storage failed"
            else:
                assert status in (200, 404), (kind, status, payload)
                outcome.ok = True
    except StorageError:
        outcome.ok = False
    outcome.end = time.monotonic()
    figures.add("storage_faults", "events")
    figures.add("storage_faults", "events_failed_visibly", int(not outcome.ok))
    return outcome


CYCLE = ("connected", "user_presence", "send_message", "send", "online_users", "disconnected")


async def lane(number: int, stop: asyncio.Event, outcomes: list[Outcome], figures: Figures) -> None:
    """One client after another for one user: connect, read, send, list, disconnect, until told to stop."""
    cycle = 0
    while not stop.is_set():
        connection = f"lane{number}-c{cycle}"
        for kind in CYCLE:
            outcomes.append(await run_event(kind, f"user{number}", connection, figures))
        cycle += 1


async def test_azurite_killed_mid_stream_fails_visibly_then_recovers(
    restartable: RestartableAzurite, app_on: str, figures: Figures
) -> None:
    """Kill Azurite mid-stream: each event succeeds or fails visibly, none succeeds in the outage, the app recovers."""
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    lanes = [asyncio.create_task(lane(n, stop, outcomes, figures)) for n in range(6)]
    await asyncio.sleep(1.5)
    killed_at = time.monotonic()
    restartable.kill()
    dead_from = time.monotonic()
    figures.add("storage_faults", "azurite_kills")
    # Long enough for whole events to fail inside the outage even on a busy machine (each gives up after its retries).
    await asyncio.sleep(5.0)
    restart_from = time.monotonic()
    restartable.start()
    up_at = time.monotonic()
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*lanes)

    before = [o for o in outcomes if o.end < killed_at]
    during = [o for o in outcomes if o.start > dead_from and o.end < restart_from]
    after = [o for o in outcomes if o.start > up_at]
    assert before
    assert all(o.ok for o in before), "everything works before the fault"
    assert during, "events ran during the outage"
    assert not [o for o in during if o.ok], "nothing succeeds while storage is down"
    figures.add("storage_faults", "events_during_outage", len(during))
    # The first calls after the restart may fail (the in-memory table is gone; the store creates it
    # again); after that every event succeeds, with the same cached client and no app restart.
    first_ok = next(i for i, o in enumerate(after) if o.ok)
    assert all(o.ok for o in after[first_ok + len(lanes) :])
    assert len(after) > first_ok + len(lanes)

    # Acknowledged effects after the restart stick: a successful disconnect leaves no row, a
    # successful connect without a later successful disconnect leaves one.
    expected: dict[str, bool] = {}
    for o in sorted(after, key=lambda o: o.start):
        if o.ok and o.kind in ("connected", "disconnected"):
            expected[o.connection] = o.kind == "connected"
    rows = {row["RowKey"] for row in await table_rows(restartable.service, app_on)}
    for connection, present in expected.items():
        assert (connection_key(connection) in rows) is present, connection
    figures.add(
        "storage_faults", "rows_lost", sum(1 for c, p in expected.items() if p and connection_key(c) not in rows)
    )

    # A full round trip on the same process-wide store.
    assert [
        m["arguments"][0]["online"]
        for m in (await signalr_event("connected", invocation("connected", user_id="zoe", connection_id="z1"))).messages
    ] == [True]
    status, body, _ = await http("user_presence", http_request("GET", "users/zoe", route_params={"user": "zoe"}))
    assert (status, body["online"]) == (200, True)


# -- throttling, errors, slow and broken connections through the proxy ---------------------------


@pytest.fixture
async def proxy(azurite: Azurite) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the session's Azurite."""
    async with fault_proxy(azurite.port) as running:
        yield running


@contextlib.asynccontextmanager
async def proxied_store(proxy: FaultProxy, **options: Any) -> AsyncIterator[ConnectionStore]:
    """A store that reaches Azurite through the proxy; its table is created before any fault is planned."""
    store = ConnectionStore(make_settings(Azurite(proxy.port).connection_string, unique_table_name()), **options)
    try:
        await store.connections_of("warm-up")
        yield store
    finally:
        await store.close()


def record(figures: Figures, proxy: FaultProxy) -> None:
    """Add the proxy's injected faults to the figures."""
    figures.add("throttling", "requests", proxy.requests)
    for kind, count in proxy.injected.items():
        figures.add("throttling", f"faults_{kind}", count)
    figures.add("throttling", "faults_injected", proxy.faults_injected)


@pytest.mark.parametrize("fault", [Fault.answer(503), Fault.answer(500), Fault.answer(503, retry_after="1")])
async def test_transient_faults_are_retried_until_they_pass(proxy: FaultProxy, figures: Figures, fault: Fault) -> None:
    """Two faults then a clean answer: the SDK retries the user read with backoff and the connect succeeds."""
    async with proxied_store(proxy) as store:
        proxy.plan(fault, fault)
        seen = proxy.requests
        assert (await store.connect("alice", "c1")).came_online
        # two faulted reads of the user, the one that passed, the index write, the transaction
        assert proxy.requests - seen == 5
        assert [c.connection_id for c in await store.connections_of("alice")] == ["c1"]
    record(figures, proxy)


async def test_cut_connections_are_retried_for_reads(proxy: FaultProxy, figures: Figures) -> None:
    """Two cut connections then a clean answer: a read (GET) is retried and succeeds."""
    async with proxied_store(proxy) as store:
        await store.connect("alice", "c1")
        proxy.plan(CUT, CUT)
        seen = proxy.requests
        assert [c.connection_id for c in await store.connections_of("alice")] == ["c1"]
        assert 3 <= proxy.requests - seen <= 5
    record(figures, proxy)


async def test_a_cut_transaction_fails_visibly_and_the_next_attempt_works(proxy: FaultProxy, figures: Figures) -> None:
    """azure-core retries a dropped connection only for GET/PUT/DELETE/HEAD: a cut batch (POST) raises at once."""
    async with proxied_store(proxy) as store:
        await store.connect("alice", "c1")
        proxy.plan(PASS, CUT)  # the user's read passes, the transaction's connection is cut
        with pytest.raises(StorageUnavailableError):
            await store.disconnect("alice", "c1")
        assert (await store.disconnect("alice", "c1")).removed
        assert await store.connections_of("alice") == []
    record(figures, proxy)


@pytest.mark.parametrize(
    ("fault", "operation"), [(Fault.answer(503), "connect"), (Fault.answer(500), "connect"), (CUT, "read")]
)
async def test_persistent_faults_end_in_the_typed_error_after_bounded_retries(
    proxy: FaultProxy, figures: Figures, fault: Fault, operation: str
) -> None:
    """A fault on every attempt: exactly retry_total + 1 attempts, then StorageUnavailableError."""
    async with proxied_store(proxy, retry_total=3) as store:
        proxy.plan(then=fault)
        seen = proxy.requests
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError):
            await (store.connect("alice", "c1") if operation == "connect" else store.connections_of("alice"))
        # retry_total + 1 = 4 SDK attempts; aiohttp itself resends an idempotent request once when a
        # reused keep-alive connection drops, so a cut GET may show up to twice per attempt.
        assert 4 <= proxy.requests - seen <= (8 if fault is CUT else 4)
        # Exponential backoff between attempts (0, 0.4, 0.8 s by default).
        assert time.monotonic() - started >= 1.0
        proxy.plan(then=PASS)
        assert (await store.connect("alice", "c1")).came_online
    record(figures, proxy)


async def test_a_long_retry_after_is_obeyed_only_briefly_but_passed_on(proxy: FaultProxy, figures: Figures) -> None:
    """Storage asks for Retry-After: 120: the call still fails within seconds, and HTTP passes 120 on."""
    async with proxied_store(proxy) as store:
        proxy.plan(then=Fault.answer(503, retry_after="120"))
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as caught:
            await store.connections_of("alice")
        assert time.monotonic() - started < 10
        assert caught.value.retry_after_seconds == 120
    record(figures, proxy)


async def test_a_slow_answer_within_the_read_timeout_succeeds(proxy: FaultProxy, figures: Figures) -> None:
    """A 1 s delay is below the read timeout: the call succeeds without a retry."""
    async with proxied_store(proxy, read_timeout=3.0) as store:
        proxy.plan(Fault.delay(1.0))
        seen = proxy.requests
        assert (await store.connect("alice", "c1")).came_online
        # the user's read, the index write, the transaction: none retried
        assert proxy.requests - seen == 3
    record(figures, proxy)


async def test_a_hanging_storage_fails_within_the_documented_bound(proxy: FaultProxy, figures: Figures) -> None:
    """Storage that accepts and never answers: the default store gives up within its documented worst case."""
    async with proxied_store(proxy) as store:
        proxy.plan(then=HANG)
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError):
            await store.connect("alice", "c1")
        elapsed = time.monotonic() - started
        assert elapsed < WORST_CASE_SECONDS
        figures.put("throttling", "hang_gave_up_after_seconds", round(elapsed, 1))
        figures.put("throttling", "documented_worst_case_seconds", WORST_CASE_SECONDS)
    record(figures, proxy)


async def test_http_answers_503_with_retry_after_while_throttled(
    proxy: FaultProxy, figures: Figures, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the functions: persistent 503s give HTTP 503 JSON with Retry-After and no output; a trigger raises."""
    table = unique_table_name()
    monkeypatch.setenv("MAPPING_STORAGE", Azurite(proxy.port).connection_string)
    monkeypatch.setenv("MAPPING_TABLE", table)
    monkeypatch.setenv("PRESENCE_GRACE_SECONDS", "0")
    await runtime.reset()
    try:
        await signalr_event("connected", invocation("connected", user_id="bob", connection_id="b1"))
        proxy.plan(then=Fault.answer(503, retry_after="7"))
        out = Out()
        status, body, response = await http(
            "send", http_request("POST", "send", body={"to": "bob", "message": 1}), signalr=out
        )
        assert (status, response.headers["Retry-After"], out.value) == (503, "7", None)
        assert "error" in body
        proxy.plan(then=Fault.answer(503))
        with pytest.raises(StorageUnavailableError):
            await signalr_event("connected", invocation("connected", user_id="bob", connection_id="b2"))
        proxy.plan(then=PASS)
        status, body, _ = await http("user_presence", http_request("GET", "users/bob", route_params={"user": "bob"}))
        assert [c["connectionId"] for c in body["connections"]] == ["b1"]
    finally:
        await runtime.reset()
    record(figures, proxy)
