"""A QA sync's choice (qa_sync.py), as properties over random inputs: at most N people, the
same ones whatever order the records come in, every route and lifecycle state covered when N
allows, each chosen person sent with every record of theirs, and nothing held without end."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.qa_sync import QaSync
from target_customerio.report import RunReport
from target_customerio.routes import Routes
from tests.harness import LONG_PROPERTIES

EXAMPLES = 1000 if LONG_PROPERTIES else 100
PEOPLE, ORDERS = "public-customers", "public-orders"
ROUTES = Routes(
    {
        PEOPLE: {"kind": "person", "identifier": {"field": "id", "type": "id"}},
        ORDERS: {
            "kind": "event",
            "identifier": {"field": "customer_id", "type": "id"},
            "event_name": "order_placed",
            "event_id": ["order_id"],
            "timestamp": "placed_at",
        },
    },
    None,
    "reject",
)
STATES = ("new", "repeat", "refunded", "churn_risk")

rows = st.lists(
    st.tuples(st.sampled_from([PEOPLE, ORDERS]), st.integers(0, 40), st.sampled_from(STATES)),
    max_size=150,
)


def record(at: int, stream: str, person: int, status: str) -> dict:
    if stream == PEOPLE:  # a person's state is theirs: the same row every time
        return {"id": f"C{person}", "status": STATES[person % 4], "at": at}
    return {"customer_id": f"C{person}", "order_id": at, "placed_at": "2026-11-02T10:00:00Z"}


def qa_sync(rows, size: int) -> tuple[QaSync, list[tuple[str, dict]]]:
    logger = logging.getLogger("test-qa")
    report = RunReport(reject_file=None, report_file=None, dry_run=False, logger=logger)
    qa = QaSync(size, ("status",), {PEOPLE, ORDERS}, report, logger)
    sent: list[tuple[str, dict]] = []
    for at, (stream, person, status) in enumerate(rows):
        item = record(at, stream, person, status)
        qa.hold(stream, ROUTES.match(stream), lambda item, s=stream: sent.append((s, item)), item)
    qa.release()
    return qa, sent


def who(stream: str, item: dict) -> str:
    return item["id"] if stream == PEOPLE else item["customer_id"]


@settings(max_examples=EXAMPLES, deadline=None)
@given(rows, st.integers(1, 10), st.randoms(use_true_random=False))
def test_a_qa_sync_sends_whole_people_the_same_ones_in_any_order(rows, size, rnd):
    qa, sent = qa_sync(rows, size)
    chosen = {person["value"] for person in qa.people}
    assert len(chosen) <= size
    assert {who(stream, item) for stream, item in sent} == chosen
    for person in chosen:  # every record of theirs, in the order it came
        theirs = [record(at, s, p, st_) for at, (s, p, st_) in enumerate(rows) if f"C{p}" == person]
        assert [item for stream, item in sent if who(stream, item) == person] == theirs
    pools = {(PEOPLE, STATES[p % 4]) if s == PEOPLE else (ORDERS, "") for s, p, _ in rows}
    if size >= len(pools):  # room for one of each: every state and route is in the sample
        states = {item["status"] for stream, item in sent if stream == PEOPLE}
        assert states == {status for stream, status in pools if stream == PEOPLE}
        assert any(stream == ORDERS for stream, _ in sent) == any(s == ORDERS for s, _ in pools)
    shuffled = list(enumerate(rows))
    rnd.shuffle(shuffled)
    again, _ = qa_sync([row for _, row in shuffled], size)
    assert {person["value"] for person in again.people} == chosen


def test_once_every_route_has_come_only_possible_people_are_held():
    logger = logging.getLogger("test-qa")
    report = RunReport(reject_file=None, report_file=None, dry_run=False, logger=logger)
    qa = QaSync(5, (), {PEOPLE}, report, logger)
    route = ROUTES.match(PEOPLE)
    for i in range(20_000):
        qa.hold(PEOPLE, route, lambda item: None, {"id": f"C{i}"})
    assert qa._holding <= 5 * 20  # the pool's five, and the few not yet pruned
    assert len(qa.chosen()) == 5
