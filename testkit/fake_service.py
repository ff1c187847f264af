"""A fake of the sweep's seam to SignalR Service (`mapping.signalr.liveness.LivenessCheck`), for tests of the sweep."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from mapping.signalr.liveness import GroupMembers, Listing, Liveness


class FakeService:
    """Answers liveness checks from a table, lists a group from a set (or cannot list), and counts requests."""

    asks_service = True

    def __init__(
        self,
        answers: dict[str, Liveness] | None = None,
        *,
        default: Liveness = Liveness.GONE,
        listed: Iterable[str] | None = None,
        listing: Listing = Listing.UNSUPPORTED,
        delay: float = 0.0,
    ) -> None:
        self.answers = dict(answers or {})
        self.default = default
        self.listed = set(listed or ())
        self.listing = listing
        self.delay = delay
        self.asked: list[str] = []
        self.listings = 0

    async def check(self, hub: str, connection_id: str) -> Liveness:
        """Answer from the table (after `delay`), or the default."""
        self.asked.append(connection_id)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.answers.get(connection_id, self.default)

    async def members(self, hub: str, group: str, *, deadline: float) -> GroupMembers:
        """List the group (one request per 200 members), or say the service cannot."""
        self.listings += 1
        if self.listing is not Listing.LISTED:
            return GroupMembers(self.listing, requests=1)
        return GroupMembers(Listing.LISTED, frozenset(self.listed), requests=max(1, -(-len(self.listed) // 200)))
