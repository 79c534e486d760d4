"""`kind: object`: an object's identify (or delete) with its attributes and related people."""

from __future__ import annotations

import orjson
import pytest

from target_customerio.operations.operation import Rejected
from tests.operations.helpers import Kind

CART = {
    "kind": "object",
    "object_type_id": 1,
    "object_id": "cart_id",
    "relationships": [{"field": "customer_id", "type": "id"}, {"field": "email", "type": "email"}],
}


def test_an_object_carries_its_attributes_and_relationships_not_its_identity_columns():
    built = Kind(CART).build({"cart_id": 9, "customer_id": 42, "email": "A@B.io", "total": 5})
    assert orjson.loads(built.operations[0].body) == {
        "type": "object",
        "action": "identify",
        "identifiers": {"object_type_id": "1", "object_id": "9"},
        "attributes": {"total": 5},
        "cio_relationships": [{"identifiers": {"id": "42"}}, {"identifiers": {"email": "a@b.io"}}],
    }
    assert built.identifier == ("object_id", "9")


@pytest.mark.parametrize(
    "marker", [{"_sdc_deleted_at": "2026-11-22T00:00:00Z"}, {"_sdc_operation_type": "D"}]
)
def test_a_deleted_row_deletes_the_object(marker):
    body = orjson.loads(
        Kind(CART).map({"cart_id": 9, "customer_id": 42, "email": "a@b.io", **marker}).body
    )
    assert body["action"] == "delete"


def test_a_related_person_without_an_identifier_rejects_the_row():
    with pytest.raises(Rejected) as err:
        Kind(CART).build({"cart_id": 9, "customer_id": None, "email": "a@b.io"})
    assert (err.value.reason, err.value.field) == ("missing_identifier", "customer_id")


def test_an_object_is_sent_again_when_its_content_changes():
    kind = Kind(CART, ledger_scope="w\x1fs")
    one = kind.map({"cart_id": 9, "customer_id": 42, "email": "a@b.io", "total": 5})
    two = kind.map({"cart_id": 9, "customer_id": 42, "email": "a@b.io", "total": 6})
    assert one.ledger[0] == two.ledger[0] and one.ledger[1] != two.ledger[1]
