"""`kind: person`: an identify with the row's attributes (state such as `orders_count`).

With `mirror: true` the route mirrors its view: a person the last complete run sent who is not
in this one has left it, and `on_exit` says what that sends (`exit_operation`): the attributes
the route last sent removed (`unset`), `suppress`, `delete`, or nothing (`ignore`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from target_customerio.errors import ConfigError
from target_customerio.identity import PERSON_KEYS, IdentityOptions, identity_options
from target_customerio.operations import delete
from target_customerio.operations.identifiers import identifier_value
from target_customerio.operations.operation import (
    Builder,
    Built,
    Context,
    Finisher,
    Kind,
    Rejected,
    Skipped,
    encode,
)
from target_customerio.operations.payload import (
    MAX_ATTRIBUTE_VALUE_BYTES,
    Payload,
    check_person_limits,
    normalise_email,
)
from target_customerio.routes import (
    ON_EXIT,
    Identifier,
    KindOptions,
    Mirror,
    Route,
    identifier_option,
    max_exit_ratio_option,
)

_new = tuple.__new__


@dataclass(frozen=True)
class PersonOptions(KindOptions):
    identifier: Identifier
    mirror: Mirror | None = None  # `mirror: true`: people who leave the view are noticed
    identity: IdentityOptions = IdentityOptions()  # identity.py

    def columns_named(self) -> list[tuple[str, str]]:
        return [("identifier.field", self.identifier.field)]

    def identity_columns(self) -> tuple[str, ...]:
        return (self.identifier.field,)

    def mirroring(self) -> Mirror | None:
        return self.mirror


def options(where: str, spec: dict[str, Any]) -> PersonOptions:
    identifier = identifier_option(f"{where}.identifier", spec.get("identifier"))
    mirror = spec.get("mirror", False)
    if not isinstance(mirror, bool):
        raise ConfigError(f"{where}.mirror: true or false")
    if not mirror:
        for key in ("on_exit", "max_exit_ratio"):
            if key in spec:
                raise ConfigError(
                    f"{where}.{key}: applies only with `mirror: true` (without it nobody leaves "
                    "the view, so it would do nothing)"
                )
        return PersonOptions(identifier, identity=identity_options(where, spec))
    on_exit = spec.get("on_exit", "unset")
    if on_exit not in ON_EXIT:
        raise ConfigError(f"{where}.on_exit: {on_exit!r} is not one of {', '.join(ON_EXIT)}")
    if spec.get("on_delete", "ignore") != "ignore":
        raise ConfigError(
            f"{where}.on_delete: does not apply with `mirror: true`: a mirrored view is read "
            "whole every run, so a deleted row is a person who left it (`on_exit`)"
        )
    ratio = max_exit_ratio_option(f"{where}.max_exit_ratio", spec.get("max_exit_ratio"))
    return PersonOptions(identifier, Mirror(on_exit, ratio), identity_options(where, spec))


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
        return _new(Built, ([op], (kind, value), None, None))

    def member_key(self, record: dict[str, Any]) -> int | None:
        """The ledger key of the person a rejected record is about, when its identifier reads:
        a mirror route still counts them as in the view."""
        try:
            value = identifier_value(record, self._field, self._type)
        except Rejected:
            return None
        return self._finisher.key(f"person:{self._type}:{value}")

    def identity(self, record: dict[str, Any]) -> tuple[str, str] | None:
        try:
            return self._type, identifier_value(record, self._field, self._type)
        except Rejected:
            return None

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


def member(body: bytes) -> str:
    """What a mirror route keeps in the ledger about a person it sent (from the identify):
    `[identifier type, value, [attribute names]]`, what an exit needs."""
    op = orjson.loads(body)
    [(kind, value)] = op["identifiers"].items()
    return orjson.dumps([kind, value, sorted(op.get("attributes") or {})]).decode()


def exit_operation(on_exit: str, member: str) -> bytes | None:
    """The operation that tells Customer.io a person left the view (None: nothing to send).
    `unset` sends every attribute the route last sent as null, which Customer.io removes."""
    kind, value, names = orjson.loads(member)
    identifiers = {kind: value}
    if on_exit in ("suppress", "delete"):
        return delete.person_deleted(on_exit, identifiers)
    if on_exit != "unset" or not names:
        return None
    op = {
        "type": "person",
        "action": "identify",
        "identifiers": identifiers,
        "attributes": dict.fromkeys(names),
    }
    return encode(op)


KEYS = ("identifier", "mirror", "on_exit", "max_exit_ratio", *PERSON_KEYS)
KIND: Kind = Kind(
    "person", KEYS, options, PersonBuilder, delete.ON_DELETE, member=member, exit=exit_operation
)
