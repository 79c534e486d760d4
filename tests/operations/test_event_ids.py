"""Event ids: one id per (event name, dedupe key), the same on every run and version.

The pinned ids were computed by the code before the key encoding was made one-to-one: an upgrade
must not give an event already sent a new id (Customer.io would fire it again)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.operations.event_ids import event_ulid, key_bytes
from tests.harness import LONG_PROPERTIES

PINNED = [
    ("order_placed", [1001], "6M0PYDFDB7AKAVTAJV530SD3VF"),
    ("order_placed", ["A-17", "2"], "5C8VV05K5YBWZ18BG8N0J3R7VW"),
    ("refund_issued", [42, "line 3"], "2EMTTADRQZJKP0W6SDGPCBAD6A"),
    ("checkout_started", [Decimal("12.50")], "5G2KF85EYMD72RRFGHG79VAJVM"),
    ("order_placed", ["ünïcode ✓"], "3QZ56HBG1M1F3EBJHE0SK6D1VA"),
    ("order_placed", [3.5, True], "79849P1XA8DT2TDH0BTSD03Z3V"),
    ("x", [dt.datetime(2026, 11, 22, 11, 0, tzinfo=dt.timezone.utc)], "4WSFEHCC7T2Q9E1CPGRZ868EKH"),
    ("order_placed", [{"a": 1}], "2BEJDKRCE5N31SP48AXAYW6QJB"),
    ("order_placed", [7], "59653G5ZMVSAGJ94RY6Y01ZSN7"),
]
EXAMPLES = 2000 if LONG_PROPERTIES else 200


@pytest.mark.parametrize(("name", "key", "ulid"), PINNED)
def test_an_upgrade_keeps_the_ids_of_events_already_sent(name, key, ulid):
    assert event_ulid(name, key) == ulid


def test_values_holding_the_separator_no_longer_collide():
    """Before: ("a\\x1fb", "c") and ("a", "b\\x1fc") were the same event."""
    name = "order_placed"
    assert event_ulid(name, ["a\x1fb", "c"]) != event_ulid(name, ["a", "b\x1fc"])
    assert event_ulid("order_placed", ["a\x1f"]) != event_ulid("order_placed", ["a", ""])
    assert event_ulid("o\x1fa", ["b"]) != event_ulid("o", ["a\x1fb"])


# Text with the characters that can confuse an encoding: the separator, the escape byte's
# code point, lone surrogates, NUL, and ordinary text.
_TEXT = st.text(
    alphabet=st.sampled_from(["\x1f", "\xff", "\ud800", "\x00", "a", "b", "1", "é", "✓"]),
    max_size=6,
) | st.text(max_size=8)
_KEYS = st.tuples(_TEXT, st.lists(_TEXT, min_size=1, max_size=4).map(tuple))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(_KEYS, min_size=2, max_size=6, unique=True))
def test_distinct_keys_give_distinct_ids(keys):
    encoded = {key_bytes(name, list(parts)) for name, parts in keys}
    assert len(encoded) == len(keys)
    assert len({event_ulid(name, list(parts)) for name, parts in keys}) == len(keys)


_PLAIN = st.text(st.characters(blacklist_characters="\x1f", blacklist_categories=("Cs",)))


@settings(max_examples=EXAMPLES, deadline=None)
@given(_PLAIN, st.lists(_PLAIN | st.integers() | st.booleans(), min_size=1, max_size=4))
def test_a_key_without_separators_is_encoded_as_before(name, key):
    """Today's formula, written out: the name and the values' text joined by U+001F, UTF-8."""
    assert key_bytes(name, key) == "\x1f".join([name, *map(str, key)]).encode()
