"""Follow presence from a Python server (a bot, a notification worker) as the browser library does.

The standard library and aiohttp only, so this file and the `presence_follower` package next to it can be copied
into another project. It negotiates with the app's `POST /api/negotiate` using the caller's headers (in Azure
`Authorization: Bearer <token>` that App Service Authentication accepts; locally `x-ms-client-principal-name:
<user>`), opens the SignalR WebSocket (JSON hub protocol), sends `join(room)`, `watch(users)` and
`watchOccupancy(room)` fire-and-forget, and keeps a `Presence` map merged from `presence`, `presenceSync`,
`presenceBatch` and `occupancy` by version only. A dropped socket is followed by a new negotiate and the joins,
watches and occupancy watches sent again (fresh snapshots); a call answered `error` with `retry: true` is sent again;
both back off.

    async with PresenceFollower(api, headers={"Authorization": f"Bearer {token}"}, rooms=["lobby"],
                                on_change=lambda state, previous: print(state)) as follower:
        await follower.wait_closed()

    python client/python/follow_presence.py --api http://127.0.0.1:7071/api --user bot --room lobby

This module is the command line and the public names; the work is in `presence_follower`: `names` (the server's
name rules), `presence` (the map merged by version), `connection` (`PresenceFollower`, the SignalR client).
See client/python/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING or __package__:  # imported as client.python.follow_presence (mypy reads it so)
    from .presence_follower import connection, names, presence
else:  # run as a file, or imported as follow_presence with client/python on sys.path
    from presence_follower import connection, names, presence

__all__ = [
    "LOCAL_PRINCIPAL_HEADER",
    "MAX_NAME_LENGTH",
    "MAX_USERS_PER_CALL",
    "Backoff",
    "ChangeHandler",
    "ErrorHandler",
    "HandshakeError",
    "Headers",
    "MembersHandler",
    "NegotiateError",
    "Occupancy",
    "OccupancyHandler",
    "Presence",
    "PresenceFollower",
    "SyncHandler",
    "UserState",
    "check_room",
    "fold_user_name",
    "main",
    "normalize_user_name",
]

LOCAL_PRINCIPAL_HEADER = connection.PRINCIPAL_HEADER  # "x-ms-client-principal-name"

normalize_user_name = names.normalize_user_name
fold_user_name = names.fold_user_name
check_room = names.check_room
MAX_NAME_LENGTH = names.MAX_NAME_LENGTH
UserState = presence.UserState
Occupancy = presence.Occupancy
Presence = presence.Presence
ChangeHandler = presence.ChangeHandler
SyncHandler = presence.SyncHandler
MembersHandler = presence.MembersHandler
OccupancyHandler = presence.OccupancyHandler
PresenceFollower = connection.PresenceFollower
Backoff = connection.Backoff
NegotiateError = connection.NegotiateError
HandshakeError = connection.HandshakeError
Headers = connection.Headers
ErrorHandler = connection.ErrorHandler
MAX_USERS_PER_CALL = connection.MAX_USERS_PER_CALL


# ---- the command line ------------------------------------------------------------------------------------------


def _print(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def _follow(arguments: argparse.Namespace) -> int:
    headers: dict[str, str] = {}
    token = arguments.token or os.environ.get("FOLLOW_PRESENCE_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if arguments.user:
        headers[LOCAL_PRINCIPAL_HEADER] = arguments.user
    for header in arguments.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    follower: PresenceFollower

    def on_change(state: UserState, previous: UserState | None) -> None:
        previous_json = previous.to_json() if previous else None
        _print({"event": "change", "user": state.user, "state": state.to_json(), "previous": previous_json})

    def on_sync(room: str | None) -> None:
        if room is None:
            states = [follower.presence.of(user) for user in follower.watched()]
            _print({"event": "sync", "room": None, "users": [s.to_json() for s in states if s is not None]})
        else:
            _print({"event": "sync", "room": room, "members": [s.to_json() for s in follower.presence.members(room)]})

    def on_members(room: str, user: str, joined: bool) -> None:
        _print({"event": "members", "room": room, "user": user, "joined": joined})

    def on_occupancy(occupancy: Occupancy) -> None:
        _print({"event": "occupancy", **occupancy.to_json()})

    def on_error(error: Mapping[str, Any]) -> None:
        _print({"event": "error", "error": dict(error)})

    def on_connected(connection_id: str) -> None:
        _print({"event": "connected", "connectionId": connection_id})

    follower = PresenceFollower(
        arguments.api,
        headers=headers,
        rooms=arguments.room,
        users=arguments.watch,
        occupancy_rooms=arguments.occupancy,
        on_change=on_change,
        on_sync=on_sync,
        on_members=on_members,
        on_occupancy=on_occupancy,
        on_error=on_error,
        on_connected=on_connected,
    )
    try:
        await follower.start()
    except NegotiateError as error:
        sys.stderr.write(f"follow_presence: {error}\n")
        return 2 if error.not_signed_in else 1
    except (aiohttp.ClientError, OSError, HandshakeError, TimeoutError) as error:
        sys.stderr.write(f"follow_presence: cannot connect: {error}\n")
        return 1
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Ctrl-C or a service manager's stop; also where a shell started it in the background with SIGINT ignored.
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' event loop: Ctrl-C raises
            loop.add_signal_handler(signum, stopped.set)
    closed, stop = asyncio.ensure_future(follower.wait_closed()), asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({closed, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        stop.cancel()
        await follower.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Follow rooms and users, printing each change as a JSON line, until interrupted."""
    parser = argparse.ArgumentParser(description="Follow presence in the connection mapper; print JSON lines.")
    parser.add_argument("--api", required=True, help="the app's API base, e.g. https://<app>.azurewebsites.net/api")
    parser.add_argument("--user", help=f"local stack only: sent as {LOCAL_PRINCIPAL_HEADER}")
    parser.add_argument("--token", help="a bearer token App Service Authentication accepts ($FOLLOW_PRESENCE_TOKEN)")
    parser.add_argument("--header", action="append", default=[], help="another negotiate header, 'Name: value'")
    parser.add_argument("--room", action="append", default=[], help="a room to join and follow (repeatable)")
    parser.add_argument("--watch", action="append", default=[], help="a user to watch (repeatable)")
    parser.add_argument("--occupancy", action="append", default=[], help="a room whose occupancy to watch (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections and reconnects to stderr")
    arguments = parser.parse_args(argv)
    if not arguments.room and not arguments.watch and not arguments.occupancy:
        parser.error("give at least one --room, --watch or --occupancy")
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_follow(arguments))
    return 130


if __name__ == "__main__":
    sys.exit(main())
