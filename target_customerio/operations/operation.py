"""What every operation kind builds: encoded operations, the outcome of a record, and how
an operation is made ready to send (its size checked, its ledger entry attached)."""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any, NamedTuple

import orjson

from target_customerio.ledger import hash64, scope_seed

MAX_OPERATION_BYTES = 32_000
_new = tuple.__new__  # a named tuple without its Python-level __new__ (one per operation)


class Rejected(Exception):
    """The record cannot be sent; it goes to the reject file."""

    def __init__(
        self, reason: str, field: str | None, message: str, rule: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason, self.field, self.message, self.rule = reason, field, message, rule
        # an event's dedupe key, when it was read before the record failed (set here: a
        # compiled class has no class-level default)
        self.seen: int | None = None


class Skipped(Exception):
    """The record is deliberately not sent (stale, duplicate, deleted); it is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seen: int | None = None  # a repeated event's dedupe key: run_events.py counts it


def repeated(seen: int) -> Skipped:
    """A row of an event its mapping process built moments ago: not built again (run_events)."""
    skip = Skipped("duplicate")
    skip.seen = seen
    return skip


class Operation(NamedTuple):
    """One encoded batch operation, with what routes and accounts for it."""

    body: bytes
    shard_key: str  # operations with the same key travel in order, through one delivery worker
    ledger: tuple[int, int] | None = None  # (key, fingerprint) to record once it is accepted
    seen: int | None = None  # an event's dedupe key (64 bits): sent once a run
    record: Any = None  # the record or its RECORD line, where an error must quote it


class Built(NamedTuple):
    """A record's operations, in the order they must be sent, with whom and when they are
    about: the identifier (type, value), the time at the source (None: a state, not an
    event) and an event's name (what a campaign may be triggered by). Nothing else about the
    record is kept by the kind that built it."""

    operations: list[Operation]
    identifier: tuple[str, str]
    timestamp: int | None = None
    name: str | None = None


class Context(NamedTuple):
    """What a kind's builder needs to know about the run, besides its route and the SCHEMA."""

    now: float  # when the run started: `max_age` counts from it
    ledger_scope: str | None = None  # workspace and stream; None: change detection off
    # dedupe keys of the events this mapping process built last: a repeat is not built again
    sent_events: Container[int] = frozenset()
    on_event_name: Callable[[str, str], None] | None = None  # a name first seen: (raw, sent)


class Builder:
    """Builds the operations of one stream's records. One per stream and mapping process;
    what it learns (the columns seen) only makes the next record faster."""

    def build(self, record: dict[str, Any], native: bool = False) -> Built:
        """The record's operations; raises Rejected or Skipped.

        `native`: the record holds only what a strict JSON decoder returns (str, int, finite
        float, bool, None, list, dict), so its values may be sent as they are, unwalked.
        """
        raise NotImplementedError

    def member_key(self, record: dict[str, Any]) -> int | None:
        """For a mirror route: the ledger key of whom (or what) a record that `build` rejected
        is about, so that it still counts as in the view; None when it cannot be told (no
        usable identifier) or the kind does not mirror."""
        return None

    def identity(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """For a kind that creates people (an identify): whom a record that `build` rejected
        was to create or update, (identifier type, value), when its identifier reads."""
        return None


class Finisher:
    """Makes encoded operations ready to send: within Customer.io's size limit, and with their
    ledger entry when change detection is on."""

    def __init__(self, ledger_scope: str | None) -> None:
        self._seed = None if ledger_scope is None else scope_seed(ledger_scope)

    def finish(
        self, body: bytes, shard_key: str, about: str, content: bool = True, seen: int | None = None
    ) -> Operation:
        """`about` names what the operation is about in the ledger. `content`: whether a change
        of content sends it again (people, objects), or only its identity counts (events,
        merges: one is never sent twice)."""
        if len(body) > MAX_OPERATION_BYTES:
            raise Rejected(
                "operation_too_large",
                None,
                f"operation is {len(body)} bytes; Customer.io takes at most {MAX_OPERATION_BYTES}",
            )
        if self._seed is None:
            return _new(Operation, (body, shard_key, None, seen, None))
        entry = (hash64(about.encode(), self._seed), hash64(body) if content else 0)
        return _new(Operation, (body, shard_key, entry, seen, None))

    def key(self, about: str) -> int | None:
        """The ledger key `finish` gives an operation about `about` (None: no ledger)."""
        return None if self._seed is None else hash64(about.encode(), self._seed)


def encode(op: dict[str, Any]) -> bytes:
    """The operation as JSON; a value JSON cannot hold rejects the record, naming its field."""
    try:
        return orjson.dumps(op)
    except orjson.JSONEncodeError as exc:
        raise Rejected(
            "invalid_value", _unencodable_field(op), f"cannot encode as JSON: {exc}"
        ) from None


def _unencodable_field(op: dict[str, Any]) -> str | None:
    """The attribute that made encoding fail (error path only)."""
    for name, value in op.get("attributes", {}).items():
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return name
    return None


class Kind(NamedTuple):
    """An operation kind as the rest of the target sees it (`operations.KINDS`): the route
    options it takes, how they are read, and the builder of its operations."""

    name: str
    keys: tuple[str, ...]  # its route options, beyond those every route takes
    options: Callable[[str, dict[str, Any]], Any]  # (where, route) -> its options; ConfigError
    builder: Callable[[Any, dict[str, Any], Context], Builder]  # (route, SCHEMA, context)
    on_delete: tuple[str, ...] = ("ignore",)  # what `on_delete` may ask of it
    # Where its operations go (CHANNELS): Track API batches (delivery.py), checks read from the
    # App API after the run's delivery (reconcile.py), or manual-segment membership changes
    # (memberships.py).
    channel: str = "track"
    common: tuple[str, ...] | None = None  # the options every route takes that apply; None: all
    # Routes that mirror their view (`Route.mirror`): what the ledger keeps about a member the
    # route sent, from its operation's body (what leaving the view then needs).
    member: Callable[[bytes], str] | None = None
    # (on_exit, member) -> the Track API operation that tells Customer.io a member left the
    # view (None: nothing to send). None here: the kind's channel removes them (segments).
    exit: Callable[[str, str], bytes | None] | None = None


CHANNELS = ("track", "checks", "segments")
