"""Delivery to the Track API: batch packing, the rate limit, retries, and the worker threads.

This is the one place that talks HTTP. Operations for one person always travel through the
same worker (shard), in order, so a later update can never overtake an earlier one.
"""

from __future__ import annotations

import bisect
import json
import logging
import queue
import threading
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import requests
import urllib3
from tenacity import RetryCallState, Retrying, stop_after_attempt, wait_random_exponential

from target_customerio import http_session
from target_customerio.errors import CredentialsError, DeliveryError, TargetError, Terminated
from target_customerio.ledger import Ledger
from target_customerio.mapping import Operation
from target_customerio.redaction import REDACTOR, shown
from target_customerio.report import RunReport, open_output

MAX_REQUEST_BYTES = 500_000
_ENVELOPE = len(b'{"batch":[]}')
_RETRY_BASE_SECONDS = 0.5
_RETRY_CAP_SECONDS = 30.0
_MAX_RETRY_AFTER_SECONDS = 300.0
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


def triples(flat: array) -> Iterator[tuple[int, int, int]]:
    """(a, b, c) for each three values of a flat array."""
    values = iter(flat)
    return zip(values, values, values)


class Segment(NamedTuple):
    """Encoded operations of one chunk of records bound for one delivery shard, in order.

    `data` is their bodies joined by commas, as they go in a request; `ends[i]` is where the
    i-th body ends in it; `item_of[i]` is the record it came from (an index into `items`, the
    chunk's records, RECORD lines or decoded); `ledger` holds (position, key, fingerprint) triples,
    flat, for the operations to record in the ledger once accepted. Mapping workers build
    segments, and the arrays travel as plain bytes: the target handles a few objects per chunk
    instead of several per operation. A record's operations (a merge's identify and merge) are
    consecutive; `continues` says that the last one's record has more in the next segment (the
    packer cut between them), so that a record is counted once, where its last operation is.
    """

    data: bytes
    ends: array
    item_of: array
    ledger: array
    items: list[Any] | None = None
    continues: bool = False

    @classmethod
    def of(cls, ops: list[Operation]) -> Segment:
        """A segment of the given operations, each its own item."""
        builder = SegmentBuilder()
        for i, op in enumerate(ops):
            builder.add(op.body, i, op.ledger)
        return builder.segment([op.record for op in ops])

    @property
    def size(self) -> int:
        """How many operations it holds."""
        return len(self.ends)

    @property
    def records(self) -> int:
        """How many records end here: each record is counted where its last operation is."""
        return len(set(self.item_of)) - self.continues

    def ending_keys(self) -> set[tuple[int, int]]:
        """The records (see `record_keys`) whose last operation is here."""
        chunk, items = id(self.items), set(self.item_of)
        if self.continues:
            items.discard(self.item_of[len(self.item_of) - 1])
        return {(chunk, item) for item in items}

    def record_keys(self) -> list[tuple[int, int]]:
        """Each operation's record, as (id of the chunk, index in it)."""
        chunk = id(self.items)
        return [(chunk, item) for item in self.item_of]

    def body(self, i: int) -> bytes:
        return self.data[self.ends[i - 1] + 1 if i else 0:self.ends[i]]

    def ledger_at(self) -> dict[int, tuple[int, int]]:
        """Position -> (key, fingerprint), for the operations the ledger tracks."""
        return {i: (key, fingerprint) for i, key, fingerprint in triples(self.ledger)}

    def operations(self) -> list[Operation]:
        """The operations one by one (for the paths that need them: errors, dry runs)."""
        entries, items = self.ledger_at(), self.items or []
        return [Operation(self.body(i), "", items[self.item_of[i]] if items else None, entries.get(i)) for i in range(self.size)]

    def without_items(self, drop: set[int]) -> Segment:
        """The segment without the operations of the records (indexes in `items`) in `drop`."""
        if not drop.intersection(self.item_of):
            return self
        builder, entries = SegmentBuilder(), self.ledger_at()
        for i, item in enumerate(self.item_of):
            if item not in drop:
                builder.add(self.body(i), item, entries.get(i))
        return builder.segment(self.items)

    def split(self, count: int) -> tuple[Segment, Segment]:
        """The first `count` operations, and the rest."""
        cut = self.ends[count - 1]
        first, rest = array("q"), array("q")
        for i, key, fp in triples(self.ledger):
            if i < count:
                first.extend((i, key, fp))
            else:
                rest.extend((i - count, key, fp))
        cut_inside = self.item_of[count - 1] == self.item_of[count]  # a record's operations cut apart
        head = Segment(self.data[:cut], self.ends[:count], self.item_of[:count], first, self.items, cut_inside)
        tail = Segment(self.data[cut + 1:], array("q", (end - cut - 1 for end in self.ends[count:])),
                       self.item_of[count:], rest, self.items, self.continues)
        return head, tail


class SegmentBuilder:
    """Collects encoded operations in order; `segment()` joins them into one Segment."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        # Lists while collecting (appends are cheapest there), arrays once, in C, at the end.
        self._ends: list[int] = []
        self._item_of: list[int] = []
        self._ledger: list[int] = []
        self._end = -1

    def add(self, body: bytes, item: int, ledger: tuple[int, int] | None) -> None:
        if ledger is not None:
            self._ledger += (len(self.bodies), ledger[0], ledger[1])
        self._end += len(body) + 1
        self._ends.append(self._end)
        self._item_of.append(item)
        self.bodies.append(body)

    def segment(self, items: list[Any] | None = None) -> Segment:
        return Segment(b",".join(self.bodies), array("q", self._ends), array("q", self._item_of), array("q", self._ledger), items)


@dataclass
class Batch:
    """Operations of one stream bound for one request."""

    stream: str
    segments: list[Segment] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(segment.size for segment in self.segments)

    @property
    def records(self) -> int:
        """The records whose last operation is in this request (what `sent` counts)."""
        return sum(segment.records for segment in self.segments)

    def ending_keys(self) -> set[tuple[int, int]]:
        return set().union(*(segment.ending_keys() for segment in self.segments))

    def halves(self) -> tuple[Batch, Batch]:
        """The first half of the operations and the rest, each keeping its records."""
        wanted, first = len(self) // 2, Batch(self.stream)
        rest = list(self.segments)
        while rest and len(first) + rest[0].size <= wanted:
            first.segments.append(rest.pop(0))
        if rest and len(first) < wanted:
            head, tail = rest[0].split(wanted - len(first))
            first.segments.append(head)
            rest[0] = tail
        return first, Batch(self.stream, rest)

    def body(self) -> bytes:
        return b'{"batch":[' + b",".join(segment.data for segment in self.segments) + b"]}"

    @property
    def ops(self) -> list[Operation]:
        return [op for segment in self.segments for op in segment.operations()]

    def ledger_entries(self, rejected: frozenset[int] | set[int] = frozenset()) -> list[tuple[int, int]]:
        """The ledger entries of the operations not `rejected` (indexes in the request)."""
        entries, offset = [], 0
        for segment in self.segments:
            if rejected:
                entries += [(key, fp) for i, key, fp in triples(segment.ledger) if offset + i not in rejected]
            else:  # the usual case, paired in C
                entries += zip(segment.ledger[1::3], segment.ledger[2::3])
            offset += segment.size
        return entries


class Packer:
    """Fills batches up to the request size limit and hands each full one on."""

    def __init__(self, stream: str, send: Callable[[Batch], None], limit: int = MAX_REQUEST_BYTES) -> None:
        self._stream, self._send, self._limit = stream, send, limit
        self._batch = Batch(stream)
        self._size = _ENVELOPE

    def add_segment(self, segment: Segment) -> None:
        """Append the segment, cutting it between operations where a request is full."""
        while segment.size:
            comma = 1 if self._batch.segments else 0
            room = self._limit - 1 - self._size - comma  # a request stays under the limit
            if len(segment.data) <= room:
                self._batch.segments.append(segment)
                self._size += len(segment.data) + comma
                return
            fits = bisect.bisect_right(segment.ends, room)
            if fits == 0 and not self._batch.segments:
                fits = 1  # one operation alone over the limit: sent alone, for Customer.io to judge
            if fits:
                head, segment = segment.split(fits)
                self._batch.segments.append(head)
            self.flush()

    def flush(self) -> None:
        if self._batch.segments:
            batch, self._batch, self._size = self._batch, Batch(self._stream), _ENVELOPE
            self._send(batch)


class RateLimiter:
    """Spaces requests evenly at `per_second`, across all threads."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


# ---- the retry policy: one, declared, for every request to Customer.io ----------------------

RETRY_STATUSES = frozenset({429, *range(500, 600)})
# A dropped connection, a refused one, a timeout (the whole-request deadline included) and a body
# cut short are all "no answer": the request may or may not have landed, and re-sending is safe
# (events carry deterministic ids; identifies are idempotent).
RETRY_EXCEPTIONS = (
    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
)
_full_jitter = wait_random_exponential(multiplier=_RETRY_BASE_SECONDS, max=_RETRY_CAP_SECONDS)


class Answer(NamedTuple):
    """Customer.io's answer to one request, read whole within the request's deadline."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def is_json_object(self) -> bool:
        """What the Track API answers with (`{}` at least): a page from anything else is not."""
        try:
            return isinstance(json.loads(self.body), dict)
        except ValueError:
            return False

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, {} when it is not one."""
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait (delta-seconds or an HTTP date), capped; None if absent."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if not seconds > 0:  # NaN, negative, a date gone by: the jittered backoff instead
        return None
    return min(seconds, _MAX_RETRY_AFTER_SECONDS)


def _check_answer(answer: Answer, url: str) -> None:
    """An answer that is not the Track API's stops the run (exit 4) rather than count as
    accepted. A redirect is never followed: requests would turn the POST into a GET that a
    200 answers (the batch lost, the STATE moved), or send the batch to another host."""
    if 300 <= answer.status < 400:
        where = shown(str(answer.headers.get("Location") or "nowhere"), 120)
        raise DeliveryError(f"{url} answered HTTP {answer.status}, a redirect to {where}: redirects "
                            "are never followed; set track_api_url to the address that answers")
    if answer.status in (200, 207) and not answer.is_json_object:
        raise DeliveryError(f"{url} answered HTTP {answer.status} but not with JSON "
                            f"({shown(answer.text, 80)!r}): that is not the Track API (a proxy or "
                            "captive portal?); nothing after the last STATE was confirmed")


def _should_retry(state: RetryCallState) -> bool:
    outcome = state.outcome
    if outcome is None:
        return False
    if outcome.failed:
        return isinstance(outcome.exception(), RETRY_EXCEPTIONS)
    answer: Answer = outcome.result()
    return answer.status in RETRY_STATUSES


def backoff(state: RetryCallState) -> float:
    """Retry-After when the answer has it (429 may come without), else full-jitter backoff."""
    outcome = state.outcome
    if outcome is not None and not outcome.failed:
        seconds = retry_after(outcome.result().headers)
        if seconds is not None:
            return seconds
    return float(_full_jitter(state))


def _last_outcome(state: RetryCallState) -> Answer:
    """After the last try: its answer, or its exception raised again."""
    assert state.outcome is not None
    answer: Answer = state.outcome.result()
    return answer


def problem(state: RetryCallState) -> str:
    """What went wrong with the last try, for logs and errors."""
    outcome = state.outcome
    if outcome is None:
        return "nothing yet"
    if outcome.failed:
        return type(outcome.exception()).__name__
    return f"HTTP {outcome.result().status}"


class TrackClient:
    """HTTP to the Track API: the rate limit, one retry policy, a deadline per try. Thread-safe.

    Every request (the start-up credential check and every batch) goes through `_request`,
    so all are retried alike: 429, 5xx, timeouts and dropped connections, `max_retries` times,
    with full-jitter exponential backoff or the server's Retry-After. The waits end at once
    when `stopping` is set (SIGTERM/SIGINT): a run never sleeps through a signal.
    """

    def __init__(
        self,
        base_url: str,
        site_id: str,
        api_key: str,
        *,
        per_second: float,
        timeout: float,
        max_retries: int,
        logger: logging.Logger,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = (site_id, api_key)
        self._limiter = RateLimiter(per_second)
        self._timeout = timeout
        self._max_tries = max_retries + 1
        self._logger = logger
        self._local = threading.local()
        self.stopping = threading.Event()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = http_session.session()
            session.auth = self._auth
            session.headers.update({"Content-Type": "application/json", "User-Agent": "target-customerio"})
        return session

    def check_credentials(self, region: str | None) -> None:
        """One cheap call: wrong credentials or the wrong region fail here, in a second."""
        url = f"{self.base_url}/api/v1/accounts/region"
        try:
            answer, tries = self._request("GET", url, None, "credential check")
        except RETRY_EXCEPTIONS as exc:
            tried = f"{self._max_tries} tries, last: {type(exc).__name__}"
            raise DeliveryError(f"cannot reach Customer.io at {self.base_url} ({tried})") from None
        status = answer.status
        if status in (401, 403):
            raise CredentialsError(f"Customer.io refused site_id/api_key (HTTP {status}) at "
                                   f"{self.base_url}: check both settings")
        _check_answer(answer, url)
        if status != 200:
            raise DeliveryError(f"Customer.io answered HTTP {status} to the credential check at "
                                f"{url} after {tries} tries")
        actual = (answer.json().get("region") or "").lower()
        if region and actual and actual != region:
            raise CredentialsError(f"these credentials belong to a workspace in region {actual!r}, but region is {region!r}: set region: {actual}")

    def post_batch(self, body: bytes) -> tuple[Answer, int]:
        """POST /api/v2/batch until it is answered for good; returns the answer and tries used."""
        url = f"{self.base_url}/api/v2/batch"
        try:
            answer, tries = self._request("POST", url, body, "batch request")
        except RETRY_EXCEPTIONS as exc:
            raise self._gave_up(self._max_tries, type(exc).__name__) from None
        status = answer.status
        if status in RETRY_STATUSES:
            raise self._gave_up(tries, f"HTTP {status}")
        if status in (401, 403):
            raise CredentialsError(
                f"Customer.io refused site_id/api_key (HTTP {status}): check both settings")
        _check_answer(answer, url)
        if status not in (200, 207, 400, 413):
            raise DeliveryError(f"Customer.io answered HTTP {status} at {url}: {shown(answer.text)}")
        return answer, tries

    def _gave_up(self, tries: int, last: str) -> DeliveryError:
        error = DeliveryError(f"Customer.io did not accept a batch after {tries} tries (last: "
                              f"{last}); nothing after the last STATE was confirmed")
        error.tries = tries  # the report counts them: a failed run's requests were made too
        return error

    def _request(self, method: str, url: str, body: bytes | None, what: str) -> tuple[Answer, int]:
        """The request under the retry policy: its last answer (any status) and the tries used;
        a connection problem on the last try is raised."""
        policy = Retrying(
            retry=_should_retry,
            stop=stop_after_attempt(self._max_tries),
            wait=backoff,
            sleep=self._sleep,
            before_sleep=partial(self._log_retry, what),
            retry_error_callback=_last_outcome,
        )
        answer: Answer = policy(self._attempt, method, url, body)
        return answer, int(policy.statistics.get("attempt_number", 1))

    def _attempt(self, method: str, url: str, body: bytes | None) -> Answer:
        """One try, bounded as a whole by `request_timeout`: connect, headers and body."""
        self._limiter.acquire()
        deadline = time.monotonic() + self._timeout
        # urllib3's total: the wait for the first byte of the answer is what connecting left.
        limit = self._timeout
        timeout = urllib3.Timeout(connect=min(10.0, limit), read=limit, total=limit)
        # requests passes a urllib3 Timeout through (its stubs only name floats)
        with http_session.deadline(deadline):  # the request and its headers
            response = self._session().request(
                method, url, data=body, timeout=timeout, stream=True,  # type: ignore[arg-type]
                allow_redirects=False)  # see _check_answer
        try:
            data = http_session.read_body(response, deadline)
        except BaseException:
            response.close()  # the connection is mid-answer: never reuse it
            raise
        return Answer(response.status_code, response.headers, data)

    def _sleep(self, seconds: float) -> None:
        """Backoff that a signal cuts short: the run stops instead of waiting to retry."""
        if threading.current_thread() is threading.main_thread():
            # Signal handlers run in this thread and set the event: waiting on the event here
            # could hold its lock as the handler takes it. Look at the flag instead.
            end = time.monotonic() + seconds
            while not self.stopping.is_set() and time.monotonic() < end:
                time.sleep(min(_POLL_SECONDS, max(0.0, end - time.monotonic())))
            stopped = self.stopping.is_set()
        else:
            stopped = self.stopping.wait(seconds)
        if stopped:
            raise Terminated("stopped by signal while waiting to retry a request; "
                             "nothing after the last STATE was confirmed")

    def _log_retry(self, what: str, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        self._logger.warning("%s failed (%s), retry %d/%d in %.1fs", what, problem(state),
                             state.attempt_number, self._max_tries - 1, wait)


class Delivery:
    """Worker threads, one queue each, that send batches and account for every operation."""

    def __init__(self, client: TrackClient, report: RunReport, ledger: Ledger, *, workers: int = 4, depth: int = 2) -> None:
        self._client, self._report, self._ledger = client, report, ledger
        self._queues: list[queue.Queue[Batch]] = [queue.Queue(maxsize=depth) for _ in range(workers)]
        self.error: TargetError | None = None
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
            threading.Thread(target=self._work, args=(q, index), name=f"delivery-{index}",
                             daemon=True).start()

    @property
    def shards(self) -> int:
        return len(self._queues)

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
                "so nothing after the last STATE was confirmed")
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
                self.error = self.error or DeliveryError(f"delivery failed unexpectedly: {type(exc).__name__}: {exc}")
            finally:
                q.task_done()
                self._done()

    def _deliver(self, batch: Batch, worker: int) -> None:
        if self.error is not None:
            return  # the run has failed: nothing more is sent, and no STATE will be
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
            self._ledger.record(batch.ledger_entries())
            self._report.delivered(batch.stream, self._sent(batch, set(), worker))
        elif answer.status == 207:
            self._record_item_errors(batch, answer.json().get("errors"), worker)
        else:
            self._refused_whole(batch, answer, worker)

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

    def _refused_whole(self, batch: Batch, answer: Answer, worker: int) -> None:
        """400/413: halve the request to isolate the bad operations and reject only them, unless
        this worker has had so many refusals in a row that they cannot be a few bad operations
        (see _MAX_REFUSED_ALONE): then the workspace refuses everything, and the run fails."""
        message = _error_message(answer.json()) or f"HTTP {answer.status}"
        if len(batch) > 1:
            for half in batch.halves():
                self._deliver(half, worker)
            return
        self._refused[worker] += 1
        if self._refused[worker] >= _MAX_REFUSED_ALONE:
            raise DeliveryError(
                f"Customer.io refused {self._refused[worker]} operations in a row, each alone "
                f"(HTTP {answer.status}: {shown(message)}), and accepted none in between: it "
                "refuses every request, not a few bad rows; nothing after the last STATE was "
                "confirmed")
        [key] = batch.segments[0].record_keys()
        if key not in self._carried[worker]:  # its other operations were not refused already
            self._report.reject(batch.stream, "rejected_by_customerio", None, message, batch.ops[0].record)
        self._report.delivered(batch.stream, self._sent(batch, {key}, worker))

    def _record_item_errors(self, batch: Batch, errors: Any, worker: int) -> None:
        """207: the refused operations' records are rejected (once each, with the first
        reason), the rest delivered. A 207 that names no operation it refused cannot be
        accounted for: the run fails rather than count them all as sent."""
        if not isinstance(errors, list):
            raise DeliveryError("Customer.io answered 207 without a list of `errors`; nothing after "
                                "the last STATE was confirmed")
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
            if keys[index] in rejected_records or keys[index] in self._carried[worker]:
                continue
            rejected_records.add(keys[index])
            message = f"{error.get('reason', 'rejected')}: {error.get('message', '')}".strip(": ")
            self._report.reject(batch.stream, "rejected_by_customerio", error.get("field"), message, ops[index].record)
        if not rejected:
            raise DeliveryError("Customer.io answered 207 but named no operation of the request it "
                                "refused; nothing after the last STATE was confirmed")
        self._ledger.record(batch.ledger_entries(rejected))
        self._report.delivered(batch.stream, self._sent(batch, rejected_records, worker))


def _error_message(data: dict[str, Any]) -> str:
    meta = data.get("meta")
    if isinstance(meta, dict) and meta.get("error"):
        return str(meta["error"])
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors[:3])
    return ""


class DryRun:
    """Stands in for Delivery: writes each would-be operation to a JSONL file, sends nothing."""

    shards = 1

    def __init__(self, path: str, report: RunReport) -> None:
        self._path = Path(path)
        self._out = open_output(self._path, "dry_run_file", "wb")
        self._report = report
        self.error: TargetError | None = None

    def submit(self, shard: int, batch: Batch) -> None:
        try:
            for op in batch.ops:
                self._out.write(REDACTOR.redact_json(op.body) + b"\n")
        except OSError as exc:
            raise TargetError(f"cannot write dry_run_file {self._path}: {exc.strerror or exc}") from None
        self._report.delivered(batch.stream, batch.records)

    def wait(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            raise TargetError(f"cannot write dry_run_file {self._path}: {exc.strerror or exc}") from None

    def raise_if_failed(self) -> None:
        return None

    def interrupt(self) -> None:
        return None


