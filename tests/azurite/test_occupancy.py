"""A room's occupancy (mapping/rooms/tally.py) through the functions against Azurite: the tally over HTTP in one table
request, the `occupancy` messages a watching client hears, who may watch, and a room counted before tallies existed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mapping.functions import runtime
from mapping.keys import room_partition, user_key
from mapping.presence.rows import Membership
from mapping.rooms.index import STALE_INDEX_ROW, index_row
from mapping.rooms.membership import Rooms
from mapping.rooms.tally import TALLY_ROW, Tally, contribution
from mapping.storage.table import create, delete, etag_of, merge
from testkit.azurite import Azurite
from testkit.functions_host import Out, client_sent, connected, disconnected, http, http_request
from testkit.table_requests import counted_table_requests
from testkit.tables import all_rows

pytestmark = pytest.mark.usefixtures("app_env")


async def occupancy(room: str) -> tuple[int, Any]:
    """GET /api/rooms/{room}/occupancy; return the status and JSON body."""
    request = http_request("GET", f"rooms/{room}/occupancy", route_params={"room": room})
    status, body, _ = await http("room_occupancy", request)
    return status, body


def heard(out: Out) -> list[tuple[str | None, dict[str, Any]]]:
    """Return the `occupancy` messages of an output: (group or connection, argument)."""
    return [
        (m.get("groupName") or m.get("connectionId"), m["arguments"][0])
        for m in out.messages
        if m.get("target") == "occupancy"
    ]


async def test_the_tally_counts_members_and_online_members_and_answers_in_one_request(
    azurite: Azurite, app_env: dict[str, str]
) -> None:
    """Three members, one of them offline: the occupancy says 3 and 2, read with one table request, and the tally row
    is the sum of its index rows (T1)."""
    for user, tab in (("ann", "a1"), ("bob", "b1"), ("cy", "c1")):
        await connected(user, tab)
        await client_sent("join_room", "join", user, tab, "hall")
    await disconnected("cy", "c1")
    with counted_table_requests() as requests:
        status, body = await occupancy("hall")
    assert status == 200
    assert {k: body[k] for k in ("room", "members", "online")} == {"room": "hall", "members": 3, "online": 2}
    assert body["version"] > 0
    assert requests.total == 1
    rows = [r for r in await all_rows(azurite, app_env["MAPPING_TABLE"]) if r["PartitionKey"] == room_partition("hall")]
    summed = [contribution(r) for r in rows if r["RowKey"] != TALLY_ROW]
    assert (sum(m for m, _ in summed), sum(o for _, o in summed)) == (3, 2)


async def test_an_unknown_room_has_no_members_and_a_bad_name_is_a_400() -> None:
    """A room nobody joined: 0 and 0 at version 0; a name that is no room: 400 with a JSON error."""
    assert await occupancy("nobody-here") == (200, {"room": "nobody-here", "members": 0, "online": 0, "version": 0})
    status, body = await occupancy("no room!")
    assert status == 400
    assert "room" in body["error"]


async def test_a_watching_client_hears_every_change_of_the_counts_with_growing_versions() -> None:
    """watchOccupancy answers the counts now; then a join, a tab closing and a leave each reach the room's occupancy
    group with a higher version, and a status change (no change of counts) sends none."""
    await connected("wes", "w1")
    await connected("ann", "a1")
    await client_sent("join_room", "join", "wes", "w1", "deck")
    watch = await client_sent("watch_occupancy", "watchOccupancy", "wes", "w1", "deck")
    assert {"action": "add", "groupName": "~occupancy.deck", "connectionId": "w1"} in watch.messages
    [(to, now)] = heard(watch)
    assert (to, now["members"], now["online"]) == ("w1", 1, 1)
    versions = [now["version"]]
    joined = heard(await client_sent("join_room", "join", "ann", "a1", "deck"))
    assert [(to, o["members"], o["online"]) for to, o in joined] == [("~occupancy.deck", 2, 2)]
    status = heard(await client_sent("set_status", "setStatus", "ann", "a1", "away"))
    assert status == []
    gone = heard(await disconnected("ann", "a1"))
    assert [(o["members"], o["online"]) for _, o in gone] == [(2, 1)]
    left = heard(await client_sent("leave_room", "leave", "wes", "w1", "deck"))
    assert [(o["members"], o["online"]) for _, o in left] == [(1, 0)]
    versions += [o["version"] for _, o in joined + gone + left]
    assert versions == sorted(set(versions))
    unwatch = await client_sent("unwatch_occupancy", "unwatchOccupancy", "wes", "w1", "deck")
    assert unwatch.messages == [{"action": "remove", "groupName": "~occupancy.deck", "connectionId": "w1"}]


async def test_only_a_user_who_may_see_the_room_may_watch_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With rooms closed, a member may watch its room's occupancy; anyone else is refused, joining no group."""
    monkeypatch.setenv("ROOMS_OPEN", "")
    await runtime.reset()
    await connected("mo", "m1")
    await connected("eve", "e1")
    await Rooms(runtime.store()).grant("mo", "vault")
    allowed = await client_sent("watch_occupancy", "watchOccupancy", "mo", "m1", "vault")
    assert [o["members"] for _, o in heard(allowed)] == [1]
    refused = await client_sent("watch_occupancy", "watchOccupancy", "eve", "e1", "vault")
    assert not [m for m in refused.messages if m.get("action") == "add"]
    [error] = [m["arguments"][0] for m in refused.messages if m.get("target") == "error"]
    assert (error["error"], error["call"]) == ("this room is closed to you", "watchOccupancy")


async def test_listing_a_room_that_settles_a_stale_row_announces_the_corrected_counts() -> None:
    """A join that stopped after writing its index row (counted as a member, T1) is deleted by the member listing once
    stale (R1): the listing's output tells the room's watchers the corrected counts, with a higher version."""
    await connected("ann", "a1")
    await client_sent("join_room", "join", "ann", "a1", "den")
    store = runtime.store()
    partition = room_partition("den")
    stopped = datetime.now(UTC) - STALE_INDEX_ROW - timedelta(minutes=1)
    [tally] = await store.table.query(
        "PartitionKey eq @pk and RowKey eq @rk", {"pk": partition, "rk": TALLY_ROW}, action="read a tally"
    )
    before = Tally.from_row(tally)
    await store.table.transact(
        [
            create(index_row(Membership("den", stopped), user_key("ghost"), "ghost")),
            merge({"PartitionKey": partition, "RowKey": TALLY_ROW, "Members": before.members + 1}, etag=etag_of(tally)),
        ],
        action="a join that stopped half way",
    )
    assert (await occupancy("den"))[1]["members"] == 2
    out = Out()
    request = http_request("GET", "rooms/den", route_params={"room": "den"})
    status, body, _ = await http("room_members", request, signalr=out)
    assert (status, [m["user"] for m in body["members"]]) == (200, ["ann"])
    [(to, told)] = heard(out)
    assert (to, told["members"], told["online"]) == ("~occupancy.den", 1, 1)
    assert told["version"] > before.version
    assert (await occupancy("den"))[1] == told


async def test_a_room_from_before_tallies_is_counted_by_a_scan_once(azurite: Azurite, app_env: dict[str, str]) -> None:
    """A room whose tally row is missing (joined before tallies existed) is counted by a scan, the tally is kept, and
    the next change counts on from it (T3)."""
    for user, tab in (("ida", "i1"), ("jo", "j1")):
        await connected(user, tab)
        await client_sent("join_room", "join", user, tab, "old")
    store = runtime.store()
    await store.table.write(delete(room_partition("old"), TALLY_ROW), action="forget a tally")
    assert (await occupancy("old"))[1]["members"] == 2
    with counted_table_requests() as requests:
        assert (await occupancy("old"))[1]["members"] == 2
    assert requests.total == 1  # kept by the first read
    await connected("kai", "k1")
    await client_sent("join_room", "join", "kai", "k1", "old")
    assert {k: v for k, v in (await occupancy("old"))[1].items() if k != "version"} == {
        "room": "old",
        "members": 3,
        "online": 3,
    }


async def test_concurrent_changes_of_one_room_all_count() -> None:
    """Twenty users join one room at once and ten of them close their tab at once: every change is counted (each
    writer retries on the tally's ETag)."""
    users = [f"u{n:02d}" for n in range(20)]
    for user in users:
        await connected(user, f"{user}-t")
    await asyncio.gather(*(client_sent("join_room", "join", user, f"{user}-t", "crowd") for user in users))
    await asyncio.gather(*(disconnected(user, f"{user}-t") for user in users[:10]))
    body = (await occupancy("crowd"))[1]
    assert (body["members"], body["online"]) == (20, 10)


@pytest.mark.parametrize("user", [",a", "0\u20280"])
async def test_a_member_whose_transactions_azurite_refuses_is_still_counted(
    user: str, azurite: Azurite, app_env: dict[str, str]
) -> None:
    """Azurite answers 404 (a key beginning with a comma, found by fuzzing) or 400 (U+2028) to a transaction with
    nothing changed: the row and the tally are then written one after the other, and every change still counts."""

    async def counts() -> tuple[int, int]:
        body = (await occupancy("odd"))[1]
        rows = [
            r for r in await all_rows(azurite, app_env["MAPPING_TABLE"]) if r["PartitionKey"] == room_partition("odd")
        ]
        summed = [contribution(r) for r in rows if r["RowKey"] != TALLY_ROW]
        assert (body["members"], body["online"]) == (sum(m for m, _ in summed), sum(o for _, o in summed))  # T1
        return body["members"], body["online"]

    def no_error(out: Out) -> Out:
        assert not [m for m in out.messages if m.get("target") == "error"], out.messages
        return out

    await connected("anchor", "n1")
    no_error(await client_sent("join_room", "join", "anchor", "n1", "odd"))
    await connected(user, "u1")
    no_error(await client_sent("join_room", "join", user, "u1", "odd"))
    assert await counts() == (2, 2)
    await disconnected(user, "u1")
    assert await counts() == (2, 1)
    await connected(user, "u2")
    assert await counts() == (2, 2)
    no_error(await client_sent("leave_room", "leave", user, "u2", "odd"))
    assert await counts() == (1, 1)
