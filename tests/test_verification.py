"""verify_sample: the people a run sent, read back from the sandbox's App API through the real
target process, and each way Customer.io can accept a write and not hold it found with its
check (exit 9), while a write applied late is no discrepancy."""

from __future__ import annotations

import json

import pytest
import requests

from tests.harness import record, run_target, schema, state, target_config
from tests.orders import ORDER_ROUTE, ORDER_SCHEMA, ORDERS, order

APP_KEY = "app-key-0123456789"
PEOPLE = "public-customers"
PERSON_ROUTE = {"kind": "person", "identifier": {"field": "id", "type": "id"}}
ROUTES = {PEOPLE: PERSON_ROUTE, ORDERS: ORDER_ROUTE}


@pytest.fixture
def workspace(sandbox):
    sandbox.app_api_key = APP_KEY
    return sandbox


def config(sandbox, tmp_path, **extra):
    return target_config(
        sandbox.url,
        tmp_path,
        ROUTES,
        **{
            "app_api_key": APP_KEY,
            "app_api_url": sandbox.url,
            "verify_sample": 50,
            "verify_timeout": 60,
            **extra,
        },
    )


def customers(count: int) -> list[dict]:
    return [
        schema(
            PEOPLE,
            {
                "id": {"type": "string"},
                "email": {"type": ["string", "null"]},
                "orders_count": {"type": "integer"},
                "lifetime_value": {"type": "number"},
                "vip": {"type": "boolean"},
                "last_order_at": {"type": "string", "format": "date-time"},
                "notes": {"type": ["string", "null"]},
            },
        ),
        *[
            record(
                PEOPLE,
                {
                    "id": f"C{i}",
                    "email": f"c{i}@example.com",
                    "orders_count": i,
                    "lifetime_value": 12.5 * i,
                    "vip": i % 2 == 0,
                    "last_order_at": "2026-11-02T10:00:00+00:00",
                    "notes": None,
                },
            )
            for i in range(count)
        ],
    ]


def orders(count: int) -> list[dict]:
    placed = [f"2026-11-0{1 + i % 5}T10:00:00+00:00" for i in range(count)]
    return [ORDER_SCHEMA, *(order(i, f"C{i % 5}", placed[i]) for i in range(count))]


def stream(people: int = 8, events: int = 6) -> list[dict]:
    return [*customers(people), *orders(events), state({"b": 1})]


def checks(run) -> list[tuple[str, str]]:
    return sorted(
        (d["identifier"], d["check"]) for d in run.report["verification"]["discrepancies"]
    )


def test_a_clean_sample_passes_and_lands_in_the_report(workspace, tmp_path):
    run = run_target(config(workspace, tmp_path), stream(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.states == [{"b": 1}]
    section = run.report["verification"]
    assert section["sampled"] == section["checked"] == section["ok"] == 8
    assert section["discrepancies"] == []
    assert section["covered"] == {PEOPLE: ["identify"], ORDERS: ["event"]}
    assert "verification: 8 of 8 sampled people read back from Customer.io, 8 ok" in run.stderr
    assert APP_KEY not in run.stderr + json.dumps(run.report)


def test_the_sample_is_bounded_and_covers_every_route(workspace, tmp_path):
    many = [*customers(40), *orders(3), state({"b": 1})]
    run = run_target(config(workspace, tmp_path, verify_sample=4), many, tmp_path)
    assert run.returncode == 0, run.stderr
    section = run.report["verification"]
    assert section["sampled"] == 4 and section["ok"] == 4
    # the event route's people are in the sample, not only the 40 customers'
    reads = [r for r in workspace.requests() if "/activities" in r["path"]]
    assert any(
        r["path"].startswith(("/v1/customers/C0/", "/v1/customers/C1/", "/v1/customers/C2/"))
        for r in reads
    )


def test_a_dropped_write_is_found_and_exits_9(workspace, tmp_path):
    workspace.ignore_writes(id="C3")
    workspace.report_file = str(tmp_path / "report.json")  # the QA page shows its verification
    run = run_target(config(workspace, tmp_path, verify_timeout=1), stream(), tmp_path)
    assert run.returncode == 9, run.stderr
    assert "target-customerio failed (verification)" in run.stderr.splitlines()[-1]
    assert run.states == [{"b": 1}]  # everything was delivered: the STATE is written
    assert checks(run) == [("C3", "missing_profile")]
    assert run.report["verification"]["ok"] == 7
    assert ': C3: missing_profile: sent "a profile", Customer.io holds null' in run.stderr
    page = requests.get(f"{workspace.url}/", timeout=10).text
    assert "Last verification" in page and "1 discrepancies" in page
    assert "<b>8</b> of <b>8</b> sampled people read back, <b>7</b> ok" in page
    assert "missing_profile" in page and "<td>C3</td>" in page


def test_on_verify_failure_warn_exits_0(workspace, tmp_path):
    workspace.ignore_writes(id="C3")
    cfg = config(workspace, tmp_path, verify_timeout=1, on_verify_failure="warn")
    run = run_target(cfg, stream(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert checks(run) == [("C3", "missing_profile")]


def test_a_shared_email_is_a_duplicate_profile(workspace, tmp_path):
    # a profile made before email was an identifier holds C2's email as an attribute
    workspace.add_person(id="legacy-2", attributes={"email": "c2@example.com"})
    run = run_target(config(workspace, tmp_path, verify_timeout=1), stream(), tmp_path)
    assert run.returncode == 9, run.stderr
    assert checks(run) == [("C2", "duplicate_profile")]
    [item] = run.report["verification"]["discrepancies"]
    assert item["sent"] == "c2@example.com" and item["found"] == ["C2", "legacy-2"]


def test_an_email_held_by_another_person_is_a_failed_attribute_change(workspace, tmp_path):
    workspace.add_person(id="someone-else", email="c4@example.com")
    run = run_target(config(workspace, tmp_path, verify_timeout=1), stream(), tmp_path)
    assert run.returncode == 9, run.stderr
    assert ("C4", "failed_attribute_change") in checks(run)
    failed = [d for d in run.report["verification"]["discrepancies"] if d["check"] != "attribute"]
    assert failed[0]["sent"] == {"email": "c4@example.com"}


def test_a_repeated_event_is_found(workspace, tmp_path):
    # Customer.io already holds C1's order under another id (an earlier integration)
    first = run_target(config(workspace, tmp_path, verify_sample=0), stream(), tmp_path)
    assert first.returncode == 0, first.stderr
    workspace.store.db.execute(
        "INSERT INTO events (cio_id, id, name, timestamp, attributes, received_at)"
        " SELECT cio_id, '01ARZ3NDEKTSV4RRFFQ69G5FAV', name, timestamp, attributes, received_at"
        " FROM events WHERE cio_id = (SELECT cio_id FROM people WHERE id = 'C1') LIMIT 1"
    )
    again = [*orders(6), state({"b": 2})]
    run = run_target(config(workspace, tmp_path, full_resend=True), again, tmp_path)
    assert run.returncode == 9, run.stderr
    assert checks(run) == [("C1", "event_repeated")]


def test_a_failed_event_is_found(workspace, tmp_path):
    workspace.fail_events("order_placed")
    run = run_target(config(workspace, tmp_path, verify_timeout=1), stream(), tmp_path)
    assert run.returncode == 9, run.stderr
    found = {check for _, check in checks(run)}
    assert found == {"failed_event", "event_missing"}


def test_a_write_applied_after_a_delay_is_no_discrepancy(workspace, tmp_path):
    workspace.delay_writes(2)
    run = run_target(config(workspace, tmp_path), stream(), tmp_path)
    assert run.returncode == 0, run.stderr
    section = run.report["verification"]
    assert section["ok"] == 8 and section["discrepancies"] == []
    assert section["rounds"] > 1  # the first read found the writes not applied yet
    assert workspace.counters()["writes_applied_late"] > 0


def test_a_run_that_failed_verifies_nothing(workspace, tmp_path):
    cfg = config(workspace, tmp_path, max_reject_ratio=0.0)
    bad = [*customers(2), record(PEOPLE, {"id": None}), state({"b": 1})]
    run = run_target(cfg, bad, tmp_path)
    assert run.returncode != 0
    assert "verification" not in (run.report or {})
    assert not [r for r in workspace.requests() if r["path"].startswith("/v1/customers")]


def test_verify_sample_needs_the_app_api_key(workspace, tmp_path):
    cfg = config(workspace, tmp_path)
    del cfg["app_api_key"]
    run = run_target(cfg, stream(), tmp_path)
    assert run.returncode == 2
    assert "setting `app_api_key` is required by `verify_sample`" in run.stderr


STATUSES = ("new", "repeat", "refunded", "churn_risk")
QA_ROUTES = {PEOPLE: PERSON_ROUTE, ORDERS: ORDER_ROUTE}


def lifecycle(count: int) -> list[dict]:
    """Customers in four lifecycle states (a quarter churn risk... as i % 4), and orders."""
    return [
        schema(PEOPLE, {"id": {"type": "string"}, "status": {"type": "string"}}),
        *[record(PEOPLE, {"id": f"C{i}", "status": STATUSES[i % 4]}) for i in range(count)],
        ORDER_SCHEMA,
        *(order(i, f"C{i}", "2026-11-01T10:00:00+00:00") for i in range(count)),
    ]


def qa_config(sandbox, tmp_path, **extra):
    return config(sandbox, tmp_path, verify_sample=0, qa_sample=8, qa_stratify=["status"], **extra)


def test_a_qa_sync_sends_n_people_of_every_state_no_state_and_verifies_them(workspace, tmp_path):
    stream_in = [*lifecycle(40), state({"b": 1})]
    run = run_target(qa_config(workspace, tmp_path), stream_in, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.states == []  # the bookmark does not move
    qa = run.report["qa_sync"]
    assert len(qa["people"]) == 8 and len(workspace.people()) == 8
    sent = {p["id"] for p in workspace.people()}
    assert {f"id:{i}" for i in sent} == set(qa["people"])
    assert {p["attributes"]["status"] for p in workspace.people()} == set(STATUSES)
    assert {e["person_id"] for e in workspace.events()} <= sent  # their events, no one else's
    assert run.report["streams"][PEOPLE]["sent"] == 8
    assert run.report["streams"][PEOPLE]["skipped_by_reason"] == {"qa_sample": 32}
    section = run.report["verification"]
    assert section["sampled"] == section["ok"] == 8 and section["discrepancies"] == []
    assert "QA sync of 8 people, no STATE" in run.stderr

    # the same data in another order: the same people
    again = tmp_path / "again"
    again.mkdir()
    workspace.reset()
    reordered = [*lifecycle(40)[:1], *reversed(lifecycle(40)[1:41]), *lifecycle(40)[41:]]
    other = run_target(qa_config(workspace, again), [*reordered, state({"b": 1})], again)
    assert other.returncode == 0, other.stderr
    assert set(other.report["qa_sync"]["people"]) == set(qa["people"])


def test_the_real_sync_after_a_qa_sync_does_not_send_its_people_again(workspace, tmp_path):
    stream_in = [*lifecycle(20), state({"b": 1})]
    qa = run_target(qa_config(workspace, tmp_path), stream_in, tmp_path)
    assert qa.returncode == 0, qa.stderr
    real = run_target(config(workspace, tmp_path, verify_sample=0), stream_in, tmp_path)
    assert real.returncode == 0, real.stderr
    assert real.states == [{"b": 1}]
    people = real.report["streams"][PEOPLE]
    assert people["sent"] == 12 and people["skipped_by_reason"] == {"unchanged": 8}
    events = real.report["streams"][ORDERS]
    assert events["sent"] == 12 and events["skipped_by_reason"] == {"unchanged": 8}
    assert len(workspace.people()) == 20 and len(workspace.events()) == 20


VIPS = "public-vip_customers"
MIRRORED = {"kind": "person", "identifier": {"field": "id", "type": "id"}, "mirror": True}
VIP_SCHEMA = schema(VIPS, {"id": {"type": "string"}, "vip_tier": {"type": "string"}})


def vips(count: int, run: int) -> list[dict]:
    rows = [record(VIPS, {"id": f"V{i}", "vip_tier": "gold"}) for i in range(count)]
    return [VIP_SCHEMA, *rows, state({"run": run})]


@pytest.mark.parametrize("on_exit", ["unset", "delete"])
def test_people_who_left_a_view_are_read_back_as_left(workspace, tmp_path, on_exit):
    route = {**MIRRORED, "on_exit": on_exit, "max_exit_ratio": 0.5}
    cfg = target_config(
        workspace.url,
        tmp_path,
        {VIPS: route},
        app_api_key=APP_KEY,
        app_api_url=workspace.url,
        verify_sample=10,
        verify_timeout=2,
    )
    assert run_target(cfg, vips(6, 1), tmp_path).returncode == 0
    workspace.ignore_writes(id="V5")  # its exit is accepted and never applied
    run = run_target(cfg, vips(4, 2), tmp_path)
    assert run.returncode == 9, run.stderr
    section = run.report["verification"]
    assert section["covered"] == {VIPS: ["exit"]}  # nobody else changed: only the leavers
    check = "attribute" if on_exit == "unset" else "missing_profile"
    assert checks(run) == [("V5", check)]  # V4 left as told; V5 still holds what it had
    [item] = section["discrepancies"]
    if on_exit == "unset":
        assert item["sent"] == {"vip_tier": None} and item["found"] == {"vip_tier": "gold"}
    else:
        assert item["sent"] == "no profile (deleted)"


def test_a_deleted_row_is_read_back_as_gone(workspace, tmp_path):
    route = {**PERSON_ROUTE, "on_delete": "delete"}
    cfg = target_config(
        workspace.url,
        tmp_path,
        {PEOPLE: route},
        app_api_key=APP_KEY,
        app_api_url=workspace.url,
        verify_sample=10,
    )
    people = schema(
        PEOPLE, {"id": {"type": "string"}, "_sdc_deleted_at": {"type": ["string", "null"]}}
    )
    first = [people, *[record(PEOPLE, {"id": f"C{i}", "_sdc_deleted_at": None}) for i in range(3)]]
    assert run_target(cfg, [*first, state({"b": 1})], tmp_path).returncode == 0
    gone = record(PEOPLE, {"id": "C1", "_sdc_deleted_at": "2026-11-02T10:00:00+00:00"})
    run = run_target(cfg, [people, gone, state({"b": 2})], tmp_path)
    assert run.returncode == 0, run.stderr
    section = run.report["verification"]
    assert section["covered"] == {PEOPLE: ["delete"]}
    assert section["sampled"] == section["ok"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"on_verify_failure": "ignore"}, "setting `on_verify_failure`"),
        ({"verify_timeout": 0}, "setting `verify_timeout`"),
        ({"qa_stratify": ["status"]}, "`qa_stratify` applies only with `qa_sample`"),
        ({"qa_sample": 0}, "setting `qa_sample`"),
        ({"verify_sampel": 5}, "unknown setting `verify_sampel` (did you mean `verify_sample`?)"),
    ],
)
def test_a_wrong_verification_setting_stops_the_run_before_anything_is_sent(
    workspace, tmp_path, extra, message
):
    run = run_target(config(workspace, tmp_path, **extra), stream(), tmp_path)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert workspace.requests() == []
