"""Delivery: worker threads that send batches to the Track API and account for every record.

Operations for one person always travel through the same worker (shard), in order, so a later
update can never overtake an earlier one. A 207 rejects the operations it names; a 400/413 is
halved until the bad operation is alone, and only it is rejected.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from target_customerio.api_client import Answer
from target_customerio.errors import DeliveryError, TargetError, Terminated
from target_customerio.gone_people import GONE_ACTIONS, GONE_MARK, SKIP_REASON, GonePeople
from target_customerio.ledger import Ledger, person_key
from target_customerio.redaction import REDACTOR, shown
from target_customerio.report import RunReport, open_output
from target_customerio.run_sample import RunSample
from target_customerio.settings import Settings
from target_customerio.track_api import TrackClient
from target_customerio.wire import Batch

# After SIGTERM/SIGINT the run drains while Customer.io answers, and stops after this long
# without an answer (a retry wait after a signal ends it at once).
_STOP_GRACE_SECONDS = 2.0
_POLL_SECONDS = 0.25
# Operations refused whole (400/413) one by one, in a row on one worker with nothing accepted in
# between, that fail the run. Halving reaches a bad operation alone and rejects it; a run of bad
# rows side by side (one upstream defect) is a run of such refusals. Fifty in a row is no longer
# a few bad rows but a workspace that refuses everything, which halving would walk through at
# the rate limit (two requests an operation); the run fails instead.
_MAX_REFUSED_ALONE = 50
_POLL_SECONDS = 0.25


class Delivery:
    """Worker threads, one queue each, that send batches and account for every operation."""

    def __init__(
        self,
        client: TrackClient,
        report: RunReport,
        ledger: Ledger,
        *,
        workers: int = 4,
        depth: int = 2,
        workspace: str = "",
        gone: GonePeople | None = None,
    ) -> None:
        self._client, self._report, self._ledger = client, report, ledger
        self._workspace = workspace  # what person_key names people in (who was deleted)
        self.gone = gone  # nothing is sent that would re-create whom this target deleted
        # (identifier type, value) of people whose identify Customer.io refused in this run:
        # what depends on them (a membership) is not sent.
        self.refused_people: set[tuple[str, str]] = set()
        self._queues: list[queue.Queue[Batch]] = [
            queue.Queue(maxsize=depth) for _ in range(workers)
        ]
        self.error: TargetError | None = None
        # Whom the run sent what, for verification (run_sample.py); None: no verification.
        self.sample: RunSample | None = None
        self._refused = [0] * workers  # per worker: operations refused alone since an acceptance
        # Per worker: records rejected whose last operations are still to come in a later
        # request (a record is counted once, rejected, not also sent when they are accepted).
        self._carried: list[set[tuple[int, int]]] = [set() for _ in range(workers)]
        # Batches queued or in flight, and when one last came back: after a signal the run
        # waits only while Customer.io keeps answering.
        self._idle = threading.Condition()
        self._pending = 0
        self._answered_at = time.monotonic()
        for index, q in enumerate(self._queues):
            threading.Thread(
                target=self._work, args=(q, index), name=f"delivery-{index}", daemon=True
            ).start()

    @property
    def shards(self) -> int:
        return len(self._queues)

    @property
    def client(self) -> TrackClient:
        """The Track API client (its rate limit and signal handling), for v1 requests."""
        return self._client

    def check_credentials(self, region: str | None) -> None:
        self._client.check_credentials(region)

    def interrupt(self) -> None:
        """SIGTERM/SIGINT: retry waits end at once, and waiting for answers gives up after
        _STOP_GRACE_SECONDS without one. Safe to call from a signal handler."""
        self._answered_at = time.monotonic()
        self._client.stopping.set()

    def submit(self, shard: int, batch: Batch) -> None:
        """Queue a batch; blocks while that worker is busy (bounded memory)."""
        self.raise_if_failed()
        with self._idle:
            self._pending += 1
        try:
            while True:
                try:
                    self._queues[shard].put(batch, timeout=_POLL_SECONDS)
                    return
                except queue.Full:
                    self._give_up_if_stalled()
        except BaseException:
            self._done()
            raise

    def wait(self) -> None:
        """Return once every queued batch is answered; raise the first fatal error."""
        with self._idle:
            while self._pending:
                self._idle.wait(_POLL_SECONDS)
                self._give_up_if_stalled()
        self.raise_if_failed()
        self._ledger.flush()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _give_up_if_stalled(self) -> None:
        """After a signal, a request Customer.io holds without answering is not waited for: its
        worker is left behind (a daemon thread) and the run ends without a new STATE."""
        silent = time.monotonic() - self._answered_at
        if self._client.stopping.is_set() and silent > _STOP_GRACE_SECONDS:
            self.error = self.error or Terminated(
                f"stopped by signal; Customer.io had not answered for {_STOP_GRACE_SECONDS:g}s, "
                "so nothing after the last STATE was confirmed"
            )
            raise self.error

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._answered_at = time.monotonic()
            self._idle.notify_all()

    def _work(self, q: queue.Queue[Batch], worker: int) -> None:
        while True:
            batch = q.get()
            try:
                if self.error is None:
                    self._deliver(batch, worker)
            except TargetError as exc:
                self.error = self.error or exc
            except Exception as exc:  # a bug must still stop the run, not hang it
                self.error = self.error or DeliveryError(
                    f"delivery failed unexpectedly: {type(exc).__name__}: {exc}"
                )
            finally:
                q.task_done()
                self._done()

    def _deliver(self, batch: Batch, worker: int, mark: int | None = None) -> None:
        """Send the batch; `mark`: the ledger's doubt mark, when a larger request that held
        these operations made it (halving)."""
        if self.error is not None:
            return  # the run has failed: nothing more is sent, and no STATE will be
        if mark is None:
            back: list[int] = []
            if self.gone is not None:
                batch, skipped, back = self.gone.check(batch)
                if skipped:
                    self._report.skip(batch.stream, SKIP_REASON, skipped)
                if not len(batch):
                    return
            # Written ahead: until Customer.io's acceptance is recorded, these keys are in
            # doubt, whatever becomes of the request (a lost answer, a kill).
            mark = self._ledger.in_doubt(batch.ledger_keys())
            self._going(batch)
            if back and self.gone is not None:
                self.gone.revive(back)
        body = batch.body()
        try:
            answer, tries = self._client.post_batch(body)
        except DeliveryError as exc:
            self._report.request(batch.stream, len(body), exc.tries, len(batch))
            raise
        self._answered_at = time.monotonic()  # halving's answers count: Customer.io is answering
        count = len(batch)
        self._report.request(batch.stream, len(body), tries, count)
        if answer.status in (200, 207):
            self._refused[worker] = 0
        if answer.status == 200:
            carried = self._carried[worker]
            dependent = carried or self.refused_people  # the usual case: neither
            unrecorded: set[int] | frozenset[int] = (
                self._dependents(batch, set(), carried) if dependent else frozenset()
            )
            self._ledger.record(batch.ledger_entries(unrecorded), mark)
            if self.sample is not None:
                self.sample.accepted(batch)
            self._delivered(batch, self._sent(batch, set(), worker))
        elif answer.status == 207:
            self._record_item_errors(batch, answer.json().get("errors"), worker, mark)
        else:
            self._refused_whole(batch, answer, worker, mark)

    def _sent(self, batch: Batch, rejected: set[tuple[int, int]], worker: int) -> int:
        """How many records this request completes that were not rejected, here or before."""
        carried = self._carried[worker]
        if not rejected and not carried:
            return batch.records  # the usual case
        ending = batch.ending_keys()
        sent = len(ending - rejected - carried)
        carried -= ending
        carried |= {key for key in rejected if key not in ending}  # their rest comes later
        return sent

    def _refused_whole(self, batch: Batch, answer: Answer, worker: int, mark: int) -> None:
        """400/413: halve the request to isolate the bad operations and reject only them, unless
        this worker has had so many refusals in a row that they cannot be a few bad operations
        (see _MAX_REFUSED_ALONE): then the workspace refuses everything, and the run fails."""
        message = _error_message(answer.json()) or f"HTTP {answer.status}"
        if len(batch) > 1:
            for half in batch.halves():
                self._deliver(half, worker, mark)
            return
        self._refused[worker] += 1
        if self._refused[worker] >= _MAX_REFUSED_ALONE:
            raise DeliveryError(
                f"Customer.io refused {self._refused[worker]} operations in a row, each alone "
                f"(HTTP {answer.status}: {shown(message)}), and accepted none in between: it "
                "refuses every request, not a few bad rows; nothing after the last STATE was "
                "confirmed"
            )
        [key] = batch.segments[0].record_keys()
        self._note_refused(batch.ops[0].body)
        if key not in self._carried[worker]:  # its other operations were not refused already
            self._reject(batch, None, message, batch.ops[0].record)
        self._delivered(batch, self._sent(batch, {key}, worker))

    def _record_item_errors(self, batch: Batch, errors: Any, worker: int, mark: int) -> None:
        """207: the refused operations' records are rejected (once each, with the first
        reason), the rest delivered. A 207 that names no operation it refused cannot be
        accounted for: the run fails rather than count them all as sent."""
        if not isinstance(errors, list):
            raise DeliveryError(
                "Customer.io answered 207 without a list of `errors`; nothing after "
                "the last STATE was confirmed"
            )
        ops = batch.ops
        keys = [key for segment in batch.segments for key in segment.record_keys()]
        rejected: set[int] = set()
        rejected_records: set[tuple[int, int]] = set()
        for error in errors:
            if not isinstance(error, dict):
                continue  # not an item error Customer.io writes: it names no operation
            index = error.get("batch_index")
            if type(index) is not int or not 0 <= index < len(ops) or index in rejected:
                continue
            rejected.add(index)
            self._note_refused(ops[index].body)
            if keys[index] in rejected_records or keys[index] in self._carried[worker]:
                continue
            rejected_records.add(keys[index])
            message = f"{error.get('reason', 'rejected')}: {error.get('message', '')}".strip(": ")
            self._reject(batch, error.get("field"), message, ops[index].record)
        if not rejected:
            raise DeliveryError(
                "Customer.io answered 207 but named no operation of the request it "
                "refused; nothing after the last STATE was confirmed"
            )
        carried = self._carried[worker] | rejected_records
        self._ledger.record(batch.ledger_entries(self._dependents(batch, rejected, carried)), mark)
        if self.sample is not None:
            self.sample.accepted(batch, rejected)
        self._delivered(batch, self._sent(batch, rejected_records, worker))

    def _going(self, batch: Batch) -> None:
        """People this request deletes or suppresses, kept by the ledger before it goes out
        (written ahead, as a doubt is: a kill after Customer.io applied it must not lose them),
        so that no exit this target sends later re-creates them."""
        if not any(GONE_MARK.search(segment.data) for segment in batch.segments):
            return  # the usual case: one scan in C
        gone = []
        for op in batch.ops:
            data = orjson.loads(op.body)
            if data.get("type") == "person" and data.get("action") in GONE_ACTIONS:
                for kind, value in (data.get("identifiers") or {}).items():
                    gone.append(person_key(self._workspace, kind, str(value)))
        if gone and self.gone is not None:
            self.gone.deleting()
        self._ledger.record_gone(gone)

    def _dependents(
        self, batch: Batch, refused: set[int], records: set[tuple[int, int]]
    ) -> set[int]:
        """The operations (indexes) not to record as accepted: those refused, and every other
        operation of a record one of whose operations was refused (`records`), here or in an
        earlier request. A record's operations depend on those before them (a merge on its
        primary's identify, a relationship on its person): Customer.io accepting one whose
        premise it refused changes nothing it will keep, so it is sent again next run."""
        unrecorded = refused | self._related_to_refused(batch)
        if records:
            keys = [key for segment in batch.segments for key in segment.record_keys()]
            unrecorded |= {i for i, key in enumerate(keys) if key in records}
        return unrecorded

    def _related_to_refused(self, batch: Batch) -> set[int]:
        """Objects whose relationship names a person whose identify was refused in this run
        (so far): Customer.io relates an object to nobody, so they are sent again next run."""
        if not self.refused_people or not any(
            _RELATED.search(segment.data) for segment in batch.segments
        ):
            return set()
        related: set[int] = set()
        for index, op in enumerate(batch.ops):
            for relation in orjson.loads(op.body).get("cio_relationships") or []:
                identifiers = relation.get("identifiers") if isinstance(relation, dict) else None
                for kind, value in (identifiers or {}).items():
                    if (kind, str(value)) in self.refused_people:
                        related.add(index)
        return related

    def _delivered(self, batch: Batch, sent: int) -> None:
        if batch.exits:
            self._report.exited(batch.stream, sent)
        else:
            self._report.delivered(batch.stream, sent)

    def _note_refused(self, body: bytes) -> None:
        """A refused identify: its person may not exist (error path only)."""
        data = orjson.loads(body)
        if data.get("type") == "person" and data.get("action") == "identify":
            for kind, value in (data.get("identifiers") or {}).items():
                self.refused_people.add((kind, str(value)))

    def _reject(self, batch: Batch, field: Any, message: str, record: Any) -> None:
        if batch.exits:  # not a record: counted and logged, not in the reject file
            self._report.exit_refused(batch.stream, message, record)
        else:
            self._report.reject(batch.stream, "rejected_by_customerio", field, message, record)


_RELATED = re.compile(rb'"cio_relationships":\[\{')


def _error_message(data: dict[str, Any]) -> str:
    meta = data.get("meta")
    if isinstance(meta, dict) and meta.get("error"):
        return str(meta["error"])
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors[:3]
        )
    return ""


class DryRun:
    """Stands in for Delivery: writes each would-be operation to a JSONL file, sends nothing."""

    shards = 1

    def __init__(self, path: str, report: RunReport) -> None:
        self._path = Path(path)
        self._out = open_output(self._path, "dry_run_file", "wb")
        self._report = report
        self.error: TargetError | None = None
        self.refused_people: set[tuple[str, str]] = set()  # nothing is refused in a dry run
        self.gone: GonePeople | None = None  # nor deleted

    def submit(self, shard: int, batch: Batch) -> None:
        for op in batch.ops:
            self.write(op.body)
        if batch.exits:
            self._report.exited(batch.stream, batch.records)
        else:
            self._report.delivered(batch.stream, batch.records)

    def write(self, line: bytes) -> None:
        """One would-be operation or request, as a line of the dry-run file."""
        try:
            self._out.write(REDACTOR.redact_json(line) + b"\n")
        except OSError as exc:
            raise TargetError(
                f"cannot write dry_run_file {self._path}: {exc.strerror or exc}"
            ) from None

    def wait(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            raise TargetError(
                f"cannot write dry_run_file {self._path}: {exc.strerror or exc}"
            ) from None

    def raise_if_failed(self) -> None:
        return None

    def interrupt(self) -> None:
        return None

    def close(self) -> None:
        """At the end of the run: the file is written whole and closed (left to the garbage
        collector, it was a ResourceWarning at the end of every dry run). Raises TargetError."""
        if self._out.closed:
            return
        try:
            self._out.close()
        except OSError as exc:
            raise TargetError(
                f"cannot write dry_run_file {self._path}: {exc.strerror or exc}"
            ) from None


def make_delivery(
    settings: Settings, api_key: str, report: RunReport, ledger: Ledger, logger: logging.Logger
) -> Delivery | DryRun:
    """The run's delivery: to the Track API, or to the dry-run file."""
    if settings.dry_run:
        return DryRun(settings.dry_run_file, report)
    client = TrackClient(
        settings.base_url,
        settings.site_id,
        api_key,
        per_second=settings.max_requests_per_second,
        timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        logger=logger,
    )
    space = workspace(settings)
    return Delivery(
        client,
        report,
        ledger,
        workers=settings.delivery_workers,
        workspace=space,
        gone=GonePeople(ledger, space, partial(_person_route, settings)),
    )


def _person_route(settings: Settings, stream: str) -> bool:
    """Whether the stream's identifies are the database's word that a person exists."""
    route = settings.routes.match(stream)
    return route is not None and route.kind == "person"


def workspace(settings: Settings) -> str:
    """The workspace a ledger's person keys belong to (`ledger.person_key`)."""
    return f"{settings.base_url}\x1f{settings.site_id}"
