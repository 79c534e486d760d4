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

from target_customerio.app_api import AppClient
from target_customerio.delivery import Delivery, DryRun
from target_customerio.ledger import EXIT_FINGERPRINT, Ledger, person_key
from target_customerio.memberships import Memberships, SegmentRequests
from target_customerio.operations import KINDS
from target_customerio.operations.operation import Finisher, Operation
from target_customerio.operations.segment import membership as segment_membership
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
    absent: set[int] = field(default_factory=set)  # left, and not in Customer.io: not told
    removed: set[int] = field(default_factory=set)  # memberships removed (segment routes)


class Mirror:
    """The mirror routes of the run: their members, and the end of a complete run."""

    def __init__(
        self,
        report: RunReport,
        logger: logging.Logger,
        workspace: str = "",
        ledger_setting: str = "ledger_path",
    ) -> None:
        self._report, self._logger = report, logger
        self._workspace = workspace  # what ledger.person_key names people in
        self._ledger_setting = ledger_setting  # where the ledger is: `ledger_url` or its path
        self.runs: dict[str, RunMembers] = {}
        self.finished = False  # `finish` ran (the run's members are settled)

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
        app: AppClient | None = None,
    ) -> list[str]:
        """Settle every stream read whole; returns the guard's problems (exit 8), one per
        route that would have lost more than its `max_exit_ratio`. `app` (with `app_api_key`):
        who exists is asked before exits, and a segment route whose ledger knows nobody reads
        its segments' members back."""
        problems: list[str] = []
        plans: list[_Plan] = []
        for run in self.runs.values():
            plan = self._plan(run, ledger, problems, app)
            if plan is not None:
                plans.append(plan)
            elif not dry_run:  # not read whole: nobody left, but whom it sent is known
                self._learn(run, ledger)
        for plan in plans:
            self._absent_forgotten(plan, ledger, app)
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
        self.finished = True
        return problems

    def learn(self, ledger: Ledger) -> None:
        """A run that did not end normally: nobody left, but whom each route sent (accepted,
        in doubt or queued) is kept as a member, so that one who leaves before the next complete
        run is told then (their fingerprint counts only where the ledger confirms it)."""
        if self.finished:
            return
        for run in self.runs.values():
            self._learn(run, ledger)

    @staticmethod
    def _learn(run: RunMembers, ledger: Ledger) -> None:
        if run.sent:
            members = [(key, fp, member) for key, (fp, member) in run.sent.items()]
            ledger.update_mirror(run.scope, members, ())

    def _plan(
        self, run: RunMembers, ledger: Ledger, problems: list[str], app: AppClient | None
    ) -> _Plan | None:
        stream, options = run.stream, run.options
        why = run.incomplete()
        if why is not None:
            self._report.mirror_stream(stream, complete=False, reason=why)
            self._logger.warning("mirror: %s: %s", stream, why)
            return None
        known = ledger.mirror_keys(run.scope)
        present = set(run.keys)
        known_count, present_count = len(known), len(present)
        read_back: dict[int, str] = {}
        nobody = None
        if not known:
            nobody, read_back = self._knows_nobody(run, present, app)
            known = set(read_back)
        leaving = known.difference(present)
        del known, present  # a million keys each, at a million people
        section = {
            "complete": True,
            "reason": nobody,
            "members": present_count,
            "known": known_count,
            "left": len(leaving),
        }
        base = known_count or len(leaving) + present_count  # a read-back's: who it found
        share = len(leaving) / base if base else 0.0
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
        members = ledger.mirror_members(leaving.difference(read_back))
        members.update(read_back)
        return _Plan(run, members)

    def _knows_nobody(
        self, run: RunMembers, present: set[int], app: AppClient | None
    ) -> tuple[str, dict[int, str]]:
        """The ledger holds no one for the route (a first run, or a lost ledger): nobody can
        leave, and the report (the reason returned) and stderr say so. A segment route with
        the App API reads its segments' members back instead: those not in this run left
        (key -> membership)."""
        where = f"the ledger ({self._ledger_setting}) holds nobody for this route (a first run, "
        if KINDS[run.route.kind].channel == "segments" and app is not None:
            found = self._segment_members(run, present, app)
            reason = where + "or a lost ledger): its segments' members were read back instead"
            self._logger.warning("mirror: %s: %s", run.stream, reason)
            return reason, found
        reason = where + "or a lost ledger), so nobody could leave the view in this run"
        if KINDS[run.route.kind].channel == "segments":
            reason += " (with app_api_key set, the segments' members are read back)"
        self._logger.warning("mirror: %s: %s", run.stream, reason)
        return reason, {}

    def _segment_members(
        self, run: RunMembers, present: set[int], app: AppClient
    ) -> dict[int, str]:
        """Members of the run's segments in Customer.io that this run did not have."""
        finisher = Finisher(run.scope)
        kind = run.route.options.identifier.type
        segments = {_membership(member)[0] for _, member in run.sent.values()}
        found: dict[int, str] = {}
        for segment in sorted(segments):
            for value in app.segment_members(segment, kind) or []:
                key = finisher.key(f"segment:{segment}:{kind}:{value}")
                if key is not None and key not in present:
                    found[key] = segment_membership(segment, kind, value).decode()
        return found

    def _absent_forgotten(self, plan: _Plan, ledger: Ledger, app: AppClient | None) -> None:
        """A person route's leavers that an exit would re-create are not sent one: those this
        target deleted or suppressed (the ledger knows them) when the exit is `unset`, and,
        with the App API, every one Customer.io does not hold (deleted elsewhere)."""
        run = plan.run
        if KINDS[run.route.kind].exit is None or not plan.leavers:
            return
        people = {key: orjson.loads(member)[:2] for key, member in plan.leavers.items()}
        absent: set[int] = set()
        if run.options.on_exit == "unset":
            # gone since the route last kept them (one re-created since is there again)
            workspace = {key: person_key(self._workspace, k, v) for key, (k, v) in people.items()}
            gone = ledger.gone(set(workspace.values()))
            kept = ledger.kept_at(people) if gone else {}
            absent = {
                key
                for key, person in workspace.items()
                if person in gone and gone[person] >= kept.get(key, 0)
            }
        if app is not None:
            by_type: dict[str, list[str]] = {}
            for kind, value in people.values():
                by_type.setdefault(kind, []).append(value)
            held = {kind: app.existing(kind, values) for kind, values in by_type.items()}
            absent |= {
                key
                for key, (kind, value) in people.items()
                if (value.lower() if kind == "email" else value) not in held[kind]
            }
        for key in absent:
            del plan.leavers[key]
        plan.absent = absent
        if absent:
            self._report.mirror_count(run.stream, "exits_absent", len(absent))

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
        untold = plan.forgotten | plan.absent
        if untold:
            ledger.record([(key, EXIT_FINGERPRINT) for key in untold])
        ledger.flush()
        ledger.update_mirror(run.scope, kept, told | untold | plan.removed)


def _membership(member: str) -> tuple[int, str, str]:
    data = orjson.loads(member)
    return int(data["segment_id"]), str(data["id_type"]), str(data["id"])
