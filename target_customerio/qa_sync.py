"""`qa_sample: N`: the first QA sync as one run. At most N people are sent, with their events
and memberships, chosen the same every time for the same data; nothing else is sent, no STATE
is written (the bookmark does not move), the ledger records what was delivered (the real sync
does not send it again), and every person sent is read back (verification.py).

How: while the input is read, each routed record that names a person (a route's `identifier`,
a merge's `primary`) is held, not sent. A person is a candidate of a pool, (stream, stratum):
the stratum is the values of the `qa_stratify` columns a person route's record has (the
lifecycle states), and each pool keeps the N people with the smallest hash of their identifier
(run_sample.BottomK). A record is held while its person is a candidate, or could still become
one (some pool is not full, or the hash is under a full pool's threshold); the rest are dropped
as they come, so memory stays near N people's records once the pools fill. At the end of the
input the N people are taken round-robin over the pools (every person route and stratum is
covered when N allows), and their records go to their sinks in the order they came; every other
record is counted as skipped (`qa_sample`). Records of routes that name no person (objects,
reconcile checks) are not sent by a QA sync.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from target_customerio.operations.identifiers import identifier_value
from target_customerio.operations.operation import Rejected
from target_customerio.reading import decode_record
from target_customerio.report import RunReport
from target_customerio.routes import Route
from target_customerio.run_sample import BottomK, Key, person_rank

_PRUNE_EVERY = 10_000  # records between drops of the held records no pool can take any more
# Records held while a stream named in `streams` has not come yet (it may choose anyone): past
# this many, it is taken for a stream this input does not carry, and no longer waited for.
MAX_WAITING = 200_000
SKIP_REASON = "qa_sample"


@dataclass
class _Held:
    """A person's held records: (arrival order, stream, deliver, item)."""

    rank: int
    records: list[tuple[int, str, Callable[[Any], None], Any]] = field(default_factory=list)


class QaSync:
    """Holds the routed records of a QA sync and releases the chosen people's at the end."""

    def __init__(
        self,
        size: int,
        stratify: tuple[str, ...],
        expected: set[str],
        report: RunReport,
        logger: logging.Logger,
    ) -> None:
        """`expected`: the streams that will have a pool (routes named exactly): until one
        comes, any person may still be chosen by it, so every record is held."""
        self.size, self._stratify, self._expected = size, stratify, set(expected)
        self._report, self._logger = report, logger
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str], BottomK] = {}
        self._held: dict[Key, _Held] = {}
        self._order = 0
        self._seen: dict[str, int] = {}  # records held back per stream, before the choice
        self._holding = 0  # records held now
        self._strata: set[str] = set()  # qa_stratify columns some person route's records had
        self.people: list[dict[str, Any]] = []

    def hold(self, stream: str, route: Route, deliver: Callable[[Any], None], item: Any) -> None:
        """A routed record, kept back until the end of the input (`deliver` sends it then)."""
        with self._lock:
            self._seen[stream] = self._seen.get(stream, 0) + 1
            self._order += 1
            person = self._person(stream, route, item)
            if person is None:
                return
            key, stratum = person
            rank = person_rank(*key)
            pool = self._pools.get((stream, stratum))
            if pool is None:
                pool = self._pools[(stream, stratum)] = BottomK(self.size)
                self._expected.discard(stream)
            admitted, _ = pool.admit(rank, key)  # the evicted: dropped when next pruned
            if admitted or key in self._held or self._may_take(rank):
                held = self._held.setdefault(key, _Held(rank))
                held.records.append((self._order, stream, deliver, item))
                self._holding += 1
            if self._order % _PRUNE_EVERY == 0:
                self._prune()

    def _person(self, stream: str, route: Route, item: Any) -> tuple[Key, str] | None:
        """Whom the record is about, and its pool's stratum ("" but on a person route with
        qa_stratify columns); None when it names nobody usable."""
        identifier = getattr(route.options, "identifier", None) or getattr(
            route.options, "primary", None
        )
        if identifier is None:
            return None
        record = decode_record(item, stream)[0] if isinstance(item, bytes) else item
        try:
            value = identifier_value(record, identifier.field, identifier.type)
        except Rejected:
            return None
        parts = []
        for column in self._stratify if route.kind == "person" else ():
            if column in record:
                self._strata.add(column)
                parts.append(f"{column}={record[column]}")
        return (identifier.type, value), ", ".join(parts)

    def _may_take(self, rank: int) -> bool:
        """Whether some pool, or a stream still to come, could still take a person of this
        rank."""
        return bool(self._expected) or any(
            len(pool.heap) < pool.size or rank < -pool.heap[0][0] for pool in self._pools.values()
        )

    def _prune(self) -> None:
        if self._expected and self._holding > MAX_WAITING:
            self._logger.warning(
                "QA sync: %d records held and no record yet of %s: no longer waiting for "
                "them (not in this input?); a person only they would choose may be sent "
                "without the records read before",
                self._holding,
                ", ".join(sorted(self._expected)),
            )
            self._expected.clear()
        kept = set().union(*(pool.members for pool in self._pools.values()))
        for key in [k for k, held in self._held.items() if k not in kept]:
            if not self._may_take(self._held[key].rank):
                self._holding -= len(self._held.pop(key).records)

    def chosen(self) -> list[Key]:
        """At most `size` people: round-robin over the pools (sorted: the same for the same
        data), each pool's in hash order."""
        queues = [self._pools[name].ranked() for name in sorted(self._pools)]
        out: dict[Key, None] = {}
        while len(out) < self.size and any(queues):
            for queue in queues:
                while queue and queue[0] in out:
                    queue.pop(0)
                if queue and len(out) < self.size:
                    out[queue.pop(0)] = None
        return list(out)

    def release(self) -> None:
        """End of the input: the chosen people's records to their sinks, in the order they
        came; the rest counted as skipped. Records the report's `qa_sync` section."""
        with self._lock:
            people = self.chosen()
            records = sorted(
                (entry for key in people for entry in self._held[key].records),
                key=lambda entry: entry[0],
            )
            self._held.clear()
        released: dict[str, int] = {}
        for _, stream, deliver, item in records:
            released[stream] = released.get(stream, 0) + 1
            deliver(item)
        for stream, seen in sorted(self._seen.items()):
            held_back = seen - released.get(stream, 0)
            if held_back:
                self._report.stream(stream).received += held_back
                self._report.skip(stream, SKIP_REASON, held_back)
        self.people = [{"type": kind, "value": value} for kind, value in people]
        chosen = set(people)
        self._report.qa_sync = {
            "sample": self.size,
            "people": [f"{kind}:{value}" for kind, value in people],
            "records": dict(sorted(released.items())),
            "pools": [
                {"stream": stream, "stratum": stratum, "chosen": len(pool.members & chosen)}
                for (stream, stratum), pool in sorted(self._pools.items())
            ],
            "stratify_unseen": [c for c in self._stratify if c not in self._strata],
        }
        self._logger.info(
            "QA sync: %d people chosen from %d pool(s); %d record(s) sent with them, %d held "
            "back; no STATE is written",
            len(people),
            len(self._pools),
            len(records),
            sum(self._seen.values()) - len(records),
        )
        unseen = self._report.qa_sync["stratify_unseen"]
        if unseen:
            self._logger.warning(
                "QA sync: qa_stratify column(s) %s are in no person route's records: "
                "nothing was stratified by them",
                ", ".join(unseen),
            )
