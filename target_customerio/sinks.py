"""Sinks: where the SDK hands us records. Each record is mapped and packed as it arrives."""

from __future__ import annotations

import typing as t
from functools import partial

from singer_sdk.sinks import Sink

from target_customerio.delivery import Packer
from target_customerio.errors import ContractError
from target_customerio.mapping import Mapper, Rejected, Skipped

if t.TYPE_CHECKING:
    from target_customerio.target import TargetCustomerIO


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
        self._mapper = Mapper(route, schema, now=target.started_at, on_event_name=target.report.event_name)
        self._fail_on_violation = route.on_contract_violation == "fail"
        delivery = target.delivery
        self._packers = [Packer(stream_name, partial(delivery.submit, shard)) for shard in range(delivery.shards)]
        target.check_credentials()

    def get_validator(self) -> None:
        """The SDK's per-record validation is off: contracts check what is actually sent."""
        return None

    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment: t.Any) -> None:
        """Dates are parsed by the mapper, which rejects a bad one instead of crashing the run."""

    def process_record(self, record: dict, context: dict) -> None:
        self._tally.received += 1
        try:
            op = self._mapper.map(record)
        except Skipped as skip:
            self._report.skip(self.stream_name, skip.reason)
            return
        except Rejected as rej:
            if rej.reason == "contract_violation" and self._fail_on_violation:
                raise ContractError(f"{self.stream_name}: contract violation at {rej.field or 'record'}: {rej.message}") from None
            self._report.reject(self.stream_name, rej.reason, rej.field, rej.message, record, rej.rule)
            return
        packers = self._packers
        packers[hash(op.shard_key) % len(packers)].add(op)

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
        for packer in self._packers:
            packer.flush()


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

    def process_batch(self, context: dict) -> None:
        """Nothing is sent for an unmapped stream."""

    def activate_version(self, new_version: int) -> None:
        """Nothing is sent for an unmapped stream, so there is nothing to version."""

    def flush(self) -> None:
        """Nothing is packed for an unmapped stream."""
