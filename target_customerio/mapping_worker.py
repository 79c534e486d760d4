"""Mapping off the reader's thread: records are decoded and mapped in worker processes.

The reader hands a stream's RECORD lines to its sink whole and undecoded; the sink sends them
in chunks to the workers, which decode and map them (mapping.py, lifecycle.py),
look them up in the ledger, and answer with the encoded operations packed per delivery shard
(`Segment`), and why each other record is rejected or skipped. Chunks go to the workers in turn
and their answers are taken in the order the chunks were sent, so the sink packs every record
in the order it came, handling a few objects per chunk rather than several per record.

An event seen twice in a run is sent once: each worker skips the repeats among the events it
sent last, and the sink drops any other (see `CustomerIOSink._account`). What a worker
learns (columns, event names) every worker learns the same way.

With `mapping_workers: 0`, or where `fork` is not available, the same work runs in the
reader's thread (`InlineMapping`).
"""

from __future__ import annotations

import atexit
import fcntl
import multiprocessing
import os
import queue
import signal
import sys
import threading
import typing as t
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from singer_sdk.exceptions import MissingKeyPropertiesError

from target_customerio.errors import ConfigError, InputError, TargetError
from target_customerio.delivery import Segment, SegmentBuilder
from target_customerio.ledger import Ledger, NoLedger, open_ledger
from target_customerio.lifecycle import MAPPERS, delete_operation, is_delete, mirror_operation
from target_customerio.mapping import Operation, Rejected, Skipped
from target_customerio.reading import decode_record
from target_customerio.settings import Settings

CHUNK = 500  # records a sink sends a worker at once
IN_FLIGHT = 3  # chunks sent to one worker and not yet answered, at most (bounds memory)
PIPE_BYTES = 1 << 20  # Linux's limit for an unprivileged process (fs/pipe-max-size): IN_FLIGHT typical chunks
# A worker skips an event repeated among the last 20,000 it sent (the rows of one order come
# together); the sink, which keeps every event of the run, drops any other repeat.
RECENT_EVENTS = 20_000

Item = t.Union[bytes, dict]  # a RECORD line, whole (the direct path), or a record the SDK decoded
_Send = tuple[bytes, str, t.Optional[tuple[int, int]]]  # an operation to send: body, shard key, ledger entry


@dataclass
class Mapped:
    """A worker's answer for one chunk: its operations, encoded and packed per delivery shard
    in record order, and what became of the records that sent nothing."""

    segments: dict[int, Segment]
    rejects: list[tuple[int, str, str | None, str, str | None]]  # (index in the chunk, reason, field, message, rule)
    skipped: dict[str, int]  # reason -> records
    event_items: list[int]  # the records (indexes in the chunk) that sent an event, and
    event_keys: list[int]  # their events' dedupe keys: the target checks them across workers
    event_names: list[tuple[str, str]]  # names first seen: source spelling, name sent


OnMapped = t.Callable[[list[Item], Mapped], None]


@dataclass
class StreamSpec:
    """What a worker needs to map one stream, besides the settings it shares with the target."""

    stream: str
    schema: dict
    key_properties: list[str]
    started_at: float
    ledger_scope: str | None
    shards: int  # delivery shards: a person's operations always go to the same one


class StreamMapping:
    """Maps the records of one stream (in a worker)."""

    def __init__(self, settings: Settings, spec: StreamSpec, event_names: list[tuple[str, str]], ledger: Ledger) -> None:
        route = settings.routes.match(spec.stream)
        assert route is not None  # the target only maps routed streams
        self._recent: OrderedDict[int, None] = OrderedDict()  # dedupe keys of the last events this worker sent
        self._mapper = MAPPERS[route.kind](
            route, spec.schema, now=spec.started_at, on_event_name=lambda raw, name: event_names.append((raw, name)),
            ledger_scope=spec.ledger_scope, sent_events=self._recent,
        )
        self._stream = spec.stream
        self._key_properties = spec.key_properties
        self._shards = spec.shards
        self._deletes_here = route.kind in ("person", "event")  # objects map their own deletes
        self._mirror = route.mirror_to_attribute
        self._ledger = None if isinstance(ledger, NoLedger) else ledger
        self._event_names = event_names

    def map_chunk(self, items: list[Item]) -> Mapped:
        rejects: list[tuple[int, str, str | None, str, str | None]] = []
        skipped: Counter[str] = Counter()
        mapped: list[tuple[int, int | None, list[_Send]]] = []  # (index in the chunk, event dedupe key, operations)
        for index, item in enumerate(items):
            record, native = decode_record(item, self._stream) if isinstance(item, bytes) else (item, False)
            for key in self._key_properties:
                if key not in record:
                    raise MissingKeyPropertiesError(f"{self._stream}: a record has no key property {key!r} (key_properties: {self._key_properties})")
            try:
                ops = self._operations(record, native)
            except Skipped as skip:
                skipped[skip.reason] += 1
                continue
            except Rejected as rej:
                rejects.append((index, rej.reason, rej.field, rej.message, rej.rule))
                continue
            seen = ops[0].seen
            if seen is not None:  # an event: sent once a run, whatever its rows (the mapper skips the repeats)
                self._recent[seen] = None
                if len(self._recent) > RECENT_EVENTS:
                    self._recent.popitem(last=False)
            # Only what is sent is kept, not the record: freed now, its memory is reused while
            # still in cache (holding a chunk's records made mapping ~15% slower).
            mapped.append((index, seen, [(op.body, op.shard_key, op.ledger) for op in ops]))
        unchanged = self._unchanged(mapped)
        shards = self._shards
        parts = [SegmentBuilder() for _ in range(shards)]
        event_items: list[int] = []
        event_keys: list[int] = []
        for at, (index, seen, sends) in enumerate(mapped):
            if at in unchanged:
                skipped["unchanged"] += 1
                continue
            if seen is not None:
                event_items.append(index)
                event_keys.append(seen)
            for body, shard_key, ledger in sends:
                parts[hash(shard_key) % shards].add(body, index, ledger)
        segments = {shard: part.segment() for shard, part in enumerate(parts) if part.bodies}
        names, self._event_names[:] = list(self._event_names), []
        return Mapped(segments, rejects, dict(skipped), event_items, event_keys, names)

    def _operations(self, record: dict, native: bool) -> list[Operation]:
        if self._deletes_here and ("_sdc_deleted_at" in record or "_sdc_operation_type" in record) and is_delete(record):
            return [delete_operation(self._mapper, record)]
        ops = self._mapper.operations(record, native)
        if self._mirror:
            ops.append(mirror_operation(self._mapper, ops[0], self._mapper.last_timestamp))
        return ops

    def _unchanged(self, mapped: list[tuple[int, int | None, list[_Send]]]) -> set[int]:
        """Change detection: the records (positions in `mapped`) whose every tracked operation
        is exactly what was last delivered (one ledger query for the whole chunk)."""
        if self._ledger is None:
            return set()
        keys = [ledger[0] for _, _, sends in mapped for _, _, ledger in sends if ledger is not None]
        delivered = self._ledger.fingerprints(keys) if keys else None
        if not delivered:
            return set()
        unchanged = set()
        for at, (_, _, sends) in enumerate(mapped):
            tracked = [ledger for _, _, ledger in sends if ledger is not None]
            if tracked and all(delivered.get(key) == fingerprint for key, fingerprint in tracked):
                unchanged.add(at)
        return unchanged


class InlineMapping:
    """Maps in the calling thread: a worker's own mapping, and the target's where there is no worker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._streams: dict[int, StreamMapping] = {}
        self._event_names: list[tuple[str, str]] = []
        self._ledger: Ledger | None = None  # for lookups: a connection of its own, opened on first use

    def open(self, spec: StreamSpec) -> int:
        if self._ledger is None:
            self._ledger = open_ledger(self._settings)
        key = len(self._streams)
        self._streams[key] = StreamMapping(self._settings, spec, self._event_names, self._ledger)
        return key

    def submit(self, key: int, items: list[Item], on_mapped: OnMapped) -> None:
        on_mapped(items, self.map(key, items))

    def map(self, key: int, items: list[Item]) -> Mapped:
        return self._streams[key].map_chunk(items)

    def drain(self) -> None:
        return None

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()


class _Worker:
    """One forked worker process and the two one-way pipes to and from it."""

    def __init__(self, context: t.Any, settings: Settings, index: int) -> None:
        inbox, self.to_worker = context.Pipe(duplex=False)
        self.from_worker, outbox = context.Pipe(duplex=False)
        _widen(self.to_worker)
        _widen(outbox)
        self.process = context.Process(target=_serve, args=(inbox, outbox, (self.to_worker, self.from_worker), settings),
                                       name=f"target-customerio-mapping-{index}", daemon=True)
        self.process.start()
        inbox.close()
        outbox.close()
        self.in_flight = 0


def _widen(conn: t.Any) -> None:
    """Make a pipe hold the chunks (or answers) in flight, so that neither side waits for the
    other to read: a write to a full 64 KB pipe stalls the writer until the reader runs."""
    try:
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):  # not Linux, or over the user's pipe quota: only slower
        pass


class ProcessMapping:
    """Maps in forked worker processes; answers are taken in the order the chunks were sent.

    Forked before any thread or connection exists (the target makes it first), so each worker
    starts with the settings, routes and compiled contracts already in memory.
    """

    def __init__(self, settings: Settings, workers: int) -> None:
        context = multiprocessing.get_context("fork")
        self._workers = [_Worker(context, settings, index) for index in range(workers)]
        atexit.register(self.close)  # before multiprocessing's own exit hook, which would wait for them
        self._waiting: deque[tuple[_Worker, list[Item], OnMapped]] = deque()
        self._turn = 0
        self._opened = 0

    def open(self, spec: StreamSpec) -> int:
        key = self._opened
        self._opened += 1
        for worker in self._workers:
            self._send(worker, ("open", key, spec))
        return key

    def submit(self, key: int, items: list[Item], on_mapped: OnMapped) -> None:
        worker = self._workers[self._turn]
        self._turn = (self._turn + 1) % len(self._workers)
        while worker.in_flight >= IN_FLIGHT:
            self._answer_one()
        self._send(worker, ("map", key, items))
        worker.in_flight += 1
        self._waiting.append((worker, items, on_mapped))
        while self._waiting and self._waiting[0][0].from_worker.poll():
            self._answer_one()

    def drain(self) -> None:
        """Return once every chunk sent is answered and accounted for."""
        while self._waiting:
            self._answer_one()

    def close(self) -> None:
        """The workers end when their pipes close; they ignore SIGTERM, so one that lingers is killed."""
        for worker in self._workers:
            worker.to_worker.close()
            worker.from_worker.close()
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.exitcode is None:  # never: a worker ends when its pipe closes
                worker.process.kill()
                worker.process.join()

    def _send(self, worker: _Worker, message: tuple) -> None:
        try:
            worker.to_worker.send(message)
        except (EOFError, OSError):  # a closed or broken pipe
            self._died(worker)

    def _answer_one(self) -> None:
        worker, items, on_mapped = self._waiting[0]
        try:
            reply = worker.from_worker.recv()
        except (EOFError, OSError):
            self._died(worker)
        self._waiting.popleft()
        worker.in_flight -= 1
        if reply[0] == "failed":
            self._waiting.clear()
            raise _FAILURES.get(reply[1], TargetError)(reply[2])
        on_mapped(items, reply[1])

    def _died(self, worker: _Worker) -> t.NoReturn:
        worker.process.join(timeout=1)
        raise TargetError(f"a mapping process stopped unexpectedly (exit code {worker.process.exitcode}); nothing after the last STATE was confirmed")


# What a worker's failure is raised as in the target (and so its exit code).
_FAILURES: dict[str, type[Exception]] = {"input": InputError, "config": ConfigError, "key": MissingKeyPropertiesError}


def make_mapping(settings: Settings) -> InlineMapping | ProcessMapping:
    """Worker processes (`mapping_workers`) where `fork` exists, else mapping in the reader's thread."""
    if settings.mapping_workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        return ProcessMapping(settings, settings.mapping_workers)
    return InlineMapping(settings)


def _serve(inbox_conn: t.Any, outbox: t.Any, targets_ends: tuple[t.Any, ...], settings: Settings) -> None:
    """A worker: open streams and map chunks until the target closes the pipe."""
    for end in targets_ends:
        end.close()  # forked with them: kept open here, the inbox would never reach its end
    # Only the target writes stdout (Meltano reads every line of it as STATE), and the target
    # decides when to stop: a Ctrl-C or SIGTERM is for it, and it drains through its workers.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A thread takes every message in as it comes: the target may be sending the next chunk
    # while this process sends the last one's answers, and with neither side reading, both
    # would block on a full pipe. (The target has at most IN_FLIGHT chunks out here.)
    inbox: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(inbox_conn, inbox), daemon=True).start()
    local = InlineMapping(settings)
    keys: dict[int, int] = {}
    while (message := inbox.get()) is not None:
        reply: tuple | None = None
        try:
            if message[0] == "open":
                keys[message[1]] = local.open(message[2])
            else:
                reply = ("mapped", local.map(keys[message[1]], message[2]))
        except tuple(_FAILURES.values()) as exc:
            reply = ("failed", next(kind for kind, error in _FAILURES.items() if isinstance(exc, error)), str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must stop the run with its reason, not hang it
            reply = ("failed", "bug", f"mapping failed unexpectedly: {type(exc).__name__}: {exc}")
        if reply is not None:
            try:
                outbox.send(reply)
            except OSError:
                break  # the target is gone (it stopped on an error): nothing to answer
    local.close()


def _receive(conn: t.Any, inbox: queue.SimpleQueue) -> None:
    try:
        while True:
            inbox.put(conn.recv())
    except (EOFError, OSError):
        inbox.put(None)  # the target closed the pipe: the end
