"""`kind: person`: an identify with the row's attributes (state such as `orders_count`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from target_customerio.operations import delete
from target_customerio.operations.identifiers import identifier_value
from target_customerio.operations.operation import (
    Builder,
    Built,
    Context,
    Finisher,
    Kind,
    Skipped,
    encode,
)
from target_customerio.operations.payload import (
    MAX_ATTRIBUTE_VALUE_BYTES,
    Payload,
    check_person_limits,
    normalise_email,
)
from target_customerio.routes import Identifier, KindOptions, Route, identifier_option

_new = tuple.__new__


@dataclass(frozen=True)
class PersonOptions(KindOptions):
    identifier: Identifier

    def columns_named(self) -> list[tuple[str, str]]:
        return [("identifier.field", self.identifier.field)]

    def identity_columns(self) -> tuple[str, ...]:
        return (self.identifier.field,)


def options(where: str, spec: dict[str, Any]) -> PersonOptions:
    return PersonOptions(identifier_option(f"{where}.identifier", spec.get("identifier")))


class PersonBuilder(Builder):
    def __init__(self, route: Route, schema: dict[str, Any], context: Context) -> None:
        identifier = route.options.identifier
        self._field, self._type = identifier.field, identifier.type
        self._on_delete = route.on_delete
        self._payload = Payload(route, schema)
        self._finisher = Finisher(context.ledger_scope)

    def build(self, record: dict[str, Any], native: bool = False) -> Built:
        kind = self._type
        if delete.marks_delete(record) and delete.is_delete(record):
            if self._on_delete == "ignore":
                raise Skipped("deleted")
            value = identifier_value(record, self._field, kind)
            body = delete.person_deleted(self._on_delete, {kind: value})
        else:
            value = identifier_value(record, self._field, kind)
            body = self._identify(record, kind, value, native)
        op = self._finisher.finish(body, value, f"person:{kind}:{value}")
        return _new(Built, ([op], (kind, value), None))

    def _identify(self, record: dict[str, Any], kind: str, value: str, native: bool) -> bytes:
        """The encoded identify. Checks run in this order: limits, contract, encoding."""
        attributes = self._payload.of(record, native=native)
        normalise_email(attributes)
        op = {
            "type": "person",
            "action": "identify",
            "identifiers": {kind: value},
            "attributes": attributes,
        }
        try:
            body: bytes | None = orjson.dumps(op)
        except orjson.JSONEncodeError:
            body = None
        # Encoded in at most 1000 bytes, no value can be over 1000 bytes (nor 300 attributes fit):
        # the per-attribute walk is needed only for larger operations or unusual names.
        if body is None or len(body) > MAX_ATTRIBUTE_VALUE_BYTES or not self._payload.names_short:
            check_person_limits(attributes)
        self._payload.check_contract(attributes)
        return body if body is not None else encode(op)


KIND: Kind = Kind("person", ("identifier",), options, PersonBuilder, delete.ON_DELETE)
