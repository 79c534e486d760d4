"""When something happened at the source, as Customer.io wants it: integer unix seconds."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from target_customerio.operations.operation import Rejected
from target_customerio.values import BadValue, plain_number, text_to_unix, to_unix

MAX_UNIX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
_MILLISECONDS = 10**11  # seconds beyond the year 5138: a number this large is milliseconds


def source_time(record: dict[str, Any], column: str, tz: dt.tzinfo) -> int:
    """The time in `column`: date-time text (naive text read in `tz`), unix seconds, or a date;
    never sync time, so an empty one rejects the record. Raises Rejected."""
    raw = record.get(column)
    if raw is None or raw == "":
        raise Rejected(
            "missing_timestamp",
            column,
            f"{column} is empty; an event is never stamped with sync time",
        )
    try:
        if type(raw) is str:
            seconds = text_to_unix(raw, tz)
        elif isinstance(raw, (int, float, Decimal)) and not isinstance(raw, bool):
            seconds = int(plain_number(raw))
            if seconds > _MILLISECONDS:
                raise BadValue(f"{raw} looks like milliseconds, not unix seconds")
        elif isinstance(raw, (dt.date, dt.datetime)):
            seconds = to_unix(raw, tz)
        else:
            raise BadValue(f"{type(raw).__name__} is not a time")
    except (BadValue, OverflowError, ValueError, TypeError) as exc:
        raise Rejected("invalid_timestamp", column, str(exc)) from None
    if not 0 <= seconds <= MAX_UNIX_SECONDS:
        raise Rejected("invalid_timestamp", column, f"{raw} is outside 1970..9999")
    return seconds
