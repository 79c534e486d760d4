"""The run's accounting: every record received is sent, rejected or skipped, with a reason."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from target_customerio.reading import decode_record

_LOGGED_PER_REASON = 5


@dataclass
class StreamTally:
    """Counts for one stream. `received` is bumped by the reading thread only."""

    received: int = 0
    sent: int = 0
    rejected: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    violated_rules: Counter = field(default_factory=Counter)
    retried: int = 0
    requests: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "sent": self.sent,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(self.skipped),
            "contract_rules_violated": dict(self.violated_rules),
            "retried": self.retried,
            "requests": self.requests,
            "bytes": self.bytes,
        }


def _json_default(value: Any) -> Any:
    return str(value)


class RunReport:
    """Thread-safe: delivery threads record outcomes while the reader counts records."""

    def __init__(self, *, reject_file: str | None, report_file: str | None, dry_run: bool, logger: logging.Logger) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, StreamTally] = {}
        self._reject_path = Path(reject_file) if reject_file else None
        self._reject_out: IO[bytes] | None = None
        self._report_path = Path(report_file) if report_file else None
        self._dry_run = dry_run
        self._logger = logger
        self._event_names: dict[str, set[str]] = defaultdict(set)
        self._started = dt.datetime.now(dt.timezone.utc)
        self.requests = 0
        self.retried_requests = 0
        self.bytes = 0

    def stream(self, name: str) -> StreamTally:
        with self._lock:
            return self._streams.setdefault(name, StreamTally())

    def reject(self, stream: str, reason: str, field: str | None, message: str, record: Any, rule: str | None = None) -> None:
        """Count a record that is not sent and write it to the reject file. `record` may be its
        RECORD line (the reader's direct path): it is decoded here, for the few that are rejected."""
        if type(record) is bytes:
            record = decode_record(record, stream)[0]
        entry = {
            "stream": stream, "reason": reason, "field": field, "message": message,
            "record": record, "rejected_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        try:
            line = orjson.dumps(entry, default=_json_default, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:  # lone surrogates, huge ints: keep the record, escaped
            line = (json.dumps(entry, default=str, ensure_ascii=True) + "\n").encode()
        with self._lock:
            tally = self._streams.setdefault(stream, StreamTally())
            tally.rejected[reason] += 1
            if rule:
                tally.violated_rules[rule] += 1
            count = tally.rejected[reason]
            if self._reject_path is not None:
                if self._reject_out is None:
                    self._reject_path.parent.mkdir(parents=True, exist_ok=True)
                    self._reject_out = self._reject_path.open("ab")
                self._reject_out.write(line)
        if count <= _LOGGED_PER_REASON:
            where = f" (field {field})" if field else ""
            self._logger.warning("%s: record rejected, %s%s: %s", stream, reason, where, message)

    def skip(self, stream: str, reason: str, count: int = 1) -> None:
        with self._lock:
            self._streams.setdefault(stream, StreamTally()).skipped[reason] += count

    def delivered(self, stream: str, sent: int) -> None:
        with self._lock:
            self._streams.setdefault(stream, StreamTally()).sent += sent

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
        """Names that differ at the source but normalise to one event (`Order Placed` vs `order_placed`)."""
        return {name: sorted(raws) for name, raws in self._event_names.items() if len(raws) > 1}

    def totals(self) -> dict[str, int]:
        out: Counter = Counter()
        for tally in self._streams.values():
            out.update({
                "received": tally.received, "sent": tally.sent,
                "rejected": sum(tally.rejected.values()), "skipped": sum(tally.skipped.values()),
            })
        return {k: out[k] for k in ("received", "sent", "rejected", "skipped")}

    def summary(self, status: str) -> str:
        t = self.totals()
        sent = "would send" if self._dry_run else "sent"
        return (
            f"target-customerio {status}: {len(self._streams)} stream(s), {t['received']} received, "
            f"{t['sent']} {sent}, {t['rejected']} rejected, {t['skipped']} skipped; "
            f"{self.requests} request(s), {self.bytes / 1e6:.1f} MB, {self.retried_requests} retried"
        )

    def close(self, status: str, error: str | None = None) -> None:
        """Flush the reject file and write the JSON report."""
        with self._lock:
            if self._reject_out is not None:
                self._reject_out.close()
                self._reject_out = None
        if self._report_path is None:
            return
        report = {
            "status": status,
            "error": error,
            "dry_run": self._dry_run,
            "started_at": self._started.isoformat(),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "totals": {**self.totals(), "requests": self.requests, "bytes": self.bytes, "retried_requests": self.retried_requests},
            "streams": {name: tally.as_dict() for name, tally in sorted(self._streams.items())},
            "near_duplicate_event_names": self.near_duplicate_event_names(),
        }
        self._report_path.parent.mkdir(parents=True, exist_ok=True)
        self._report_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
