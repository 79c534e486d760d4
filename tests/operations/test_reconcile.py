"""`kind: reconcile`: a row of the checks view becomes one check, or a reject naming its field."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from target_customerio.errors import ConfigError
from target_customerio.operations.operation import Rejected
from target_customerio.operations.reconcile import parse_tolerance
from target_customerio.routes import Routes
from tests.operations.helpers import Kind

CHECKS = {"kind": "reconcile", "segment_id": "segment_id", "expected_count": "expected"}


def check(spec: dict, row: dict) -> dict:
    built = Kind(spec).build(row)
    assert (
        built.operations[0].ledger is None
    )  # never skipped as unchanged: every check runs every run
    return orjson.loads(built.operations[0].body)


@pytest.mark.parametrize(
    "tolerance, expected",
    [
        (None, (0.0, False)),
        (5, (5.0, False)),
        ("2%", (2.0, True)),
        (" 2.5 % ", (2.5, True)),
        ("3", (3.0, False)),
    ],
)
def test_a_row_becomes_a_check_with_its_tolerance(tolerance, expected):
    spec = CHECKS if tolerance is None else {**CHECKS, "tolerance": tolerance}
    out = check(spec, {"segment_id": 7, "expected": 120})
    assert out == {
        "segment_id": 7,
        "expected": 120,
        "tolerance": expected[0],
        "share": expected[1],
        "on_drift": "fail",
    }


def test_the_tolerance_may_come_from_a_column_of_the_row():
    spec = {**CHECKS, "tolerance": "allowed", "on_drift": "warn"}
    assert check(spec, {"segment_id": "7", "expected": Decimal("3"), "allowed": "10%"}) == {
        "segment_id": 7,
        "expected": 3,
        "tolerance": 10.0,
        "share": True,
        "on_drift": "warn",
    }
    with pytest.raises(Rejected) as err:
        Kind(spec).build({"segment_id": 7, "expected": 3, "allowed": "lots"})
    assert (err.value.reason, err.value.field) == ("invalid_tolerance", "allowed")


@pytest.mark.parametrize(
    "row, reason, field",
    [
        ({"segment_id": 7, "expected": -1}, "invalid_expected_count", "expected"),
        ({"segment_id": 7, "expected": 2.5}, "invalid_expected_count", "expected"),
        ({"segment_id": 7, "expected": "many"}, "invalid_expected_count", "expected"),
        ({"segment_id": 7, "expected": None}, "invalid_expected_count", "expected"),
        ({"segment_id": 7, "expected": True}, "invalid_expected_count", "expected"),
        ({"segment_id": None, "expected": 1}, "invalid_segment_id", "segment_id"),
        ({"segment_id": "seven", "expected": 1}, "invalid_segment_id", "segment_id"),
    ],
)
def test_a_row_that_is_not_a_check_is_a_reject_with_its_field(row, reason, field):
    with pytest.raises(Rejected) as err:
        Kind(CHECKS).build(row)
    assert (err.value.reason, err.value.field) == (reason, field)


@pytest.mark.parametrize(
    "spec, words",
    [
        (
            {**CHECKS, "identifier": {"field": "x"}},
            "identifier: does not apply to a reconcile route",
        ),
        (
            {**CHECKS, "attributes": {"exclude": ["x"]}},
            "attributes: does not apply to a reconcile route",
        ),
        ({**CHECKS, "on_drift": "shrug"}, "on_drift"),
        ({**CHECKS, "tolerance": -3}, "tolerance"),
        ({"kind": "reconcile", "expected_count": "expected"}, "segment_id"),
        ({**CHECKS, "tolerence": "2%"}, "did you mean `tolerance`"),
    ],
)
def test_a_bad_reconcile_route_names_the_option(spec, words):
    with pytest.raises(ConfigError) as err:
        Routes({"s": spec}, Path("."), "reject")
    assert words in str(err.value)


@pytest.mark.parametrize(
    "text, expected, allowed",
    [
        ("5", 120, 5.0),  # a count: the same whatever is expected
        ("0", 7, 0.0),
        ("2.5", 1000, 2.5),
        ("2%", 200, 4.0),  # a share of the expected count
        ("2.5%", 200, 5.0),
        ("10 %", 21, 2.1),
        ("0%", 10**9, 0.0),
    ],
)
def test_a_tolerance_written_as_a_count_or_a_share_allows_that_much(text, expected, allowed):
    tolerance = parse_tolerance(text)
    assert tolerance is not None and tolerance.share == text.endswith("%")
    assert tolerance.allows(expected) == pytest.approx(allowed)


@pytest.mark.parametrize(
    "value", [-1, "-2%", "NaN", float("inf"), "2 percent", True, None, [], "%"]
)
def test_anything_else_is_no_tolerance(value):
    assert parse_tolerance(value) is None
