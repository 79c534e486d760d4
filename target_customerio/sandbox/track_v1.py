"""Track API v1: customers (identify, delete, events, suppress), merge_customers and the region.

Each v1 call is expressed as the v2 operation it stands for and validated by the same rules
(validation.py), so both versions store the same data; v1 answers errors with a 400
`{"meta": {"error": ...}}` instead of 207 items, and has no 32 KB operation limit.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from target_customerio.sandbox.responses import Response, json_object
from target_customerio.sandbox.store import Store
from target_customerio.sandbox.validation import OpError, validate_op

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox

REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
_CUSTOMERS = re.compile(r"/api/v1/customers/([^/]+)(/events|/suppress|/unsuppress)?")


def route(sandbox: Sandbox, method: str, path: str, body: bytes) -> bool:
    """Handle a v1 call (returning means 200 `{}`); False when no v1 route matches."""
    if path == "/api/v1/accounts/region" and method == "GET":
        raise Response(200, region_info(sandbox.region))
    if path == "/api/v1/merge_customers" and method == "POST":
        data = json_object(body)
        apply(sandbox.store, {"type": "person", "action": "merge", **data})
        return True
    match = _CUSTOMERS.fullmatch(path)
    if match:
        op = _customers_op(method, identifiers(match.group(1)), match.group(2), body)
        if op is not None:
            apply(sandbox.store, op)
            return True
    return False


def region_info(region: str) -> dict:
    return {
        "url": REGION_URLS[region],
        "data_center": region,
        "environment_id": 1,
        "region": region,
    }


def apply(store: Store, op: dict) -> None:
    """A v1 call expressed as a v2 op; an invalid one is a 400 (v1 has no 32 KB op limit)."""
    try:
        errors = store.apply([(0, validate_op(op, op_limit=False))])
    except OpError as exc:
        errors = [exc.item]
    if errors:
        raise Response(400, {"meta": {"error": errors[0]["message"]}}, 0, 1)


def identifiers(segment: str) -> dict:
    """v1 paths name a person by id, by email (has an @) or by cio_id (`cio_` prefix)."""
    value = unquote(segment)
    if value.startswith("cio_"):
        return {"cio_id": value[4:]}
    return {"email": value} if "@" in value else {"id": value}


def _customers_op(method: str, identifiers: dict, suffix: str | None, body: bytes) -> dict | None:
    """The v2 operation a v1 customers call stands for (None: no such route)."""
    base = {"type": "person", "identifiers": identifiers}
    if suffix is None and method == "PUT":
        return {**base, "action": "identify", "attributes": json_object(body)}
    if suffix is None and method == "DELETE":
        return {**base, "action": "delete"}
    if suffix == "/events" and method == "POST":
        data = json_object(body)
        event = {k: data[k] for k in ("name", "id", "timestamp") if k in data}
        return {**base, "action": "event", **event, "attributes": data.get("data")}
    if suffix in ("/suppress", "/unsuppress") and method == "POST":
        return {**base, "action": suffix[1:]}
    return None
