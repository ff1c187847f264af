"""The call budget end to end across instances (issue 31, item 2): one real `@microsoft/signalr` client loops
`sendToRoom` as fast as it can for 60 s through the emulator, whose upstream a round-robin front deals to two local
hosts of the app on one table (each call to the other host); a second client in the room counts what is delivered."""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.proxy import CountingProxy
from mapping.presence.budget import PUBLISH_EVERY
from testkit.azurite import Azurite
from testkit.round_robin import running_round_robin_stack
from testkit.stack import SignalRClients, unique_user

pytestmark = pytest.mark.slow

BURST, RATE = 20, 5
LOOP_SECONDS = 60.0
TOLERANCE = 0.2  # the "within 20%" of the bucket's own bound
HOSTS = 2
REFUSED = re.compile(r"sendToRoom: a connection over its call budget was refused \(told so")
IN_FLIGHT = 4  # the sender's calls not yet answered
QUIET = ["presence", "presenceSync", "room"]  # what a join makes besides: received, not reported


@dataclass
class Tally:
    """What the two clients heard, taken out of the driver's events as the loop goes (they would pile up: every
    answer to a call is an event, and the driver looks through all of them for each answer)."""

    sender: str
    listener: str
    delivered: Counter[object] = field(default_factory=Counter)  # the listener's room messages, by loop number
    refusals: list[dict[str, Any]] = field(default_factory=list)  # the sender's "too many calls" errors
    refused_at: list[float] = field(default_factory=list)  # when each was drained (time.monotonic(), +-1 batch)
    other_errors: list[tuple[str, object]] = field(default_factory=list)

    def drain(self, clients: SignalRClients) -> None:
        """Count the events so far and drop them (no await in between: nothing else touches them meanwhile)."""
        taken = clients.events[:]
        del clients.events[: len(taken)]
        for event in taken:
            target, args = event.get("target"), event.get("args") or [None]
            if target == "newMessage" and event.get("id") == self.listener:
                self.delivered[args[0]["message"]["n"]] += 1
            elif target == "error" and args[0].get("error") == "too many calls":
                self.refusals.append(args[0] | {"id": event.get("id")})
                self.refused_at.append(time.monotonic())
            elif target == "error" or event.get("event") in ("closed", "failed"):
                self.other_errors.append((str(event.get("id")), args[0] if target else event))


async def test_one_connections_budget_holds_within_20_percent_across_two_hosts_behind_a_round_robin_front(
    azurite: Azurite,
) -> None:
    """60 s of `sendToRoom` as fast as the upstream answers, each call to the other host: the calls delivered stay
    within 20% of the bucket's bound (burst + rate x elapsed), both hosts accepted calls, the sender was told it was
    over at most once a second per host, every refusal a "too many calls" with a retryAfter, and the budget's
    publishes about one per 10 accepted calls."""
    settings = {"CLIENT_CALL_BURST": str(BURST), "CLIENT_CALL_RATE": str(RATE), "ROOMS_OPEN": "*"}
    room = f"lobby-{uuid.uuid4().hex[:8]}"
    with CountingProxy(azurite.port) as tables:
        counted = azurite.connection_string.replace(f":{azurite.port}/", f":{tables.port}/")
        with running_round_robin_stack(azurite, settings, hosts=HOSTS, storage=counted) as stack:
            async with SignalRClients(stack) as clients:
                tally = Tally("s1", "l1")
                await clients.connect("l1", unique_user("listener"), targets=["newMessage", "error"], ignore=QUIET)
                await clients.connect("s1", unique_user("spender"), targets=["error"], ignore=["newMessage", *QUIET])
                await clients.command("invoke", id="l1", method="join", args=[room])
                served_before = stack.front.served("sendToRoom")

                with tables.counting() as requests:
                    started = time.monotonic()
                    await clients.command("invoke", id="s1", method="join", args=[room])  # the budget's first call
                    calls = 0
                    while time.monotonic() - started < LOOP_SECONDS:
                        # invoke: answered once the app has run the call (the emulator forwards a connection's calls
                        # one at a time); a few at once, so the emulator never waits for the next.
                        numbers = range(calls, calls + IN_FLIGHT)
                        await asyncio.gather(*(send_to_room(clients, "s1", room, {"n": n}) for n in numbers))
                        calls += IN_FLIGHT
                        tally.drain(clients)  # every call of the batch answered: no answer awaited is dropped
                    elapsed = time.monotonic() - started
                await asyncio.sleep(1.0)  # deliveries go out before the call is answered; let the last ones land
                tally.drain(clients)

            served = stack.front.served("sendToRoom")
            refused = [len(REFUSED.findall(stack.host_log(index))) for index in range(HOSTS)]
            logs = stack.log_tail(20)

    bound = BURST + RATE * elapsed
    delivered = sum(tally.delivered.values())
    accepted = delivered + 1  # and the sender's join
    publishes = requests["upsert/update (merge)"]
    per_second = Counter(int(at - started) for at in tally.refused_at)
    waits = [r["retryAfter"] for r in tally.refusals]
    figures = (
        f"{calls} calls in {elapsed:.1f} s ({calls / elapsed:.0f}/s): {delivered} delivered (+1 join) of a bound of "
        f"{bound:.0f} ({accepted / bound:.2f}x); sendToRoom served by host {served}, refusals told there {refused}; "
        f"{len(tally.refusals)} refusals answered (at most "
        f"{max(per_second.values(), default=0)} in a second, retryAfter {min(waits, default=0)}-"
        f"{max(waits, default=0)} s); table requests {dict(requests)}"
    )
    print(figures)
    assert tally.other_errors == [], figures
    assert max(tally.delivered.values(), default=1) == 1, f"a message delivered twice; {figures}"
    assert accepted <= (1 + TOLERANCE) * bound, figures
    assert delivered >= (1 - TOLERANCE) * bound, figures
    # Per request round robin: every other call went to the other host, and each host refused and told the sender (a
    # host logs a refusal once a second, with its answer).
    assert served_before == [0] * HOSTS, figures
    assert all(count >= calls / HOSTS - 2 for count in served), figures
    assert all(count > 0 for count in refused), f"{figures}\n{logs}"
    assert sum(refused) == len(tally.refusals), figures
    # Told at most once a second per connection per host (2 a second here), always with what to wait.
    assert len(tally.refusals) <= HOSTS * math.ceil(elapsed + 1), figures
    assert max(per_second.values(), default=0) <= 2 * HOSTS, figures  # no burst of them (+-1 batch on each time)
    assert len(tally.refusals) >= elapsed / 2, figures
    assert all(r["call"] == "sendToRoom" and r["retryAfter"] > 0 and r["id"] == "s1" for r in tally.refusals), figures
    # The budget rides on the reads the calls make: about one publish (a merge) per 10 accepted calls.
    assert publishes <= accepted / PUBLISH_EVERY + 2 * HOSTS, figures


async def send_to_room(clients: SignalRClients, client: str, room: str, message: object) -> None:
    """Call `sendToRoom(room, message)` and wait for the app's answer."""
    await clients.command("invoke", id=client, method="sendToRoom", args=[room, message])
