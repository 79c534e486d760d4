"""SQLite storage for the sandbox: people, events, objects, segments, the request log, counters.

One connection guarded by one lock: handler threads serialise here, which is plenty for a local
sandbox and keeps every batch atomic. How each operation changes the data (Customer.io's
semantics) is operations.py; this module holds the schema, the transaction, the request log,
the counters and the reads.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections import Counter

from target_customerio.sandbox.campaigns import SCHEMA as CAMPAIGN_SCHEMA
from target_customerio.sandbox.operations import ItemError, apply_one
from target_customerio.sandbox.write_faults import WriteFaults

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
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    condition TEXT,
    created REAL NOT NULL,
    expected INTEGER,
    expected_at REAL
);
CREATE TABLE IF NOT EXISTS segment_members (
    segment_id INTEGER NOT NULL,
    cio_id TEXT NOT NULL,
    added REAL NOT NULL,
    PRIMARY KEY (segment_id, cio_id)
);
CREATE INDEX IF NOT EXISTS segment_members_cio_id ON segment_members (cio_id);
CREATE TABLE IF NOT EXISTS activities (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cio_id TEXT NOT NULL,
    type TEXT NOT NULL,
    name TEXT,
    timestamp INTEGER NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS activities_cio_id ON activities (cio_id);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT, path TEXT, status INTEGER, bytes INTEGER, ops INTEGER, errors INTEGER, at REAL
);
"""


class Store:
    """People, events and objects in SQLite; with persist=False only counters and the log."""

    def __init__(self, db_path: str = ":memory:", persist: bool = True) -> None:
        self.persist = persist
        self.lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self.seen_event_ids: set[str] = set()  # dedupe when not persisting
        self.write_faults = WriteFaults()  # late and dropped writes (write_faults.py)
        self._log_inserts = 0
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        if db_path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.db.executescript(CAMPAIGN_SCHEMA)

    # ---- writes ---------------------------------------------------------------------------

    def apply(self, ops: list[tuple[int, dict]], received_at: float | None = None) -> list[dict]:
        """Apply validated ops (batch index, op) in one transaction; return apply-time errors.
        Write faults first: a person's writes dropped, or all applied after a delay (their
        apply-time errors are then only counted, as Customer.io's would not be answered)."""
        received_at = time.time() if received_at is None else received_at
        faults = self.write_faults
        if faults.ignored:
            kept = [(index, op) for index, op in ops if not faults.dropped(op)]
            self.count("writes_ignored", len(ops) - len(kept))
            ops = kept
        if faults.later(ops, received_at, self._apply_late):
            return []
        return self._apply_now(ops, received_at)

    def _apply_late(self, ops: list[tuple[int, dict]], received_at: float) -> None:
        self.count("writes_applied_late", len(ops))
        self.count("late_item_errors", len(self._apply_now(ops, received_at)))

    def _apply_now(self, ops: list[tuple[int, dict]], received_at: float) -> list[dict]:
        errors: list[dict] = []
        with self.lock:
            self.db.execute("BEGIN")
            try:
                for index, op in ops:
                    try:
                        apply_one(self, op, received_at)
                    except ItemError as exc:
                        errors.append({"batch_index": index, **exc.item})
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.counters["item_errors"] += len(errors)
        return errors

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
        """Empty the data; segment and campaign definitions stay (they are the workspace's
        set-up, like the --segments file), their manual members, recorded expected counts and
        campaign entries go."""
        with self.lock:
            self.db.executescript(
                "DELETE FROM people; DELETE FROM events; DELETE FROM objects; DELETE FROM requests;"
                " DELETE FROM segment_members; DELETE FROM campaign_entries;"
                " DELETE FROM activities;"
                " UPDATE segments SET expected = NULL, expected_at = NULL;"
            )
            self.counters.clear()
            self.seen_event_ids.clear()
        self.write_faults.clear()

    # ---- reads ----------------------------------------------------------------------------

    def rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, params).fetchall()

    def people(self) -> list[dict]:
        return [person_from_row(row) for row in self.rows("SELECT * FROM people ORDER BY seq")]

    def person(
        self, id: str | None = None, email: str | None = None, cio_id: str | None = None
    ) -> dict | None:
        for kind, value in (("cio_id", cio_id), ("id", id), ("email", email)):
            if value is not None:
                value = value.lower() if kind == "email" else str(value)
                rows = self.rows(f"SELECT * FROM people WHERE {kind} = ?", (value,))
                return person_from_row(rows[0]) if rows else None
        return None

    def events(self, cio_id: str | None = None) -> list[dict]:
        sql = (
            "SELECT e.*, p.id AS person_id, p.email AS person_email FROM events e"
            " LEFT JOIN people p ON p.cio_id = e.cio_id"
        )
        rows = (
            self.rows(sql + " WHERE e.cio_id = ? ORDER BY e.seq", (cio_id,))
            if cio_id is not None
            else self.rows(sql + " ORDER BY e.seq")
        )
        return [_event(row) for row in rows]

    def event_counts(self) -> dict[str, int]:
        rows = self.rows("SELECT cio_id, COUNT(*) AS n FROM events GROUP BY cio_id")
        return {row["cio_id"]: row["n"] for row in rows}

    def add_person(self, id: str | None, email: str | None, attributes: dict) -> None:
        """A profile inserted as it is (Sandbox.add_person)."""
        with self.lock:
            self.db.execute(
                "INSERT INTO people (cio_id, id, email, attributes, updated)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    secrets.token_hex(6),
                    id,
                    email.lower() if email else None,
                    json.dumps(attributes, separators=(",", ":")),
                    int(time.time()),
                ),
            )

    def activity(self, cio_id: str, kind: str, name: str | None, at: float, data: dict) -> None:
        """Record an activity (inside a transaction: the caller holds the lock)."""
        self.db.execute(
            "INSERT INTO activities (cio_id, type, name, timestamp, data) VALUES (?, ?, ?, ?, ?)",
            (cio_id, kind, name, int(at), json.dumps(data, separators=(",", ":"))),
        )

    def activities(self, cio_id: str | None = None, kind: str | None = None) -> list[dict]:
        """A person's activities, newest first: the recorded ones and their events (an event's
        activity carries the event's own time); without `cio_id`, everyone's recorded ones
        (each with its `cio_id`); `kind`: only that type."""
        if cio_id is None:
            sql, params = "SELECT cio_id, type, name, timestamp, data, seq FROM activities", ()
        else:
            sql = (
                "SELECT cio_id, type, name, timestamp, data, seq FROM activities WHERE cio_id = ?"
                " UNION ALL SELECT cio_id, 'event', name, timestamp, attributes, seq FROM events"
                " WHERE cio_id = ?"
            )
            params = (cio_id, cio_id)
        rows = self.rows(f"SELECT * FROM ({sql}) ORDER BY timestamp DESC, seq DESC", params)
        found = [
            {
                "type": row["type"],
                "name": row["name"],
                "timestamp": row["timestamp"],
                "data": json.loads(row["data"]),
            }
            | ({} if cio_id is not None else {"cio_id": row["cio_id"]})
            for row in rows
        ]
        return found if kind is None else [a for a in found if a["type"] == kind]

    def objects(self) -> list[dict]:
        rows = self.rows("SELECT * FROM objects ORDER BY object_type_id, object_id")
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
        rows = self.rows(
            "SELECT method, path, status, bytes, ops, errors, at FROM requests ORDER BY seq"
        )
        return [dict(row) for row in rows]


def person_from_row(row: sqlite3.Row) -> dict:
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
