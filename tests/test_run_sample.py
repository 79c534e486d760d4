"""The sample of whom a run sent what (run_sample.py), as properties: bounded, the same people
whatever order Customer.io accepted the requests in, every category covered, and a chosen
person's record exactly what the run sent them; and verification's report lines."""

from __future__ import annotations

import logging
import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.errors import VerifyError
from target_customerio.operations.operation import Operation
from target_customerio.run_sample import RunSample, Sent
from target_customerio.verification import LOGGED, report_lines
from target_customerio.wire import Batch, Segment

EXAMPLES = 1000 if os.environ.get("TARGET_CUSTOMERIO_LONG_PROPERTIES") else 100
STREAMS = ("public-customers", "public-orders", "public-refunds")

# (stream, person, action, attribute value)
ops = st.lists(
    st.tuples(
        st.sampled_from(STREAMS),
        st.integers(0, 30),
        st.sampled_from(["identify", "identify", "event", "delete"]),
        st.integers(0, 5),
    ),
    max_size=120,
)


def operation(person: int, action: str, value: int, at: int) -> dict:
    op = {"type": "person", "action": action, "identifiers": {"id": f"P{person}"}}
    if action == "identify":
        op["attributes"] = {"plan": value, "seen": at}
    elif action == "event":
        op.update(name=f"e{value}", id=f"E{at}", timestamp=1000 + at)
    return op


def batches(sequence: list[tuple[str, int, str, int]]) -> list[Batch]:
    """One request an operation, each tagged with its place in the sequence."""
    out = []
    for at, (stream, person, action, value) in enumerate(sequence):
        body = orjson.dumps(operation(person, action, value, at))
        out.append(Batch(stream, [Segment.of([Operation(body, f"P{person}")])]))
    return out


def sample_of(sequence, size: int) -> RunSample:
    sample = RunSample(size)
    for batch in batches(sequence):
        sample.accepted(batch)
    return sample


def folded(sequence, person: int) -> Sent:
    """Everything the run sent one person, folded from the start."""
    sent = Sent("id", f"P{person}")
    for at, (stream, who, action, value) in enumerate(sequence):
        if who == person:
            sent.apply(stream, action, operation(person, action, value, at))
    return sent


@settings(max_examples=EXAMPLES, deadline=None)
@given(ops, st.integers(1, 8), st.randoms(use_true_random=False))
def test_the_sample_is_bounded_order_free_and_covers_every_category(sequence, size, rnd):
    sample = sample_of(sequence, size)
    chosen = sample.chosen()
    people = {p.identifier for p in chosen}
    assert len(chosen) == len(people) <= size
    categories = {(stream, action) for stream, _, action, _ in sequence}
    if size >= len(categories):  # room for one of each: every category has someone chosen
        for stream, outcome in categories:
            assert any((stream, outcome) in p.outcomes for p in chosen), (stream, outcome)
    shuffled = list(sequence)
    rnd.shuffle(shuffled)
    # delivery threads accept requests in any order: the same people are chosen
    assert {p.identifier for p in sample_of(shuffled, size).chosen()} == people


@settings(max_examples=EXAMPLES, deadline=None)
@given(ops, st.integers(1, 8))
def test_a_person_sent_by_one_stream_is_known_whole(sequence, size):
    """When all of a person's operations come through one stream and outcome, the sample knows
    everything the run sent them (their last attributes, their events, deleted or not)."""
    one = [(STREAMS[0], person, "identify", value) for _, person, _, value in sequence]
    for sent in sample_of(one, size).chosen():
        whole = folded(one, int(sent.identifier[1:]))
        assert (sent.attributes, sent.events, sent.gone) == (
            whole.attributes,
            whole.events,
            whole.gone,
        )


def test_a_delete_forgets_and_a_later_identify_makes_a_new_profile():
    sent = Sent("id", "P1")
    sent.apply("s", "identify", operation(1, "identify", 3, 0))
    sent.apply("s", "delete", operation(1, "delete", 0, 1))
    assert sent.gone and sent.attributes == {}
    sent.apply("s", "identify", {**operation(1, "identify", 4, 2), "attributes": {"x": 1}})
    assert not sent.gone and sent.attributes == {"x": (1, "s")}


def test_the_first_20_discrepancies_are_lines_then_a_count(caplog):
    problems = [
        {"stream": "s", "identifier": f"P{i}", "check": "attribute", "sent": {"a": i}, "found": {}}
        for i in range(LOGGED + 5)
    ]
    section = {"sampled": 30, "checked": 30, "ok": 5, "discrepancies": problems}
    logger = logging.getLogger("test-verification")
    level = caplog.at_level(logging.INFO, logger="test-verification")
    with level, pytest.raises(VerifyError) as failed:
        report_lines(section, logger, warn_only=False)
    lines = [r.getMessage() for r in caplog.records]
    assert sum(": attribute: sent" in line for line in lines) == LOGGED
    assert "verification: 5 more discrepancies (the report's verification lists them all)" in lines
    assert failed.value.exit_code == 9
    assert "25 of 30 people read back do not hold what the run sent them" in str(failed.value)
