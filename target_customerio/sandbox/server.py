"""A local stand-in for the Customer.io Track API: HTTP handling, auth, limits, faults, rate limit.

Stdlib only (http.server + sqlite3). Used by the test suite (fault injection, inspection) and by
people as a QA workspace: `target-customerio-sandbox`, then open the printed URL.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
import orjson

from target_customerio.sandbox import page
from target_customerio.sandbox.store import Store

MAX_REQUEST_BYTES = 500 * 1024
MAX_OP_BYTES = 32 * 1024
MAX_ID_BYTES = 150
MAX_ATTRIBUTES = 300
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100 * 1024
_MAX_READ_BYTES = 16 * 1024 * 1024  # beyond this the body is not even read

REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
FAULT_MODES = ("respond", "process_then", "drop", "process_then_drop", "slow", "trickle",
               "trickle_headers")
PERSON_ACTIONS = ("identify", "event", "delete", "suppress", "unsuppress", "merge")
OBJECT_ACTIONS = ("identify", "delete")
IDENTIFIER_KINDS = ("id", "email", "cio_id")
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
UNAUTHORIZED = {"meta": {"error": "Unauthorized request"}}


class OpError(Exception):
    """One invalid operation: becomes an item of a 207 `errors` list (or a 400 on v1)."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.item = {"reason": reason, "field": field, "message": message}


# ---- validation -----------------------------------------------------------------------------


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _value_size(value: Any) -> int:
    # A string's limit is on its text, not on its quoted JSON form.
    return len(value.encode()) if isinstance(value, str) else _size(value)


def _identifier(obj: Any, field: str) -> tuple[str, str]:
    """Exactly one of id / email / cio_id, normalised (email lower-cased, id as text)."""
    if not isinstance(obj, dict) or not obj:
        raise OpError("required", field, f"{field} must be an object with one of id, email, cio_id")
    unknown = sorted(set(obj) - set(IDENTIFIER_KINDS))
    if unknown:
        raise OpError("invalid", f"{field}.{unknown[0]}", f"unknown identifier {unknown[0]!r}")
    if len(obj) != 1:
        raise OpError("invalid", field, f"{field} must hold exactly one of id, email, cio_id")
    kind, value = next(iter(obj.items()))
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise OpError("invalid", f"{field}.{kind}", f"{kind} must be a non-empty string")
    if isinstance(value, int) and kind != "id":
        raise OpError("invalid", f"{field}.{kind}", f"{kind} must be a string")
    value = str(value)
    if len(value.encode()) > MAX_ID_BYTES:
        raise OpError("too_long", f"{field}.{kind}", f"{kind} is longer than {MAX_ID_BYTES} bytes")
    if kind == "email":
        if "@" not in value:
            raise OpError("invalid", f"{field}.email", f"{value!r} is not an email address")
        value = value.lower()
    return kind, value


def _attributes(obj: Any, field: str = "attributes") -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise OpError("invalid", field, f"{field} must be an object")
    if len(obj) > MAX_ATTRIBUTES:
        raise OpError("too_many", field, f"more than {MAX_ATTRIBUTES} attributes ({len(obj)})")
    for name, value in obj.items():
        if len(name.encode()) > MAX_ATTRIBUTE_NAME_BYTES:
            raise OpError(
                "too_long", f"{field}.{name}", f"name longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes"
            )
        if _value_size(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise OpError(
                "too_long",
                f"{field}.{name}",
                f"value of {name!r} is larger than {MAX_ATTRIBUTE_VALUE_BYTES} bytes",
            )
    return obj


def _timestamp(value: Any, field: str = "timestamp") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpError("invalid", field, f"{field} must be an integer (unix seconds), got {value!r}")
    return value


def _event_fields(op: dict, measure_data: bool = True) -> dict:
    name = op.get("name")
    if not isinstance(name, str) or not name:
        raise OpError("required", "name", "event name is required")
    if len(name.encode()) > MAX_EVENT_NAME_BYTES:
        raise OpError("too_long", "name", f"event name is longer than {MAX_EVENT_NAME_BYTES} bytes")
    event_id = op.get("id")
    if event_id is not None:
        if not isinstance(event_id, str) or not _ULID.fullmatch(event_id.upper()):
            raise OpError("invalid", "id", f"event id must be a ULID, got {event_id!r}")
        event_id = event_id.upper()
    data = op.get("attributes")
    if data is not None and not isinstance(data, dict):
        raise OpError("invalid", "attributes", "event attributes must be an object")
    if data is not None and measure_data and _size(data) > MAX_EVENT_DATA_BYTES:
        limit = MAX_EVENT_DATA_BYTES
        raise OpError("too_large", "attributes", f"event data is larger than {limit} bytes")
    return {
        "name": name,
        "id": event_id,
        "timestamp": _timestamp(op.get("timestamp")),
        "attributes": data or {},
    }


def _person_op(op: dict, action: str, measure_data: bool = True) -> dict:
    if action == "merge":
        return {
            "primary": _identifier(op.get("primary"), "primary"),
            "secondary": _identifier(op.get("secondary"), "secondary"),
        }
    out: dict[str, Any] = {"identifier": _identifier(op.get("identifiers"), "identifiers")}
    if action == "identify":
        out["attributes"] = _attributes(op.get("attributes"))
        out["timestamp"] = _timestamp(op.get("timestamp"))
    elif action == "event":
        out.update(_event_fields(op, measure_data))
    return out


def _object_op(op: dict, action: str) -> dict:
    ids = op.get("identifiers")
    if not isinstance(ids, dict) or not ids.get("object_type_id") or not ids.get("object_id"):
        raise OpError("required", "identifiers", "object ops need object_type_id and object_id")
    relationships = op.get("cio_relationships") or []
    if not isinstance(relationships, list):
        raise OpError("invalid", "cio_relationships", "cio_relationships must be a list")
    for i, rel in enumerate(relationships):
        _identifier(
            rel.get("identifiers") if isinstance(rel, dict) else None,
            f"cio_relationships[{i}].identifiers",
        )
    return {
        "object_type_id": str(ids["object_type_id"]),
        "object_id": str(ids["object_id"]),
        "attributes": _attributes(op.get("attributes")),
        "cio_relationships": relationships,
    }


def validate_op(op: Any, body_bytes: int | None = None, op_limit: bool = True) -> dict:
    """Check one v2 operation against the Track API rules; return it normalised or raise.

    `body_bytes` is the size of the request the op came in: re-serialising to measure sizes is
    the slow part, and a size limit larger than the whole body cannot be exceeded.
    """
    if not isinstance(op, dict):
        raise OpError("invalid", "", "operation must be an object")
    measure_op = op_limit and (body_bytes is None or body_bytes > MAX_OP_BYTES)
    measure_data = body_bytes is None or body_bytes > MAX_EVENT_DATA_BYTES
    if measure_op and _size(op) > MAX_OP_BYTES:
        raise OpError("too_large", "", f"operation is larger than {MAX_OP_BYTES} bytes")
    kind, action = op.get("type"), op.get("action")
    if kind not in ("person", "object"):
        raise OpError("invalid" if kind else "required", "type", f"unsupported type {kind!r}")
    if not isinstance(action, str) or not action:
        raise OpError("required", "action", "action is required")
    allowed = PERSON_ACTIONS if kind == "person" else OBJECT_ACTIONS
    if action not in allowed:
        raise OpError("invalid", "action", f"unsupported {kind} action {action!r}")
    if kind == "object":
        return {"type": kind, "action": action, **_object_op(op, action)}
    body = _person_op(op, action, measure_data)
    return {"type": kind, "action": action, **body}


# ---- faults and rate limit ------------------------------------------------------------------


@dataclass
class Fault:
    status: int = 500
    times: int = 1
    retry_after: float | None = None
    body: dict | None = None
    mode: str = "respond"
    delay: float = 5.0
    path: str | None = None  # only requests to this path prefix, e.g. "/api/v2/batch"; None = any API path

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
        if fault.mode != "slow" and "drop" not in fault.mode and not 100 <= fault.status <= 599:
            raise ValueError(f"status must be an HTTP status, not {fault.status!r}")
        with self._lock:
            self._queue.append(fault)

    def take(self, path: str) -> Fault | None:
        with self._lock:
            if not self._queue or not self._queue[0].applies_to(path):
                return None
            fault = self._queue[0]
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


class TokenBucket:
    """`rate` requests per second with a one-second burst (capacity = rate)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.tokens = self.capacity = max(float(rate), 1.0)
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


# ---- HTTP -----------------------------------------------------------------------------------


class Response(Exception):
    """Raised inside a route to answer at once with a status and a JSON body."""

    def __init__(self, status: int, body: Any, ops: int = 0, errors: int = 0) -> None:
        super().__init__(status)
        self.status, self.body, self.ops, self.errors = status, body, ops, errors


def _error(status: int, message: str) -> Response:
    return Response(status, {"meta": {"error": message}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

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
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms stalls
    server_version = "customerio-sandbox"
    server: _Server

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

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise _error(400, "invalid Content-Length") from None
        if length > _MAX_READ_BYTES:
            self.close_connection = True
            raise _error(413, f"request body is larger than {MAX_REQUEST_BYTES} bytes")
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
                raise _error(413, f"request body is larger than {MAX_REQUEST_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, body: Any, headers: dict | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self._send(status, data, "application/json; charset=utf-8", headers)

    def _dispatch(self, method: str) -> None:
        sandbox = self.server.sandbox
        parts = urlsplit(self.path)
        path = parts.path
        try:
            if path.startswith("/api/"):
                self._api(method, path)
            elif path.startswith("/_sandbox/"):
                self._inspection(method, path, parse_qs(parts.query))
            elif method == "GET":
                self._page(path)
            else:
                raise _error(404, "not found")
        except Response as r:
            self._send_json(r.status, r.body)
        except Exception as exc:  # a bug in the sandbox: answer 500 and show it
            sandbox.store.count("sandbox_errors")
            self.server.handle_error(self.request, self.client_address)
            self.close_connection = True
            self._send_json(500, {"meta": {"error": f"sandbox error: {exc!r}"}})

    # ---- API ----

    def _api(self, method: str, path: str) -> None:
        sandbox = self.server.sandbox
        try:
            body = self._read_body()
        except Response as r:
            sandbox.store.log_request(method, path, r.status, 0, 0)
            raise
        sandbox.store.count("requests")
        fault = sandbox.faults.take(path)
        if fault is not None:
            sandbox.store.count(f"faults_{fault.mode}")
            if fault.mode == "slow":
                time.sleep(fault.delay)
            elif fault.mode in ("respond", "drop", "trickle", "trickle_headers"):
                return self._fault_answer(fault, method, path, body, 0, 0)
        status, payload, ops, errors = self._process(method, path, body)
        if fault is not None and fault.mode in ("process_then", "process_then_drop"):
            return self._fault_answer(fault, method, path, body, ops, errors)
        sandbox.store.log_request(method, path, status, len(body), ops, errors)
        self._send_json(status, payload)

    def _fault_answer(self, fault: Fault, method, path, body: bytes, ops: int, errors: int):
        store = self.server.sandbox.store
        if fault.mode.endswith("drop"):
            store.log_request(method, path, 0, len(body), ops, errors)  # status 0: no answer
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        store.log_request(method, path, fault.status, len(body), ops, errors)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        phrase = _phrase(fault.status)
        if fault.mode.startswith("trickle"):
            return self._trickle(fault, fault.body or {"meta": {"error": phrase}}, headers)
        self._send_json(fault.status, fault.body or {"meta": {"error": phrase}}, headers)

    def _trickle(self, fault: Fault, body: Any, headers: dict) -> None:
        """A server that answers, but never finishes answering in time: `trickle` sends the
        status line and headers at once, then the body one byte every `delay` seconds;
        `trickle_headers` sends the status line and headers that way too."""
        data = json.dumps(body, ensure_ascii=False).encode()
        head = [f"HTTP/1.1 {fault.status} {_phrase(fault.status)}",
                "Content-Type: application/json; charset=utf-8", f"Content-Length: {len(data)}",
                *(f"{name}: {value}" for name, value in headers.items()), "Connection: close"]
        self.close_connection = True
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode()
        slow = head_bytes + data if fault.mode == "trickle_headers" else data
        try:
            if fault.mode == "trickle":
                self.wfile.write(head_bytes)
                self.wfile.flush()
            for i in range(len(slow)):
                time.sleep(fault.delay)
                self.wfile.write(slow[i:i + 1])
                self.wfile.flush()
        except OSError:  # the client gave up: what a trickle is for
            pass

    def _process(self, method: str, path: str, body: bytes) -> tuple[int, Any, int, int]:
        """Auth, rate limit, route: (status, JSON body, ops, item errors)."""
        sandbox = self.server.sandbox
        try:
            if not sandbox.authorized(self.headers.get("Authorization")):
                sandbox.store.count("unauthorized")
                raise Response(401, UNAUTHORIZED)
            if sandbox.bucket is not None and not sandbox.bucket.allow():
                sandbox.store.count("rate_limited")
                raise _error(429, "Too many requests")
            self._route(method, path, body)
            return 200, {}, 0, 0
        except Response as r:
            return r.status, r.body, r.ops, r.errors

    def _route(self, method: str, path: str, body: bytes) -> None:
        """Handle one API call; returning means 200 `{}`, anything else is raised as a Response."""
        sandbox = self.server.sandbox
        if path == "/api/v2/batch" and method == "POST":
            return sandbox.batch(body)
        if path == "/api/v2/entity" and method == "POST":
            return sandbox.entity(body)
        if path == "/api/v1/accounts/region" and method == "GET":
            raise Response(200, sandbox.region_info())
        if path == "/api/v1/merge_customers" and method == "POST":
            data = _json_object(body)
            return sandbox.v1_op({"type": "person", "action": "merge", **data})
        match = re.fullmatch(r"/api/v1/customers/([^/]+)(/events|/suppress|/unsuppress)?", path)
        if match:
            op = _v1_op(method, _v1_identifiers(match.group(1)), match.group(2), body)
            if op is not None:
                return sandbox.v1_op(op)
        raise _error(404, f"no route for {method} {path}")

    # ---- inspection API and pages ----

    def _inspection(self, method: str, path: str, query: dict) -> None:
        sandbox = self.server.sandbox
        name = path[len("/_sandbox/") :].strip("/")
        if method == "GET":
            first = {k: v[0] for k, v in query.items() if k in ("id", "email", "cio_id")}
            getters = {
                "people": sandbox.people,
                "events": sandbox.events,
                "requests": sandbox.requests,
                "objects": sandbox.objects,
                "counters": sandbox.counters,
                "faults": sandbox.faults.pending,
                "person": lambda: sandbox.person(**first),
            }
            if name in getters:
                raise Response(200, getters[name]())
        body = self._read_body()
        if method == "POST" and name == "faults":
            try:
                sandbox.inject(**_json_object(body))
            except (TypeError, ValueError) as exc:
                raise _error(400, str(exc)) from None
            raise Response(200, sandbox.faults.pending())
        if method == "DELETE" and name == "faults":
            sandbox.clear_faults()
            raise Response(200, [])
        if method == "POST" and name == "reset":
            sandbox.reset()
            raise Response(200, {})
        raise _error(404, f"no inspection route for {method} {path}")

    def _page(self, path: str) -> None:
        store = self.server.sandbox.store
        if path == "/":
            html = page.render_index(store, self.server.sandbox.counters())
        elif path.startswith("/people/"):
            html = page.render_person(store, unquote(path[len("/people/") :]))
        else:
            html = None
        if html is None:
            html, status = page.render_not_found(path), 404
        else:
            status = 200
        self._send(status, html.encode(), "text/html; charset=utf-8")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


class _UncheckedBatch(msgspec.Struct):
    batch: list[msgspec.Raw]


_decode_unchecked = msgspec.json.Decoder(_UncheckedBatch).decode


def _unchecked_count(body: bytes) -> int | None:
    """The operations in a well-formed batch, read without building them (10x cheaper than
    parsing: a benchmark's server must not take the CPU from the target it measures); None
    when the body is not one, for the full parse to answer why."""
    try:
        return len(_decode_unchecked(body).batch)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _json_object(body: bytes) -> dict:
    try:
        data = orjson.loads(body or b"{}")  # strict JSON, as Customer.io reads it: no NaN
    except ValueError:
        raise _error(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _error(400, "request body must be a JSON object")
    return data


def _v1_op(method: str, identifiers: dict, suffix: str | None, body: bytes) -> dict | None:
    """The v2 operation a v1 customers call stands for (None: no such route)."""
    base = {"type": "person", "identifiers": identifiers}
    if suffix is None and method == "PUT":
        return {**base, "action": "identify", "attributes": _json_object(body)}
    if suffix is None and method == "DELETE":
        return {**base, "action": "delete"}
    if suffix == "/events" and method == "POST":
        data = _json_object(body)
        event = {k: data[k] for k in ("name", "id", "timestamp") if k in data}
        return {**base, "action": "event", **event, "attributes": data.get("data")}
    if suffix in ("/suppress", "/unsuppress") and method == "POST":
        return {**base, "action": suffix[1:]}
    return None


def _v1_identifiers(segment: str) -> dict:
    """v1 paths name a person by id, by email (has an @) or by cio_id (`cio_` prefix)."""
    value = unquote(segment)
    if value.startswith("cio_"):
        return {"cio_id": value[4:]}
    return {"email": value} if "@" in value else {"id": value}


# ---- the public object ----------------------------------------------------------------------


class Sandbox:
    """A local Track API. `with Sandbox() as sb: ...` or `sb.start()` / `sb.stop()`."""

    def __init__(
        self,
        site_id: str = "site",
        api_key: str = "secret",
        db_path: str = ":memory:",
        region: str = "us",
        port: int = 0,
        rate_limit: float | None = None,
        store: bool = True,
        host: str = "127.0.0.1",
        validate: bool = True,
    ) -> None:
        """`store=False` keeps nothing but counters and the request log (benchmarks); with
        `validate=False` as well, a well-formed batch is accepted without checking its operations
        (nor decoding them: only the JSON's structure is read), as fast as this server can
        (auth, size limit, rate limit and faults still apply)."""
        if region not in REGION_URLS:
            raise ValueError(f"region must be one of {sorted(REGION_URLS)}")
        self.site_id, self.api_key, self.region = site_id, api_key, region
        self.host, self.port = host, port
        self.store = Store(db_path, persist=store)
        self.validate = validate or store  # stored data is always validated first
        self.faults = Faults()
        self.bucket = TokenBucket(rate_limit) if rate_limit else None
        self._auth = "Basic " + base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> Sandbox:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]  # a restart keeps the same port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"cio-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; the data stays readable through people(), events() etc."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- Track API behaviour ----

    def authorized(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header.encode(), self._auth.encode())

    def region_info(self) -> dict:
        return {
            "url": REGION_URLS[self.region],
            "data_center": self.region,
            "environment_id": 1,
            "region": self.region,
        }

    def batch(self, body: bytes) -> None:
        """POST /api/v2/batch: raises the Response (200, 207, 400 or 413)."""
        if len(body) > MAX_REQUEST_BYTES:
            raise _error(413, f"request body is larger than {MAX_REQUEST_BYTES} bytes")
        if not self.validate:
            count = _unchecked_count(body)
            if count is not None:
                self.store.count("ops_unchecked", count)
                raise Response(200, {}, count)
        ops = _json_object(body).get("batch")
        if not isinstance(ops, list):
            raise _error(400, 'body must be {"batch": [operations]}')
        valid, errors = [], []
        for index, op in enumerate(ops):
            try:
                valid.append((index, validate_op(op, len(body))))
            except OpError as exc:
                errors.append({"batch_index": index, **exc.item})
        self.store.count("item_errors", len(errors))
        errors += self.store.apply(valid)
        errors.sort(key=lambda e: e["batch_index"])
        if errors:
            raise Response(207, {"errors": errors}, len(ops), len(errors))
        raise Response(200, {}, len(ops))

    def entity(self, body: bytes) -> None:
        """POST /api/v2/entity: one v2 operation."""
        if len(body) > MAX_OP_BYTES:
            raise _error(413, f"request body is larger than {MAX_OP_BYTES} bytes")
        try:
            errors = self.store.apply([(0, validate_op(_json_object(body), len(body)))])
        except OpError as exc:
            errors = [exc.item]
        if errors:
            raise Response(400, {"errors": errors}, 0, 1)

    def v1_op(self, op: dict) -> None:
        """A v1 call expressed as a v2 op; an invalid one is a 400 (v1 has no 32 KB op limit)."""
        try:
            errors = self.store.apply([(0, validate_op(op, op_limit=False))])
        except OpError as exc:
            errors = [exc.item]
        if errors:
            raise Response(400, {"meta": {"error": errors[0]["message"]}}, 0, 1)

    # ---- inspection and control ----

    def people(self) -> list[dict]:
        return self.store.people()

    def person(
        self, id: str | None = None, email: str | None = None, cio_id: str | None = None
    ) -> dict | None:
        return self.store.person(id=id, email=email, cio_id=cio_id)

    def events(self) -> list[dict]:
        return self.store.events()

    def objects(self) -> list[dict]:
        return self.store.objects()

    def requests(self) -> list[dict]:
        return self.store.requests()

    def counters(self) -> dict:
        counts = {"duplicate_events_dropped": 0, "rate_limited": 0}
        counts.update(self.store.counters_snapshot())
        return counts

    def inject(
        self,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        body: dict | None = None,
        mode: str = "respond",
        delay: float = 5.0,
        path: str | None = None,
    ) -> None:
        """Queue a fault for the next `times` API requests to `path` (any, if None; see FAULT_MODES)."""
        self.faults.add(Fault(int(status), int(times), retry_after, body, mode, float(delay), path))

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset(self) -> None:
        self.store.reset()
        self.faults.clear()


# ---- console script -------------------------------------------------------------------------


def _loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback and ":" not in host:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r}: only an IPv4 loopback address is allowed")


def main(argv: list[str] | None = None) -> None:
    """`target-customerio-sandbox`: serve a local Track API and QA page until Ctrl-C/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="target-customerio-sandbox",
        description="Local Customer.io Track API sandbox with a QA web page.",
    )
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--db", default="sandbox.sqlite", help="SQLite file (':memory:' for none)")
    parser.add_argument(
        "--site-id", default=os.environ.get("TARGET_CUSTOMERIO_SITE_ID", "sandbox-site")
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("TARGET_CUSTOMERIO_API_KEY", "sandbox-key")
    )
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    parser.add_argument("--region", choices=sorted(REGION_URLS), default="us")
    args = parser.parse_args(argv)

    sandbox = Sandbox(
        site_id=args.site_id,
        api_key=args.api_key,
        db_path=args.db,
        region=args.region,
        port=args.port,
        rate_limit=args.rate_limit,
        host=args.host,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        sandbox.start()
    except OSError as exc:
        parser.exit(1, f"cannot listen on {args.host}:{args.port}: {exc}\n")
    with sandbox:
        print(
            f"Customer.io sandbox: {sandbox.url}  (site_id {args.site_id!r}, db {args.db})",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    print("sandbox stopped", file=sys.stderr)
