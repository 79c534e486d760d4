"""`kind: segment`: a (person, segment) row in, the exact membership (or the reason it is not
sent) out; the route's options fail closed."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from target_customerio.errors import ConfigError
from target_customerio.ledger import hash64, scope_seed
from target_customerio.operations import KINDS
from target_customerio.operations.operation import Rejected
from target_customerio.operations.segment import member, segment_id_value
from tests.operations.helpers import Kind, route

SEGMENT = {
    "kind": "segment",
    "identifier": {"field": "customer_id", "type": "id"},
    "segment_id": "segment_id",
}
SCOPE = "https://track.example\x1fsite\x1fpublic-vip_segment"


def test_a_row_is_one_membership_with_its_ledger_key_and_no_content_fingerprint():
    built = Kind(SEGMENT, ledger_scope=SCOPE).build({"customer_id": 42, "segment_id": 7})
    [op] = built.operations
    assert orjson.loads(op.body) == {"segment_id": 7, "id_type": "id", "id": "42"}
    assert built.identifier == ("id", "42")
    assert op.ledger == (hash64(b"segment:7:id:42", scope_seed(SCOPE)), 0)
    assert op.shard_key == "7"
    assert member(op.body) == op.body.decode()  # what the ledger keeps is the membership


def test_email_identifiers_are_trimmed_and_lower_cased_and_carry_their_type():
    m = Kind({**SEGMENT, "identifier": {"field": "email", "type": "email"}})
    op = orjson.loads(m.map({"email": " Ann@Example.COM ", "segment_id": "12"}).body)
    assert op == {"segment_id": 12, "id_type": "email", "id": "ann@example.com"}


def test_cio_id_identifiers_carry_their_type():
    m = Kind({**SEGMENT, "identifier": {"field": "cio", "type": "cio_id"}})
    op = orjson.loads(m.map({"cio": "a1b2", "segment_id": 3}).body)
    assert op == {"segment_id": 3, "id_type": "cio_id", "id": "a1b2"}


@pytest.mark.parametrize("value", [None, "", "  ", "abc", 0, -4, 1.5, True, Decimal("NaN"), [7]])
def test_a_segment_id_that_is_not_a_positive_integer_is_rejected_naming_its_column(value):
    with pytest.raises(Rejected) as err:
        Kind(SEGMENT).build({"customer_id": "C1", "segment_id": value})
    assert (err.value.reason, err.value.field) == ("invalid_segment_id", "segment_id")


@pytest.mark.parametrize("value", [7, "7", " 7 ", 7.0, Decimal("7")])
def test_segment_ids_as_numbers_or_digits(value):
    assert segment_id_value(value) == 7


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_blank_identifier_is_rejected_as_elsewhere(value):
    with pytest.raises(Rejected) as err:
        Kind(SEGMENT).build({"customer_id": value, "segment_id": 7})
    assert (err.value.reason, err.value.field) == ("missing_identifier", "customer_id")


def test_a_segment_route_always_mirrors_with_the_default_guard():
    mirror = route(SEGMENT).mirror
    assert mirror is not None and (mirror.on_exit, mirror.max_exit_ratio) == ("remove", 0.1)
    assert route({**SEGMENT, "max_exit_ratio": 0.5}).mirror.max_exit_ratio == 0.5
    assert KINDS["segment"].channel == "segments"


def test_identifier_and_segment_columns_are_checked_against_the_schema_and_never_sent():
    r = route(SEGMENT)
    assert r.columns_named() == [("identifier.field", "customer_id"), ("segment_id", "segment_id")]
    assert r.identity_columns == {"customer_id", "segment_id"}


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"kind": "segment", "segment_id": "segment_id"}, "identifier: needs {field"),
        ({**SEGMENT, "segment_id": None}, "segment_id: the name of a column"),
        ({**SEGMENT, "identifier": {"field": "c", "type": "phone"}}, "'phone' is not one of"),
        ({**SEGMENT, "max_exit_ratio": 1.5}, "max_exit_ratio: a share from 0 to 1"),
        ({**SEGMENT, "max_exit_ratio": "10%"}, "max_exit_ratio: a share from 0 to 1"),
        ({**SEGMENT, "mirror": True}, "mirror: does not apply to a segment route"),
        ({**SEGMENT, "on_exit": "delete"}, "on_exit: does not apply to a segment route"),
        ({**SEGMENT, "attributes": {"include": ["x"]}}, "does not apply to a segment route"),
        ({**SEGMENT, "contract": "builtin:customer"}, "does not apply to a segment route"),
        ({**SEGMENT, "segmnt_id": "x"}, "did you mean `segment_id`"),
    ],
)
def test_options_fail_closed(spec, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("(", r"\(")):
        route(spec)
