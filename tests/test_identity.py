"""One person, one profile (issue 23): the identity map, through the real target process
against the sandbox, over several runs.

The property test generates identity histories (emails shared, swapped, changed, re-cased,
padded, cleared; orphan events; member keys re-used with other emails) and checks what a user
relies on: the sandbox never refuses an identify the target sent (no `failed_attribute_change`),
never holds one email on two profiles nor two members on one, no orphan event creates a profile
under `unknown_person: reject`, every record is sent, rejected or skipped, and the report's
identity counts are those of a reference model of the rules (docs/identity.md).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from target_customerio.sandbox import Sandbox
from tests.harness import API_KEY, SITE_ID, record, run_target, schema, state, target_config
from tests.pg_fixtures import postgres  # noqa: F401  (module-scoped embedded Postgres)

P, E, K = "public-people", "public-orders", "public-members"
PERSON = {"kind": "person", "identifier": {"field": "member_id", "type": "id"}}
EVENT = {
    "kind": "event",
    "identifier": {"field": "member_id", "type": "id"},
    "event_name": "purchase",
    "event_id": "order_id",
    "timestamp": "at",
}
KEYED = {"kind": "person", "identifier": {"field": "mail", "type": "email"}}
AT = 1_700_000_000
P_SCHEMA = schema(P, {"member_id": {"type": "string"}, "email": {"type": ["string", "null"]}})
E_SCHEMA = schema(
    E, {"member_id": {"type": "string"}, "order_id": {"type": "integer"}, "at": {"type": "integer"}}
)
K_SCHEMA = schema(
    K, {"member_no": {"type": "integer"}, "mail": {"type": "string"}}, key=["member_no"]
)


def streams(**options: dict[str, Any]) -> dict[str, Any]:
    return {
        P: {**PERSON, **options.get("person", {})},
        E: {**EVENT, **options.get("event", {})},
        K: {**KEYED, **options.get("keyed", {})},
    }


def messages(people=(), events=(), members=()) -> list[dict]:
    out: list[dict] = [P_SCHEMA]
    out += [record(P, {"member_id": i, "email": e}) for i, e in people]
    out.append(E_SCHEMA)
    out += [record(E, {"member_id": i, "order_id": o, "at": AT}) for i, o in events]
    out.append(K_SCHEMA)
    out += [record(K, {"member_no": n, "mail": m}) for n, m in members]
    return out


def sync(sandbox: Sandbox, tmp: Path, msgs: list[dict], **options: Any) -> Any:
    config = target_config(
        sandbox.url, tmp, streams(**options), ledger_path=str(tmp / "ledger.sqlite")
    )
    run = run_target(config, msgs, tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def tally(run: Any, stream: str) -> dict[str, Any]:
    return run.report["streams"][stream]


# ---- the cases, one by one ----------------------------------------------------------


def test_two_members_sharing_an_email_the_second_is_rejected_naming_the_first(sandbox, tmp_path):
    run = sync(sandbox, tmp_path, messages(people=[("1001", "a@x.com"), ("1009", " A@X.com ")]))
    people = tally(run, P)
    assert (people["sent"], people["rejected_by_reason"]) == (1, {"identifier_conflict": 1})
    assert people["identity_conflicts"] == 1
    [reject] = run.rejects
    assert reject["record"]["member_id"] == "1009" and reject["field"] == "email"
    assert "another person, id 1001" in reject["message"]
    assert sandbox.activities(type="failed_attribute_change") == []
    # a later run: still one owner, the rejected record is tried (and refused) again
    again = sync(sandbox, tmp_path, messages(people=[("1009", "a@x.com")]))
    assert tally(again, P)["rejected_by_reason"] == {"identifier_conflict": 1}


def test_a_membership_of_a_person_rejected_for_a_conflict_is_not_sent(sandbox, tmp_path):
    """The identity check rejects like Customer.io refuses: the membership of the person whose
    identify was held back is not sent (it would add a profile nobody identified)."""
    segment = sandbox.add_segment("vip", kind="manual")
    seg = "public-vip"
    routes = {
        P: PERSON,
        seg: {"kind": "segment", "identifier": {"field": "member_id", "type": "id"}},
    }
    routes[seg]["segment_id"] = "seg"
    config = target_config(sandbox.url, tmp_path, routes, ledger_path=str(tmp_path / "l.sqlite"))
    msgs = [
        P_SCHEMA,
        record(P, {"member_id": "1001", "email": "a@x.com"}),
        record(P, {"member_id": "1009", "email": "a@x.com"}),
        schema(seg, {"member_id": {"type": "string"}, "seg": {"type": "integer"}}),
        record(seg, {"member_id": "1001", "seg": segment}),
        record(seg, {"member_id": "1009", "seg": segment}),
    ]
    run = run_target(config, msgs, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert {m["id"] for m in sandbox.segment_members(segment)} == {"1001"}
    [held] = [r for r in run.rejects if r["stream"] == seg]
    assert held["reason"] == "person_refused" and held["record"]["member_id"] == "1009"


def test_with_send_the_conflict_is_sent_and_counted_and_customerio_refuses_it(sandbox, tmp_path):
    msgs = messages(people=[("1001", "a@x.com"), ("1009", "a@x.com")])
    run = sync(sandbox, tmp_path, msgs, person={"on_identity_conflict": "send"})
    assert (tally(run, P)["sent"], tally(run, P)["identity_conflicts"]) == (2, 1)
    # the two travel on different delivery workers: whichever lands second is refused
    [refused] = sandbox.activities(type="failed_attribute_change")
    assert refused["data"]["value"] == "a@x.com"
    holders = [p["id"] for p in sandbox.people() if p["attributes"].get("email") == "a@x.com"]
    assert len(holders) == 1 and sandbox.person(cio_id=refused["cio_id"])["attributes"] == {}


def test_an_email_that_moves_is_resolved_in_the_order_rows_arrive(sandbox, tmp_path):
    sync(sandbox, tmp_path, messages(people=[("1001", "a@x.com"), ("1009", "b@x.com")]))
    # 1001 moves to c, so a is free: 1009 takes it, from the next run on (Customer.io may not
    # have applied 1001's change when 1009's identify comes: they travel apart)
    moved = sync(sandbox, tmp_path, messages(people=[("1001", "c@x.com"), ("1009", "a@x.com")]))
    assert tally(moved, P)["rejected_by_reason"] == {"identifier_conflict": 1}
    assert "released by id 1001 earlier in this run" in moved.rejects[-1]["message"]
    moved = sync(sandbox, tmp_path, messages(people=[("1009", "a@x.com")]))
    assert tally(moved, P)["rejected_by_reason"] == {}
    assert sandbox.person(id="1009")["email"] == "a@x.com"
    # a swap in one run: each email is still the other's when its row comes
    swap = sync(sandbox, tmp_path, messages(people=[("1001", "a@x.com"), ("1009", "c@x.com")]))
    assert tally(swap, P)["rejected_by_reason"] == {"identifier_conflict": 2}
    again = sync(sandbox, tmp_path, messages(people=[("1001", "a@x.com"), ("1009", "c@x.com")]))
    assert tally(again, P)["rejected_by_reason"] == {"identifier_conflict": 2}  # until one lets go
    assert sandbox.activities(type="failed_attribute_change") == []


def test_orphan_events_are_counted_and_with_reject_create_no_ghost(sandbox, tmp_path):
    msgs = messages(people=[("1001", "a@x.com")], events=[("1001", 1), ("9999", 2)])
    run = sync(sandbox, tmp_path, msgs)
    assert tally(run, E)["unknown_people"] == 1 and tally(run, E)["sent"] == 2
    assert len(sandbox.ghosts()) == 1  # Customer.io creates a profile for the event
    sandbox.reset()
    (tmp_path / "strict").mkdir()
    msgs = messages(events=[("9999", 3)])
    strict = sync(sandbox, tmp_path / "strict", msgs, event={"unknown_person": "reject"})
    assert tally(strict, E)["rejected_by_reason"] == {"unknown_person": 1}
    assert tally(strict, E)["unknown_people"] == 1
    assert sandbox.people() == [] and sandbox.ghosts() == set()


def test_an_email_in_event_data_claims_nothing_and_the_person_is_still_checked(sandbox, tmp_path):
    """An event row may carry the buyer's email (a checkout view does): it is event data, not
    a claim; the run once ended on it (an index error) when an event's claims counted it."""
    schema_with_email = schema(
        E,
        {
            "member_id": {"type": "string"},
            "order_id": {"type": "integer"},
            "at": {"type": "integer"},
            "email": {"type": ["string", "null"]},
        },
    )
    rows = [("1001", 1, "a@x.com"), ("9999", 2, "b@x.com"), ("1001", 3, None)]
    msgs = [
        P_SCHEMA,
        record(P, {"member_id": "1001", "email": "a@x.com"}),
        schema_with_email,
        *(record(E, {"member_id": i, "order_id": o, "at": AT, "email": m}) for i, o, m in rows),
    ]
    for workers in (0, 2):
        sandbox.reset()
        (tmp_path / str(workers)).mkdir()
        config = target_config(
            sandbox.url,
            tmp_path / str(workers),
            streams(),
            ledger_path=str(tmp_path / str(workers) / "ledger.sqlite"),
            mapping_workers=workers,
        )
        run = run_target(config, msgs, tmp_path / str(workers))
        assert run.returncode == 0, run.stderr[-3000:]
        assert tally(run, E)["sent"] == 3 and tally(run, E)["unknown_people"] == 1


def test_a_keyed_member_who_changes_email_is_merged_into_the_new_profile(sandbox, tmp_path):
    sync(sandbox, tmp_path, messages(members=[(1, "old@x.com")]))
    run = sync(sandbox, tmp_path, messages(members=[(1, "new@x.com")]))
    assert tally(run, K)["identifier_changes"] == 1
    assert [p["email"] for p in sandbox.people()] == ["new@x.com"]
    assert len(sandbox.activities(type="profile_merge")) == 1
    # `new`: today's behaviour, a second profile
    other = tmp_path / "new"
    other.mkdir()
    sandbox.reset()
    sync(sandbox, other, messages(members=[(1, "old@x.com")]))
    run = sync(
        sandbox, other, messages(members=[(1, "new@x.com")]), keyed={"on_identifier_change": "new"}
    )
    assert tally(run, K)["identifier_changes"] == 1
    assert sorted(p["email"] for p in sandbox.people()) == ["new@x.com", "old@x.com"]


def test_without_key_properties_an_email_route_follows_no_change(sandbox, tmp_path):
    unkeyed = [dict(m, key_properties=[]) if m.get("type") == "SCHEMA" else m for m in messages()]
    assert unkeyed[-1]["stream"] == K
    sync(sandbox, tmp_path, [unkeyed[-1], record(K, {"member_no": 1, "mail": "old@x.com"})])
    run = sync(sandbox, tmp_path, [unkeyed[-1], record(K, {"member_no": 1, "mail": "new@x.com"})])
    assert tally(run, K)["identifier_changes"] == 0
    assert len(sandbox.people()) == 2


@pytest.mark.parametrize(
    ("option", "route"),
    [
        ({"on_identity_conflict": "rejct"}, P),
        ({"unknown_person": "reject"}, P),  # an event route's option, not a person route's
        ({"on_identifier_change": "merge"}, E),
        ({"unknown_persons": "reject"}, E),
    ],
)
def test_identity_options_are_checked(sandbox, tmp_path, option, route):
    routes = streams()
    routes[route] = {**routes[route], **option}
    run = run_target(target_config(sandbox.url, tmp_path, routes), messages(), tmp_path)
    assert run.returncode == 2, run.stderr
    assert next(iter(option)) in run.stderr


def test_the_map_lives_beside_a_postgres_ledger(postgres, sandbox, tmp_path):  # noqa: F811
    for runner, people in (("a", [("1001", "a@x.com")]), ("b", [("1009", "a@x.com")])):
        work = tmp_path / runner
        work.mkdir()
        config = target_config(sandbox.url, work, streams(), ledger_url=postgres.dsn)
        run = run_target(config, messages(people=people), work)
        assert run.returncode == 0, run.stderr
    assert tally(run, P)["rejected_by_reason"] == {"identifier_conflict": 1}
    assert "another person, id 1001" in run.rejects[0]["message"]


def test_an_identity_map_that_cannot_be_written_is_one_line_and_exit_1(sandbox, tmp_path):
    """The map goes through ledger_db as the ledger does: a database failure while the run
    writes it is one LedgerError line naming the ledger, exit 1, no STATE."""
    ledger = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(ledger)  # a table of that name the map cannot write its rows to
    db.execute("CREATE TABLE identity_map (key INTEGER PRIMARY KEY, owner INTEGER)")
    db.close()
    config = target_config(sandbox.url, tmp_path, streams(), ledger_path=str(ledger))
    msgs = [*messages(people=[("1001", "a@x.com")]), state({"n": 1})]
    run = run_target(config, msgs, tmp_path)
    line = f"cannot write the ledger (ledger_path '{ledger}'): OperationalError: table"
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"LedgerError: {line}" in run.stderr and "Traceback" not in run.stderr
    assert run.states == []


# ---- the property: generated identity histories ---------------------------------------------

IDS = ["1001", "1002", "1003", "1004"]
EMAILS = ["a@x.com", "b@x.com", "c@x.com"]
MEMBER_EMAILS = ["m1@x.com", "m2@x.com", "m3@x.com"]  # apart: the model follows the people stream


@st.composite
def email_values(draw: Any) -> str | None:
    email = draw(st.sampled_from([*EMAILS, None]))
    if email is None:
        return None
    shape = draw(st.sampled_from(["plain", "upper", "padded"]))
    return {"plain": email, "upper": email.upper(), "padded": email + "   "}[shape]


@st.composite
def histories(draw: Any) -> list[dict[str, list]]:
    runs = []
    for n in range(draw(st.integers(1, 3))):
        people = draw(st.lists(st.tuples(st.sampled_from(IDS), email_values()), max_size=6))
        events = [
            (member, n * 100 + i)
            for i, member in enumerate(draw(st.lists(st.sampled_from([*IDS, "9999"]), max_size=4)))
        ]
        members = draw(
            st.lists(st.tuples(st.integers(1, 3), st.sampled_from(MEMBER_EMAILS)), max_size=4)
        )
        runs.append({"people": people, "events": events, "members": members})
    return runs


class Model:
    """The rules, on texts (docs/identity.md): who holds each email, who was identified."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}  # email -> member id
        self.email_of: dict[str, str] = {}  # member id -> the email it holds
        self.identified: set[str] = set()
        self.released: dict[str, str] = {}  # email -> who released it in this run

    def next_run(self) -> None:
        self.released = {}

    def person(self, member: str, raw: str | None) -> bool:
        """False: rejected as a conflict."""
        email = raw.strip().lower() if raw else ""
        holder = self.owner.get(email) or self.released.get(email) if email else None
        if holder not in (None, member):
            return False
        self.identified.add(member)
        previous = self.email_of.get(member)
        if previous != (email or None):
            if previous and self.owner.get(previous) == member:
                del self.owner[previous]
                self.released[previous] = member
            if email:
                self.email_of[member] = email
                self.owner[email] = member
            else:
                self.email_of.pop(member, None)
        return True


# not TARGET_CUSTOMERIO_...: the target refuses a variable of its prefix that names no setting
LONG = os.environ.get("TEST_IDENTITY_LONG") == "1"


@pytest.mark.parametrize("unknown_person", ["send", "reject"])
@settings(
    max_examples=60 if LONG else 5,
    deadline=None,
    # each example is several target processes: shrinking a failure takes minutes, so only in
    # the long run (the failing example is printed either way)
    phases=list(Phase) if LONG else [Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(history=histories())
def test_identity_histories_keep_one_person_one_profile(unknown_person, history):
    model = Model()
    with Sandbox(site_id=SITE_ID, api_key=API_KEY) as sb, tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n, run_rows in enumerate(history):
            (tmp / str(n)).mkdir()
            config = target_config(
                sb.url,
                tmp / str(n),
                streams(event={"unknown_person": unknown_person}),
                ledger_path=str(tmp / "ledger.sqlite"),
            )
            run = run_target(config, messages(**run_rows), tmp / str(n))
            assert run.returncode == 0, run.stderr[-3000:]
            model.next_run()
            conflicts = sum(not model.person(m, e) for m, e in run_rows["people"])
            unknown = sum(m not in model.identified for m, _ in run_rows["events"])
            check_run(sb, run, conflicts, unknown, unknown_person)


def check_run(sb: Sandbox, run: Any, conflicts: int, unknown: int, unknown_person: str) -> None:
    for stream, counts in run.report["streams"].items():  # every record has its outcome
        assert counts["received"] == counts["sent"] + counts["rejected"] + counts["skipped"], stream
    people, events = tally(run, P), tally(run, E)
    assert people["identity_conflicts"] == conflicts
    assert people["rejected_by_reason"].get("identifier_conflict", 0) == conflicts
    assert events["unknown_people"] == unknown
    if unknown_person == "reject":
        assert events["rejected_by_reason"].get("unknown_person", 0) == unknown
        assert sb.ghosts() == set()
    # the target never sent Customer.io an identify it would refuse
    assert sb.activities(type="failed_attribute_change") == []
    # one email, one profile
    holders: dict[str, set[str]] = {}
    for person in sb.people():
        for email in {person["email"], person["attributes"].get("email")} - {None}:
            holders.setdefault(email, set()).add(person["cio_id"])
    assert all(len(cio_ids) == 1 for cio_ids in holders.values()), holders
    # one member, one profile: no profile's member_no ever changed from one member to another
    for change in sb.activities(type="attribute_change"):
        before, after = change["data"]["changes"].get("member_no", [None, None])
        assert before is None or after is None or before == after, change
