"""The benchmarked events, each in three implementations: ours (the app's functions), the floor, the naive way.

Every cell runs on a fresh table in Azurite, seeded with what its event needs, and is dropped afterwards.
The client events (join, setStatus, leave) give each operation a user of its own with one tab open:
a join is of a further room (the user is in HOME_ROOM already), a leave is of a room the user is in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import azure.functions as func
from azure.data.tables.aio import TableServiceClient

from bench.floor import Floor
from bench.naive import ROOM_KEY, NaiveFunctions
from mapping.functions import runtime
from mapping.presence.rows import ConnectionEntity, Membership
from mapping.presence.state import PresenceState, Recorded, presence_write
from mapping.presence.store import ConnectionStore
from mapping.rooms.index import index_row
from mapping.settings import Settings, StorageConnection
from mapping.storage.table import MAX_BATCH, Operation, upsert
from testkit.functions_host import FUNCTIONS, Out, http_request, invocation

IMPLS = ("floor", "ours", "naive")
TTL = timedelta(seconds=600)
RECIPIENT = "bob"
PRESENCE_CONNECTIONS = 10
HOME_ROOM = "home"  # the room every user of a join or leave is in before the event (a join is of a further room)
ROOM = "lobby"  # the room joined and left
STATUS = "busy"  # the status set
CLIENT_KINDS = ("join", "set_status", "leave")  # SignalR client messages
CLIENT_FUNCTIONS = {  # each client message's function, and the method name the client calls
    "join": ("join_room", "join"),
    "set_status": ("set_status", "setStatus"),
    "leave": ("leave_room", "leave"),
}


@dataclass(frozen=True)
class Event:
    """A benchmarked event: its name, what it says in the report, and the recipient's connection count."""

    name: str
    label: str
    kind: str
    connections: int = 0


EVENTS = (
    Event("connect", "connect (SignalR connected, presence on)", "connect"),
    Event("disconnect", "disconnect (SignalR disconnected, presence on)", "disconnect"),
    Event("send_1", "HTTP send to a user with 1 connection", "send", 1),
    Event("send_10", "HTTP send to a user with 10 connections", "send", 10),
    Event("send_100", "HTTP send to a user with 100 connections", "send", 100),
    Event(
        "presence",
        f"GET users/{{user}} (user with {PRESENCE_CONNECTIONS} connections)",
        "presence",
        PRESENCE_CONNECTIONS,
    ),
    Event("join", "join(room) (SignalR join: one tab, in 1 room)", "join"),
    Event("set_status", "setStatus(status) (SignalR setStatus: one tab)", "set_status"),
    Event("leave", "leave(room) (SignalR leave: one tab, in 2 rooms)", "leave"),
)

Op = Callable[[int], Awaitable[object]]


def app_environment(connection_string: str, table: str, *, presence: bool = True) -> dict[str, str]:
    """Return the app settings the function app reads, for a given storage and table."""
    return {
        "MAPPING_STORAGE": connection_string,
        "MAPPING_TABLE": table,
        "MAPPING_TTL_SECONDS": str(int(TTL.total_seconds())),
        "SIGNALR_HUB": "chat",
        "PRESENCE_EVENTS": "true" if presence else "false",
        "PRESENCE_GRACE_SECONDS": "0",  # each disconnect decides at once
        "PRESENCE_AUDIENCE": "hub",  # one presence message per change: the audience costs no table request
        "SWEEP_SCHEDULE": "0 */5 * * * *",
        "ROOMS_OPEN": "*",  # the join measured is an open room's (a granted join costs the same: bench.access)
    }


async def use_app_settings(env: dict[str, str]) -> None:
    """Point the function app's process-wide store at new settings (it reopens on the next call)."""
    for name in list(os.environ):
        if name.startswith(("MAPPING_", "AzureWebJobsStorage")):
            del os.environ[name]
    os.environ.update(env)
    await runtime.reset()


def new_table_name() -> str:
    """Return a table name for one cell."""
    return f"b{uuid.uuid4().hex[:20]}"


@asynccontextmanager
async def fresh_table(connection_string: str) -> AsyncIterator[str]:
    """Create a table for the block and delete it afterwards."""
    name = new_table_name()
    async with TableServiceClient.from_connection_string(connection_string) as service:
        await service.create_table(name)
        try:
            yield name
        finally:
            await service.delete_table(name)


def user_of(tag: str, index: int) -> str:
    """Return the user name of operation `index` in a cell."""
    return f"u{index}-{tag}"


def connection_of(tag: str, index: int) -> str:
    """Return the connection id of operation `index` in a cell."""
    return f"c{index}-{tag}"


async def seed(connection_string: str, table: str, event: Event, *, tag: str, count: int) -> None:
    """Write the rows an event needs, as the app writes them: one per user to disconnect, or the recipient's."""
    service = TableServiceClient.from_connection_string(connection_string)
    async with service, service.get_table_client(table) as client:
        if event.kind == "disconnect":
            limit = asyncio.Semaphore(32)

            async def put(index: int) -> None:
                async with limit:
                    row = ConnectionEntity.new(user_of(tag, index), connection_of(tag, index), hub="chat")
                    await client.upsert_entity(row.to_table())

            await asyncio.gather(*(put(index) for index in range(count)))
        elif event.connections:
            rows = [
                ConnectionEntity.new(RECIPIENT, f"{RECIPIENT}-c{j}", hub="chat", user_agent="bench/1.0").to_table()
                for j in range(event.connections)
            ]
            for start in range(0, len(rows), 100):
                await client.submit_transaction([("upsert", row) for row in rows[start : start + 100]])


def rooms_before(kind: str) -> tuple[str, ...]:
    """Return the rooms each user of a client event is in before it: a join is of a further room."""
    return {"join": (HOME_ROOM,), "leave": (HOME_ROOM, ROOM)}.get(kind, ())


def client_invocation(kind: str, user: str, connection: str) -> str:
    """Return the SignalR trigger payload of a client's `join(ROOM)`, `leave(ROOM)` or `setStatus(STATUS)`."""
    argument = STATUS if kind == "set_status" else ROOM
    return invocation(CLIENT_FUNCTIONS[kind][1], connection_id=connection, user_id=user, arguments=[argument])


async def seed_users(
    connection_string: str, table: str, kind: str, *, tag: str, count: int, tabs: bool = True, naive: bool = False
) -> None:
    """Give each user of a client event one tab and the rooms it starts in, written straight to the table.

    The app's rows (the connection row, the presence row and the expiry-index entry of a connect, the
    membership and member-index rows of a join), built with the app's own row builders; without `tabs`
    only the rooms (the tabs were opened through the app's `connected`). `naive`: the naive way's rows.
    """
    store = ConnectionStore(Settings(StorageConnection(connection_string=connection_string), table_name=table, ttl=TTL))
    now = store.now()
    partitions: list[list[Operation]] = []  # one transaction per user
    shared: dict[str, list[Operation]] = {}  # index entries and member-index rows, by partition
    for index in range(count):
        user, connection = user_of(tag, index), connection_of(tag, index)
        operations: list[Operation] = []
        if naive:
            row = ConnectionEntity.new(user, connection, hub="chat", user_agent="bench/1.0", now=now)
            operations.append(("upsert", row.to_table(), {}))
            for room in rooms_before(kind):
                operations.append(
                    upsert({"PartitionKey": user, "RowKey": ROOM_KEY + room, "Room": room, "JoinedAt": now})
                )
                shared.setdefault(ROOM_KEY + room, []).append(
                    upsert({"PartitionKey": ROOM_KEY + room, "RowKey": user, "UserName": user})
                )
            partitions.append(operations)
            continue
        entity = ConnectionEntity.new(user, connection, hub="chat", user_agent="bench/1.0", now=now)
        partition = entity.partition_key
        if tabs:
            entity = dataclasses.replace(entity, index_bucket=store.index.bucket(now, entity.partition_key))
            entry = store.index.entry(partition, entity.row_key, now, announces=True)
            shared.setdefault(str(entry[1]["PartitionKey"]), []).append(entry)
            state = PresenceState(True, 1)
            operations.append(("create", entity.to_table(), {}))
            operations.append(
                presence_write(
                    partition,
                    Recorded(),
                    writer=uuid.uuid4().hex,
                    user_name=entity.user_name,
                    state=state,
                    version=int(now.timestamp() * 1000),
                )
            )
        for room in rooms_before(kind):
            membership = Membership(room, now)
            operations.append(("create", membership.to_table(partition), {}))
            member_row = index_row(membership, partition, entity.user_name)
            shared.setdefault(str(member_row["PartitionKey"]), []).append(upsert(member_row))
        partitions.append(operations)
    batches = [ops for ops in partitions if ops] + [
        ops[i : i + MAX_BATCH] for ops in shared.values() for i in range(0, len(ops), MAX_BATCH)
    ]
    service = TableServiceClient.from_connection_string(connection_string)
    limit = asyncio.Semaphore(32)

    async def submit(batch: list[Operation]) -> None:
        async with limit:
            await client.submit_transaction(batch)

    try:
        async with service, service.get_table_client(table) as client:
            await asyncio.gather(*(submit(batch) for batch in batches))
    finally:
        await store.close()


async def connect_through_app(tag: str, count: int) -> None:
    """Open each user's tab through the app's `connected` function (the app's settings point at the cell's table).

    The app's join and leave refresh the caller's lease first, free only when this instance opened or last
    refreshed the connection: a process that served the connect is the case timed.
    """
    connected = FUNCTIONS["connected"].get_user_function()
    limit = asyncio.Semaphore(32)

    async def connect(index: int) -> None:
        async with limit:
            payload = invocation("connected", connection_id=connection_of(tag, index), user_id=user_of(tag, index))
            await connected(invocation=payload, signalr=Out())

    await asyncio.gather(*(connect(index) for index in range(count)))


def _payloads(event: Event, tag: str, count: int) -> list[Any]:
    """Pre-build the host's inputs (trigger payloads or HTTP requests) so building them is not timed."""
    if event.kind in ("connect", "disconnect"):
        name = "connected" if event.kind == "connect" else "disconnected"
        return [
            invocation(name, connection_id=connection_of(tag, i), user_id=user_of(tag, i), hub="chat")
            for i in range(count)
        ]
    if event.kind == "send":
        return [
            http_request("POST", "send", body={"to": RECIPIENT, "message": {"text": "hello", "n": i}})
            for i in range(count)
        ]
    if event.kind in CLIENT_KINDS:
        return [client_invocation(event.kind, user_of(tag, i), connection_of(tag, i)) for i in range(count)]
    return [http_request("GET", f"users/{RECIPIENT}", route_params={"user": RECIPIENT}) for _ in range(count)]


def _check_http(response: func.HttpResponse, event: Event, *, deep: bool) -> None:
    if response.status_code != 200:
        raise AssertionError(f"{event.name}: HTTP {response.status_code} {response.get_body()!r}")
    if deep:
        body = json.loads(response.get_body())
        found = body["delivered"] if event.kind == "send" else len(body["connections"])
        if found != event.connections:
            raise AssertionError(f"{event.name}: expected {event.connections} connections, got {found}")


def _check_out(out: Out, event: Event, *, deep: bool) -> None:
    if out.value is None:
        raise AssertionError(f"{event.name}: no presence message was output")
    if deep:
        [message] = out.messages
        expected = event.kind == "connect"
        if message["target"] != "presence" or message["arguments"][0]["online"] is not expected:
            raise AssertionError(f"{event.name}: unexpected output {out.value}")


def check_client_out(out: Out, kind: str, payload: str, *, deep: bool) -> None:
    """Check a client event's output: no error; the caller in the room's group and the room told, or the status."""
    if out.value is None:
        raise AssertionError(f"{kind}: nothing was output")
    if not deep:
        return
    connection = json.loads(payload)["ConnectionId"]
    messages = out.messages
    if any(message.get("target") == "error" for message in messages):
        raise AssertionError(f"{kind}: answered with an error: {out.value}")
    if kind == "set_status":
        statuses = [m["arguments"][0].get("status") for m in messages if m.get("target") == "presence"]
        if statuses != [STATUS]:
            raise AssertionError(f"set_status: unexpected output {out.value}")
        return
    action = "add" if kind == "join" else "remove"
    grouped = {"action": action, "groupName": ROOM, "connectionId": connection} in messages
    told = [m for m in messages if m.get("target") == "room" and m["arguments"][0]["joined"] is (kind == "join")]
    if not grouped or len(told) != 1:
        raise AssertionError(f"{kind}: unexpected output {out.value}")


def ours(event: Event, payloads: list[Any], *, verify_below: int) -> Op:
    """Call the app's function as the host does (from `app.get_functions()`); check each answer."""
    if event.kind in CLIENT_KINDS:
        handler = FUNCTIONS[CLIENT_FUNCTIONS[event.kind][0]].get_user_function()

        async def client_message(index: int) -> None:
            out = Out()
            await handler(invocation=payloads[index], signalr=out)
            check_client_out(out, event.kind, payloads[index], deep=index < verify_below)

        return client_message
    if event.kind in ("connect", "disconnect"):
        function = FUNCTIONS["connected" if event.kind == "connect" else "disconnected"].get_user_function()

        async def trigger(index: int) -> None:
            out = Out()
            await function(invocation=payloads[index], signalr=out)
            _check_out(out, event, deep=index < verify_below)

        return trigger
    if event.kind == "send":
        send = FUNCTIONS["send"].get_user_function()

        async def http_send(index: int) -> None:
            out = Out()
            response = await send(req=payloads[index], signalr=out)
            _check_http(response, event, deep=index < verify_below)

        return http_send
    presence = FUNCTIONS["user_presence"].get_user_function()

    async def http_presence(index: int) -> None:
        _check_http(await presence(req=payloads[index]), event, deep=index < verify_below)

    return http_presence


def floor(event: Event, client: Floor, tag: str, *, verify_below: int) -> Op:
    """The bare SDK calls of the event."""
    if event.kind == "connect":
        return lambda index: client.connect(user_of(tag, index), connection_of(tag, index))
    if event.kind == "disconnect":
        return lambda index: client.disconnect(user_of(tag, index), connection_of(tag, index))
    if event.kind in CLIENT_KINDS:

        async def client_message(index: int) -> None:
            user, connection = user_of(tag, index), connection_of(tag, index)
            if event.kind == "join":
                done = await client.join(user, ROOM)
            elif event.kind == "leave":
                done = await client.leave(user, ROOM)
            else:
                done = await client.set_status(user, connection, STATUS)
            if index < verify_below and not done:
                raise AssertionError(f"{event.name}: the floor found nothing to do")

        return client_message

    async def read(index: int) -> None:
        rows = await client.connections_of(RECIPIENT)
        if index < verify_below and len(rows) != event.connections:
            raise AssertionError(f"{event.name}: the floor read {len(rows)} rows")

    return read


def naive(
    event: Event, functions: NaiveFunctions, payloads: list[Any], pool: ThreadPoolExecutor, *, verify_below: int
) -> Op:
    """The anti-pattern's synchronous function, run on a worker thread as the host runs sync functions."""
    loop = asyncio.get_running_loop()

    def run(index: int) -> None:
        if event.kind in CLIENT_KINDS:
            out = Out()
            getattr(functions, event.kind)(payloads[index], out)
            check_client_out(out, event.kind, payloads[index], deep=index < verify_below)
        elif event.kind in ("connect", "disconnect"):
            out = Out()
            handler = functions.connected if event.kind == "connect" else functions.disconnected
            handler(payloads[index], out)
            _check_out(out, event, deep=index < verify_below)
        elif event.kind == "send":
            _check_http(functions.send(payloads[index], Out()), event, deep=index < verify_below)
        else:
            _check_http(functions.user_presence(payloads[index]), event, deep=index < verify_below)

    return lambda index: loop.run_in_executor(pool, run, index)


@asynccontextmanager
async def prepared(
    impl: str, event: Event, connection_string: str, *, concurrency: int, count: int, verify_below: int
) -> AsyncIterator[Op]:
    """Set up one cell (fresh table, seed rows, the implementation's client) and yield its operation."""
    tag = uuid.uuid4().hex[:8]
    client_event = event.kind in CLIENT_KINDS
    async with fresh_table(connection_string) as table:
        await seed(connection_string, table, event, tag=tag, count=count)
        if client_event and impl != "ours":
            await seed_users(connection_string, table, event.kind, tag=tag, count=count, naive=impl == "naive")
        if impl == "ours":
            await use_app_settings(app_environment(connection_string, table))
            try:
                if client_event:
                    through_app = event.kind != "set_status"  # setStatus does not refresh first: the rows do
                    if through_app:
                        await connect_through_app(tag, count)
                    await seed_users(connection_string, table, event.kind, tag=tag, count=count, tabs=not through_app)
                yield ours(event, _payloads(event, tag, count), verify_below=verify_below)
            finally:
                await runtime.reset()
        elif impl == "floor":
            client = Floor(connection_string, table, ttl=TTL)
            try:
                yield floor(event, client, tag, verify_below=verify_below)
            finally:
                await client.close()
        else:
            functions = NaiveFunctions(connection_string, table)
            pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="naive")
            try:
                yield naive(event, functions, _payloads(event, tag, count), pool, verify_below=verify_below)
            finally:
                pool.shutdown(wait=True)
                functions.close()
