"""The run's accounting: every record received is sent, rejected or skipped, with a reason."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson

from target_customerio.errors import ConfigError, TargetError
from target_customerio.reading import decode_record
from target_customerio.redaction import REDACTOR

_LOGGED_PER_REASON = 5


@dataclass
class StreamTally:
    """Counts for one stream. `received` is bumped by the reading thread only."""

    received: int = 0
    sent: int = 0
    rejected: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    violated_rules: Counter = field(default_factory=Counter)
    duplicate_of: Counter = field(default_factory=Counter)  # other stream -> its events repeated
    retried: int = 0
    requests: int = 0
    bytes: int = 0
    # the identity map's (identity.py): people claimed by another, people never identified,
    # keyed people whose identifier changed
    identity_conflicts: int = 0
    unknown_people: int = 0
    identifier_changes: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "received": self.received,
            "sent": self.sent,
            "rejected": sum(self.rejected.values()),
            "skipped": sum(self.skipped.values()),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "sent": self.sent,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(self.skipped),
            **({"duplicate_of": dict(self.duplicate_of)} if self.duplicate_of else {}),
            "contract_rules_violated": dict(self.violated_rules),
            "retried": self.retried,
            "requests": self.requests,
            "bytes": self.bytes,
            "identity_conflicts": self.identity_conflicts,
            "unknown_people": self.unknown_people,
            "identifier_changes": self.identifier_changes,
        }


def _json_default(value: Any) -> Any:
    return str(value)


class RunReport:
    """Thread-safe: delivery threads record outcomes while the reader counts records."""

    def __init__(
        self,
        *,
        reject_file: str | None,
        report_file: str | None,
        dry_run: bool,
        logger: logging.Logger,
    ) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, StreamTally] = {}
        self._reject_path = Path(reject_file) if reject_file else None
        self._reject_out: IO[bytes] | None = None
        self._reject_unsynced = False  # written since the last fsync
        self._write_error: TargetError | None = None
        self._report_path = Path(report_file) if report_file else None
        # Both files are opened (or tried) now: a path that cannot be written is a configuration
        # error before anything is sent, not a traceback after.
        if self._reject_path is not None:
            self._reject_out = open_output(self._reject_path, "reject_file", "ab")
            if _ends_mid_line(self._reject_path):  # a run stopped mid-write (a full disk)
                self._write_reject(b"\n")
        if self._report_path is not None:
            check_output(self._report_path, "report_file")
        self._dry_run = dry_run
        self._logger = logger
        self._event_names: dict[str, set[str]] = defaultdict(set)
        self._started = dt.datetime.now(dt.timezone.utc)
        self.requests = 0
        self.taken_from_sdk = 0  # records the SDK's handling handed to a sink (stream maps, ...)
        self.reconciliation: list[dict[str, Any]] | None = None  # reconcile checks, once run
        self.volume: dict[str, dict[str, Any]] | None = None  # max_volume_change checks
        self.verification: dict[str, Any] | None = None  # people read back (verification.py)
        self.qa_sync: dict[str, Any] | None = None  # a QA sync's whom (qa_sync.py)
        self.campaigns: dict[str, Any] | None = None  # campaigns this run can start
        self._mirror: dict[str, dict[str, Any]] = {}  # mirror routes, per stream (mirror.py)
        self._exits_logged = 0
        self.idle_routes: list[str] = []  # routes that received no record (the target's)
        self.retried_requests = 0
        self.bytes = 0

    def stream_names(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def stream(self, name: str) -> StreamTally:
        with self._lock:
            return self._streams.setdefault(name, StreamTally())

    def reject(
        self,
        stream: str,
        reason: str,
        field: str | None,
        message: str,
        record: Any,
        rule: str | None = None,
    ) -> None:
        """Count a record that is not sent and write it to the reject file. `record` may be its
        RECORD line (the reader's direct path): it is decoded here, for the few that are
        rejected."""
        if type(record) is bytes:
            record = decode_record(record, stream)[0]
        entry = {
            "stream": stream,
            "reason": reason,
            "field": field,
            "message": message,
            "record": record,
            "rejected_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        try:
            line = orjson.dumps(
                entry,
                default=_json_default,
                option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS,
            )
        except orjson.JSONEncodeError:  # lone surrogates, huge ints: keep the record, escaped
            line = _escaped_line(entry)
        # the record is the user's own data: only a secret of the configuration is masked in it
        line = REDACTOR.redact_json(line, user_data="record")
        with self._lock:
            tally = self._streams.setdefault(stream, StreamTally())
            tally.rejected[reason] += 1
            if rule:
                tally.violated_rules[rule] += 1
            count = tally.rejected[reason]
            if self._reject_out is not None:
                self._write_reject(line)
        if count <= _LOGGED_PER_REASON:
            where = f" (field {field})" if field else ""
            self._logger.warning("%s: record rejected, %s%s: %s", stream, reason, where, message)

    def _write_reject(self, line: bytes) -> None:
        """Under the lock. A failed write (a full disk) stops the run: the record would be lost."""
        if self._write_error is not None:
            raise self._write_error
        try:
            assert self._reject_out is not None
            self._reject_out.write(line)
            self._reject_unsynced = True
        except OSError as exc:
            self._write_error = TargetError(
                f"cannot write reject_file {self._reject_path}: {exc.strerror or exc}"
            )
            raise self._write_error from None

    def flush(self) -> None:
        """Make every reject written so far durable (flushed and fsync'd): called before each
        STATE, which promises that the rejects it covers are on disk. Raises TargetError."""
        with self._lock:
            if self._write_error is not None:
                raise self._write_error
            if self._reject_out is None or not self._reject_unsynced:
                return
            try:
                self._reject_out.flush()
                os.fsync(self._reject_out.fileno())
            except OSError as exc:
                self._write_error = TargetError(
                    f"cannot write reject_file {self._reject_path}: {exc.strerror or exc}"
                )
                raise self._write_error from None
            self._reject_unsynced = False

    def skip(self, stream: str, reason: str, count: int = 1) -> None:
        with self._lock:
            self._streams.setdefault(stream, StreamTally()).skipped[reason] += count

    def identity(self, stream: str, conflicts: int, unknown: int, changes: int) -> None:
        """What the identity map found in a chunk of the stream (identity.py)."""
        with self._lock:
            tally = self._streams.setdefault(stream, StreamTally())
            tally.identity_conflicts += conflicts
            tally.unknown_people += unknown
            tally.identifier_changes += changes

    def duplicates(self, stream: str, of: Counter[str]) -> None:
        """Rows of events already in this run, by the stream that had them first: skipped as
        `duplicate`; those of another stream are listed under `duplicate_of`."""
        with self._lock:
            tally = self._streams.setdefault(stream, StreamTally())
            tally.skipped["duplicate"] += sum(of.values())
            tally.duplicate_of.update({other: n for other, n in of.items() if other != stream})

    def delivered(self, stream: str, sent: int) -> None:
        with self._lock:
            self._streams.setdefault(stream, StreamTally()).sent += sent

    # Mirror routes: who left the view, and manual-segment membership changes

    def mirror_stream(self, stream: str, **fields: Any) -> dict[str, Any]:
        """The stream's `mirror` section (created on first use), with `fields` set."""
        with self._lock:
            section = self._mirror.setdefault(
                stream,
                {
                    "complete": False,
                    "reason": "the run did not end normally: nobody left the view",
                    "exits": {},
                    "exits_refused": 0,
                },
            )
            section.update(fields)
            return section

    def mirror_count(self, stream: str, key: str, count: int = 1) -> None:
        """Add to a count of the stream's `mirror` section (`segment_adds`, ...)."""
        section = self.mirror_stream(stream)
        with self._lock:
            section[key] = section.get(key, 0) + count

    def exited(self, stream: str, count: int, action: str | None = None) -> None:
        """People who left a mirror route's view and were told so (exit operations Customer.io
        accepted, or a dry run would send), by `on_exit` action (default: the route's)."""
        if not count:
            return
        section = self.mirror_stream(stream)
        with self._lock:
            action = action or section.get("on_exit", "unset")
            section["exits"][action] = section["exits"].get(action, 0) + count

    def exit_refused(self, stream: str, message: str, member: Any) -> None:
        """An exit operation Customer.io refused: the person stays in the ledger (the next
        complete run tries again). Not a record, so not in the reject file."""
        self.mirror_count(stream, "exits_refused")
        with self._lock:
            self._exits_logged += 1
            logged = self._exits_logged <= _LOGGED_PER_REASON
        if logged:
            self._logger.warning(
                "%s: exit refused by Customer.io for %s: %s", stream, member, message
            )

    def mirror_sections(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {stream: dict(section) for stream, section in self._mirror.items()}

    def request(self, stream: str, size: int, tries: int, operations: int) -> None:
        """One batch request that ended (accepted or not) after `tries` attempts."""
        with self._lock:
            tally = self._streams.setdefault(stream, StreamTally())
            tally.requests += tries
            tally.bytes += size * tries
            if tries > 1:
                tally.retried += operations
                self.retried_requests += tries - 1
            self.requests += tries
            self.bytes += size * tries

    def event_name(self, raw: str, name: str) -> None:
        with self._lock:
            self._event_names[name].add(raw)

    def near_duplicate_event_names(self) -> dict[str, list[str]]:
        """Names that differ at the source but normalise to one event (`Order Placed`,
        `order_placed`)."""
        return {name: sorted(raws) for name, raws in self._event_names.items() if len(raws) > 1}

    def totals(self) -> dict[str, int]:
        out: Counter = Counter()
        for tally in self._streams.values():
            out.update(
                {
                    "received": tally.received,
                    "sent": tally.sent,
                    "rejected": sum(tally.rejected.values()),
                    "skipped": sum(tally.skipped.values()),
                }
            )
        return {k: out[k] for k in ("received", "sent", "rejected", "skipped")}

    def summary(self, status: str, cause: str | None = None) -> str:
        """The run's last line: `target-customerio failed (api_key refused): 2 stream(s), ...`
        (the cause in a few words, since it is the line Meltano shows last)."""
        t = self.totals()
        sent = "would send" if self._dry_run else "sent"
        status = f"{status} ({cause})" if cause else status
        return (
            f"target-customerio {status}: {len(self._streams)} stream(s), "
            f"{t['received']} received, "
            f"{t['sent']} {sent}, {t['rejected']} rejected, {t['skipped']} skipped; "
            f"{self.requests} request(s), {self.bytes / 1e6:.1f} MB, "
            f"{self.retried_requests} retried{self._mirror_summary()}"
            f"{self._verification_summary()}"
        )

    def _verification_summary(self) -> str:
        """`; QA sync of 50 people`, `; verified 50 of 50 sampled: 49 ok`, for what ran."""
        said = []
        if self.qa_sync is not None:
            said.append(f"QA sync of {len(self.qa_sync['people'])} people, no STATE")
        section = self.verification
        if section is not None:
            said.append(
                f"verified {section['checked']} of {section['sampled']} sampled: "
                f"{section['ok']} ok, {len(section['discrepancies'])} discrepancies"
            )
        return "".join(f"; {part}" for part in said)

    def _mirror_summary(self) -> str:
        """`; mirror: 3 left their view, 12 segment add(s), 4 removal(s)`, for what happened."""
        sections = self.mirror_sections().values()
        counts = (
            ("left their view", sum(sum(s["exits"].values()) for s in sections)),
            ("segment add(s)", sum(s.get("segment_adds", 0) for s in sections)),
            ("segment removal(s)", sum(s.get("segment_removes", 0) for s in sections)),
        )
        said = [f"{count} {what}" for what, count in counts if count]
        return f"; mirror: {', '.join(said)}" if said else ""

    def close(self, status: str, error: str | None = None) -> None:
        """Flush the reject file and write the JSON report; raises TargetError when either
        cannot be written (after trying both)."""
        failure: TargetError | None = None
        try:
            self.flush()
        except TargetError as exc:
            failure, status, error = exc, "failed", error or str(exc)
        with self._lock:
            if self._reject_out is not None:
                try:
                    self._reject_out.close()
                except OSError:
                    pass  # flush() above found what went wrong
                self._reject_out = None
        if self._report_path is not None:
            self._write_report(status, error)
        if failure is not None:
            raise failure

    def _write_report(self, status: str, error: str | None) -> None:
        report: dict[str, Any] = {
            "status": status,
            "error": error,
            "dry_run": self._dry_run,
            "started_at": self._started.isoformat(),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "totals": {
                **self.totals(),
                "requests": self.requests,
                "bytes": self.bytes,
                "retried_requests": self.retried_requests,
            },
            "streams": {name: tally.as_dict() for name, tally in sorted(self._streams.items())},
            "near_duplicate_event_names": self.near_duplicate_event_names(),
            "routes_received_nothing": self.idle_routes,
        }
        if self.reconciliation is not None:
            report["reconciliation"] = self.reconciliation
        if self.volume is not None:
            report["volume"] = self.volume
        if self.qa_sync is not None:
            report["qa_sync"] = self.qa_sync
        if self.verification is not None:
            report["verification"] = self.verification
        if self.campaigns is not None:
            report["campaigns"] = self.campaigns
        mirror = self.mirror_sections()
        if mirror:
            report["mirror"] = dict(sorted(mirror.items()))
        data = REDACTOR.redact_json(orjson.dumps(report, option=orjson.OPT_INDENT_2), indent=2)
        assert self._report_path is not None
        try:
            self._report_path.write_bytes(data)
        except OSError as exc:
            raise TargetError(
                f"cannot write report_file {self._report_path}: {exc.strerror or exc}"
            ) from None


def _escaped_line(entry: dict[str, Any]) -> bytes:
    """A reject line for a record orjson cannot encode: lone surrogates escaped, and integers
    past Python's limit on printing digits written out as decimals."""
    try:
        return (json.dumps(entry, default=str, ensure_ascii=True) + "\n").encode()
    except ValueError:
        entry = {**entry, "record": _printable(entry["record"])}
        return (json.dumps(entry, default=str, ensure_ascii=True) + "\n").encode()


def _printable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)  # printed by default=str, which has no limit on digits
    return value


def _ends_mid_line(path: Path) -> bool:
    try:
        with path.open("rb") as existing:
            if existing.seek(0, os.SEEK_END) == 0:
                return False
            existing.seek(-1, os.SEEK_END)
            return existing.read(1) != b"\n"
    except OSError:  # not seekable (a FIFO, a device): nothing to mend
        return False


def check_output(path: Path, setting: str) -> None:
    """A file written at the end of the run can be written: checked at the start."""
    existed = path.exists()
    open_output(path, setting, "ab").close()
    if not existed:
        path.unlink()


def open_output(path: Path, setting: str, mode: str) -> IO[bytes]:
    """A file the run writes, opened now; a path that cannot be written is a ConfigError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open(mode)  # type: ignore[return-value]
    except OSError as exc:
        raise ConfigError(
            f"setting `{setting}`: cannot write {path} ({exc.strerror or exc})"
        ) from None
