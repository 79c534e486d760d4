"""Identity in the sandbox, as Customer.io behaves: a person's activity log for identifier and
attribute changes, and the profiles nobody identified.

- An identify that sets an `email` (or `id`) another person holds changes neither the identifier
  nor the attribute; the person gets a `failed_attribute_change` activity naming the value and
  who holds it (`refuse_identifier`). The Track API still answers 200.
- An identify that changes attributes leaves one `attribute_change` activity with what changed
  (`attribute_changes`).
- An event for a person who does not exist creates an empty profile (operations.py): a "ghost",
  never identified (its `updated` is still 0), which the QA page flags (`ghosts`).

The activity table is this module's, created beside the store's (store.Store creates it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from target_customerio.sandbox.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS activities (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cio_id TEXT NOT NULL,
    type TEXT NOT NULL,
    name TEXT,
    data TEXT NOT NULL DEFAULT '{}',
    timestamp INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS activities_cio_id ON activities (cio_id);
"""


def record(store: Store, cio_id: str, kind: str, name: str | None, data: dict[str, Any]) -> None:
    """One activity on a person (inside the store's transaction)."""
    store.db.execute(
        "INSERT INTO activities (cio_id, type, name, data, timestamp) VALUES (?, ?, ?, ?, ?)",
        (cio_id, kind, name, json.dumps(data, default=str), int(time.time())),
    )
    store.counters[f"activities_{kind}"] += 1


def refuse_identifier(
    store: Store, person: sqlite3.Row, kind: str, value: str, owner: sqlite3.Row
) -> None:
    """An identify tried to give `person` the `kind` value `owner` holds: nothing changes."""
    store.counters["identifier_conflicts"] += 1
    record(
        store,
        person["cio_id"],
        "failed_attribute_change",
        kind,
        {"attribute": kind, "value": value, "held_by": owner["cio_id"]},
    )


def attribute_changes(store: Store, cio_id: str, before: dict, after: dict) -> None:
    """One `attribute_change` activity for what an identify changed (nothing when nothing did)."""
    changed = {
        name: [before.get(name), after.get(name)]
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name)
    }
    if changed:
        record(store, cio_id, "attribute_change", None, {"changes": changed})


def activities(store: Store, cio_id: str | None = None, kind: str | None = None) -> list[dict]:
    """A person's activities (or everyone's), oldest first, optionally of one type."""
    sql, params = "SELECT * FROM activities WHERE 1 = 1", []
    if cio_id is not None:
        sql += " AND cio_id = ?"
        params.append(cio_id)
    if kind is not None:
        sql += " AND type = ?"
        params.append(kind)
    rows = store.rows(sql + " ORDER BY seq", tuple(params))
    return [
        {
            "cio_id": row["cio_id"],
            "type": row["type"],
            "name": row["name"],
            "data": json.loads(row["data"]),
            "timestamp": row["timestamp"],
        }
        for row in rows
    ]


def ghosts(store: Store) -> set[str]:
    """The cio_ids of profiles that exist only because something named them (an event for
    nobody): never identified, not suppressed."""
    rows = store.rows("SELECT cio_id FROM people WHERE updated = 0 AND suppressed = 0")
    return {row["cio_id"] for row in rows}


def conflicts(store: Store) -> dict[str, int]:
    """cio_id -> failed_attribute_change activities: identifies that were refused."""
    rows = store.rows(
        "SELECT cio_id, COUNT(*) AS n FROM activities WHERE type = 'failed_attribute_change' "
        "GROUP BY cio_id"
    )
    return {row["cio_id"]: row["n"] for row in rows}
