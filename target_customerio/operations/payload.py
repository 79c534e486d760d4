"""Outgoing attributes and event data: the record's columns selected, renamed and made plain
(dates as unix seconds, numbers as numbers), checked against the stream's SCHEMA, Customer.io's
limits and the route's contract."""

from __future__ import annotations

from typing import Any

import orjson

from target_customerio.operations.identifiers import as_sent
from target_customerio.operations.operation import Rejected
from target_customerio.redaction import shown
from target_customerio.routes import Route
from target_customerio.tap_schema import Column, columns, value_class
from target_customerio.values import SCALARS, BadValue, plain, text_to_unix

MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
_MISSING: Any = object()  # "no value" where None is a value


class _InOrder(Exception):
    """A record the fast path leaves to the in-order one."""


class Payload:
    """The payload rules of one stream's route, learning its columns as they come.

    The fast path makes one pass in C over the columns (a copy when no column is renamed, a
    comprehension otherwise; values are walked by `plain` only when the record is not
    `native`) and then converts the date columns. Any error, a new column or a name collision
    sends the record through `_in_order`, the reference: it converts column by column and
    rejects at the first bad one, so both paths give the same payload or the same reject.
    """

    def __init__(self, route: Route, schema: dict[str, Any]) -> None:
        self._route = route
        self._tz = route.source_timezone
        self._contract = route.contract
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
        self.names_short = True  # no attribute name can fail Customer.io's name limit
        self._names_unique = True  # no two columns are sent under one name
        self._date_names: list[tuple[str, str]] = []  # date columns that are sent, and their names
        self._columns: set[str] = set()  # every column seen so far
        self._sent_names: set[str] = set()  # the attribute names columns are sent under
        self._dropped: list[str] = []  # the columns not sent
        self._copyable = True  # every column sent is sent under its own name

    def of(
        self, record: dict[str, Any], parsed: tuple[Any, int] | None = None, native: bool = False
    ) -> dict[str, Any]:
        """The payload of a record; raises Rejected. `parsed` is a date text already converted
        (an event's timestamp), and its unix seconds."""
        known, seconds = parsed or (_MISSING, 0)
        if not self._names_unique:
            return self._in_order(record)
        names, tz = self._names, self._tz
        try:
            if not native:
                out = {
                    name: v if type(v) in SCALARS else plain(v, tz)
                    for column, v in record.items()
                    if (name := names[column]) is not None
                }
            elif self._copyable and record.keys() == self._columns:
                out = record.copy()
                for column in self._dropped:
                    del out[column]
            else:
                out = {
                    name: v for column, v in record.items() if (name := names[column]) is not None
                }
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
            return self._in_order(record)
        return out

    def check_contract(self, payload: dict[str, Any]) -> None:
        """The route's contract, when it has one; raises Rejected."""
        contract = self._contract
        if contract is None:
            return
        violation = contract.check(payload)
        if violation:
            raise Rejected("contract_violation", violation.field, violation.message, violation.rule)

    def _learn(self, column: str) -> str | None:
        """The attribute name of a column seen for the first time."""
        name = self._names[column] = self._route.attribute_name(column)
        self._columns.add(column)
        if name is None:
            self._dropped.append(column)
        else:
            self._copyable = self._copyable and name == column
            self.names_short = self.names_short and _short_name(name)
            self._names_unique = self._names_unique and name not in self._sent_names
            self._sent_names.add(name)
            if column in self._dates:
                self._date_names.append((column, name))
            if column in self._declared:
                self._checked.append(column)
                self._fits.append(self._declared[column].fast)
                self._last_fit.append(type(None))
        return name

    def _in_order(self, record: dict[str, Any]) -> dict[str, Any]:
        names, dates, tz = self._names, self._dates, self._tz
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
                raise Rejected(
                    "schema_violation", column, schema_violation(column, value, declared_type)
                )
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


def normalise_email(payload: dict[str, Any]) -> None:
    """An `email` attribute or event field is sent as an email identifier is (trimmed, NFC,
    lower-cased: Customer.io compares emails case-insensitively); a blank one is sent as null
    (removed)."""
    email = payload.get("email")
    if isinstance(email, str):
        payload["email"] = as_sent(email, "email") or None


def check_person_limits(attributes: dict[str, Any]) -> None:
    """Customer.io's limits on a person's (or an object's) attributes; raises Rejected."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise Rejected(
            "too_many_attributes",
            None,
            f"{len(attributes)} attributes; Customer.io takes at most {MAX_ATTRIBUTES}",
        )
    for name, value in attributes.items():
        if (
            len(name) * 4 > MAX_ATTRIBUTE_NAME_BYTES
            and len(name.encode()) > MAX_ATTRIBUTE_NAME_BYTES
        ):
            raise Rejected(
                "attribute_name_too_long",
                shown(name, 60),
                f"attribute name longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes",
            )
        if _value_bytes(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise Rejected(
                "attribute_value_too_large",
                name,
                f"value of {name} is over {MAX_ATTRIBUTE_VALUE_BYTES} bytes",
            )


def _fits(value: Any, declared: Column) -> bool:
    """Whether a value conforms to its column's declared types: by its type alone, mostly."""
    return type(value) in declared.fast or declared.conforms(value)


_CLASS_WORDS = {
    "boolean": "a boolean",
    "string": "a string",
    "object": "an object",
    "array": "an array",
    "integral": "an integer",
    "fraction": "a number with a fraction",
}


def schema_violation(column: str, value: Any, declared: Column) -> str:
    """Why a value contradicts its column's declared type (a tap bug, or a drifted column)."""
    held = _CLASS_WORDS.get(value_class(value) or "", type(value).__name__)
    preview = repr(value)
    if len(preview) > 60:
        preview = preview[:57] + "..."
    return f"{column} holds {held} ({preview}); the stream's SCHEMA declares {declared.declared}"


def _short_name(name: str) -> bool:
    """True when `name` passes the attribute name limit in `check_person_limits`."""
    if len(name) * 4 <= MAX_ATTRIBUTE_NAME_BYTES:
        return True
    try:
        return len(name.encode()) <= MAX_ATTRIBUTE_NAME_BYTES
    except UnicodeEncodeError:
        return False


def _value_bytes(value: Any) -> int:
    kind = type(value)
    if kind is str:
        # surrogatepass: a lone surrogate is sized here and rejected, with its field, when encoded
        return (
            len(value)
            if len(value) * 4 <= MAX_ATTRIBUTE_VALUE_BYTES
            else len(value.encode(errors="surrogatepass"))
        )
    if kind is dict or kind is list:
        try:
            return len(orjson.dumps(value))
        except orjson.JSONEncodeError:  # too deep, or lone surrogates: rejected when encoded
            return 0
    return 0
