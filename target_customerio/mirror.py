"""Mirror routes: who (or which membership) left a view, and telling Customer.io.

A person route with `mirror: true`, and every segment route, mirrors its view. While the run
reads, the mapping processes report who each record is about (the unchanged and the rejected
included: they are still in the view) and what the ledger should keep about those sent
(`RunMembers`, one per stream, fed by the sink). At the end of a run that read its input to
the end and delivered it without failure, each stream read whole (`RunMembers.incomplete`) is
settled (`Mirror.finish`): the members the ledger holds for its scope that were not in this
run have left. When more than `max_exit_ratio` of them would leave at once, nobody does (the
guard against an empty table, a bad join, a tap filter: the run ends with exit 8). Otherwise a
person route's leavers get their `on_exit` operation through the normal Track API delivery, a
segment route's memberships are removed, and then the ledger keeps this run's members: those
sent only once Customer.io accepted them, those who left only once they were told. A dry run
writes the would-be exits and removals to the dry-run file and changes no ledger.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass, field
from functools import partial

import orjson

from target_customerio.delivery import Delivery, DryRun
from target_customerio.ledger import EXIT_FINGERPRINT, Ledger
from target_customerio.memberships import Memberships, SegmentRequests
from target_customerio.operations import KINDS
from target_customerio.operations.operation import Operation
from target_customerio.report import RunReport
from target_customerio.routes import Mirror as MirrorOptions
from target_customerio.routes import Route
from target_customerio.wire import Packer, Segment


class RunMembers:
    """One mirror stream's members in this run, as its sinks report them (one thread: the
    reader's, which accounts for every chunk)."""

    def __init__(self, stream: str, route: Route, scope: str) -> None:
        self.stream, self.route, self.scope = stream, route, scope
        self.keys = array("q")  # whom each record is about (repeats and all)
        self.sent: dict[int, tuple[int, str]] = {}  # key -> (fingerprint, member) of those sent
        self.records = 0  # records of the stream handed to mapping
        self.activated_at: int | None = None  # records before its last ACTIVATE_VERSION

    @property
    def options(self) -> MirrorOptions:
        mirror = self.route.mirror
        assert mirror is not None
        return mirror

    def add(self, keys: array, sent: list[tuple[int, int, str]]) -> None:
        self.keys.extend(keys)
        for key, fingerprint, member in sent:
            self.sent[key] = (fingerprint, member)

    def activate_version(self, records: int) -> None:
        """The tap's ACTIVATE_VERSION after `records` records of the stream: where a tap sends
        one, the table was read whole when it comes after the last record."""
        self.activated_at = records

    def incomplete(self) -> str | None:
        """Why the stream was not read whole in a run that ended normally; None: it was."""
        if self.activated_at is not None and self.activated_at != self.records:
            after = self.records - self.activated_at
            return (
                f"{after} record(s) came after the stream's last ACTIVATE_VERSION: the tap "
                "did not finish reading the table, so nobody left the view"
            )
        return None


@dataclass
class _Plan:
    run: RunMembers
    leavers: dict[int, str] = field(default_factory=dict)  # key -> member, to be told
    exits: dict[int, Operation] = field(default_factory=dict)  # key -> its exit operation
    forgotten: set[int] = field(default_factory=set)  # left, with nothing to send
    removed: set[int] = field(default_factory=set)  # memberships removed (segment routes)


class Mirror:
    """The mirror routes of the run: their members, and the end of a complete run."""

    def __init__(self, report: RunReport, logger: logging.Logger) -> None:
        self._report, self._logger = report, logger
        self.runs: dict[str, RunMembers] = {}

    def members(self, stream: str, route: Route, scope: str) -> RunMembers:
        """The stream's members (one for every sink the stream has in the run)."""
        run = self.runs.get(stream)
        if run is None:
            run = self.runs[stream] = RunMembers(stream, route, scope)
            options = run.options
            self._report.mirror_stream(
                stream, on_exit=options.on_exit, max_exit_ratio=options.max_exit_ratio
            )
        return run

    def finish(
        self,
        ledger: Ledger,
        delivery: Delivery | DryRun,
        memberships: Memberships,
        segments: SegmentRequests,
        *,
        dry_run: bool,
    ) -> list[str]:
        """Settle every stream read whole; returns the guard's problems (exit 8), one per
        route that would have lost more than its `max_exit_ratio`."""
        problems: list[str] = []
        plans: list[_Plan] = []
        for run in self.runs.values():
            plan = self._plan(run, ledger, problems)
            if plan is not None:
                plans.append(plan)
        for plan in plans:
            self._exit_operations(plan, delivery)
        delivery.wait()  # raises what delivery failed on: the ledger then keeps the old members
        for plan in plans:
            if KINDS[plan.run.route.kind].channel == "segments":
                leavers = {key: _membership(member) for key, member in plan.leavers.items()}
                plan.removed = memberships.remove(
                    segments, plan.run.stream, leavers, None if dry_run else ledger
                )
            if plan.forgotten:
                self._report.exited(plan.run.stream, len(plan.forgotten))
        if not dry_run:
            for plan in plans:
                self._keep(plan, ledger)
        return problems

    def _plan(self, run: RunMembers, ledger: Ledger, problems: list[str]) -> _Plan | None:
        stream, options = run.stream, run.options
        why = run.incomplete()
        if why is not None:
            self._report.mirror_stream(stream, complete=False, reason=why)
            self._logger.warning("mirror: %s: %s", stream, why)
            return None
        known = ledger.mirror_keys(run.scope)
        present = set(run.keys)
        leaving = known.difference(present)
        known_count, present_count = len(known), len(present)
        del known, present  # a million keys each, at a million people
        section = {
            "complete": True,
            "reason": None,
            "members": present_count,
            "known": known_count,
            "left": len(leaving),
        }
        share = len(leaving) / known_count if known_count else 0.0
        if share > options.max_exit_ratio:
            problem = (
                f"{stream}: {len(leaving)} of the {known_count} it knows ({share:.0%}) would "
                f"leave its view in one run, more than max_exit_ratio {options.max_exit_ratio:g}"
                ": nobody left (an empty table, a bad join or a tap filter?)"
            )
            self._report.mirror_stream(stream, **{**section, "guard": "tripped", "reason": problem})
            self._logger.error("mirror: %s", problem)
            problems.append(problem)
            return _Plan(run)  # what was sent is still kept
        self._report.mirror_stream(stream, **section, guard="ok")
        if leaving:
            self._logger.info(
                "mirror: %s: %d of %d left the view (%s)",
                stream,
                len(leaving),
                known_count,
                options.on_exit,
            )
        return _Plan(run, ledger.mirror_members(leaving))

    def _exit_operations(self, plan: _Plan, delivery: Delivery | DryRun) -> None:
        """A person route's leavers: their `on_exit` operations to delivery, as exits."""
        run = plan.run
        make = KINDS[run.route.kind].exit
        if make is None:
            return
        shards: dict[int, list[Operation]] = {}
        for key, member in plan.leavers.items():
            body = make(run.options.on_exit, member)
            if body is None:
                plan.forgotten.add(key)
                continue
            kind, value = orjson.loads(member)[:2]
            op = Operation(body, value, (key, EXIT_FINGERPRINT), None, f"{kind} {value}")
            plan.exits[key] = op
            shards.setdefault(hash(value) % delivery.shards, []).append(op)
        for shard, ops in shards.items():
            packer = Packer(run.stream, partial(delivery.submit, shard), exits=True)
            packer.add_segment(Segment.of(ops))
            packer.flush()

    def _keep(self, plan: _Plan, ledger: Ledger) -> None:
        """The ledger keeps this run's members: those sent once Customer.io accepted what was
        sent, and forgets those who left once they were told."""
        run = plan.run
        accepted = ledger.accepted([*run.sent, *plan.exits])
        kept = [
            (key, fingerprint, member)
            for key, (fingerprint, member) in run.sent.items()
            if accepted.get(key) == fingerprint
        ]
        told = {key for key in plan.exits if accepted.get(key) == EXIT_FINGERPRINT}
        # Gone without an exit operation (forgotten): their delivered entry is marked too, so
        # that one who comes back counts as kept only once Customer.io accepts them again (an
        # exit's entry is marked by its delivery, a removed membership's by memberships.py).
        if plan.forgotten:
            ledger.record([(key, EXIT_FINGERPRINT) for key in plan.forgotten])
        ledger.flush()
        ledger.update_mirror(run.scope, kept, told | plan.forgotten | plan.removed)


def _membership(member: str) -> tuple[int, str, str]:
    data = orjson.loads(member)
    return int(data["segment_id"]), str(data["id_type"]), str(data["id"])
