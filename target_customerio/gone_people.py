"""People this target deleted or suppressed stay gone: nothing it sends re-creates them.

Customer.io creates the person an event (or a merge's primary, or an identify) names when it
does not hold them, so an order row of a deleted customer would bring them back as a profile.
The ledger's `gone` table holds whom this target deleted or suppressed (written before the
request goes out, delivery.py). Every operation is checked here as delivery takes it, on the
delivery worker its person's operations travel through, in order: a delete earlier in the same
run (or the same request) counts, and an event sent before the delete is sent as it came.

- An operation about a gone person (an event, a merge into them, an identify by a route that is
  not a person route) is not sent: its record is skipped as `deleted_person`, and sent again by
  a later run (it is not recorded) in case they came back.
- A relationship of an object to a gone person is taken out of the object's operation, which
  is sent without it and not recorded.
- An identify by a person route is the database's word that the person exists (a deleted row
  restored): they are no longer gone from that operation on (the mark is removed before it
  goes out), and what follows it is sent.

Memberships are checked the same way when they are added (memberships.py); a mirror's exits
check the table themselves (mirror.py). A ledger that never held anyone gone costs nothing
here: the check starts with the run's first delete or suppression.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection

import orjson

from target_customerio.ledger import Ledger, scope_seed, seeded_person_key
from target_customerio.wire import Batch, Segment, SegmentBuilder

SKIP_REASON = "deleted_person"
GONE_ACTIONS = ("delete", "suppress")  # what makes a person gone
GONE_MARK = re.compile(rb'"action":"(?:delete|suppress)"')  # one scan in C a segment


class GonePeople:
    """The delivery-time check against the ledger's `gone` table (see the module's docstring)."""

    def __init__(self, ledger: Ledger, workspace: str, revives: Callable[[str], bool]) -> None:
        self._ledger = ledger
        self._seed = scope_seed(workspace)  # ledger.person_key's, computed once
        self._revives = revives  # stream -> whether its identifies bring a person back
        self._streams: dict[str, bool] = {}
        self._lock = threading.Lock()
        # nobody gone and nothing deleted in this run yet: nothing to check
        self._possible = bool(ledger.any_gone())

    def deleting(self) -> None:
        """A delete or suppression is about to go out: from now on, operations are checked."""
        self._possible = True

    def among(self, people: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (identifier type, value) pairs of `people` that are gone."""
        if not self._possible or not people:
            return set()
        keys = {_key(kind, value, self._seed): (kind, value) for kind, value in people}
        return {keys[key] for key in self._ledger.gone(list(keys))}

    def check(self, batch: Batch) -> tuple[Batch, int, list[int]]:
        """The batch without what would re-create a gone person, how many records that leaves
        out (skipped as `deleted_person`), and whom it brings back (for `revive`). The usual
        batch is returned as it is."""
        if batch.exits:
            return batch, 0, []  # a mirror's exits check the table themselves (mirror.py)
        if not self._possible and not any(GONE_MARK.search(s.data) for s in batch.segments):
            return batch, 0, []
        seed = self._seed
        ops = [_segment_about(segment, seed) for segment in batch.segments]
        people = {key for segment in ops for _, keys, _ in segment for key in keys}
        gone = set(self._ledger.gone(list(people))) if people else set()
        if not gone and not any(effect == "gone" for s in ops for effect, _, _ in s):
            return batch, 0, []
        revives = self._stream_revives(batch.stream)
        back: set[int] = set()  # gone before, or deleted in this request, then identified
        segments, skipped = [], 0
        for segment, about in zip(batch.segments, ops, strict=True):
            drop: set[int] = set()  # records (items) not sent
            strip: dict[int, bytes] = {}  # object operations, sent without gone relations
            for i, (effect, keys, data) in enumerate(about):
                if effect == "gone":
                    gone.update(keys)
                    back.difference_update(keys)  # the last word in the request counts
                elif effect == "identify" and revives:
                    back.update(key for key in keys if key in gone)
                    gone.difference_update(keys)
                elif effect == "object":
                    if gone.intersection(keys):
                        strip[i] = _without_relations(data, gone, seed)
                elif gone.intersection(keys):
                    drop.add(segment.item_of[i])
            if drop or strip:
                segment, count = _rebuilt(segment, drop, strip)
                skipped += count
            if segment.size:
                segments.append(segment)
        return Batch(batch.stream, segments, batch.exits), skipped, sorted(back)

    def revive(self, back: list[int]) -> None:
        """Whom a checked request brings back (`check`) is no longer gone: written after its
        keys are marked in doubt and after the request's own deletes are kept (a delete and the
        same person's identify after it, in one request, leave them not gone), before it goes
        out (a kill in between leaves the identify in doubt, so it is sent again)."""
        if back:
            self._ledger.forget_gone(back)

    def _stream_revives(self, stream: str) -> bool:
        with self._lock:
            if stream not in self._streams:
                self._streams[stream] = self._revives(stream)
            return self._streams[stream]


def _key(kind: str, value: str, seed: int) -> int:
    return seeded_person_key(kind.encode(), value.encode(), seed)


def _person(identifiers: object, seed: int) -> list[int]:
    """The person key of an operation's identifiers (`{type: value}`), if it names one."""
    if not isinstance(identifiers, dict):
        return []
    return [_key(kind, str(value), seed) for kind, value in identifiers.items()]


# The head of a person operation as the kinds encode it (orjson, keys in this order): its
# action and whom it names, read without parsing the operation (objects, and anything else,
# are parsed).
_PERSON_HEAD = re.compile(
    rb'\{"type":"person","action":"([a-z_]+)","(?:identifiers|primary)":\{"([a-z_]+)":"([^"\\]*)"\}'
)


def _segment_about(segment: Segment, seed: int) -> list[tuple[str, list[int], dict]]:
    """`_about` of each operation of the segment."""
    data, ends, about = segment.data, segment.ends, []
    start = 0
    for i in range(segment.size):
        head = _PERSON_HEAD.match(data, start)
        if head is not None:
            key = seeded_person_key(head[2], head[3], seed)
            about.append((_EFFECTS.get(head[1], "uses"), [key], _NO_DATA))
        else:
            about.append(_about(orjson.loads(data[start : ends[i]]), seed))
        start = ends[i] + 1
    return about


_EFFECTS = {b"delete": "gone", b"suppress": "gone", b"identify": "identify"}
_NO_DATA: dict = {}  # a person operation's own data is never needed


def _about(data: dict, seed: int) -> tuple[str, list[int], dict]:
    """What an operation does to whom: (effect, person keys, the operation). Effects: `gone`
    (a delete or suppression), `identify`, `object` (its relations' people), `uses` (an event,
    a merge into its primary: they create the person they name)."""
    if data.get("type") == "object":
        keys = [
            key
            for relation in data.get("cio_relationships") or []
            if isinstance(relation, dict)
            for key in _person(relation.get("identifiers"), seed)
        ]
        return "object", keys, data
    action = data.get("action")
    who = data.get("primary") if action == "merge" else data.get("identifiers")
    effect = "gone" if action in GONE_ACTIONS else "identify" if action == "identify" else "uses"
    return effect, _person(who, seed), data


def _without_relations(data: dict, gone: set[int], seed: int) -> bytes:
    """An object's operation without its relationships to gone people."""
    kept = [
        relation
        for relation in data.get("cio_relationships") or []
        if not (
            isinstance(relation, dict)
            and gone.intersection(_person(relation.get("identifiers"), seed))
        )
    ]
    return orjson.dumps({**data, "cio_relationships": kept})


def _rebuilt(segment: Segment, drop: set[int], strip: dict[int, bytes]) -> tuple[Segment, int]:
    """The segment without the records in `drop` and with the `strip` bodies (not recorded),
    and how many records it leaves out that end here (one continued in the next request is
    counted there)."""
    builder, entries = SegmentBuilder(), segment.ledger_at()
    for i, item in enumerate(segment.item_of):
        if item in drop:
            continue
        if i in strip:
            builder.add(strip[i], item, None)
        else:
            builder.add(segment.body(i), item, entries.get(i))
    last = segment.item_of[segment.size - 1]
    continues = segment.continues and last not in drop
    ending = drop - ({last} if segment.continues else set())
    rebuilt = builder.segment(segment.items)._replace(continues=continues)
    return rebuilt, len(ending)
