"""`kind: event`: a track event, stamped with when it happened at the source, with an id derived
from its dedupe key (a re-send never fires twice), and optionally that time mirrored onto the
person (`mirror_to_attribute`)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from target_customerio.errors import ConfigError
from target_customerio.identity import USE_KEYS, IdentityOptions, identity_options
from target_customerio.operations import delete
from target_customerio.operations.event_ids import dedupe_key, event_digest, ulid_text
from target_customerio.operations.identifiers import identifier_value
from target_customerio.operations.operation import (
    Builder,
    Built,
    Context,
    Finisher,
    Kind,
    Operation,
    Rejected,
    Skipped,
    encode,
    repeated,
)
from target_customerio.operations.payload import Payload, normalise_email
from target_customerio.operations.timestamps import source_time
from target_customerio.redaction import shown
from target_customerio.routes import (
    Identifier,
    KindOptions,
    Route,
    column_option,
    columns_option,
    identifier_option,
    max_campaign_entries_option,
)
from target_customerio.values import parse_duration, snake_case

MAX_EVENT_NAME_BYTES = 100
# An event stamped later than this past now is refused: a future replication-key value would
# become the tap's INCREMENTAL bookmark and hide every row until then (docs/meltano.md).
DEFAULT_MAX_FUTURE = dt.timedelta(hours=1)
_new = tuple.__new__


@dataclass(frozen=True)
class EventOptions(KindOptions):
    identifier: Identifier
    event_name: str | None  # snake_case; None: named by `event_name_field`
    event_name_field: str | None
    event_id: tuple[str, ...]  # the dedupe key's columns
    timestamp: str  # the column holding when it happened
    max_age: dt.timedelta | None = None
    mirror_to_attribute: str | None = None
    identity: IdentityOptions = IdentityOptions()  # identity.py
    max_campaign_entries: int | None = None  # overrides the setting for this route's events
    max_future: dt.timedelta = DEFAULT_MAX_FUTURE

    def columns_named(self) -> list[tuple[str, str]]:
        named = [("identifier.field", self.identifier.field)]
        named += [("event_id", column) for column in self.event_id]
        named.append(("timestamp", self.timestamp))
        if self.event_name_field:
            named.append(("event_name_field", self.event_name_field))
        return named

    def identity_columns(self) -> tuple[str, ...]:
        return (self.identifier.field, *([self.event_name_field] if self.event_name_field else []))


def options(where: str, spec: dict[str, Any]) -> EventOptions:
    name, name_field = spec.get("event_name"), spec.get("event_name_field")
    if bool(name) == bool(name_field):
        raise ConfigError(
            f"{where}: an event route needs exactly one of `event_name` or `event_name_field`"
        )
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}.event_name: the name of the event, as text")
    if name and not snake_case(name):
        raise ConfigError(f"{where}.event_name: {name!r} has no letters or digits")
    if name_field:
        column_option(f"{where}.event_name_field", name_field)
    if not spec.get("timestamp"):
        raise ConfigError(
            f"{where}.timestamp: an event route names the column holding when it happened"
        )
    column_option(f"{where}.timestamp", spec["timestamp"])
    if not spec.get("event_id"):
        raise ConfigError(
            f"{where}.event_id: name the column(s) that identify one event (the dedupe key)"
        )
    mirror = spec.get("mirror_to_attribute")
    if mirror is not None and (not isinstance(mirror, str) or not mirror.strip()):
        raise ConfigError(
            f"{where}.mirror_to_attribute: the person attribute to set to the event's time"
        )
    return EventOptions(
        identifier=identifier_option(f"{where}.identifier", spec.get("identifier")),
        event_name=snake_case(name) if name else None,
        event_name_field=name_field,
        event_id=columns_option(f"{where}.event_id", spec["event_id"]),
        timestamp=spec["timestamp"],
        max_age=_max_age(where, spec.get("max_age")),
        mirror_to_attribute=mirror,
        identity=identity_options(where, spec),
        max_campaign_entries=max_campaign_entries_option(
            f"{where}.max_campaign_entries", spec.get("max_campaign_entries")
        ),
        max_future=_max_future(where, spec.get("max_future")),
    )


def _max_future(where: str, value: Any) -> dt.timedelta:
    if value is None:
        return DEFAULT_MAX_FUTURE
    if not isinstance(value, str):
        raise ConfigError(
            f"{where}.max_future: must be text such as 1h, not {type(value).__name__}"
        )
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{where}.max_future: {exc}") from None


def _max_age(where: str, value: Any) -> dt.timedelta | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.max_age: must be text, not {type(value).__name__}")
    try:
        max_age = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{where}.max_age: {exc}") from None
    if not max_age:
        raise ConfigError(
            f"{where}.max_age: 0 would skip every event; leave it out to keep them all"
        )
    return max_age


class EventBuilder(Builder):
    def __init__(self, route: Route, schema: dict[str, Any], context: Context) -> None:
        o: EventOptions = route.options
        self._field, self._type = o.identifier.field, o.identifier.type
        self._name, self._name_field = o.event_name, o.event_name_field or ""
        self._key_columns = o.event_id
        self._time_column = o.timestamp
        self._mirror = o.mirror_to_attribute
        self._tz = route.source_timezone
        self._oldest = context.now - o.max_age.total_seconds() if o.max_age else None
        self._max_future = o.max_future.total_seconds()
        # dedupe keys of the events this process built last: a repeat is not built again
        self._sent: Container[int] = context.sent_events
        self._names: dict[str, str] = {}  # event names as the source spells them -> as sent
        self._on_name: Callable[[str, str], None] = context.on_event_name or _ignore
        self._payload = Payload(route, schema)
        self._finisher = Finisher(context.ledger_scope)

    def build(self, record: dict[str, Any], native: bool = False) -> Built:
        if delete.marks_delete(record) and delete.is_delete(record):
            raise Skipped("deleted")  # an event happened: a deleted row does not undo it
        kind = self._type
        value = identifier_value(record, self._field, kind)
        timestamp = source_time(record, self._time_column, self._tz)
        if self._oldest is not None and timestamp < self._oldest:
            raise Skipped("stale")
        if timestamp > time.time() + self._max_future:
            raise self._future(record, timestamp)
        name = self._event_name(record)
        key = []
        for column in self._key_columns:
            part = record.get(column)
            if part is None or part == "":
                raise Rejected(
                    "missing_event_id",
                    column,
                    f"{column} is empty; it is part of the event's dedupe key",
                )
            key.append(part)
        digest = event_digest(name, key)
        seen = dedupe_key(digest)
        if seen in self._sent:  # another row of an event built moments ago (a view joined to
            raise repeated(seen)  # line items): the run-wide dedupe counts it, unbuilt
        try:  # a later row of an event already sent is a duplicate, not a reject (run_events)
            raw = record.get(self._time_column)
            data = self._payload.of(record, (raw, timestamp) if type(raw) is str else None, native)
            normalise_email(data)  # templates and segments compare it with the person's email
            self._payload.check_contract(data)
            event_id = ulid_text(digest)
            body = encode({
                "type": "person", "action": "event", "identifiers": {kind: value},
                "name": name, "id": event_id, "timestamp": timestamp, "attributes": data,
            })  # fmt: skip
            about = f"event:{event_id}"
            ops = [self._finisher.finish(body, value, about, content=False, seen=seen)]
        except Rejected as rej:
            rej.seen = seen
            raise
        if self._mirror:
            ops.append(self._mirrored(kind, value, timestamp))
        return _new(Built, (ops, (kind, value), timestamp, name))

    def _future(self, record: dict[str, Any], timestamp: int) -> Rejected:
        ahead = (timestamp - time.time()) / 3600
        when = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat()
        return Rejected(
            "future_timestamp",
            self._time_column,
            f"{self._time_column} is {when}, {ahead:.1f}h from now, past max_future "
            f"({self._max_future / 3600:g}h): a wrong clock or time zone at the source? As the "
            "tap's bookmark it would hide the rows until then (docs/meltano.md)",
        )

    def _mirrored(self, kind: str, value: str, timestamp: int) -> Operation:
        """An identify setting `mirror_to_attribute` to the event's time (never tracked in the
        ledger: it follows its event)."""
        op = {
            "type": "person",
            "action": "identify",
            "identifiers": {kind: value},
            "attributes": {self._mirror: timestamp},
        }
        return Operation(encode(op), value)

    def _event_name(self, record: dict[str, Any]) -> str:
        if self._name:
            return self._name
        column = self._name_field
        raw = record.get(column)
        if not isinstance(raw, str) or not raw.strip():
            raise Rejected("missing_event_name", column, f"{column} is empty; it names the event")
        name = self._names.get(raw)
        if name is None:
            name = self._names[raw] = snake_case(raw)
            self._on_name(raw, name)
        if not name or len(name.encode()) > MAX_EVENT_NAME_BYTES:
            raise Rejected(
                "invalid_event_name",
                column,
                f"event name {shown(repr(raw), 120)} is empty or longer than "
                f"{MAX_EVENT_NAME_BYTES} bytes",
            )
        return name


def _ignore(raw: str, name: str) -> None:
    return None


KEYS = (
    "identifier",
    "event_name",
    "event_name_field",
    "event_id",
    "timestamp",
    "max_age",
    "mirror_to_attribute",
    *USE_KEYS,
    "max_campaign_entries",
    "max_future",
)
KIND: Kind = Kind("event", KEYS, options, EventBuilder)
