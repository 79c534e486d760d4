"""Segments: data-driven ones (a condition, conditions.py) and manual ones (a member list).

Definitions and manual memberships live in the store's SQLite (so a `--db` file keeps them);
counts are computed live over the people the store holds, where Customer.io recalculates
minutes later: the sandbox shows what the count will settle to. Suppressed people are in no
segment (Customer.io has removed them).
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from target_customerio.sandbox.campaigns import enter_on_segment
from target_customerio.sandbox.conditions import ConditionError, Node, Subject, events_used, parse
from target_customerio.sandbox.store import Store, person_from_row

KINDS = ("dynamic", "manual")
ID_TYPES = ("id", "email", "cio_id")
MAX_NAME_CHARS = 255
_FIELDS = ("id", "name", "kind", "condition")


class SegmentError(ValueError):
    """A segment definition or membership change that cannot be accepted (one line)."""


@lru_cache(maxsize=1024)
def tree(condition: str) -> Node:
    """The parsed condition (pure, so cached: counts re-evaluate the same text often)."""
    return parse(condition)


class Segments:
    """The segment definitions, manual memberships and live counts of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- definitions ----

    def add(
        self,
        name: Any,
        condition: Any = None,
        kind: Any = None,
        id: Any = None,
        replace: bool = False,
    ) -> dict:
        """Define a segment; `kind` defaults to dynamic with a condition, manual without one.
        An `id` that exists is an error unless `replace` (a --segments file loaded again)."""
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            raise SegmentError(f"name must be a non-empty string of at most {MAX_NAME_CHARS} chars")
        kind = kind if kind is not None else ("dynamic" if condition is not None else "manual")
        if kind not in KINDS:
            raise SegmentError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if kind == "dynamic":
            if not isinstance(condition, str):
                raise SegmentError("a dynamic segment needs a condition (a string)")
            try:
                tree(condition)
            except ConditionError as exc:
                raise SegmentError(f"condition: {exc}") from None
        elif condition is not None:
            raise SegmentError("a manual segment has no condition (its members are added)")
        if id is not None and (isinstance(id, bool) or not isinstance(id, int) or id < 1):
            raise SegmentError(f"id must be a positive integer, not {id!r}")
        with self.store.lock:
            if id is not None and self.get(id) is not None:
                if not replace:
                    raise SegmentError(f"segment {id} exists")
                self.store.db.execute("DELETE FROM segments WHERE id = ?", (id,))
                if kind != "manual":  # members of a list that is now a condition
                    self.store.db.execute("DELETE FROM segment_members WHERE segment_id = ?", (id,))
            cursor = self.store.db.execute(
                "INSERT INTO segments (id, name, kind, condition, created) VALUES (?, ?, ?, ?, ?)",
                (id, name, kind, condition, time.time()),
            )
            return self.get(cursor.lastrowid)  # type: ignore[return-value]

    def get(self, segment_id: int) -> dict | None:
        rows = self.store.rows("SELECT * FROM segments WHERE id = ?", (segment_id,))
        return _segment(rows[0]) if rows else None

    def all(self) -> list[dict]:
        return [_segment(row) for row in self.store.rows("SELECT * FROM segments ORDER BY id")]

    def delete(self, segment_id: int) -> bool:
        with self.store.lock:
            self.store.db.execute("DELETE FROM segment_members WHERE segment_id = ?", (segment_id,))
            return (
                self.store.db.execute("DELETE FROM segments WHERE id = ?", (segment_id,)).rowcount
                > 0
            )

    def record_expected(self, segment_id: int, expected: int) -> None:
        """What a reconcile run expected this segment to count (shown beside the live count)."""
        if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
            raise SegmentError(f"expected must be a count (an integer >= 0), not {expected!r}")
        with self.store.lock:
            changed = self.store.db.execute(
                "UPDATE segments SET expected = ?, expected_at = ? WHERE id = ?",
                (expected, time.time(), segment_id),
            ).rowcount
        if not changed:
            raise KeyError(segment_id)

    def load_file(self, path: str | Path) -> list[int]:
        """Define the segments of a JSON file: a list of {"id"?, "name", "condition"? , "kind"?}
        (or {"segments": [...]}); a segment with the id of one already defined replaces it."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SegmentError(f"{path}: cannot read segments: {exc}") from None
        if isinstance(data, dict) and set(data) == {"segments"}:
            data = data["segments"]
        if not isinstance(data, list):
            raise SegmentError(f'{path}: expected a list of segments (or {{"segments": [...]}})')
        ids = []
        for i, entry in enumerate(data):
            try:
                ids.append(self.add(**definition(entry), replace=True)["id"])
            except SegmentError as exc:
                raise SegmentError(f"{path}: segment {i + 1}: {exc}") from None
        return ids

    # ---- manual membership ----

    def change_members(self, segment_id: int, ids: list, id_type: str, add: bool) -> int:
        """Add (or remove) people to a manual segment; ids of people the store does not know
        are ignored, as Customer.io ignores them. Returns how many memberships changed."""
        segment = self.get(segment_id)
        if segment is None:
            raise KeyError(segment_id)
        if segment["kind"] != "manual":
            raise SegmentError(f"segment {segment_id} is {segment['kind']}, not manual")
        if id_type not in ID_TYPES:
            raise SegmentError(f"id_type must be one of {', '.join(ID_TYPES)}, not {id_type!r}")
        values = [str(v).lower() if id_type == "email" else str(v) for v in ids]
        changed, now = 0, time.time()
        with self.store.lock:
            for value in values:
                row = self.store.db.execute(
                    f"SELECT cio_id FROM people WHERE {id_type} = ? AND suppressed = 0", (value,)
                ).fetchone()
                if row is None:
                    continue
                if add:
                    sql = "INSERT OR IGNORE INTO segment_members VALUES (?, ?, ?)"
                    params: tuple = (segment_id, row["cio_id"], now)
                else:
                    sql = "DELETE FROM segment_members WHERE segment_id = ? AND cio_id = ?"
                    params = (segment_id, row["cio_id"])
                done = self.store.db.execute(sql, params).rowcount
                changed += done
                if add and done:  # a new member: the campaigns this segment triggers start
                    enter_on_segment(self.store, segment_id, row["cio_id"], now)
        return changed

    # ---- counts and members ----

    def counts(self, now: float | None = None) -> dict[int, int]:
        """Every segment's live count, from one pass over the people."""
        return {sid: len(cio_ids) for sid, cio_ids in self._members(now).items()}

    def count(self, segment_id: int, now: float | None = None) -> int:
        if self.get(segment_id) is None:
            raise KeyError(segment_id)
        return len(self._members(now, only=segment_id).get(segment_id, []))

    def members(self, segment_id: int, now: float | None = None) -> list[dict]:
        """The people in a segment, as the store shows them (in the order they were created)."""
        if self.get(segment_id) is None:
            raise KeyError(segment_id)
        wanted = set(self._members(now, only=segment_id).get(segment_id, []))
        rows = self.store.rows("SELECT * FROM people WHERE suppressed = 0 ORDER BY seq")
        return [person_from_row(row) for row in rows if row["cio_id"] in wanted]

    def of_person(self, cio_id: str, now: float | None = None) -> list[int]:
        """The ids of the segments a person is in."""
        return sorted(sid for sid, ids in self._members(now).items() if cio_id in ids)

    def _members(self, now: float | None, only: int | None = None) -> dict[int, list[str]]:
        """segment id -> cio_ids of its members. Dynamic segments evaluate their condition on
        each person (and the events it names); manual ones read their member list."""
        now = time.time() if now is None else now
        segments = [s for s in self.all() if only is None or s["id"] == only]
        out: dict[int, list[str]] = {}
        dynamic = [(s["id"], tree(s["condition"])) for s in segments if s["kind"] == "dynamic"]
        with self.store.lock:
            for s in segments:
                if s["kind"] == "manual":
                    out[s["id"]] = [
                        r["cio_id"]
                        for r in self.store.db.execute(
                            "SELECT m.cio_id FROM segment_members m JOIN people p"
                            " ON p.cio_id = m.cio_id WHERE m.segment_id = ? AND p.suppressed = 0"
                            " ORDER BY p.seq",
                            (s["id"],),
                        )
                    ]
            if not dynamic:
                return out
            people = self.store.db.execute(
                "SELECT cio_id, attributes FROM people WHERE suppressed = 0 ORDER BY seq"
            ).fetchall()
            events = self._events(set().union(*(events_used(t) for _, t in dynamic)))
        for sid, _ in dynamic:
            out[sid] = []
        for person in people:
            subject = Subject(
                json.loads(person["attributes"]), events.get(person["cio_id"], {}), now
            )
            for sid, node in dynamic:
                if node.matches(subject):
                    out[sid].append(person["cio_id"])
        return out

    def _events(self, names: set[str]) -> dict[str, dict[str, list[int]]]:
        """cio_id -> event name -> timestamps, for the named events only."""
        found: dict[str, dict[str, list[int]]] = {}
        if not names:
            return found
        marks = ", ".join("?" * len(names))
        rows = self.store.db.execute(
            f"SELECT cio_id, name, timestamp FROM events WHERE name IN ({marks})", tuple(names)
        )
        for row in rows:
            found.setdefault(row["cio_id"], {}).setdefault(row["name"], []).append(row["timestamp"])
        return found


def definition(entry: Any) -> dict:
    """The keyword arguments of Segments.add from a JSON definition (file or HTTP body)."""
    if not isinstance(entry, dict):
        raise SegmentError("each segment must be an object")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:  # a typo must not silently define a different segment
        raise SegmentError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    return {k: entry.get(k) for k in _FIELDS}


def _segment(row: Any) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "kind": row["kind"],
        "condition": row["condition"],
        "created": row["created"],
        "expected": row["expected"],
        "expected_at": row["expected_at"],
    }
