"""The ledger keys this run has sent something for: what keeps `unchanged` honest within a run.

The ledger says what Customer.io confirmed *before* a record is looked up; the requests of this
run are still on their way (packed, queued, in flight: their doubt is marked only when they go
out). A row updated A -> B -> A between two runs, the ledger holding A, sends B; the A record
after it must be sent too, or Customer.io keeps B. So a record is `unchanged` only when its
operations equal the ledger's AND no operation about any of its keys was sent earlier in this
run: a key sent earlier is never compared with the fingerprint from before.

Memory stays flat whatever the run's size: the keys sent are held in a fixed Bloom filter
(16 MiB, two bits a key), not a set. A false positive only sends a record the ledger says is
unchanged (1 in 50 of them after ten million keys sent, far fewer in an incremental run); a
changed record is never skipped.

With mapping processes the filter is shared (anonymous shared memory, mapped before the fork),
and each chunk settles in the order the chunks were read (`Turns`): a chunk's unchanged records
are checked only after every earlier chunk's sent keys are in, whichever process mapped it.
Only this last, cheap step waits; building and the ledger lookup run in parallel.
"""

from __future__ import annotations

import mmap
import threading
import typing as t

BITS = 1 << 27  # 16 MiB: two bits a key
_MASK = BITS - 1
_WORD = (1 << 64) - 1
_WAIT = 1.0  # seconds between looks at whether the run is stopping, while waiting for a turn


class SentKeys:
    """A Bloom filter of the ledger keys (64-bit hashes) sent in this run."""

    def __init__(self) -> None:
        # anonymous and shared: its pages are zero until touched, and a fork shares them
        self._bits = mmap.mmap(-1, BITS // 8)

    def add_all(self, sends: list[tuple[bytes, str, tuple[int, int] | None]]) -> None:
        """The keys of a record's operations (body, shard key, ledger entry)."""
        bits = self._bits
        for _, _, entry in sends:
            if entry is not None:
                word = entry[0] & _WORD
                low, high = word & _MASK, (word >> 32) & _MASK
                bits[low >> 3] |= 1 << (low & 7)
                bits[high >> 3] |= 1 << (high & 7)

    def any_of(self, sends: list[tuple[bytes, str, tuple[int, int] | None]]) -> bool:
        """Whether a key of a record's operations may have been sent in this run."""
        for _, _, entry in sends:  # noqa: SIM110 - compiled, a loop is faster than a generator
            if entry is not None and self.maybe(entry[0]):
                return True
        return False

    def maybe(self, key: int) -> bool:
        """Whether the key may have been sent in this run (never False for one that was)."""
        bits = self._bits
        word = key & _WORD
        low, high = word & _MASK, (word >> 32) & _MASK
        return bool(bits[low >> 3] & (1 << (low & 7))) and bool(bits[high >> 3] & (1 << (high & 7)))


class Turns:
    """Chunks settle in the order they were read (their `seq`, 0, 1, 2, ...), across mapping
    processes: `wait(seq)` returns once chunk seq - 1 is done, `done(seq)` lets seq + 1 go."""

    def __init__(self, context: t.Any = None) -> None:
        # one process (no mapping processes): chunks come in order, nobody waits
        self._shared = context is not None
        if context is not None:
            self._next = context.Value("q", 0, lock=False)
            self._cond = context.Condition()
        self.stopping = threading.Event()  # the target closed the pipe: stop waiting
        self._done = -1  # the last chunk this process let go

    def wait(self, seq: int) -> None:
        if not self._shared or seq < 0:
            return
        with self._cond:
            while self._next.value != seq:
                if self.stopping.is_set():
                    raise RunStopping("the run is stopping")
                self._cond.wait(_WAIT)

    def done(self, seq: int) -> None:
        if not self._shared or seq < 0:
            return
        with self._cond:
            self._next.value = seq + 1
            self._cond.notify_all()
        self._done = seq

    def finish(self, seq: int) -> None:
        """After chunk seq, whatever became of it (a chunk that failed before its turn still
        lets the next ones go, in order)."""
        if self._shared and seq >= 0 and self._done != seq:
            self.wait(seq)
            self.done(seq)


class RunStopping(Exception):
    """A mapping process waited for a chunk that will not come: the target is stopping."""
