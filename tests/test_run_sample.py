"""The sample of whom a run sent what (run_sample.py), as properties: bounded, the same people
whatever order Customer.io accepted the requests in, every category covered, and a chosen
person's record exactly what the run sent them; and verification's re-reads (on a fake clock:
no wall-clock thresholds) and report lines."""

from __future__ import annotations

import logging

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.errors import VerifyError
from target_customerio.operations.operation import Operation
from target_customerio.run_sample import RunSample, Sent
from target_customerio.verification import LOGGED, Verifier, report_lines
from target_customerio.wire import Batch, Segment
from tests.harness import LONG_PROPERTIES

EXAMPLES = 1000 if LONG_PROPERTIES else 100
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


class _Workspace:
    """Stands in for the App API in unit tests of the re-reads: profile `P1` holds `plan`
    as `holds(read)` says on the read-th read; activities as given."""

    def __init__(self, holds, activities=()):
        self.reads, self._holds, self._activities = 0, holds, list(activities)

    def call(self, method, path, body, what):
        if path.startswith("/v1/customers/attributes"):
            self.reads += 1
            plan = self._holds(self.reads)
            if plan is None:
                return {"customers": []}
            customer = {"id": "P1", "identifiers": {"id": "P1"}, "attributes": {"plan": plan}}
            return {"customers": [{"customer": customer}]}
        return {"activities": self._activities, "next": ""}


def _verify(workspace, timeout=100.0):
    now = [0.0]
    sent = Sent("id", "P1", "s")
    sent.apply("s", "identify", {"action": "identify", "attributes": {"plan": "gold"}})
    verifier = Verifier(
        workspace,
        0,
        timeout,
        logging.getLogger("test-verification"),
        clock=lambda: now[0],
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
    )
    return verifier.verify([sent]), now[0]


def test_a_write_applied_late_is_read_again_until_it_is_there():
    workspace = _Workspace(lambda read: None if read == 1 else "silver" if read < 4 else "gold")
    section, waited = _verify(workspace)
    assert section["ok"] == 1 and section["discrepancies"] == [] and section["rounds"] == 4
    assert waited == 1 + 2 + 4  # the pauses grow


def test_a_mismatch_counts_once_verify_timeout_has_passed():
    workspace = _Workspace(lambda read: "silver")
    section, waited = _verify(workspace, timeout=20)
    assert waited == 20 and section["ok"] == 0
    [item] = section["discrepancies"]
    assert (item["check"], item["sent"], item["found"]) == (
        "attribute",
        {"plan": "gold"},
        {"plan": "silver"},
    )


def test_a_failed_change_is_final_at_once():
    failed = {"type": "failed_attribute_change", "name": "plan", "timestamp": 5, "data": {}}
    workspace = _Workspace(lambda read: "silver", [failed])
    section, waited = _verify(workspace)
    assert waited == 0 and section["rounds"] == 1
    assert {d["check"] for d in section["discrepancies"]} == {
        "attribute",
        "failed_attribute_change",
    }
