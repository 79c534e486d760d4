"""`kind: merge`: fold a secondary profile into the primary one (a guest that registered).

The primary is identified first, in the same request and order, so the merge never races the
profile it merges into. Sync merges after the streams that create the secondary profiles (or
in a later job): a merge whose secondary does not exist yet merges nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from target_customerio.operations.identifiers import identifier_value
from target_customerio.operations.operation import (
    Builder,
    Built,
    Context,
    Finisher,
    Kind,
    Operation,
    Skipped,
    encode,
)
from target_customerio.routes import Identifier, KindOptions, Route, identifier_option


@dataclass(frozen=True)
class MergeOptions(KindOptions):
    primary: Identifier
    secondary: Identifier

    def columns_named(self) -> list[tuple[str, str]]:
        return [("primary.field", self.primary.field), ("secondary.field", self.secondary.field)]

    def identity_columns(self) -> tuple[str, ...]:
        return (self.primary.field, self.secondary.field)


def options(where: str, spec: dict[str, Any]) -> MergeOptions:
    return MergeOptions(
        identifier_option(f"{where}.primary", spec.get("primary")),
        identifier_option(f"{where}.secondary", spec.get("secondary")),
    )


class MergeBuilder(Builder):
    def __init__(self, route: Route, schema: dict[str, Any], context: Context) -> None:
        o: MergeOptions = route.options
        self._primary, self._secondary = o.primary, o.secondary
        self._finisher = Finisher(context.ledger_scope)

    def build(self, record: dict[str, Any], native: bool = False) -> Built:
        kind = self._primary.type
        value = identifier_value(record, self._primary.field, kind)
        other_kind = self._secondary.type
        other = identifier_value(record, self._secondary.field, other_kind)
        if (kind, value) == (other_kind, other):
            raise Skipped("same_person")
        identify = {
            "type": "person",
            "action": "identify",
            "identifiers": {kind: value},
            "attributes": {},
        }
        merge = {
            "type": "person",
            "action": "merge",
            "primary": {kind: value},
            "secondary": {other_kind: other},
        }
        # Both travel on the secondary's delivery shard, behind anything already queued for the
        # secondary (the guest's own events), so the merge finds the profile it folds in.
        ops = [
            Operation(encode(identify), other),
            self._finisher.finish(
                encode(merge), other, f"merge:{kind}:{value}:{other_kind}:{other}", content=False
            ),
        ]
        return Built(ops, (kind, value))


KIND: Kind = Kind("merge", ("primary", "secondary"), options, MergeBuilder)
