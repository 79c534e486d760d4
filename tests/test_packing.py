"""Unit tests: batches stay under Customer.io's request limit and pack densely."""

from __future__ import annotations

import orjson

from target_customerio.delivery import MAX_REQUEST_BYTES, Batch, Packer
from target_customerio.mapping import Operation


def ops(count: int, size: int) -> list[Operation]:
    return [Operation(orjson.dumps({"type": "person", "pad": "x" * (size - 30), "n": i}), str(i), {}) for i in range(count)]


def test_batches_stay_under_the_limit_and_keep_every_operation_in_order():
    sent: list[Batch] = []
    packer = Packer("s", sent.append)
    items = ops(5000, 700)
    for item in items:
        packer.add(item)
    packer.flush()
    bodies = [b.body() for b in sent]
    assert all(len(body) < MAX_REQUEST_BYTES for body in bodies)
    assert [op for b in sent for op in b.ops] == items
    assert min(len(body) for body in bodies[:-1]) > MAX_REQUEST_BYTES - 800  # packed to the brim
    assert len(orjson.loads(bodies[0])["batch"]) == len(sent[0].ops)


def test_flush_without_operations_sends_nothing():
    sent: list[Batch] = []
    Packer("s", sent.append).flush()
    assert sent == []
