"""Table round trips per event, counted on the wire by a proxy in front of Azurite."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from bench.floor import Floor, MinimalFloor
from bench.naive import NaiveFunctions
from bench.proxy import CountingProxy
from bench.workload import (
    CLIENT_FUNCTIONS,
    RECIPIENT,
    ROOM,
    STATUS,
    TTL,
    Event,
    app_environment,
    check_client_out,
    client_invocation,
    fresh_table,
    rooms_before,
    seed,
    use_app_settings,
)
from mapping.presence.rows import utc_now
from mapping.presence.store import ConnectionStore
from mapping.rooms.membership import Rooms
from mapping.settings import Settings, StorageConnection
from mapping.sweep import sweep
from testkit.azurite import connection_string
from testkit.functions_host import FUNCTIONS, Out, http_request, invocation


def _counted(counts: Counter[str]) -> dict[str, Any]:
    return {"total": sum(counts.values()), "by_operation": dict(sorted(counts.items()))}


async def _count(proxy: CountingProxy, action: Callable[[], Awaitable[object]]) -> dict[str, Any]:
    with proxy.counting() as counts:
        await action()
    return _counted(counts)


async def _count_sync(proxy: CountingProxy, action: Callable[[], object]) -> dict[str, Any]:
    with proxy.counting() as counts:
        await asyncio.to_thread(action)
    return _counted(counts)


async def _event_counts(
    proxy: CountingProxy,
    direct: str,
    *,
    kind: str,
    connections: int = 0,
    presence: bool = True,
    cold: bool = False,
    other_tabs: int = 0,
) -> dict[str, Any]:
    """Count one event for each implementation, each on a warmed-up client, the user having `other_tabs` open."""
    via_proxy = connection_string(proxy.port)
    event = Event(kind, kind, kind, connections)
    results: dict[str, Any] = {}
    for impl in ("minimal", "floor", "ours", "naive"):
        if (cold and impl != "ours") or (impl == "naive" and (not presence or other_tabs)):
            continue  # only the app keeps per-process state; the naive way has no presence switch
        async with fresh_table(direct) as table:
            # Two users: index 0 warms up, index 1 is counted.
            await seed(direct, table, event, tag="rt", count=2)
            await _open_tabs(direct, table, kind=kind, other_tabs=other_tabs)
            results[impl] = await _count_impl(impl, proxy, via_proxy, table, event, presence=presence, cold=cold)
    return results


async def _open_tabs(direct: str, table: str, *, kind: str, other_tabs: int) -> None:
    """Open the users' other tabs as the app would (presence row included), before the counted event."""
    if not other_tabs:
        return
    store = ConnectionStore(Settings(StorageConnection(connection_string=direct), table_name=table, ttl=TTL))
    try:
        for index in (0, 1):
            tabs = [f"c{index}-rt-other{n}" for n in range(other_tabs)]
            if kind == "disconnect":
                tabs.append(f"c{index}-rt")  # the tab to close, written through the app like the others
            for tab in tabs:
                await store.connect(f"u{index}-rt", tab, hub="chat")
    finally:
        await store.close()


async def _count_impl(
    impl: str, proxy: CountingProxy, via_proxy: str, table: str, event: Event, *, presence: bool, cold: bool
) -> dict[str, Any]:
    user = {0: "u0-rt", 1: "u1-rt"}
    conn = {0: "c0-rt", 1: "c1-rt"}
    if impl in ("floor", "minimal"):
        client = (Floor if impl == "floor" else MinimalFloor)(via_proxy, table, ttl=TTL)
        try:
            if event.kind == "connect":
                await client.connect(user[0], conn[0], presence=presence)
                return await _count(proxy, lambda: client.connect(user[1], conn[1], presence=presence))
            if event.kind == "disconnect":
                await client.disconnect(user[0], conn[0], presence=presence)
                return await _count(proxy, lambda: client.disconnect(user[1], conn[1], presence=presence))
            await client.connections_of(RECIPIENT)
            return await _count(proxy, lambda: client.connections_of(RECIPIENT))
        finally:
            await client.close()
    if impl == "naive":
        functions = NaiveFunctions(via_proxy, table)
        try:
            return await _count_sync(proxy, lambda: _naive_call(functions, event, user[1], conn[1]))
        finally:
            functions.close()
    await use_app_settings(app_environment(via_proxy, table, presence=presence))
    try:
        if not cold:
            await _ours_call(event, user[0], conn[0])
        return await _count(proxy, lambda: _ours_call(event, user[1], conn[1]))
    finally:
        await use_app_settings({})


def _naive_call(functions: NaiveFunctions, event: Event, user: str, conn: str) -> None:
    if event.kind == "connect":
        functions.connected(invocation("connected", connection_id=conn, user_id=user), Out())
    elif event.kind == "disconnect":
        functions.disconnected(invocation("disconnected", connection_id=conn, user_id=user), Out())
    elif event.kind == "send":
        functions.send(http_request("POST", "send", body={"to": RECIPIENT, "message": "hi"}), Out())
    else:
        functions.user_presence(http_request("GET", "users/bob", route_params={"user": RECIPIENT}))


async def _ours_call(event: Event, user: str, conn: str) -> None:
    if event.kind in ("connect", "disconnect"):
        name = "connected" if event.kind == "connect" else "disconnected"
        payload = invocation(name, connection_id=conn, user_id=user)
        await FUNCTIONS[name].get_user_function()(invocation=payload, signalr=Out())
    elif event.kind == "send":
        request = http_request("POST", "send", body={"to": RECIPIENT, "message": "hi"})
        response = await FUNCTIONS["send"].get_user_function()(req=request, signalr=Out())
        assert response.status_code == 200, response.get_body()
    else:
        request = http_request("GET", "users/bob", route_params={"user": RECIPIENT})
        response = await FUNCTIONS["user_presence"].get_user_function()(req=request)
        assert response.status_code == 200, response.get_body()


async def _client_event_counts(
    proxy: CountingProxy, direct: str, *, kind: str, member: bool = False, elsewhere: bool = False
) -> dict[str, Any]:
    """Count a client's join, setStatus or leave for each implementation, on a warmed-up client.

    Each implementation brings its users to the state before the event with its own operations (a connect,
    then joins of the rooms the event starts from: `rooms_before`, and the room itself when `member`), and is
    counted on the second user after a warm-up on the first. `elsewhere`: the user's tab was opened by
    another instance (ours only: the app refreshes the caller's lease first, free only for a connection
    this instance opened or refreshed).
    """
    via_proxy = connection_string(proxy.port)
    rooms = (*rooms_before(kind), *((ROOM,) if member else ()))
    results: dict[str, Any] = {}
    for impl in ("minimal", "floor", "ours", "naive"):
        if elsewhere and impl != "ours":
            continue
        async with fresh_table(direct) as table:
            if impl in ("floor", "minimal"):
                results[impl] = await _count_floor_client(impl, proxy, via_proxy, table, kind, rooms)
            elif impl == "naive":
                results[impl] = await _count_naive_client(proxy, via_proxy, table, kind, rooms)
            else:
                results[impl] = await _count_ours_client(proxy, via_proxy, direct, table, kind, rooms, elsewhere)
    return results


async def _count_floor_client(
    impl: str, proxy: CountingProxy, via_proxy: str, table: str, kind: str, rooms: tuple[str, ...]
) -> dict[str, Any]:
    client = (Floor if impl == "floor" else MinimalFloor)(via_proxy, table, ttl=TTL)

    async def event(index: int) -> None:
        user, connection = f"u{index}-rt", f"c{index}-rt"
        if kind == "join":
            await client.join(user, ROOM)
        elif kind == "leave":
            await client.leave(user, ROOM)
        else:
            await client.set_status(user, connection, STATUS)

    try:
        for index in (0, 1):
            await client.connect(f"u{index}-rt", f"c{index}-rt")
            for room in rooms:
                await client.join(f"u{index}-rt", room)
        await event(0)
        return await _count(proxy, lambda: event(1))
    finally:
        await client.close()


async def _count_naive_client(
    proxy: CountingProxy, via_proxy: str, table: str, kind: str, rooms: tuple[str, ...]
) -> dict[str, Any]:
    functions = NaiveFunctions(via_proxy, table)

    def event(index: int, method: str = kind, argument: str | None = None) -> None:
        out, payload = Out(), _payload(method, index, argument)
        getattr(functions, method)(payload, out)
        if argument is None:
            check_client_out(out, method, payload, deep=True)

    def prepare() -> None:
        for index in (0, 1):
            functions.connected(invocation("connected", connection_id=f"c{index}-rt", user_id=f"u{index}-rt"), Out())
            for room in rooms:
                event(index, "join", room)
        event(0)

    try:
        await asyncio.to_thread(prepare)
        return await _count_sync(proxy, lambda: event(1))
    finally:
        functions.close()


async def _count_ours_client(
    proxy: CountingProxy,
    via_proxy: str,
    direct: str,
    table: str,
    kind: str,
    rooms: tuple[str, ...],
    elsewhere: bool,
) -> dict[str, Any]:
    await use_app_settings(app_environment(via_proxy, table))

    async def call(index: int, method: str = kind, argument: str | None = None) -> None:
        out, payload = Out(), _payload(method, index, argument)
        await FUNCTIONS[CLIENT_FUNCTIONS[method][0]].get_user_function()(invocation=payload, signalr=out)
        if argument is None:
            check_client_out(out, method, payload, deep=True)

    try:
        if elsewhere:
            opened = Settings(StorageConnection(connection_string=direct), table_name=table, ttl=TTL, rooms_open=("*",))
            other = ConnectionStore(opened)
            try:
                for index in (0, 1):
                    await other.connect(f"u{index}-rt", f"c{index}-rt", hub="chat")
                    for room in rooms:
                        await Rooms(other).join(f"u{index}-rt", room)
            finally:
                await other.close()
        else:
            for index in (0, 1):
                await FUNCTIONS["connected"].get_user_function()(
                    invocation=invocation("connected", connection_id=f"c{index}-rt", user_id=f"u{index}-rt"),
                    signalr=Out(),
                )
                for room in rooms:
                    await call(index, "join", room)
        await call(0)
        return await _count(proxy, lambda: call(1))
    finally:
        await use_app_settings({})


def _payload(method: str, index: int, argument: str | None) -> str:
    """The invocation of user `index`'s client message: the event's own argument, or `argument` (e.g. a room)."""
    user, connection = f"u{index}-rt", f"c{index}-rt"
    if argument is None:
        return client_invocation(method, user, connection)
    return invocation(CLIENT_FUNCTIONS[method][1], connection_id=connection, user_id=user, arguments=[argument])


async def _sweep_counts(proxy: CountingProxy, direct: str, *, expired: int, users: int, live: int) -> dict[str, Any]:
    """Count one `sweep(store)` over `expired` expired rows spread over `users` users, beside `live` live rows."""
    async with fresh_table(direct) as table:
        seeder = ConnectionStore(
            Settings(StorageConnection(connection_string=direct), table_name=table, ttl=TTL, presence_events=False)
        )
        past = utc_now() - TTL - timedelta(minutes=5)
        limit = asyncio.Semaphore(32)

        async def connect_all(user: str, conns: list[str], *, expired: bool) -> None:
            # One user's tabs in turn: a user's connects are serialised on their partition.
            async with limit:
                for conn in conns:
                    await seeder.connect(user, conn, hub="chat", now=past if expired else None)

        try:
            await asyncio.gather(
                *(
                    connect_all(f"x{u}", [f"xc{i}" for i in range(u, expired, users)], expired=True)
                    for u in range(users)
                ),
                *(connect_all(f"l{i}", [f"lc{i}"], expired=False) for i in range(live)),
            )
        finally:
            await seeder.close()
        store = ConnectionStore(
            Settings(StorageConnection(connection_string=connection_string(proxy.port)), table_name=table, ttl=TTL)
        )
        try:
            await store.connections_of("warm-up")  # opens the client and the table, like any earlier call would
            with proxy.counting() as counts:
                try:
                    result: Any = await sweep(store)
                    outcome = (
                        # JSON-ready: the presence changes carry datetimes (last seen).
                        json.loads(json.dumps(dataclasses.asdict(result), default=str))
                        if dataclasses.is_dataclass(result) and not isinstance(result, type)
                        else repr(result)
                    )
                except Exception as error:  # a sweep that needs more than a table is reported, not fatal
                    outcome = f"failed: {type(error).__name__}: {error}"
        finally:
            await store.close()
    return {"ours": _counted(counts), "result": outcome}


INDEX_ENTRY = "the expiry-index entry that keeps the sweep's cost to the stale rows"

# Each counted event: label, options, and why ours makes more requests than the minimal floor, where it does.
SCENARIOS: list[tuple[str, dict[str, Any], str]] = [
    ("first connect, presence on", {"kind": "connect"}, INDEX_ENTRY),
    ("second connect (one tab open), presence on", {"kind": "connect", "other_tabs": 1}, INDEX_ENTRY),
    (
        "connect, presence off",
        {"kind": "connect", "presence": False},
        f"{INDEX_ENTRY}, and the read of the user: it gives the user's rooms, whose groups the new connection "
        "joins, and the ETag that serialises the connect with a racing join (rooms R2, R3)",
    ),
    ("first connect in a new process (presence on)", {"kind": "connect", "cold": True}, ""),
    ("last disconnect, presence on", {"kind": "disconnect"}, ""),
    ("other disconnect (one tab stays), presence on", {"kind": "disconnect", "other_tabs": 1}, ""),
    ("disconnect, presence off", {"kind": "disconnect", "presence": False}, ""),
    ("HTTP send, user with 1 connection", {"kind": "send", "connections": 1}, ""),
    ("HTTP send, user with 10 connections", {"kind": "send", "connections": 10}, ""),
    ("HTTP send, user with 100 connections", {"kind": "send", "connections": 100}, ""),
    ("GET users/{user} (10 connections)", {"kind": "presence", "connections": 10}, ""),
]
CLIENT_SCENARIOS: list[tuple[str, dict[str, Any], str]] = [
    (
        "join(room), a new room (one tab, in 1 room)",
        {"kind": "join"},
        "the index row's pending flag cleared once the membership commits (roster C3: until then a snapshot "
        "checks the row against the user's partition)",
    ),
    ("join(room), already a member", {"kind": "join", "member": True}, ""),
    (
        "join(room) on an instance that did not open the tab",
        {"kind": "join", "elsewhere": True},
        "the caller's lease refreshed first: a read, an index entry and a transaction of its own",
    ),
    (
        "setStatus(status) (one tab)",
        {"kind": "set_status"},
        "the expiry-index entry: setStatus also refreshes the caller's lease",
    ),
    (
        "leave(room), a member (one tab, in 2 rooms)",
        {"kind": "leave"},
        "the read (the leave commits on the presence row's ETag, R2, and removes the live connections from the "
        "group), and the index row flagged pending (roster C3), so a snapshot, one query of the room, need not "
        "verify every member",
    ),
]


async def count_round_trips(direct: str, *, sweep_rows: int = 100) -> list[dict[str, Any]]:
    """Count the table requests of each event and of a few sweeps; return one row per scenario."""
    rows: list[dict[str, Any]] = []
    with CountingProxy(_port_of(direct)) as proxy:
        for label, options, why in SCENARIOS:
            rows.append({"scenario": label, **await _event_counts(proxy, direct, **options), "why": why})
        rows += await _client_rows(proxy, direct)
        sweeps = [
            (f"sweep, 0 expired among {sweep_rows} live rows", {"expired": 0, "users": 1, "live": sweep_rows}),
            (
                f"sweep, {sweep_rows} expired rows of {sweep_rows} users",
                {"expired": sweep_rows, "users": sweep_rows, "live": sweep_rows},
            ),
            (f"sweep, {sweep_rows} expired rows of 1 user", {"expired": sweep_rows, "users": 1, "live": sweep_rows}),
        ]
        for label, options in sweeps:
            rows.append({"scenario": label, **await _sweep_counts(proxy, direct, **options)})
    return rows


async def count_client_round_trips(direct: str) -> list[dict[str, Any]]:
    """Count the table requests of the client events only (join, setStatus, leave): one row per scenario."""
    with CountingProxy(_port_of(direct)) as proxy:
        return await _client_rows(proxy, direct)


async def _client_rows(proxy: CountingProxy, direct: str) -> list[dict[str, Any]]:
    return [
        {"scenario": label, **await _client_event_counts(proxy, direct, **options), "why": why}
        for label, options, why in CLIENT_SCENARIOS
    ]


def _port_of(connection: str) -> int:
    endpoint = next(part for part in connection.split(";") if part.startswith("TableEndpoint="))
    return int(endpoint.split(":")[-1].split("/")[0])
