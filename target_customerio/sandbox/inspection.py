"""The inspection and control API under `/_sandbox/`: what the tests assert on and steer with.

No auth and no faults here: a test must be able to look at the sandbox while it misbehaves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from target_customerio.sandbox.campaigns import CampaignError
from target_customerio.sandbox.campaigns import definition as campaign_definition
from target_customerio.sandbox.responses import Response, error, json_object
from target_customerio.sandbox.segments import SegmentError, definition

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox


def route(
    sandbox: Sandbox, method: str, path: str, query: dict, read_body: Callable[[], bytes]
) -> None:
    """Answer one `/_sandbox/...` request (always by raising its Response)."""
    name = path[len("/_sandbox/") :].strip("/")
    if name == "segments" or name.startswith("segments/"):
        return _segments(sandbox, method, name.split("/")[1:], read_body)
    if name == "campaigns" or name.startswith("campaigns/"):
        return _campaigns(sandbox, method, name.split("/")[1:], read_body)
    if method == "GET":
        first = {k: v[0] for k, v in query.items() if k in ("id", "email", "cio_id")}
        getters = {
            "people": sandbox.people,
            "events": sandbox.events,
            "requests": sandbox.requests,
            "objects": sandbox.objects,
            "counters": sandbox.counters,
            "faults": sandbox.faults.pending,
            "person": lambda: sandbox.person(**first),
            "rejects": sandbox.rejects,
        }
        if name in getters:
            raise Response(200, getters[name]())
    body = read_body()
    if method == "POST" and name == "faults":
        try:
            sandbox.inject(**json_object(body))
        except (TypeError, ValueError) as exc:
            raise error(400, str(exc)) from None
        raise Response(200, sandbox.faults.pending())
    if method == "DELETE" and name == "faults":
        sandbox.clear_faults()
        raise Response(200, [])
    if name == "write_faults":
        raise Response(200, _write_faults(sandbox, method, body))
    if method == "POST" and name == "reset":
        sandbox.reset()
        raise Response(200, {})
    raise error(404, f"no inspection route for {method} {path}")


def _segments(sandbox: Sandbox, method: str, parts: list[str], read_body: Callable) -> None:
    """`/_sandbox/segments` (GET list, POST define), `/_sandbox/segments/{id}` (GET with its
    members, DELETE) and `/_sandbox/segments/{id}/reconcile` (POST {"expected": N})."""
    body = read_body()  # always: a body left unread would be taken for the next request
    if not parts:
        if method == "GET":
            raise Response(200, sandbox.segments())
        if method == "POST":
            try:
                segment_id = sandbox.segment_store.add(**definition(json_object(body)))["id"]
            except SegmentError as exc:
                raise error(400, str(exc)) from None
            raise Response(200, sandbox.segment(segment_id))
    if not re.fullmatch(r"[1-9][0-9]{0,17}", parts[0]) or len(parts) > 2:
        raise error(404, f"no inspection route for {method} /_sandbox/segments/{'/'.join(parts)}")
    segment_id = int(parts[0])
    segment = sandbox.segment(segment_id)
    if segment is None:
        raise error(404, f"no segment {segment_id}")
    if len(parts) == 1 and method == "GET":
        members = [
            {k: p[k] for k in ("id", "email", "cio_id")}
            for p in sandbox.segment_members(segment_id)
        ]
        raise Response(200, {**segment, "members": members})
    if len(parts) == 1 and method == "DELETE":
        sandbox.delete_segment(segment_id)
        raise Response(200, {})
    if parts[1:] == ["reconcile"] and method == "POST":
        try:
            sandbox.record_reconcile(segment_id, json_object(body).get("expected"))
        except SegmentError as exc:
            raise error(400, str(exc)) from None
        raise Response(200, sandbox.segment(segment_id))
    raise error(404, f"no inspection route for {method} /_sandbox/segments/{'/'.join(parts)}")


def _write_faults(sandbox: Sandbox, method: str, body: bytes) -> dict:
    """`/_sandbox/write_faults`: POST `{"delay": seconds, "ignore": [{"id": ...} or
    {"email": ...}], "fail_events": [names]}` (each optional) adds to them, DELETE clears
    them (a write still waiting is applied first), GET shows them."""
    faults = sandbox.store.write_faults
    if method == "POST":
        spec = json_object(body)
        unknown = sorted(set(spec) - {"delay", "ignore", "fail_events"})
        if unknown:
            raise error(400, f"unknown write fault {unknown[0]!r}: delay, ignore, fail_events")
        try:
            if "delay" in spec:
                sandbox.delay_writes(float(spec["delay"]))
            for person in spec.get("ignore") or []:
                sandbox.ignore_writes(**person)
            for name in spec.get("fail_events") or []:
                sandbox.fail_events(str(name))
        except (TypeError, ValueError) as exc:
            raise error(400, f"write_faults: {exc}") from None
    elif method == "DELETE":
        sandbox.flush_writes()
        faults.clear()
    elif method != "GET":
        raise error(405, "write_faults: GET, POST or DELETE")
    return {
        "delay": faults.delay,
        "ignore": [{kind: value} for kind, value in sorted(faults.ignored)],
        "fail_events": sorted(faults.failed_events),
        "pending": faults.pending(),
    }


def _campaigns(sandbox: Sandbox, method: str, parts: list[str], read_body: Callable) -> None:
    """`/_sandbox/campaigns` (GET list with entry counts, POST define) and
    `/_sandbox/campaigns/{id}` (GET with its entries, DELETE)."""
    body = read_body()
    if not parts:
        if method == "GET":
            raise Response(200, sandbox.campaigns())
        if method == "POST":
            try:
                added = sandbox.campaign_store.add(**campaign_definition(json_object(body)))
            except CampaignError as exc:
                raise error(400, str(exc)) from None
            raise Response(200, added)
    where = f"/_sandbox/campaigns/{'/'.join(parts)}"
    if len(parts) != 1 or not re.fullmatch(r"[1-9][0-9]{0,17}", parts[0]):
        raise error(404, f"no inspection route for {method} {where}")
    campaign_id = int(parts[0])
    campaign = sandbox.campaign_store.get(campaign_id)
    if campaign is None:
        raise error(404, f"no campaign {campaign_id}")
    if method == "GET":
        raise Response(200, {**campaign, "entries": sandbox.campaign_entries(campaign_id)})
    if method == "DELETE":
        sandbox.campaign_store.delete(campaign_id)
        raise Response(200, {})
    raise error(404, f"no inspection route for {method} {where}")
