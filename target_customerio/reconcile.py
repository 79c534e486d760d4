"""Reconcile checks: each segment count Customer.io reports against the count the database
expects, run after everything else in the run is delivered and its STATE written.

A reconcile route's rows reach here as checks (operations/reconcile.py), through the same
mapping and accounting as any operation; `run` reads each segment from the App API and
returns what the report's `reconciliation` shows. A check outside its tolerance fails the run
(exit 7) unless its route says `on_drift: warn`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from target_customerio.app_api import AppClient
from target_customerio.errors import DriftError
from target_customerio.operations.reconcile import Tolerance
from target_customerio.report import RunReport
from target_customerio.settings import Settings
from target_customerio.wire import Batch


@dataclass
class Check:
    """One segment's check and, once run, its outcome."""

    stream: str
    segment_id: int
    expected: int
    tolerance: Tolerance
    on_drift: str
    name: str | None = None
    actual: int | None = None
    difference: int | None = None
    ok: bool | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tolerance"] = str(self.tolerance)
        return out


class Reconciler:
    """Collects the checks of reconcile streams (where others have Track API delivery), and
    runs them."""

    shards = 1

    def __init__(self, report: RunReport, logger: logging.Logger) -> None:
        self._report, self._logger = report, logger
        self._lock = threading.Lock()
        self.checks: list[Check] = []

    def submit(self, shard: int, batch: Batch) -> None:
        """A batch of checks, accepted to be run at the end of the run."""
        checks = []
        for op in batch.ops:
            data = orjson.loads(op.body)
            tolerance = Tolerance(data["tolerance"], data["share"])
            checks.append(
                Check(
                    batch.stream, data["segment_id"], data["expected"], tolerance, data["on_drift"]
                )
            )
        with self._lock:
            self.checks += checks
        self._report.delivered(batch.stream, batch.records)

    def run_checks(self, settings: Settings, client: Callable[[], AppClient]) -> None:
        """Every check, against the run's App API client (none on a dry run)."""
        if not self.checks:
            return
        if settings.dry_run:
            self._logger.info("dry run: %d reconcile check(s) not run", len(self.checks))
            return
        self.run(client())
        self._logger.info("reconcile: %d segment check(s) within tolerance", len(self.checks))

    def run(self, client: AppClient) -> list[Check]:
        """Read every segment's count; record each outcome in the report; raise DriftError
        (exit 7) when a check on an `on_drift: fail` route is outside its tolerance."""
        for check in self.checks:
            self._run_one(client, check)
        self._report.reconciliation = [check.as_dict() for check in self.checks]
        failed = [check for check in self.checks if not check.ok]
        for check in failed:
            log = self._logger.warning if check.on_drift == "warn" else self._logger.error
            log("reconcile: %s", _line(check))
        fatal = [check for check in failed if check.on_drift == "fail"]
        if fatal:
            shown = ", ".join(str(check.segment_id) for check in fatal[:10])
            raise DriftError(
                f"{len(fatal)} segment check(s) outside their tolerance (segments {shown}): "
                "Customer.io disagrees with the database; see the report's reconciliation"
            )
        return self.checks

    def _run_one(self, client: AppClient, check: Check) -> None:
        segment = client.segment(check.segment_id)
        if segment is None:
            check.ok, check.reason = False, "no such segment in Customer.io (404)"
            return
        check.name = str(segment.get("name")) if segment.get("name") is not None else None
        actual = client.customer_count(check.segment_id)
        if actual is None:
            check.ok, check.reason = False, "no such segment in Customer.io (404)"
            return
        check.actual, check.difference = actual, actual - check.expected
        check.ok = abs(check.difference) <= check.tolerance.allows(check.expected)
        if not check.ok:
            check.reason = "outside tolerance"


def _line(check: Check) -> str:
    name = f" ({check.name})" if check.name else ""
    if check.actual is None:
        return f"segment {check.segment_id}{name}: {check.reason}; expected {check.expected}"
    return (
        f"segment {check.segment_id}{name}: Customer.io counts {check.actual}, "
        "the database expects "
        f"{check.expected} (difference {check.difference:+d}, tolerance {check.tolerance})"
    )
