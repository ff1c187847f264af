"""The local host's NAME=VALUE parser, shared by its command line and `testkit/serve_stack.py`."""

from __future__ import annotations

import pytest

from local.host.settings import parse_name_value_pairs


def test_pairs_split_at_the_first_equals_sign_and_the_last_name_wins() -> None:
    """Each item gives its name the rest after the first `=` (empty allowed); a repeated name keeps the last value."""
    pairs = parse_name_value_pairs(["A=1", "B=x=y", "C=", "A=2"], "--setting")
    assert pairs == {"A": "2", "B": "x=y", "C": ""}


@pytest.mark.parametrize("item", ["NOVALUE", "=value"])
def test_an_item_without_a_name_or_an_equals_sign_exits_naming_the_option(item: str) -> None:
    """A malformed item ends the program with a message that names the option and the item."""
    with pytest.raises(SystemExit, match=f"--static must look like NAME=VALUE, not '{item}'"):
        parse_name_value_pairs([item], "--static")
