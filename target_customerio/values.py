"""Shared value helpers: Customer.io wants unix seconds, plain numbers, snake_case names."""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_fromisoformat = dt.datetime.fromisoformat
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class BadValue(ValueError):
    """A value that cannot be sent to Customer.io as it is."""


def to_unix(value: dt.datetime | dt.date | str, tz: dt.tzinfo = UTC) -> int:
    """Integer unix seconds; naive values are read in `tz` (the source's zone)."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return unix_seconds(value)


def text_to_unix(text: str, tz: dt.tzinfo = UTC) -> int:
    """`to_unix` for text: date columns and event times. The common ISO form is read at once;
    any other (spaces around it, `Z` before Python 3.11) by `parse_datetime`'s rules."""
    try:
        value = _fromisoformat(text)
    except ValueError:
        value = parse_datetime(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return unix_seconds(value)


def unix_seconds(moment: dt.datetime) -> int:
    """An aware datetime's unix seconds, rounded down: the whole days and seconds of its distance
    from the epoch, in exact integer arithmetic (`timestamp()` goes through big-integer
    microseconds and a float, for every date of every record)."""
    since = moment - EPOCH
    return since.days * 86_400 + since.seconds


def parse_datetime(text: str) -> dt.datetime:
    """ISO 8601, Postgres text form (`+00`) and SQL Server datetime2 (7 decimals)."""
    try:
        return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadValue(f"not a date-time: {text[:40]!r}") from None


_EXACT_INT = 2**63  # a signed 64-bit integer: what JSON encoders and Customer.io take


def plain_number(value: Decimal | float) -> int | float:
    """A JSON number: integral values become integers, NaN and Infinity are refused."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise BadValue(f"{value} is not a number Customer.io accepts")
        # An integer a JSON number can carry exactly; a larger one (1E+999999 would be a
        # million digits) goes on as a float, or is refused below when no float holds it.
        if value == value.to_integral_value() and -_EXACT_INT < value < _EXACT_INT:
            return int(value)
        value = float(value)  # a huge exponent (1E+999) is finite as a Decimal, not as a float
    if not math.isfinite(value):
        raise BadValue(f"{value} is not a number Customer.io accepts")
    return value


_EXACT = 2**53  # floats below this size hold integers exactly


def json_number(text: str) -> int | float:
    """A JSON number with a fraction or exponent (the readers' float hook): an integer when its
    value is one (a numeric(10,2) of 250.00 is sent as 250, not 250.0), else a float (always
    finite: the decoder refuses numbers out of a float's range)."""
    number = float(text)
    return int(number) if number.is_integer() and -_EXACT < number < _EXACT else number


SCALARS = frozenset({str, int, bool, type(None)})  # exact types that `plain` returns unchanged
# Levels of lists and dicts a value may hold: JSON encoders stop at about 255 (orjson), and the
# compiled walk has no interpreter recursion limit to stop it before the C stack ends.
MAX_NESTING = 250


def plain(value: Any, tz: dt.tzinfo = UTC, depth: int = 0) -> Any:
    """Normalise one value: dates to unix seconds, decimals to numbers, recursively."""
    kind = type(value)
    if kind in SCALARS:
        return value
    if kind is Decimal or kind is float:
        return plain_number(value)
    if kind is dict or kind is list or kind is tuple:
        if depth >= MAX_NESTING:
            raise BadValue("nested too deeply")
        depth += 1
    # JSON columns: a dict or list that needs no change is returned as it is (the result is
    # only read), so most JSON values cost a walk and no copy.
    if kind is dict:
        changed = {
            k: new
            for k, v in value.items()
            if type(v) not in SCALARS and (new := plain(v, tz, depth)) is not v
        }
        if not changed:
            return value
        return {k: changed.get(k, v) for k, v in value.items()}
    if kind is list:
        changed = {
            i: new
            for i, v in enumerate(value)
            if type(v) not in SCALARS and (new := plain(v, tz, depth)) is not v
        }
        if not changed:
            return value
        return [changed.get(i, v) for i, v in enumerate(value)]
    if kind is tuple:
        return [v if type(v) in SCALARS else plain(v, tz, depth) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return to_unix(value, tz)
    if isinstance(value, dt.time):
        return value.isoformat()
    return str(value)


def parse_duration(text: str) -> dt.timedelta:
    """`90s`, `15m`, `2h`, `3d`, `1w` → timedelta."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30m, 2h or 3d")
    amount, unit = match.groups()
    return dt.timedelta(**{_DURATION_UNITS[unit]: int(amount)})


def timezone(name: str | None) -> dt.tzinfo:
    """The zone a route reads naive source timestamps in (UTC by default)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError for malformed keys
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)"
        ) from None


def snake_case(name: str) -> str:
    """`Order Placed`, `OrderPlaced`, `order-placed` → `order_placed`; Unicode letters and
    digits (and their combining marks) are kept, NFC and lower-cased: `Café Visité` →
    `café_visité`, `ÜBER uns` → `über_uns`. (The target caches it per name as the source
    spells it.)"""
    words: list[str] = []
    word: list[str] = []
    previous = ""
    for char in unicodedata.normalize("NFC", name):
        if not _word_char(char):
            previous = ""
            if word:
                words.append("".join(word))
                word = []
            continue
        if char.isupper() and (previous.islower() or previous.isdigit()) and word:
            words.append("".join(word))  # camelCase: `OrderPlaced`, `ÉtéPlus`
            word = []
        word.append(char)
        previous = char
    if word:
        words.append("".join(word))
    return unicodedata.normalize("NFC", "_".join(words).lower())


def _word_char(char: str) -> bool:
    return char.isalnum() or unicodedata.category(char).startswith("M")


MAX_WHOLE = 2**63 - 1  # what a JSON encoder and Customer.io's ids and counts can hold


def whole_number(value: Any) -> int | None:
    """A non-negative integer up to 2**63 - 1, as a number (3, 3.0) or its ASCII digits ("3");
    None otherwise (a boolean, a fraction, a sign, NaN, a digit such as '²' that int() refuses,
    a count too large to send)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (float, Decimal)):
        finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
        if not (finite and 0 <= value <= MAX_WHOLE and value == int(value)):
            return None
        value = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 19):
            return None
        value = int(text)
    if isinstance(value, int):
        return value if 0 <= value <= MAX_WHOLE else None
    return None
