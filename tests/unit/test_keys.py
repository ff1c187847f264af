"""Names and keys: normalisation, validation and escaping, property-based."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mapping.errors import InvalidNameError
from mapping.keys import (
    MAX_KEY_UTF16_UNITS,
    connection_key,
    escape_key,
    new_user_name,
    normalize_user_name,
    unescape_key,
    user_key,
)

FORBIDDEN_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
# Unicode scalar values (no surrogates): every character a stored name may hold.
scalar = st.characters(exclude_categories=["Cs"])
valid_names = st.text(scalar, min_size=1, max_size=256).filter(
    lambda s: 1 <= len(unicodedata.normalize("NFC", s).strip()) <= 256
)


def utf16_units(text: str) -> int:
    """Return the length of a string in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


@given(valid_names)
def test_every_valid_name_round_trips_through_its_key(name: str) -> None:
    """Unescaping a user key gives back the casefolded, normalised name (or the key was shortened)."""
    key = user_key(name)
    folded = unicodedata.normalize("NFC", normalize_user_name(name).casefold())
    if "%~" in key:
        assert utf16_units(escape_key(folded)) > MAX_KEY_UTF16_UNITS
    else:
        assert unescape_key(key) == folded


@given(valid_names)
def test_no_key_contains_a_forbidden_character_or_exceeds_the_limit(name: str) -> None:
    """User and connection keys never hold `/ \\ # ?` or control characters and fit Table Storage."""
    for key in (user_key(name), connection_key(name)):
        assert not FORBIDDEN_IN_KEYS.search(key)
        assert utf16_units(key) <= MAX_KEY_UTF16_UNITS


@given(valid_names)
def test_names_differing_only_in_case_share_a_partition(name: str) -> None:
    """Every case variant that compares equal under Unicode case folding maps to one user key."""
    variants = {name, name.upper(), name.lower(), name.swapcase(), name.title()}
    same = [
        v
        for v in variants
        if v.casefold() == name.casefold() and 1 <= len(unicodedata.normalize("NFC", v).strip()) <= 256
    ]
    assert len({user_key(v) for v in same}) == 1


@pytest.mark.parametrize(("first", "second"), [("ALICE", "alice"), ("Straße", "STRASSE"), ("ΣΊΣΥΦΟΣ", "σίσυφος")])
def test_case_insensitive_examples_share_a_partition(first: str, second: str) -> None:
    """Names equal under case folding, including ß and final sigma, are one user."""
    assert user_key(first) == user_key(second)


@given(st.text(scalar, min_size=1, max_size=64))
def test_connection_keys_keep_case_and_round_trip(connection_id: str) -> None:
    """Connection ids are escaped but not casefolded."""
    stripped = unicodedata.normalize("NFC", connection_id).strip()
    if not stripped:
        with pytest.raises(InvalidNameError):
            connection_key(connection_id)
        return
    assert unescape_key(connection_key(connection_id)) == stripped


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("  Bob \t", "bob"),
        ("a/b", "a%2Fb"),
        ("a\\b#c?d", "a%5Cb%23c%3Fd"),
        ("100%", "100%25"),
        ("tab\there", "tab%09here"),
        ("del\x7f", "del%7F"),
        ("c1\x85x", "c1%C2%85x"),
        ("Ünïcödé 😀", "ünïcödé 😀"),
        ("O'Brien", "o'brien"),
    ],
)
def test_known_names_map_to_known_keys(name: str, key: str) -> None:
    """Escaping touches only forbidden characters and `%`, with upper-case hex of the UTF-8 bytes."""
    assert user_key(name) == key


def test_ordinary_signalr_connection_ids_are_stored_verbatim() -> None:
    """A typical SignalR connection id needs no escaping and keeps its case."""
    assert connection_key("u7Vb1mQ-3kX_9aZpQ2wYtA") == "u7Vb1mQ-3kX_9aZpQ2wYtA"


def test_nfc_and_nfd_spellings_are_one_user() -> None:
    """Composed and decomposed spellings of a name normalise to the same key."""
    assert user_key("Ame\u0301lie") == user_key("Am\u00e9lie")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "\t\n",
        "x" * 257,
        None,
        42,
        ["alice"],
        "bad\ud800",
    ],
)
def test_invalid_names_are_rejected(name: object) -> None:
    """Empty, blank, over-long, non-string and non-Unicode names raise InvalidNameError."""
    with pytest.raises(InvalidNameError):
        user_key(name)


@pytest.mark.parametrize(
    "name",
    [
        "alice\u202egnp.exe",  # a right-to-left override
        "bo\u200bb",  # a zero-width space
        "\ufeffcarol",  # a zero-width no-break space (byte order mark)
        "dave\u2066",  # a bidirectional isolate
        "\U0001f468\u200d\U0001f469",  # a zero-width joiner between two emoji
    ],
)
def test_a_new_user_name_with_format_characters_is_refused_but_a_stored_one_still_keys(name: str) -> None:
    """Signing in (new_user_name) refuses format characters (Cf); a name already stored keeps its key and works."""
    with pytest.raises(InvalidNameError, match="format characters"):
        new_user_name(name)
    assert user_key(name)
    assert new_user_name("alice") == "alice"


def test_a_name_of_256_characters_is_valid_and_257_is_not() -> None:
    """The length limit counts characters after normalisation."""
    assert user_key("x" * 256) == "x" * 256
    with pytest.raises(InvalidNameError):
        user_key("x" * 257)


def test_long_escaped_names_get_distinct_bounded_keys() -> None:
    """Names whose escaped key would not fit get a shortened, digest-suffixed, still distinct key."""
    first, second = user_key("/" * 256), user_key("/" * 255 + "#")
    assert first != second
    assert "%~" in first
    assert utf16_units(first) <= MAX_KEY_UTF16_UNITS
    assert user_key("/" * 256) == first
