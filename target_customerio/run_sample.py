"""Whom a run sent what: a bounded, deterministic sample of the people the Track API accepted
operations for, kept for verification (verification.py) to read back.

Delivery hands every accepted request here (only when `verify_sample` or `qa_sample` is on:
otherwise there is no sample and delivery does nothing more). The mapping processes are not
touched: the sample reads the accepted request bodies in the delivery threads.

How people are chosen: each operation falls in a category, (stream, outcome) with outcome one
of identify, event, delete, suppress, exit. Each category keeps the `size` people with the
smallest hash of their identifier (a bottom-k sample: the same people for the same data, and
bounded memory). A person is followed (everything sent to them recorded) while some category
keeps them; since a category's threshold only falls, a person it keeps at the end was kept from
their first operation in it on, so nothing sent to them after that is missed. Only operations
before it can be (another stream's, before they entered the sample): an event or an attribute
that is then not checked, never one that is checked against the wrong value. `chosen` takes
the final sample round-robin over the categories, so every route and outcome is covered.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import orjson

from target_customerio.ledger import hash64
from target_customerio.wire import Batch

Key = tuple[str, str]  # (identifier type, value): email lowered, as Customer.io compares it
OUTCOMES = ("identify", "event", "delete", "suppress", "exit")


@dataclass
class Sent:
    """What the run sent one person, folded as Customer.io applies it: the last value of each
    attribute (None: removed), the events, whether the profile is gone (deleted, suppressed)."""

    id_type: str
    identifier: str
    stream: str = ""  # the stream that last sent to them
    attributes: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name -> (value, stream)
    events: list[tuple[str, int | None, str]] = field(default_factory=list)  # name, time, stream
    gone: bool = False
    suppressed: bool = False
    outcomes: set[tuple[str, str]] = field(default_factory=set)  # (stream, outcome)

    def emails(self) -> list[str]:
        """Every email the run gave them: the identifier, the `email` attribute."""
        out = [self.identifier] if self.id_type == "email" else []
        value = self.attributes.get("email", (None, ""))[0]
        if isinstance(value, str) and value and value.lower() not in out:
            out.append(value.lower())
        return out

    def apply(self, stream: str, outcome: str, op: dict[str, Any]) -> None:
        """One accepted operation, with Customer.io's semantics: a delete or suppress forgets
        the profile; a suppressed person's later writes are dropped; an event creates a person
        who does not exist."""
        self.outcomes.add((stream, outcome))
        self.stream = stream
        action = op.get("action")
        if action in ("delete", "suppress"):
            self.gone, self.suppressed = True, action == "suppress"
            self.attributes.clear()
            self.events.clear()
            return
        if self.suppressed:
            return
        self.gone = False
        if action == "identify":
            attributes = op.get("attributes")
            if isinstance(attributes, dict):
                for name, value in attributes.items():
                    self.attributes[name] = (value, stream)
        elif action == "event":
            timestamp = op.get("timestamp")
            name = str(op.get("name"))
            self.events.append((name, timestamp if type(timestamp) is int else None, stream))


class BottomK:
    """The `size` people with the smallest hashes among those in one category (a max-heap)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.heap: list[tuple[int, Key]] = []  # (-hash, key)
        self.members: set[Key] = set()

    def admit(self, rank: int, key: Key) -> tuple[bool, Key | None]:
        """(whether the person is kept, whom keeping them evicted)."""
        if key in self.members:
            return True, None
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, (-rank, key))
            self.members.add(key)
            return True, None
        if rank >= -self.heap[0][0]:
            return False, None
        _, evicted = heapq.heapreplace(self.heap, (-rank, key))
        self.members.discard(evicted)
        self.members.add(key)
        return True, evicted

    def ranked(self) -> list[Key]:
        return [key for _, key in sorted(self.heap, reverse=True)]


class RunSample:
    """Thread-safe: the delivery threads hand it what Customer.io accepted."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._categories: dict[tuple[str, str], BottomK] = {}
        self._people: dict[Key, Sent] = {}
        self._held: dict[Key, int] = {}  # categories keeping each person

    def accepted(self, batch: Batch, rejected: Collection[int] = ()) -> None:
        """A request Customer.io accepted, but for the operations (indexes) it `rejected`."""
        ops = orjson.loads(batch.body())["batch"]
        with self._lock:
            for index, op in enumerate(ops):
                if index not in rejected:
                    self._take(batch.stream, op, batch.exits)

    def _take(self, stream: str, op: Any, exits: bool) -> None:
        if not isinstance(op, dict) or op.get("type") != "person":
            return  # objects: not a person; merges fold people Customer.io-side
        action = op.get("action")
        identifiers = op.get("identifiers")
        if action not in ("identify", "event", "delete", "suppress") or not isinstance(
            identifiers, dict
        ):
            return
        [(id_type, value)] = identifiers.items()
        value = str(value).lower() if id_type == "email" else str(value)
        key = (id_type, value)
        outcome = "exit" if exits else action
        category = self._categories.get((stream, outcome))
        if category is None:
            category = self._categories[(stream, outcome)] = BottomK(self.size)
        kept, evicted = category.admit(person_rank(id_type, value), key)
        if evicted is not None:
            self._release(evicted)
        if kept and (stream, outcome) not in self._people.get(key, _NOBODY).outcomes:
            self._held[key] = self._held.get(key, 0) + 1
        if key in self._held:
            self._people.setdefault(key, Sent(id_type, value)).apply(stream, outcome, op)

    def _release(self, key: Key) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)
            self._people.pop(key, None)

    def chosen(self) -> list[Sent]:
        """At most `size` people, round-robin over the categories (sorted, so the choice is
        the same for the same data), each category's in hash order."""
        with self._lock:
            queues = [self._categories[name].ranked() for name in sorted(self._categories)]
            out: dict[Key, Sent] = {}
            while len(out) < self.size and any(queues):
                for queue in queues:
                    while queue and queue[0] in out:
                        queue.pop(0)
                    if queue and len(out) < self.size:
                        key = queue.pop(0)
                        out[key] = self._people[key]
            return list(out.values())

    def categories(self) -> dict[str, list[str]]:
        """Stream -> the outcomes seen, for the report."""
        with self._lock:
            out: dict[str, list[str]] = {}
            for stream, outcome in sorted(self._categories):
                out.setdefault(stream, []).append(outcome)
            return out


_NOBODY = Sent("", "")


def person_rank(id_type: str, value: str) -> int:
    """The order people are sampled in: a hash of the identifier, stable across runs."""
    return hash64(f"{id_type}\x1f{value}".encode())
