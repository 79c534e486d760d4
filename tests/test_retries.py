"""One retry policy for every request: the start-up check included, a deadline for each try, a
signal that cuts backoff short, and a workspace that refuses everything failing fast.

The run-level tests drive the real target process against the local Track API; the policy's
own tests call TrackClient in this process against the same server.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from email.utils import formatdate

import pytest
import requests
from tenacity import RetryCallState, Retrying

from target_customerio.api_client import Answer, backoff, retry_after
from target_customerio.errors import CredentialsError, DeliveryError
from target_customerio.track_api import TrackClient
from tests.harness import (
    API_KEY,
    SITE_ID,
    TARGET,
    collect,
    record,
    run_target,
    schema,
    state,
    target_config,
)

BATCH = "/api/v2/batch"
REGION = "/api/v1/accounts/region"
PEOPLE = "public-customers"
ROUTES = {PEOPLE: {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}}}
SCHEMA = schema(
    PEOPLE, {"customer_id": {"type": "string"}, "plan": {"type": "string"}}, ["customer_id"]
)


def person(n: int) -> dict:
    return record(PEOPLE, {"customer_id": f"C{n:04}", "plan": "gold"})


def stream(count: int, value: dict | None = None) -> list[dict]:
    return [SCHEMA, *(person(n) for n in range(count)), state(value or {"s": 1})]


def requests_to(sandbox, path: str) -> list[dict]:
    return [r for r in sandbox.requests() if r["path"] == path]


# ---- the run ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"status": 503}, {"mode": "drop"}], ids=["503", "dropped"])
def test_the_start_up_check_is_retried_like_any_request(sandbox, tmp_path, fault):
    sandbox.inject(path=REGION, **fault)
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), stream(3), tmp_path)
    assert run.returncode == 0, run.stderr
    assert "credential check failed" in run.stderr and "retry 1/7" in run.stderr
    assert len(requests_to(sandbox, REGION)) == 2 and len(sandbox.people()) == 3
    assert run.states == [{"s": 1}]


def test_a_start_up_check_that_keeps_failing_ends_the_run_after_the_retries(sandbox, tmp_path):
    sandbox.inject(503, times=100, path=REGION)
    config = target_config(sandbox.url, tmp_path, ROUTES, max_retries=2)
    run = run_target(config, stream(3), tmp_path)
    assert run.returncode == 4 and run.stdout == ""
    assert "HTTP 503 to the credential check" in run.stderr and "after 3 tries" in run.stderr
    assert len(requests_to(sandbox, REGION)) == 3 and sandbox.people() == []


@pytest.mark.parametrize("mode", ["trickle", "trickle_headers"])
def test_a_trickling_server_cannot_hold_the_run(sandbox, tmp_path, mode):
    """A byte every half second, of the body (headers at once) or of the whole answer: each
    try ends at request_timeout."""
    sandbox.inject(200, times=1000, mode=mode, delay=0.5, path=BATCH)
    config = target_config(
        sandbox.url, tmp_path, ROUTES, request_timeout=1, max_retries=1, delivery_workers=1
    )
    run = run_target(config, stream(3), tmp_path, timeout=60)
    assert run.returncode == 4, run.stderr
    assert "did not accept a batch after 2 tries (last: ReadTimeout)" in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert len(requests_to(sandbox, BATCH)) == 2


def _start(config: dict, tmp_path) -> subprocess.Popen:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return subprocess.Popen(
        [TARGET, "--config", str(tmp_path / "config.json")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        text=True,
    )


def _send(proc: subprocess.Popen, messages: list[dict]) -> None:
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
    proc.stdin.flush()


def _until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_in_a_long_backoff_ends_the_run_at_once_keeping_the_state_written(
    sandbox, tmp_path
):
    config = target_config(
        sandbox.url, tmp_path, ROUTES, checkpoint_interval_seconds=0.2, delivery_workers=1
    )
    proc = _start(config, tmp_path)
    _send(proc, [SCHEMA, *(person(n) for n in range(5)), state({"s": 1})])
    _until(lambda: sandbox.requests())  # the target is up and read the SCHEMA
    time.sleep(0.5)
    _send(proc, [person(5)])  # the next record triggers the checkpoint: STATE 1, all delivered
    assert json.loads(proc.stdout.readline()) == {"s": 1}
    assert len(sandbox.people()) >= 5
    sandbox.inject(429, times=1000, retry_after=120, path=BATCH)  # "come back in two minutes"
    _send(proc, [person(n) for n in range(6, 20)] + [state({"s": 2})])
    proc.stdin.close()
    _until(lambda: any(r["status"] == 429 for r in requests_to(sandbox, BATCH)))
    time.sleep(0.3)  # in the backoff now
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)  # stdin is closed already: no communicate(); stderr is a few lines
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    took = time.monotonic() - signalled
    run = collect(proc.returncode, stdout, stderr, config)
    assert run.returncode == 143, run.stderr[-2000:]
    assert took < 15, f"{took:.1f}s after SIGTERM"  # not the 120 s Retry-After
    assert "Terminated" in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""  # no STATE 2: the records before it were never accepted
    assert run.report["status"] == "failed"


def test_a_workspace_that_refuses_every_request_fails_fast(sandbox, tmp_path):
    """A 400 to everything: halving would walk all 3,000 records one by one, two requests each;
    it stops after 50 operations refused alone in a row."""
    refusal = {"meta": {"error": "workspace is suspended"}}
    sandbox.inject(400, times=100_000, path=BATCH, body=refusal)
    config = target_config(sandbox.url, tmp_path, ROUTES, delivery_workers=1)
    run = run_target(config, stream(3000), tmp_path, timeout=120)
    assert run.returncode == 4, run.stderr
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert (
        "refused 50 operations in a row, each alone (HTTP 400: workspace is suspended)" in errors[0]
    )
    assert len(requests_to(sandbox, BATCH)) < 150
    assert run.stdout == "" and sandbox.people() == []


def test_one_bad_operation_among_many_is_still_isolated_alone(sandbox, tmp_path):
    """A request of 300 refused whole, then the halves down to the one op: the other 299 land
    and the run succeeds."""
    sandbox.inject(400, times=9, path=BATCH, body={"meta": {"error": "malformed operation"}})
    config = target_config(sandbox.url, tmp_path, ROUTES, delivery_workers=1)
    run = run_target(config, stream(300), tmp_path)
    assert run.returncode == 0, run.stderr
    assert [r["record"]["customer_id"] for r in run.rejects] == ["C0000"]
    assert len(sandbox.people()) == 299 and run.states == [{"s": 1}]


def test_a_cluster_of_bad_rows_is_rejected_row_by_row_not_failed(sandbox, tmp_path):
    """The first 60 requests refused whole: halving reaches some 25 rows alone in a row (bad
    rows side by side, from one upstream defect). They are rejected, the rest delivered."""
    sandbox.inject(400, times=60, path=BATCH, body={"meta": {"error": "malformed operation"}})
    config = target_config(sandbox.url, tmp_path, ROUTES, delivery_workers=1)
    run = run_target(config, stream(300), tmp_path)
    assert run.returncode == 0, run.stderr
    assert 10 < len(run.rejects) < 50
    assert len(sandbox.people()) == 300 - len(run.rejects)
    totals = run.report["totals"]
    assert (totals["sent"], totals["rejected"]) == (300 - len(run.rejects), len(run.rejects))


# ---- the policy ------------------------------------------------------------------------------


def _state(attempt: int, outcome: Answer | Exception) -> RetryCallState:
    """The retry state after `attempt` tries, the last ending in `outcome`."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    if isinstance(outcome, Exception):
        state.set_exception((type(outcome), outcome, None))
    else:
        state.set_result(outcome)
    return state


def test_retry_after_is_honoured_and_capped():
    assert backoff(_state(1, Answer(429, {"Retry-After": "0.7"}, b""))) == 0.7
    assert backoff(_state(5, Answer(503, {"Retry-After": "2"}, b""))) == 2.0  # not the backoff's
    assert backoff(_state(1, Answer(429, {"Retry-After": "100000"}, b""))) == 300.0


@pytest.mark.parametrize("outcome", [Answer(429, {}, b""), requests.ConnectionError("reset")])
def test_without_retry_after_the_wait_is_full_jitter_exponential(outcome):
    for attempt, cap in ((1, 0.5), (2, 1.0), (3, 2.0), (8, 30.0), (20, 30.0)):
        waits = [backoff(_state(attempt, outcome)) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits) and max(waits) > cap / 2  # spread over [0, cap]


@pytest.fixture
def client(sandbox):
    return TrackClient(
        sandbox.url,
        SITE_ID,
        API_KEY,
        per_second=100,
        timeout=1,
        max_retries=1,
        logger=logging.getLogger("test"),
    )


def test_credentials_refused_and_other_4xx_are_not_retried(sandbox, client):
    sandbox.inject(401, path=BATCH)
    with pytest.raises(CredentialsError):
        client.post_batch(b'{"batch":[]}')
    sandbox.inject(404, path=BATCH)
    with pytest.raises(DeliveryError, match="HTTP 404"):
        client.post_batch(b'{"batch":[]}')
    sandbox.inject(403, path=REGION)
    with pytest.raises(CredentialsError):
        client.check_credentials("us")
    assert len(sandbox.requests()) == 3  # one try each


def test_a_retried_request_reports_its_tries(sandbox, client):
    sandbox.inject(429, retry_after=0.2, path=BATCH)
    answer, tries = client.post_batch(b'{"batch":[]}')
    assert answer.status == 200 and tries == 2


def test_a_try_is_bounded_as_a_whole_by_the_timeout(sandbox, client):
    sandbox.inject(200, times=2, mode="trickle", delay=0.2, path=BATCH)  # ~25 bytes: 5 s each
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"after 2 tries \(last: ReadTimeout\)"):
        client.post_batch(b'{"batch":[]}')
    assert time.monotonic() - started < 2 * 1 + 0.5 + 2  # two 1 s tries, not two 5 s answers


@pytest.mark.parametrize(
    "header, seconds",
    [
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-2", None),
        ("nan", None),
        ("0", None),
        ("99999", 300.0),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_values(header, seconds):
    assert retry_after({"Retry-After": header} if header else {}) == seconds


def test_retry_after_as_an_http_date():
    assert 8 <= retry_after({"Retry-After": formatdate(time.time() + 10, usegmt=True)}) <= 10


def test_a_run_that_gives_up_reports_the_tries_it_made(sandbox, tmp_path):
    sandbox.inject(503, times=10, path=BATCH)
    config = target_config(sandbox.url, tmp_path, ROUTES, max_retries=2, delivery_workers=1)
    run = run_target(config, stream(3), tmp_path, timeout=60)
    assert run.returncode == 4, run.stderr
    assert run.report["totals"]["requests"] == 3 and run.report["totals"]["retried_requests"] == 2
