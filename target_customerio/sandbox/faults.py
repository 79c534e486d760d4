"""Injected faults: what the next API requests get instead of (or after) a normal answer.

The tests use them to prove the target's retries, timeouts and STATE handling; a fault matches by
path prefix, so it can target the Track API (`/api/...`) or the App API (`/v1/...`) alike.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from target_customerio.sandbox.responses import phrase

FAULT_MODES = (
    "respond",  # answer `status` (and `body`) without processing the request
    "process_then",  # process the request, then answer `status` anyway
    "drop",  # close the connection without an answer, not processed
    "process_then_drop",  # process, then close without an answer
    "slow",  # wait `delay` seconds, then process and answer normally
    "trickle",  # answer `status` with its headers at once, the body a byte every `delay` s
    "trickle_headers",  # the status line and headers trickle too
)


@dataclass
class Fault:
    status: int = 500
    times: int = 1
    retry_after: float | None = None
    body: dict | None = None
    mode: str = "respond"
    delay: float = 5.0
    # Only requests to this path prefix, e.g. "/api/v2/batch"; None = any API path.
    path: str | None = None
    # Matching requests let through (answered normally) before the fault applies: a fault in
    # the middle of a run (an exit, the last request), not at its first request.
    skip: int = 0

    def applies_to(self, path: str) -> bool:
        return self.path is None or path.startswith(self.path)


class Faults:
    """A FIFO of injected faults, each applied to its next `times` API requests."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        if fault.mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}, not {fault.mode!r}")
        if fault.times < 1:
            raise ValueError("times must be >= 1")
        if fault.skip < 0:
            raise ValueError("skip must be >= 0")
        if fault.mode != "slow" and "drop" not in fault.mode and not 100 <= fault.status <= 599:
            raise ValueError(f"status must be an HTTP status, not {fault.status!r}")
        with self._lock:
            self._queue.append(fault)

    def take(self, path: str) -> Fault | None:
        # Only the head of the queue is considered: faults apply in the order they were queued.
        with self._lock:
            if not self._queue or not self._queue[0].applies_to(path):
                return None
            fault = self._queue[0]
            if fault.skip:
                fault.skip -= 1
                return None
            fault.times -= 1
            if fault.times <= 0:
                self._queue.popleft()
            return fault

    def pending(self) -> list[dict]:
        with self._lock:
            return [asdict(f) for f in self._queue]

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()


class Handler(Protocol):
    """What a fault answer needs of the request handler (server.py's _Handler)."""

    close_connection: bool
    connection: socket.socket
    wfile: Any

    def send_json(self, status: int, body: Any, headers: dict | None = None) -> None: ...


def answer(handler: Handler, fault: Fault, log: Any, ops: int = 0, errors: int = 0) -> None:
    """Answer the request as `fault` says; `log(status, ops, errors)` records it (0: no answer)."""
    if fault.mode.endswith("drop"):
        log(0, ops, errors)
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
        return
    log(fault.status, ops, errors)
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    body = fault.body or {"meta": {"error": phrase(fault.status)}}
    if fault.mode.startswith("trickle"):
        trickle(handler, fault, body, headers)
    else:
        handler.send_json(fault.status, body, headers)


def trickle(handler: Handler, fault: Fault, body: Any, headers: dict) -> None:
    """A server that answers, but never finishes answering in time: `trickle` sends the
    status line and headers at once, then the body one byte every `delay` seconds;
    `trickle_headers` sends the status line and headers that way too."""
    data = json.dumps(body, ensure_ascii=False).encode()
    head = [
        f"HTTP/1.1 {fault.status} {phrase(fault.status)}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(data)}",
        *(f"{name}: {value}" for name, value in headers.items()),
        "Connection: close",
    ]
    handler.close_connection = True
    head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode()
    slow = head_bytes + data if fault.mode == "trickle_headers" else data
    try:
        if fault.mode == "trickle":
            handler.wfile.write(head_bytes)
            handler.wfile.flush()
        for i in range(len(slow)):
            time.sleep(fault.delay)
            handler.wfile.write(slow[i : i + 1])
            handler.wfile.flush()
    except OSError:  # the client gave up: what a trickle is for
        pass
