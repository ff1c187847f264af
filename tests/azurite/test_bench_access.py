"""The bench's access section (bench/access.py) against Azurite: it runs, and its counts hold issue 30's floors (a
granted join costs what a join costs today; a refused join is one read and no write). Counts only, no timings."""

from __future__ import annotations

from bench.access import ROWS, TABS, measure_access, missed
from bench.report import access_markdown
from testkit.azurite import ROOT, Azurite

GROUP_MEMBER = "/api/hubs/{hub}/groups/{group}/connections/{connection}"
LATEST = ROOT / "bench" / "results" / "latest.md"


async def test_the_access_section_holds_the_issues_floors(azurite: Azurite, restored_environment: None) -> None:
    """Every access event is counted; a granted join, a policy's join, an open room's join again and a grant each make
    today's join's table requests (a new room's first one a request more, to count it), a refused join one read, a
    revoke a leave's; the SignalR REST requests are one per tab where the app acts on every tab (a grant, a revoke,
    a disconnect-all) and one for a client's join."""
    access = await measure_access(azurite)
    rows = {row["key"]: row for row in access["figures"]}
    assert list(rows) == [row.key for row in ROWS]

    def table(key: str) -> int:
        return int(rows[key]["table"]["total"])

    def rest(key: str) -> dict[str, int]:
        return dict(rows[key]["signalr"]["by_operation"])

    # A new room's first join also counts the room, once (tally T3: one scan of an empty index).
    assert table("open_join") == table("grant") == table("policy_join") == table("open_rejoin") + 1
    assert table("open_rejoin") == table("granted_join")
    for refused in ("refused_join", "revoked_join"):
        assert rows[refused]["table"]["by_operation"] == {"query": 1}, refused
        assert rows[refused]["output"] == {"group_actions": 0, "messages": {"error": 1}}, refused
        assert rest(refused) == {}, refused
    assert table("revoke") == table("granted_leave") == table("open_leave")
    assert rest("open_join") == rest("granted_join") == {f"PUT {GROUP_MEMBER}": 1}
    assert rest("grant") == {f"PUT {GROUP_MEMBER}": TABS}
    assert rest("revoke") == {f"DELETE {GROUP_MEMBER}": TABS}
    closes = {
        "DELETE /api/hubs/{hub}/connections/{connection}": TABS,
        "POST /api/hubs/{hub}/users/{user}/:closeConnections": 1,
    }
    assert rest("disconnect_all") == rest("grace_disconnect_all") == closes
    assert rows["disconnect_events"]["table"]["writes"] == 0  # the rows are gone: nothing to write
    assert "grace_decisions" not in access["counts"]  # an operator's disconnect queues no decision
    assert missed(access) == []
    section = "\n".join(access_markdown(access))
    assert section.startswith("## Access")
    assert sum(line.startswith("| ") for line in section.splitlines()) == 1 + len(ROWS)  # the header, a row each
    assert "requirements: a granted join costs what a join costs today" in section
    assert ": met." in section


def test_the_report_holds_the_access_section() -> None:
    """The committed report (bench/results/latest.md) has the access section: a row per event, the floors met."""
    section = LATEST.read_text().split("\n## Access: ", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| event ")]
    assert len(rows) == len(ROWS), rows
    assert ": met." in section
