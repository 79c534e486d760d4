"""Convergence, model-based: many nights of a changing database through the real target process
into the sandbox, with faults, and after every night that ends with exit 0 the workspace is what
the database says (issue 22).

A Hypothesis state machine keeps a model database: people (with a plan and a score) on a person
route with `on_delete: delete`, a VIP view mirrored by a person route (`on_exit: unset`), orders
sent as events, and a manual segment's members on a segment route. Rules change it (people
appear, change, get a value the target rejects and are fixed, are deleted and may come back,
join and leave the VIP view and the segment, place orders) and run nights: clean, or with a
fault (an answer lost after the sandbox applied the request, a dropped connection, a 207 that
refuses an operation it applied, 5xx runs that exhaust the retries, SIGKILL at a random
moment), or after the ledger file was deleted. After every night that exits 0 the invariant
is checked:

- every person of the database is in the workspace with exactly its attributes (its VIP tier
  while in the view, none after); nobody else is there; nobody deleted exists again;
- every order is one event, exactly once;
- the segment's members are the database's.

People whose row holds a rejected value are left out while it is bad (the database holds what
Customer.io refuses; the reject file has them). A lost ledger cannot know who left a view while
it was lost: those people are left out of the VIP check until they are in the view again, and of
the segment check until then too, unless the App API read the segment back (which takes a night
whose rows name the segment), which is what docs/ledger.md says a lost ledger costs.

CI runs a few short examples; LONG_PROPERTIES=1 runs many longer ones.
"""

from __future__ import annotations

import datetime as dt
import signal
import tempfile
import time
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from target_customerio.sandbox import Sandbox
from tests.harness import (
    API_KEY,
    SITE_ID,
    feed,
    record,
    run_target,
    schema,
    start_target,
    state,
    stop_target,
    target_config,
)
from tests.harness import (
    LONG_PROPERTIES as LONG,
)

APP_KEY = "app-key-convergence"
C, V, E, S = "public-customers", "public-vip", "public-orders", "public-segment_members"
BATCH, SEGMENTS = "/api/v2/batch", "/api/v1/segments/"
MAX_RETRIES = 1
BAD = "x" * 1001  # over Customer.io's 1000 bytes for a value: the target rejects the row
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
DELETED_AT = "2026-11-22T13:48:04+00:00"

ROUTES = {
    C: {"kind": "person", "identifier": {"field": "id", "type": "id"}, "on_delete": "delete"},
    V: {
        "kind": "person",
        "identifier": {"field": "id", "type": "id"},
        "mirror": True,
        "on_exit": "unset",
        "max_exit_ratio": 1,
    },
    E: {
        "kind": "event",
        "identifier": {"field": "customer_id", "type": "id"},
        "event_name": "order_placed",
        "event_id": ["order_id"],
        "timestamp": "placed_at",
    },
    S: {
        "kind": "segment",
        "identifier": {"field": "id", "type": "id"},
        "segment_id": "segment_id",
        "max_exit_ratio": 1,
    },
}
SCHEMAS = [
    schema(
        C,
        {
            "id": {"type": "string"},
            "plan": {"type": "string"},
            "score": {"type": "integer"},
            "_sdc_deleted_at": {"type": ["string", "null"], "format": "date-time"},
        },
    ),
    schema(V, {"id": {"type": "string"}, "vip_tier": {"type": "string"}}),
    schema(
        E,
        {
            "order_id": {"type": "string"},
            "customer_id": {"type": "string"},
            "placed_at": {"type": "string", "format": "date-time"},
        },
    ),
    schema(S, {"id": {"type": "string"}, "segment_id": {"type": "integer"}}),
]

PLANS = st.sampled_from(["free", "pro", "team"])
# Which request a fault hits: a night's batches, its segment changes, or any Track API request
# (the exits come last), after `SKIP` of them went through.
PATHS = st.sampled_from([BATCH, SEGMENTS, "/api/"])
SKIP = st.integers(0, 5)
_207 = {"errors": [{"batch_index": 0, "reason": "invalid", "message": "refused"}]}
FAULTS = st.one_of(
    st.none(),
    # Customer.io applies the request and the answer is a 500, up to past the retries (the run
    # gives up with the outcome unknown)
    st.fixed_dictionaries(
        {
            "status": st.just(500),
            "mode": st.just("process_then"),
            "times": st.integers(1, MAX_RETRIES + 1),
            "path": PATHS,
            "skip": SKIP,
            "retry_after": st.just(0.01),
        }
    ).map(lambda f: ("lost answer", f)),
    # the connection dropped, before or after the request was applied
    st.fixed_dictionaries(
        {
            "status": st.just(0),
            "mode": st.sampled_from(["drop", "process_then_drop"]),
            "path": PATHS,
            "skip": SKIP,
        }
    ).map(lambda f: ("dropped", f)),
    # a 207 naming an operation as refused that the sandbox applied (the side a target must
    # survive: a refusal that changed nothing is what 207 means, and is easier)
    st.fixed_dictionaries(
        {
            "status": st.just(207),
            "mode": st.just("process_then"),
            "body": st.integers(0, 3).map(
                lambda i: {"errors": [{**_207["errors"][0], "batch_index": i}]}
            ),
            "path": st.just(BATCH),
            "skip": SKIP,
        }
    ).map(lambda f: ("207", f)),
    # 5xx, not applied, until the retries run out
    st.fixed_dictionaries(
        {
            "status": st.just(503),
            "times": st.just(MAX_RETRIES + 1),
            "path": PATHS,
            "skip": SKIP,
            "retry_after": st.just(0.01),
        }
    ).map(lambda f: ("5xx", f)),
    st.floats(0.0, 2.0).map(lambda after: ("kill", {"after": after})),
)
TIERS = st.sampled_from(["gold", "silver"])


class Nights(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sandbox = Sandbox(site_id=SITE_ID, api_key=API_KEY, app_api_key=APP_KEY).start()
        self.segment = self.sandbox.add_segment("convergence", kind="manual")
        # a directory of its own (an example's id(self) may be a collected one's)
        self.tmp = Path(tempfile.mkdtemp(prefix="convergence-"))
        self.people: dict[str, dict] = {}  # id -> attributes, as the database holds them
        self.bad: set[str] = set()  # rows holding a value the target rejects
        self.vip: dict[str, str] = {}  # id -> tier: the VIP view
        self.members: set[str] = set()  # the segment's rows
        self.orders: dict[str, str] = {}  # order id -> customer id
        self.deleted: set[str] = set()
        # order -> deleted customer: rows the database keeps for people it deleted (a deleted
        # customer's orders), sent every night; they must not re-create anyone
        self.orphans: dict[str, str] = {}
        self.forgotten: set[str] = set()  # deleted people a lost ledger no longer knows
        self.unsent_deletes: set[str] = set()  # deleted rows the tap sends until a night ends
        self.unknown_vip: set[str] = set()  # who may hold a VIP tier a lost ledger forgot
        self.unknown_members: set[str] = set()
        self.known_vip: set[str] = set()  # whom the ledger knows as members of the views
        self.known_members: set[str] = set()
        self.serial = 0
        self.nights = 0
        self.checked = 0

    def teardown(self) -> None:
        try:
            if self.people or self.deleted:  # a last, clean night: it must end well, converged
                run = self._night()
                assert run.returncode == 0, run.stderr[-3000:]
                self._settle(run)
        finally:
            self.sandbox.stop()

    # ---- the run's shape ----

    @initialize(app_api=st.booleans(), workers=st.sampled_from([0, 1]))
    def configure(self, app_api: bool, workers: int) -> None:
        extra = {"app_api_key": APP_KEY, "app_api_url": self.sandbox.url} if app_api else {}
        self.app_api = app_api
        self.config = target_config(
            self.sandbox.url,
            self.tmp,
            ROUTES,
            max_retries=MAX_RETRIES,
            request_timeout=5,
            mapping_workers=workers,
            delivery_workers=2,
            **extra,
        )

    # ---- the database ----

    def _new_id(self) -> str:
        self.serial += 1
        return f"P{self.serial}"

    @rule(rows=st.lists(st.tuples(PLANS, st.integers(0, 5)), min_size=1, max_size=4))
    def people_appear(self, rows: list[tuple[str, int]]) -> None:
        for plan, score in rows:
            self.people[self._new_id()] = {"plan": plan, "score": score}

    @precondition(lambda self: self.people)
    @rule(data=st.data(), plan=PLANS, score=st.integers(0, 5))
    def person_changes(self, data: st.DataObject, plan: str, score: int) -> None:
        who = data.draw(st.sampled_from(sorted(self.people)))
        self.people[who] = {"plan": plan, "score": score}
        self.bad.discard(who)

    @precondition(lambda self: self.people)
    @rule(data=st.data())
    def person_gets_a_rejected_value(self, data: st.DataObject) -> None:
        self.bad.add(data.draw(st.sampled_from(sorted(self.people))))

    @precondition(lambda self: self.bad)
    @rule(data=st.data())
    def rejected_value_fixed(self, data: st.DataObject) -> None:
        self.bad.discard(data.draw(st.sampled_from(sorted(self.bad))))

    @precondition(lambda self: self.people)
    @rule(data=st.data())
    def person_deleted(self, data: st.DataObject) -> None:
        """A deleted row takes its VIP row, its membership and its orders with it."""
        who = data.draw(st.sampled_from(sorted(self.people)))
        del self.people[who]
        self.bad.discard(who)
        self.vip.pop(who, None)
        self.members.discard(who)
        self.orders = {order: c for order, c in self.orders.items() if c != who}
        self.deleted.add(who)
        self.unsent_deletes.add(who)

    @precondition(lambda self: self.deleted)
    @rule(data=st.data(), plan=PLANS)
    def deleted_person_comes_back(self, data: st.DataObject, plan: str) -> None:
        """The same id again (a deleted row restored): the database holds them again."""
        who = data.draw(st.sampled_from(sorted(self.deleted)))
        self.deleted.discard(who)  # a delete not yet sent still goes first (the tap's order)
        self.forgotten.discard(who)
        self.people[who] = {"plan": plan, "score": 0}
        # their orders kept while they were deleted are theirs again: sent from now on
        for order, customer in list(self.orphans.items()):
            if customer == who:
                self.orders[order] = who
                del self.orphans[order]

    @precondition(lambda self: self.deleted)
    @rule(data=st.data())
    def order_of_a_deleted_person(self, data: st.DataObject) -> None:
        """An order row naming a deleted customer (the database kept it): Customer.io would
        create the person an event names, so it is not sent while they are gone."""
        self.serial += 1
        self.orphans[f"O{self.serial}"] = data.draw(st.sampled_from(sorted(self.deleted)))

    @precondition(lambda self: self.people)
    @rule(data=st.data(), tier=TIERS)
    def joins_or_changes_in_the_vip_view(self, data: st.DataObject, tier: str) -> None:
        self.vip[data.draw(st.sampled_from(sorted(self.people)))] = tier

    @precondition(lambda self: self.vip)
    @rule(data=st.data())
    def leaves_the_vip_view(self, data: st.DataObject) -> None:
        del self.vip[data.draw(st.sampled_from(sorted(self.vip)))]

    @precondition(lambda self: self.people)
    @rule(data=st.data())
    def joins_the_segment(self, data: st.DataObject) -> None:
        self.members.add(data.draw(st.sampled_from(sorted(self.people))))

    @precondition(lambda self: self.members)
    @rule(data=st.data())
    def leaves_the_segment(self, data: st.DataObject) -> None:
        self.members.discard(data.draw(st.sampled_from(sorted(self.members))))

    @precondition(lambda self: self.people)
    @rule(data=st.data())
    def places_an_order(self, data: st.DataObject) -> None:
        self.serial += 1
        self.orders[f"O{self.serial}"] = data.draw(st.sampled_from(sorted(self.people)))

    # ---- nights ----

    @precondition(lambda self: self.people or self.deleted)
    @rule(fault=FAULTS)
    def night(self, fault: tuple[str, dict] | None) -> None:
        """A night: clean, or with one fault (see FAULTS); a kill ends it after `after`
        seconds."""
        if fault is not None and fault[0] == "kill":
            self._settle(self._night(kill_after=fault[1]["after"]))
            return
        if fault is not None:
            self.sandbox.inject(**fault[1])
        self._settle(self._night())

    @precondition(lambda self: self.nights)
    @rule()
    def ledger_file_deleted(self) -> None:
        for path in self.tmp.glob(".customerio-ledger.sqlite*"):
            path.unlink()
        self.unknown_vip = set(self.people)
        self.unknown_members = set(self.people)
        # who this target deleted is forgotten with the ledger (docs/ledger.md): their kept
        # orders may re-create them (a delete not yet confirmed is sent again, and kept again)
        self.forgotten |= self.deleted - self.unsent_deletes
        self.known_vip, self.known_members = set(), set()

    def _messages(self) -> list[dict]:
        customers = [
            record(C, {"id": who, **row, "plan": BAD if who in self.bad else row["plan"]})
            for who, row in sorted(self.people.items())
        ]
        deletes = [
            record(C, {"id": who, "plan": "", "score": 0, "_sdc_deleted_at": DELETED_AT})
            for who in sorted(self.unsent_deletes)
        ]
        placed = (NOW - dt.timedelta(minutes=5)).isoformat()
        return [
            *SCHEMAS,
            *deletes,
            *customers,
            *(record(V, {"id": who, "vip_tier": tier}) for who, tier in sorted(self.vip.items())),
            *(
                record(E, {"order_id": order, "customer_id": who, "placed_at": placed})
                for order, who in sorted({**self.orders, **self.orphans}.items())
            ),
            *(record(S, {"id": who, "segment_id": self.segment}) for who in sorted(self.members)),
            state({"night": self.nights}),
        ]

    def _night(self, kill_after: float | None = None):
        self.nights += 1
        try:
            if kill_after is None:
                return run_target(self.config, self._messages(), self.tmp, timeout=120)
            return self._killed_night(kill_after)
        finally:
            self.sandbox.clear_faults()

    def _killed_night(self, after: float):
        proc = start_target(self.config, self.tmp)
        feed(proc, self._messages())
        time.sleep(after)
        return stop_target(proc, signal.SIGKILL, {})

    def _settle(self, run) -> None:
        """A night's end: a documented exit (or the kill), never a traceback; the invariant
        after an exit 0. A failed run keeps whom its mirror routes sent; a killed one cannot:
        who joined a view in it and leaves before it is known again may keep what the view
        set (docs/ledger.md)."""
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
        assert run.returncode in (0, 1, 4, -signal.SIGKILL), (run.returncode, run.stderr[-3000:])
        if run.returncode == -signal.SIGKILL:
            self.unknown_vip |= set(self.vip) - self.known_vip
            self.unknown_members |= self.members - self.known_members
        else:
            self.known_vip |= set(self.vip)
            self.known_members |= self.members
        if run.returncode == 0:  # who left was told: the ledger knows the views as they are
            self.known_vip, self.known_members = set(self.vip), set(self.members)
            self.unsent_deletes.clear()
            self.unknown_vip -= set(self.vip)
            self.unknown_members -= self.members
            if self.app_api and self.members:
                # the segment, named by this night's rows, was read back from Customer.io
                self.unknown_members.clear()
            self._check()

    # ---- the invariant ----

    def _check(self) -> None:
        self.checked += 1
        sandbox = self.sandbox
        good = set(self.people) - self.bad
        held = {p["id"]: p for p in sandbox.people() if not p["suppressed"]}
        assert not (set(held) & (self.deleted - self.forgotten)), "a deleted person exists again"
        extra = set(held) - set(self.people) - self.forgotten
        assert not extra, f"people the database does not hold: {sorted(extra)}"
        for who in good:
            assert who in held, f"{who} is missing"
            expected = dict(self.people[who])
            attributes = dict(held[who]["attributes"])
            if who in self.vip:
                expected["vip_tier"] = self.vip[who]
            elif who in self.unknown_vip:
                attributes.pop("vip_tier", None)  # a lost ledger forgot they were a VIP
            assert attributes == expected, who
        events = [e for e in sandbox.events() if e["person_id"] in good]
        got = sorted((e["person_id"], e["attributes"].get("order_id")) for e in events)
        want = sorted((who, order) for order, who in self.orders.items() if who in good)
        assert got == want, "events are not the orders, exactly once each"
        members = {m["id"] for m in sandbox.segment_members(self.segment)} - self.bad
        assert members - self.unknown_members == self.members & good, "segment members"


Nights.TestCase.settings = settings(
    max_examples=40 if LONG else 12,
    stateful_step_count=40 if LONG else 20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestNights = pytest.mark.timeout(7200 if LONG else 300)(Nights.TestCase)
