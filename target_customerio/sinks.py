"""Sinks: where the SDK hands us records. Each record is mapped and packed as it arrives."""

from __future__ import annotations

import typing as t
from functools import cached_property, partial

from singer_sdk.sinks import Sink

from target_customerio.delivery import Packer
from target_customerio.errors import ContractError
from target_customerio.ledger import NoLedger
from target_customerio.lifecycle import MAPPERS, delete_operation, is_delete, mirror_operation
from target_customerio.mapping import Operation, Rejected, Skipped

if t.TYPE_CHECKING:
    from target_customerio.target import TargetCustomerIO

LEDGER_LOOKUP_BATCH = 256  # records whose ledger entries are looked up in one query


class CustomerIOSink(Sink):
    """Maps each record to one operation and packs it; full batches go to delivery at once.

    Batches are cut by request size, not by the SDK's row count, so `process_batch` has
    nothing left to do; the target flushes partial batches before it writes STATE.
    """

    def __init__(self, target: TargetCustomerIO, stream_name: str, schema: dict, key_properties: t.Sequence[str] | None) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        route = target.settings.routes.match(stream_name)
        assert route is not None  # the target only builds this sink for routed streams
        self._report = target.report
        self._tally = target.report.stream(stream_name)
        self._mapper = MAPPERS[route.kind](
            route, schema, now=target.started_at, on_event_name=target.report.event_name,
            ledger_scope=target.ledger_scope(stream_name),
        )
        self._fail_on_violation = route.on_contract_violation == "fail"
        self._deletes_here = route.kind in ("person", "event")  # objects map their own deletes
        self._mirror = route.mirror_to_attribute
        self._ledger = target.ledger
        self._pending: list[list[Operation]] = []  # mapped, waiting for their ledger lookup
        self._lookups = not isinstance(target.ledger, NoLedger)
        self._max_reject_ratio = target.settings.max_reject_ratio
        delivery = target.delivery
        self._packers = [Packer(stream_name, partial(delivery.submit, shard)) for shard in range(delivery.shards)]
        target.check_credentials()

    def get_validator(self) -> None:
        """The SDK's per-record validation is off: contracts check what is actually sent."""
        return None

    # The SDK calls the next three for every record: the same outcome, with less work.

    def _validate_and_parse(self, record: dict) -> dict:
        """No SDK validation (see above) and no SDK date parsing: the mapper parses dates and
        rejects a bad one instead of crashing the run."""
        return record

    @cached_property
    def include_sdc_metadata_properties(self) -> bool:
        """The SDK reads the setting through a new config proxy for every record."""
        return self.config.get("add_record_metadata", False)  # type: ignore[no-any-return]

    def _singer_validate_message(self, record: dict) -> None:
        for key in self._key_properties:
            if key not in record:
                super()._singer_validate_message(record)  # raises the SDK's error

    def _remove_sdc_metadata_from_record(self, record: dict) -> None:
        """Drop the SDK's metadata columns but keep the delete marker the route may act on."""
        deleted_at = record.get("_sdc_deleted_at")
        super()._remove_sdc_metadata_from_record(record)
        if deleted_at:
            record["_sdc_deleted_at"] = deleted_at

    def receive(self, record: dict, native: bool) -> None:
        """A record straight from the reader (the target's direct path, no stream maps)."""
        for key in self._key_properties:
            if key not in record:
                super()._singer_validate_message(record)  # raises the SDK's error
        self.record_counter_metric.increment()
        self.accept(record, native)

    def process_record(self, record: dict, context: dict) -> None:
        """A record through the SDK's handling (stream maps, flattening or record metadata on)."""
        self.accept(record, native=False)

    def accept(self, record: dict, native: bool) -> None:
        """Map and pack one record, or account for why not. `native`: see `Mapper.map`."""
        self._tally.received += 1
        try:
            ops = self._operations(record, native)
        except Skipped as skip:
            self._report.skip(self.stream_name, skip.reason)
            return
        except Rejected as rej:
            self._reject(record, rej)
            return
        if not self._lookups:
            self._pack(ops)
            return
        # Change detection: look the ledger up for many records at once, then pack them in
        # the order they came (so one person's operations never overtake each other).
        self._pending.append(ops)
        if len(self._pending) >= LEDGER_LOOKUP_BATCH:
            self._pack_pending()

    def _pack(self, ops: list[Operation]) -> None:
        packers = self._packers
        for op in ops:
            packers[hash(op.shard_key) % len(packers)].add(op)

    def _pack_pending(self) -> None:
        """Pack the waiting records, except those whose every tracked operation is unchanged."""
        pending, self._pending = self._pending, []
        delivered = self._ledger.fingerprints([op.ledger[0] for ops in pending for op in ops if op.ledger is not None])
        for ops in pending:
            if _unchanged(ops, delivered):
                self._report.skip(self.stream_name, "unchanged")
            else:
                self._pack(ops)

    def _operations(self, record: dict, native: bool) -> list[Operation]:
        if self._deletes_here and is_delete(record):
            return [delete_operation(self._mapper, record)]
        result = self._mapper.map(record, native)
        if type(result) is not Operation:
            return result
        if self._mirror:
            return [result, mirror_operation(self._mapper, result, self._mapper.last_timestamp)]
        return [result]

    def _reject(self, record: dict, rej: Rejected) -> None:
        if rej.reason == "contract_violation" and self._fail_on_violation:
            raise ContractError(f"{self.stream_name}: contract violation at {rej.field or 'record'}: {rej.message}") from None
        self._report.reject(self.stream_name, rej.reason, rej.field, rej.message, record, rej.rule)
        if self._max_reject_ratio is not None and self._tally.received >= 100:
            self.check_reject_ratio()

    def check_reject_ratio(self) -> None:
        """Stop a drifting stream before more bad data lands (`max_reject_ratio`)."""
        ratio = self._max_reject_ratio
        rejected, received = sum(self._tally.rejected.values()), self._tally.received
        if ratio is not None and received and rejected / received > ratio:
            raise ContractError(
                f"{self.stream_name}: {rejected} of {received} records rejected, more than max_reject_ratio {ratio:g}; "
                "see the reject file for why"
            )

    def process_batch(self, context: dict) -> None:
        """Nothing to do: records were packed as they arrived (see class docstring)."""

    def activate_version(self, new_version: int) -> None:
        """Ignored: Customer.io has no table version to switch to.

        tap-mssql and other pipelinewise taps send one after every full-table run and every CDC
        run, even a CDC run that carries only the changed rows. Deleting whatever was not re-sent
        would erase people, so nothing is deleted.
        """
        self.logger.debug("ACTIVATE_VERSION %s: nothing to do in Customer.io", new_version)

    def flush(self) -> None:
        """Hand every partial batch to delivery."""
        if self._pending:
            self._pack_pending()
        for packer in self._packers:
            packer.flush()


def _unchanged(ops: list[Operation], delivered: dict[int, int]) -> bool:
    """True when every operation the ledger tracks is exactly what was last delivered."""
    tracked = [op.ledger for op in ops if op.ledger is not None]
    return bool(tracked) and all(delivered.get(key) == fingerprint for key, fingerprint in tracked)


class UnmappedSink(Sink):
    """A stream with no route under `unmapped_streams: skip`: counted, never sent."""

    def __init__(self, target: TargetCustomerIO, stream_name: str, schema: dict, key_properties: t.Sequence[str] | None) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        self._report = target.report
        self._report.stream(stream_name)

    def get_validator(self) -> None:
        return None

    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment: t.Any) -> None:
        """Never sent, so never parsed."""

    def process_record(self, record: dict, context: dict) -> None:
        self._report.stream(self.stream_name).received += 1
        self._report.skip(self.stream_name, "unmapped")

    def receive(self, record: dict, native: bool) -> None:
        """A record straight from the reader: counted and skipped all the same."""
        self.process_record(record, {})

    def process_batch(self, context: dict) -> None:
        """Nothing is sent for an unmapped stream."""

    def activate_version(self, new_version: int) -> None:
        """Nothing is sent for an unmapped stream, so there is nothing to version."""

    def flush(self) -> None:
        """Nothing is packed for an unmapped stream."""

    def check_reject_ratio(self) -> None:
        """Nothing is rejected in an unmapped stream."""
