"""Delivery to the Track API: batch packing, the rate limit, retries, and the worker threads.

This is the one place that talks HTTP. Operations for one person always travel through the
same worker (shard), in order, so a later update can never overtake an earlier one.
"""

from __future__ import annotations

import bisect
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from array import array
from typing import Any, Callable, Iterator, NamedTuple

import requests

from target_customerio.errors import CredentialsError, DeliveryError, TargetError
from target_customerio.ledger import Ledger
from target_customerio.mapping import Operation
from target_customerio.redaction import REDACTOR
from target_customerio.report import RunReport, open_output

MAX_REQUEST_BYTES = 500_000
_ENVELOPE = len(b'{"batch":[]}')
_RETRY_BASE_SECONDS = 0.5
_RETRY_CAP_SECONDS = 30.0
_MAX_RETRY_AFTER_SECONDS = 300.0


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
    instead of several per operation.
    """

    data: bytes
    ends: array
    item_of: array
    ledger: array
    items: list[Any] | None = None

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
        head = Segment(self.data[:cut], self.ends[:count], self.item_of[:count], first, self.items)
        tail = Segment(self.data[cut + 1:], array("q", (end - cut - 1 for end in self.ends[count:])), self.item_of[count:], rest, self.items)
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

    @classmethod
    def of(cls, stream: str, ops: list[Operation]) -> Batch:
        return cls(stream, [Segment.of(ops)])

    def __len__(self) -> int:
        return sum(segment.size for segment in self.segments)

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


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(_RETRY_CAP_SECONDS, _RETRY_BASE_SECONDS * 2 ** (attempt - 1)))


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(float(value), _MAX_RETRY_AFTER_SECONDS) if value is not None else None
    except ValueError:
        return None


class TrackClient:
    """HTTP to the Track API with the rate limit and bounded retries. Thread-safe."""

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
        self._timeout = (min(10.0, timeout), timeout)
        self._max_tries = max_retries + 1
        self._logger = logger
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.auth = self._auth
            session.headers.update({"Content-Type": "application/json", "User-Agent": "target-customerio"})
        return session

    def check_credentials(self, region: str | None) -> None:
        """One cheap call: wrong credentials or the wrong region fail here, in a second."""
        url = f"{self.base_url}/api/v1/accounts/region"
        try:
            response = self._session().get(url, timeout=(5, 10))
        except requests.RequestException as exc:
            raise DeliveryError(f"cannot reach Customer.io at {self.base_url}: {type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise CredentialsError(f"Customer.io refused site_id/api_key (HTTP {response.status_code}) at {self.base_url}: check both settings")
        if response.status_code != 200:
            raise DeliveryError(f"Customer.io answered HTTP {response.status_code} to the credential check at {url}")
        actual = (_json(response).get("region") or "").lower()
        if region and actual and actual != region:
            raise CredentialsError(f"these credentials belong to a workspace in region {actual!r}, but region is {region!r}: set region: {actual}")

    def post_batch(self, body: bytes) -> tuple[requests.Response, int]:
        """POST /api/v2/batch until it is answered for good; returns the response and tries used."""
        url = f"{self.base_url}/api/v2/batch"
        for attempt in range(1, self._max_tries + 1):
            self._limiter.acquire()
            wait = _backoff(attempt)
            try:
                response = self._session().post(url, data=body, timeout=self._timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = type(exc).__name__
            else:
                status = response.status_code
                if status in (200, 207, 400, 413):
                    return response, attempt
                if status in (401, 403):
                    raise CredentialsError(f"Customer.io refused site_id/api_key (HTTP {status}): check both settings")
                if status != 429 and status < 500:
                    raise DeliveryError(f"Customer.io answered HTTP {status} at {url}: {response.text[:200]}")
                problem = f"HTTP {status}"
                wait = _retry_after(response) or wait
            if attempt == self._max_tries:
                raise DeliveryError(f"Customer.io did not accept a batch after {attempt} tries (last: {problem}); nothing after the last STATE was confirmed")
            self._logger.warning("batch request failed (%s), retry %d/%d in %.1fs", problem, attempt, self._max_tries - 1, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class Delivery:
    """Worker threads, one queue each, that send batches and account for every operation."""

    def __init__(self, client: TrackClient, report: RunReport, ledger: Ledger, *, workers: int = 4, depth: int = 2) -> None:
        self._client, self._report, self._ledger = client, report, ledger
        self._queues: list[queue.Queue[Batch]] = [queue.Queue(maxsize=depth) for _ in range(workers)]
        self.error: TargetError | None = None
        for index, q in enumerate(self._queues):
            threading.Thread(target=self._work, args=(q,), name=f"delivery-{index}", daemon=True).start()

    @property
    def shards(self) -> int:
        return len(self._queues)

    def check_credentials(self, region: str | None) -> None:
        self._client.check_credentials(region)

    def submit(self, shard: int, batch: Batch) -> None:
        """Queue a batch; blocks while that worker is busy (bounded memory)."""
        self.raise_if_failed()
        self._queues[shard].put(batch)

    def wait(self) -> None:
        """Return once every queued batch is answered; raise the first fatal error."""
        for q in self._queues:
            q.join()
        self.raise_if_failed()
        self._ledger.flush()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self, q: queue.Queue[Batch]) -> None:
        while True:
            batch = q.get()
            try:
                if self.error is None:
                    self._deliver(batch)
            except TargetError as exc:
                self.error = self.error or exc
            except Exception as exc:  # a bug must still stop the run, not hang it
                self.error = self.error or DeliveryError(f"delivery failed unexpectedly: {type(exc).__name__}: {exc}")
            finally:
                q.task_done()

    def _deliver(self, batch: Batch) -> None:
        body = batch.body()
        response, tries = self._client.post_batch(body)
        count = len(batch)
        self._report.request(batch.stream, len(body), tries, count)
        if response.status_code == 200:
            self._ledger.record(batch.ledger_entries())
            self._report.delivered(batch.stream, count)
        elif response.status_code == 207:
            self._record_item_errors(batch, _json(response).get("errors") or [])
        elif count > 1:
            # The whole request was refused (400/413): halve it to isolate the bad operation.
            ops = batch.ops
            self._deliver(Batch.of(batch.stream, ops[:count // 2]))
            self._deliver(Batch.of(batch.stream, ops[count // 2:]))
        else:
            message = _error_message(_json(response)) or f"HTTP {response.status_code}"
            op = batch.ops[0]
            self._report.reject(batch.stream, "rejected_by_customerio", None, message, op.record)

    def _record_item_errors(self, batch: Batch, errors: list[dict[str, Any]]) -> None:
        ops, rejected = batch.ops, set()
        for error in errors:
            index = error.get("batch_index")
            if not isinstance(index, int) or not 0 <= index < len(ops) or index in rejected:
                continue
            rejected.add(index)
            message = f"{error.get('reason', 'rejected')}: {error.get('message', '')}".strip(": ")
            self._report.reject(batch.stream, "rejected_by_customerio", error.get("field"), message, ops[index].record)
        self._ledger.record(batch.ledger_entries(rejected))
        self._report.delivered(batch.stream, len(ops) - len(rejected))


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
                self._out.write(REDACTOR.redact_bytes(op.body) + b"\n")
        except OSError as exc:
            raise TargetError(f"cannot write dry_run_file {self._path}: {exc.strerror or exc}") from None
        self._report.delivered(batch.stream, len(batch))

    def wait(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            raise TargetError(f"cannot write dry_run_file {self._path}: {exc.strerror or exc}") from None

    def raise_if_failed(self) -> None:
        return None


