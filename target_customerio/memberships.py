"""Manual-segment memberships (`kind: segment` routes): added with the Track API's
`POST /api/v1/segments/{id}/add_customers`, removed with `.../remove_customers`.

A segment route's rows reach here as memberships (operations/segment.py), mapped, checked and
packed like any operation. They wait: Customer.io ignores an add for a person it does not know,
so the memberships received go out at each settle (before each STATE, and at the end), once
delivery has had every identify received before them accepted (`Memberships.send`). Removals
are the mirror's (mirror.py): the memberships the ledger holds that a complete run did not
have. Requests carry at most 1000 ids of one type; a refused request (an unknown segment, 404;
a segment that is not manual, 400) rejects each of its rows with the reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

from target_customerio.gone_people import SKIP_REASON, GonePeople
from target_customerio.ledger import EXIT_FINGERPRINT, Ledger
from target_customerio.report import RunReport
from target_customerio.track_api import TrackClient
from target_customerio.wire import Batch

MAX_IDS = 1000  # ids a request may carry (Customer.io's limit)


@dataclass
class Pending:
    """A membership received and not yet added."""

    segment_id: int
    id_type: str
    value: str
    key: int | None  # its ledger key (recorded once Customer.io accepted the add)
    record: Any  # the row, or its RECORD line, for a reject


class Answered(NamedTuple):
    """How a membership request ended: 200 done, 404 no such segment, 400 refused."""

    status: int
    message: str  # Customer.io's, for a refusal
    tries: int  # requests made (0: a dry run's)
    size: int  # bytes of the request body


class SegmentRequests(Protocol):
    """Who carries membership requests: Customer.io (`TrackSegments`) or the dry-run file."""

    def change(self, segment_id: int, id_type: str, ids: list[str], add: bool) -> Answered: ...


class TrackSegments:
    def __init__(self, client: TrackClient) -> None:
        self._client = client

    def change(self, segment_id: int, id_type: str, ids: list[str], add: bool) -> Answered:
        answer, tries = self._client.segment_members(segment_id, id_type, ids, add)
        meta = answer.json().get("meta")
        message = meta.get("error") if isinstance(meta, dict) else None
        text = str(message or answer.text[:200] or f"HTTP {answer.status}")
        return Answered(answer.status, text, tries, len(orjson.dumps({"ids": ids})))


class DryRunSegments:
    """Writes each would-be request to the dry-run file, one line each."""

    def __init__(self, write: Callable[[bytes], None], flush: Callable[[], None]) -> None:
        self._write, self._flush = write, flush

    def change(self, segment_id: int, id_type: str, ids: list[str], add: bool) -> Answered:
        action = "add_customers" if add else "remove_customers"
        line = {"type": "segment", "action": action, "segment_id": segment_id}
        self._write(orjson.dumps({**line, "id_type": id_type, "ids": ids}))
        # on disk now: a mirror's removals come after the run's last flush, and a buffer left
        # to the interpreter's exit may never be written
        self._flush()
        return Answered(200, "", 0, 0)


def refusal(segment_id: int, status: int, message: str) -> tuple[str, str]:
    """(reject reason, message) for a refused membership request."""
    if status == 404:
        return "segment_not_found", (
            f"Customer.io has no segment {segment_id} (404): check the segment_id column "
            "(a manual segment's id, from its page in Customer.io)"
        )
    return "rejected_by_customerio", f"segment {segment_id}: {message} (HTTP {status})"


class Memberships:
    """Collects the memberships of segment streams (where other routes have Track API
    delivery) and adds them at each settle."""

    shards = 1

    def __init__(self, report: RunReport, logger: logging.Logger) -> None:
        self._report, self._logger = report, logger
        self._lock = threading.Lock()
        self._pending: dict[str, dict[int, Pending]] = {}  # stream -> key -> membership
        # (segment id, id type, ids) of each accepted add: campaigns.py counts the people a
        # segment-triggered campaign can start
        self.on_added: Callable[[int, str, list[str]], None] | None = None

    def submit(self, shard: int, batch: Batch) -> None:
        """A batch of memberships, held until `send`. The same membership twice before it is
        sent is one request's id: the repeat is skipped as a duplicate."""
        duplicates = 0
        with self._lock:
            pending = self._pending.setdefault(batch.stream, {})
            for op in batch.ops:
                data = orjson.loads(op.body)
                key = op.ledger[0] if op.ledger is not None else None
                entry = Pending(data["segment_id"], data["id_type"], data["id"], key, op.record)
                slot = key if key is not None else -len(pending) - 1
                if slot in pending:
                    duplicates += 1
                    continue
                pending[slot] = entry
        if duplicates:
            self._report.skip(batch.stream, "duplicate", duplicates)

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(pending) for pending in self._pending.values())

    def send(
        self,
        requests: SegmentRequests,
        ledger: Ledger | None,
        refused: Container[tuple[str, str]] = (),
        gone: GonePeople | None = None,
    ) -> None:
        """Add every membership received so far (call once the identifies received before
        them are accepted). Accepted adds go in the ledger (`ledger`; None: a dry run). A
        membership of a person whose identify Customer.io refused in this run (`refused`:
        (identifier type, value)) is not sent: Customer.io ignores an add for nobody, so it
        is rejected, and added once the person is. Nor is one of a person this target deleted
        or suppressed (`gone`, gone_people.py): the add would re-create them; it is skipped as
        `deleted_person`, and not recorded."""
        with self._lock:
            taken, self._pending = self._pending, {}
        for stream, pending in taken.items():
            by_request: dict[tuple[int, str], list[Pending]] = {}
            absent = set()
            if gone is not None:
                absent = gone.among({(e.id_type, e.value) for e in pending.values()})
            for entry in pending.values():
                if (entry.id_type, entry.value) in absent:
                    self._report.skip(stream, SKIP_REASON)
                    continue
                if (entry.id_type, entry.value) in refused:
                    self._report.reject(
                        stream,
                        "person_refused",
                        None,
                        f"Customer.io refused the identify of {entry.id_type} {entry.value!r} "
                        "in this run: the membership is added once the person is accepted",
                        entry.record,
                    )
                    continue
                by_request.setdefault((entry.segment_id, entry.id_type), []).append(entry)
            for (segment, kind), entries in by_request.items():
                for start in range(0, len(entries), MAX_IDS):
                    part = entries[start : start + MAX_IDS]
                    self._add(requests, ledger, stream, segment, kind, part)

    def _add(
        self,
        requests: SegmentRequests,
        ledger: Ledger | None,
        stream: str,
        segment: int,
        kind: str,
        entries: list[Pending],
    ) -> None:
        keys = [e.key for e in entries if e.key is not None]
        mark = ledger.in_doubt(keys) if ledger is not None else 0  # written ahead
        status, message, tries, size = requests.change(
            segment, kind, [e.value for e in entries], True
        )
        if tries:
            self._report.request(stream, size, tries, len(entries))
        if status == 200:
            if self.on_added is not None:
                self.on_added(segment, kind, [e.value for e in entries])
            if ledger is not None:
                ledger.record([(key, 0) for key in keys], mark)
            self._report.delivered(stream, len(entries))
            self._report.mirror_count(stream, "segment_adds", len(entries))
            return
        reason, text = refusal(segment, status, message)
        for entry in entries:
            self._report.reject(stream, reason, None, text, entry.record)

    def remove(
        self,
        requests: SegmentRequests,
        stream: str,
        leavers: dict[int, tuple[int, str, str]],
        ledger: Ledger | None,
    ) -> set[int]:
        """Remove memberships that left the view (key -> (segment, id type, value)); returns
        the keys done with: removed, or in a segment Customer.io no longer has (404). Each
        request's keys are in doubt until its answer; those done with are recorded as left
        (`ledger`; None: a dry run)."""
        by_request: dict[tuple[int, str], list[tuple[int, str]]] = {}
        for key, (segment, kind, value) in leavers.items():
            by_request.setdefault((segment, kind), []).append((key, value))
        done: set[int] = set()
        for (segment, kind), members in by_request.items():
            for start in range(0, len(members), MAX_IDS):
                part = members[start : start + MAX_IDS]
                mark = ledger.in_doubt([key for key, _ in part]) if ledger is not None else 0
                status, message, tries, size = requests.change(
                    segment, kind, [v for _, v in part], False
                )
                if tries:
                    self._report.request(stream, size, tries, len(part))
                if status in (200, 404) and ledger is not None:
                    ledger.record([(key, EXIT_FINGERPRINT) for key, _ in part], mark)
                if status == 200:
                    done.update(key for key, _ in part)
                    self._report.mirror_count(stream, "segment_removes", len(part))
                elif status == 404:  # the segment is gone, and its memberships with it
                    done.update(key for key, _ in part)
                    self._logger.warning(
                        "%s: segment %d no longer exists in Customer.io (404): its %d "
                        "membership(s) are forgotten",
                        stream,
                        segment,
                        len(part),
                    )
                else:
                    self._report.mirror_count(stream, "segment_removes_refused", len(part))
                    self._logger.warning(
                        "%s: Customer.io refused to remove %d membership(s) of segment %d "
                        "(HTTP %d: %s); the next complete run tries again",
                        stream,
                        len(part),
                        segment,
                        status,
                        message,
                    )
        return done


def segment_requests(delivery: Any) -> SegmentRequests:
    """Where membership changes go: the Track API's segment endpoints, or the dry-run file."""
    from target_customerio.delivery import DryRun

    if isinstance(delivery, DryRun):
        return DryRunSegments(delivery.write, delivery.wait)
    return TrackSegments(delivery.client)
