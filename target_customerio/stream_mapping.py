"""Mapping one stream's records, a chunk at a time: decoded, built into operations by the
route's kind (operations/), looked up in the ledger, and packed per delivery shard.

This is the work a mapping process does (mapping_processes.py carries chunks to it and
answers back); with `mapping_workers: 0` it runs in the reader's thread (`InlineMapping`).
"""

from __future__ import annotations

import typing as t
from array import array
from collections import Counter, OrderedDict
from dataclasses import dataclass

from singer_sdk.exceptions import MissingKeyPropertiesError

from target_customerio.identity import ChunkClaims, Claims, workspace_seed
from target_customerio.ledger import Ledger, NoLedger, open_ledger
from target_customerio.operations import KINDS
from target_customerio.operations.operation import Builder, Context, Rejected, Skipped
from target_customerio.reading import decode_record
from target_customerio.run_events import REJECTED, REPEAT, SENT, UNCHANGED
from target_customerio.run_sent import SentKeys, Turns
from target_customerio.settings import Settings
from target_customerio.wire import Segment, SegmentBuilder

# A mapping process does not build again a row of an event among the last 20,000 it built (the
# rows of one order come together); what became of every event record is decided run-wide, in
# the target (run_events.py).
RECENT_EVENTS = 20_000

Item = bytes | dict  # a RECORD line, whole (the direct path), or a record the SDK decoded
# an operation to send: body, shard key, ledger entry
_Send = tuple[bytes, str, tuple[int, int] | None]


# The reject reason of a record whose mapping raised something no kind's checks name: a value
# nobody foresaw ends that record, never the run (the message is the exception's).
UNMAPPABLE = "unmappable_value"


def failure_message(exc: BaseException) -> str:
    """What went wrong, in one short line: the exception's type and message (cut, and safe to
    print even when the message itself cannot be turned into text)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a message that cannot be rendered still names its type
        text = ""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def compiled() -> bool:
    """Whether the record path runs compiled (mypyc, in the released wheels), not interpreted."""
    return not __file__.endswith(".py")


@dataclass
class Mapped:
    """The answer for one chunk: its operations, encoded and packed per delivery shard in
    record order, and what became of the records that sent nothing."""

    segments: dict[int, Segment]
    # (index in the chunk, reason, field, message, rule)
    rejects: list[tuple[int, str, str | None, str, str | None]]
    skipped: dict[str, int]  # reason -> records
    # The records (indexes in the chunk, in order) that are rows of an event, their events'
    # dedupe keys, and what became of each here (run_events: SENT, UNCHANGED, REPEAT, REJECTED):
    # the sink settles them run-wide. An UNCHANGED record is not counted in `skipped`.
    event_items: list[int]
    event_keys: list[int]
    event_fates: bytes
    event_names: list[tuple[str, str]]  # names first seen: source spelling, name sent
    # A mirror route's (None for every other): the ledger keys of whom the chunk's records are
    # about, the unchanged and the rejected included (they are still in the view), and for each
    # record sent, (key, fingerprint, what the ledger keeps about the member: Kind.member).
    members: array | None = None
    sent_members: list[tuple[int, int, str]] | None = None
    # The identity claims of the records sent, as columns (identity.py); None: none made
    identity: ChunkClaims | None = None
    # (identifier type, value) of the people whose identify a record rejected here would
    # have sent: what depends on them (a membership) is not sent in this run.
    refused: list[tuple[str, str]] | None = None
    # The events sent whose name starts a running campaign (campaigns.py), in record order:
    # (index in the chunk, name, identifier, timestamp). None when no campaign could match.
    campaign_events: list[tuple[int, str, tuple[str, str], int]] | None = None


@dataclass
class StreamSpec:
    """What mapping one stream needs, besides the settings shared with the target."""

    stream: str
    schema: dict
    key_properties: list[str]
    started_at: float
    ledger_scope: str | None
    shards: int  # delivery shards: a person's operations always go to the same one
    # event names that start a running campaign (campaigns.py): their events are sent back
    campaign_events: frozenset[str] = frozenset()


class StreamMapping:
    """Maps the records of one stream."""

    def __init__(
        self,
        settings: Settings,
        spec: StreamSpec,
        event_names: list[tuple[str, str]],
        ledger: Ledger,
        sent: SentKeys | None = None,
        turns: Turns | None = None,
    ) -> None:
        route = settings.routes.match(spec.stream)
        assert route is not None  # the target only maps routed streams
        # dedupe keys of the last events built here (not built again: run_events.py)
        self._recent: OrderedDict[int, None] = OrderedDict()
        # the keys this run sent (run_sent.py), and the order chunks settle in
        self._sent = sent if sent is not None else SentKeys()
        self._turns = turns if turns is not None else Turns()
        context = Context(
            spec.started_at,
            spec.ledger_scope,
            self._recent,
            lambda raw, name: event_names.append((raw, name)),
        )
        kind = KINDS[route.kind]
        self._builder: Builder = kind.builder(route, spec.schema, context)
        # A mirror route (ledger on: settings check it) reports who its records are about.
        self._member = kind.member if route.mirror is not None and spec.ledger_scope else None
        self._stream = spec.stream
        self._key_properties = spec.key_properties
        self._shards = spec.shards
        self._ledger = None if isinstance(ledger, NoLedger) else ledger
        self._event_names = event_names
        self._claims: Claims | None = (
            Claims(
                route,
                spec.schema,
                spec.stream,
                spec.key_properties,
                workspace_seed(settings.base_url, settings.site_id),
            )
            if route.kind in ("person", "event", "segment", "object")
            else None
        )
        self._campaign_events = spec.campaign_events

    def map_chunk(self, items: list[Item], seq: int = -1) -> Mapped:
        """The chunk's answer; `seq`: its place in the order chunks were read (run_sent.py)."""
        rejects: list[tuple[int, str, str | None, str, str | None]] = []
        skipped: Counter[str] = Counter()
        rejected_members: list[int] = []
        event_items: list[int] = []
        event_keys: list[int] = []
        fates = bytearray()
        # (index in the chunk, its place in `fates` (-1: not an event), operations)
        mapped: list[tuple[int, int, list[_Send]]] = []
        # positions in `mapped` of events that may start a campaign: (name, person, time)
        campaign: dict[int, tuple[str, tuple[str, str], int]] = {}
        campaign_events = self._campaign_events
        # what each mapped record's claims need (not the record: freed once built) and its
        # identifier: claimed once known not to be unchanged
        made: list[tuple[t.Any, tuple[str, str]]] = []
        claims = self._claims
        refused: list[tuple[str, str]] = []  # people whose identify is rejected here
        builder = self._builder  # a native method call (compiled), not a bound-method object
        for index, item in enumerate(items):
            record, native = (
                decode_record(item, self._stream) if isinstance(item, bytes) else (item, False)
            )
            for key in self._key_properties:
                if key not in record:
                    raise MissingKeyPropertiesError(
                        f"{self._stream}: a record has no key property {key!r} "
                        f"(key_properties: {self._key_properties})"
                    )
            try:
                built = builder.build(record, native)
            except Skipped as skip:
                if skip.seen is None:
                    skipped[skip.reason] += 1
                else:
                    event_items.append(index)
                    event_keys.append(skip.seen)
                    fates.append(REPEAT)
                continue
            except Rejected as rej:
                rejects.append((index, rej.reason, rej.field, rej.message, rej.rule))
                if rej.seen is not None:
                    event_items.append(index)
                    event_keys.append(rej.seen)
                    fates.append(REJECTED)
                self._rejected_member(record, rejected_members)
                self._refused_person(record, refused)
                continue
            except Exception as exc:  # noqa: BLE001 - a value no check foresaw: this record's fault
                rejects.append((index, UNMAPPABLE, None, failure_message(exc), None))
                self._rejected_member(record, rejected_members)
                self._refused_person(record, refused)
                continue
            ops = built.operations
            if campaign_events:  # a campaign starts on some event name: is it this one's?
                name = built.name
                if name is not None and name in campaign_events:
                    when = built.timestamp if built.timestamp is not None else 0
                    campaign[len(mapped)] = (name, built.identifier, when)
            if claims is not None:
                made.append((claims.pick(record), built.identifier))
            seen = ops[0].seen
            place = -1
            if seen is not None:  # an event: its later rows are not built again here
                self._recent[seen] = None
                if len(self._recent) > RECENT_EVENTS:
                    self._recent.popitem(last=False)
                place = len(fates)
                event_items.append(index)
                event_keys.append(seen)
                fates.append(SENT)
            # Only what is sent is kept, not the record: freed now, its memory is reused while
            # still in cache.
            mapped.append((index, place, [(op.body, op.shard_key, op.ledger) for op in ops]))
        unchanged = self._unchanged(mapped, seq)
        shards = self._shards
        parts = [SegmentBuilder() for _ in range(shards)]
        if claims is not None:
            claims.begin()
        sent_campaign: list[tuple[int, str, tuple[str, str], int]] = []
        for at, (index, place, sends) in enumerate(mapped):
            if at in unchanged:
                if place < 0:
                    skipped["unchanged"] += 1
                else:  # counted once settled: a row of an event another stream sent is not
                    fates[place] = UNCHANGED
                continue
            person = None  # a keyed person's operations travel by its key (identity.py)
            if claims is not None:
                source, identifier = made[at]
                person = claims.add(index, source, identifier)
            if campaign and at in campaign:
                sent_campaign.append((index, *campaign[at]))
            for body, shard_key, ledger in sends:
                parts[hash(person or shard_key) % shards].add(body, index, ledger)
        segments = {shard: part.segment() for shard, part in enumerate(parts) if part.bodies}
        names, self._event_names[:] = list(self._event_names), []
        out = Mapped(segments, rejects, dict(skipped), event_items, event_keys, bytes(fates), names)
        if sent_campaign:
            out.campaign_events = sent_campaign
        out.identity = claims.done() if claims is not None else None
        out.refused = refused or None
        if self._member is not None:
            out.members, out.sent_members = self._members(mapped, unchanged, rejected_members)
        return out

    def _refused_person(self, record: dict, refused: list[tuple[str, str]]) -> None:
        """Whom a rejected record's identify would have created or updated, when its kind
        identifies people and its identifier reads: what depends on them is not sent."""
        try:
            who = self._builder.identity(record)
        except Exception:  # noqa: BLE001 - no usable identifier: it cannot be told whom
            who = None
        if who is not None:
            refused.append(who)

    def _rejected_member(self, record: dict, rejected: list[int]) -> None:
        """A mirror route's rejected record is still about someone in the view (when its
        identifier can be read at all)."""
        if self._member is None:
            return
        try:
            member = self._builder.member_key(record)
        except Exception:  # noqa: BLE001 - no usable identifier: it cannot be told whom
            member = None
        if member is not None:
            rejected.append(member)

    def _members(
        self,
        mapped: list[tuple[int, int, list[_Send]]],
        unchanged: set[int],
        rejected: list[int],
    ) -> tuple[array, list[tuple[int, int, str]]]:
        """A mirror route's members in the chunk: each record's first tracked operation says
        whom it is about (a person, a membership); the sent ones carry what the ledger keeps."""
        member = self._member
        assert member is not None
        keys = array("q", rejected)
        sent: list[tuple[int, int, str]] = []
        for at, (_, _, sends) in enumerate(mapped):
            for body, _, ledger in sends:
                if ledger is not None:
                    keys.append(ledger[0])
                    if at not in unchanged:
                        sent.append((ledger[0], ledger[1], member(body)))
                    break
        return keys, sent

    def _unchanged(self, mapped: list[tuple[int, int, list[_Send]]], seq: int) -> set[int]:
        """Change detection: the records (positions in `mapped`) whose every tracked operation
        is exactly what Customer.io last confirmed (one ledger query for the whole chunk) and
        about keys no earlier record of this run was sent for (run_sent.py: the ledger does not
        know yet what this run sends). A mirror route's record is unchanged only if its last
        complete run kept it too."""
        if self._ledger is None:
            return set()
        keys = [ledger[0] for _, _, sends in mapped for _, _, ledger in sends if ledger is not None]
        lookup = self._ledger.fingerprints if self._member is None else self._ledger.mirrored
        delivered = lookup(keys) if keys else None
        unchanged = set()
        if delivered:
            for at, (_, _, sends) in enumerate(mapped):
                tracked = [ledger for _, _, ledger in sends if ledger is not None]
                if tracked and all(delivered.get(key) == fp for key, fp in tracked):
                    unchanged.add(at)
        if not keys:
            return unchanged
        sent = self._sent
        self._turns.wait(seq)  # every earlier chunk's sent keys are in
        try:
            for at, (_, _, sends) in enumerate(mapped):  # in record order
                if at in unchanged:
                    if not sent.any_of(sends):
                        continue
                    unchanged.discard(at)  # sent earlier in this run: sent again
                sent.add_all(sends)
        finally:
            self._turns.done(seq)
        return unchanged


OnMapped = t.Callable[[list[Item], Mapped], None]


class InlineMapping:
    """Maps in the calling thread: a mapping process's own work, and the target's where there
    is no mapping process."""

    def __init__(
        self, settings: Settings, sent: SentKeys | None = None, turns: Turns | None = None
    ) -> None:
        self._settings = settings
        # the keys this run sent, and the order chunks settle in: shared by the mapping
        # processes (mapping_processes.py), else this process's own
        self._sent = sent if sent is not None else SentKeys()
        self.turns = turns if turns is not None else Turns()
        self._streams: dict[int, StreamMapping] = {}
        self._event_names: list[tuple[str, str]] = []
        self._ledger: Ledger | None = (
            None  # for lookups: a connection of its own, opened on first use
        )

    def open(self, spec: StreamSpec) -> int:
        if self._ledger is None:
            self._ledger = open_ledger(self._settings)
        key = len(self._streams)
        self._streams[key] = StreamMapping(
            self._settings, spec, self._event_names, self._ledger, self._sent, self.turns
        )
        return key

    def submit(self, key: int, items: list[Item], on_mapped: OnMapped) -> None:
        on_mapped(items, self.map(key, items))

    def map(self, key: int, items: list[Item], seq: int = -1) -> Mapped:
        try:
            return self._streams[key].map_chunk(items, seq)
        finally:
            self.turns.finish(seq)  # a chunk that failed still lets the next ones settle

    def drain(self) -> None:
        return None

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
