"""Track API v2: `POST /api/v2/batch` (200, 207 item errors, 400, 413) and `POST /api/v2/entity`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from target_customerio.sandbox.responses import Response, error, json_object
from target_customerio.sandbox.store import Store
from target_customerio.sandbox.validation import (
    MAX_OP_BYTES,
    MAX_REQUEST_BYTES,
    OpError,
    validate_op,
)

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox


def route(sandbox: Sandbox, method: str, path: str, query: dict, body: bytes) -> bool:
    """Handle a v2 call (returning means 200 `{}`); False when no v2 route matches."""
    if path == "/api/v2/batch" and method == "POST":
        batch(sandbox.store, body, sandbox.validate)
    elif path == "/api/v2/entity" and method == "POST":
        entity(sandbox.store, body)
    else:
        return False
    return True


def batch(store: Store, body: bytes, validate: bool = True) -> None:
    """POST /api/v2/batch: raises the Response (200, 207, 400 or 413)."""
    if len(body) > MAX_REQUEST_BYTES:
        raise error(413, f"request body is larger than {MAX_REQUEST_BYTES} bytes")
    if not validate:
        count = _unchecked_count(body)
        if count is not None:
            store.count("ops_unchecked", count)
            raise Response(200, {}, count)
    ops = json_object(body).get("batch")
    if not isinstance(ops, list):
        raise error(400, 'body must be {"batch": [operations]}')
    valid, errors = [], []
    for index, op in enumerate(ops):
        try:
            valid.append((index, validate_op(op, len(body))))
        except OpError as exc:
            errors.append({"batch_index": index, **exc.item})
    store.count("item_errors", len(errors))
    errors += store.apply(valid)
    errors.sort(key=lambda e: e["batch_index"])
    if errors:
        raise Response(207, {"errors": errors}, len(ops), len(errors))
    raise Response(200, {}, len(ops))


def entity(store: Store, body: bytes) -> None:
    """POST /api/v2/entity: one v2 operation; returning means 200 `{}`."""
    if len(body) > MAX_OP_BYTES:
        raise error(413, f"request body is larger than {MAX_OP_BYTES} bytes")
    try:
        errors = store.apply([(0, validate_op(json_object(body), len(body)))])
    except OpError as exc:
        errors = [exc.item]
    if errors:
        raise Response(400, {"errors": errors}, 0, 1)


class _UncheckedBatch(msgspec.Struct):
    batch: list[msgspec.Raw]


_decode_unchecked = msgspec.json.Decoder(_UncheckedBatch).decode


def _unchecked_count(body: bytes) -> int | None:
    """The operations in a well-formed batch, read without building them (10x cheaper than
    parsing: a benchmark's server must not take the CPU from the target it measures); None
    when the body is not one, for the full parse to answer why."""
    try:
        return len(_decode_unchecked(body).batch)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
