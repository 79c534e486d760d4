"""A target's reject file (JSONL, one rejected record a line, appended run after run), read for
the QA page: the lines of the newest run.

A run is the lines sharing the last line's `run_id` when the target writes one; otherwise the
lines since the last pause of more than RUN_GAP between `rejected_at` times (runs are minutes
apart, a run's rejects seconds apart). Only the file's tail is read: it grows without bound.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

RUN_GAP = dt.timedelta(minutes=10)
TAIL_BYTES = 4 * 1024 * 1024


def newest_run(path: str | Path) -> dict:
    """{"path", "exists", "lines": [entries of the newest run, oldest first], "truncated"}."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return {"path": str(path), "exists": False, "lines": [], "truncated": False}
    truncated = size > TAIL_BYTES
    raw = data.split(b"\n")
    if truncated:
        raw = raw[1:]  # the first line was cut by the seek
    entries = [_entry(line) for line in raw if line.strip()]
    return {"path": str(path), "exists": True, "lines": _last_run(entries), "truncated": truncated}


def _entry(line: bytes) -> dict:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):  # a line cut short by a full disk, say: show it as it is
        return {"reason": "unreadable line", "record": line.decode("utf-8", "replace")}
    return entry


def _last_run(entries: list[dict]) -> list[dict]:
    if not entries:
        return []
    run_id = entries[-1].get("run_id")
    if run_id is not None:
        start = len(entries)
        while start > 0 and entries[start - 1].get("run_id") == run_id:
            start -= 1
        return entries[start:]
    start = len(entries) - 1
    while start > 0:
        later, earlier = _time(entries[start]), _time(entries[start - 1])
        if later is not None and earlier is not None and later - earlier > RUN_GAP:
            break
        start -= 1
    return entries[start:]


def _time(entry: dict) -> Any:
    try:
        stamp = dt.datetime.fromisoformat(str(entry.get("rejected_at")))
    except ValueError:
        return None
    # A naive time cannot be compared with an aware one: read it as UTC.
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)
