"""Reconcile routes through the real target process against the sandbox's App API: the counts
Customer.io reports checked against the database's, after the run's delivery and STATE."""

from __future__ import annotations

import json

import pytest

from tests.harness import record, run_target, schema, state, target_config, writes

APP_KEY = "app-key-0123456789"
PEOPLE = "public-customers"
CHECKS = "public-segment_checks"
PERSON_ROUTE = {"kind": "person", "identifier": {"field": "id", "type": "id"}}
CHECK_ROUTE = {"kind": "reconcile", "segment_id": "segment_id", "expected_count": "expected"}


@pytest.fixture
def workspace(sandbox):
    sandbox.app_api_key = APP_KEY
    return sandbox


def config(sandbox, tmp_path, routes, **extra):
    return target_config(
        sandbox.url,
        tmp_path,
        routes,
        **{"app_api_key": APP_KEY, "app_api_url": sandbox.url, **extra},
    )


def people(count: int, orders: int = 3) -> list[dict]:
    return [
        schema(PEOPLE, {"id": {"type": "string"}, "orders_count": {"type": "integer"}}),
        *[record(PEOPLE, {"id": f"C{i}", "orders_count": orders}) for i in range(count)],
    ]


def checks(*rows: dict) -> list[dict]:
    return [
        schema(
            CHECKS,
            {
                "segment_id": {"type": "integer"},
                "expected": {"type": "integer"},
                "allowed": {"type": ["string", "null"]},
            },
        ),
        *[record(CHECKS, row) for row in rows],
    ]


def test_counts_within_tolerance_pass_and_land_in_the_report(workspace, tmp_path):
    repeat = workspace.add_segment("Repeat buyers", "orders_count >= 2")
    routes = {PEOPLE: PERSON_ROUTE, CHECKS: {**CHECK_ROUTE, "tolerance": "10%"}}
    run = run_target(
        config(workspace, tmp_path, routes),
        [*people(20), *checks({"segment_id": repeat, "expected": 21}), state({"b": 1})],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.states == [{"b": 1}]
    assert run.report["reconciliation"] == [
        {
            "stream": CHECKS,
            "segment_id": repeat,
            "expected": 21,
            "tolerance": "10%",
            "on_drift": "fail",
            "name": "Repeat buyers",
            "actual": 20,
            "difference": -1,
            "ok": True,
            "reason": None,
        }
    ]
    assert run.report["streams"][CHECKS]["sent"] == 1
    assert APP_KEY not in run.stderr + json.dumps(run.report)


def test_a_count_outside_its_tolerance_fails_with_exit_7_after_the_last_state(workspace, tmp_path):
    guardrail = workspace.add_segment(
        "Orders but no last order", "orders_count > 0 AND last_order_at blank"
    )
    routes = {PEOPLE: PERSON_ROUTE, CHECKS: CHECK_ROUTE}
    run = run_target(
        config(workspace, tmp_path, routes),
        [*people(5), *checks({"segment_id": guardrail, "expected": 0}), state({"b": 2})],
        tmp_path,
    )
    assert run.returncode == 7, run.stderr
    assert run.states == [{"b": 2}]  # everything else was delivered: its STATE is kept
    assert len(workspace.people()) == 5
    lines = [line for line in run.stderr.splitlines() if f"segment {guardrail}" in line]
    assert (
        len(lines) == 1
        and "Customer.io counts 5, the database expects 0 (difference +5, tolerance 0)" in lines[0]
    )
    assert "DriftError: 1 segment check(s) outside their tolerance" in run.stderr
    assert run.report["status"] == "failed" and run.report["reconciliation"][0]["ok"] is False
    assert "Traceback" not in run.stderr


def test_on_drift_warn_reports_without_failing(workspace, tmp_path):
    segment = workspace.add_segment("Everyone", "orders_count exists")
    routes = {PEOPLE: PERSON_ROUTE, CHECKS: {**CHECK_ROUTE, "on_drift": "warn"}}
    run = run_target(
        config(workspace, tmp_path, routes),
        [*people(3), *checks({"segment_id": segment, "expected": 10}), state({"b": 3})],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "Customer.io counts 3, the database expects 10" in run.stderr
    assert run.report["reconciliation"][0]["ok"] is False and run.report["status"] == "ok"


def test_an_unknown_segment_is_a_failed_check_not_a_crash(workspace, tmp_path):
    run = run_target(
        config(workspace, tmp_path, {CHECKS: CHECK_ROUTE}),
        [*checks({"segment_id": 999, "expected": 1}), state({"b": 4})],
        tmp_path,
    )
    assert run.returncode == 7, run.stderr
    [check] = run.report["reconciliation"]
    assert check["ok"] is False and "404" in check["reason"] and check["actual"] is None


def test_a_checks_only_run_needs_no_track_credentials_and_writes_nothing(workspace, tmp_path):
    segment = workspace.add_segment("Nobody", "orders_count > 100")
    cfg = config(workspace, tmp_path, {CHECKS: {**CHECK_ROUTE, "tolerance": "allowed"}})
    del cfg["site_id"], cfg["api_key"]
    run = run_target(
        cfg,
        [
            *checks(
                {"segment_id": segment, "expected": 0, "allowed": "0"},
                {"segment_id": segment, "expected": -2, "allowed": "0"},
                {"segment_id": segment, "expected": 1, "allowed": "oops"},
            ),
            state({"b": 5}),
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert writes(workspace) == [] and all(
        r["path"].startswith("/v1/") for r in workspace.requests()
    )
    assert [(r["reason"], r["field"]) for r in run.rejects] == [
        ("invalid_expected_count", "expected"),
        ("invalid_tolerance", "allowed"),
    ]
    assert len(run.report["reconciliation"]) == 1


def test_without_app_api_key_a_checks_stream_stops_the_run_naming_it(workspace, tmp_path):
    """Only the job that reads the checks view needs the key: the same config syncs people."""
    cfg = config(workspace, tmp_path, {PEOPLE: PERSON_ROUTE, CHECKS: CHECK_ROUTE})
    del cfg["app_api_key"]
    run = run_target(cfg, [*people(2), state({"b": 6})], tmp_path)
    assert run.returncode == 0, run.stderr
    run = run_target(cfg, [*checks({"segment_id": 1, "expected": 0}), state({"b": 7})], tmp_path)
    assert (
        run.returncode == 2
        and "setting `app_api_key` is required by the reconcile route" in run.stderr
    )
    assert run.states == [] and not [
        r for r in workspace.requests() if r["path"].startswith("/v1/")
    ]


def test_a_refused_app_api_key_is_exit_3_naming_it(workspace, tmp_path):
    segment = workspace.add_segment("Everyone", "orders_count exists")
    cfg = config(workspace, tmp_path, {CHECKS: CHECK_ROUTE}, app_api_key="wrong-key-0123456789")
    run = run_target(
        cfg, [*checks({"segment_id": segment, "expected": 0}), state({"b": 7})], tmp_path
    )
    assert run.returncode == 3, run.stderr
    assert "app_api_key" in run.stderr and "wrong-key-0123456789" not in run.stderr


def test_app_api_rate_limits_and_errors_are_retried(workspace, tmp_path):
    segment = workspace.add_segment("Everyone", "orders_count exists")
    workspace.inject(
        status=429, times=2, retry_after=0.1, path=f"/v1/segments/{segment}/customer_count"
    )
    workspace.inject(status=503, times=1, path=f"/v1/segments/{segment}")
    run = run_target(
        config(workspace, tmp_path, {PEOPLE: PERSON_ROUTE, CHECKS: CHECK_ROUTE}),
        [*people(4), *checks({"segment_id": segment, "expected": 4}), state({"b": 8})],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.report["reconciliation"][0]["actual"] == 4


def test_a_dry_run_runs_no_check(workspace, tmp_path):
    segment = workspace.add_segment("Everyone", "orders_count exists")
    cfg = config(
        workspace,
        tmp_path,
        {CHECKS: CHECK_ROUTE},
        dry_run=True,
        dry_run_file=str(tmp_path / "dry.jsonl"),
    )
    run = run_target(
        cfg, [*checks({"segment_id": segment, "expected": 99}), state({"b": 9})], tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert workspace.requests() == [] and "reconcile check(s) not run" in run.stderr
