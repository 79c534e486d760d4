"""The App API's segment reads, served on `/v1/...` by the same sandbox (Customer.io serves them
from api.customer.io): what a reconcile run asks to compare a segment with the database.

Bearer auth with the App API key (not the Track API's Basic site_id:api_key), its own rate limit
(10 requests a second by default, as Customer.io documents), and the App API's error shape
`{"errors": [{"detail": ..., "status": ...}]}`. Faults apply here as on the Track API.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from target_customerio.sandbox import app_people, campaigns
from target_customerio.sandbox.responses import Response

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox

MEMBERSHIP_LIMIT = 30_000  # the most people one membership page returns
_ID = r"([1-9][0-9]{0,17})"  # SQLite integers are 64-bit: a longer id cannot name a segment
_SEGMENT = re.compile(rf"/v1/segments/{_ID}(/customer_count|/membership)?")


def error(status: int, detail: str) -> Response:
    return Response(status, {"errors": [{"detail": detail, "status": str(status)}]})


def handle(
    sandbox: Sandbox,
    method: str,
    path: str,
    query: dict,
    authorization: str | None,
    body: bytes = b"",
):
    """Auth, rate limit, route: always raises the Response."""
    store = sandbox.store
    if not sandbox.app_authorized(authorization):
        store.count("app_unauthorized")
        raise error(401, "unauthorized: send the App API key as 'Authorization: Bearer <key>'")
    if sandbox.app_bucket is not None and not sandbox.app_bucket.allow():
        store.count("app_rate_limited")
        raise error(429, "Too many requests")
    if path.startswith("/v1/customers"):
        app_people.handle(sandbox, method, path, query, body)  # raises
    campaigns.answer(sandbox, method, path)  # raises for the campaign routes
    if method == "GET" and path.rstrip("/") == "/v1/segments":
        raise Response(200, {"segments": [_segment(s) for s in sandbox.segment_store.all()]})
    match = _SEGMENT.fullmatch(path)
    if match is None or method != "GET":
        raise error(404, f"no App API route for {method} {path}")
    segment_id, part = int(match.group(1)), match.group(2)
    segment = sandbox.segment_store.get(segment_id)
    if segment is None:
        raise error(404, f"segment {segment_id} not found")
    if part is None:
        raise Response(200, {"segment": _segment(segment)})
    if part == "/customer_count":
        count = sandbox.segment_store.count(segment_id)
        raise Response(200, {"segment_id": segment_id, "count": count})
    raise Response(200, _membership(sandbox, segment_id, query))


def _membership(sandbox: Sandbox, segment_id: int, query: dict) -> dict:
    """One page of members: `start` is the opaque cursor a previous page gave as `next`."""
    try:
        start = int(query.get("start", ["0"])[0] or 0)
        limit = int(query.get("limit", [str(MEMBERSHIP_LIMIT)])[0])
    except ValueError:
        raise error(400, "start and limit must be integers") from None
    if start < 0 or not 1 <= limit <= MEMBERSHIP_LIMIT:
        raise error(400, f"limit must be 1..{MEMBERSHIP_LIMIT} and start >= 0")
    members = sandbox.segment_store.members(segment_id)
    page = members[start : start + limit]
    identifiers = [{"id": p["id"], "email": p["email"], "cio_id": p["cio_id"]} for p in page]
    more = start + limit < len(members)
    return {
        "identifiers": identifiers,
        "ids": [p["id"] for p in page if p["id"] is not None],
        "next": str(start + limit) if more else "",
    }


def _segment(segment: dict) -> dict:
    return {
        "id": segment["id"],
        "deduplicate_id": f"{segment['id']}:{int(segment['created'])}",
        "name": segment["name"],
        "description": "",
        "state": "finished",  # the sandbox's counts are always up to date
        "progress": None,
        "type": segment["kind"],
        "tags": None,
    }
