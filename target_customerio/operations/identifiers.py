"""Identifiers as Customer.io takes them: one of id, email or cio_id, never blank."""

from __future__ import annotations

import unicodedata
from typing import Any

from target_customerio.operations.operation import Rejected
from target_customerio.values import BadValue, plain

MAX_IDENTIFIER_BYTES = 150


def identifier_value(record: dict[str, Any], column: str, kind: str) -> str:
    """The identifier in `column` as Customer.io takes it (as_sent), checked as it is sent;
    raises Rejected."""
    raw = record.get(column)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise Rejected(
            "missing_identifier", column, f"{column} is empty; every operation needs one {kind}"
        )
    if type(raw) is bool:  # `True` is no one's id
        raise Rejected("invalid_identifier", column, f"{column} is a boolean, not a usable {kind}")
    try:
        value = as_sent(raw if type(raw) is str else str(plain(raw)), kind)
        size = len(value.encode())
    except (BadValue, UnicodeEncodeError, RecursionError) as exc:
        raise Rejected(
            "invalid_identifier", column, f"{column} is not a usable {kind}: {exc}"
        ) from None
    if not value:
        raise Rejected(
            "missing_identifier", column, f"{column} is empty; every operation needs one {kind}"
        )
    if not value.isprintable():
        raise Rejected(
            "invalid_identifier", column, f"{column} holds a control or invisible character"
        )
    if kind == "email" and "@" not in value:
        raise Rejected("invalid_identifier", column, f"{column} is not an email address")
    if size > MAX_IDENTIFIER_BYTES:
        raise Rejected(
            "invalid_identifier", column, f"{column} is longer than {MAX_IDENTIFIER_BYTES} bytes"
        )
    return value


def as_sent(value: str, kind: str) -> str:
    """The identifier as Customer.io receives it, so that every rule is checked on that: trimmed
    (a CHAR(n) column pads it), Unicode NFC, and lower-cased where Customer.io ignores case
    (emails; ids are case-sensitive)."""
    value = value.strip().lower() if kind == "email" else value.strip()
    return value if value.isascii() else unicodedata.normalize("NFC", value)
