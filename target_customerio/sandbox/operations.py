"""Applying validated operations with Customer.io's semantics: identify, event, delete, suppress,
unsuppress, merge, and objects.

The store (store.py) calls `apply_one` inside its transaction, holding its lock; operations arrive
already validated (validation.py), so identifiers are normalised and sizes are within limits.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from target_customerio.sandbox import identity
from target_customerio.sandbox.campaigns import enter_on_event

if TYPE_CHECKING:
    from target_customerio.sandbox.store import Store

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class ItemError(Exception):
    """An operation that validated but cannot be applied (e.g. an unknown cio_id)."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.item = {"reason": reason, "field": field, "message": message}


def new_ulid(now: float | None = None) -> str:
    """A fresh ULID (48-bit ms time + 80 random bits), for events sent without an id."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _merge_attributes(current: dict, changes: dict) -> dict:
    """Customer.io merge: a null or empty-string value removes the attribute."""
    merged = dict(current)
    for name, value in changes.items():
        if value is None or value == "":
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def apply_one(store: Store, op: dict, received_at: float) -> None:
    action = op["action"]
    store.counters[f"ops_{op['type']}_{action}"] += 1
    if op["type"] == "object":
        if store.persist:
            _apply_object(store, op)
        return
    if action == "event":
        _event(store, op, received_at)
    elif not store.persist:
        return
    elif action == "identify":
        _identify(store, op["identifier"], op.get("attributes") or {}, op.get("timestamp"))
    elif action == "delete":
        _delete(store, op["identifier"])
    elif action in ("suppress", "unsuppress"):
        _suppress(store, op["identifier"], action == "suppress")
    elif action == "merge":
        _merge(store, op["primary"], op["secondary"])


def _find(store: Store, identifier: tuple[str, str]) -> sqlite3.Row | None:
    kind, value = identifier  # kind is one of id / email / cio_id (validated upstream)
    return store.db.execute(f"SELECT * FROM people WHERE {kind} = ?", (value,)).fetchone()


def _create(store: Store, identifier: tuple[str, str], field: str = "identifiers") -> sqlite3.Row:
    """A new person; `updated` stays 0 until an identify sets attributes."""
    kind, value = identifier
    if kind == "cio_id":
        raise ItemError("not_found", f"{field}.cio_id", f"no person with cio_id {value!r}")
    cio_id = secrets.token_hex(6)
    store.db.execute(
        f"INSERT INTO people (cio_id, {kind}, updated) VALUES (?, ?, 0)", (cio_id, value)
    )
    store.counters["people_created"] += 1
    return _find(store, ("cio_id", cio_id))


def _find_or_create(store: Store, identifier: tuple[str, str], field: str = "identifiers"):
    person = _find(store, identifier)
    return person if person is not None else _create(store, identifier, field)


def _identify(
    store: Store, identifier: tuple[str, str], changes: dict, timestamp: int | None
) -> None:
    person = _find(store, identifier)
    if person is not None and timestamp is not None and timestamp < person["updated"]:
        store.counters["stale_identify_dropped"] += 1  # Customer.io drops these silently
        return
    person = person if person is not None else _create(store, identifier)
    if person["suppressed"]:
        store.counters["suppressed_dropped"] += 1
        return
    changes = {k: v for k, v in changes.items() if k != "cio_id"}
    for kind in ("id", "email"):
        value = _held_by_another(store, person, kind, changes, identifier)
        if value is not None:  # Customer.io: the change fails, and says so in the activity log
            store.counters["identifier_conflicts"] += 1
            del changes[kind]
            store.activity(
                person["cio_id"],
                "failed_attribute_change",
                kind,
                time.time(),
                {"attribute": kind, "value": value, "reason": f"{kind} is in use by another"},
            )
    before = json.loads(person["attributes"])
    attributes = _merge_attributes(before, changes)
    identity.attribute_changes(store, person["cio_id"], before, attributes)
    _update_identifier(store, person, "id", changes, identifier)
    _update_identifier(store, person, "email", changes, identifier)
    updated = timestamp if timestamp is not None else int(time.time())
    store.db.execute(
        "UPDATE people SET attributes = ?, updated = ? WHERE cio_id = ?",
        (_dumps(attributes), updated, person["cio_id"]),
    )
    store.counters["people_identified"] += 1


def _held_by_another(
    store: Store, person, kind: str, changes: dict, used: tuple[str, str]
) -> str | None:
    """The `id` / `email` value an identify sets that another person already holds, or None."""
    if kind not in changes or used[0] == kind:
        return None
    value = changes[kind]
    if value is None or value == "":
        return None
    value = str(value).lower() if kind == "email" else str(value)
    if value == person[kind]:
        return None
    owner = _find(store, (kind, value))
    return value if owner is not None and owner["cio_id"] != person["cio_id"] else None


def _update_identifier(
    store: Store, person, kind: str, changes: dict, used: tuple[str, str]
) -> None:
    """An `id` / `email` attribute also sets that identifier (one another person holds was
    taken out of the changes, as a failed attribute change)."""
    if kind not in changes or used[0] == kind:
        return
    value = changes[kind]
    if value is None or value == "":
        sql = f"UPDATE people SET {kind} = NULL WHERE cio_id = ?"
        store.db.execute(sql, (person["cio_id"],))
        return
    value = str(value).lower() if kind == "email" else str(value)
    if value == person[kind]:
        return
    store.db.execute(f"UPDATE people SET {kind} = ? WHERE cio_id = ?", (value, person["cio_id"]))


def _event(store: Store, op: dict, received_at: float) -> None:
    event_id = op.get("id") or new_ulid(received_at)
    if _event_seen(store, event_id):
        store.counters["duplicate_events_dropped"] += 1
        return
    if not store.persist:
        store.seen_event_ids.add(event_id)
        store.counters["events_accepted"] += 1
        return
    person = _find_or_create(store, op["identifier"])
    if person["suppressed"]:
        store.counters["suppressed_dropped"] += 1
        return
    timestamp = op.get("timestamp")
    if op["name"] in store.write_faults.failed_events:  # accepted, then refused
        store.counters["events_failed"] += 1
        data = {"id": event_id, "reason": "the event could not be processed"}
        store.activity(person["cio_id"], "failed_event", op["name"], received_at, data)
        return
    timestamp = int(received_at) if timestamp is None else timestamp
    store.db.execute(
        "INSERT INTO events (cio_id, id, name, timestamp, attributes, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            person["cio_id"],
            event_id,
            op["name"],
            timestamp,
            _dumps(op.get("attributes") or {}),
            received_at,
        ),
    )
    store.counters["events_accepted"] += 1
    enter_on_event(store, person["cio_id"], event_id, op["name"], timestamp, received_at)


def _event_seen(store: Store, event_id: str) -> bool:
    if not store.persist:
        return event_id in store.seen_event_ids
    row = store.db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone()
    return row is not None


def _delete(store: Store, identifier: tuple[str, str]) -> None:
    person = _find(store, identifier)
    if person is None:
        return
    _forget(store, person["cio_id"])
    store.db.execute("DELETE FROM people WHERE cio_id = ?", (person["cio_id"],))
    store.counters["people_deleted"] += 1


def _suppress(store: Store, identifier: tuple[str, str], suppressed: bool) -> None:
    """Suppress deletes the person's data but keeps its identifiers as a tombstone, so that
    later identifies and events for them are ignored; unsuppress removes the tombstone (the data
    is not restored: the next identify starts a new profile)."""
    if not suppressed:
        person = _find(store, identifier)
        if person is not None and person["suppressed"]:
            store.db.execute("DELETE FROM people WHERE cio_id = ?", (person["cio_id"],))
            store.counters["people_unsuppressed"] += 1
        return
    person = _find_or_create(store, identifier)
    _forget(store, person["cio_id"])
    store.db.execute(
        "UPDATE people SET suppressed = 1, attributes = '{}' WHERE cio_id = ?", (person["cio_id"],)
    )
    store.counters["people_suppressed"] += 1


def _forget(store: Store, cio_id: str) -> None:
    """What a deleted or suppressed person leaves behind: its events and segment memberships."""
    store.db.execute("DELETE FROM events WHERE cio_id = ?", (cio_id,))
    store.db.execute("DELETE FROM segment_members WHERE cio_id = ?", (cio_id,))
    store.db.execute("DELETE FROM activities WHERE cio_id = ?", (cio_id,))


def _merge(store: Store, primary: tuple[str, str], secondary: tuple[str, str]) -> None:
    """Secondary folds into primary: primary's attributes win, events and manual segment
    memberships move, secondary goes."""
    source = _find(store, secondary)
    if source is None:
        return
    target = _find_or_create(store, primary, "primary")
    if target["cio_id"] == source["cio_id"]:
        return
    attributes = {**json.loads(source["attributes"]), **json.loads(target["attributes"])}
    store.db.execute("DELETE FROM people WHERE cio_id = ?", (source["cio_id"],))
    moved = (target["cio_id"], source["cio_id"])
    store.db.execute("UPDATE events SET cio_id = ? WHERE cio_id = ?", moved)
    store.db.execute("UPDATE activities SET cio_id = ? WHERE cio_id = ?", moved)
    store.activity(
        target["cio_id"], "profile_merge", None, time.time(), {"merged": source["cio_id"]}
    )
    store.db.execute("UPDATE OR IGNORE segment_members SET cio_id = ? WHERE cio_id = ?", moved)
    store.db.execute("DELETE FROM segment_members WHERE cio_id = ?", (source["cio_id"],))
    store.db.execute(
        "UPDATE people SET attributes = ?, id = ?, email = ?, updated = ? WHERE cio_id = ?",
        (
            _dumps(attributes),
            target["id"] or source["id"],
            target["email"] or source["email"],
            int(time.time()),
            target["cio_id"],
        ),
    )
    store.counters["people_merged"] += 1


def _apply_object(store: Store, op: dict) -> None:
    key = (op["object_type_id"], op["object_id"])
    row = store.db.execute(
        "SELECT * FROM objects WHERE object_type_id = ? AND object_id = ?", key
    ).fetchone()
    if op["action"] == "delete":
        store.db.execute("DELETE FROM objects WHERE object_type_id = ? AND object_id = ?", key)
        return
    attributes = json.loads(row["attributes"]) if row else {}
    relationships = json.loads(row["relationships"]) if row else []
    for rel in op.get("cio_relationships") or []:
        if rel not in relationships:
            relationships.append(rel)
    store.db.execute(
        "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
        (
            *key,
            _dumps(_merge_attributes(attributes, op.get("attributes") or {})),
            _dumps(relationships),
            int(time.time()),
        ),
    )
