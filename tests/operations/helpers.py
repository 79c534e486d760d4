"""A route's builder as a mapping process uses it, for the operation kinds' unit tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Container
from pathlib import Path
from typing import Any

import orjson

from target_customerio.operations import KINDS
from target_customerio.operations.operation import Built, Context, Operation
from target_customerio.routes import Route, Routes

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
SCHEMA = {
    "properties": {
        "placed_at": {"type": "string", "format": "date-time"},
        "born_on": {"format": "date", "type": ["string", "null"]},
    }
}
PERSON = {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}}
EVENT = {
    "kind": "event",
    "identifier": {"field": "customer_id", "type": "id"},
    "event_name": "Order Placed",
    "event_id": ["order_id"],
    "timestamp": "placed_at",
}


def route(spec: dict) -> Route:
    """The route a spec reads as (the options every route takes and its kind's)."""
    found = Routes({"s": spec}, Path("."), "reject").match("s")
    assert found is not None
    return found


class Kind:
    """The builder of a route's kind (operations.KINDS), built from the route's spec."""

    def __init__(
        self,
        spec: dict,
        schema: dict = SCHEMA,
        *,
        names: list | None = None,
        now: float | None = None,
        ledger_scope: str | None = None,
        sent_events: Container[int] = frozenset(),
    ) -> None:
        found = route(spec)
        on_name = (lambda raw, name: names.append((raw, name))) if names is not None else None
        context = Context(
            NOW.timestamp() if now is None else now, ledger_scope, sent_events, on_name
        )
        self.builder = KINDS[found.kind].builder(found, schema, context)

    def build(self, record: dict[str, Any], native: bool = False) -> Built:
        return self.builder.build(record, native)

    def map(self, record: dict[str, Any], native: bool = False) -> Operation:
        """The record's first operation (what a person or event record becomes)."""
        return self.build(record, native).operations[0]

    def bodies(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        return [orjson.loads(op.body) for op in self.build(record).operations]


def op(kind: Kind, record: dict) -> dict:
    return orjson.loads(kind.map(record).body)
