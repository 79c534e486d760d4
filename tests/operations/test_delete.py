"""Rows deleted at the source, on a person route: what `on_delete` sends, per tap's marker."""

from __future__ import annotations

import orjson
import pytest

from target_customerio.operations.delete import is_delete
from target_customerio.operations.operation import Rejected, Skipped
from tests.operations.helpers import PERSON, Kind

MARKERS = [{"_sdc_deleted_at": "2026-11-22 13:48:04.231713+00"}, {"_sdc_operation_type": "D"}]


@pytest.mark.parametrize("marker", MARKERS)
@pytest.mark.parametrize(
    "on_delete, expected",
    [
        ("delete", {"type": "person", "action": "delete", "identifiers": {"id": "42"}}),
        ("suppress", {"type": "person", "action": "suppress", "identifiers": {"id": "42"}}),
        (
            "unsubscribe",
            {
                "type": "person",
                "action": "identify",
                "identifiers": {"id": "42"},
                "attributes": {"unsubscribed": True},
            },
        ),
    ],
)
def test_on_delete_sends_what_it_names(marker, on_delete, expected):
    built = Kind({**PERSON, "on_delete": on_delete}).build(
        {"customer_id": 42, "email": "a@b.c", **marker}
    )
    assert [orjson.loads(op.body) for op in built.operations] == [expected]
    assert built.identifier == ("id", "42")


@pytest.mark.parametrize("marker", MARKERS)
def test_ignore_skips_a_deleted_row_even_without_an_identifier(marker):
    with pytest.raises(Skipped, match="deleted"):
        Kind(PERSON).build({"customer_id": None, **marker})


def test_a_deleted_row_without_an_identifier_is_rejected_when_it_would_send():
    with pytest.raises(Rejected) as err:
        Kind({**PERSON, "on_delete": "delete"}).build(
            {"customer_id": "", "_sdc_operation_type": "D"}
        )
    assert err.value.reason == "missing_identifier"


@pytest.mark.parametrize(
    "record, deleted",
    [
        ({"_sdc_deleted_at": None}, False),
        ({"_sdc_deleted_at": ""}, False),
        ({"_sdc_operation_type": "U"}, False),
        ({"_sdc_operation_type": "I"}, False),
        ({}, False),
        ({"_sdc_deleted_at": "2026-11-22T00:00:00Z"}, True),
        ({"_sdc_operation_type": "D"}, True),
    ],
)
def test_delete_markers(record, deleted):
    assert is_delete(record) is deleted


def test_a_row_that_is_not_deleted_is_identified():
    built = Kind({**PERSON, "on_delete": "delete"}).build(
        {"customer_id": 42, "_sdc_deleted_at": None, "x": 1}
    )
    assert orjson.loads(built.operations[0].body)["action"] == "identify"
