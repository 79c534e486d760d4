"""The campaign counts and the guard (campaigns.py), as properties over any run's events; and
which campaigns of a `GET /v1/campaigns` answer can start anybody. (End to end through the real
process: tests/test_campaigns.py.)"""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.campaigns import WINDOW_SECONDS, Campaigns, Trigger, triggers

NOW = 2_000_000_000.0
LOGGER = logging.getLogger("test")
post = Trigger(1, "Post-purchase", "order_placed")
events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["order_placed", "refund_issued"]),
        st.sampled_from([("id", p) for p in "abcdefgh"]),
        st.sampled_from([0, WINDOW_SECONDS - 1, WINDOW_SECONDS + 1]),  # seconds ago
    ),
    max_size=40,
)


def run(events, limit, dry_run=False):
    campaigns = Campaigns([post], started_at=NOW, max_entries=limit, dry_run=dry_run, logger=LOGGER)
    chunk = [(i, name, person, int(NOW - ago)) for i, (name, person, ago) in enumerate(events)]
    cut = campaigns.count_events("public-orders", None, chunk)
    return cut, campaigns.section()["campaigns"][0]


def can_start(events):
    return [
        (i, p) for i, (n, p, ago) in enumerate(events) if n == "order_placed" and ago < 72 * 3600
    ]


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.one_of(st.none(), st.integers(0, 8)))
def test_the_guard_stops_at_the_first_event_for_one_person_past_the_limit(events, limit):
    cut, count = run(events, limit)
    starting = can_start(events)
    people = list(dict.fromkeys(p for _, p in starting))  # in the order they first come
    if limit is None or len(people) <= limit:
        assert cut is None
        assert count["events"] == len(starting) and count["people"] == len(people)
        assert count["guard"] is None
    else:
        first_past = next(i for i, p in starting if p == people[limit])
        assert cut == first_past
        assert count["people"] == limit
        assert count["events"] == len([i for i, _ in starting if i < cut])
        assert count["guard"]["action"] == "stopped the run"
    seen = events if cut is None else events[:cut]
    old = [e for e in seen if e[0] == "order_placed" and e[2] > WINDOW_SECONDS]
    assert count["too_old_to_trigger"] == len(old)


@settings(max_examples=100, deadline=None)
@given(events_strategy, st.integers(0, 8))
def test_a_dry_run_counts_everything_and_notes_the_guard(events, limit):
    cut, count = run(events, limit, dry_run=True)
    _, unguarded = run(events, None)
    assert cut is None
    assert {**count, "guard": None} == unguarded
    assert (count["guard"] is not None) == (unguarded["people"] > limit)


def test_only_running_active_campaigns_with_a_trigger_can_start_anybody():
    answer = [
        {"id": 1, "name": "A", "state": "running", "active": True, "event_name": "Order Placed"},
        {"id": 2, "name": "B", "state": "draft", "active": False, "event_name": "order_placed"},
        {"id": 3, "name": "C", "state": "stopped", "event_name": "order_placed"},
        {"id": 4, "name": "D", "state": "running", "active": True, "trigger_segment_ids": [7]},
        {"id": 5, "name": "E", "state": "running", "active": False, "event_name": "x"},
        {"id": 6, "name": "F", "state": "running", "type": "behavioral"},  # `type` is not read
        "not a campaign",
    ]
    assert triggers(answer) == [
        Trigger(1, "A", "order_placed"),
        Trigger(4, "D", None, (7,)),
    ]
