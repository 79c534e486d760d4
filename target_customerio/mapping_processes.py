"""Mapping processes: chunks of records carried to forked workers and their answers back.

The reader hands a stream's RECORD lines to its sink whole and undecoded; the sink sends them
in chunks to the mapping processes, which map them (stream_mapping.py) and answer with the
encoded operations packed per delivery shard, and why each other record is rejected or
skipped. Chunks go to the processes in turn and their answers are taken in the order the chunks
were sent, so the sink packs every record in the order it came, handling a few objects per
chunk rather than several per record.

An event seen twice in a run is sent once: a process does not build again a row of an event it
built moments ago, and the target decides for every event row, run-wide (run_events.py). What
a process learns (columns, event names) every process learns the same way.
"""

from __future__ import annotations

import atexit
import fcntl
import multiprocessing
import os
import queue
import signal
import stat
import sys
import threading
import typing as t
from collections import deque

from singer_sdk.exceptions import MissingKeyPropertiesError

from target_customerio.errors import ConfigError, InputError, TargetError
from target_customerio.ledger_db import LedgerError
from target_customerio.run_sent import SentKeys, Turns
from target_customerio.settings import Settings
from target_customerio.stream_mapping import InlineMapping, Item, OnMapped, StreamSpec

CHUNK = 500  # records a sink sends a process at once
IN_FLIGHT = 3  # chunks sent to one process and not yet answered, at most (bounds memory)
# Linux's limit for an unprivileged process (fs/pipe-max-size): IN_FLIGHT typical chunks
PIPE_BYTES = 1 << 20


class _Worker:
    """One forked worker process and the two one-way pipes to and from it."""

    def __init__(
        self, context: t.Any, settings: Settings, index: int, shared: tuple[SentKeys, Turns]
    ) -> None:
        inbox, self.to_worker = context.Pipe(duplex=False)
        self.from_worker, outbox = context.Pipe(duplex=False)
        _widen(self.to_worker)
        _widen(outbox)
        self.process = context.Process(
            target=_serve,
            args=(inbox, outbox, (self.to_worker, self.from_worker), settings, shared),
            name=f"target-customerio-mapping-{index}",
            daemon=True,
        )
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
        # the keys this run sent and the order chunks settle in, shared by every process
        # (run_sent.py): made before the fork
        shared = (SentKeys(), Turns(context))
        self._workers = [_Worker(context, settings, index, shared) for index in range(workers)]
        # before multiprocessing's own exit hook, which would wait for them
        atexit.register(self.close)
        self._waiting: deque[tuple[_Worker, list[Item], OnMapped]] = deque()
        self._turn = 0
        self._opened = 0
        self._seq = 0  # chunks sent, of every stream: the order they settle in

    @property
    def size(self) -> int:
        """How many worker processes map."""
        return len(self._workers)

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
        self._send(worker, ("map", key, items, self._seq))
        self._seq += 1
        worker.in_flight += 1
        self._waiting.append((worker, items, on_mapped))
        while self._waiting and self._waiting[0][0].from_worker.poll():
            self._answer_one()

    def drain(self) -> None:
        """Return once every chunk sent is answered and accounted for."""
        while self._waiting:
            self._answer_one()

    def close(self) -> None:
        """The workers end when their pipes close; they ignore SIGTERM, so one that lingers is
        killed."""
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
        raise TargetError(
            f"a mapping process stopped unexpectedly (exit code {worker.process.exitcode}); "
            "nothing after the last STATE was confirmed"
        )


# What a worker's failure is raised as in the target (and so its exit code).
_FAILURES: dict[str, type[Exception]] = {
    "input": InputError,
    "config": ConfigError,
    "key": MissingKeyPropertiesError,
    "ledger": LedgerError,
}


def make_mapping(settings: Settings) -> InlineMapping | ProcessMapping:
    """Worker processes (`mapping_workers`) where `fork` exists, else mapping in the reader's
    thread."""
    workers = workers_for(settings)
    if workers > 0 and "fork" in multiprocessing.get_all_start_methods():
        return ProcessMapping(settings, workers)
    return InlineMapping(settings)


def workers_for(settings: Settings, stdin_fd: int = 0) -> int:
    """`mapping_workers` as set, else chosen for the machine and what feeds the target.

    Read from a file, the target has the machine to itself: a process a CPU, at most 4. Read
    from a pipe (`tap | target`, and every `meltano run`), a tap runs beside it and needs a CPU,
    and the target's reading thread needs one: the processes get what is left, so on a two-CPU
    runner the target maps in its reading thread and never crowds the tap (the pipe bench's
    figures and why: docs/performance.md).
    """
    if settings.mapping_workers is not None:
        return settings.mapping_workers
    cpus = usable_cpus()
    try:
        from_file = stat.S_ISREG(os.fstat(stdin_fd).st_mode)
    except OSError:
        from_file = False
    return min(4, cpus if from_file else max(0, cpus - 2))


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset, taskset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _serve(
    inbox_conn: t.Any,
    outbox: t.Any,
    targets_ends: tuple[t.Any, ...],
    settings: Settings,
    shared: tuple[SentKeys, Turns],
) -> None:
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
    local = InlineMapping(settings, *shared)
    threading.Thread(target=_receive, args=(inbox_conn, inbox, local.turns), daemon=True).start()
    keys: dict[int, int] = {}
    while (message := inbox.get()) is not None:
        reply: tuple | None = None
        try:
            if message[0] == "open":
                keys[message[1]] = local.open(message[2])
            else:
                reply = ("mapped", local.map(keys[message[1]], message[2], message[3]))
        except tuple(_FAILURES.values()) as exc:
            reply = (
                "failed",
                next(kind for kind, error in _FAILURES.items() if isinstance(exc, error)),
                str(exc),
            )
        except Exception as exc:  # noqa: BLE001 - a bug must stop the run with its reason, not hang it
            reply = ("failed", "bug", f"mapping failed unexpectedly: {type(exc).__name__}: {exc}")
        if reply is not None:
            try:
                outbox.send(reply)
            except OSError:
                break  # the target is gone (it stopped on an error): nothing to answer
    local.close()


def _receive(conn: t.Any, inbox: queue.SimpleQueue, turns: Turns) -> None:
    try:
        while True:
            inbox.put(conn.recv())
    except (EOFError, OSError):
        turns.stopping.set()  # a chunk waiting for its turn waits no more
        inbox.put(None)  # the target closed the pipe: the end
