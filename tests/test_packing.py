"""Unit tests: batches stay under Customer.io's request limit and pack densely."""

from __future__ import annotations

import orjson

from target_customerio.operations.operation import Operation
from target_customerio.wire import MAX_REQUEST_BYTES, Batch, Packer, Segment


def ops(count: int, size: int) -> list[Operation]:
    return [
        Operation(
            orjson.dumps({"type": "person", "pad": "x" * (size - 30), "n": i}),
            str(i),
            (i, -i) if i % 3 else None,
            None,
            {"n": i},
        )
        for i in range(count)
    ]


def test_batches_stay_under_the_limit_and_keep_every_operation_in_order():
    sent: list[Batch] = []
    packer = Packer("s", sent.append)
    items = ops(5000, 700)
    for item in items:
        packer.add_segment(Segment.of([item]))
    packer.flush()
    bodies = [b.body() for b in sent]
    assert all(len(body) < MAX_REQUEST_BYTES for body in bodies)
    assert [(op.body, op.record, op.ledger) for b in sent for op in b.ops] == [
        (op.body, op.record, op.ledger) for op in items
    ]
    assert min(len(body) for body in bodies[:-1]) > MAX_REQUEST_BYTES - 800  # packed to the brim
    assert len(orjson.loads(bodies[0])["batch"]) == len(sent[0].ops)


def test_flush_without_operations_sends_nothing():
    sent: list[Batch] = []
    Packer("s", sent.append).flush()
    assert sent == []


def test_segments_are_cut_between_operations_and_keep_their_records_and_ledger_entries():
    items = ops(3000, 450)
    sent: list[Batch] = []
    packer = Packer("s", sent.append)
    for start in range(0, len(items), 500):  # chunks, as the mapping workers answer them
        packer.add_segment(Segment.of(items[start : start + 500]))
    packer.flush()
    assert sum(len(b) for b in sent) == 3000 and all(
        len(b.body()) < MAX_REQUEST_BYTES for b in sent
    )
    assert [orjson.loads(b.body())["batch"] for b in sent] == [
        [orjson.loads(op.body) for op in b.ops] for b in sent
    ]
    assert [(op.body, op.record, op.ledger) for b in sent for op in b.ops] == [
        (op.body, op.record, op.ledger) for op in items
    ]
    assert [e for b in sent for e in b.ledger_entries()] == [op.ledger for op in items if op.ledger]
    first = sent[0]
    assert first.ledger_entries({0, 1, 2}) == [op.ledger for op in first.ops[3:] if op.ledger]


def test_a_record_with_two_operations_is_counted_once_wherever_requests_are_cut():
    """A merge row is an identify and a merge: one record. Cut between requests or halved
    after a refusal, its operations are still counted as one record sent."""
    from target_customerio.wire import SegmentBuilder

    for limit in (600, 1_000, 2_500, MAX_REQUEST_BYTES):
        builder = SegmentBuilder()
        for item in range(40):
            for part in range(1 + item % 2):  # every other record has two operations
                builder.add(orjson.dumps({"n": item, "part": part, "pad": "x" * 200}), item, None)
        sent: list[Batch] = []
        packer = Packer("s", sent.append, limit=limit)
        packer.add_segment(builder.segment(list(range(40))))
        packer.flush()
        assert sum(batch.records for batch in sent) == 40
        halves = [half for batch in sent if len(batch) > 1 for half in batch.halves()]
        assert sum(h.records for h in halves) == sum(b.records for b in sent if len(b) > 1)
