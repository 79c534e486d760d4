"""SQLite storage for the sandbox: people, events, objects, the request log and counters.

One connection guarded by one lock: handler threads serialise here, which is plenty for a local
sandbox and keeps every batch atomic. Operations arrive already validated (see validation.py); this
module only applies Customer.io's semantics to them.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections import Counter
from typing import Any

REQUEST_LOG_MAX = 50_000  # rows kept in the request log; older ones are trimmed
_TRIM_EVERY = 1_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cio_id TEXT NOT NULL UNIQUE,
    id TEXT UNIQUE,
    email TEXT UNIQUE,
    attributes TEXT NOT NULL DEFAULT '{}',
    updated INTEGER NOT NULL,
    suppressed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cio_id TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    timestamp INTEGER,
    attributes TEXT NOT NULL DEFAULT '{}',
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_cio_id ON events (cio_id);
CREATE TABLE IF NOT EXISTS objects (
    object_type_id TEXT NOT NULL,
    object_id TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}',
    relationships TEXT NOT NULL DEFAULT '[]',
    updated INTEGER NOT NULL,
    PRIMARY KEY (object_type_id, object_id)
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT, path TEXT, status INTEGER, bytes INTEGER, ops INTEGER, errors INTEGER, at REAL
);
"""

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


class Store:
    """People, events and objects in SQLite; with persist=False only counters and the log."""

    def __init__(self, db_path: str = ":memory:", persist: bool = True) -> None:
        self.persist = persist
        self.lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self._seen_event_ids: set[str] = set()  # dedupe when not persisting
        self._log_inserts = 0
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        if db_path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    # ---- writes ---------------------------------------------------------------------------

    def apply(self, ops: list[tuple[int, dict]], received_at: float | None = None) -> list[dict]:
        """Apply validated ops (batch index, op) in one transaction; return apply-time errors."""
        received_at = time.time() if received_at is None else received_at
        errors: list[dict] = []
        with self.lock:
            self.db.execute("BEGIN")
            try:
                for index, op in ops:
                    try:
                        self._apply_one(op, received_at)
                    except ItemError as exc:
                        errors.append({"batch_index": index, **exc.item})
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.counters["item_errors"] += len(errors)
        return errors

    def _apply_one(self, op: dict, received_at: float) -> None:
        action = op["action"]
        self.counters[f"ops_{op['type']}_{action}"] += 1
        if op["type"] == "object":
            if self.persist:
                self._apply_object(op)
            return
        if action == "event":
            self._event(op, received_at)
        elif not self.persist:
            return
        elif action == "identify":
            self._identify(op["identifier"], op.get("attributes") or {}, op.get("timestamp"))
        elif action == "delete":
            self._delete(op["identifier"])
        elif action in ("suppress", "unsuppress"):
            self._suppress(op["identifier"], action == "suppress")
        elif action == "merge":
            self._merge(op["primary"], op["secondary"])

    def _find(self, identifier: tuple[str, str]) -> sqlite3.Row | None:
        kind, value = identifier  # kind is one of id / email / cio_id (validated upstream)
        return self.db.execute(f"SELECT * FROM people WHERE {kind} = ?", (value,)).fetchone()

    def _create(self, identifier: tuple[str, str], field: str = "identifiers") -> sqlite3.Row:
        """A new person; `updated` stays 0 until an identify sets attributes."""
        kind, value = identifier
        if kind == "cio_id":
            raise ItemError("not_found", f"{field}.cio_id", f"no person with cio_id {value!r}")
        cio_id = secrets.token_hex(6)
        self.db.execute(
            f"INSERT INTO people (cio_id, {kind}, updated) VALUES (?, ?, 0)", (cio_id, value)
        )
        self.counters["people_created"] += 1
        return self._find(("cio_id", cio_id))

    def _find_or_create(self, identifier: tuple[str, str], field: str = "identifiers"):
        person = self._find(identifier)
        return person if person is not None else self._create(identifier, field)

    def _identify(self, identifier: tuple[str, str], changes: dict, timestamp: int | None) -> None:
        person = self._find(identifier)
        if person is not None and timestamp is not None and timestamp < person["updated"]:
            self.counters["stale_identify_dropped"] += 1  # Customer.io drops these silently
            return
        person = person if person is not None else self._create(identifier)
        if person["suppressed"]:
            self.counters["suppressed_dropped"] += 1
            return
        changes = {k: v for k, v in changes.items() if k != "cio_id"}
        attributes = _merge_attributes(json.loads(person["attributes"]), changes)
        self._update_identifier(person, "id", changes, identifier)
        self._update_identifier(person, "email", changes, identifier)
        updated = timestamp if timestamp is not None else int(time.time())
        self.db.execute(
            "UPDATE people SET attributes = ?, updated = ? WHERE cio_id = ?",
            (_dumps(attributes), updated, person["cio_id"]),
        )
        self.counters["people_identified"] += 1

    def _update_identifier(self, person, kind: str, changes: dict, used: tuple[str, str]) -> None:
        """An `id` / `email` attribute also sets that identifier, unless another person has it."""
        if kind not in changes or used[0] == kind:
            return
        value = changes[kind]
        if value is None or value == "":
            sql = f"UPDATE people SET {kind} = NULL WHERE cio_id = ?"
            self.db.execute(sql, (person["cio_id"],))
            return
        value = str(value).lower() if kind == "email" else str(value)
        if value == person[kind]:
            return
        owner = self._find((kind, value))
        if owner is not None:
            self.counters["identifier_conflicts"] += 1  # kept as an attribute; the page flags it
            return
        self.db.execute(f"UPDATE people SET {kind} = ? WHERE cio_id = ?", (value, person["cio_id"]))

    def _event(self, op: dict, received_at: float) -> None:
        event_id = op.get("id") or new_ulid(received_at)
        if self._event_seen(event_id):
            self.counters["duplicate_events_dropped"] += 1
            return
        if not self.persist:
            self._seen_event_ids.add(event_id)
            self.counters["events_accepted"] += 1
            return
        person = self._find_or_create(op["identifier"])
        if person["suppressed"]:
            self.counters["suppressed_dropped"] += 1
            return
        timestamp = op.get("timestamp")
        self.db.execute(
            "INSERT INTO events (cio_id, id, name, timestamp, attributes, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                person["cio_id"],
                event_id,
                op["name"],
                int(received_at) if timestamp is None else timestamp,
                _dumps(op.get("attributes") or {}),
                received_at,
            ),
        )
        self.counters["events_accepted"] += 1

    def _event_seen(self, event_id: str) -> bool:
        if not self.persist:
            return event_id in self._seen_event_ids
        row = self.db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone()
        return row is not None

    def _delete(self, identifier: tuple[str, str]) -> None:
        person = self._find(identifier)
        if person is None:
            return
        self.db.execute("DELETE FROM events WHERE cio_id = ?", (person["cio_id"],))
        self.db.execute("DELETE FROM people WHERE cio_id = ?", (person["cio_id"],))
        self.counters["people_deleted"] += 1

    def _suppress(self, identifier: tuple[str, str], suppressed: bool) -> None:
        person = self._find_or_create(identifier) if suppressed else self._find(identifier)
        if person is not None:
            self.db.execute(
                "UPDATE people SET suppressed = ? WHERE cio_id = ?",
                (int(suppressed), person["cio_id"]),
            )

    def _merge(self, primary: tuple[str, str], secondary: tuple[str, str]) -> None:
        """Secondary folds into primary: primary's attributes win, events move, secondary goes."""
        source = self._find(secondary)
        if source is None:
            return
        target = self._find_or_create(primary, "primary")
        if target["cio_id"] == source["cio_id"]:
            return
        attributes = {**json.loads(source["attributes"]), **json.loads(target["attributes"])}
        self.db.execute("DELETE FROM people WHERE cio_id = ?", (source["cio_id"],))
        self.db.execute(
            "UPDATE events SET cio_id = ? WHERE cio_id = ?", (target["cio_id"], source["cio_id"])
        )
        self.db.execute(
            "UPDATE people SET attributes = ?, id = ?, email = ?, updated = ? WHERE cio_id = ?",
            (
                _dumps(attributes),
                target["id"] or source["id"],
                target["email"] or source["email"],
                int(time.time()),
                target["cio_id"],
            ),
        )
        self.counters["people_merged"] += 1

    def _apply_object(self, op: dict) -> None:
        key = (op["object_type_id"], op["object_id"])
        row = self.db.execute(
            "SELECT * FROM objects WHERE object_type_id = ? AND object_id = ?", key
        ).fetchone()
        if op["action"] == "delete":
            self.db.execute("DELETE FROM objects WHERE object_type_id = ? AND object_id = ?", key)
            return
        attributes = json.loads(row["attributes"]) if row else {}
        relationships = json.loads(row["relationships"]) if row else []
        for rel in op.get("cio_relationships") or []:
            if rel not in relationships:
                relationships.append(rel)
        self.db.execute(
            "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
            (
                *key,
                _dumps(_merge_attributes(attributes, op.get("attributes") or {})),
                _dumps(relationships),
                int(time.time()),
            ),
        )

    # ---- request log, counters ------------------------------------------------------------

    def log_request(
        self, method: str, path: str, status: int, size: int, ops: int, errors: int = 0
    ) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO requests (method, path, status, bytes, ops, errors, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (method, path, status, size, ops, errors, time.time()),
            )
            self._log_inserts += 1
            if self._log_inserts % _TRIM_EVERY == 0:
                self.db.execute(
                    "DELETE FROM requests WHERE seq <= (SELECT MAX(seq) FROM requests) - ?",
                    (REQUEST_LOG_MAX,),
                )

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def counters_snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counters)

    def reset(self) -> None:
        with self.lock:
            self.db.executescript(
                "DELETE FROM people; DELETE FROM events; DELETE FROM objects; DELETE FROM requests;"
            )
            self.counters.clear()
            self._seen_event_ids.clear()

    # ---- reads ----------------------------------------------------------------------------

    def _rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, params).fetchall()

    def people(self) -> list[dict]:
        return [_person(row) for row in self._rows("SELECT * FROM people ORDER BY seq")]

    def person(
        self, id: str | None = None, email: str | None = None, cio_id: str | None = None
    ) -> dict | None:
        for kind, value in (("cio_id", cio_id), ("id", id), ("email", email)):
            if value is not None:
                value = value.lower() if kind == "email" else str(value)
                rows = self._rows(f"SELECT * FROM people WHERE {kind} = ?", (value,))
                return _person(rows[0]) if rows else None
        return None

    def events(self, cio_id: str | None = None) -> list[dict]:
        sql = (
            "SELECT e.*, p.id AS person_id, p.email AS person_email FROM events e"
            " LEFT JOIN people p ON p.cio_id = e.cio_id"
        )
        rows = (
            self._rows(sql + " WHERE e.cio_id = ? ORDER BY e.seq", (cio_id,))
            if cio_id is not None
            else self._rows(sql + " ORDER BY e.seq")
        )
        return [_event(row) for row in rows]

    def event_counts(self) -> dict[str, int]:
        rows = self._rows("SELECT cio_id, COUNT(*) AS n FROM events GROUP BY cio_id")
        return {row["cio_id"]: row["n"] for row in rows}

    def objects(self) -> list[dict]:
        rows = self._rows("SELECT * FROM objects ORDER BY object_type_id, object_id")
        return [
            {
                "object_type_id": row["object_type_id"],
                "object_id": row["object_id"],
                "attributes": json.loads(row["attributes"]),
                "relationships": json.loads(row["relationships"]),
                "updated": row["updated"],
            }
            for row in rows
        ]

    def requests(self) -> list[dict]:
        rows = self._rows(
            "SELECT method, path, status, bytes, ops, errors, at FROM requests ORDER BY seq"
        )
        return [dict(row) for row in rows]


def _person(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "email": row["email"],
        "cio_id": row["cio_id"],
        "attributes": json.loads(row["attributes"]),
        "updated": row["updated"],
        "suppressed": bool(row["suppressed"]),
    }


def _event(row: sqlite3.Row) -> dict:
    return {
        "person_id": row["person_id"],
        "person_email": row["person_email"],
        "cio_id": row["cio_id"],
        "name": row["name"],
        "id": row["id"],
        "timestamp": row["timestamp"],
        "attributes": json.loads(row["attributes"]),
        "received_at": row["received_at"],
    }
