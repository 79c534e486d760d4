"""Sinks: where records arrive. They are mapped and checked against the ledger in chunks
(stream_mapping.py, in mapping processes), then accounted for and packed, in the order they came."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass
from functools import cached_property, partial

from target_customerio.campaigns import Campaigns
from target_customerio.errors import ContractError
from target_customerio.identity import ChunkClaims, IdentityMap, StreamIdentity, with_after
from target_customerio.mapping_processes import CHUNK, ProcessMapping
from target_customerio.mirror import RunMembers
from target_customerio.operations.identifiers import identifier_value
from target_customerio.operations.operation import Rejected
from target_customerio.reading import decode_record
from target_customerio.report import RunReport
from target_customerio.routes import Route, check_columns
from target_customerio.run_events import RunEvents
from target_customerio.sdk import SdkSink
from target_customerio.stream_mapping import InlineMapping, Item, Mapped, StreamSpec
from target_customerio.wire import Batch, Packer

# Rejects that `on_contract_violation: fail` turns into a failed run: the route's contract, and
# the tap's SCHEMA, which is a contract too (the default one).
CONTRACT_REASONS = ("contract_violation", "schema_violation")


@dataclass
class SinkNeeds:
    """What a stream's sink is given by the target (`TargetCustomerIO.sink_needs`)."""

    route: Route | None  # None: the stream has no route (`unmapped_streams: skip`)
    report: RunReport
    mapping: InlineMapping | ProcessMapping
    submit: t.Callable[[int, Batch], None]  # hands a full batch to delivery, on its shard
    shards: int
    started_at: float
    ledger_scope: str | None
    max_reject_ratio: float | None
    events: RunEvents  # the run's events, whoever sent them (one for the run)
    members: RunMembers | None = None  # a mirror route's: who this run's records are about
    identity: IdentityMap | None = None  # the workspace's identity map (identity.py)
    # people whose identify was rejected in this run (memberships of theirs are not sent)
    refused: set[tuple[str, str]] | None = None
    # A QA sync's (qa_sync.QaSync.hold): records are held until the chosen people are known.
    hold: t.Callable[[str, Route, t.Callable[[t.Any], None], t.Any], None] | None = None
    campaigns: Campaigns | None = None  # the run's campaign triggers (None: not read)


class CustomerIOSink(SdkSink):
    """Sends records to be mapped, packs their operations; full batches go to delivery at once.

    Batches are cut by request size, not by the SDK's row count, so `process_batch` has
    nothing left to do; the target flushes partial chunks and batches before it writes STATE.
    """

    KEPT_METADATA = ("_sdc_deleted_at",)  # the delete marker a route may act on

    def __init__(
        self, target: t.Any, stream_name: str, schema: dict, key_properties: t.Sequence[str] | None
    ) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        needs: SinkNeeds = target.sink_needs(stream_name)
        route = needs.route
        assert route is not None  # the target only builds this sink for routed streams
        self._check_route_columns(route)
        self._report = needs.report
        self._tally = needs.report.stream(stream_name)
        self._mapping = needs.mapping
        spec = StreamSpec(
            stream_name,
            schema,
            list(key_properties or []),
            needs.started_at,
            needs.ledger_scope,
            needs.shards,
            needs.campaigns.event_names if needs.campaigns is not None else frozenset(),
        )
        self._mapping_key = self._mapping.open(spec)
        self._chunk: list[Item] = []
        self._sdk_counted = 0  # records of the chunk counted for `record_count` already (the SDK)
        self._fail_on_violation = route.on_contract_violation == "fail"
        self._events = needs.events
        self._events_as = needs.events.stream_id(stream_name)
        self._max_reject_ratio = needs.max_reject_ratio
        self._members = needs.members
        self._identity = needs.identity
        identity = getattr(route.options, "identity", None)
        self._identity_stream = (
            StreamIdentity(identity, route.kind == "person") if identity is not None else None
        )
        self._refused = needs.refused
        # a person route's identifier: whom a record the identity check rejects was about
        self._identifier = (
            getattr(route.options, "identifier", None) if route.kind == "person" else None
        )
        self._campaigns = needs.campaigns
        # the route's own max_campaign_entries (an event route's), else the setting's
        self._campaign_limit: int | None = getattr(route.options, "max_campaign_entries", None)
        self._packers = [
            Packer(stream_name, partial(needs.submit, shard)) for shard in range(needs.shards)
        ]
        if needs.hold is not None:  # a QA sync: both ways in hold the record back instead
            self._hold = partial(needs.hold, stream_name, route, self._receive_counted)
            self.receive = self._hold_direct  # type: ignore[method-assign]
            self.process_record = self._hold_from_sdk  # type: ignore[method-assign]

    def _check_route_columns(self, route: Route) -> None:
        """Every column the route names is declared by the stream's SCHEMA (else ConfigError,
        exit 2), checked once per SCHEMA in the target, before any of the stream is sent. A
        SCHEMA whose `properties` are empty cannot be checked: a warning, and the run goes on.
        (One with no `properties` at all never gets here: singer-sdk stops on it, exit 5.)"""
        # The SCHEMA as the tap sent it (records on the direct path keep the `_sdc_` columns the
        # SDK drops from `schema`), and as the SDK extends it (add_record_metadata).
        declared = {**_properties(self.original_schema), **_properties(self.schema)}
        if not declared:
            self.logger.warning(
                "stream %s: its SCHEMA declares no properties, so neither the route's columns nor "
                "the records' types can be checked against it",
                self.stream_name,
            )
            return
        check_columns(route, self.stream_name, list(declared))

    def get_validator(self) -> None:
        """The SDK's per-record validation is off: contracts check what is actually sent."""
        return

    # On the SDK's path (stream maps, flattening, record metadata) the SDK calls the next three
    # for every record: the same outcome, with less work.

    def prepare_record(self, record: dict) -> dict:
        """No SDK validation (see above) and no SDK date parsing: mapping parses dates and
        rejects a bad one instead of crashing the run."""
        return record

    @cached_property
    def include_sdc_metadata_properties(self) -> bool:
        """The SDK reads the setting through a new config proxy for every record."""
        return self.config.get("add_record_metadata", False)  # type: ignore[no-any-return]

    def receive(self, item: Item) -> None:
        """A record straight from the reader (the target's direct path: no stream maps): its
        RECORD line, undecoded, or the record when the line is not in the form the reader
        matches (an unusual key order, a non-ASCII stream name)."""
        if not self._chunk and self._identity_stream is not None and self._identity is not None:
            self._identity.before_chunk(self, self._identity_stream.person)
        self._chunk.append(item)
        if len(self._chunk) >= CHUNK:
            self._send_chunk()

    _receive = receive  # the sink's own, when a QA sync holds `receive` back

    def process_record(self, record: dict, context: dict) -> None:
        """A record through the SDK's handling (stream maps, flattening or record metadata on),
        which has counted it for the `record_count` metric already."""
        self._sdk_counted += 1
        self._report.taken_from_sdk += 1
        self.receive(record)

    def send_partial_chunk(self) -> None:
        """The records waiting for a full chunk are mapped now (identity.py: people first)."""
        if self._chunk:
            self._send_chunk()

    def _hold_direct(self, item: Item) -> None:
        """A QA sync: a record from the reader held back, counted for `record_count` now (as
        the SDK counts those it hands over), whether it is sent or not."""
        self.record_counter_metric.increment()
        self._hold(item)

    def _hold_from_sdk(self, record: dict, context: dict) -> None:
        """A QA sync: the SDK's record held back (taken from the SDK, not filtered out)."""
        self._report.taken_from_sdk += 1
        self._hold(record)

    def _receive_counted(self, item: Item) -> None:
        """A QA sync's chosen record, already counted for `record_count`."""
        self._sdk_counted += 1
        self._receive(item)

    def _send_chunk(self) -> None:
        chunk, self._chunk = self._chunk, []
        self.record_counter_metric.increment(len(chunk) - self._sdk_counted)  # the direct path's
        self._sdk_counted = 0
        if self._members is not None:
            self._members.records += len(chunk)
        self._mapping.submit(self._mapping_key, chunk, self._account)

    def _account(self, items: list[Item], mapped: Mapped) -> None:
        """A chunk's answer: its rejects and skips are counted, its operations packed on their
        delivery shards (a person's always on the same one, in order), except the rows of an
        event this run already has (run_events.py): duplicates, counted with who sent it."""
        tally, received = self._tally, self._tally.received
        for raw, name in mapped.event_names:
            self._report.event_name(raw, name)
        settled = self._events.settle(
            self._events_as, mapped.event_items, mapped.event_keys, mapped.event_fates
        )
        duplicates = settled.duplicates
        for index, reason, field, message, rule in mapped.rejects:
            if index in duplicates:
                continue
            # as counted one by one: max_reject_ratio is checked here
            tally.received = received + index + 1
            self._reject(items[index], Rejected(reason, field, message, rule))
        tally.received = received + len(items)
        if mapped.refused and self._refused is not None:
            self._refused.update(mapped.refused)
        segments = mapped.segments
        if duplicates:
            segments = {
                shard: segment.without_items(duplicates) for shard, segment in segments.items()
            }
            self._report.duplicates(self.stream_name, settled.of)
        if settled.unchanged:
            self._report.skip(self.stream_name, "unchanged", settled.unchanged)
        for reason, count in mapped.skipped.items():
            self._report.skip(self.stream_name, reason, count)
        if self._members is not None and mapped.members is not None:
            self._members.add(mapped.members, mapped.sent_members or [])
        not_sent = duplicates
        if mapped.identity:
            segments, rejected = self._check_identity(items, mapped.identity, segments, duplicates)
            if rejected:  # an event rejected for its unknown person starts no campaign
                not_sent = duplicates | rejected
        cut = self._count_campaigns(mapped, not_sent) if mapped.campaign_events else None
        if cut is not None:  # the guard: nothing from the first event past the limit on
            drop = set(range(cut, len(items)))
            segments = {shard: segment.without_items(drop) for shard, segment in segments.items()}
        for shard, segment in segments.items():
            self._packers[shard].add_segment(segment._replace(items=items))
        if cut is not None and self._campaigns is not None:
            for packer in self._packers:
                packer.flush()
            self._campaigns.stop()  # raises CampaignGuardError (exit 10)

    def _count_campaigns(self, mapped: Mapped, repeated: set[int]) -> int | None:
        """The chunk's events that may start a campaign, counted; the index of the first one
        past max_campaign_entries when the run must stop there."""
        events = mapped.campaign_events or []
        if repeated:
            events = [event for event in events if event[0] not in repeated]
        assert self._campaigns is not None  # mapping only sends them back when it was read
        return self._campaigns.count_events(self.stream_name, self._campaign_limit, events)

    def _check_identity(
        self, items: list[Item], claims: ChunkClaims, segments: dict, duplicates: set[int]
    ) -> tuple[dict, set[int]]:
        """The run-wide identity check, in record order (identity.py): rejected records leave
        their segments, a keyed person's merge follows its identify on the same shard; the
        rows of an event this run already has (`duplicates`) are not sent, so claim nothing."""
        assert self._identity is not None and self._identity_stream is not None
        if duplicates:
            claims = claims.without(duplicates)
        outcome = self._identity.account(self._identity_stream, claims)
        self._report.identity(self.stream_name, outcome.conflicts, outcome.unknown, outcome.changes)
        rejected: set[int] = set()
        for index, reason, field, message in outcome.rejects:
            self._reject(items[index], Rejected(reason, field, message))
            rejected.add(index)
        if rejected:
            self._refuse_people(items, rejected)
        shards = len(self._packers)
        merges: dict[int, dict[int, bytes]] = {}
        for index, (body, shard_key) in outcome.merges.items():
            merges.setdefault(hash(shard_key) % shards, {})[index] = body
        if not rejected and not merges:
            return segments, rejected
        return {
            shard: with_after(segment.without_items(rejected), merges.get(shard, {}))
            for shard, segment in segments.items()
        }, rejected

    def _refuse_people(self, items: list[Item], rejected: set[int]) -> None:
        """People whose identify the identity check rejected, like those Customer.io refused:
        what depends on them (a membership) is not sent in this run."""
        if self._identifier is None or self._refused is None:
            return
        field, kind = self._identifier.field, self._identifier.type
        for index in rejected:
            item = items[index]
            record = decode_record(item, self.stream_name)[0] if isinstance(item, bytes) else item
            try:
                self._refused.add((kind, identifier_value(record, field, kind)))
            except Rejected:  # no usable identifier: nobody to hold back
                continue

    def _reject(self, record: Item, rej: Rejected) -> None:
        if rej.reason in CONTRACT_REASONS and self._fail_on_violation:
            what = rej.reason.replace("_", " ")
            where = rej.field or "record"
            raise ContractError(f"{self.stream_name}: {what} at {where}: {rej.message}") from None
        self._report.reject(self.stream_name, rej.reason, rej.field, rej.message, record, rej.rule)
        if self._max_reject_ratio is not None and self._tally.received >= 100:
            self.check_reject_ratio()

    def check_reject_ratio(self) -> None:
        """Stop a drifting stream before more bad data lands (`max_reject_ratio`)."""
        ratio = self._max_reject_ratio
        rejected, received = sum(self._tally.rejected.values()), self._tally.received
        if ratio is not None and received and rejected / received > ratio:
            raise ContractError(
                f"{self.stream_name}: {rejected} of {received} records rejected, "
                f"more than max_reject_ratio {ratio:g}; "
                "see the reject file for why",
                cause="max_reject_ratio",
            )

    def process_batch(self, context: dict) -> None:
        """Nothing to do: records were packed as they arrived (see class docstring)."""

    @property
    def process_activate_version_messages(self) -> bool:
        """Always: the SDK's setting is accepted and does nothing here (see activate_version)."""
        return True

    def activate_version(self, new_version: int) -> None:
        """Customer.io has no table version to switch to: nothing is deleted.

        tap-mssql and other pipelinewise taps send one after every full-table run and every CDC
        run, even a CDC run that carries only the changed rows. Deleting whatever was not re-sent
        would erase people. A mirror route notes where it came: the stream was read whole only
        if its last ACTIVATE_VERSION comes after its last record (mirror.py).
        """
        if self._members is not None:
            self._members.activate_version(self._members.records + len(self._chunk))
        self.logger.debug("ACTIVATE_VERSION %s: nothing to do in Customer.io", new_version)

    def clean_up(self) -> None:
        """At the end of the stream: the records of the last chunk are counted before the SDK
        logs the `record_count` metric Meltano reads."""
        if self._chunk:
            self._send_chunk()
        super().clean_up()

    def flush(self) -> None:
        """Map every record received, and hand every partial batch to delivery."""
        if self._chunk:
            self._send_chunk()
        self._mapping.drain()
        for packer in self._packers:
            packer.flush()


def _properties(schema: t.Any) -> dict:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return properties if isinstance(properties, dict) else {}


class UnmappedSink(SdkSink):
    """A stream with no route under `unmapped_streams: skip`: counted, never sent."""

    def __init__(
        self, target: t.Any, stream_name: str, schema: dict, key_properties: t.Sequence[str] | None
    ) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        self._report = target.sink_needs(stream_name).report
        self._report.stream(stream_name)

    def get_validator(self) -> None:
        return None

    def prepare_record(self, record: dict) -> dict:
        """Never sent, so never validated nor parsed."""
        return record

    def process_record(self, record: dict, context: dict) -> None:
        """Through the SDK's handling, which counted it for `record_count`."""
        self._report.taken_from_sdk += 1
        self._skip()

    def receive(self, item: Item) -> None:
        """A record straight from the reader: counted and skipped all the same."""
        self.record_counter_metric.increment()
        self._skip()

    def _skip(self) -> None:
        self._report.stream(self.stream_name).received += 1
        self._report.skip(self.stream_name, "unmapped")

    def process_batch(self, context: dict) -> None:
        """Nothing is sent for an unmapped stream."""

    def activate_version(self, new_version: int) -> None:
        """Nothing is sent for an unmapped stream, so there is nothing to version."""

    def flush(self) -> None:
        """Nothing is packed for an unmapped stream."""

    def check_reject_ratio(self) -> None:
        """Nothing is rejected in an unmapped stream."""
