"""The wire format: encoded operations packed into Track API v2 batch requests.

Mapping builds `Segment`s (a chunk's operations for one delivery shard, joined as they go in a
request, with where each ends and which record it came from); a `Packer` fills `Batch`es up to
the request size limit, cutting segments between operations; delivery sends the batches and
accounts for every record by what the segments say.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from target_customerio.operations.operation import Operation

MAX_REQUEST_BYTES = 500_000
_ENVELOPE = len(b'{"batch":[]}')


def triples(flat: array) -> Iterator[tuple[int, int, int]]:
    """(a, b, c) for each three values of a flat array."""
    values = iter(flat)
    return zip(values, values, values, strict=False)  # one iterator, three at a time


class Segment(NamedTuple):
    """Encoded operations of one chunk of records bound for one delivery shard, in order.

    `data` is their bodies joined by commas, as they go in a request; `ends[i]` is where the
    i-th body ends in it; `item_of[i]` is the record it came from (an index into `items`, the
    chunk's records, RECORD lines or decoded); `ledger` holds (position, key, fingerprint) triples,
    flat, for the operations to record in the ledger once accepted. Mapping workers build
    segments, and the arrays travel as plain bytes: the target handles a few objects per chunk
    instead of several per operation. A record's operations (a merge's identify and merge) are
    consecutive; `continues` says that the last one's record has more in the next segment (the
    packer cut between them), so that a record is counted once, where its last operation is.
    """

    data: bytes
    ends: array
    item_of: array
    ledger: array
    items: list[Any] | None = None
    continues: bool = False

    @classmethod
    def of(cls, ops: list[Operation]) -> Segment:
        """A segment of the given operations, each its own item."""
        builder = SegmentBuilder()
        for i, op in enumerate(ops):
            builder.add(op.body, i, op.ledger)
        return builder.segment([op.record for op in ops])

    @property
    def size(self) -> int:
        """How many operations it holds."""
        return len(self.ends)

    @property
    def records(self) -> int:
        """How many records end here: each record is counted where its last operation is."""
        return len(set(self.item_of)) - self.continues

    def ending_keys(self) -> set[tuple[int, int]]:
        """The records (see `record_keys`) whose last operation is here."""
        chunk, items = id(self.items), set(self.item_of)
        if self.continues:
            items.discard(self.item_of[len(self.item_of) - 1])
        return {(chunk, item) for item in items}

    def record_keys(self) -> list[tuple[int, int]]:
        """Each operation's record, as (id of the chunk, index in it)."""
        chunk = id(self.items)
        return [(chunk, item) for item in self.item_of]

    def body(self, i: int) -> bytes:
        return self.data[self.ends[i - 1] + 1 if i else 0 : self.ends[i]]

    def ledger_at(self) -> dict[int, tuple[int, int]]:
        """Position -> (key, fingerprint), for the operations the ledger tracks."""
        return {i: (key, fingerprint) for i, key, fingerprint in triples(self.ledger)}

    def operations(self) -> list[Operation]:
        """The operations one by one (for the paths that need them: errors, dry runs)."""
        entries, items = self.ledger_at(), self.items or []
        return [
            Operation(
                self.body(i), "", entries.get(i), None, items[self.item_of[i]] if items else None
            )
            for i in range(self.size)
        ]

    def without_items(self, drop: set[int]) -> Segment:
        """The segment without the operations of the records (indexes in `items`) in `drop`."""
        if not drop.intersection(self.item_of):
            return self
        builder, entries = SegmentBuilder(), self.ledger_at()
        for i, item in enumerate(self.item_of):
            if item not in drop:
                builder.add(self.body(i), item, entries.get(i))
        return builder.segment(self.items)

    def split(self, count: int) -> tuple[Segment, Segment]:
        """The first `count` operations, and the rest."""
        cut = self.ends[count - 1]
        first, rest = array("q"), array("q")
        for i, key, fp in triples(self.ledger):
            if i < count:
                first.extend((i, key, fp))
            else:
                rest.extend((i - count, key, fp))
        # a record's operations cut apart
        cut_inside = self.item_of[count - 1] == self.item_of[count]
        head = Segment(
            self.data[:cut], self.ends[:count], self.item_of[:count], first, self.items, cut_inside
        )
        tail = Segment(
            self.data[cut + 1 :],
            array("q", (end - cut - 1 for end in self.ends[count:])),
            self.item_of[count:],
            rest,
            self.items,
            self.continues,
        )
        return head, tail


class SegmentBuilder:
    """Collects encoded operations in order; `segment()` joins them into one Segment."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        # Lists while collecting (appends are cheapest there), arrays once, in C, at the end.
        self._ends: list[int] = []
        self._item_of: list[int] = []
        self._ledger: list[int] = []
        self._end = -1

    def add(self, body: bytes, item: int, ledger: tuple[int, int] | None) -> None:
        if ledger is not None:
            self._ledger += (len(self.bodies), ledger[0], ledger[1])
        self._end += len(body) + 1
        self._ends.append(self._end)
        self._item_of.append(item)
        self.bodies.append(body)

    def segment(self, items: list[Any] | None = None) -> Segment:
        return Segment(
            b",".join(self.bodies),
            array("q", self._ends),
            array("q", self._item_of),
            array("q", self._ledger),
            items,
        )


@dataclass
class Batch:
    """Operations of one stream bound for one request. `exits`: a mirror route's operations for
    the people who left its view (accounted for as exits, not as the stream's records)."""

    stream: str
    segments: list[Segment] = field(default_factory=list)
    exits: bool = False

    def __len__(self) -> int:
        return sum(segment.size for segment in self.segments)

    @property
    def records(self) -> int:
        """The records whose last operation is in this request (what `sent` counts)."""
        return sum(segment.records for segment in self.segments)

    def ending_keys(self) -> set[tuple[int, int]]:
        return set().union(*(segment.ending_keys() for segment in self.segments))

    def halves(self) -> tuple[Batch, Batch]:
        """The first half of the operations and the rest, each keeping its records."""
        wanted, first = len(self) // 2, Batch(self.stream, [], self.exits)
        rest = list(self.segments)
        while rest and len(first) + rest[0].size <= wanted:
            first.segments.append(rest.pop(0))
        if rest and len(first) < wanted:
            head, tail = rest[0].split(wanted - len(first))
            first.segments.append(head)
            rest[0] = tail
        return first, Batch(self.stream, rest, self.exits)

    def body(self) -> bytes:
        return b'{"batch":[' + b",".join(segment.data for segment in self.segments) + b"]}"

    @property
    def ops(self) -> list[Operation]:
        return [op for segment in self.segments for op in segment.operations()]

    def ledger_keys(self) -> list[int]:
        """The ledger keys of the request's operations: what it marks in doubt."""
        keys: list[int] = []
        for segment in self.segments:
            keys += segment.ledger[1::3]
        return keys

    def ledger_entries(
        self, rejected: frozenset[int] | set[int] = frozenset()
    ) -> list[tuple[int, int]]:
        """The ledger entries of the operations not `rejected` (indexes in the request)."""
        entries, offset = [], 0
        for segment in self.segments:
            if rejected:
                entries += [
                    (key, fp)
                    for i, key, fp in triples(segment.ledger)
                    if offset + i not in rejected
                ]
            else:  # the usual case, paired in C
                entries += zip(segment.ledger[1::3], segment.ledger[2::3], strict=True)
            offset += segment.size
        return entries


class Packer:
    """Fills batches up to the request size limit and hands each full one on."""

    def __init__(
        self,
        stream: str,
        send: Callable[[Batch], None],
        limit: int = MAX_REQUEST_BYTES,
        exits: bool = False,
    ) -> None:
        self._stream, self._send, self._limit, self._exits = stream, send, limit, exits
        self._batch = Batch(stream, [], exits)
        self._size = _ENVELOPE

    def add_segment(self, segment: Segment) -> None:
        """Append the segment, cutting it between operations where a request is full."""
        while segment.size:
            comma = 1 if self._batch.segments else 0
            room = self._limit - 1 - self._size - comma  # a request stays under the limit
            if len(segment.data) <= room:
                self._batch.segments.append(segment)
                self._size += len(segment.data) + comma
                return
            fits = bisect.bisect_right(segment.ends, room)
            if fits == 0 and not self._batch.segments:
                fits = 1  # one operation alone over the limit: sent alone, for Customer.io to judge
            if fits:
                head, segment = segment.split(fits)
                self._batch.segments.append(head)
            self.flush()

    def flush(self) -> None:
        if self._batch.segments:
            batch, self._batch = self._batch, Batch(self._stream, [], self._exits)
            self._size = _ENVELOPE
            self._send(batch)
