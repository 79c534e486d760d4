"""Track API v1: customers (identify, delete, events, suppress), merge_customers, the region, and
manual segments' add_customers / remove_customers.

Each v1 call is expressed as the v2 operation it stands for and validated by the same rules
(validation.py), so both versions store the same data; v1 answers errors with a 400
`{"meta": {"error": ...}}` instead of 207 items, and has no 32 KB operation limit.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from target_customerio.sandbox.responses import Response, error, json_object
from target_customerio.sandbox.segments import SegmentError
from target_customerio.sandbox.store import Store
from target_customerio.sandbox.validation import MAX_SEGMENT_IDS, OpError, validate_op

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox

REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
_CUSTOMERS = re.compile(r"/api/v1/customers/([^/]+)(/events|/suppress|/unsuppress)?")
_SEGMENT_MEMBERS = re.compile(r"/api/v1/segments/([1-9][0-9]{0,17})/(add|remove)_customers")


def route(sandbox: Sandbox, method: str, path: str, query: dict, body: bytes) -> bool:
    """Handle a v1 call (returning means 200 `{}`); False when no v1 route matches."""
    if path == "/api/v1/accounts/region" and method == "GET":
        raise Response(200, region_info(sandbox.region))
    if path == "/api/v1/merge_customers" and method == "POST":
        data = json_object(body)
        apply(sandbox.store, {"type": "person", "action": "merge", **data})
        return True
    match = _SEGMENT_MEMBERS.fullmatch(path)
    if match and method == "POST":
        add = match.group(2) == "add"
        raise segment_members(sandbox, int(match.group(1)), add, query, body)
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


def segment_members(
    sandbox: Sandbox, segment_id: int, add: bool, query: dict, body: bytes
) -> Response:
    """POST /api/v1/segments/{id}/add_customers (or remove_customers) `{"ids": [...]}`, with
    `?id_type=id|email|cio_id`: at most 1000 ids; ids of unknown people are ignored."""
    ids = json_object(body).get("ids")
    if not isinstance(ids, list):
        raise error(400, 'body must be {"ids": [...]}')
    if len(ids) > MAX_SEGMENT_IDS:
        raise error(400, f"at most {MAX_SEGMENT_IDS} ids a request, got {len(ids)}")
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise error(400, f"ids must be non-empty strings, got {value!r}")
    id_type = query.get("id_type", ["id"])[0]
    try:
        sandbox.segment_store.change_members(segment_id, ids, id_type, add)
    except KeyError:
        raise error(404, f"segment {segment_id} not found") from None
    except SegmentError as exc:
        raise error(400, str(exc)) from None
    return Response(200, {}, len(ids))


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
