"""Rows deleted at the source: how taps mark them, and what a person route's `on_delete` sends."""

from __future__ import annotations

from typing import Any

from target_customerio.operations.operation import encode

ON_DELETE = ("ignore", "delete", "suppress", "unsubscribe")


def marks_delete(record: dict[str, Any]) -> bool:
    """Whether the record may carry a delete marker (cheap: most records carry none)."""
    return "_sdc_deleted_at" in record or "_sdc_operation_type" in record


def is_delete(record: dict[str, Any]) -> bool:
    """tap-postgres LOG_BASED marks deletes with `_sdc_deleted_at`; tap-mssql CDC with `D`."""
    return bool(record.get("_sdc_deleted_at")) or record.get("_sdc_operation_type") == "D"


def person_deleted(on_delete: str, identifiers: dict[str, str]) -> bytes:
    """The operation `on_delete` (not `ignore`) asks for when a person's source row was deleted."""
    if on_delete == "unsubscribe":
        op = {
            "type": "person",
            "action": "identify",
            "identifiers": identifiers,
            "attributes": {"unsubscribed": True},
        }
    else:  # delete | suppress
        op = {"type": "person", "action": on_delete, "identifiers": identifiers}
    return encode(op)
