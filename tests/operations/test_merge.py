"""`kind: merge`: the primary identified first, then the merge, both on the secondary's shard."""

from __future__ import annotations

import orjson
import pytest

from target_customerio.operations.operation import Rejected, Skipped
from tests.operations.helpers import Kind

MERGE = {
    "kind": "merge",
    "primary": {"field": "customer_id", "type": "id"},
    "secondary": {"field": "guest_email", "type": "email"},
}


def test_the_primary_is_identified_before_the_merge_on_the_secondarys_shard():
    built = Kind(MERGE).build({"customer_id": 42, "guest_email": " Guest@Example.com "})
    identify, merge = (orjson.loads(op.body) for op in built.operations)
    assert identify == {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "42"},
        "attributes": {},
    }
    assert merge == {
        "type": "person",
        "action": "merge",
        "primary": {"id": "42"},
        "secondary": {"email": "guest@example.com"},
    }
    assert [op.shard_key for op in built.operations] == ["guest@example.com"] * 2
    assert built.identifier == ("id", "42")


def test_a_merge_is_tracked_once_and_its_identify_not_at_all():
    built = Kind(MERGE, ledger_scope="w\x1fs").build({"customer_id": 42, "guest_email": "g@x.io"})
    assert built.operations[0].ledger is None
    assert built.operations[1].ledger is not None and built.operations[1].ledger[1] == 0


def test_a_person_merged_into_themself_is_skipped():
    spec = {**MERGE, "secondary": {"field": "old_id", "type": "id"}}
    with pytest.raises(Skipped, match="same_person"):
        Kind(spec).build({"customer_id": 42, "old_id": "42"})


@pytest.mark.parametrize(
    "record, field",
    [
        ({"customer_id": None, "guest_email": "g@x.io"}, "customer_id"),
        ({"customer_id": 1, "guest_email": "nope"}, "guest_email"),
    ],
)
def test_either_identifier_missing_or_bad_rejects_the_row(record, field):
    with pytest.raises(Rejected) as err:
        Kind(MERGE).build(record)
    assert err.value.field == field
