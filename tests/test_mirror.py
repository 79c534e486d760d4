"""Mirror syncs through the real target process against the sandbox: people who leave a view
are unset, suppressed or deleted; manual-segment memberships are added and removed once; an
incomplete run exits nobody; a view that empties trips the guard (exit 8)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.harness import (
    feed,
    record,
    run_target,
    schema,
    start_target,
    state,
    stop_target,
    target_config,
    writes,
)
from tests.orders import ORDER_ROUTE, ORDERS
from tests.pg_fixtures import postgres  # noqa: F401  (module-scoped embedded Postgres)

P = "public-vip_customers"
S = "public-segment_members"
C = "public-customers"
BATCH = "/api/v2/batch"
ROUTE = {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}, "mirror": True}
SEGMENT = {
    "kind": "segment",
    "identifier": {"field": "customer_id", "type": "id"},
    "segment_id": "segment_id",
}
PEOPLE = {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}}
VIP_SCHEMA = schema(
    P,
    {
        "customer_id": {"type": "string"},
        "vip_tier": {"type": ["string", "null"]},
        "vip_since": {"type": "string", "format": "date-time"},
    },
)


def vips(ids, tier: str = "gold", run: int = 1) -> list[dict]:
    return [
        VIP_SCHEMA,
        *[
            record(P, {"customer_id": i, "vip_tier": tier, "vip_since": "2026-01-02T00:00:00Z"})
            for i in ids
        ],
        state({"run": run}),
    ]


def customers(ids) -> list[dict]:
    return [
        schema(C, {"customer_id": {"type": "string"}, "email": {"type": "string"}}),
        *[record(C, {"customer_id": i, "email": f"{i.lower()}@example.com"}) for i in ids],
    ]


def memberships(rows, field: str = "customer_id") -> list[dict]:
    return [
        schema(S, {field: {"type": "string"}, "segment_id": {"type": "integer"}}),
        *[record(S, {field: who, "segment_id": segment}) for who, segment in rows],
    ]


def ids(count: int, start: int = 0) -> list[str]:
    return [f"C{i}" for i in range(start, start + count)]


def batch_ops(sandbox) -> int:
    return sum(r["ops"] for r in sandbox.requests() if r["path"] == BATCH)


def segment_requests(sandbox, action: str) -> list[int]:
    """The ids each add_customers (or remove_customers) request carried, in order."""
    return [
        r["ops"]
        for r in sandbox.requests()
        if r["path"].endswith(f"/{action}_customers") and r["status"] == 200
    ]


def config(sandbox, tmp_path, routes, **extra):
    return target_config(sandbox.url, tmp_path, routes, **extra)


# ---- people who leave a view ----------------------------------------------------------------


def test_leavers_are_unset_and_unchanged_people_are_still_in_the_view(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: ROUTE})
    first = run_target(cfg, vips(ids(20)), tmp_path)
    assert first.returncode == 0, first.stderr
    knew_nobody = (
        "the ledger (ledger_path .customerio-ledger.sqlite) holds nobody for this route (a "
        "first run, or a lost ledger), so nobody could leave the view in this run"
    )
    assert f"mirror: {P}: {knew_nobody}" in first.stderr
    assert first.report["mirror"][P] == {
        "complete": True,
        "reason": knew_nobody,
        "on_exit": "unset",
        "max_exit_ratio": 0.1,
        "members": 20,
        "known": 0,
        "left": 0,
        "guard": "ok",
        "exits": {},
        "exits_refused": 0,
    }
    sent = batch_ops(sandbox)

    second = run_target(cfg, vips(ids(19), run=2), tmp_path)  # C19 is no longer a VIP
    assert second.returncode == 0, second.stderr
    assert second.states == [{"run": 2}]
    assert second.report["streams"][P]["skipped_by_reason"] == {"unchanged": 19}
    assert batch_ops(sandbox) == sent + 1  # the one exit, nothing else
    mirror = second.report["mirror"][P]
    assert (mirror["members"], mirror["known"], mirror["left"]) == (19, 20, 1)
    assert mirror["exits"] == {"unset": 1} and mirror["guard"] == "ok"
    assert sandbox.person(id="C19")["attributes"] == {}  # vip_tier and vip_since removed
    assert sandbox.person(id="C3")["attributes"]["vip_tier"] == "gold"
    assert "mirror: public-vip_customers: 1 of 20 left the view (unset)" in second.stderr
    assert "0 retried; mirror: 1 left their view" in second.stderr  # the summary line
    # the counts of the stream are its records', exits are not among them
    assert second.report["streams"][P]["sent"] == 0

    third = run_target(cfg, vips(ids(19), run=3), tmp_path)  # nothing changed: nothing sent
    assert third.returncode == 0, third.stderr
    assert batch_ops(sandbox) == sent + 1
    assert third.report["mirror"][P]["exits"] == {} and third.report["mirror"][P]["known"] == 19

    back = run_target(cfg, vips(ids(20), run=4), tmp_path)  # C19 is a VIP again: sent again
    assert back.returncode == 0, back.stderr
    assert back.report["streams"][P]["sent"] == 1
    assert sandbox.person(id="C19")["attributes"]["vip_tier"] == "gold"


@pytest.mark.parametrize("action", ["suppress", "delete"])
def test_leavers_are_suppressed_or_deleted(sandbox, tmp_path, action):
    cfg = config(sandbox, tmp_path, {P: {**ROUTE, "on_exit": action, "max_exit_ratio": 0.5}})
    assert run_target(cfg, vips(ids(10)), tmp_path).returncode == 0
    run = run_target(cfg, vips(ids(8), run=2), tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.report["mirror"][P]["exits"] == {action: 2}
    for gone in ("C8", "C9"):
        person = sandbox.person(id=gone)
        assert (person is None) if action == "delete" else person["suppressed"] is True
    assert sandbox.person(id="C7")["attributes"]["vip_tier"] == "gold"
    counter = "people_deleted" if action == "delete" else "people_suppressed"
    assert sandbox.counters()[counter] == 2


def test_on_exit_ignore_forgets_leavers_without_sending(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: {**ROUTE, "on_exit": "ignore", "max_exit_ratio": 0.5}})
    assert run_target(cfg, vips(ids(10)), tmp_path).returncode == 0
    sent = batch_ops(sandbox)
    run = run_target(cfg, vips(ids(9), run=2), tmp_path)
    assert run.returncode == 0, run.stderr
    assert batch_ops(sandbox) == sent and run.report["mirror"][P]["exits"] == {"ignore": 1}
    assert sandbox.person(id="C9")["attributes"]["vip_tier"] == "gold"
    again = run_target(cfg, vips(ids(9), run=3), tmp_path)
    assert again.report["mirror"][P]["known"] == 9  # forgotten: not counted as leaving again


def test_a_rejected_row_is_still_in_the_view(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: ROUTE})
    assert run_target(cfg, vips(ids(20)), tmp_path).returncode == 0
    messages = vips(ids(20), run=2)
    messages[1] = record(P, {"customer_id": "C0", "vip_tier": 5, "vip_since": "x"})  # bad types
    run = run_target(cfg, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.report["streams"][P]["rejected"] == 1
    assert run.report["mirror"][P]["left"] == 0
    assert sandbox.person(id="C0")["attributes"]["vip_tier"] == "gold"


def test_a_blank_identifier_is_a_reject_as_elsewhere(sandbox, tmp_path):
    messages = vips(["C1", "  ", "C2"])
    run = run_target(config(sandbox, tmp_path, {P: ROUTE}), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert [(r["reason"], r["field"]) for r in run.rejects] == [
        ("missing_identifier", "customer_id")
    ]
    assert run.report["mirror"][P]["members"] == 2


def test_an_exit_customerio_refuses_is_counted_and_tried_again_next_run(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: ROUTE})
    assert run_target(cfg, vips(ids(20)), tmp_path).returncode == 0
    errors = {"errors": [{"batch_index": 0, "reason": "invalid", "field": "x", "message": "no"}]}
    sandbox.inject(207, body=errors, path=BATCH, mode="respond")  # the run's only request
    refused = run_target(cfg, vips(ids(19), run=2), tmp_path)
    assert refused.returncode == 0, refused.stderr
    assert refused.report["mirror"][P]["exits_refused"] == 1
    assert refused.report["mirror"][P]["exits"] == {}
    assert "exit refused by Customer.io for id C19: invalid: no" in refused.stderr
    assert refused.rejects == []  # an exit is not a record
    again = run_target(cfg, vips(ids(19), run=3), tmp_path)  # still in the ledger: tried again
    assert again.report["mirror"][P]["exits"] == {"unset": 1}
    assert sandbox.person(id="C19")["attributes"] == {}


# ---- only a complete run exits anyone --------------------------------------------------------


def test_a_run_stopped_by_sigterm_exits_nobody(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: {**ROUTE, "max_exit_ratio": 1}})
    assert run_target(cfg, vips(ids(20)), tmp_path).returncode == 0
    sent = batch_ops(sandbox)
    proc = start_target(cfg, tmp_path)
    feed(proc, vips(ids(5), run=2)[:-1], close=False)  # five people in, the tap still reading
    deadline = time.monotonic() + 30
    while not [r for r in sandbox.requests() if r["method"] == "GET"][1:]:  # its start-up check
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)  # it reads the five records and waits for more
    run = stop_target(proc, signal.SIGTERM, cfg, timeout=60)
    assert run.returncode == 143, run.stderr
    assert batch_ops(sandbox) == sent  # no exit went out (and the five were unchanged)
    assert all(sandbox.person(id=i)["attributes"]["vip_tier"] == "gold" for i in ids(20))
    assert run.report["mirror"][P]["complete"] is False
    assert "did not end normally" in run.report["mirror"][P]["reason"]

    whole = run_target(cfg, vips(ids(20), run=3), tmp_path)  # the ledger still knows all 20
    assert whole.returncode == 0 and whole.report["mirror"][P]["left"] == 0


def test_a_failed_run_exits_nobody(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: {**ROUTE, "max_exit_ratio": 1}})
    assert run_target(cfg, vips(ids(10)), tmp_path).returncode == 0
    run = run_target(cfg, [*vips(ids(3), run=2), "this is not a Singer message"], tmp_path)
    assert run.returncode == 5, run.stderr
    assert all(sandbox.person(id=i)["attributes"]["vip_tier"] == "gold" for i in ids(10))
    assert run.report["mirror"][P]["complete"] is False


def test_records_after_the_last_activate_version_mean_the_table_was_not_read_whole(
    sandbox, tmp_path
):
    cfg = config(sandbox, tmp_path, {P: {**ROUTE, "max_exit_ratio": 1}})
    activate = {"type": "ACTIVATE_VERSION", "stream": P, "version": 1}
    first = vips(ids(10))
    run = run_target(cfg, [first[0], activate, *first[1:-1], activate, first[-1]], tmp_path)
    assert run.returncode == 0 and run.report["mirror"][P]["complete"] is True, run.stderr
    # the tap opened a new version and stopped before its closing ACTIVATE_VERSION
    cut = vips(ids(4), run=2)
    run = run_target(cfg, [cut[0], activate, *cut[1:]], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.report["mirror"][P]["complete"] is False
    assert "4 record(s) came after the stream's last ACTIVATE_VERSION" in run.stderr
    assert all(sandbox.person(id=i)["attributes"]["vip_tier"] == "gold" for i in ids(10))
    # read whole, the version closed: the six who are gone leave
    whole = vips(ids(4), run=3)
    run = run_target(cfg, [whole[0], activate, *whole[1:-1], activate, whole[-1]], tmp_path)
    assert run.returncode == 0 and run.report["mirror"][P]["exits"] == {"unset": 6}


def test_a_dry_run_lists_who_would_exit_and_changes_no_ledger(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: ROUTE})
    assert run_target(cfg, vips(ids(20)), tmp_path).returncode == 0
    sent = batch_ops(sandbox)
    dry_file = tmp_path / "dry.jsonl"
    dry = run_target(
        {**cfg, "dry_run": True, "dry_run_file": str(dry_file)}, vips(ids(19), run=2), tmp_path
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.states == [] and batch_ops(sandbox) == sent
    assert dry.report["mirror"][P]["exits"] == {"unset": 1}
    assert [json.loads(line) for line in dry_file.read_text().splitlines()] == [
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": "C19"},
            "attributes": {"vip_since": None, "vip_tier": None},
        }
    ]
    real = run_target(cfg, vips(ids(19), run=2), tmp_path)  # the dry run changed nothing
    assert real.returncode == 0 and real.report["mirror"][P]["exits"] == {"unset": 1}
    assert sandbox.person(id="C19")["attributes"] == {}


# ---- the guard against a broken view ---------------------------------------------------------


def test_a_view_that_empties_trips_the_guard_nobody_exits_and_the_run_ends_8(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: ROUTE, C: PEOPLE})
    assert run_target(cfg, vips(ids(20)), tmp_path).returncode == 0
    sent = batch_ops(sandbox)
    run = run_target(cfg, [*customers(["N1", "N2"]), *vips([], run=2)], tmp_path)
    assert run.returncode == 8, run.stderr
    assert run.states == [{"run": 2}]  # everything else was delivered, its STATE kept
    assert batch_ops(sandbox) == sent + 2 and sandbox.person(id="N1") is not None
    assert all(sandbox.person(id=i)["attributes"]["vip_tier"] == "gold" for i in ids(20))
    mirror = run.report["mirror"][P]
    assert mirror["guard"] == "tripped" and mirror["exits"] == {}
    assert (mirror["members"], mirror["known"], mirror["left"]) == (0, 20, 20)
    assert run.report["status"] == "failed"
    assert (
        "ExitGuardError: 1 mirror route(s) held back by max_exit_ratio: public-vip_customers: "
        "20 of the 20 it knows (100%) would leave its view in one run, more than "
        "max_exit_ratio 0.1: nobody left" in run.stderr
    )
    assert "Traceback" not in run.stderr
    # the view is fixed: nobody left after all
    fixed = run_target(cfg, vips(ids(20), run=3), tmp_path)
    assert fixed.returncode == 0 and fixed.report["mirror"][P]["left"] == 0


def test_exactly_the_ratio_is_allowed_and_past_it_is_not(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {P: {**ROUTE, "max_exit_ratio": 0.2}})
    assert run_target(cfg, vips(ids(10)), tmp_path).returncode == 0
    assert run_target(cfg, vips(ids(8), run=2), tmp_path).returncode == 0  # 2 of 10: 20%
    run = run_target(cfg, vips(ids(6), run=3), tmp_path)  # 2 of 8: 25%
    assert run.returncode == 8 and "2 of the 8 it knows (25%)" in run.stderr


def test_guard_and_drift_in_one_run_end_with_8_naming_both(sandbox, tmp_path):
    sandbox.app_api_key = "app-key-0123456789"
    segment = sandbox.add_segment("VIPs", "vip_tier exists")
    checks = "public-segment_checks"
    routes = {
        P: ROUTE,
        checks: {"kind": "reconcile", "segment_id": "segment_id", "expected_count": "expected"},
    }
    cfg = config(
        sandbox, tmp_path, routes, app_api_key="app-key-0123456789", app_api_url=sandbox.url
    )
    assert run_target(cfg, vips(ids(10)), tmp_path).returncode == 0
    check_rows = [
        schema(checks, {"segment_id": {"type": "integer"}, "expected": {"type": "integer"}}),
        record(checks, {"segment_id": segment, "expected": 0}),  # Customer.io counts 10
    ]
    run = run_target(cfg, [*check_rows, *vips([], run=2)], tmp_path)
    assert run.returncode == 8, run.stderr
    assert "the run also found drift (exit 7): 1 segment check(s) outside" in run.stderr
    assert run.report["reconciliation"][0]["actual"] == 10  # checked after nobody left


# ---- configuration -------------------------------------------------------------------------


def test_mirror_on_an_event_route_is_a_configuration_error(sandbox, tmp_path):
    route = {**ORDER_ROUTE, "mirror": True}
    run = run_target(config(sandbox, tmp_path, {ORDERS: route}), [], tmp_path)
    assert run.returncode == 2
    assert "streams.public-orders.mirror: does not apply to a event route" in run.stderr


def test_a_change_data_capture_stream_cannot_mirror(sandbox, tmp_path):
    cdc = schema(P, {"customer_id": {"type": "string"}, "_sdc_lsn": {"type": ["integer", "null"]}})
    run = run_target(config(sandbox, tmp_path, {P: ROUTE}), [cdc], tmp_path)
    assert run.returncode == 2
    assert "is change data capture (its SCHEMA declares _sdc_lsn)" in run.stderr


def test_mirror_needs_change_detection(sandbox, tmp_path):
    cfg = config(sandbox, tmp_path, {S: SEGMENT}, change_detection=False)
    run = run_target(cfg, [], tmp_path)
    assert run.returncode == 2 and "needs change_detection" in run.stderr


def test_the_postgres_ledger_keeps_the_members(postgres, sandbox, tmp_path):  # noqa: F811
    for runner, count in (("runner-a", 10), ("runner-b", 9)):  # two fresh machines, one ledger
        work = tmp_path / runner
        work.mkdir()
        cfg = config(sandbox, work, {P: ROUTE | {"max_exit_ratio": 0.5}}, ledger_url=postgres.dsn)
        run = run_target(cfg, vips(ids(count)), work)
        assert run.returncode == 0, run.stderr
    assert run.report["mirror"][P]["exits"] == {"unset": 1}
    assert run.report["streams"][P]["skipped_by_reason"] == {"unchanged": 9}
    assert sandbox.person(id="C9")["attributes"] == {}


# ---- manual-segment memberships ----------------------------------------------------------------


def test_memberships_are_added_and_removed_once(sandbox, tmp_path):
    vip = sandbox.add_segment("VIP (manual)", kind="manual")
    cfg = config(sandbox, tmp_path, {C: PEOPLE, S: {**SEGMENT, "max_exit_ratio": 0.5}})
    people = customers(ids(10))
    first = run_target(cfg, [*people, *memberships((i, vip) for i in ids(10))], tmp_path)
    assert first.returncode == 0, first.stderr
    assert sorted(p["id"] for p in sandbox.segment_members(vip)) == sorted(ids(10))
    assert segment_requests(sandbox, "add") == [10]
    assert first.report["streams"][S]["sent"] == 10
    assert first.report["mirror"][S]["segment_adds"] == 10
    assert "; mirror: 10 segment add(s)" in first.stderr

    before = len(writes(sandbox))
    again = run_target(cfg, [*people, *memberships((i, vip) for i in ids(10))], tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(writes(sandbox)) == before  # an unchanged view sends nothing
    assert again.report["streams"][S]["skipped_by_reason"] == {"unchanged": 10}

    fewer = run_target(cfg, [*people, *memberships((i, vip) for i in ids(7))], tmp_path)
    assert fewer.returncode == 0, fewer.stderr
    assert segment_requests(sandbox, "remove") == [3]
    assert sorted(p["id"] for p in sandbox.segment_members(vip)) == sorted(ids(7))
    assert fewer.report["mirror"][S]["segment_removes"] == 3
    assert sandbox.person(id="C8") is not None  # out of the segment, not out of Customer.io

    same = run_target(cfg, [*people, *memberships((i, vip) for i in ids(7))], tmp_path)
    assert same.returncode == 0 and segment_requests(sandbox, "remove") == [3]
    assert "segment_removes" not in same.report["mirror"][S]


def test_a_membership_waits_for_the_identify_received_before_it(sandbox, tmp_path):
    """Customer.io ignores an add for a person it does not know: people synced earlier in the
    run are in the segment even when their identifies are slow to be accepted."""
    vip = sandbox.add_segment("VIP (manual)", kind="manual")
    sandbox.inject(mode="slow", delay=0.5, times=4, path=BATCH)
    cfg = config(sandbox, tmp_path, {C: PEOPLE, S: SEGMENT})
    run = run_target(
        cfg, [*customers(ids(300)), *memberships((i, vip) for i in ids(300))], tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert len(sandbox.segment_members(vip)) == 300


def test_an_unknown_segment_rejects_each_of_its_rows_with_the_reason(sandbox, tmp_path):
    vip = sandbox.add_segment("VIP (manual)", kind="manual")
    cfg = config(sandbox, tmp_path, {C: PEOPLE, S: SEGMENT})
    rows = [("C1", vip), ("C2", 999), ("C3", 999), ("C3", "x")]
    run = run_target(cfg, [*customers(ids(4)), *memberships(rows)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert [(r["reason"], r["record"]["customer_id"]) for r in run.rejects] == [
        ("invalid_segment_id", "C3"),
        ("segment_not_found", "C2"),
        ("segment_not_found", "C3"),
    ]
    assert "Customer.io has no segment 999 (404)" in run.rejects[1]["message"]
    tally = run.report["streams"][S]
    assert (tally["sent"], tally["rejected"]) == (1, 3)
    assert [p["id"] for p in sandbox.segment_members(vip)] == ["C1"]


def test_a_segment_that_is_not_manual_rejects_its_rows_with_customerios_reason(sandbox, tmp_path):
    dynamic = sandbox.add_segment("Everyone", "email exists")
    cfg = config(sandbox, tmp_path, {C: PEOPLE, S: SEGMENT})
    run = run_target(
        cfg, [*customers(ids(2)), *memberships((i, dynamic) for i in ids(2))], tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert [r["reason"] for r in run.rejects] == ["rejected_by_customerio"] * 2
    assert "not manual (HTTP 400)" in run.rejects[0]["message"]


def test_email_identifiers_go_with_id_type_email(sandbox, tmp_path):
    vip = sandbox.add_segment("VIP (manual)", kind="manual")
    route = {**SEGMENT, "identifier": {"field": "email", "type": "email"}}
    cfg = config(sandbox, tmp_path, {C: PEOPLE, S: route})
    rows = [(f"C{i}@Example.com", vip) for i in range(3)]
    run = run_target(cfg, [*customers(ids(3)), *memberships(rows, "email")], tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(p["id"] for p in sandbox.segment_members(vip)) == ["C0", "C1", "C2"]


def test_more_than_1000_members_of_a_segment_go_in_several_requests(sandbox, tmp_path):
    vip = sandbox.add_segment("VIP (manual)", kind="manual")
    other = sandbox.add_segment("Winback (manual)", kind="manual")
    cfg = config(sandbox, tmp_path, {C: PEOPLE, S: SEGMENT}, checkpoint_interval_seconds=600)
    rows = [(i, vip) for i in ids(2500)] + [(i, other) for i in ids(3)]
    run = run_target(cfg, [*customers(ids(2500)), *memberships(rows)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(segment_requests(sandbox, "add")) == [3, 500, 1000, 1000]
    assert sandbox.segment_count(vip) == 2500 and sandbox.segment_count(other) == 3
    run = run_target(cfg, [*customers(ids(2500)), *memberships([])], tmp_path)
    assert run.returncode == 8 and sandbox.segment_count(vip) == 2500  # the guard: an empty view


def test_a_dry_run_lists_the_membership_changes(sandbox, tmp_path):
    vip = sandbox.add_segment("VIP (manual)", kind="manual")
    cfg = config(sandbox, tmp_path, {C: PEOPLE, S: {**SEGMENT, "max_exit_ratio": 0.5}})
    people = customers(ids(4))
    assert (
        run_target(cfg, [*people, *memberships((i, vip) for i in ids(4))], tmp_path).returncode == 0
    )
    dry_file = tmp_path / "dry.jsonl"
    rows = [(i, vip) for i in ids(3)] + [("C0", vip + 1)]
    dry = run_target(
        {**cfg, "dry_run": True, "dry_run_file": str(dry_file)},
        [*people, *memberships(rows)],
        tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    lines = [json.loads(line) for line in dry_file.read_text().splitlines()]
    assert [line for line in lines if line["type"] == "segment"] == [
        {
            "type": "segment",
            "action": "add_customers",
            "segment_id": vip + 1,
            "id_type": "id",
            "ids": ["C0"],
        },
        {
            "type": "segment",
            "action": "remove_customers",
            "segment_id": vip,
            "id_type": "id",
            "ids": ["C3"],
        },
    ]
    assert dry.report["mirror"][S]["segment_adds"] == 1
    assert dry.report["mirror"][S]["segment_removes"] == 1
    assert len(sandbox.segment_members(vip)) == 4
    empty = run_target(
        {**cfg, "dry_run": True, "dry_run_file": str(dry_file)},
        [*people, *memberships([])],
        tmp_path,
    )
    assert empty.returncode == 8  # the guard holds in a dry run as it would for real
    assert "remove_customers" not in dry_file.read_text()


def test_a_membership_that_comes_back_and_is_refused_is_added_on_the_next_run(sandbox, tmp_path):
    """Removed, then back in the view, then its add refused: it is not kept as if delivered,
    so the next run adds it again (a removal marks the ledger as an exit does)."""
    vip = sandbox.add_segment("VIP (manual)", kind="manual")
    cfg = config(sandbox, tmp_path, {C: PEOPLE, S: {**SEGMENT, "max_exit_ratio": 0.5}})
    people = customers(ids(4))
    assert (
        run_target(cfg, [*people, *memberships((i, vip) for i in ids(4))], tmp_path).returncode == 0
    )
    assert (
        run_target(cfg, [*people, *memberships((i, vip) for i in ids(3))], tmp_path).returncode == 0
    )
    assert sorted(p["id"] for p in sandbox.segment_members(vip)) == sorted(ids(3))
    sandbox.inject(status=400, times=1, path=f"/api/v1/segments/{vip}/add_customers")
    back = run_target(cfg, [*people, *memberships((i, vip) for i in ids(4))], tmp_path)
    assert back.returncode == 0, back.stderr
    assert [r["reason"] for r in back.rejects] == ["rejected_by_customerio"]
    assert sorted(p["id"] for p in sandbox.segment_members(vip)) == sorted(ids(3))
    again = run_target(cfg, [*people, *memberships((i, vip) for i in ids(4))], tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p["id"] for p in sandbox.segment_members(vip)) == sorted(ids(4))
    assert again.report["mirror"][S]["segment_adds"] == 1
