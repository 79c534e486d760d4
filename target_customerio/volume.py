"""Sync volume: each completed run's counts per stream are kept in the ledger, and a route's
`max_volume_change` fails the run (exit 7, after delivery and STATE) when the records received
move further than that share from the median of the last completed runs: an empty table, a
broken join or a tap filter shows here before it shows in revenue."""

from __future__ import annotations

import statistics
from typing import Any

from target_customerio.ledger import RUN_HISTORY, Ledger

MIN_HISTORY = 3  # completed runs needed before a run's volume is judged


def record_and_check(
    ledger: Ledger, streams: dict[str, tuple[str, float | None]], counts: dict[str, dict[str, int]]
) -> dict[str, dict[str, Any]]:
    """For each stream (name -> (ledger scope, max_volume_change)): its check against the
    history, then this run added to the history. Returns what the report's `volume` shows."""
    checked: dict[str, dict[str, Any]] = {}
    for stream, (scope, max_change) in streams.items():
        history = ledger.runs(scope)
        tally = counts.get(stream, {})
        if max_change is not None:
            checked[stream] = judge(tally.get("received", 0), history, max_change)
        ledger.record_run(
            scope, {key: tally.get(key, 0) for key in ("received", "sent", "rejected", "skipped")}
        )
    return checked


def judge(received: int, history: list[dict[str, int]], max_change: float) -> dict[str, Any]:
    """Whether `received` is within `max_change` of the median of `history`'s received counts."""
    past = [run.get("received", 0) for run in history[-RUN_HISTORY:]]
    out: dict[str, Any] = {
        "received": received,
        "max_volume_change": max_change,
        "history": history,
    }
    if len(past) < MIN_HISTORY:
        return {
            **out,
            "ok": True,
            "reason": f"not checked: {len(past)} completed run(s) so far, {MIN_HISTORY} needed",
        }
    median = statistics.median(past)
    change = abs(received - median) / median if median else (0.0 if received == 0 else float("inf"))
    ok = change <= max_change
    reason = (
        None
        if ok
        else (
            f"received {received} records, {change:.0%} away from the median {median:g} "
            f"of the last {len(past)} runs (max_volume_change {max_change:g})"
        )
    )
    return {
        **out,
        "median": median,
        "change": round(change, 4) if change != float("inf") else None,
        "ok": ok,
        "reason": reason,
    }
