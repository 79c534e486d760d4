"""The demo's reconcile checks end to end: the sample database's `segment_checks` view through the
real tap-postgres and target-customerio process (the routes of meltano.yml) against a sandbox with
demo/segments.json, on a fresh sync (pass) and on the broken night (exit 7); and the pieces of
demo/run_demo.py that run them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from demo import run_demo
from demo.sample_data import CHECKS_VIEW, break_profiles, load, mutate, second_orders
from target_customerio.sandbox import Sandbox
from tests.harness import API_KEY, SITE_ID, Run, run_target, target_config
from tests.pg_fixtures import discover, incremental_catalog, run_tap, tap_config, write_json
from tests.pg_fixtures import postgres as postgres  # noqa: PLC0414  (fixture; `as` avoids F811)

ROOT = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((ROOT / "meltano.yml").read_text())
LOADER = next(p for p in PROJECT["plugins"]["loaders"] if p["name"] == "target-customerio")
ROUTES = LOADER["config"]["streams"]
PROFILES, CHECKS = "public-customer_profiles", f"public-{CHECKS_VIEW}"
SEGMENTS = json.loads(run_demo.SEGMENTS_FILE.read_text())
CANARY, GUARDRAIL = 1, 2


# ---- meltano.yml: the job, the extractor, the demo environment -------------------------------


def test_meltano_yml_runs_the_checks_the_demo_prints():
    extractor = next(
        p for p in PROJECT["plugins"]["extractors"] if p["name"] == "tap-postgres--segment-checks"
    )
    assert extractor["select"] == [f"{CHECKS}.*"]
    assert extractor["metadata"][CHECKS]["replication-method"] == "FULL_TABLE"
    job = next(j for j in PROJECT["jobs"] if j["name"] == run_demo.CHECKS_JOB)
    assert job["tasks"] == ["tap-postgres--segment-checks target-customerio"]
    schedule = next(s for s in PROJECT["schedules"] if s["job"] == run_demo.CHECKS_JOB)
    assert schedule["env"]["TARGET_CUSTOMERIO_REPORT_FILE"] == str(
        run_demo.CHECKS_REPORT.relative_to(ROOT)
    )
    assert ROUTES[CHECKS] == {
        "kind": "reconcile",
        "segment_id": "segment_id",
        "expected_count": "expected",
        "tolerance": "tolerance",
    }
    demo = next(e for e in PROJECT["environments"] if e["name"] == "demo")
    target = next(
        p for p in demo["config"]["plugins"]["loaders"] if p["name"] == "target-customerio"
    )
    assert target["config"]["app_api_url"] == run_demo.SANDBOX_URL
    assert demo["env"]["TARGET_CUSTOMERIO_APP_API_KEY"] == run_demo.APP_API_KEY
    # The main sync never reads the checks (they run in their own job, after it).
    main = next(p for p in PROJECT["plugins"]["extractors"] if p["name"] == "tap-postgres")
    assert f"{CHECKS}.*" not in main["select"]


# ---- tap-postgres -> target-customerio -> sandbox ----------------------------------------------


@pytest.fixture(scope="module")
def workspace():
    with Sandbox(
        site_id=SITE_ID,
        api_key=API_KEY,
        db_path=":memory:",
        app_api_key=run_demo.APP_API_KEY,
        segments_file=str(run_demo.SEGMENTS_FILE),
    ) as sb:
        yield sb


def full_table(discovered: dict[str, Any], view: str) -> dict[str, Any]:
    """The catalog Meltano writes for tap-postgres--segment-checks: one view, FULL_TABLE."""
    entry = json.loads(
        json.dumps(next(e for e in discovered["streams"] if e["table_name"] == view))
    )
    entry["replication_method"] = "FULL_TABLE"
    root = next(m for m in entry["metadata"] if m["breadcrumb"] == [])
    root["metadata"].update({"selected": True, "replication-method": "FULL_TABLE"})
    return {"streams": [entry]}


class Pipeline:
    """The demo's two jobs, as Meltano runs them: the people sync (incremental, with state) and
    the checks; one target directory, so the ledger is kept from run to run."""

    def __init__(self, server, sandbox: Sandbox, directory: Path) -> None:
        self.dir, self.sandbox = directory, sandbox
        self.config = write_json(directory / "tap.json", tap_config(server))
        discovered = discover(self.config)
        self.people = write_json(
            directory / "people.json",
            incremental_catalog(discovered, {"customer_profiles": "updated_at"}),
        )
        self.checks = write_json(directory / "checks.json", full_table(discovered, CHECKS_VIEW))
        self.state: dict[str, Any] | None = None
        (directory / "target").mkdir()

    def _target(self, stdout: str, route: str) -> Run:
        config = target_config(
            self.sandbox.url,
            self.dir / "target",
            {route: ROUTES[route]},
            app_api_key=run_demo.APP_API_KEY,
            app_api_url=self.sandbox.url,
        )
        return run_target(config, stdout.splitlines(), self.dir / "target")

    def sync(self) -> Run:
        state = write_json(self.dir / "state.json", self.state) if self.state else None
        tap = run_tap(self.config, self.people, state)
        run = self._target(tap.stdout, PROFILES)
        self.state = tap.state
        return run

    def check(self) -> Run:
        return self._target(run_tap(self.config, self.checks).stdout, CHECKS)


def by_segment(run: Run) -> dict[int, dict[str, Any]]:
    return {c["segment_id"]: c for c in run.report["reconciliation"]}


def test_checks_pass_after_a_fresh_sync_and_fail_with_exit_7_on_the_broken_night(
    postgres, workspace, tmp_path
):
    load(postgres.dsn)
    pipeline = Pipeline(postgres, workspace, tmp_path)
    try:
        # Night 1: every profile, then the checks: Customer.io agrees with SQL.
        synced = pipeline.sync()
        assert synced.returncode == 0, synced.stderr
        assert len(workspace.people()) == 200
        night1 = pipeline.check()
        assert night1.returncode == 0, night1.stderr
        checks = by_segment(night1)
        names = {s["id"]: s["name"] for s in SEGMENTS}
        for segment, check in checks.items():
            assert check["ok"] is True and check["difference"] == 0, check
            assert check["name"] == names[segment]
            assert check["actual"] == workspace.segment_count(segment)
        assert checks[CANARY]["tolerance"] == "2%" and checks[CANARY]["expected"] > 20
        assert checks[GUARDRAIL]["expected"] == checks[GUARDRAIL]["actual"] == 0
        canary_before = checks[CANARY]["actual"]

        # The broken night: tonight's changes, three new repeat buyers, and customer_profiles
        # redeployed without last_order_at. The contract refuses those profiles (the guardrail
        # stays empty), so Customer.io misses the new repeat buyers: the canary drifts.
        mutate(postgres.dsn)
        second_orders(postgres.dsn, 3)
        break_profiles(postgres.dsn)
        broken = pipeline.sync()
        assert broken.returncode == 0, broken.stderr
        refused = [(r["reason"], r["field"]) for r in broken.rejects]
        assert refused and set(refused) == {("contract_violation", "last_order_at")}
        night3 = pipeline.check()
        assert night3.returncode == 7, night3.stderr
        checks = by_segment(night3)
        canary = checks[CANARY]
        assert canary["ok"] is False and canary["reason"] == "outside tolerance"
        assert canary["difference"] <= -3 and canary["expected"] >= canary_before + 3
        assert canary["actual"] == canary_before  # Customer.io still holds last night's profiles
        assert checks[GUARDRAIL]["ok"] is True and checks[GUARDRAIL]["actual"] == 0
        assert f"reconcile: segment {CANARY} ({names[CANARY]}): Customer.io counts" in night3.stderr
        assert night3.report["status"] == "failed"

        # What the guardrail is there for: a writer the contract does not guard (another
        # integration of the workspace) blanks last_order_at of someone with orders.
        buyer = next(p for p in workspace.people() if p["attributes"].get("orders_count", 0) > 0)
        answer = requests.put(
            f"{workspace.url}/api/v1/customers/{buyer['id']}",
            json={"last_order_at": ""},
            auth=(SITE_ID, API_KEY),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        blanked = pipeline.check()
        assert blanked.returncode == 7
        guardrail = by_segment(blanked)[GUARDRAIL]
        assert (guardrail["ok"], guardrail["expected"], guardrail["actual"]) == (False, 0, 1)
    finally:
        load(postgres.dsn)


# ---- demo/run_demo.py's pieces ----------------------------------------------------------------


def test_the_segments_are_redefined_in_a_sandbox_that_runs_without_them(monkeypatch):
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:") as sb:
        monkeypatch.setattr(run_demo, "SANDBOX_URL", sb.url)
        sb.add_segment("An old definition", "orders_count > 5", id=CANARY)
        assert run_demo.define_segments() == SEGMENTS
        assert [(s["id"], s["name"], s["condition"]) for s in sb.segments()] == [
            (s["id"], s["name"], s.get("condition")) for s in SEGMENTS
        ]
        assert [s["kind"] for s in sb.segments()] == [
            s.get("kind", "dynamic") for s in SEGMENTS
        ]  # the VIP segment is a manual one (its members come from vip_segment)
        run_demo.define_segments()  # nothing to change: left as they are
        assert len(sb.segments()) == len(SEGMENTS)


def test_meltano_json_log_lines_become_text_and_give_the_exit_codes():
    line = json.dumps(
        {
            "event": "Block run completed",
            "level": "error",
            "timestamp": "2026-01-01T00:00:00Z",
            "exit_codes": {"loaders": 7},
        }
    )
    text, codes = run_demo._from_json_log(line + "\n")
    assert codes == {"loaders": 7}
    assert text.endswith("] meltano      Block run completed exit_codes={'loaders': 7}\n")
    plugin = json.dumps(
        {
            "event": "reconcile: segment 1 (Canary): Customer.io counts 69",
            "name": "target-customerio",
            "level": "error",
            "timestamp": "t",
        }
    )
    assert run_demo._strip_log_prefix(run_demo._from_json_log(plugin)[0]) == (
        "target-customerio reconcile: segment 1 (Canary): Customer.io counts 69"
    )
    assert run_demo._from_json_log("not json\n") == ("not json\n", {})


@pytest.mark.parametrize(
    ("argv", "night", "expected"),
    [
        (["run"], None, ("run",)),
        (["run"], "3", ("again", True, 3, False)),  # make demo NIGHT=3
        (["again"], None, ("again", False, None, False)),  # make demo-again
        (["again"], "3", ("again", True, 3, False)),  # make demo-again NIGHT=3
        (["again", "--broken"], None, ("again", True, None, False)),
        (["again"], "2", ("again", False, 2, False)),
        (["again"], "4", ("again", False, 4, True)),  # make demo-again NIGHT=4: lost writes
        (["run"], "4", ("again", False, 4, True)),
        (["again", "--lost-writes"], None, ("again", False, None, True)),
    ],
)
def test_night_3_is_the_broken_night_however_it_is_asked_for(monkeypatch, argv, night, expected):
    calls = []
    monkeypatch.setattr(run_demo, "cmd_run", lambda: calls.append(("run",)) or 0)
    monkeypatch.setattr(
        run_demo,
        "cmd_again",
        lambda broken, requested, lost: calls.append(("again", broken, requested, lost)) or 7,
    )
    if night is None:
        monkeypatch.delenv("NIGHT", raising=False)
    else:
        monkeypatch.setenv("NIGHT", night)
    code = run_demo.main(argv)
    assert calls == [expected] and code == (0 if expected == ("run",) else 7)


def test_make_passes_night_to_the_demo_command():
    """`make demo-again NIGHT=3` runs `demo.run_demo again` with NIGHT=3 in its environment
    (make exports command-line variables), which is how the broken night is reached."""
    dry = subprocess.run(
        ["make", "-n", "demo-again", "NIGHT=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert "-m demo.run_demo again" in dry.stdout
    shown = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "-", "show", "NIGHT=3"],
        input="show:\n\t@echo night=$$NIGHT\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.stdout.strip() == "night=3"
