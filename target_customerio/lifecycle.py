"""The other operation kinds: deletes, merges, objects, and event times mirrored onto people.

Each builds on the person/event Mapper's identity and payload rules, so identifiers, types,
limits and contracts behave the same for every kind.
"""

from __future__ import annotations

from typing import Any

from target_customerio.mapping import Mapper, Operation, Skipped, encode_operation, identifier_value


def is_delete(record: dict[str, Any]) -> bool:
    """tap-postgres LOG_BASED marks deletes with `_sdc_deleted_at`; tap-mssql CDC with `D`."""
    return bool(record.get("_sdc_deleted_at")) or record.get("_sdc_operation_type") == "D"


def delete_operation(mapper: Mapper, record: dict[str, Any]) -> Operation:
    """What a person route's `on_delete` asks for when the source row was deleted."""
    action = mapper.route.on_delete
    if mapper.route.kind != "person" or action == "ignore":
        raise Skipped("deleted")
    kind, value = mapper.identifier(record)
    identifiers = {kind: value}
    if action == "unsubscribe":
        op = {"type": "person", "action": "identify", "identifiers": identifiers, "attributes": {"unsubscribed": True}}
    else:  # delete | suppress
        op = {"type": "person", "action": action, "identifiers": identifiers}
    return mapper.operation(encode_operation(op), value, record, f"person:{kind}:{value}")


def mirror_operation(mapper: Mapper, event: Operation, timestamp: int) -> Operation:
    """An identify setting the route's `mirror_to_attribute` to the event's time."""
    kind, value = mapper.last_identifier
    op = {"type": "person", "action": "identify", "identifiers": {kind: value},
          "attributes": {mapper.route.mirror_to_attribute: timestamp}}
    return Operation(encode_operation(op), value, event.record, None)


class MergeMapper(Mapper):
    """`kind: merge`: fold the secondary profile into the primary (a guest that registered).

    The primary is identified first, in the same request and order, so the merge never races
    the profile it merges into. Sync merges after the streams that create the secondary
    profiles (or in a later job): a merge whose secondary does not exist yet merges nothing.
    """

    def operations(self, record: dict[str, Any], native: bool = False) -> list[Operation]:
        kind, value = self.identifier(record)
        secondary = self.route.secondary
        assert secondary is not None
        other_kind, other = secondary.type, identifier_value(record, secondary.field, secondary.type)
        if (kind, value) == (other_kind, other):
            raise Skipped("same_person")
        identify = {"type": "person", "action": "identify", "identifiers": {kind: value}, "attributes": {}}
        merge = {"type": "person", "action": "merge", "primary": {kind: value}, "secondary": {other_kind: other}}
        # Both travel on the secondary's delivery shard, behind anything already queued for the
        # secondary (the guest's own events), so the merge finds the profile it folds in.
        return [
            Operation(encode_operation(identify), other, record, None),
            self.operation(encode_operation(merge), other, record, f"merge:{kind}:{value}:{other_kind}:{other}"),
        ]

    def map(self, record: dict[str, Any], native: bool = False) -> Operation:
        """The merge itself (without the primary's identify that goes before it)."""
        return self.operations(record, native)[-1]


class ObjectMapper(Mapper):
    """`kind: object`: a Customer.io object (a cart, a subscription) related to its people."""

    def map(self, record: dict[str, Any], native: bool = False) -> Operation:
        _, object_id = self.identifier(record)
        attributes = self.payload(record, native=native)
        self.check_contract(attributes)
        relationships = []
        for rel in self.route.relationships:
            kind, value = rel.type, identifier_value(record, rel.field, rel.type)
            relationships.append({"identifiers": {kind: value}})
        op = {
            "type": "object",
            "action": "delete" if is_delete(record) else "identify",
            "identifiers": {"object_type_id": self.route.object_type_id, "object_id": object_id},
            "attributes": attributes,
            "cio_relationships": relationships,
        }
        return self.operation(encode_operation(op), object_id, record, f"object:{self.route.object_type_id}:{object_id}")


MAPPERS: dict[str, type[Mapper]] = {"person": Mapper, "event": Mapper, "merge": MergeMapper, "object": ObjectMapper}
