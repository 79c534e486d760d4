"""`kind: segment`: manual-segment membership from a view of (person, segment) rows.

Each row is one membership, encoded like an operation so that it travels the same way
(mapping processes, the ledger's change detection, rejects, the report), but it is not a Track
API batch operation: memberships go to `memberships.py`, which adds them with
`POST /api/v1/segments/{id}/add_customers` once the identifies received before them are
accepted. A segment route always mirrors its view: a membership the ledger holds that is not
in a complete run is removed (`.../remove_customers`), under the route's `max_exit_ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from target_customerio.identity import USE_KEYS, IdentityOptions, identity_options
from target_customerio.operations.identifiers import identifier_value
from target_customerio.operations.operation import (
    Builder,
    Built,
    Context,
    Finisher,
    Kind,
    Rejected,
)
from target_customerio.routes import (
    Identifier,
    KindOptions,
    Mirror,
    Route,
    column_option,
    identifier_option,
    max_exit_ratio_option,
)
from target_customerio.values import whole_number

_new = tuple.__new__


@dataclass(frozen=True)
class SegmentOptions(KindOptions):
    identifier: Identifier
    segment_id: str  # the column holding the manual segment's id
    mirror: Mirror = Mirror("remove")
    identity: IdentityOptions = IdentityOptions()  # identity.py

    def columns_named(self) -> list[tuple[str, str]]:
        return [("identifier.field", self.identifier.field), ("segment_id", self.segment_id)]

    def identity_columns(self) -> tuple[str, ...]:
        return (self.identifier.field, self.segment_id)

    def mirroring(self) -> Mirror | None:
        return self.mirror


def options(where: str, spec: dict[str, Any]) -> SegmentOptions:
    identifier = identifier_option(f"{where}.identifier", spec.get("identifier"))
    segment = column_option(f"{where}.segment_id", spec.get("segment_id"))
    ratio = max_exit_ratio_option(f"{where}.max_exit_ratio", spec.get("max_exit_ratio"))
    return SegmentOptions(
        identifier, segment, Mirror("remove", ratio), identity_options(where, spec)
    )


def segment_id_value(value: Any) -> int | None:
    """A segment id: a positive integer, as a number or its digits; None otherwise."""
    number = whole_number(value)
    return number if number else None


class SegmentBuilder(Builder):
    def __init__(self, route: Route, schema: dict[str, Any], context: Context) -> None:
        o: SegmentOptions = route.options
        self._field, self._type, self._segment = o.identifier.field, o.identifier.type, o.segment_id
        self._finisher = Finisher(context.ledger_scope)

    def build(self, record: dict[str, Any], native: bool = False) -> Built:
        segment = segment_id_value(record.get(self._segment))
        if segment is None:
            raise Rejected(
                "invalid_segment_id",
                self._segment,
                f"{self._segment} must hold a Customer.io manual segment id (a positive integer)",
            )
        kind = self._type
        value = identifier_value(record, self._field, kind)
        body = membership(segment, kind, value)
        op = self._finisher.finish(
            body, str(segment), f"segment:{segment}:{kind}:{value}", content=False
        )
        return _new(Built, ([op], (kind, value), None, None))


def membership(segment: int, kind: str, value: str) -> bytes:
    """A membership as it travels to memberships.py (and is kept in the ledger)."""
    return orjson.dumps({"segment_id": segment, "id_type": kind, "id": value})


def member(body: bytes) -> str:
    """What the ledger keeps about a membership: the membership itself."""
    return body.decode()


KEYS = ("identifier", "segment_id", "max_exit_ratio", *USE_KEYS)
KIND: Kind = Kind(
    "segment",
    KEYS,
    options,
    SegmentBuilder,
    channel="segments",
    common=("kind", "max_volume_change"),
    member=member,
)
