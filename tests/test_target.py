"""The real target process, fed real Singer streams, against the local Track API server.

Each test asserts what the workspace holds afterwards, and which STATE came out.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import API_KEY, TARGET, record, run_target, schema, state, target_config

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
RECENT = (NOW - dt.timedelta(hours=1)).isoformat()
OLD = (NOW - dt.timedelta(days=10)).isoformat()

BATCH = "/api/v2/batch"
CUSTOMERS = "public-customer_profiles"
ORDERS = "public-order_placed_events"
ROUTES = {
    CUSTOMERS: {
        "kind": "person",
        "identifier": {"field": "customer_id", "type": "id"},
        "contract": "builtin:customer",
    },
    "*_placed_events": {
        "kind": "event",
        "identifier": {"field": "customer_id", "type": "id"},
        "event_name": "order_placed",
        "event_id": ["order_id"],
        "timestamp": "placed_at",
        "max_age": "3d",
        "contract": "builtin:order_placed",
    },
}
CUSTOMER_SCHEMA = schema(
    CUSTOMERS,
    {
        "customer_id": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "last_order_at": {"type": ["string", "null"], "format": "date-time"},
        "orders_count": {"type": "integer"},
        "lifetime_value": {"type": "number"},
        "email_opt_in": {"type": "boolean"},
        "prefs": {},
    },
    ["customer_id"],
)
ORDER_SCHEMA = schema(
    ORDERS,
    {
        "order_id": {"type": "integer"},
        "customer_id": {"type": "string"},
        "placed_at": {"type": "string", "format": "date-time"},
        "total": {"type": "number"},
        "currency": {"type": "string"},
        "sku": {"type": "string"},
    },
)


def customer(n: int, **extra) -> dict:
    row = {
        "customer_id": f"C{n:03}",
        "email": f" Person{n}@Example.COM ",
        "last_order_at": RECENT,
        "orders_count": 2,
        "lifetime_value": 250.00,
        "email_opt_in": True,
        "prefs": {"size": "M"},
    }
    return record(CUSTOMERS, {**row, **extra})


def order(
    order_id: int, customer_id: str = "C001", placed_at: str = RECENT, sku: str = "A"
) -> dict:
    return record(
        ORDERS,
        {
            "order_id": order_id,
            "customer_id": customer_id,
            "placed_at": placed_at,
            "total": 99.90,
            "currency": "USD",
            "sku": sku,
        },
    )


def sample_stream() -> list[dict]:
    return [
        CUSTOMER_SCHEMA,
        customer(1),
        customer(2, email=None),
        customer(3, orders_count=0, last_order_at=None),
        record(CUSTOMERS, {"customer_id": None, "email": "nobody@example.com"}),
        customer(4, lifetime_value="250.00"),
        state({"bookmarks": {CUSTOMERS: {"replication_key_value": "c"}}}),
        ORDER_SCHEMA,
        order(10, sku="A"),
        order(10, sku="B"),
        order(11, "C002"),
        order(12, placed_at=OLD),
        record(
            ORDERS,
            {
                "order_id": 13,
                "customer_id": "C001",
                "placed_at": None,
                "total": 1,
                "currency": "USD",
            },
        ),
        state(
            {
                "bookmarks": {
                    CUSTOMERS: {"replication_key_value": "c"},
                    ORDERS: {"replication_key_value": "o"},
                }
            }
        ),
    ]


def test_people_and_events_land_with_the_types_segments_need(sandbox, tmp_path):
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), sample_stream(), tmp_path)
    assert run.returncode == 0, run.stderr

    people = {p["id"]: p for p in sandbox.people()}
    assert set(people) == {"C001", "C002", "C003"}
    attrs = people["C001"]["attributes"]
    assert attrs["email"] == "person1@example.com"
    assert attrs["last_order_at"] == int(dt.datetime.fromisoformat(RECENT).timestamp())
    assert type(attrs["last_order_at"]) is int and type(attrs["orders_count"]) is int
    assert (
        attrs["lifetime_value"] == 250
        and attrs["email_opt_in"] is True
        and attrs["prefs"] == {"size": "M"}
    )
    assert "customer_id" not in attrs

    events = sandbox.events()
    assert sorted((e["person_id"], e["attributes"]["order_id"]) for e in events) == [
        ("C001", 10),
        ("C002", 11),
    ]
    for event in events:
        assert event["name"] == "order_placed" and len(event["id"]) == 26
        assert event["timestamp"] == int(dt.datetime.fromisoformat(RECENT).timestamp())

    assert run.states == [
        {
            "bookmarks": {
                CUSTOMERS: {"replication_key_value": "c"},
                ORDERS: {"replication_key_value": "o"},
            }
        }
    ]
    streams = run.report["streams"]
    assert streams[CUSTOMERS]["received"] == 5 and streams[CUSTOMERS]["sent"] == 3
    # "250.00" in a number column: the tap's SCHEMA, checked before the route's contract, refuses it
    assert streams[CUSTOMERS]["rejected_by_reason"] == {
        "missing_identifier": 1,
        "schema_violation": 1,
    }
    assert streams[ORDERS]["skipped_by_reason"] == {"duplicate": 1, "stale": 1}
    assert streams[ORDERS]["rejected_by_reason"] == {"missing_timestamp": 1}
    assert {(r["reason"], r["field"]) for r in run.rejects} == {
        ("missing_identifier", "customer_id"),
        ("schema_violation", "lifetime_value"),
        ("missing_timestamp", "placed_at"),
    }
    assert "10 received, 5 sent, 3 rejected, 2 skipped" in run.stderr.splitlines()[-1]


def test_a_second_run_of_the_same_rows_fires_no_event_twice(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, ROUTES)
    assert run_target(config, sample_stream(), tmp_path).returncode == 0
    first = sorted(e["id"] for e in sandbox.events())
    # full_resend: bypass the ledger, so the events really go out again with the same ids
    assert run_target({**config, "full_resend": True}, sample_stream(), tmp_path).returncode == 0
    assert sorted(e["id"] for e in sandbox.events()) == first
    assert sandbox.counters()["duplicate_events_dropped"] == len(first)


def test_state_is_written_only_after_the_records_before_it_are_accepted(sandbox, tmp_path):
    """A slow Customer.io must delay STATE, never let it run ahead of delivery."""
    config = target_config(sandbox.url, tmp_path, ROUTES, checkpoint_interval_seconds=0.2)
    (tmp_path / "config.json").write_text(json.dumps(config))
    sandbox.inject(200, times=3, mode="slow", delay=1.0, path=BATCH)
    proc = subprocess.Popen(
        [TARGET, "--config", str(tmp_path / "config.json")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        text=True,
    )
    first_batch = [CUSTOMER_SCHEMA, *(customer(n) for n in range(1, 21)), state({"n": 1})]
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in first_batch))
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while (
        not sandbox.requests() and time.monotonic() < deadline
    ):  # the target is up and read the SCHEMA
        time.sleep(0.05)
    time.sleep(0.5)
    proc.stdin.write(json.dumps(customer(21)) + "\n")  # the next record triggers the checkpoint
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert json.loads(line) == {"n": 1}
    assert len(sandbox.people()) >= 20  # everything before STATE was accepted when it appeared
    proc.stdin.write(json.dumps(state({"n": 2})) + "\n")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert [json.loads(x) for x in stdout.splitlines()] == [{"n": 2}]
    assert len(sandbox.people()) == 21


def test_unmapped_stream_fails_fast_naming_it_and_the_routes(sandbox, tmp_path):
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES),
        [schema("public-secrets", {"x": {}}), record("public-secrets", {"x": 1})],
        tmp_path,
    )
    assert run.returncode == 2
    assert "'public-secrets' has no route" in run.stderr and CUSTOMERS in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_unmapped_stream_can_be_skipped_and_counted(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, ROUTES, unmapped_streams="skip")
    run = run_target(
        config,
        [schema("public-secrets", {"x": {}}), record("public-secrets", {"x": 1}), state({"s": 1})],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.report["streams"]["public-secrets"]["skipped_by_reason"] == {"unmapped": 1}
    assert sandbox.people() == [] and run.states == [{"s": 1}]


def test_wrong_credentials_stop_the_run_in_one_line(sandbox, tmp_path):
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "api_key": "wrong-key-123"}
    run = run_target(config, sample_stream(), tmp_path, timeout=30)
    assert run.returncode == 3
    assert "refused site_id/api_key (HTTP 401)" in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == "" and sandbox.people() == []
    assert "wrong-key-123" not in run.stderr


def test_wrong_region_is_named(tmp_path):
    from target_customerio.sandbox import Sandbox
    from tests.harness import SITE_ID

    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:", region="eu") as eu:
        run = run_target(
            target_config(eu.url, tmp_path, ROUTES, region="us"),
            sample_stream(),
            tmp_path,
            timeout=30,
        )
    assert run.returncode == 3 and "region 'eu'" in run.stderr and "set region: eu" in run.stderr


def test_item_errors_from_customerio_go_to_the_reject_file(sandbox, tmp_path):
    errors = {
        "errors": [
            {"batch_index": 1, "reason": "invalid", "field": "email", "message": "email is invalid"}
        ]
    }
    sandbox.inject(207, body=errors, path=BATCH)
    stream = [CUSTOMER_SCHEMA, customer(1), customer(2), customer(3), state({"s": 1})]
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES, delivery_workers=1), stream, tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.report["streams"][CUSTOMERS]["sent"] == 2
    assert run.report["streams"][CUSTOMERS]["rejected_by_reason"] == {"rejected_by_customerio": 1}
    [reject] = run.rejects
    assert (
        reject["record"]["customer_id"] == "C002"
        and reject["field"] == "email"
        and "email is invalid" in reject["message"]
    )
    assert run.states == [{"s": 1}]


def test_rate_limits_and_server_errors_are_retried_until_accepted(sandbox, tmp_path):
    sandbox.inject(429, times=2, path=BATCH)
    sandbox.inject(503, times=1, path=BATCH)
    sandbox.inject(429, times=1, retry_after=0.2, path=BATCH)
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), sample_stream(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(sandbox.people()) == 3 and len(sandbox.events()) == 2
    assert run.report["totals"]["retried_requests"] == 4


def test_an_outage_fails_clearly_and_advances_no_state(sandbox, tmp_path):
    sandbox.inject(503, times=1000, path=BATCH)
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES, max_retries=2), sample_stream(), tmp_path
    )
    assert run.returncode == 4
    assert run.stdout == ""
    assert "did not accept a batch after 3 tries (last: HTTP 503)" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.report["status"] == "failed"


def test_dry_run_sends_nothing_and_moves_no_bookmark(sandbox, tmp_path):
    config = target_config(
        sandbox.url, tmp_path, ROUTES, dry_run=True, dry_run_file=str(tmp_path / "dry.jsonl")
    )
    run = run_target(config, sample_stream(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and sandbox.requests() == []
    ops = [json.loads(x) for x in (tmp_path / "dry.jsonl").read_text().splitlines()]
    assert [o["action"] for o in ops].count("identify") == 3 and [o["action"] for o in ops].count(
        "event"
    ) == 2
    assert API_KEY not in (tmp_path / "dry.jsonl").read_text()


@pytest.mark.parametrize(
    "lines, words",
    [
        (["{not json"], "input line 1 is not valid JSON"),
        ([json.dumps(record(CUSTOMERS, {"customer_id": "C1"}))], "before a corresponding schema"),
    ],
)
def test_malformed_input_is_one_clear_line(sandbox, tmp_path, lines, words):
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), lines, tmp_path)
    assert run.returncode == 5 and words in run.stderr and "Traceback" not in run.stderr


def test_contract_violation_can_fail_the_run(sandbox, tmp_path):
    routes = {**ROUTES, CUSTOMERS: {**ROUTES[CUSTOMERS], "on_contract_violation": "fail"}}
    run = run_target(target_config(sandbox.url, tmp_path, routes), sample_stream(), tmp_path)
    assert (
        run.returncode == 6
        and "schema violation at lifetime_value" in run.stderr
        and run.stdout == ""
    )


def test_a_contract_violation_the_schema_allows_can_fail_the_run(sandbox, tmp_path):
    routes = {**ROUTES, CUSTOMERS: {**ROUTES[CUSTOMERS], "on_contract_violation": "fail"}}
    stream = [
        CUSTOMER_SCHEMA,
        customer(1, lifetime_value=-5),
        state({"n": 1}),
    ]  # a number, but negative
    run = run_target(target_config(sandbox.url, tmp_path, routes), stream, tmp_path)
    assert (
        run.returncode == 6
        and "contract violation at lifetime_value" in run.stderr
        and run.stdout == ""
    )


def test_the_api_key_never_reaches_any_output(sandbox, tmp_path):
    sandbox.inject(500, times=1000, path=BATCH)
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES, max_retries=1), sample_stream(), tmp_path
    )
    assert run.returncode == 4
    for path in tmp_path.iterdir():
        if path.name != "config.json":
            assert API_KEY not in path.read_text(errors="replace"), path
    assert API_KEY not in run.stderr + run.stdout


def test_a_request_refused_whole_is_halved_until_the_bad_operation_is_isolated(sandbox, tmp_path):
    """Customer.io answers 400 to the whole request: the target splits it instead of failing."""
    sandbox.inject(400, times=3, path=BATCH, body={"meta": {"error": "malformed operation"}})
    stream = [CUSTOMER_SCHEMA, *(customer(n) for n in range(1, 5)), state({"s": 1})]
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES, delivery_workers=1), stream, tmp_path
    )
    assert run.returncode == 0, run.stderr
    # [C1..C4] refused, [C1, C2] refused, [C1] refused: C1 is the one rejected, the rest land.
    assert [r["record"]["customer_id"] for r in run.rejects] == ["C001"]
    assert (
        run.rejects[0]["reason"] == "rejected_by_customerio"
        and "malformed operation" in run.rejects[0]["message"]
    )
    assert sorted(p["id"] for p in sandbox.people()) == ["C002", "C003", "C004"]
    assert run.states == [{"s": 1}]


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_records_mapped_in_parallel_land_in_order_and_each_event_once(sandbox, tmp_path, workers):
    """Chunks of 500 records go to the mapping workers in turn; the answers are taken in order,
    so a person's later update wins, and an order repeated in another process's chunk is one
    event."""
    orders = [
        order(n % 700, customer_id=f"C{n % 50:03}", sku=f"S{n}") for n in range(2100)
    ]  # each order 3 times, chunks apart
    updates = [
        customer(n % 50, orders_count=n) for n in range(1600)
    ]  # the last update of C000..C049 is 1550..1599
    config = target_config(sandbox.url, tmp_path, ROUTES, mapping_workers=workers)
    run = run_target(
        config, [ORDER_SCHEMA, *orders, CUSTOMER_SCHEMA, *updates, state({"done": 1})], tmp_path
    )
    assert run.returncode == 0, run.stderr
    events = sandbox.events()
    assert (
        sorted(e["id"] for e in events) == sorted({e["id"] for e in events}) and len(events) == 700
    )
    assert (
        sandbox.counters()["duplicate_events_dropped"] == 0
    )  # never sent twice, not merely dropped
    assert {p["id"]: p["attributes"]["orders_count"] for p in sandbox.people()} == {
        f"C{n:03}": 1550 + n for n in range(50)
    }
    assert run.report["streams"][ORDERS]["skipped_by_reason"] == {"duplicate": 1400}
    assert run.states == [{"done": 1}]


def test_stream_maps_still_apply_through_the_sdk_path(sandbox, tmp_path):
    """Records of a stream with stream maps skip the direct path: the SDK maps them first."""
    config = target_config(
        sandbox.url,
        tmp_path,
        ROUTES,
        stream_maps={CUSTOMERS: {"orders_count": "orders_count * 10", "email": "__NULL__"}},
    )
    run = run_target(
        config,
        [
            CUSTOMER_SCHEMA,
            customer(1, orders_count=3),
            customer(2, orders_count=4),
            state({"n": 1}),
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    people = {p["id"]: p["attributes"] for p in sandbox.people()}
    assert {pid: attrs["orders_count"] for pid, attrs in people.items()} == {"C001": 30, "C002": 40}
    assert all("email" not in attrs for attrs in people.values())
    assert run.states == [{"n": 1}]


def test_a_killed_mapping_worker_stops_the_run_with_one_line_and_no_state(sandbox, tmp_path):
    """A mapping process killed from outside (the OOM killer): the run stops, says so in one
    line, exits 1, and writes no STATE for records it could not map."""
    config = target_config(sandbox.url, tmp_path, ROUTES, mapping_workers=2)
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [TARGET, "--config", str(tmp_path / "config.json")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        text=True,
    )
    proc.stdin.write(
        "".join(
            json.dumps(m) + "\n" for m in [CUSTOMER_SCHEMA, *(customer(n) for n in range(2000))]
        )
    )
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2
    time.sleep(0.5)
    os.kill(workers[-1], signal.SIGKILL)
    try:
        proc.stdin.write(
            "".join(
                json.dumps(m) + "\n"
                for m in [*(customer(n) for n in range(2000, 5000)), state({"n": 1})]
            )
        )
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it already stopped: the dead worker still owed it answers
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 1, stderr
    assert (
        "a mapping process stopped unexpectedly (exit code -9)" in stderr
        and "Traceback" not in stderr
    )
    assert stdout == ""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
