"""Sync volume: each completed run's counts per stream are kept in the ledger, and a route's
`max_volume_change` fails the run (exit 7, after delivery and STATE) when the records received
move further than that share from the median of the last completed runs: an empty table, a
broken join or a tap filter shows here before it shows in revenue."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from typing import Any

from target_customerio.ledger import RUN_HISTORY, Ledger
from target_customerio.operations import KINDS
from target_customerio.report import RunReport
from target_customerio.routes import Routes

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


def check_streams(
    routes: Routes,
    report: RunReport,
    ledger: Ledger,
    scope_of: Callable[[str], str | None],
    logger: logging.Logger,
) -> dict[str, str]:
    """This run's counts into the ledger's history, and each `max_volume_change` checked against
    it (after the last STATE: the run's data is delivered either way). Returns the streams
    outside their range, with why; the report's `volume` shows every check."""
    streams: dict[str, tuple[str, float | None]] = {}
    for stream in report.stream_names():
        route = routes.match(stream)
        scope = scope_of(stream)
        if route is None or KINDS[route.kind].channel == "checks":
            continue
        if scope is None:
            if route.max_volume_change is not None:
                logger.warning(
                    "stream %s: max_volume_change needs change_detection (the ledger "
                    "keeps the history it compares with); not checked",
                    stream,
                )
            continue
        streams[stream] = (scope, route.max_volume_change)
    counts = {stream: report.stream(stream).counts() for stream in streams}
    checked = record_and_check(ledger, streams, counts)
    if checked:
        report.volume = checked
    problems = {
        stream: str(check["reason"]) for stream, check in checked.items() if not check["ok"]
    }
    for stream, problem in problems.items():
        logger.error("volume: %s: %s", stream, problem)
    return problems
