"""`kind: reconcile`: each row names a Customer.io segment and the count the database says it
should have; the run reads the segment's count from the App API after everything else is
delivered, and fails (exit 7) when they disagree beyond the tolerance (reconcile.py).

A row becomes one check, encoded like an operation so that it travels the same way (mapping
processes, rejects, the report); it is never tracked in the ledger, so every check runs on
every run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from target_customerio.errors import ConfigError
from target_customerio.operations.operation import (
    Builder,
    Built,
    Context,
    Kind,
    Operation,
    Rejected,
)
from target_customerio.operations.segment import segment_id_value
from target_customerio.routes import KindOptions, Route, column_option
from target_customerio.values import whole_number

ON_DRIFT = ("fail", "warn")
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Tolerance:
    """How far the actual count may be from the expected one: a count, or a share of expected."""

    value: float
    share: bool = False

    def allows(self, expected: int) -> float:
        return expected * self.value / 100 if self.share else self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.share else f"{self.value:g}"


def parse_tolerance(value: Any) -> Tolerance | None:
    """`5` (a count), `"2%"` (a share of the expected count); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        number = float(value)
        return Tolerance(number) if math.isfinite(number) and number >= 0 else None
    if isinstance(value, str):
        share = _SHARE.match(value)
        if share:
            return Tolerance(float(share.group(1)), share=True)
        try:
            number = float(value)
        except ValueError:
            return None
        return Tolerance(number) if math.isfinite(number) and number >= 0 else None
    return None


@dataclass(frozen=True)
class ReconcileOptions(KindOptions):
    segment_id: str  # the column holding the segment's id
    expected_count: str  # the column holding what SQL counts
    tolerance: Tolerance | None = None  # a fixed tolerance; None: read from `tolerance_column`
    tolerance_column: str | None = None
    on_drift: str = "fail"

    def columns_named(self) -> list[tuple[str, str]]:
        named = [("segment_id", self.segment_id), ("expected_count", self.expected_count)]
        return named + ([("tolerance", self.tolerance_column)] if self.tolerance_column else [])

    def identity_columns(self) -> tuple[str, ...]:
        return (self.segment_id,)


def options(where: str, spec: dict[str, Any]) -> ReconcileOptions:
    segment = column_option(f"{where}.segment_id", spec.get("segment_id"))
    expected = column_option(f"{where}.expected_count", spec.get("expected_count"))
    raw = spec.get("tolerance", 0)
    tolerance, column = parse_tolerance(raw), None
    if tolerance is None:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(
                f'{where}.tolerance: a count (5), a share ("2%") or the column holding one'
            )
        column = raw
    on_drift = spec.get("on_drift", "fail")
    if on_drift not in ON_DRIFT:
        raise ConfigError(f"{where}.on_drift: {on_drift!r} is not one of {', '.join(ON_DRIFT)}")
    return ReconcileOptions(segment, expected, tolerance, column, on_drift)


class ReconcileBuilder(Builder):
    def __init__(self, route: Route, schema: dict[str, Any], context: Context) -> None:
        self._options: ReconcileOptions = route.options

    def build(self, record: dict[str, Any], native: bool = False) -> Built:
        o = self._options
        segment = segment_id_value(record.get(o.segment_id))
        if segment is None:
            raise Rejected(
                "invalid_segment_id",
                o.segment_id,
                f"{o.segment_id} must hold a Customer.io segment id (a positive integer)",
            )
        expected = whole_number(record.get(o.expected_count))
        if expected is None:
            raise Rejected(
                "invalid_expected_count",
                o.expected_count,
                f"{o.expected_count} must hold a count (a non-negative integer)",
            )
        tolerance = o.tolerance
        if tolerance is None:
            tolerance = parse_tolerance(record.get(o.tolerance_column or ""))
            if tolerance is None:
                raise Rejected(
                    "invalid_tolerance",
                    o.tolerance_column,
                    f'{o.tolerance_column} must hold a count (5) or a share ("2%")',
                )
        check = {
            "segment_id": segment,
            "expected": expected,
            "tolerance": tolerance.value,
            "share": tolerance.share,
            "on_drift": o.on_drift,
        }
        return Built([Operation(orjson.dumps(check), str(segment))], ("segment_id", str(segment)))


KEYS = ("segment_id", "expected_count", "tolerance", "on_drift")
KIND: Kind = Kind("reconcile", KEYS, options, ReconcileBuilder, channel="checks", common=("kind",))
