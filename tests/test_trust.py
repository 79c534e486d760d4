"""Trust under misuse: configuration fails closed, secrets never leave, rejects are on disk
before the STATE that covers them. Every case runs the real target process."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.harness import (
    API_KEY,
    TARGET,
    record,
    run_target,
    schema,
    start_target,
    state,
    target_config,
    writes,
)

P = "public-customers"
ROUTES = {P: {"kind": "person", "identifier": {"field": "id", "type": "id"}}}
SCHEMA = schema(P, {"id": {"type": "string"}, "name": {"type": "string"}, "at": {"type": "string"}})
EVENT_ROUTE = {
    "kind": "event",
    "identifier": {"field": "id"},
    "event_name": "seen",
    "event_id": ["id"],
    "timestamp": "at",
}


def people(count: int, start: int = 0) -> list[dict]:
    return [record(P, {"id": f"C{i}", "name": f"n{i}"}) for i in range(start, start + count)]


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize(
    "typo, suggestion",
    [
        ("dryrun", "dry_run"),
        ("reject_fil", "reject_file"),
        ("api-key", "api_key"),
        ("Region", "region"),
        ("max_request_per_second", "max_requests_per_second"),
    ],
)
def test_an_unknown_setting_stops_the_run_naming_the_closest_one(
    sandbox, tmp_path, typo, suggestion
):
    config = {**target_config(sandbox.url, tmp_path, ROUTES), typo: "sk_typo_value_1234"}
    run = run_target(config, [SCHEMA, *people(3), state({"b": 1})], tmp_path)
    assert run.returncode == 2
    line = one_error_line(run.stderr)
    assert f"`{typo}`" in line and f"did you mean `{suggestion}`?" in line
    assert "max_requests_per_second" not in line.replace(suggestion, "")  # not all the settings
    assert len(line) < 200
    assert sandbox.requests() == [] and run.states == []
    assert "sk_typo_value_1234" not in run.stderr  # a typo of a secret setting is masked too


def test_an_unknown_setting_with_no_close_name_points_to_the_list(sandbox, tmp_path):
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "zzzz": 1}
    run = run_target(config, [SCHEMA, *people(1)], tmp_path)
    assert run.returncode == 2
    line = one_error_line(run.stderr)
    assert line.endswith("unknown setting `zzzz` (`target-customerio --about` lists the settings)")


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_the_last_line_of_a_failed_run_names_its_cause(sandbox, tmp_path):
    """Meltano shows the target's last line: it says why, not only that it failed."""
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "api_key": "wrong-key-123"}
    run = run_target(config, [SCHEMA, *people(1)], tmp_path)
    assert run.returncode == 3
    assert "target-customerio failed (api_key refused): " in last_line(run.stderr)
    checks = {"public-checks": {"kind": "reconcile", "segment_id": "s", "expected_count": "n"}}
    config = target_config(sandbox.url, tmp_path, checks)
    config.update(app_api_url=sandbox.url, app_api_key="wrong-app-key")
    messages = [
        {"type": "SCHEMA", "stream": "public-checks", "schema": {"properties": {"s": {}, "n": {}}}},
        record("public-checks", {"s": 7, "n": 1}),
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 3, run.stderr
    assert "target-customerio failed (app_api_key refused): " in last_line(run.stderr)
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "max_reject_ratio": 0.1}
    rows = [record(P, {"id": ""}) for _ in range(150)]
    run = run_target(config, [SCHEMA, *rows], tmp_path)
    assert run.returncode == 6, run.stderr
    assert "target-customerio failed (max_reject_ratio): " in last_line(run.stderr)


def test_sdk_settings_are_accepted_and_the_ignored_ones_are_named(sandbox, tmp_path):
    config = {
        **target_config(sandbox.url, tmp_path, ROUTES),
        "add_record_metadata": False,
        "flattening_enabled": False,
        "load_method": "upsert",
        "batch_size_rows": 10,
    }
    run = run_target(config, [SCHEMA, *people(3), state({"b": 1})], tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(sandbox.people()) == 3
    assert "setting `load_method` does nothing" in run.stderr
    assert "setting `batch_size_rows` does nothing" in run.stderr


def run_with_config_file(path, tmp_path) -> subprocess.CompletedProcess:
    """The target on no input, configured by the file at `path` (whatever it is)."""
    return subprocess.run(
        [TARGET, "--config", str(path)],
        input=b"",
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read it (No such file or directory)"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object of settings, not list"),
        (b"\xff\xfe{}", "cannot read it (not UTF-8 text)"),
        ("dir", "cannot read it (Is a directory)"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    proc = run_with_config_file(path, tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr.decode())
    assert message in line and str(path) in line
    assert proc.stdout == b""


SECRET = "sk_live_0123456789abcdef"


@pytest.mark.parametrize(
    "change, error",
    [
        ({"api_key": 123456789012}, "setting `api_key`: must be a string"),
        ({"api_key": ["sk_live_0123456789abcdef"]}, "setting `api_key`: must be a string"),
        (
            {"api_key": "ключ-0123456789"},
            "setting `api_key` holds characters an HTTP header cannot carry",
        ),
        ({"track_api_url": f"htps://admin:{SECRET}@proxy.example.com"}, "is not an http(s) URL"),
        # does not parse as a URL, so the redaction cannot learn its password from it
        ({"track_api_url": f"http//admin:{SECRET}@proxy.example.com"}, "is not an http(s) URL"),
        ({"app_api_url": f"https:admin:{SECRET}@api.example.com"}, "is not an http(s) URL"),
        (
            {"track_api_url": f"https://proxy.example.com/?token={SECRET}", "region": "mars"},
            "setting `region`",
        ),
        ({"ledger_url": f"postgresql://etl:{SECRET}@127.0.0.1:1/ledger"}, "ledger"),
        ({"ledger_url": 42424242}, "setting `ledger_url`: must be a string"),
    ],
)
def test_a_config_error_never_echoes_a_secret(sandbox, tmp_path, change, error):
    config = {**target_config(sandbox.url, tmp_path, ROUTES), **change}
    run = run_target(config, [SCHEMA, *people(2)], tmp_path)
    assert run.returncode in (2, 4), run.stderr
    line = one_error_line(run.stderr)
    assert error in line
    for secret in (SECRET, "123456789012", "42424242", "ключ-0123456789", API_KEY):
        assert secret not in run.stderr


def test_the_api_key_never_reaches_logs_rejects_or_report_even_inside_a_record(sandbox, tmp_path):
    """A record that holds the api_key (pasted into a note) is rejected and written masked."""
    routes = {P: {**ROUTES[P], "contract": "builtin:customer"}}
    config = target_config(sandbox.url, tmp_path, routes)
    rows = [record(P, {"id": "C1", "orders_count": "many", "note": f"key is {API_KEY}"})]
    run = run_target(config, [SCHEMA, *rows, state({"b": 1})], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.rejects and API_KEY not in (tmp_path / "rejects.jsonl").read_text()
    assert API_KEY not in (tmp_path / "report.json").read_text() and API_KEY not in run.stderr


@pytest.mark.parametrize("setting", ["reject_file", "report_file", "dry_run_file"])
def test_an_output_file_that_cannot_be_written_is_a_config_error_before_anything_is_sent(
    sandbox, tmp_path, setting
):
    (tmp_path / "a_dir").mkdir()
    config = {**target_config(sandbox.url, tmp_path, ROUTES), setting: str(tmp_path / "a_dir")}
    if setting == "dry_run_file":
        config["dry_run"] = True
    run = run_target(config, [SCHEMA, *people(3), state({"b": 1})], tmp_path)
    assert run.returncode == 2
    line = one_error_line(run.stderr)
    assert f"setting `{setting}`: cannot write" in line and "Is a directory" in line
    assert sandbox.requests() == [] and run.states == []


def test_a_reject_file_that_fills_up_stops_the_run_before_the_next_state(sandbox, tmp_path):
    """/dev/full accepts the open and fails every write, as a full disk does."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "reject_file": "/dev/full"}
    rows = [*people(5), record(P, {"id": None}), state({"b": 1}), *people(5, 5), state({"b": 2})]
    run = run_target(config, [SCHEMA, *rows], tmp_path)
    assert run.returncode == 1
    line = one_error_line(run.stderr)
    assert "cannot write reject_file /dev/full" in line
    assert run.states == []  # the reject the first STATE covers is not on disk: no STATE


def test_rejects_are_on_disk_when_the_state_that_covers_them_is_emitted(sandbox, tmp_path):
    """Read the reject file the moment the first STATE arrives on stdout, while the target is
    still running (its stdin still open): the rejects before that STATE are all there."""
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "checkpoint_interval_seconds": 0.2}
    proc = start_target(config, tmp_path, stderr=subprocess.DEVNULL)
    lines = [
        SCHEMA,
        *people(3),
        *[record(P, {"id": "", "n": i}) for i in range(7)],
        state({"b": 1}),
    ]
    assert proc.stdin and proc.stdout

    def send(messages: list[dict]) -> None:
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages).encode())
        proc.stdin.flush()

    send(lines)
    time.sleep(1)
    send(people(1, 100))  # a record after the checkpoint interval: the STATE is due
    first_state = proc.stdout.readline()
    on_disk = (tmp_path / "rejects.jsonl").read_text().splitlines()
    proc.stdin.close()
    proc.wait(timeout=60)
    assert json.loads(first_state) == {"b": 1}
    assert len(on_disk) == 7 and all(
        json.loads(x)["reason"] == "missing_identifier" for x in on_disk
    )
    assert proc.returncode == 0


def test_max_reject_ratio_is_checked_before_the_last_state(sandbox, tmp_path):
    """The rejects come from Customer.io (207) only when the last batch is delivered: the ratio
    is checked after delivery, so the final STATE is not emitted."""
    # One delivery worker: all 21 operations in the one request the 207 answers.
    config = {
        **target_config(sandbox.url, tmp_path, ROUTES),
        "max_reject_ratio": 0.1,
        "delivery_workers": 1,
    }
    rows = [*people(20), record(P, {"id": "C_bad", "name": "x" * 5}), state({"b": 1})]
    sandbox.inject(
        status=207,
        body={
            "errors": [
                {"batch_index": i, "reason": "invalid", "field": "name", "message": "no"}
                for i in range(5)
            ]
        },
        path="/api/v2/batch",
    )
    run = run_target(config, [SCHEMA, *rows], tmp_path)
    assert run.returncode == 6, run.stderr
    assert "max_reject_ratio" in one_error_line(run.stderr)
    assert run.states == []


def _run_with_stdout(sandbox, tmp_path, stdout: int) -> subprocess.CompletedProcess:
    config = target_config(sandbox.url, tmp_path, ROUTES)
    (tmp_path / "config.json").write_text(json.dumps(config))
    data = "".join(json.dumps(m) + "\n" for m in [SCHEMA, *people(3), state({"b": 1})]).encode()
    return subprocess.run(
        [TARGET, "--config", str(tmp_path / "config.json")],
        input=data,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_a_closed_stdout_is_one_clear_line(sandbox, tmp_path):
    read, write = os.pipe()
    os.close(read)  # nobody reads STATE
    proc = _run_with_stdout(sandbox, tmp_path, write)
    os.close(write)
    assert proc.returncode == 1
    assert "stdout is closed" in one_error_line(proc.stderr.decode())


def test_stdout_on_a_full_device_is_one_line(sandbox, tmp_path):
    with open("/dev/full", "wb") as full:
        proc = _run_with_stdout(sandbox, tmp_path, full.fileno())
    assert proc.returncode == 1
    message = "stdout is closed or cannot be written (No space left on device)"
    assert message in one_error_line(proc.stderr.decode())


def test_meltano_reads_the_record_count_received(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, ROUTES)
    run = run_target(config, [SCHEMA, *people(1234), state({"b": 1})], tmp_path)
    assert run.returncode == 0, run.stderr
    counts = [
        json.loads(line.split("METRIC: ", 1)[1])
        for line in run.stderr.splitlines()
        if "METRIC: " in line
    ]
    total = sum(
        m["value"] for m in counts if m["metric"] == "record_count" and m["tags"]["stream"] == P
    )
    assert total == 1234


def test_about_lists_only_the_settings_that_apply():
    proc = subprocess.run(
        [TARGET, "--about", "--format", "json"], capture_output=True, timeout=60, check=False
    )
    about = json.loads(proc.stdout)
    settings = set(about["settings"]["properties"])
    assert {"api_key", "streams", "dry_run", "stream_maps", "add_record_metadata"} <= settings
    assert not settings & {"load_method", "batch_size_rows", "validate_records"}
    assert "validate-records" not in about["capabilities"]


def test_a_typo_in_an_environment_variable_stops_the_run(sandbox, tmp_path):
    env = {**_base_env(sandbox), "TARGET_CUSTOMERIO_DRYRUN": "true"}
    proc = _env_run(tmp_path, env)
    assert proc.returncode == 2
    assert (
        "TARGET_CUSTOMERIO_DRYRUN names no setting (did you mean TARGET_CUSTOMERIO_DRY_RUN?)"
        in one_error_line(proc.stderr.decode())
    )
    assert API_KEY not in proc.stderr.decode()


def test_a_secret_setting_from_the_environment_is_masked(sandbox, tmp_path):
    """The api_key arrives through the environment; Customer.io refuses it, and the error line
    (which names the URL) never shows it."""
    proc = _env_run(
        tmp_path, {**_base_env(sandbox), "TARGET_CUSTOMERIO_API_KEY": "sk_env_refused_key_777"}
    )
    assert proc.returncode == 3
    assert "sk_env_refused_key_777" not in proc.stderr.decode()


def test_every_output_is_masked(tmp_path):
    """Unit check of the one redaction: known values whatever their type, URL userinfo and
    secret-looking query values, however they are printed."""
    from target_customerio.redaction import Redactor

    r = Redactor()
    r.learn_config(
        {
            "api_key": 987654321,
            "ledger_url": "host=db user=etl password=pg_secret_1 dbname=x",
            "track_api_url": "https://proxy.example.com/?signature=sig_value_22&x=1",
        }
    )
    text = (
        "key 987654321, dsn host=db password=pg_secret_1, sig_value_22, "
        "ftp://u:unknown_pw@h, {'api_key': 'never_seen_before'}"
    )
    masked = r.redact(text)
    for secret in ("987654321", "pg_secret_1", "sig_value_22", "unknown_pw", "never_seen_before"):
        assert secret not in masked, masked


@pytest.mark.parametrize(
    "route, message",
    [
        (
            {"kind": "person", "identifer": {"field": "id"}},
            "unknown option `identifer` (did you mean `identifier`?)",
        ),
        ({"kind": "person", "identifier": {"feild": "id"}}, "needs {field"),
        (
            {"kind": "person", "identifier": {"field": "id", "typ": "id"}},
            "identifier: unknown key `typ` (did you mean `type`?)",
        ),
        (
            {"kind": "person", "identifier": {"field": "id"}, "attributes": {"exlude": ["name"]}},
            "attributes: unknown key `exlude` (did you mean `exclude`?)",
        ),
        (
            {"kind": "person", "identifier": {"field": "id"}, "timestamp": "at"},
            "timestamp: does not apply to a person route (it is an option of event routes)",
        ),
        ({"kind": "person", "identifier": {"field": 7}}, "identifier.field: the name of a column"),
        (
            {"kind": "person", "identifier": {"field": "id"}, "attributes": {"include": "name,id"}},
            None,
        ),
        (
            {"kind": "person", "identifier": {"field": "id"}, "attributes": ["name"]},
            "attributes: an object",
        ),
        ({**EVENT_ROUTE, "max_age": 5}, "max_age: must be text, not int"),
        ({**EVENT_ROUTE, "event_name": 5}, "event_name: the name of the event, as text"),
        ({**EVENT_ROUTE, "event_id": [5]}, "event_id[0]: the name of a column"),
        ({**EVENT_ROUTE, "source_timezone": ["UTC"]}, "source_timezone: must be text, not list"),
        ({**EVENT_ROUTE, "contract": {"type": "object"}}, "contract: must be text, not dict"),
    ],
)
def test_a_mistyped_route_option_stops_the_run_naming_the_closest_one(
    sandbox, tmp_path, route, message
):
    config = target_config(sandbox.url, tmp_path, {P: route})
    run = run_target(config, [SCHEMA, *people(3), state({"b": 1})], tmp_path)
    assert run.returncode == 2, run.stderr
    line = one_error_line(run.stderr)
    assert message is None or message in line, line
    assert writes(sandbox) == [] and run.states == []


# ---- found by an adversarial pass: each case stands for the mechanism that now holds ----------


@pytest.mark.parametrize(
    "line, message",
    [
        (
            {
                "type": "BATCH",
                "stream": P,
                "encoding": {"format": "jsonl"},
                "manifest": ["file:///etc/passwd"],
            },
            "BATCH messages are not supported",
        ),
        (
            {"type": "RECORD", "stream": P, "record": None},
            "a RECORD message needs `record` (an object)",
        ),
        (
            {"type": "RECORD", "stream": P, "record": [1]},
            "a RECORD message needs `record` (an object)",
        ),
        (
            {"type": "SCHEMA", "stream": "s2", "schema": {"properties": []}, "key_properties": []},
            "the SCHEMA's `properties` must be an object",
        ),
        ({"type": "ACTIVATE_VERSION", "stream": "nowhere", "version": 1}, "which has no SCHEMA"),
        ({"type": "STATE"}, "a STATE message needs `value`"),
    ],
)
def test_a_malformed_message_is_one_line_and_exit_5(sandbox, tmp_path, line, message):
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES),
        [SCHEMA, *people(2), line, state({"b": 1})],
        tmp_path,
    )
    assert run.returncode == 5, run.stderr
    assert message in one_error_line(run.stderr)
    assert run.states == []


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"report_file": "{tmp}/rejects.jsonl"},
            "settings `reject_file` and `report_file` name the same file",
        ),
        ({"reject_file": "/dev/stdout"}, "is standard output, which carries only STATE"),
        ({"ledger_path": "{tmp}/report.json"}, "name the same file"),
    ],
)
def test_output_files_must_be_distinct_and_not_stdout(sandbox, tmp_path, change, message):
    config = {
        **target_config(sandbox.url, tmp_path, ROUTES),
        **{k: v.format(tmp=tmp_path) for k, v in change.items()},
    }
    run = run_target(config, [SCHEMA, *people(2), state({"b": 1})], tmp_path)
    assert run.returncode == 2
    assert message in one_error_line(run.stderr)
    assert run.stdout == "" and sandbox.requests() == []


def test_a_server_echoing_the_authorization_header_is_masked(sandbox, tmp_path):
    import base64

    basic = base64.b64encode(f"test-site:{API_KEY}".encode()).decode()
    sandbox.inject(
        404,
        body={"meta": {"error": f"Authorization: Basic {basic} (we saw {basic})"}},
        path="/api/v2/batch",
    )
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES),
        [SCHEMA, *people(2), state({"b": 1})],
        tmp_path,
    )
    assert run.returncode == 4
    assert basic not in run.stderr and API_KEY not in run.stderr
    assert basic not in (tmp_path / "report.json").read_text()


def _env_run(
    tmp_path, env: dict[str, str], messages: list[dict] | None = None
) -> subprocess.CompletedProcess:
    data = "".join(json.dumps(m) + "\n" for m in (messages or [SCHEMA, *people(2)])).encode()
    return subprocess.run(
        [TARGET, "--config", "ENV"],
        input=data,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TARGET_CUSTOMERIO_")},
            **env,
        },
        check=False,
    )


def _base_env(sandbox) -> dict[str, str]:
    return {
        "TARGET_CUSTOMERIO_SITE_ID": "test-site",
        "TARGET_CUSTOMERIO_API_KEY": API_KEY,
        "TARGET_CUSTOMERIO_TRACK_API_URL": sandbox.url,
        "TARGET_CUSTOMERIO_STREAMS": json.dumps(ROUTES),
    }


def test_environment_settings_are_read_strictly_by_their_type(sandbox, tmp_path):
    ok = _env_run(
        tmp_path,
        {
            **_base_env(sandbox),
            "TARGET_CUSTOMERIO_REQUEST_TIMEOUT": "10",
            "TARGET_CUSTOMERIO_MAX_REJECT_RATIO": "0.5",
            "TARGET_CUSTOMERIO_FULL_RESEND": "yes",
        },
    )
    assert ok.returncode == 0, ok.stderr.decode()
    assert len(sandbox.people()) == 2
    maybe = _env_run(tmp_path, {**_base_env(sandbox), "TARGET_CUSTOMERIO_DRY_RUN": "maybe"})
    assert maybe.returncode == 2
    assert "TARGET_CUSTOMERIO_DRY_RUN: 'maybe' is not true or false" in one_error_line(
        maybe.stderr.decode()
    )


def test_a_typo_in_a_dotenv_file_stops_the_run(sandbox, tmp_path):
    (tmp_path / ".env").write_text("TARGET_CUSTOMERIO_DRY_RUNN=true\n")
    run = _env_run(tmp_path, _base_env(sandbox))
    assert run.returncode == 2
    assert "TARGET_CUSTOMERIO_DRY_RUNN names no setting" in one_error_line(run.stderr.decode())


def test_a_config_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    proc = run_with_config_file(fifo, tmp_path)
    assert proc.returncode == 2
    assert "not a regular file" in one_error_line(proc.stderr.decode())


def test_a_failing_stream_map_expression_is_a_config_error(sandbox, tmp_path):
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "stream_maps": {P: {"ratio": "1/0"}}}
    run = run_target(config, [SCHEMA, *people(2), state({"b": 1})], tmp_path)
    assert run.returncode == 2, run.stderr
    assert "stream_maps" in one_error_line(run.stderr) and run.states == []


def test_a_signal_during_a_held_start_up_check_stops_the_run_at_once(sandbox, tmp_path):
    sandbox.inject(200, times=10, mode="trickle_headers", delay=1, path="/api/v1/accounts")
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "request_timeout": 60}
    proc = start_target(config, tmp_path)
    assert proc.stdin
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in [SCHEMA, *people(2)]).encode())
    proc.stdin.flush()
    time.sleep(2)
    assert proc.poll() is None
    proc.terminate()
    out, err = proc.communicate(timeout=15)  # not the 60 s the held check could take
    assert proc.returncode == 143, err.decode()
    assert out == b"" and "Traceback" not in err.decode()


def dry_run_config(tmp_path, api_key: str, routes: dict) -> dict:
    """A dry run (no workspace) with every output file in tmp_path."""
    names = {
        "reject_file": "rejects.jsonl",
        "report_file": "report.json",
        "dry_run_file": "dry.jsonl",
        "ledger_path": "l.sqlite",
    }
    return {
        "dry_run": True,
        "api_key": api_key,
        "streams": routes,
        **{setting: str(tmp_path / name) for setting, name in names.items()},
    }


def test_a_secret_is_masked_as_json_escapes_it(tmp_path):
    key = 'sk_"quoted"\\and\\slashed'
    config = dry_run_config(tmp_path, key, ROUTES)
    rows = [record(P, {"id": None, "note": key}), record(P, {"id": "C1", "note": key})]
    run = run_target(config, [SCHEMA, *rows], tmp_path)
    assert run.returncode == 0, run.stderr
    escaped = json.dumps(key)[1:-1]
    for name in ("rejects.jsonl", "dry.jsonl"):
        text = (tmp_path / name).read_text()
        assert escaped not in text and key not in text and "****" in text, name


def test_records_a_stream_map_filters_out_are_counted_as_skipped(sandbox, tmp_path):
    config = {
        **target_config(sandbox.url, tmp_path, ROUTES),
        "stream_maps": {P: {"__filter__": "id != 'C1'"}},
    }
    run = run_target(config, [SCHEMA, *people(3), state({"b": 1})], tmp_path)
    assert run.returncode == 0, run.stderr
    tally = run.report["streams"][P]
    assert (tally["received"], tally["sent"], tally["skipped_by_reason"]) == (
        3,
        2,
        {"stream_maps": 1},
    )
    assert {p["id"] for p in sandbox.people()} == {"C0", "C2"}


def test_a_misspelled_variable_stops_a_run_configured_by_file_too(sandbox, tmp_path):
    """Under Meltano the settings come in a file, and Meltano ignores a variable it does not
    know: `TARGET_CUSTOMERIO_DRYRUN=true` would send for real."""
    config = target_config(sandbox.url, tmp_path, ROUTES)
    run = run_target(
        config, [SCHEMA, *people(2)], tmp_path, env={"TARGET_CUSTOMERIO_DRYRUN": "true"}
    )
    assert run.returncode == 2
    assert "TARGET_CUSTOMERIO_DRYRUN names no setting (did you mean" in one_error_line(run.stderr)
    assert sandbox.requests() == []


# ---- the second adversarial pass ---------------------------------------------------------------


class _Answering:
    """A server on 127.0.0.1 that answers every request with one fixed response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append((self.command, self.path))
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.seen: list[tuple[str, str]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize(
    "status, headers, body, message",
    [
        (
            302,
            {"Location": "http://127.0.0.2:1/collect"},
            b"",
            "a redirect to http://127.0.0.2:1/collect",
        ),
        (
            307,
            {"Location": "https://elsewhere.example.com/batch"},
            b"",
            "redirects are never followed",
        ),
        (200, {"Content-Type": "text/html"}, b"<html>ok</html>", "but not with JSON"),
    ],
)
def test_an_answer_that_is_not_the_track_api_moves_no_state(
    tmp_path, status, headers, body, message
):
    """A redirect (which requests would follow as a GET a 200 answers) or a 200 page from a
    proxy must not count as accepted: no STATE, no ledger entry, exit 4."""
    server = _Answering(status, headers, body)
    try:
        config = target_config(server.url, tmp_path, ROUTES)
        run = run_target(config, [SCHEMA, *people(3), state({"b": 1})], tmp_path)
    finally:
        server.close()
    assert run.returncode == 4, run.stderr
    assert message in one_error_line(run.stderr)
    assert run.states == []
    assert all(method in ("GET", "POST") for method, _ in server.seen) and len(server.seen) == 1


@pytest.mark.parametrize("key", ["sk'quoted\\back-99", "null", "1234"])
def test_a_secret_is_masked_in_any_form_and_the_files_stay_json(tmp_path, key):
    """As repr quotes it in a message, and as a JSON literal or number: masked, and the report,
    reject and dry-run files still parse."""
    stream = f"s-{key}"
    routes = {stream: {"kind": "person", "identifier": {"field": "id"}}}
    config = dry_run_config(tmp_path, key, routes)
    messages = [
        schema(stream, {"id": {"type": "string"}, "n": {"type": "integer"}, "note": {}}),
        record(stream, {"id": "C1", "n": 1234, "note": None}),
        record(stream, {"id": None, "n": 5, "note": f"a {key} b"}),
        record("other", {"id": "x"}),
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 5, run.stderr  # the record of a stream with no SCHEMA
    assert repr(stream) not in run.stderr and key not in run.stderr.replace("INFO", "")
    json.loads((tmp_path / "report.json").read_text())
    for name in ("rejects.jsonl", "dry.jsonl"):
        for line in (tmp_path / name).read_text().split("\n"):
            if line:
                json.loads(line)


def test_a_reject_file_left_mid_line_starts_the_next_reject_on_a_line_of_its_own(sandbox, tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    rejects.write_bytes(b'{"stream": "cut sh')
    (tmp_path / "config.json").write_text(json.dumps(target_config(sandbox.url, tmp_path, ROUTES)))
    data = "".join(json.dumps(m) + "\n" for m in [SCHEMA, record(P, {"id": None})]).encode()
    proc = subprocess.run(
        [TARGET, "--config", str(tmp_path / "config.json")],
        input=data,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = rejects.read_text().split("\n")
    assert (
        lines[0] == '{"stream": "cut sh' and json.loads(lines[1])["reason"] == "missing_identifier"
    )


def test_a_ref_chain_too_deep_to_follow_constrains_nothing(sandbox, tmp_path):
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(3000)}
    defs["d3000"] = {"type": "integer"}
    message = {
        "type": "SCHEMA",
        "stream": P,
        "key_properties": [],
        "schema": {
            "$defs": defs,
            "properties": {"id": {"type": "string"}, "x": {"$ref": "#/$defs/d0"}},
        },
    }
    config = {**target_config(sandbox.url, tmp_path, ROUTES), "mapping_workers": 0}
    run = run_target(config, [message, record(P, {"id": "C1", "x": "text"})], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sandbox.people()[0]["attributes"]["x"] == "text"
