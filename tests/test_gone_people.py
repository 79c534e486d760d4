"""gone_people.py reads whom a person operation names from its bytes (no parse): the same
people, and the same effect, as parsing it says, whatever the identifier's value holds (quotes,
backslashes, any Unicode) and whatever the operation's shape. The delivery-time check itself
runs through the real process in test_ledger_promises.py and test_convergence.py."""

from __future__ import annotations

import hypothesis.strategies as st
import orjson
from hypothesis import given, settings

from target_customerio.gone_people import _about, _segment_about
from target_customerio.ledger import person_key, scope_seed
from target_customerio.wire import SegmentBuilder
from tests.harness import LONG_PROPERTIES as LONG

WORKSPACE = "https://track.customer.io\x1fsite"
KINDS = st.sampled_from(["id", "email", "cio_id"])
VALUES = st.text(max_size=12)
PERSON = st.builds(
    lambda action, kind, value, extra: (
        {"type": "person", "action": action, "primary": {kind: value}, "secondary": {"id": "x"}}
        if action == "merge"
        else {"type": "person", "action": action, "identifiers": {kind: value}, **extra}
    ),
    st.sampled_from(["identify", "event", "delete", "suppress", "merge", "unsuppress"]),
    KINDS,
    VALUES,
    st.dictionaries(st.sampled_from(["attributes", "name", "id"]), st.text(max_size=5)),
)
OBJECT = st.builds(
    lambda people: {
        "type": "object",
        "action": "identify",
        "identifiers": {"object_type_id": "1", "object_id": "c"},
        "attributes": {},
        "cio_relationships": [{"identifiers": {kind: value}} for kind, value in people],
    },
    st.lists(st.tuples(KINDS, VALUES), max_size=3),
)


@settings(max_examples=500 if LONG else 100, deadline=None)
@given(ops=st.lists(st.one_of(PERSON, OBJECT), min_size=1, max_size=8))
def test_whom_an_operation_names_is_read_as_parsing_it_says(ops) -> None:
    builder = SegmentBuilder()
    for i, op in enumerate(ops):
        builder.add(orjson.dumps(op), i, None)
    seed = scope_seed(WORKSPACE)
    read = _segment_about(builder.segment(), seed)
    for op, (effect, keys, _) in zip(ops, read, strict=True):
        assert (effect, keys) == _about(op, seed)[:2]
        if op["type"] == "person":  # the key the delete recorded (delivery.py: person_key)
            [(kind, value)] = (op.get("primary") or op["identifiers"]).items()
            assert keys == [person_key(WORKSPACE, kind, value)]
