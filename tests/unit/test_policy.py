"""The access policy's seam: the base decides nothing, and a decision that fails refuses (fail closed)."""

from __future__ import annotations

import pytest

from mapping.rooms.policy import SETTINGS_DECIDE, AccessPolicy, asked
from mapping.settings import Settings


async def test_the_base_policy_leaves_every_decision_to_the_settings() -> None:
    """AccessPolicy answers None to join, message and watch: the settings decide."""
    claims = {"role": "admin"}
    assert await SETTINGS_DECIDE.may_join("ann", "room", claims) is None
    assert await SETTINGS_DECIDE.may_message("ann", "bob", claims) is None
    assert await SETTINGS_DECIDE.may_watch("ann", "bob", claims) is None


class Broken(AccessPolicy):
    """A policy whose join decision raises and whose watch decision answers a string."""

    async def may_join(self, user: str, room: str, claims: object) -> bool | None:
        """Fail."""
        raise RuntimeError("the policy's database is down")

    async def may_watch(self, user: str, watched: str, claims: object) -> bool | None:
        """Answer what is no decision."""
        return "yes"  # type: ignore[return-value]


async def test_a_decision_that_raises_or_answers_no_bool_refuses(caplog: pytest.LogCaptureFixture) -> None:
    """A raising decision and one answering neither a bool nor None count as False, and are logged."""
    policy = Broken()
    assert await asked(policy.may_join("ann", "room", {}), what="may_join") is False
    assert await asked(policy.may_watch("ann", "bob", {}), what="may_watch") is False
    assert await asked(policy.may_message("ann", "bob", {}), what="may_message") is None
    assert "may_join raised" in caplog.text
    assert "may_watch answered str" in caplog.text


@pytest.mark.parametrize(
    ("patterns", "room", "opened"),
    [
        ((), "lobby", False),
        (("*",), "anything", True),
        (("lobby",), "lobby", True),
        (("lobby",), "lobby2", False),
        (("public.*",), "public.chess", True),
        (("public.*",), "public", False),
    ],
)
def test_rooms_open_matches_names_and_prefixes(patterns: tuple[str, ...], room: str, opened: bool) -> None:
    """ROOMS_OPEN opens a room named exactly, or one starting with a pattern's prefix before `*`."""
    settings = Settings.from_environment({"MAPPING_STORAGE": "x", "ROOMS_OPEN": " ".join(patterns)})
    assert settings.opens(room) is opened


@pytest.mark.parametrize("raw", ["lob*by", "a b/c", "*x", "x" * 65])
def test_rooms_open_refuses_what_is_no_room_or_prefix(raw: str) -> None:
    """A ROOMS_OPEN entry that is neither a room name, a prefix ending in `*`, nor `*` is a configuration error."""
    from mapping.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="ROOMS_OPEN"):
        Settings.from_environment({"MAPPING_STORAGE": "x", "ROOMS_OPEN": raw})
