"""Who may go where, through the functions against Azurite: closed rooms, grants and revokes, the app's access
policy with the token's claims, direct messages and watching by policy (rooms R4)."""

from __future__ import annotations

from typing import Any

import pytest

from mapping import events
from mapping.errors import SignalRUnavailableError
from mapping.functions import runtime
from mapping.keys import REVOKED_PREFIX, room_partition, user_key
from mapping.presence.store import ConnectionStore
from mapping.rooms.membership import Rooms
from mapping.rooms.policy import AccessPolicy, Claims
from mapping.rooms.tally import TALLY_ROW
from mapping.rooms.watch import MAX_WATCHED_PER_CONNECTION
from mapping.signalr.invocation import parse_invocation
from mapping.signalr.liveness import GroupMembers, Listing, Liveness
from testkit.azurite import Azurite
from testkit.functions_host import Out, client_sent, connected, http, http_request, invocation
from testkit.tables import all_rows

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture(autouse=True)
async def closed_rooms(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped defaults: presence scoped, rooms closed but `lobby` and `public.*`, watching room members only."""
    monkeypatch.setenv("PRESENCE_AUDIENCE", "scoped")
    monkeypatch.setenv("ROOMS_OPEN", "lobby public.*")
    monkeypatch.setenv("PRESENCE_WATCH", "room-members")
    monkeypatch.setenv("DIRECT_MESSAGES", "shared-room")
    await runtime.reset()


class Groups:
    """Stands in for SignalR's REST group calls: records each confirmed action, or confirms none."""

    asks_service = True

    def __init__(self, *, confirms: bool = True) -> None:
        self.confirms = confirms
        self.actions: list[tuple[str, str, str]] = []

    async def add_to_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Record the addition."""
        self.actions.append(("add", group, connection_id))
        return self.confirms

    async def remove_from_group(self, hub: str, group: str, connection_id: str) -> bool:
        """Record the removal."""
        self.actions.append(("remove", group, connection_id))
        return self.confirms


class StaffOnly(AccessPolicy):
    """An app's policy: a token with the claim `role: staff` may join `staff.*` rooms, message and watch anyone;
    it records every claim set it was given."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def may_join(self, user: str, room: str, claims: Claims) -> bool | None:
        """Admit staff to staff rooms."""
        self.seen.append(dict(claims))
        return room.startswith("staff.") and claims.get("role") == "staff"

    async def may_message(self, user: str, recipient: str, claims: Claims) -> bool | None:
        """Staff may message anyone; the setting decides for the others."""
        self.seen.append(dict(claims))
        return True if claims.get("role") == "staff" else None

    async def may_watch(self, user: str, watched: str, claims: Claims) -> bool | None:
        """Staff may watch anyone; nobody may watch `ceo`; the setting decides the rest."""
        self.seen.append(dict(claims))
        if watched == "ceo":
            return False
        return True if claims.get("role") == "staff" else None


def errors(out: Out | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the error messages' arguments."""
    messages = out.messages if isinstance(out, Out) else out
    return [m["arguments"][0] for m in messages if m.get("target") == "error"]


def group_actions(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Return the group actions as (action, group, connection)."""
    return [(m["action"], m["groupName"], m["connectionId"]) for m in messages if "action" in m]


async def member_rows(azurite: Azurite, room: str) -> list[str]:
    """Return the user keys of a room's member index, read straight from Azurite."""
    table = runtime.store().settings.table_name
    rows = await all_rows(azurite, table)
    return [str(r["RowKey"]) for r in rows if r["PartitionKey"] == room_partition(room) and r["RowKey"] != TALLY_ROW]


async def user_rows(azurite: Azurite, user: str) -> list[str]:
    """Return the RowKeys of a user's partition, read straight from Azurite."""
    table = runtime.store().settings.table_name
    return sorted(str(r["RowKey"]) for r in await all_rows(azurite, table) if r["PartitionKey"] == user_key(user))


async def room_member(method: str, room: str, user: str) -> tuple[int, dict[str, Any], Out]:
    """PUT or DELETE /api/rooms/{room}/members/{user}; return status, body and the SignalR output."""
    out = Out()
    request = http_request(method, f"rooms/{room}/members/{user}", route_params={"room": room, "user": user})
    status, body, _ = await http("room_member", request, signalr=out)
    return status, body, out


async def test_a_stranger_joining_a_closed_room_gets_one_error_and_nothing_else(azurite: Azurite) -> None:
    """A join of a room that is neither open nor granted answers the caller one error (refused, the room named):
    no row written, no group action, no announcement, no snapshot."""
    await connected("bob", "b1")
    await client_sent("join_room", "join", "bob", "b1", "lobby")  # open
    await connected("mallory", "m1")
    before = await user_rows(azurite, "mallory")
    out = await client_sent("join_room", "join", "mallory", "m1", "secret-board")
    assert out.messages == [
        {
            "target": "error",
            "connectionId": "m1",
            "arguments": [
                {"error": "this room is closed to you", "room": "secret-board", "refused": True, "call": "join"}
            ],
        }
    ]
    assert await user_rows(azurite, "mallory") == before
    assert await member_rows(azurite, "secret-board") == []


@pytest.mark.parametrize(
    ("room", "open_"), [("lobby", True), ("public.chess", True), ("lobby2", False), ("pub", False)]
)
async def test_rooms_open_takes_names_and_prefixes(room: str, open_: bool) -> None:
    """ROOMS_OPEN `lobby public.*` opens `lobby` and every room starting `public.`, and no other."""
    await connected("ann", "a1")
    out = await client_sent("join_room", "join", "ann", "a1", room)
    assert (errors(out) == []) is open_


async def test_a_grant_makes_a_member_at_once_and_a_revoke_takes_them_out_at_once(azurite: Azurite) -> None:
    """PUT grants and joins (the user's tabs join the group, the room hears it, the tabs get a snapshot); a leave keeps
    the grant; DELETE ends both, removes the tabs from the group before answering, and later joins are refused."""
    await connected("carol", "c1")
    await connected("carol", "c2")
    status, body, out = await room_member("PUT", "board", "Carol")
    assert (status, body) == (200, {"room": "board", "user": "Carol", "member": True})
    assert {("add", "board", "c1"), ("add", "board", "c2")} <= set(group_actions(out.messages))
    announced = [m["arguments"][0] for m in out.messages if m.get("target") == "room"]
    assert announced == [{"room": "board", "user": "Carol", "joined": True}]
    synced = [m["connectionId"] for m in out.messages if m.get("target") == "presenceSync"]
    assert sorted(synced) == ["c1", "c2"]
    assert await member_rows(azurite, "board") == [user_key("carol")]
    _, presence, _ = await http("user_presence", http_request("GET", "users/carol", route_params={"user": "carol"}))
    assert (presence["rooms"], presence["grants"]) == (["board"], ["board"])

    left = await client_sent("leave_room", "leave", "carol", "c1", "board")
    assert errors(left) == []
    again = await client_sent("join_room", "join", "carol", "c1", "board")  # the grant stays
    assert errors(again) == []

    status, body, out = await room_member("DELETE", "board", "carol")
    assert (status, body) == (200, {"room": "board", "user": "carol", "member": False})
    assert {("remove", "board", "c1"), ("remove", "board", "c2")} <= set(group_actions(out.messages))
    refused = await client_sent("join_room", "join", "carol", "c1", "board")
    assert [e.get("refused") for e in errors(refused)] == [True]
    status, body, _ = await room_member("DELETE", "board", "carol")  # idempotent
    assert (status, body["member"]) == (200, False)
    sent = await client_sent("send_to_room_message", "sendToRoom", "carol", "c1", "board", "hello?")
    assert [e["error"] for e in errors(sent)] == ["not a member of this room"]
    assert ("remove", "board", "c1") in group_actions(sent.messages)  # R4: the revocation is acted on again


async def test_a_revoke_removes_through_the_service_before_it_answers() -> None:
    """With SignalR REST access the revoke removes each tab from the group itself; unconfirmed, it raises (503) and
    the revocation stays recorded for the next event or sweep."""
    store: ConnectionStore = runtime.store()
    await connected("dave", "d1")
    await events.on_grant(store, "dave", "ops", service=Groups())
    service = Groups()
    done = await events.on_revoke(store, "dave", "ops", service=service)
    assert service.actions == [("remove", "ops", "d1")]
    assert done.member is False
    await events.on_grant(store, "dave", "ops", service=Groups())
    with pytest.raises(SignalRUnavailableError):
        await events.on_revoke(store, "dave", "ops", service=Groups(confirms=False))
    assert "ops" in (await store.read_user(user_key("dave"))).revoked


async def test_a_revoke_lost_before_the_group_removal_is_redone_by_the_next_connect_and_the_sweep(
    azurite: Azurite,
) -> None:
    """A revoke that committed and was lost before any group removal: the user's next connect removes their older
    tab from the room's group (and does not add the new one); the sweep removes it again while that tab lives, and
    deletes the revocation once it is gone."""
    store: ConnectionStore = runtime.store()
    await connected("erin", "e1")
    await events.on_grant(store, "erin", "vault", service=Groups())
    await Rooms(store).revoke("erin", "vault")  # the revoke's commit, and nothing after it
    out = await connected("erin", "e2")
    assert ("remove", "vault", "e1") in group_actions(out.messages)
    assert ("add", "vault", "e2") not in group_actions(out.messages)
    later = store.now() + store.settings.ttl
    swept = await events.on_timer(store, liveness=Verdicts(Liveness.ALIVE), now=later)
    assert ("remove", "vault", "e1") in group_actions(swept)
    assert any(key.startswith(REVOKED_PREFIX) for key in await user_rows(azurite, "erin"))
    swept = await events.on_timer(store, liveness=Verdicts(Liveness.GONE), now=later + store.settings.ttl * 2)
    assert ("remove", "vault", "e1") not in group_actions(swept)
    assert not any(key.startswith(REVOKED_PREFIX) for key in await user_rows(azurite, "erin"))


class Verdicts:
    """A liveness check that answers every connection with one verdict and lists no group."""

    asks_service = True

    def __init__(self, verdict: Liveness) -> None:
        self.verdict = verdict

    async def check(self, hub: str, connection_id: str) -> Liveness:
        """Answer the verdict."""
        return self.verdict

    async def members(self, hub: str, group: str, *, deadline: float) -> GroupMembers:
        """List nothing: no listing."""
        return GroupMembers(Listing.UNSUPPORTED)


async def test_memberships_from_before_rooms_were_closed_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member of a room that was open when they joined stays one when it closes: their join is answered as before."""
    monkeypatch.setenv("ROOMS_OPEN", "*")
    await runtime.reset()
    await connected("fay", "f1")
    await client_sent("join_room", "join", "fay", "f1", "legacy")
    monkeypatch.setenv("ROOMS_OPEN", "")
    await runtime.reset()
    again = await client_sent("join_room", "join", "fay", "f1", "legacy")
    assert errors(again) == []
    assert "legacy" in (await runtime.store().read_user(user_key("fay"))).rooms


async def test_the_access_policy_sees_the_token_claims() -> None:
    """The policy passed to register() decides with the claims SignalR delivered: staff join staff rooms, others not."""
    store: ConnectionStore = runtime.store()
    policy = StaffOnly()
    await connected("gil", "g1")
    await connected("hana", "h1")

    async def join(user: str, connection: str, role: str) -> list[dict[str, Any]]:
        payload = invocation(
            "join", user_id=user, connection_id=connection, arguments=["staff.room"], claims={"role": role}
        )
        return await events.on_join(store, parse_invocation(payload), access=policy)

    assert errors(await join("gil", "g1", "staff")) == []
    assert [e.get("refused") for e in errors(await join("hana", "h1", "guest"))] == [True]
    assert {"role": "staff"} in policy.seen
    assert {"role": "guest"} in policy.seen


async def test_the_access_policy_decides_direct_messages_and_watching_instead_of_the_settings() -> None:
    """With the policy, staff message and watch strangers; a refusal of the policy holds even in a shared room."""
    store: ConnectionStore = runtime.store()
    policy = StaffOnly()
    for user, tab in (("ivy", "i1"), ("jon", "j1"), ("ceo", "x1")):
        await connected(user, tab)
    staff = {"role": "staff"}
    sent = invocation("send", user_id="ivy", connection_id="i1", arguments=["jon", "hi"], claims=staff)
    delivered = await events.on_send(store, parse_invocation(sent), access=policy)
    assert [m.get("connectionId") for m in delivered] == ["j1"]
    guest = invocation("send", user_id="jon", connection_id="j1", arguments=["ivy", "hi"], claims={"role": "guest"})
    assert [e["error"] for e in errors(await events.on_send(store, parse_invocation(guest), access=policy))] == [
        "recipient is offline"
    ]
    watch = invocation("watch", user_id="ivy", connection_id="i1", arguments=[["jon"]], claims=staff)
    watched = await events.on_watch(store, parse_invocation(watch), access=policy)
    assert ("add", "~presence.jon", "i1") in group_actions(watched)  # allowed by the policy: a subscription
    await client_sent("join_room", "join", "ivy", "i1", "lobby")
    await client_sent("join_room", "join", "ceo", "x1", "lobby")
    nope = invocation("watch", user_id="ivy", connection_id="i1", arguments=[["ceo"]], claims=staff)
    assert [e.get("refused") for e in errors(await events.on_watch(store, parse_invocation(nope), access=policy))] == [
        ["ceo"]
    ]


async def test_a_connection_watches_at_most_200_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 201st watched user is refused (nothing recorded); unwatching some makes room again."""
    monkeypatch.setenv("PRESENCE_WATCH", "anyone")
    await runtime.reset()
    store: ConnectionStore = runtime.store()
    await connected("kai", "k1")
    first = [f"u{i}" for i in range(100)]
    second = [f"v{i}" for i in range(100)]
    assert errors(await client_sent("watch_users", "watch", "kai", "k1", first)) == []
    assert errors(await client_sent("watch_users", "watch", "kai", "k1", second)) == []
    assert errors(await client_sent("watch_users", "watch", "kai", "k1", first[:10])) == []  # the same, again
    over = await client_sent("watch_users", "watch", "kai", "k1", ["w0"])
    [error] = errors(over)
    assert "at most" in error["error"]
    assert error["watching"] == MAX_WATCHED_PER_CONNECTION
    assert group_actions(over.messages) == []
    await client_sent("unwatch_users", "unwatch", "kai", "k1", first[:1])
    assert errors(await client_sent("watch_users", "watch", "kai", "k1", ["w0"])) == []
    assert len((await store.read_user(user_key("kai"))).rows["k1"].watching) == MAX_WATCHED_PER_CONNECTION
