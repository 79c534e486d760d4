"""Event dedupe is one run-wide mechanism (run_events.py): an event is its name and dedupe key,
sent once a run whatever SCHEMA, mapping process or route its rows come through.

The end-to-end tests run the real target process against the sandbox; the property checks the
run-wide decision against a plain model of it (the first row built claims the event)."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.errors import TargetError
from target_customerio.run_events import REJECTED, REPEAT, SENT, UNCHANGED, RunEvents
from tests.harness import LONG_PROPERTIES, record, run_target, schema, state, target_config

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
RECENT = (NOW - dt.timedelta(hours=1)).isoformat()
WEB, SHOP = "public-web_orders", "public-shop_orders"


def route(**extra) -> dict:
    return {
        "kind": "event",
        "identifier": {"field": "customer_id", "type": "id"},
        "event_name": "order_placed",
        "event_id": ["order_id"],
        "timestamp": "placed_at",
        **extra,
    }


def order_schema(stream: str, *extra: str) -> dict:
    properties = {
        "order_id": {"type": "integer"},
        "customer_id": {"type": "string"},
        "placed_at": {"type": "string", "format": "date-time"},
        "total": {"type": "number"},
    }
    return schema(stream, {**properties, **{name: {"type": "string"} for name in extra}})


def order(stream: str, order_id: int, **extra) -> dict:
    row = {"order_id": order_id, "customer_id": f"C{order_id % 7}", "placed_at": RECENT}
    return record(stream, {**row, "total": 10.5, **extra})


@pytest.mark.parametrize("workers", [0, 2])
def test_an_event_repeated_after_a_new_schema_is_a_duplicate(sandbox, tmp_path, workers):
    """A mid-stream SCHEMA (a column added) starts a new sink and mapping: the run still has
    the events sent before it."""
    config = target_config(sandbox.url, tmp_path, {WEB: route()}, mapping_workers=workers)
    before = [order(WEB, n) for n in range(600)]
    after = [order(WEB, n, channel="app") for n in range(550, 650)]  # 50 repeats, 50 new
    messages = [order_schema(WEB), *before, order_schema(WEB, "channel"), *after, state({"s": 1})]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    stream = run.report["streams"][WEB]
    assert (stream["sent"], stream["skipped_by_reason"]) == (650, {"duplicate": 50})
    assert "duplicate_of" not in stream  # repeats of its own events
    events = sandbox.events()
    assert len(events) == 650 and sandbox.counters()["duplicate_events_dropped"] == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_a_later_row_of_a_sent_event_is_a_duplicate_whatever_its_data(sandbox, tmp_path, workers):
    """The first row of an event is the one checked: a later row that breaks the contract is a
    duplicate, not a reject, whether it comes in the same chunk, chunks apart or in another
    mapping process's chunk. A row rejected first claims nothing: the next valid one is sent."""
    contract = {"type": "object", "properties": {"total": {"type": "number", "minimum": 0}}}
    (tmp_path / "order.schema.json").write_text(json.dumps(contract))
    routes = {WEB: route(contract=str(tmp_path / "order.schema.json"))}
    config = target_config(sandbox.url, tmp_path, routes, mapping_workers=workers)
    rows = [order(WEB, n) for n in range(1200)]
    rows[3] = order(WEB, 1, total=-1)  # same chunk as order 1, after it
    rows[700] = order(WEB, 5, total=-1)  # another chunk (another process with 2)
    rows[10] = order(WEB, 2000, total=-1)  # rejected first ...
    rows[900] = order(WEB, 2000)  # ... then valid, in another chunk: sent
    run = run_target(config, [order_schema(WEB), *rows, state({"s": 1})], tmp_path)
    assert run.returncode == 0, run.stderr
    stream = run.report["streams"][WEB]
    assert stream["skipped_by_reason"] == {"duplicate": 2}
    assert stream["rejected_by_reason"] == {"contract_violation": 1}
    assert [r["record"]["order_id"] for r in run.rejects] == [2000]
    sent = 1200 - 4 + 1  # rows 3, 700, 10 and 900 replaced; order 2000 sent once
    assert stream["sent"] == sent == len(sandbox.events())


def test_two_routes_with_the_same_event_and_key_send_it_once_and_say_who_did(sandbox, tmp_path):
    """Two sources of `order_placed` keyed by order_id: an order in both is one event (one
    ULID: Customer.io would drop the second anyway). The second is a duplicate naming the first
    stream, never counted as sent; on the next run, the first finds it unchanged in its ledger
    and the second is still its duplicate."""
    routes = {WEB: route(), SHOP: route()}
    config = target_config(sandbox.url, tmp_path, routes, ledger_path=str(tmp_path / "l.sqlite"))
    messages = [
        order_schema(WEB),
        *[order(WEB, n) for n in range(10)],
        order_schema(SHOP),
        *[order(SHOP, n) for n in range(5, 15)],  # 5..9 are the web orders
        state({"s": 1}),
    ]
    for night in (1, 2):
        run = run_target(config, messages, tmp_path)
        assert run.returncode == 0, run.stderr
        web, shop = run.report["streams"][WEB], run.report["streams"][SHOP]
        if night == 1:
            assert (web["sent"], web["skipped_by_reason"]) == (10, {})
            assert (shop["sent"], shop["skipped_by_reason"]) == (5, {"duplicate": 5})
        else:
            assert (web["sent"], web["skipped_by_reason"]) == (0, {"unchanged": 10})
            assert (shop["sent"], shop["skipped_by_reason"]) == (
                0,
                {"duplicate": 5, "unchanged": 5},
            )
        assert shop["duplicate_of"] == {WEB: 5} and "duplicate_of" not in web
        assert len(sandbox.events()) == 15 and sandbox.counters()["duplicate_events_dropped"] == 0


# The run-wide decision against a model: chunks of (stream, [(key, fate)]) in the order they
# are settled. A REPEAT is generated only where its process could have built the key before.
_ENTRY = st.tuples(st.integers(0, 12), st.sampled_from([SENT, UNCHANGED, REJECTED, REPEAT]))
_CHUNKS = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.lists(_ENTRY, max_size=12)), max_size=8
)


def _model(chunks):
    owner: dict[int, str] = {}
    out = []
    for stream, entries in chunks:
        duplicates, of, unchanged = set(), Counter(), 0
        for item, (key, fate) in enumerate(entries):
            if key in owner:
                duplicates.add(item)
                of[owner[key]] += 1
            elif fate != REJECTED:
                owner[key] = stream
                unchanged += fate == UNCHANGED
        out.append((duplicates, of, unchanged))
    return out


def _possible(chunks):
    """A REPEAT only for a key its stream built before (else it is built: SENT)."""
    built: set[tuple[str, int]] = set()
    fixed = []
    for stream, entries in chunks:
        now = []
        for key, fate in entries:
            if fate == REPEAT and (stream, key) not in built:
                fate = SENT
            if fate in (SENT, UNCHANGED):
                built.add((stream, key))
            now.append((key, fate))
        fixed.append((stream, now))
    return fixed


@settings(max_examples=500 if LONG_PROPERTIES else 150)
@given(_CHUNKS)
def test_the_run_wide_decision_is_first_row_built_claims(chunks):
    chunks = _possible(chunks)
    events = RunEvents()
    got = []
    for stream, entries in chunks:
        settled = events.settle(
            events.stream_id(stream),
            list(range(len(entries))),
            [key for key, _ in entries],
            bytes(fate for _, fate in entries),
        )
        got.append((settled.duplicates, settled.of, settled.unchanged))
    assert got == _model(chunks)


def test_a_repeat_nobody_claimed_stops_the_run():
    """Never silently dropped: a row skipped as built before must have been claimed."""
    with pytest.raises(TargetError, match="never claimed"):
        RunEvents().settle(0, [0], [7], bytes([REPEAT]))
