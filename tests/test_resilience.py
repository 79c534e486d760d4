"""Never lose a record, never fire an event twice: faults, outages and kills.

The sample retention database (embedded Postgres) is read by the real tap-postgres; its output
is piped through the real target process into local Track API workspaces. Each scenario must
end with exactly the workspace a clean run produces.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo.sample_data import load
from target_customerio.sandbox import Sandbox
from tests.harness import API_KEY, SITE_ID, TARGET, Run, collect, run_target, target_config
from tests.pg_fixtures import (  # noqa: F401
    discover,
    incremental_catalog,
    postgres,
    run_tap,
    tap_config,
    write_json,
)

BATCH = "/api/v2/batch"
ROOT = Path(__file__).resolve().parents[1]


def project_routes() -> dict[str, Any]:
    """The routes of the Meltano project's target-customerio, exactly as users run them."""
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    [loader] = [p for p in project["plugins"]["loaders"] if p["name"] == "target-customerio"]
    return loader["config"]["streams"]


def incremental_routes() -> dict[str, Any]:
    """The project's routes but those that mirror a whole view (they need the ledger, which the
    kill test turns off: every resumed run re-delivers from its STATE)."""
    return {
        stream: route
        for stream, route in project_routes().items()
        if not route.get("mirror") and route.get("kind") != "segment"
    }


def snapshot(sandbox: Sandbox) -> dict[str, Any]:
    """What a retention team sees: people with attributes, and every stored event."""
    people = {(p["id"], p["email"]): p["attributes"] for p in sandbox.people()}
    events = sorted(
        (
            e["id"],
            e["person_id"],
            e["name"],
            e["timestamp"],
            json.dumps(e["attributes"], sort_keys=True),
        )
        for e in sandbox.events()
    )
    return {"people": people, "events": events}


@pytest.fixture(scope="module")
def tap(postgres, tmp_path_factory):  # noqa: F811
    """Writes tap-postgres config and catalog; returns a function running one sync."""
    work = tmp_path_factory.mktemp("tap")
    config = write_json(work / "tap.json", tap_config(postgres))
    catalog = write_json(work / "catalog.json", incremental_catalog(discover(config)))

    def sync(state: dict | None = None):
        state_path = write_json(work / "state.json", state) if state else None
        return run_tap(config, catalog, state_path)

    return sync


@pytest.fixture(scope="module")
def clean(tap, tmp_path_factory):
    """The reference: one undisturbed run of the sample database into a fresh workspace."""
    tmp = tmp_path_factory.mktemp("clean")
    output = tap()
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:") as sandbox:
        run = run_target(
            target_config(sandbox.url, tmp, project_routes()), output.stdout.splitlines(), tmp
        )
        assert run.returncode == 0, run.stderr
        reference = snapshot(sandbox)
    assert len(reference["people"]) > 100 and len(reference["events"]) > 100
    return {"output": output, "snapshot": reference, "report": run.report}


def test_faults_end_in_the_same_workspace_as_a_clean_run(clean, sandbox, tmp_path):
    for fault in (
        dict(status=429, times=3),  # a burst without Retry-After
        dict(status=500),
        dict(status=503, times=2),
        dict(mode="drop"),  # connection dropped before any answer
        dict(status=500, mode="process_then"),  # stored, then answered 500: retried
        dict(mode="process_then_drop"),  # stored, then the connection dropped
        dict(mode="slow", delay=3.0),  # slower than the client timeout
        dict(status=429, retry_after=0.5),
    ):
        sandbox.inject(path=BATCH, **fault)
    config = target_config(
        sandbox.url, tmp_path, project_routes(), request_timeout=1.5, max_retries=12
    )
    run = run_target(config, clean["output"].stdout.splitlines(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert snapshot(sandbox) == clean["snapshot"]
    assert run.report["totals"]["retried_requests"] >= 11
    assert run.report["totals"]["sent"] == clean["report"]["totals"]["sent"]
    assert (
        sandbox.counters()["duplicate_events_dropped"] > 0
    )  # re-sent events were dropped, not fired twice
    assert run.states == [clean["output"].state]


def test_an_outage_advances_no_state_and_the_next_run_delivers_everything(clean, sandbox, tmp_path):
    lines = clean["output"].stdout.splitlines()
    sandbox.inject(503, times=10_000, path=BATCH)
    down = run_target(
        target_config(sandbox.url, tmp_path, project_routes(), max_retries=2), lines, tmp_path
    )
    assert down.returncode == 4 and down.stdout == ""
    errors = [line for line in down.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "did not accept a batch after 3 tries (last: HTTP 503)" in errors[0]

    sandbox.clear_faults()
    again = run_target(target_config(sandbox.url, tmp_path, project_routes()), lines, tmp_path)
    assert again.returncode == 0, again.stderr
    assert snapshot(sandbox) == clean["snapshot"]


def test_unreachable_customerio_fails_in_one_line(clean, tmp_path):
    # Retried like any request (a refused connection is one), so few retries keep it short.
    config = target_config("http://127.0.0.1:9", tmp_path, project_routes(), max_retries=2)
    run = run_target(config, clean["output"].stdout.splitlines(), tmp_path, timeout=30)
    assert run.returncode == 4 and run.stdout == ""
    assert (
        "cannot reach Customer.io at http://127.0.0.1:9" in run.stderr
        and "Traceback" not in run.stderr
    )


def _start(config: dict, tmp: Path, lines: list[str]) -> subprocess.Popen:
    (tmp / "config.json").write_text(json.dumps(config))
    (tmp / "tap.jsonl").write_text("".join(line + "\n" for line in lines))
    with (tmp / "tap.jsonl").open("rb") as tap_output:
        return subprocess.Popen(
            [TARGET, "--config", str(tmp / "config.json")],
            stdin=tap_output,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp,
        )


def _first_line(proc: subprocess.Popen, timeout: float) -> bytes:
    """The first line the process writes to stdout, or b"" if none comes in time."""
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():  # no line yet: the kill ends the read, and what it got is kept
        proc.send_signal(signal.SIGKILL)
        reader.join()
    return b"".join(lines)


def _covered_records(lines: list[str], state: dict) -> list[dict]:
    """The tap's records before the STATE message the target echoed: all must be delivered."""
    covered = []
    for line in lines:
        message = json.loads(line)
        if message["type"] == "STATE" and message["value"] == state:
            return covered
        if message["type"] == "RECORD":
            covered.append(message)
    raise AssertionError("the target emitted a STATE the tap never sent")


def _assert_delivered(sandbox: Sandbox, routes: dict, records: list[dict]) -> None:
    people = {p["id"] for p in sandbox.people()}
    for message in records:
        route = routes[message["stream"]]
        person = message["record"].get(route["identifier"]["field"])
        if person is not None and route["kind"] == "person":
            assert str(person) in people, (
                f"{message['stream']} {person} covered by STATE but not delivered"
            )


@pytest.fixture
def big(postgres, tap):  # noqa: F811
    """A longer sync: 3,000 customers (the module's data is restored afterwards)."""
    load(postgres.dsn, customers=3000, seed=11)
    yield tap()
    load(postgres.dsn)


def test_sigkill_at_random_points_then_rerun_converges_without_double_events(big, tap, tmp_path):
    routes = incremental_routes()
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:") as reference:
        assert (
            run_target(
                target_config(reference.url, tmp_path, routes), big.stdout.splitlines(), tmp_path
            ).returncode
            == 0
        )
        expected = snapshot(reference)

    rng = random.Random(20261122)
    state: dict | None = None
    resumed = 0
    # A slow workspace (8 requests/s) and frequent checkpoints, so kills land mid-delivery.
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:", rate_limit=8) as sandbox:
        # Change detection off: every resumed run re-delivers from its STATE, so each is long
        # enough to be killed (the ledger only shortens re-runs; its own tests are elsewhere).
        config = target_config(
            sandbox.url,
            tmp_path,
            routes,
            max_requests_per_second=8,
            checkpoint_interval_seconds=0.2,
            delivery_workers=2,
            change_detection=False,
        )
        for _attempt in range(4):
            lines = (tap(state) if state else big).stdout.splitlines()
            proc = _start(config, tmp_path, lines)
            # Killed at a random moment after its first checkpoint (the target reads fast and
            # may hold a whole small stream in its bounded buffers: the first checkpoint can
            # take a while), or after 10 s if there is none.
            first = _first_line(proc, timeout=10)
            time.sleep(rng.uniform(0.05, 1.5))
            proc.send_signal(signal.SIGKILL)  # a no-op if this run already finished
            stdout, _ = proc.communicate(timeout=30)
            emitted = [json.loads(x) for x in (first + stdout).decode().splitlines() if x.strip()]
            if emitted:  # Meltano stores the last STATE line it read; it must not run ahead
                _assert_delivered(sandbox, routes, _covered_records(lines, emitted[-1]))
                state, resumed = emitted[-1], resumed + 1
        assert resumed >= 2, (
            "kills should land after some checkpoints, so later runs resume from them"
        )
        final_lines = (tap(state) if state else big).stdout.splitlines()
        proc = _start(config, tmp_path, final_lines)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert snapshot(sandbox) == expected
        ids = [e["id"] for e in sandbox.events()]
        assert len(ids) == len(set(ids)) == len(expected["events"])


def test_sigterm_drains_emits_only_covered_state_and_exits_non_zero(big, tmp_path):
    routes = project_routes()
    lines = big.stdout.splitlines()
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:", rate_limit=8) as sandbox:
        config = target_config(
            sandbox.url,
            tmp_path,
            routes,
            max_requests_per_second=8,
            checkpoint_interval_seconds=0.2,
        )
        proc = _start(config, tmp_path, lines)
        time.sleep(2.0)
        assert proc.poll() is None, "the run ended before SIGTERM: make it longer"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
        run: Run = collect(proc.returncode, stdout.decode(), stderr.decode(), config)
        assert run.returncode == 143, run.stderr[-2000:]
        assert "Terminated" in run.stderr and "Traceback" not in run.stderr
        assert run.report["status"] == "failed"
        assert run.states, (
            "the STATE received before SIGTERM is emitted once what it covers is delivered"
        )
        _assert_delivered(sandbox, routes, _covered_records(lines, run.states[-1]))
