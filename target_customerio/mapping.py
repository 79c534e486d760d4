"""Mapping one record to one Customer.io operation (identify or event), or saying why not."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from ulid import ULID

from target_customerio.routes import Route
from target_customerio.values import BadValue, parse_datetime, plain, snake_case, to_unix

MAX_OPERATION_BYTES = 32_000
MAX_IDENTIFIER_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
MAX_EVENT_NAME_BYTES = 100
MAX_UNIX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
_MISSING = object()


class Rejected(Exception):
    """The record cannot be sent; it goes to the reject file."""

    def __init__(self, reason: str, field: str | None, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.field, self.message, self.rule = reason, field, message, rule


class Skipped(Exception):
    """The record is deliberately not sent (stale, duplicate); it is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Operation:
    """One encoded batch operation, with what routes and accounts for it."""

    body: bytes
    shard_key: str
    record: dict[str, Any]


def event_digest(event_name: str, key: list[Any]) -> bytes:
    """128 bits that are a pure function of the event name and its dedupe key."""
    text = "\x1f".join([event_name, *(str(plain(v)) for v in key)])
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def event_ulid(event_name: str, key: list[Any]) -> str:
    """The event's ULID: the same key gives the same id on every run and machine."""
    return str(ULID.from_bytes(event_digest(event_name, key)))


def date_columns(schema: dict[str, Any]) -> frozenset[str]:
    """Columns the stream's schema declares as date-time or date."""
    found = set()
    for name, prop in (schema.get("properties") or {}).items():
        options = [prop, *prop.get("anyOf", []), *prop.get("oneOf", [])] if isinstance(prop, dict) else []
        if any(isinstance(o, dict) and o.get("format") in ("date-time", "date") for o in options):
            found.add(name)
    return frozenset(found)


class Mapper:
    """Maps the records of one stream through its route. Not thread-safe: one per sink."""

    def __init__(
        self,
        route: Route,
        schema: dict[str, Any],
        *,
        now: float | None = None,
        on_event_name: Callable[[str, str], None] | None = None,
    ) -> None:
        self.route = route
        self._dates = date_columns(schema)
        self._names: dict[str, str | None] = {}
        self._event_names: dict[str, str] = {}
        self._on_event_name = on_event_name or (lambda raw, name: None)
        self._seen_events: set[int] = set()  # 64-bit prefixes of event digests: small at 1M events
        now = time.time() if now is None else now
        self._oldest = now - route.max_age.total_seconds() if route.max_age else None

    def map(self, record: dict[str, Any]) -> Operation:
        """The operation for a record; raises Rejected or Skipped."""
        if record.get("_sdc_operation_type") == "D" or record.get("_sdc_deleted_at"):
            # A CDC delete carries the deleted row: sending it would identify (resurrect) the
            # person or fire the event. Until routes choose an `on_delete`, skip and count it.
            raise Skipped("deleted")
        kind, value = self._identifier(record)
        if self.route.kind == "person":
            op = self._identify(record, kind, value)
        else:
            op = self._event(record, kind, value)
        try:
            body = orjson.dumps(op)
        except orjson.JSONEncodeError as exc:
            raise Rejected("invalid_value", _unencodable_field(op), f"cannot encode as JSON: {exc}") from None
        if len(body) > MAX_OPERATION_BYTES:
            raise Rejected("operation_too_large", None, f"operation is {len(body)} bytes; Customer.io takes at most {MAX_OPERATION_BYTES}")
        return Operation(body, value, record)

    def _identifier(self, record: dict[str, Any]) -> tuple[str, str]:
        column, kind = self.route.identifier_field, self.route.identifier_type
        raw = record.get(column)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise Rejected("missing_identifier", column, f"{column} is empty; every operation needs one {kind}")
        value = str(plain(raw))
        if kind == "email":
            value = value.strip().lower()
            if "@" not in value:
                raise Rejected("invalid_identifier", column, f"{column} is not an email address")
        if len(value.encode()) > MAX_IDENTIFIER_BYTES:
            raise Rejected("invalid_identifier", column, f"{column} is longer than {MAX_IDENTIFIER_BYTES} bytes")
        return kind, value

    def _payload(self, record: dict[str, Any]) -> dict[str, Any]:
        """Outgoing attributes / event data: selected, renamed and normalised."""
        names, dates, tz = self._names, self._dates, self.route.source_timezone
        out: dict[str, Any] = {}
        for column, value in record.items():
            name = names.get(column, _MISSING)
            if name is _MISSING:
                name = names[column] = self.route.attribute_name(column)
            if name is None:
                continue
            try:
                if column in dates and type(value) is str:
                    out[name] = to_unix(parse_datetime(value), tz)
                else:
                    out[name] = plain(value, tz)
            except (BadValue, OverflowError, ValueError) as exc:
                raise Rejected("invalid_value", column, str(exc)) from None
            except RecursionError:
                raise Rejected("invalid_value", column, "nested too deeply") from None
        return out

    def _check_contract(self, payload: dict[str, Any]) -> None:
        contract = self.route.contract
        if contract is None:
            return
        violation = contract.check(payload)
        if violation:
            raise Rejected("contract_violation", violation.field, violation.message, violation.rule)

    def _identify(self, record: dict[str, Any], kind: str, value: str) -> dict[str, Any]:
        attributes = self._payload(record)
        email = attributes.get("email")
        if isinstance(email, str):
            attributes["email"] = email.strip().lower() or None
        _check_person_limits(attributes)
        self._check_contract(attributes)
        return {"type": "person", "action": "identify", "identifiers": {kind: value}, "attributes": attributes}

    def _event(self, record: dict[str, Any], kind: str, value: str) -> dict[str, Any]:
        timestamp = self._timestamp(record)
        if self._oldest is not None and timestamp < self._oldest:
            raise Skipped("stale")
        name = self._event_name(record)
        data = self._payload(record)
        self._check_contract(data)
        key = []
        for column in self.route.event_id:
            part = record.get(column)
            if part is None or part == "":
                raise Rejected("missing_event_id", column, f"{column} is empty; it is part of the event's dedupe key")
            key.append(part)
        digest = event_digest(name, key)
        seen = int.from_bytes(digest[:8], "big")
        if seen in self._seen_events:
            raise Skipped("duplicate")
        self._seen_events.add(seen)
        return {
            "type": "person", "action": "event", "identifiers": {kind: value},
            "name": name, "id": str(ULID.from_bytes(digest)), "timestamp": timestamp, "attributes": data,
        }

    def _timestamp(self, record: dict[str, Any]) -> int:
        column = self.route.timestamp
        raw = record.get(column)
        if raw is None or raw == "":
            raise Rejected("missing_timestamp", column, f"{column} is empty; an event is never stamped with sync time")
        try:
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                seconds = int(raw)
                if seconds > 10**11:
                    raise BadValue(f"{raw} looks like milliseconds, not unix seconds")
            else:
                seconds = to_unix(raw, self.route.source_timezone)
        except (BadValue, OverflowError, ValueError, TypeError) as exc:
            raise Rejected("invalid_timestamp", column, str(exc)) from None
        if not 0 <= seconds <= MAX_UNIX_SECONDS:
            raise Rejected("invalid_timestamp", column, f"{raw} is outside 1970..9999")
        return seconds

    def _event_name(self, record: dict[str, Any]) -> str:
        if self.route.event_name:
            return self.route.event_name
        column = self.route.event_name_field
        raw = record.get(column)
        if not isinstance(raw, str) or not raw.strip():
            raise Rejected("missing_event_name", column, f"{column} is empty; it names the event")
        name = self._event_names.get(raw)
        if name is None:
            name = self._event_names[raw] = snake_case(raw)
            self._on_event_name(raw, name)
        if not name or len(name.encode()) > MAX_EVENT_NAME_BYTES:
            raise Rejected("invalid_event_name", column, f"event name {raw[:120]!r} is empty or longer than {MAX_EVENT_NAME_BYTES} bytes")
        return name


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
            raise Rejected("attribute_name_too_long", name[:60], f"attribute name longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes")
        if _value_bytes(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise Rejected("attribute_value_too_large", name, f"value of {name} is over {MAX_ATTRIBUTE_VALUE_BYTES} bytes")


def _value_bytes(value: Any) -> int:
    kind = type(value)
    if kind is str:
        return len(value) if len(value) * 4 <= MAX_ATTRIBUTE_VALUE_BYTES else len(value.encode())
    if kind is dict or kind is list:
        try:
            return len(orjson.dumps(value))
        except orjson.JSONEncodeError:  # too deep, or lone surrogates: rejected when encoded
            return 0
    return 0
