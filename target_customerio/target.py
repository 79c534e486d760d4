"""The target: settings, routing of streams to sinks, STATE only after delivery, exit codes."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
import typing as t
from collections import Counter
from pathlib import Path
from decimal import Decimal
from types import FrameType

import msgspec
from singer_sdk import Target
from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.exceptions import ConfigValidationError, MissingKeyPropertiesError, RecordsWithoutSchemaException
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.plugin_base import _ConfigInput
from singer_sdk.singerlib.exceptions import InvalidInputLine
from singer_sdk.sinks import Sink

from target_customerio.delivery import Delivery, DryRun, TrackClient
from target_customerio.errors import ConfigError, InputError, TargetError, Terminated
from target_customerio.ledger import Ledger, NoLedger, PostgresLedger, SqliteLedger
from target_customerio.report import RunReport
from target_customerio.settings import CONFIG_SCHEMA, load_settings
from target_customerio.sinks import CustomerIOSink, UnmappedSink


_EXACT = 2**53  # floats below this size hold integers exactly


def _json_number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: an integer when its value is one (a
    numeric(10,2) of 250.00 is sent as 250, not 250.0), else a float (always finite: the
    decoder refuses numbers out of a float's range)."""
    number = float(text)
    return int(number) if number.is_integer() and -_EXACT < number < _EXACT else number


_decode = msgspec.json.Decoder(float_hook=_json_number).decode


class SingerLineReader(MsgSpecReader):
    """msgspec reader over raw bytes: fast, and a bad line is one clear error, not a traceback.

    `native` says whether the last line was read by the strict decoder: its values are then
    plain JSON (str, int, finite float, bool, None, list, dict), which the mapper sends
    without walking them. A line only the lenient decoder reads holds Decimals instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self.native = True

    @property
    def default_input(self) -> t.IO[t.Any]:  # type: ignore[override]
        return sys.stdin.buffer

    def process_lines(self, file_input: t.IO[t.Any] | None, callbacks: dict[str, t.Callable[[dict], None]]) -> Counter[str]:
        """The SDK's loop, without its per-line bookkeeping."""
        counts: dict[str, int] = dict.fromkeys(callbacks, 0)
        for line in file_input or self.default_input:
            message = self.deserialize_json(line)
            kind = message.get("type")
            callback = callbacks.get(kind)  # type: ignore[arg-type]
            if callback is None:
                self.assert_line_requires(message, requires={"type"})
                self._process_unknown_message(message)
            callback(message)  # type: ignore[misc]
            counts[kind] += 1  # type: ignore[index]
        return Counter(counts)

    def deserialize_json(self, line: str | bytes) -> dict:
        self.line_number += 1
        try:
            message = _decode(line)
            self.native = True
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            message = self._lenient_decode(line)
            self.native = False
        if type(message) is not dict:
            raise InputError(f"input line {self.line_number} is not a JSON object")
        return message

    def _process_unknown_message(self, message_dict: dict) -> None:
        raise InputError(f"input line {self.line_number}: unknown message type {message_dict.get('type')!r}")

    def _lenient_decode(self, line: str | bytes) -> t.Any:
        """What Python taps emit but strict JSON forbids: NaN, Infinity, lone surrogates, bad UTF-8.

        Such a line still parses, so the one bad value is rejected with its record and field
        by the mapper instead of stopping the whole run.
        """
        text = line.decode("utf-8", errors="surrogateescape") if isinstance(line, bytes) else line
        try:
            return json.loads(text, parse_float=Decimal, parse_constant=Decimal)
        except json.JSONDecodeError as exc:
            raise InputError(f"input line {self.line_number} is not valid JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise InputError(f"input line {self.line_number} is nested too deeply to read") from None


class TargetCustomerIO(Target):
    """Singer target for Customer.io person updates and events."""

    name = "target-customerio"
    config_jsonschema = CONFIG_SCHEMA
    default_sink_class = CustomerIOSink
    message_reader_class = SingerLineReader

    def __init__(self, *, config: t.Any = None, parse_env_config: bool = False, validate_config: bool = True, message_reader: t.Any = None) -> None:
        super().__init__(config=config, parse_env_config=parse_env_config, validate_config=validate_config, message_reader=message_reader)
        self.settings = load_settings(dict(self.config), Path.cwd())
        # The SDK writes STATE only when all sinks drain; drain often enough that checkpoints keep up.
        self._MAX_RECORD_AGE_IN_MINUTES = self.settings.checkpoint_interval_seconds / 60
        self.started_at = time.time()
        self.report = RunReport(
            reject_file=self.settings.reject_file,
            report_file=self.settings.report_file,
            dry_run=self.settings.dry_run,
            logger=self.logger,
        )
        self.ledger = self._open_ledger()
        self.delivery: Delivery | DryRun = self._make_delivery()
        self._credentials_checked = self.settings.dry_run
        self._direct: dict[str, CustomerIOSink | UnmappedSink] = {}  # streams whose records skip the SDK's handling
        self._busy = False
        self._terminating = False

    def _make_delivery(self) -> Delivery | DryRun:
        s = self.settings
        if s.dry_run:
            return DryRun(s.dry_run_file, self.report)
        client = TrackClient(
            s.base_url,
            s.site_id,
            str(self.config.get("api_key", "")),
            per_second=s.max_requests_per_second,
            timeout=s.request_timeout,
            max_retries=s.max_retries,
            logger=self.logger,
        )
        return Delivery(client, self.report, self.ledger, workers=s.delivery_workers)

    def _open_ledger(self) -> Ledger:
        s = self.settings
        if not s.change_detection:
            return NoLedger()
        try:
            if s.ledger_url:
                return PostgresLedger(s.ledger_url, full_resend=s.full_resend)
            return SqliteLedger(s.ledger_path, full_resend=s.full_resend)
        except Exception as exc:  # noqa: BLE001 - any reason the ledger cannot open is a config error
            where = "ledger_url" if s.ledger_url else f"ledger_path {s.ledger_path!r}"
            raise ConfigError(f"cannot open the ledger ({where}): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None

    def ledger_scope(self, stream: str) -> str | None:
        """Ledger entries belong to one workspace and one stream; None when change detection is off."""
        if not self.settings.change_detection:
            return None
        return f"{self.settings.base_url}\x1f{self.settings.site_id}\x1f{stream}"

    def check_credentials(self) -> None:
        """Verify credentials and region once, before the first record is sent."""
        if not self._credentials_checked:
            assert isinstance(self.delivery, Delivery)
            self.delivery.check_credentials(self.settings.region)
            self._credentials_checked = True

    # Routing

    def get_sink_class(self, stream_name: str) -> type[Sink]:
        if self.settings.routes.match(stream_name) is not None:
            return CustomerIOSink
        if self.settings.unmapped_streams == "skip":
            return UnmappedSink
        routes = ", ".join(self.settings.routes.names)
        raise ConfigError(f"stream {stream_name!r} has no route in `streams` (routes: {routes}); add one or set unmapped_streams: skip")

    def add_sink(self, stream_name: str, schema: dict, key_properties: t.Sequence[str] | None = None) -> Sink:
        sink = super().add_sink(stream_name, schema, key_properties)
        self._direct.pop(stream_name, None)
        maps = self.mapper.stream_maps.get(stream_name, [])
        plain_stream = len(maps) == 1 and type(maps[0]) is SameRecordTransform and not maps[0].flattening_enabled
        if plain_stream and not self.mapper.stream_maps_dict and not sink.include_sdc_metadata_properties:
            self._direct[stream_name] = sink  # type: ignore[assignment]
        return sink

    def get_sink(self, stream_name: str, *, record: dict | None = None, schema: dict | None = None, key_properties: t.Sequence[str] | None = None) -> Sink:
        previous = self._sinks_active.get(stream_name)
        sink = super().get_sink(stream_name, record=record, schema=schema, key_properties=key_properties)
        if previous is not None and sink is not previous:
            previous.flush()  # the schema changed: the old sink's partial batches go out now
        return sink

    # STATE: only once everything before it is in Customer.io

    def _settle(self) -> None:
        sinks = [*self._sinks_to_clear, *self._sinks_active.values()]
        for sink in sinks:
            sink.check_reject_ratio()
            sink.flush()
        self.delivery.wait()

    def _write_state_message(self, state: dict) -> None:
        self._settle()
        if self.settings.dry_run:
            return  # nothing was sent, so no bookmark may move
        super()._write_state_message(state)

    def process_endofpipe(self) -> None:
        super().process_endofpipe()
        self._settle()

    # Termination: stop between messages, never inside one

    def _process_record_message(self, message_dict: dict) -> None:
        """A record of a stream with no stream maps goes straight to its sink; the SDK's
        handling (copy, map, metadata, counters) would do nothing to it, at 45k instructions."""
        sink = self._direct.get(message_dict.get("stream"))  # type: ignore[arg-type]
        record = message_dict.get("record")
        if sink is None or type(record) is not dict:
            self._guarded(super()._process_record_message, message_dict)  # maps, or the SDK's error
            return
        self._busy = True
        try:
            sink.receive(record, self.message_reader.native)
        finally:
            self._busy = False
        if self._terminating:
            raise Terminated("stopped by signal after delivering what was received")
        self._handle_max_record_age()

    def _process_schema_message(self, message_dict: dict) -> None:
        self._guarded(super()._process_schema_message, message_dict)

    def _process_state_message(self, message_dict: dict) -> None:
        self._guarded(super()._process_state_message, message_dict)

    def _guarded(self, handle: t.Callable[[dict], None], message_dict: dict) -> None:
        self._busy = True
        try:
            handle(message_dict)
        finally:
            self._busy = False
        if self._terminating:
            raise Terminated("stopped by signal after delivering what was received")

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        self._terminating = True
        if not self._busy:
            raise Terminated(f"stopped by signal {signum} after delivering what was received")

    def finish(self, status: str, error: str | None = None) -> None:
        """Write the report and the one-line summary."""
        self.ledger.close()
        self.report.close(status, error)
        self.logger.info("%s", self.report.summary(status))
        names = self.report.near_duplicate_event_names()
        if names:
            self.logger.warning("event names that differ only in spelling at the source: %s", names)

    # CLI

    @classmethod
    def invoke(cls, *, about: bool = False, about_format: str | None = None, config: _ConfigInput | None = None, file_input: t.IO[str] | None = None) -> None:  # type: ignore[override]
        """Run the target; a fatal error is one line on stderr and a meaningful exit code."""
        if about:
            super().invoke(about=about, about_format=about_format, config=config, file_input=file_input)
        config = config or _ConfigInput()
        target = None
        try:
            target = cls(config=config.config, validate_config=True, parse_env_config=config.parse_env)
            target.listen(file_input)
        except Terminated as exc:
            cls._stop(target, exc, drain=True)
        except TargetError as exc:
            cls._stop(target, exc)
        except ConfigValidationError as exc:
            cls._stop(target, ConfigError("; ".join(exc.errors) or str(exc)))
        except (RecordsWithoutSchemaException, InvalidInputLine, MissingKeyPropertiesError) as exc:
            cls._stop(target, InputError(str(exc).splitlines()[0]))
        except UnicodeDecodeError:
            cls._stop(target, InputError("input is not valid UTF-8"))
        if target is not None:
            target.finish("ok")

    @classmethod
    def _stop(cls, target: TargetCustomerIO | None, error: TargetError, *, drain: bool = False) -> t.NoReturn:
        if drain and target is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                target.drain_all(is_endofpipe=True)
            except TargetError as exc:
                error = exc
        message = str(error)
        cls.logger.error("%s: %s", type(error).__name__, message)
        if target is not None:
            target.finish("failed", message)
        logging.shutdown()
        sys.exit(error.exit_code)
