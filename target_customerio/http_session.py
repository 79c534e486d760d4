"""HTTP sessions whose every try ends by its deadline: connect, headers and body.

requests' timeouts bound each socket operation, not the request: a server that sends its
answer one byte at a time, each just inside the timeout, holds a try for as long as it likes.
Two mechanisms bound it as a whole. While the connection is made (TLS included), the request
sent and its status line and headers read, a watchdog thread shuts the connection's socket
down when the deadline passes (the blocked read ends at once, and the try fails as a timeout).
The body is then read one network read at a time, each with the time that is left as its
socket timeout (`read_body`).

Plain Python on purpose (not compiled with the record path): it subclasses urllib3's classes.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_try = threading.local()  # the deadline of the try this thread is making, if any


class _Watch:
    """One connection to shut down at `deadline`, unless the try ends first."""

    __slots__ = ("connection", "deadline", "fired")

    def __init__(self, deadline: float, connection: HTTPConnection) -> None:
        self.deadline, self.connection, self.fired = deadline, connection, False


class _Watchdog:
    """A single thread that ends the tries whose deadline passed."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, connection: HTTPConnection) -> _Watch:
        watch = _Watch(deadline, connection)
        with self._wake:
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="http-deadlines", daemon=True
                )
                self._thread.start()
            self._wake.notify()
        return watch

    def disarm(self, watch: _Watch) -> None:
        with self._wake:
            watch.connection = None  # type: ignore[assignment]  # ended in time: nothing to do

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._heap and self._heap[0][2].connection is None:
                    heapq.heappop(self._heap)  # ended in time
                if not self._heap:
                    self._wake.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                watch = heapq.heappop(self._heap)[2]
                watch.fired = True
                _shut(watch.connection)


def _shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


WATCHDOG = _Watchdog()


class _Deadlined:
    """A urllib3 connection whose connecting (the TLS handshake too), request and response
    headers end by the try's deadline. (A DNS lookup happens before there is a socket to shut:
    only the resolver's own timeout bounds it.)"""

    _watch: _Watch | None = None

    def connect(self) -> None:
        self._start_watch()
        try:
            super().connect()  # type: ignore[misc]
        except BaseException:
            self._end_watch()
            raise

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._start_watch()
        try:
            super().request(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            self._end_watch()
            raise

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]
        except Exception as exc:
            if self._watch is not None and self._watch.fired:
                raise TimeoutError("no answer within the request deadline") from exc
            raise
        finally:
            self._end_watch()

    def _start_watch(self) -> None:
        """Watched from the first of connect and request (a kept-alive connection only
        requests) until the headers are read."""
        deadline = getattr(_try, "deadline", None)
        if self._watch is None and deadline is not None:
            self._watch = WATCHDOG.arm(deadline, self)  # type: ignore[arg-type]

    def _end_watch(self) -> None:
        if self._watch is not None:
            WATCHDOG.disarm(self._watch)
            self._watch = None


class _HTTPConnection(_Deadlined, HTTPConnection):
    pass


class _HTTPSConnection(_Deadlined, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def session() -> requests.Session:
    """A requests session whose tries honour `deadline()`."""
    new = requests.Session()
    adapter = _DeadlineAdapter()
    new.mount("http://", adapter)
    new.mount("https://", adapter)
    return new


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """The requests this thread makes inside the block end by `at` (time.monotonic())."""
    _try.deadline = at
    try:
        yield
    finally:
        _try.deadline = None


def read_body(response: requests.Response, at: float) -> bytes:
    """The body of a streamed response, or ReadTimeout once `at` passes: each read is one recv
    whose socket timeout is the time left, so no read runs past the deadline."""
    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    chunks: list[bytes] = []
    while True:
        left = at - time.monotonic()
        if left <= 0:
            raise requests.ReadTimeout(f"no whole answer from {response.url} within the timeout")
        if sock is not None:
            sock.settimeout(left)
        try:
            chunk = raw.read1(65536)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.ReadTimeout(str(exc)) from None
        except urllib3.exceptions.HTTPError as exc:  # reset, cut short, bad chunking
            raise requests.exceptions.ChunkedEncodingError(str(exc)) from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
