"""Writes the sandbox accepts and then applies late, or never: what Customer.io does.

Customer.io answers 200 and applies Track API writes asynchronously (seconds, sometimes
minutes), and some it accepts without ever applying them. `WriteFaults` stands for both: a
delay before accepted writes are applied (one applier thread, in the order they came), people
whose writes are accepted and dropped, and event names accepted and recorded as
`failed_event`. Verification (the target's verification.py) must tell them apart: the late
write is no discrepancy, the dropped one is.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Ops = list[tuple[int, dict]]


class WriteFaults:
    """Thread-safe. `apply(ops, received_at)` is the store's own apply, called now or later."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.delay = 0.0  # seconds between accepting a write and applying it
        self.ignored: set[tuple[str, str]] = set()  # (id type, value): writes dropped
        self.failed_events: set[str] = set()  # event names recorded as failed_event
        self._queue: deque[tuple[float, Ops, float, Callable[[Ops, float], Any]]] = deque()
        self._thread: threading.Thread | None = None

    def ignore(self, kind: str, value: str) -> None:
        with self._lock:
            self.ignored.add((kind, value.lower() if kind == "email" else str(value)))

    def dropped(self, op: dict) -> bool:
        """Whether the op's person is one whose writes are accepted and not applied."""
        return bool(self.ignored) and tuple(op.get("identifier") or ()) in self.ignored

    def later(self, ops: Ops, received_at: float, apply: Callable[[Ops, float], Any]) -> bool:
        """Queue the ops to be applied after `delay`; False when there is no delay."""
        with self._lock:
            if self.delay <= 0:
                return False
            self._queue.append((time.monotonic() + self.delay, ops, received_at, apply))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="sandbox-late-writes", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()
            return True

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def flush(self) -> None:
        """Apply every queued write now (tests, reset)."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                _, ops, received_at, apply = self._queue.popleft()
            apply(ops, received_at)

    def clear(self) -> None:
        with self._lock:
            self.delay = 0.0
            self.ignored.clear()
            self.failed_events.clear()
            self._queue.clear()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue or self._queue[0][0] > time.monotonic():
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._lock.wait(wait)
                _, ops, received_at, apply = self._queue.popleft()
            apply(ops, received_at)
