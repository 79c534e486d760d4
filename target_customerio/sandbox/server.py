"""The HTTP server and request handler: read the body, apply faults, auth and rate limit, dispatch.

Paths: `/api/...` is the Track API (track_v1.py, track_v2.py), `/v1/...` the App API
(app_api.py), `/_sandbox/...` the inspection API (inspection.py), any other GET a QA page
(page.py). Every API request is counted and logged, whatever it is answered, so the tests can
see what the target really sent.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from target_customerio.sandbox import app_api, faults, inspection, page, track_v1, track_v2
from target_customerio.sandbox.responses import UNAUTHORIZED, Response, error
from target_customerio.sandbox.validation import MAX_REQUEST_BYTES

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox

_MAX_READ_BYTES = 16 * 1024 * 1024  # beyond this the body is not even read


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def get_request(self):
        sock, addr = super().get_request()
        with self._conns_lock:
            self._conns.add(sock)
        return sock, addr

    def shutdown_request(self, request) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut kept-alive connections so a stopped sandbox answers nothing more."""
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up (what drop and trickle faults provoke) is not a sandbox error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms stalls
    server_version = "customerio-sandbox"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # silence per-request stderr lines
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---- plumbing ----

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise error(400, "invalid Content-Length") from None
        if length > _MAX_READ_BYTES:
            self.close_connection = True
            raise error(413, f"request body is larger than {MAX_REQUEST_BYTES} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > _MAX_READ_BYTES:
                self.close_connection = True
                raise error(413, f"request body is larger than {MAX_REQUEST_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, body: Any, headers: dict | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send(status, data, "application/json; charset=utf-8", headers)

    def _dispatch(self, method: str) -> None:
        sandbox = self.server.sandbox
        parts = urlsplit(self.path)
        path = parts.path
        try:
            if path.startswith(("/api/", "/v1/")):
                self._api(method, path, parse_qs(parts.query))
            elif path.startswith("/_sandbox/"):
                inspection.route(sandbox, method, path, parse_qs(parts.query), self.read_body)
            elif method == "GET":
                self._page(path)
            else:
                raise error(404, "not found")
        except Response as r:
            self.send_json(r.status, r.body)
        except Exception as exc:  # noqa: BLE001 - a bug in the sandbox: answer 500 and show it
            sandbox.store.count("sandbox_errors")
            self.server.handle_error(self.request, self.client_address)
            self.close_connection = True
            self.send_json(500, {"meta": {"error": f"sandbox error: {exc!r}"}})

    # ---- API ----

    def _api(self, method: str, path: str, query: dict) -> None:
        """One API request: faults first (they stand for the network and the server), then
        auth, rate limit and the route; logged with what it was answered."""
        store = self.server.sandbox.store
        try:
            body = self.read_body()
        except Response as r:
            store.log_request(method, path, r.status, 0, 0)
            raise
        store.count("app_requests" if path.startswith("/v1/") else "requests")

        def log(status: int, ops: int, errors: int) -> None:
            store.log_request(method, path, status, len(body), ops, errors)

        fault = self.server.sandbox.faults.take(path)
        if fault is not None:
            store.count(f"faults_{fault.mode}")
            if fault.mode == "slow":
                time.sleep(fault.delay)
            elif fault.mode in ("respond", "drop", "trickle", "trickle_headers"):
                return faults.answer(self, fault, log)
        status, payload, ops, errors = self._process(method, path, query, body)
        if fault is not None and fault.mode in ("process_then", "process_then_drop"):
            return faults.answer(self, fault, log, ops, errors)
        log(status, ops, errors)
        self.send_json(status, payload)

    def _process(
        self, method: str, path: str, query: dict, body: bytes
    ) -> tuple[int, Any, int, int]:
        """Auth, rate limit, route: (status, JSON body, ops, item errors)."""
        sandbox = self.server.sandbox
        authorization = self.headers.get("Authorization")
        try:
            if path.startswith("/v1/"):
                app_api.handle(sandbox, method, path, query, authorization, body)  # raises
            if not sandbox.authorized(authorization):
                sandbox.store.count("unauthorized")
                raise Response(401, UNAUTHORIZED)
            if sandbox.bucket is not None and not sandbox.bucket.allow():
                sandbox.store.count("rate_limited")
                raise error(429, "Too many requests")
            track = track_v2 if path.startswith("/api/v2/") else track_v1
            if not track.route(sandbox, method, path, query, body):
                raise error(404, f"no route for {method} {path}")
            return 200, {}, 0, 0
        except Response as r:
            return r.status, r.body, r.ops, r.errors

    # ---- pages ----

    def _page(self, path: str) -> None:
        status, html = page.render(self.server.sandbox, path)
        self.send(status, html.encode(), "text/html; charset=utf-8")
