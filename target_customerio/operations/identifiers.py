"""Identifiers as Customer.io takes them: one of id, email or cio_id, never blank."""

from __future__ import annotations

from typing import Any

from target_customerio.operations.operation import Rejected
from target_customerio.values import BadValue, plain

MAX_IDENTIFIER_BYTES = 150


def identifier_value(record: dict[str, Any], column: str, kind: str) -> str:
    """The identifier in `column` as Customer.io takes it (emails trimmed, lower-cased, since
    Customer.io compares them case-insensitively); raises Rejected."""
    raw = record.get(column)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise Rejected(
            "missing_identifier", column, f"{column} is empty; every operation needs one {kind}"
        )
    if type(raw) is bool:  # `True` is no one's id
        raise Rejected("invalid_identifier", column, f"{column} is a boolean, not a usable {kind}")
    try:
        value = raw if type(raw) is str else str(plain(raw))
        size = len(value.encode())
    except (BadValue, UnicodeEncodeError, RecursionError) as exc:
        raise Rejected(
            "invalid_identifier", column, f"{column} is not a usable {kind}: {exc}"
        ) from None
    if kind == "email":
        value = value.strip().lower()
        if "@" not in value:
            raise Rejected("invalid_identifier", column, f"{column} is not an email address")
    if size > MAX_IDENTIFIER_BYTES:
        raise Rejected(
            "invalid_identifier", column, f"{column} is longer than {MAX_IDENTIFIER_BYTES} bytes"
        )
    return value
