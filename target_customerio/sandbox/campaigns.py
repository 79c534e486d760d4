"""Campaigns: definitions (a --campaigns file, or POST /_sandbox/campaigns), the App API's
campaign reads, and the simulation of what starts them.

A campaign is running, draft or stopped, and started by an event name or by manual segments
(`trigger_segment_ids`). Only a running one starts anybody: an event whose timestamp is within
the 72 hours before it is received enters its person into each running campaign with that event
name, once for each event id (Customer.io drops an event id it has seen, so a re-sent night
enters nobody twice); a person added to a manual segment enters each running campaign that
segment triggers, once. The entries are the canary of the source documents: the QA page lists
them per campaign. The App API serves `GET /v1/campaigns`, `/v1/campaigns/{id}` and
`/v1/segments/{id}/used_by` (Customer.io's shapes; `type` is there but deprecated).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from target_customerio.sandbox.responses import Response

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox
    from target_customerio.sandbox.store import Store

WINDOW_SECONDS = 72 * 3600  # older events start no campaign
STATES = ("running", "draft", "stopped")
_FIELDS = ("id", "name", "state", "event_name", "trigger_segment_ids")
_ID = r"([1-9][0-9]{0,17})"
_CAMPAIGN = re.compile(rf"/v1/campaigns(?:/{_ID})?")
_USED_BY = re.compile(rf"/v1/segments/{_ID}/used_by")

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    event_name TEXT,
    trigger_segment_ids TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS campaign_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id INTEGER NOT NULL,
    cio_id TEXT NOT NULL,
    trigger TEXT NOT NULL,
    entered_at REAL NOT NULL,
    UNIQUE (campaign_id, trigger)
);
"""


class CampaignError(ValueError):
    """A campaign definition that cannot be accepted (one line)."""


class Campaigns:
    """The campaign definitions and entries of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(
        self,
        name: Any,
        state: Any = "running",
        event_name: Any = None,
        trigger_segment_ids: Any = None,
        id: Any = None,
        replace: bool = False,
    ) -> dict:
        if not isinstance(name, str) or not name.strip():
            raise CampaignError("name must be a non-empty string")
        if state not in STATES:
            raise CampaignError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        segments = trigger_segment_ids
        if (event_name is None) == (segments is None):
            raise CampaignError("a campaign has exactly one of event_name or trigger_segment_ids")
        if event_name is not None and (not isinstance(event_name, str) or not event_name):
            raise CampaignError("event_name must be a non-empty string")
        if segments is not None and (
            not isinstance(segments, list)
            or not segments
            or not all(type(s) is int and s > 0 for s in segments)
        ):
            raise CampaignError("trigger_segment_ids must be a list of segment ids")
        if id is not None and (type(id) is not int or id < 1):
            raise CampaignError(f"id must be a positive integer, not {id!r}")
        with self.store.lock:
            if id is not None and self.get(id) is not None:
                if not replace:
                    raise CampaignError(f"campaign {id} exists")
                self.store.db.execute("DELETE FROM campaigns WHERE id = ?", (id,))
            cursor = self.store.db.execute(
                "INSERT INTO campaigns (id, name, state, event_name, trigger_segment_ids, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (id, name, state, event_name, json.dumps(segments or []), time.time()),
            )
            added = self.get(int(cursor.lastrowid or 0))
            assert added is not None
            return added

    def get(self, campaign_id: int) -> dict | None:
        rows = self.store.rows("SELECT * FROM campaigns WHERE id = ?", (campaign_id,))
        return _campaign(rows[0]) if rows else None

    def all(self) -> list[dict]:
        return [_campaign(row) for row in self.store.rows("SELECT * FROM campaigns ORDER BY id")]

    def delete(self, campaign_id: int) -> bool:
        with self.store.lock:
            self.store.db.execute(
                "DELETE FROM campaign_entries WHERE campaign_id = ?", (campaign_id,)
            )
            cursor = self.store.db.execute("DELETE FROM campaigns WHERE id = ?", (campaign_id,))
            return cursor.rowcount > 0

    def load_file(self, path: str | Path) -> list[int]:
        """Define the campaigns of a JSON file: a list of {"id"?, "name", "state"?,
        "event_name" | "trigger_segment_ids"} (or {"campaigns": [...]}); one with the id of a
        campaign already defined replaces it."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CampaignError(f"{path}: cannot read campaigns: {exc}") from None
        if isinstance(data, dict) and set(data) == {"campaigns"}:
            data = data["campaigns"]
        if not isinstance(data, list):
            raise CampaignError(f'{path}: expected a list of campaigns (or {{"campaigns": [...]}})')
        ids = []
        for i, entry in enumerate(data):
            try:
                ids.append(self.add(**definition(entry), replace=True)["id"])
            except CampaignError as exc:
                raise CampaignError(f"{path}: campaign {i + 1}: {exc}") from None
        return ids

    def entries(self, campaign_id: int) -> list[dict]:
        """Who entered the campaign, in order, with what started them."""
        rows = self.store.rows(
            "SELECT e.*, p.id AS person_id, p.email AS person_email FROM campaign_entries e"
            " LEFT JOIN people p ON p.cio_id = e.cio_id WHERE e.campaign_id = ? ORDER BY e.seq",
            (campaign_id,),
        )
        return [
            {
                "cio_id": row["cio_id"],
                "person_id": row["person_id"],
                "person_email": row["person_email"],
                "trigger": row["trigger"],
                "entered_at": row["entered_at"],
            }
            for row in rows
        ]

    def entry_counts(self) -> dict[int, int]:
        rows = self.store.rows(
            "SELECT campaign_id, COUNT(*) AS n FROM campaign_entries GROUP BY campaign_id"
        )
        return {row["campaign_id"]: row["n"] for row in rows}


def definition(entry: Any) -> dict:
    """The keyword arguments of Campaigns.add from a JSON definition (file or HTTP body)."""
    if not isinstance(entry, dict):
        raise CampaignError("each campaign must be an object")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:  # a typo must not silently define a different campaign
        raise CampaignError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    return {**{k: entry.get(k) for k in _FIELDS}, "state": entry.get("state", "running")}


# ---- the simulation (called by operations.py and segments.py, holding the store's lock) ----


def enter_on_event(
    store: Store, cio_id: str, event_id: str, name: str, timestamp: int, received_at: float
) -> None:
    """An accepted event: its person enters each running campaign it starts, unless it
    happened more than 72 hours before it was received."""
    if timestamp < received_at - WINDOW_SECONDS:
        return
    rows = store.db.execute(
        "SELECT id FROM campaigns WHERE state = 'running' AND event_name = ?", (name,)
    ).fetchall()
    for row in rows:
        entered = store.db.execute(
            "INSERT OR IGNORE INTO campaign_entries (campaign_id, cio_id, trigger, entered_at)"
            " VALUES (?, ?, ?, ?)",
            (row["id"], cio_id, f"event {event_id}", received_at),
        ).rowcount
        store.counters["campaign_entries"] += entered


def enter_on_segment(store: Store, segment_id: int, cio_id: str, now: float) -> None:
    """A person added to a manual segment enters each running campaign it triggers, once."""
    rows = store.db.execute(
        "SELECT id, trigger_segment_ids FROM campaigns WHERE state = 'running'"
    ).fetchall()
    for row in rows:
        if segment_id in json.loads(row["trigger_segment_ids"]):
            entered = store.db.execute(
                "INSERT OR IGNORE INTO campaign_entries (campaign_id, cio_id, trigger, entered_at)"
                " VALUES (?, ?, ?, ?)",
                (row["id"], cio_id, f"segment {segment_id} {cio_id}", now),
            ).rowcount
            store.counters["campaign_entries"] += entered


# ---- the App API ----


def answer(sandbox: Sandbox, method: str, path: str) -> None:
    """`GET /v1/campaigns`, `/v1/campaigns/{id}`, `/v1/segments/{id}/used_by`: raises the
    Response; returns when the path is not one of them."""
    store = sandbox.campaign_store
    match = _CAMPAIGN.fullmatch(path.rstrip("/"))
    if match is not None and method == "GET":
        if match.group(1) is None:
            raise Response(200, {"campaigns": [api_campaign(c) for c in store.all()]})
        campaign = store.get(int(match.group(1)))
        if campaign is None:
            raise _error(404, f"campaign {match.group(1)} not found")
        raise Response(200, {"campaign": api_campaign(campaign)})
    match = _USED_BY.fullmatch(path)
    if match is not None and method == "GET":
        segment_id = int(match.group(1))
        if sandbox.segment_store.get(segment_id) is None:
            raise _error(404, f"segment {segment_id} not found")
        used = [c["id"] for c in store.all() if segment_id in c["trigger_segment_ids"]]
        raise Response(
            200,
            {
                "used_by": {
                    "campaigns": used,
                    "sent_newsletters": [],
                    "draft_newsletters": [],
                    "broadcasts": [],
                    "referencing_segments": [],
                }
            },
        )


def api_campaign(campaign: dict) -> dict:
    """A campaign as the App API shows it."""
    out = {
        "id": campaign["id"],
        "name": campaign["name"],
        "active": campaign["state"] == "running",
        "state": campaign["state"],
        "type": "behavioral" if campaign["event_name"] else "segment",  # deprecated
        "actions": [],
        "filter_segment_ids": [],
        "created": int(campaign["created"]),
        "updated": int(campaign["created"]),
    }
    if campaign["event_name"]:
        out["event_name"] = campaign["event_name"]
    else:
        out["trigger_segment_ids"] = campaign["trigger_segment_ids"]
    return out


def _error(status: int, detail: str) -> Response:
    return Response(status, {"errors": [{"detail": detail, "status": str(status)}]})


def _campaign(row: Any) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "state": row["state"],
        "event_name": row["event_name"],
        "trigger_segment_ids": json.loads(row["trigger_segment_ids"]),
        "created": row["created"],
    }
