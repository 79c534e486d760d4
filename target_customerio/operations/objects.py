"""`kind: object`: a Customer.io object (a cart, a subscription) and its relationships to people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from target_customerio.errors import ConfigError
from target_customerio.identity import USE_KEYS, IdentityOptions, identity_options
from target_customerio.operations import delete
from target_customerio.operations.identifiers import identifier_value
from target_customerio.operations.operation import Builder, Built, Context, Finisher, Kind, encode
from target_customerio.operations.payload import Payload
from target_customerio.routes import (
    Identifier,
    KindOptions,
    Route,
    column_option,
    identifier_option,
)


@dataclass(frozen=True)
class ObjectOptions(KindOptions):
    object_type_id: str
    object_id: str  # the column holding the object's id
    relationships: tuple[Identifier, ...] = ()
    identity: IdentityOptions = IdentityOptions()  # identity.py

    def columns_named(self) -> list[tuple[str, str]]:
        named = [("object_id", self.object_id)]
        return named + [
            (f"relationships[{i}].field", r.field) for i, r in enumerate(self.relationships)
        ]

    def identity_columns(self) -> tuple[str, ...]:
        return (self.object_id, *(r.field for r in self.relationships))


def options(where: str, spec: dict[str, Any]) -> ObjectOptions:
    type_id, id_field = spec.get("object_type_id"), spec.get("object_id")
    if type_id is None or not str(type_id).strip():
        raise ConfigError(
            f"{where}.object_type_id: the Customer.io object type id (e.g. 1) is required"
        )
    if not id_field:
        raise ConfigError(f"{where}.object_id: name the column holding the object's id")
    column_option(f"{where}.object_id", id_field)
    relations = spec.get("relationships") or []
    if not isinstance(relations, list):
        raise ConfigError(f"{where}.relationships: a list of {{field, type}} person identifiers")
    return ObjectOptions(
        object_type_id=str(type_id),
        object_id=id_field,
        relationships=tuple(
            identifier_option(f"{where}.relationships[{i}]", r) for i, r in enumerate(relations)
        ),
        identity=identity_options(where, spec),
    )


class ObjectBuilder(Builder):
    def __init__(self, route: Route, schema: dict[str, Any], context: Context) -> None:
        o: ObjectOptions = route.options
        self._type_id, self._id_column, self._relationships = (
            o.object_type_id,
            o.object_id,
            o.relationships,
        )
        self._payload = Payload(route, schema)
        self._finisher = Finisher(context.ledger_scope)

    def build(self, record: dict[str, Any], native: bool = False) -> Built:
        object_id = identifier_value(record, self._id_column, "object_id")
        attributes = self._payload.of(record, native=native)
        self._payload.check_contract(attributes)
        relationships = []
        for rel in self._relationships:
            relationships.append(
                {"identifiers": {rel.type: identifier_value(record, rel.field, rel.type)}}
            )
        op = {
            "type": "object",
            "action": "delete" if delete.is_delete(record) else "identify",
            "identifiers": {"object_type_id": self._type_id, "object_id": object_id},
            "attributes": attributes,
            "cio_relationships": relationships,
        }
        about = f"object:{self._type_id}:{object_id}"
        return Built(
            [self._finisher.finish(encode(op), object_id, about)], ("object_id", object_id)
        )


KIND: Kind = Kind(
    "object", ("object_type_id", "object_id", "relationships", *USE_KEYS), options, ObjectBuilder
)
