"""Mapping one record to one Customer.io operation (identify or event), or saying why not."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from decimal import Decimal
from typing import Any, Callable, Container, NamedTuple

import orjson

from target_customerio.ledger import hash64, scope_seed
from target_customerio.redaction import shown
from target_customerio.routes import Route
from target_customerio.tap_schema import Column, columns, value_class
from target_customerio.values import SCALARS, BadValue, plain, plain_number, snake_case, text_to_unix, to_unix

MAX_OPERATION_BYTES = 32_000
MAX_IDENTIFIER_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
MAX_EVENT_NAME_BYTES = 100
MAX_UNIX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
_MISSING: Any = object()  # "no value" where None is a value
_new = tuple.__new__  # a named tuple without its Python-level __new__ (per operation)
_from_bytes = int.from_bytes


def compiled() -> bool:
    """Whether the mapping modules run compiled (mypyc, see hatch_build.py), not interpreted."""
    return not __file__.endswith(".py")


class Rejected(Exception):
    """The record cannot be sent; it goes to the reject file."""

    def __init__(self, reason: str, field: str | None, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.field, self.message, self.rule = reason, field, message, rule


class _InOrder(Exception):
    """A record the fast payload path leaves to the in-order one."""


class Skipped(Exception):
    """The record is deliberately not sent (stale, duplicate); it is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Operation(NamedTuple):
    """One encoded batch operation, with what routes and accounts for it."""

    body: bytes
    shard_key: str
    record: dict[str, Any] | bytes | None  # the record, or its RECORD line as read; None once dropped
    ledger: tuple[int, int] | None = None  # (key, fingerprint) to record once it is accepted
    seen: int | None = None  # an event's dedupe key (64 bits): the sink sends each one once a run


_BLAKE2B_128 = hashlib.blake2b(digest_size=16)


def event_digest(event_name: str, key: list[Any]) -> bytes:
    """128 bits that are a pure function of the event name and its dedupe key."""
    text = "\x1f".join([event_name, *[str(v if type(v) in SCALARS else plain(v)) for v in key]])
    digest = _BLAKE2B_128.copy()  # a copy costs less than the constructor's keyword parsing
    digest.update(text.encode())
    return digest.digest()


def event_ulid(event_name: str, key: list[Any]) -> str:
    """The event's ULID: the same key gives the same id on every run and machine."""
    return ulid_text(event_digest(event_name, key))


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 characters


def ulid_text(value: bytes) -> str:
    """A ULID's text form: 128 bits as 26 Crockford base32 characters (2 zero bits in front).

    Ten bits make two characters: the first byte, behind the 2 zero bits, is the first pair;
    each 5 bytes after it are four pairs. (Shifting one 128-bit integer costs 30% more.)
    """
    p, a, b, c = _CROCKFORD_PAIRS, _from_bytes(value[1:6], "big"), _from_bytes(value[6:11], "big"), _from_bytes(value[11:16], "big")
    return "".join((
        p[value[0]],
        p[a >> 30], p[(a >> 20) & 0x3FF], p[(a >> 10) & 0x3FF], p[a & 0x3FF],
        p[b >> 30], p[(b >> 20) & 0x3FF], p[(b >> 10) & 0x3FF], p[b & 0x3FF],
        p[c >> 30], p[(c >> 20) & 0x3FF], p[(c >> 10) & 0x3FF], p[c & 0x3FF],
    ))


class Mapper:
    """Maps the records of one stream through its route. Not thread-safe: one per sink."""

    def __init__(
        self,
        route: Route,
        schema: dict[str, Any],
        *,
        now: float | None = None,
        on_event_name: Callable[[str, str], None] | None = None,
        ledger_scope: str | None = None,
        sent_events: Container[int] = frozenset(),
    ) -> None:
        self.route = route
        self._sent_events = sent_events  # dedupe keys of events already sent: a repeat is skipped before it is mapped
        # The ledger scope is workspace and stream (None: change detection off).
        self._ledger_seed = None if ledger_scope is None else scope_seed(ledger_scope)
        self.last_identifier: tuple[str, str] = ("id", "")
        self.last_timestamp = 0
        self._is_person = route.kind == "person"
        declared = columns(schema) or {}
        self._dates = frozenset(name for name, column in declared.items() if column.dates)
        # The tap's SCHEMA is the default contract: the columns whose declared types not every
        # value fits, and of those, the ones sent (checked on the fast path) with the Python
        # types that fit without looking at the value.
        self._declared = {name: column for name, column in declared.items() if column.checked}
        self._checked: list[str] = []  # the columns sent whose declared types are checked,
        self._fits: list[frozenset[type]] = []  # the Python types that fit each, and
        self._last_fit: list[type] = []  # the last type that fitted (a pointer compare, mostly)
        self._names: dict[str, str | None] = {}  # column -> attribute name (None: not sent)
        self._names_short = True  # no attribute name can fail Customer.io's name limit
        self._names_unique = True  # no two columns are sent under one name
        self._date_names: list[tuple[str, str]] = []  # date columns that are sent, and their names
        self._columns: set[str] = set()  # every column seen so far
        self._sent_names: set[str] = set()  # the attribute names columns are sent under
        self._dropped: list[str] = []  # the columns not sent
        self._copyable = True  # every column sent is sent under its own name
        self._event_names: dict[str, str] = {}
        self._on_event_name = on_event_name or (lambda raw, name: None)
        self._timestamp_column = route.timestamp or ""  # events only
        now = time.time() if now is None else now
        self._oldest = now - route.max_age.total_seconds() if route.max_age else None

    def map(self, record: dict[str, Any], native: bool = False) -> Operation:
        """The operation for a record; raises Rejected or Skipped.

        `native`: the record holds only what a strict JSON decoder returns (str, int, finite
        float, bool, None, list, dict), so its values are sent as they are, unwalked.
        """
        kind, value = self.last_identifier = self.identifier(record)
        if self._is_person:
            return self.operation(self._identify(record, kind, value, native), value, record, f"person:{kind}:{value}")
        event, seen = self._event(record, kind, value, native)
        self.last_timestamp = event["timestamp"]
        return self.operation(encode_operation(event), value, record, f"event:{event['id']}", seen)

    def operations(self, record: dict[str, Any], native: bool = False) -> list[Operation]:
        """Every operation the record becomes, in order: one, for people and events."""
        return [self.map(record, native)]

    def operation(self, body: bytes, shard_key: str, record: dict[str, Any], dedupe: str, seen: int | None = None) -> Operation:
        """Wrap an encoded operation, with its ledger entry when change detection is on.

        `dedupe` names what the operation is about; people and objects are fingerprinted by
        their content (a change sends them again), events and merges only by their identity.
        """
        if len(body) > MAX_OPERATION_BYTES:
            raise Rejected("operation_too_large", None, f"operation is {len(body)} bytes; Customer.io takes at most {MAX_OPERATION_BYTES}")
        if self._ledger_seed is None:
            return _new(Operation, (body, shard_key, record, None, seen))
        content = 0 if dedupe.startswith(("event:", "merge:")) else hash64(body)
        return _new(Operation, (body, shard_key, record, (hash64(dedupe.encode(), self._ledger_seed), content), seen))

    def identifier(self, record: dict[str, Any]) -> tuple[str, str]:
        """The route's identifier of a record: (type, value); raises Rejected."""
        kind = self.route.identifier_type
        return kind, identifier_value(record, self.route.identifier_field, kind)

    def payload(self, record: dict[str, Any], parsed: tuple[str, int] | None = None, native: bool = False) -> dict[str, Any]:
        """Outgoing attributes / event data: selected, renamed and normalised.

        The fast path makes one pass in C over the columns (a copy when no column is renamed,
        a comprehension otherwise; values are walked by `plain` only when the record is not
        `native`) and then converts the date columns. Any error, a new column or a name
        collision sends the record through `_payload_in_order`, the reference: it converts
        column by column and rejects at the first bad one. `parsed` is a date text already
        converted (an event's timestamp), and its unix seconds.
        """
        known, seconds = parsed or (_MISSING, 0)
        if not self._names_unique:
            return self._payload_in_order(record)
        names, tz = self._names, self.route.source_timezone
        try:
            if not native:
                out = {name: v if type(v) in SCALARS else plain(v, tz) for column, v in record.items() if (name := names[column]) is not None}
            elif self._copyable and record.keys() == self._columns:
                out = record.copy()
                for column in self._dropped:
                    del out[column]
            else:
                out = {name: v for column, v in record.items() if (name := names[column]) is not None}
            checked, last_fit = self._checked, self._last_fit
            for i in range(len(checked)):
                kind = type(record.get(checked[i]))
                if kind is not last_fit[i]:
                    if kind not in self._fits[i]:
                        raise _InOrder  # maybe a violation: the in-order path decides
                    last_fit[i] = kind
            for column, name in self._date_names:
                value = record.get(column)
                if value is known:
                    out[name] = seconds
                elif type(value) is str:  # a bad one takes the in-order path
                    out[name] = text_to_unix(value, tz)
        except Exception:  # noqa: BLE001 - redone in order, which raises the right error
            return self._payload_in_order(record)
        return out

    def _learn(self, column: str) -> str | None:
        """The attribute name of a column seen for the first time."""
        name = self._names[column] = self.route.attribute_name(column)
        self._columns.add(column)
        if name is None:
            self._dropped.append(column)
        else:
            self._copyable = self._copyable and name == column
            self._names_short = self._names_short and _short_name(name)
            self._names_unique = self._names_unique and name not in self._sent_names
            self._sent_names.add(name)
            if column in self._dates:
                self._date_names.append((column, name))
            if column in self._declared:
                self._checked.append(column)
                self._fits.append(self._declared[column].fast)
                self._last_fit.append(type(None))
        return name

    def _payload_in_order(self, record: dict[str, Any]) -> dict[str, Any]:
        names, dates, tz = self._names, self._dates, self.route.source_timezone
        declared = self._declared
        out: dict[str, Any] = {}
        for column, value in record.items():
            name = names.get(column, _MISSING)
            if name is _MISSING:
                name = self._learn(column)
            if name is None:
                continue
            declared_type = declared.get(column)
            if declared_type is not None and not _fits(value, declared_type):
                message = schema_violation(column, value, declared_type)
                raise Rejected("schema_violation", column, message)
            try:
                if column in dates and type(value) is str:
                    out[name] = text_to_unix(value, tz)
                else:
                    out[name] = plain(value, tz)
            except (BadValue, OverflowError, ValueError) as exc:
                raise Rejected("invalid_value", column, str(exc)) from None
            except RecursionError:
                raise Rejected("invalid_value", column, "nested too deeply") from None
        return out

    def check_contract(self, payload: dict[str, Any]) -> None:
        contract = self.route.contract
        if contract is None:
            return
        violation = contract.check(payload)
        if violation:
            raise Rejected("contract_violation", violation.field, violation.message, violation.rule)

    def _identify(self, record: dict[str, Any], kind: str, value: str, native: bool) -> bytes:
        """The encoded identify operation. Checks run in this order: limits, contract, encoding."""
        attributes = self.payload(record, native=native)
        _normalise_email(attributes)
        op = {"type": "person", "action": "identify", "identifiers": {kind: value}, "attributes": attributes}
        try:
            body = orjson.dumps(op)
        except orjson.JSONEncodeError:
            body = None
        # Encoded in at most 1000 bytes, no value can be over 1000 bytes (nor 300 attributes fit):
        # the per-attribute walk is needed only for larger operations or unusual names.
        if body is None or len(body) > MAX_ATTRIBUTE_VALUE_BYTES or not self._names_short:
            _check_person_limits(attributes)
        self.check_contract(attributes)
        return body if body is not None else encode_operation(op)

    def _event(self, record: dict[str, Any], kind: str, value: str, native: bool) -> tuple[dict[str, Any], int]:
        """The event operation, and its dedupe key: the first 64 bits of its id's digest."""
        timestamp = self._timestamp(record)
        if self._oldest is not None and timestamp < self._oldest:
            raise Skipped("stale")
        name = self._event_name(record)
        key = []
        for column in self.route.event_id:
            part = record.get(column)
            if part is None or part == "":
                raise Rejected("missing_event_id", column, f"{column} is empty; it is part of the event's dedupe key")
            key.append(part)
        digest = event_digest(name, key)
        seen = _from_bytes(digest[:8], "big")
        if seen in self._sent_events:  # another row of an event already sent (a view joined to line items)
            raise Skipped("duplicate")
        raw = record.get(self._timestamp_column)
        data = self.payload(record, (raw, timestamp) if type(raw) is str else None, native)
        _normalise_email(data)  # templates and segments compare it with the person's email
        self.check_contract(data)
        return {
            "type": "person", "action": "event", "identifiers": {kind: value},
            "name": name, "id": ulid_text(digest), "timestamp": timestamp, "attributes": data,
        }, seen

    def _timestamp(self, record: dict[str, Any]) -> int:
        column = self._timestamp_column
        raw = record.get(column)
        if raw is None or raw == "":
            raise Rejected("missing_timestamp", column, f"{column} is empty; an event is never stamped with sync time")
        try:
            if type(raw) is str:
                seconds = text_to_unix(raw, self.route.source_timezone)
            elif isinstance(raw, (int, float, Decimal)) and not isinstance(raw, bool):
                seconds = int(plain_number(raw))
                if seconds > 10**11:
                    raise BadValue(f"{raw} looks like milliseconds, not unix seconds")
            elif isinstance(raw, (dt.date, dt.datetime)):
                seconds = to_unix(raw, self.route.source_timezone)
            else:
                raise BadValue(f"{type(raw).__name__} is not a time")
        except (BadValue, OverflowError, ValueError, TypeError) as exc:
            raise Rejected("invalid_timestamp", column, str(exc)) from None
        if not 0 <= seconds <= MAX_UNIX_SECONDS:
            raise Rejected("invalid_timestamp", column, f"{raw} is outside 1970..9999")
        return seconds

    def _event_name(self, record: dict[str, Any]) -> str:
        if self.route.event_name:
            return self.route.event_name
        column = self.route.event_name_field or ""
        raw = record.get(column)
        if not isinstance(raw, str) or not raw.strip():
            raise Rejected("missing_event_name", column, f"{column} is empty; it names the event")
        name = self._event_names.get(raw)
        if name is None:
            name = self._event_names[raw] = snake_case(raw)
            self._on_event_name(raw, name)
        if not name or len(name.encode()) > MAX_EVENT_NAME_BYTES:
            raise Rejected("invalid_event_name", column, f"event name {shown(repr(raw), 120)} is empty or longer than {MAX_EVENT_NAME_BYTES} bytes")
        return name


def _fits(value: Any, declared: Column) -> bool:
    """Whether a value conforms to its column's declared types: by its type alone, mostly."""
    return type(value) in declared.fast or declared.conforms(value)


_CLASS_WORDS = {
    "boolean": "a boolean", "string": "a string", "object": "an object", "array": "an array",
    "integral": "an integer", "fraction": "a number with a fraction",
}


def schema_violation(column: str, value: Any, declared: Column) -> str:
    """Why a value contradicts its column's declared type (a tap bug, or a drifted column)."""
    held = _CLASS_WORDS.get(value_class(value) or "", type(value).__name__)
    preview = repr(value)
    if len(preview) > 60:
        preview = preview[:57] + "..."
    return f"{column} holds {held} ({preview}); the stream's SCHEMA declares {declared.declared}"


def _normalise_email(payload: dict[str, Any]) -> None:
    """An `email` attribute or event field is trimmed and lower-cased, as Customer.io compares
    emails (case-insensitively); a blank one is sent as null (removed)."""
    email = payload.get("email")
    if isinstance(email, str):
        payload["email"] = email.strip().lower() or None


def encode_operation(op: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(op)
    except orjson.JSONEncodeError as exc:
        raise Rejected("invalid_value", _unencodable_field(op), f"cannot encode as JSON: {exc}") from None


def _short_name(name: str) -> bool:
    """True when `name` passes the attribute name limit in `_check_person_limits` (without raising)."""
    if len(name) * 4 <= MAX_ATTRIBUTE_NAME_BYTES:
        return True
    try:
        return len(name.encode()) <= MAX_ATTRIBUTE_NAME_BYTES
    except UnicodeEncodeError:
        return False


def identifier_value(record: dict[str, Any], column: str, kind: str) -> str:
    """The identifier in `column` as Customer.io takes it (emails trimmed, lower-cased); raises Rejected."""
    raw = record.get(column)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise Rejected("missing_identifier", column, f"{column} is empty; every operation needs one {kind}")
    if type(raw) is bool:  # `True` is no one's id
        raise Rejected("invalid_identifier", column, f"{column} is a boolean, not a usable {kind}")
    try:
        value = raw if type(raw) is str else str(plain(raw))
        size = len(value.encode())
    except (BadValue, UnicodeEncodeError, RecursionError) as exc:
        raise Rejected("invalid_identifier", column, f"{column} is not a usable {kind}: {exc}") from None
    if kind == "email":
        value = value.strip().lower()
        if "@" not in value:
            raise Rejected("invalid_identifier", column, f"{column} is not an email address")
    if size > MAX_IDENTIFIER_BYTES:
        raise Rejected("invalid_identifier", column, f"{column} is longer than {MAX_IDENTIFIER_BYTES} bytes")
    return value


def _unencodable_field(op: dict[str, Any]) -> str | None:
    """The attribute that made encoding fail (error path only)."""
    for name, value in op.get("attributes", {}).items():
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return name
    return None


def _check_person_limits(attributes: dict[str, Any]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise Rejected("too_many_attributes", None, f"{len(attributes)} attributes; Customer.io takes at most {MAX_ATTRIBUTES}")
    for name, value in attributes.items():
        if len(name) * 4 > MAX_ATTRIBUTE_NAME_BYTES and len(name.encode()) > MAX_ATTRIBUTE_NAME_BYTES:
            raise Rejected("attribute_name_too_long", shown(name, 60), f"attribute name longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes")
        if _value_bytes(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise Rejected("attribute_value_too_large", name, f"value of {name} is over {MAX_ATTRIBUTE_VALUE_BYTES} bytes")


def _value_bytes(value: Any) -> int:
    kind = type(value)
    if kind is str:
        # surrogatepass: a lone surrogate is sized here and rejected, with its field, when encoded
        return len(value) if len(value) * 4 <= MAX_ATTRIBUTE_VALUE_BYTES else len(value.encode(errors="surrogatepass"))
    if kind is dict or kind is list:
        try:
            return len(orjson.dumps(value))
        except orjson.JSONEncodeError:  # too deep, or lone surrogates: rejected when encoded
            return 0
    return 0
