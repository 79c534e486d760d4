"""Operation checks and the Track API's limits: one v2 operation in, normalised or an OpError out.

Both Track API versions go through `validate_op` (a v1 call is first expressed as a v2 operation),
so every size limit and identifier rule is enforced in one place, with the same messages.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_REQUEST_BYTES = 500 * 1024
MAX_OP_BYTES = 32 * 1024
MAX_ID_BYTES = 150
MAX_ATTRIBUTES = 300
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100 * 1024
MAX_SEGMENT_IDS = 1000  # ids in one add_customers / remove_customers request

PERSON_ACTIONS = ("identify", "event", "delete", "suppress", "unsuppress", "merge")
OBJECT_ACTIONS = ("identify", "delete")
IDENTIFIER_KINDS = ("id", "email", "cio_id")
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


class OpError(Exception):
    """One invalid operation: becomes an item of a 207 `errors` list (or a 400 on v1)."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.item = {"reason": reason, "field": field, "message": message}


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
