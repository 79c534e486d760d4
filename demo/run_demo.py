"""The `make demo` orchestration: embedded PostgreSQL + sandbox workspace + a real `meltano run`.

    python -m demo.run_demo run      # night 1: start services, load the sample data, sync all
    python -m demo.run_demo again    # night 2: change some rows, sync again (only the changes)
    python -m demo.run_demo again --broken   # a later night whose sync loses last_order_at
                                             # (also NIGHT=3 in the environment: `make
                                             # demo-again NIGHT=3`, `make demo NIGHT=3`)
    python -m demo.run_demo again --lost-writes   # a night whose writes for two customers
                                             # Customer.io accepts and never applies: the
                                             # verification finds them, exit 9 (NIGHT=4)
    python -m demo.run_demo up       # only start the services (idempotent)
    python -m demo.run_demo status
    python -m demo.run_demo stop     # stop the sandbox and PostgreSQL

Everything lives under `.demo/` (PostgreSQL data, the sandbox's SQLite file, its pid and log)
and `output/` (the run report, the reject file, Meltano's log). Ports and credentials are the
ones the `demo` environment of meltano.yml uses: PostgreSQL on 127.0.0.1:54329
(postgres/postgres, database shop), the sandbox on http://127.0.0.1:8089
(site id `sandbox-site`, key `sandbox-key`, App API key `sandbox-app-key`). Meltano is
`.venv-meltano/bin/meltano` (or $MELTANO).

After each sync, the checks job `reconcile-segments` (tap-postgres--segment-checks: the view
`segment_checks`) compares the sandbox's segments (demo/segments.json: a canary and a guardrail)
with the counts SQL expects; its exit code (7 when Customer.io disagrees) is the demo's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / ".demo"
OUTPUT = ROOT / "output"
PG_DATA = DEMO_DIR / "pgdata"
PG_PORT = 54329
SANDBOX_PORT = 8089
SANDBOX_URL = f"http://127.0.0.1:{SANDBOX_PORT}"
SANDBOX_DB = DEMO_DIR / "sandbox.sqlite"
SANDBOX_PID = DEMO_DIR / "sandbox.pid"
SANDBOX_LOG = DEMO_DIR / "sandbox.log"
SITE_ID, API_KEY = "sandbox-site", "sandbox-key"  # meltano.yml, environment `demo`
APP_API_KEY = "sandbox-app-key"  # meltano.yml, environment `demo`: TARGET_CUSTOMERIO_APP_API_KEY
SEGMENTS_FILE = ROOT / "demo" / "segments.json"  # the canary and guardrail segments
CAMPAIGNS_FILE = ROOT / "demo" / "campaigns.json"  # the live campaigns a sync can start
REPORT = OUTPUT / "report.json"
REJECTS = OUTPUT / "rejects.jsonl"
MELTANO_LOG = OUTPUT / "meltano-demo.log"
NIGHT_FILE = DEMO_DIR / "night"  # which night the last sync was (1 after `run`)
ENVIRONMENT = "demo"
STATE_ID = f"{ENVIRONMENT}:tap-postgres-to-target-customerio"  # what `meltano run` names it
# The checks: meltano.yml's job reconcile-segments, with the files its nightly schedule writes.
CHECKS_JOB = "reconcile-segments"
CHECKS_STATE_ID = f"{ENVIRONMENT}:tap-postgres--segment-checks-to-target-customerio"
CHECKS_REPORT = OUTPUT / "report-reconcile.json"
CHECKS_REJECTS = OUTPUT / "rejects-reconcile.jsonl"
CHECKS_LOG = OUTPUT / "meltano-reconcile.log"
EXIT_DRIFT = 7  # target-customerio's exit code when Customer.io disagrees with the database
BROKEN_NIGHT = 3  # NIGHT=3 is the night whose sync stops sending last_order_at
LOST_WRITES_NIGHT = 4  # NIGHT=4: the sandbox accepts two customers' writes and drops them
LOST_WRITES = 2
EXIT_VERIFY = 9  # target-customerio's exit code when the read-back finds a discrepancy
CHANGES_SPAN_S = 61  # mutate() stamps its changes within the minute before its `now`
NEW_REPEAT_BUYERS = 3  # one-time buyers who place their second order on the broken night
DEMOTED_VIPS = 2  # VIPs whose refund takes them out of vip_customers on the second night

# Lines of Meltano's log worth showing live (the full log goes to output/meltano-demo.log).
_SHOW = (
    "with bookmark value",
    "Incremental state has been updated",
    "target-customerio ok",
    "target-customerio failed",
    "Run completed",
    "No state was found",
    "reconcile:",
    "verification:",
)


def say(message: str = "") -> None:
    print(message, flush=True)


# ---- services ----------------------------------------------------------------------------------


def postgres():
    from demo.postgres import EmbeddedPostgres  # imported late: `stop` works without psycopg2

    return EmbeddedPostgres(PG_DATA, PG_PORT)


def port_taken(port: int) -> bool:
    """Something listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _taken(port: int, what: str) -> SystemExit:
    return SystemExit(
        f"port {port} ({what}) is taken by another process, most likely a demo "
        "still running from another checkout: run `make demo-stop` there (or stop "
        f"whatever listens on 127.0.0.1:{port}), then `make demo` again"
    )


def start_postgres():
    server = postgres()
    was_running = server.is_running()
    if not was_running and port_taken(PG_PORT):
        raise _taken(PG_PORT, "the demo's PostgreSQL")
    server.start()
    say(
        f"PostgreSQL  {'already running' if was_running else 'started'} on 127.0.0.1:{server.port}"
        f"  (data {PG_DATA.relative_to(ROOT)})"
    )
    return server


def sandbox_answers() -> dict | None:
    """The sandbox's counters if something on the port answers like a sandbox, else None."""
    try:
        with urllib.request.urlopen(f"{SANDBOX_URL}/_sandbox/counters", timeout=2) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sandbox_pid() -> int | None:
    try:
        pid = int(SANDBOX_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def start_sandbox() -> None:
    owner = _sandbox_pid()
    if owner is not None and sandbox_answers() is not None:
        say(f"Sandbox     already running at {SANDBOX_URL}  (pid {owner})")
        return
    if port_taken(SANDBOX_PORT):  # not this checkout's sandbox: the demo would empty it
        raise _taken(SANDBOX_PORT, "the demo's sandbox workspace")
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    script = Path(sys.executable).with_name("target-customerio-sandbox")
    cmd = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from target_customerio.sandbox import main; main()"]
    )
    cmd += [
        "--port",
        str(SANDBOX_PORT),
        "--db",
        str(SANDBOX_DB),
        "--site-id",
        SITE_ID,
        "--api-key",
        API_KEY,
        "--app-api-key",
        APP_API_KEY,
        "--segments",
        str(SEGMENTS_FILE),
        "--report-file",  # the QA page shows the sync's last verification
        str(REPORT.relative_to(ROOT)),
        "--campaigns",
        str(CAMPAIGNS_FILE),
    ]
    with open(SANDBOX_LOG, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT, start_new_session=True
        )
    SANDBOX_PID.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"the sandbox exited at once ({proc.returncode}); see {SANDBOX_LOG}:\n"
                + _tail(SANDBOX_LOG, 10)
            )
        if sandbox_answers() is not None:
            say(
                f"Sandbox     started at {SANDBOX_URL}  (pid {proc.pid}, db "
                f"{SANDBOX_DB.relative_to(ROOT)}, log {SANDBOX_LOG.relative_to(ROOT)})"
            )
            return
        time.sleep(0.2)
    raise SystemExit(f"the sandbox did not answer on {SANDBOX_URL} within 15 s; see {SANDBOX_LOG}")


def stop_sandbox() -> None:
    pid = _sandbox_pid()
    if pid is None:
        SANDBOX_PID.unlink(missing_ok=True)
        if sandbox_answers() is not None:
            say(
                f"Sandbox     a sandbox answers on {SANDBOX_URL} but was not started by "
                "`make demo`; left alone"
            )
        else:
            say("Sandbox     not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    SANDBOX_PID.unlink(missing_ok=True)
    say(f"Sandbox     stopped (pid {pid})")


def reset_sandbox() -> None:
    _send("POST", "/_sandbox/reset", {})


def _send(method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{SANDBOX_URL}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def define_segments() -> list[dict]:
    """The segments of demo/segments.json, defined in the sandbox (the --segments file does it at
    start; this redefines them in a sandbox that was already running, if they differ)."""
    wanted = json.loads(SEGMENTS_FILE.read_text())
    have = {s["id"]: s for s in _get_json("/_sandbox/segments") or []}
    for segment in wanted:
        current = have.get(segment["id"])
        if current and all(current.get(k) == v for k, v in segment.items()):
            continue
        if current:
            _send("DELETE", f"/_sandbox/segments/{segment['id']}")
        _send("POST", "/_sandbox/segments", segment)
    return wanted


def define_campaigns() -> list[dict]:
    """The campaigns of demo/campaigns.json, defined in the sandbox (the --campaigns file does it
    at start; this redefines them in a sandbox that was already running, if they differ)."""
    wanted = json.loads(CAMPAIGNS_FILE.read_text())
    have = {c["id"]: c for c in _get_json("/_sandbox/campaigns") or []}
    for campaign in wanted:
        current = have.get(campaign["id"])
        if current and all(current.get(k) == v for k, v in campaign.items()):
            continue
        if current:
            _send("DELETE", f"/_sandbox/campaigns/{campaign['id']}")
        _send("POST", "/_sandbox/campaigns", campaign)
    return wanted


# ---- Meltano -----------------------------------------------------------------------------------


def meltano_bin() -> str:
    explicit = os.environ.get("MELTANO")
    if explicit:
        return explicit
    local = ROOT / ".venv-meltano" / "bin" / "meltano"
    if local.exists():
        return str(local)
    found = shutil.which("meltano")
    if found is None:
        raise SystemExit(
            "Meltano is not installed: run `make meltano-install` (creates .venv-meltano)"
        )
    return found


def meltano(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    cmd = [meltano_bin(), f"--environment={ENVIRONMENT}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=capture, text=True, check=False)


def bookmarks() -> dict[str, Any]:
    proc = meltano("state", "get", STATE_ID)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    try:
        state = json.loads(proc.stdout)
    except ValueError:
        return {}
    marks = state.get("singer_state", state).get("bookmarks", {})
    return {stream: mark.get("replication_key_value") for stream, mark in marks.items()}


def meltano_run(lost_writes: bool = False) -> float:
    """`meltano --environment=demo run tap-postgres target-customerio`, log to output/. On the
    lost-writes night the target may fail with its verification's discrepancies (exit 9: the
    run report says so; `meltano run` itself exits 1 whichever code a plugin exited with)."""
    OUTPUT.mkdir(exist_ok=True)
    REPORT.unlink(missing_ok=True)
    REJECTS.unlink(missing_ok=True)
    elapsed, code, _ = _meltano_streamed(["run", "tap-postgres", "target-customerio"], MELTANO_LOG)
    if code != 0 and not (lost_writes and _failed_verification()):
        say(_tail(MELTANO_LOG, 25))
        raise SystemExit(f"meltano run failed (exit {code}); full log: {MELTANO_LOG}")
    return elapsed


def _failed_verification() -> bool:
    """The sync's report says it failed on its verification's discrepancies (exit 9)."""
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    found = report.get("verification") or {}
    return bool(found.get("discrepancies")) and "verification:" in str(report.get("error"))


def _meltano_streamed(
    args: list[str], log_path: Path, env: dict[str, str] | None = None, json_log: bool = False
) -> tuple[float, int, dict[str, int]]:
    """Run `meltano --environment=demo ARGS`, the whole log to `log_path`, the lines worth
    seeing (_SHOW) on the terminal; (seconds, exit code, the plugins' exit codes). With
    `json_log`, Meltano logs JSON (written to the file as text), which is where it says each
    plugin's exit code (`exit_codes`): `meltano run` itself exits 1 whichever code a plugin
    exited with."""
    cmd = [
        meltano_bin(),
        f"--environment={ENVIRONMENT}",
        *(["--log-format=json"] if json_log else []),
        *args,
    ]
    say(
        f"\n$ meltano --environment={ENVIRONMENT} {' '.join(args)}"
        f"   (full log: {log_path.relative_to(ROOT)})"
    )
    started = time.monotonic()
    exit_codes: dict[str, int] = {}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if json_log:
                line, codes = _from_json_log(line)
                exit_codes.update(codes)
            log.write(line)
            if any(marker in line for marker in _SHOW):
                say("  " + _strip_log_prefix(line))
        code = proc.wait()
    return time.monotonic() - started, code, exit_codes


def _from_json_log(line: str) -> tuple[str, dict[str, int]]:
    """One line of `meltano --log-format=json` as the usual text line, and any exit codes."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line, {}
    if not isinstance(entry, dict) or "event" not in entry:
        return line, {}
    codes = entry.get("exit_codes") if isinstance(entry.get("exit_codes"), dict) else {}
    extra = f" exit_codes={codes}" if codes else ""
    name = entry.get("name") or "meltano"
    text = (
        f"{entry.get('timestamp', '')} [{entry.get('level', ''):9}] {name:12} "
        f"{entry['event']}{extra}\n"
    )
    return text, {str(k): v for k, v in codes.items() if isinstance(v, int)}


# ---- the segment checks ------------------------------------------------------------------------


def run_checks(night: int) -> int:
    """`meltano run reconcile-segments` (the checks view through tap-postgres--segment-checks
    into the target's reconcile route), one line per check, each expected count posted to the
    sandbox's QA page; returns the job's exit code (0, or 7 when a check failed)."""
    CHECKS_REPORT.unlink(missing_ok=True)
    CHECKS_REJECTS.unlink(missing_ok=True)
    names = {s["id"]: s["name"] for s in define_segments()}
    # The files the schedule reconcile-segments-nightly writes (meltano.yml), not the sync's.
    env = {
        "TARGET_CUSTOMERIO_REPORT_FILE": str(CHECKS_REPORT.relative_to(ROOT)),
        "TARGET_CUSTOMERIO_REJECT_FILE": str(CHECKS_REJECTS.relative_to(ROOT)),
    }
    elapsed, code, exit_codes = _meltano_streamed(
        ["run", CHECKS_JOB], CHECKS_LOG, env, json_log=True
    )
    target_code = exit_codes.get("loaders", code)
    report = json.loads(CHECKS_REPORT.read_text()) if CHECKS_REPORT.exists() else {}
    checks = report.get("reconciliation")
    if not checks:
        say(_tail(CHECKS_LOG, 25))
        raise SystemExit(
            f"the checks job {CHECKS_JOB} ran no check (exit {code}); full log: {CHECKS_LOG}"
        )
    say(
        f"\nSegment checks (night {night}, {elapsed:.1f} s, from "
        f"{CHECKS_REPORT.relative_to(ROOT)}):"
    )
    header = f"  {'segment':>7}  {'name':54} {'expected':>8} {'actual':>6}  {'tolerance':9}  result"
    say(header)
    say("  " + "-" * (len(header) - 2))
    for check in checks:
        name = check.get("name") or names.get(check["segment_id"], "?")
        actual = "-" if check["actual"] is None else str(check["actual"])
        if check["ok"]:
            result = "ok"
        elif check["difference"] is not None:
            result = f"FAILED ({check['difference']:+d}, {check['reason']})"
        else:
            result = f"FAILED ({check['reason']})"
        say(
            f"  {check['segment_id']:>7}  {name:54} {check['expected']:>8} {actual:>6}"
            f"  {check['tolerance']:9}  {result}"
        )
        try:
            _send(
                "POST",
                f"/_sandbox/segments/{check['segment_id']}/reconcile",
                {"expected": check["expected"]},
            )
        except (OSError, ValueError):  # a segment the sandbox does not know: shown as failed
            pass
    if code == 0:
        say(f"Meltano's job {CHECKS_JOB} exited 0: Customer.io agrees with the database.")
    elif target_code == EXIT_DRIFT:
        say(
            f"Meltano's job {CHECKS_JOB} failed: target-customerio exited {EXIT_DRIFT}, "
            "Customer.io disagrees with the database (Meltano logs exit_codes={'loaders': 7}; "
            "`meltano run` itself exits 1, as for any failed plugin, and so does the scheduled "
            "reconcile-segments-nightly)."
        )
    else:
        say(
            f"Meltano's job {CHECKS_JOB} failed: target-customerio exited {target_code}; "
            f"see {CHECKS_LOG.relative_to(ROOT)}."
        )
    say(f"The QA page ({SANDBOX_URL}/) lists each segment's live count beside the expected one.")
    return target_code or code


def _strip_log_prefix(line: str) -> str:
    """'2026-…Z [info     ] tap-postgres Starting …' -> 'tap-postgres Starting …'"""
    line = line.rstrip()
    if "] " in line[:60]:
        line = line.split("] ", 1)[1]
    return line.strip()


# ---- the summary -------------------------------------------------------------------------------


def say_identity(streams: dict[str, Any]) -> None:
    """The identity map's counts (docs/identity.md): events for people this target never
    identified, people refused for an email another holds, keyed identifiers that changed."""
    unknown = {name: s.get("unknown_people", 0) for name, s in streams.items()}
    where = ", ".join(f"{name} {count}" for name, count in unknown.items() if count)
    say(
        f"  unknown_people (events for people this target never identified): "
        f"{sum(unknown.values())}" + (f" ({where})" if where else "")
    )
    conflicts = sum(s.get("identity_conflicts", 0) for s in streams.values())
    changes = sum(s.get("identifier_changes", 0) for s in streams.values())
    say(f"  identity conflicts: {conflicts}, identifier changes: {changes}")


def print_summary(elapsed: float, night: int) -> None:
    if not REPORT.exists():
        raise SystemExit(f"no run report at {REPORT}")
    report = json.loads(REPORT.read_text())
    say(f"\nRun summary (night {night}, {elapsed:.1f} s, from {REPORT.relative_to(ROOT)}):")
    header = f"  {'stream':34} {'received':>8} {'sent':>6} {'rejected':>8} {'skipped':>8}  why"
    say(header)
    say("  " + "-" * (len(header) - 2))
    for name, s in report["streams"].items():
        why = {
            **{f"rejected {k}": v for k, v in s["rejected_by_reason"].items()},
            **s["skipped_by_reason"],
        }
        why_text = ", ".join(f"{k} {v}" for k, v in why.items())
        say(
            f"  {name:34} {s['received']:>8} {s['sent']:>6} {s['rejected']:>8} {s['skipped']:>8}"
            f"  {why_text}"
        )
    t = report["totals"]
    say(
        f"  {'total':34} {t['received']:>8} {t['sent']:>6} {t['rejected']:>8} {t['skipped']:>8}"
        f"  {t['requests']} request(s), {t['retried_requests']} retried"
    )
    if report.get("near_duplicate_event_names"):
        say(f"  near-duplicate event names: {report['near_duplicate_event_names']}")
    say_identity(report["streams"])
    if REJECTS.exists():
        reasons: dict[str, int] = {}
        for line in REJECTS.read_text().splitlines():
            entry = json.loads(line)
            key = f"{entry['stream']}: {entry['reason']} ({entry.get('field')})"
            reasons[key] = reasons.get(key, 0) + 1
        say(f"\nRejected records are in {REJECTS.relative_to(ROOT)}:")
        for key, count in reasons.items():
            say(f"  {count:>4} x {key}")
    counters = sandbox_answers() or {}
    people = _get_json("/_sandbox/people") or []
    events = _get_json("/_sandbox/events") or []
    say(
        f"\nSandbox workspace now holds {len(people)} people and {len(events)} events; "
        f"{counters.get('duplicate_events_dropped', 0)} re-sent event(s) were dropped by id "
        "(deterministic ULIDs), as Customer.io does."
    )
    print_verification(report)
    say(f"Open {SANDBOX_URL}/ to inspect people, attribute types and each person's activity.")


def print_verification(report: dict[str, Any]) -> None:
    """The report's `verification`: the sample read back from the workspace's App API."""
    found = report.get("verification")
    if not found:
        return
    problems = found["discrepancies"]
    say(
        f"Verification: {found['checked']} of {found['sampled']} sampled people read back from "
        f"the App API, {found['ok']} ok, {len(problems)} discrepancies "
        f"({found['rounds']} read(s); covered: "
        + "; ".join(f"{s} {'/'.join(o)}" for s, o in found.get("covered", {}).items())
        + ")"
    )
    for item in problems[:10]:
        sent, found = json.dumps(item["sent"]), json.dumps(item["found"])
        say(f"  {item['identifier']:>8} {item['check']:15} sent {sent}, holds {found}"[:118])
    if len(problems) > 10:
        say(f"  ... and {len(problems) - 10} more in the report's verification")


def vip_state() -> tuple[dict[str, Any], set[str]]:
    """What the sandbox holds of the VIP mirror routes: {person id: vip_tier} of the people with
    a `vip` attribute, and the ids in the manual segment "VIP (from SQL)"."""
    from demo.sample_data import VIP_SEGMENT_ID

    holders = {
        p["id"]: p["attributes"].get("vip_tier")
        for p in _get_json("/_sandbox/people") or []
        if p["attributes"].get("vip") is True
    }
    segment = _get_json(f"/_sandbox/segments/{VIP_SEGMENT_ID}") or {}
    return holders, {m["id"] for m in segment.get("members", [])}


def campaign_lines(report: dict[str, Any], entries: dict[int, int]) -> list[str]:
    """The report's `campaigns` section, a line per running campaign the sync could start: its
    people (an upper bound), the older events that cannot start it (too old to trigger, and
    those the route's max_age kept back: stale), and who the sandbox's simulator let in."""
    section = report.get("campaigns")
    if section is None:
        return ["  (not read: the sync has no app_api_key)"]
    streams = report.get("streams", {})
    lines = []
    for campaign in section["campaigns"]:
        event = campaign["trigger"].get("event_name")
        if event is None:
            continue
        stream = streams.get(f"public-{event}_events", {})  # the demo's view of each event
        stale = stream.get("skipped_by_reason", {}).get("stale", 0)  # rows past max_age
        lines.append(
            f"  {event} can start {campaign['name']} (running) for {campaign['people']} people "
            f"({campaign['events']} events; the sandbox has let in "
            f"{entries.get(campaign['id'], 0)} in all); "
            f"{campaign['too_old_to_trigger'] + stale} older rows cannot (max_age 3d)"
        )
    return lines


def print_campaigns(night: int) -> None:
    """What the sync could start in the live campaigns, and what the sandbox's simulator let in:
    a re-sent night enters nobody twice (the event ids are deterministic)."""
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    entries = {c["id"]: c["entries"] for c in _get_json("/_sandbox/campaigns") or []}
    say(f"\nLive campaigns (night {night}, the report's `campaigns` section; upper bounds):")
    for line in campaign_lines(report, entries):
        say(line)


def _mirror_line(stream: str, section: dict[str, Any]) -> str:
    """One line of the report's `mirror` section for a route."""
    said = [f"{section.get('members', 0)} in the view", f"{section.get('left', 0)} left"]
    said += [f"{n} {action}" for action, n in section.get("exits", {}).items()]
    for key, what in (("segment_adds", "added"), ("segment_removes", "removed")):
        if key in section:
            said.append(f"{section[key]} {what}")
    said.append(f"guard {section.get('guard', '?')}")
    if not section.get("complete"):
        said.append(f"incomplete: {section.get('reason')}")
    return f"  {stream:34} {', '.join(said)}"


def print_vips(night: int, before: tuple[dict[str, Any], set[str]] | None = None) -> None:
    """The VIP view's mirror routes after the sync: the report's `mirror` section, then what the
    sandbox holds (night 1: the counts; later nights: who left the attribute and the segment)."""
    from demo.sample_data import VIP_SEGMENT_ID

    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    say(f"\nMirror routes (night {night}, the report's `mirror` section):")
    for stream, section in report.get("mirror", {}).items():
        say(_mirror_line(stream, section))
    holders, members = vip_state()
    tiers = sorted(set(holders.values()), key=str)
    by_tier = ", ".join(f"{sum(1 for t in holders.values() if t == x)} {x}" for x in tiers)
    say(
        f"VIPs in the sandbox: {len(holders)} people have vip = true ({by_tier}); "
        f'{len(members)} are in segment {VIP_SEGMENT_ID} "VIP (from SQL)".'
    )
    if before is None:
        return
    lost_attr = sorted(set(before[0]) - set(holders))
    lost_member = sorted(before[1] - members)
    if not lost_attr and not lost_member:
        say("Left tonight: nobody (the VIP views select the same people as last night).")
        return
    say(
        f"Left tonight: {', '.join(lost_attr) or 'nobody'} lost `vip` and `vip_tier` "
        f"(on_exit: unset); {', '.join(lost_member) or 'nobody'} removed from segment "
        f"{VIP_SEGMENT_ID} (remove_customers)."
    )
    for person_id in lost_attr:
        person = _get_json(f"/_sandbox/person?id={person_id}") or {}
        attributes = person.get("attributes", {})
        say(
            f"  {person_id}: vip {attributes.get('vip', 'absent')}, "
            f"vip_tier {attributes.get('vip_tier', 'absent')}, lifetime_value "
            f"{attributes.get('lifetime_value')}"
        )


def _sync_rejects(stream: str, reason: str) -> int:
    """How many of the last sync's records of `stream` were rejected for `reason`."""
    try:
        report = json.loads(REPORT.read_text())
    except (OSError, ValueError):
        return 0
    return report.get("streams", {}).get(stream, {}).get("rejected_by_reason", {}).get(reason, 0)


def _get_json(path: str) -> Any:
    try:
        with urllib.request.urlopen(f"{SANDBOX_URL}{path}", timeout=10) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- commands ----------------------------------------------------------------------------------


def cmd_up() -> Any:
    server = start_postgres()
    start_sandbox()
    return server


def cmd_run() -> int:
    """Night 1: a fresh start (data reloaded, sandbox emptied, Meltano state cleared)."""
    from demo.sample_data import load

    server = cmd_up()
    counts = load(server.dsn)
    say(
        f"Sample data loaded: {counts['customers']} customers, {counts['orders']} orders "
        f"({counts['order_placed_events']} rows in order_placed_events: one per line item), "
        f"{counts['checkouts']} checkouts, {counts['refunds']} refunds, "
        f"{counts['subscription_events']} subscription events, "
        f"{counts['segment_checks']} segment checks"
    )
    reset_sandbox()
    define_segments()
    define_campaigns()
    for ledger in DEMO_DIR.glob("ledger.sqlite*"):  # the target's change-detection ledger
        ledger.unlink()
    for state_id in (STATE_ID, CHECKS_STATE_ID):
        meltano("state", "clear", "--force", state_id)
    say(
        f"Sandbox emptied, ledger and Meltano state {STATE_ID!r} cleared: "
        "this run sends everything."
    )
    elapsed = meltano_run()
    NIGHT_FILE.write_text("1\n")
    print_summary(elapsed, night=1)
    print_campaigns(night=1)
    print_vips(night=1)
    code = run_checks(night=1)
    say(
        "\nNext: `make demo-again` changes a few rows and syncs again: only the changes are sent. "
        f"`make demo-again NIGHT={BROKEN_NIGHT}` is a night whose sync stops sending "
        "last_order_at: the checks job fails with exit 7. `make demo-again "
        f"NIGHT={LOST_WRITES_NIGHT}` is a night whose writes for {LOST_WRITES} customers are "
        f"lost: the verification finds them, exit {EXIT_VERIFY}."
    )
    return code


def cmd_again(broken: bool = False, requested: int | None = None, lost: bool = False) -> int:
    """Night 2 (and later): change some rows, sync again from the bookmarks in Meltano's state
    backend, run the checks. `broken`: first redeploy customer_profiles with a bug that
    publishes last_order_at as NULL, so every profile that changes tonight loses it."""
    from demo.sample_data import (
        VIP_MIN_VALUE,
        break_profiles,
        demote_vips,
        mutate,
        profiles_broken,
        second_orders,
    )

    server = cmd_up()
    marks = bookmarks()
    if not marks:
        raise SystemExit("no Meltano state for the demo yet: run `make demo` first")
    night = max(_last_night() + 1, requested or 0)
    if night > 2:
        say(
            f"Note: night {night}. The sample changes are written for one second night; later "
            "ones repeat them, and their checkouts (stamped 5 minutes before the order) can fall "
            "behind the last bookmark and be missed, as any row written late with an older "
            "event time is. `make demo` starts over."
        )
    _wait_past(marks)
    try:
        already_broken = profiles_broken(server.dsn)
        changes = mutate(server.dsn)
        quiet = broken or lost  # one thing goes wrong a night: nobody is demoted
        demoted = {"customer_ids": []} if quiet else demote_vips(server.dsn, DEMOTED_VIPS)
        if broken:
            repeat = second_orders(server.dsn, NEW_REPEAT_BUYERS)
            break_profiles(server.dsn)
    except Exception as exc:  # noqa: BLE001 - psycopg2 errors when the schema is missing
        raise SystemExit(f"cannot change the sample data ({exc}); run `make demo` first") from None
    keys = changes["new_event_keys"]
    say(
        f"Changed at the source: customers {', '.join(changes['changed_customer_ids'])}; new "
        + ", ".join(f"{view} {len(v)}" for view, v in keys.items() if v)
    )
    if demoted["customer_ids"]:
        say(
            f"Demoted tonight: {', '.join(sorted(demoted['customer_ids']))} had their largest "
            f"order refunded, which takes their lifetime value below {VIP_MIN_VALUE}: they "
            "leave the views vip_customers and vip_segment."
        )
    if broken:
        say(
            f"Also tonight {len(repeat['customer_ids'])} one-time buyers placed their second order "
            f"({', '.join(repeat['customer_ids'])}): new repeat buyers for the canary segment."
        )
        say(
            "Broken tonight: customer_profiles was redeployed with a bug that publishes "
            'last_order_at as NULL (a "sync that stops sending last_order_at"), so every '
            "profile that changed tonight has orders but no last order date."
        )
    elif already_broken:
        say(
            f"Note: customer_profiles is still the broken view of night {BROKEN_NIGHT}: every "
            "profile that changes is refused, and the checks keep failing. `make demo` starts "
            "over with the healthy view."
        )
    say(f"Bookmarks in Meltano's state backend ({STATE_ID}):")
    for stream, value in sorted(marks.items()):
        say(f"  {stream:34} {value if value is not None else '(none: FULL_TABLE, read whole)'}")
    vips_before = vip_state()
    if lost:
        lose_writes(changes["changed_customer_ids"][:LOST_WRITES])
    try:
        elapsed = meltano_run(lost_writes=lost)
    finally:
        if lost:
            _send("DELETE", "/_sandbox/write_faults")
    NIGHT_FILE.write_text(f"{night}\n")
    print_summary(elapsed, night=night)
    print_campaigns(night)
    print_vips(night, before=vips_before)
    say(
        "\nOnly rows at or after each bookmark were read (tap-postgres re-reads the row *on* the "
        "bookmark: the ledger knows it was delivered as it is, so it is skipped as unchanged); "
        "the VIP views are read whole (FULL_TABLE), and their unchanged rows skipped."
    )
    code = run_checks(night=night)
    if lost:
        return explain_lost_writes(code)
    if (broken or already_broken) and code == EXIT_DRIFT:
        refused = _sync_rejects("public-customer_profiles", "contract_violation")
        say(
            f"\nWhat happened: the sync exited 0, but the contract (builtin:customer, rule "
            f"orders_count_needs_last_order_at) refused the {refused} profile(s) of tonight "
            "without last_order_at (contract_violation, in the reject file): none reached "
            "Customer.io, so the guardrail stays at 0. Refused means stale: Customer.io keeps "
            "last night's profiles of these customers, and the canary misses the new repeat "
            "buyers. The checks job is what fails, with exit 7, as the scheduled "
            "reconcile-segments-nightly would."
        )
    if code == 0 and not broken:
        say(
            f"\nNext: `make demo-again NIGHT={BROKEN_NIGHT}` is a night whose sync stops sending "
            "last_order_at: the checks job fails with exit 7."
        )
    if code != 0:
        say(
            "To recover: `make demo` (reloads the database with the healthy view, empties the "
            "workspace and syncs everything again). In production: fix the view, clear the "
            "sync's bookmarks (`meltano state clear <env>:tap-postgres-to-target-customerio`) "
            "and sync again: the ledger sends only the profiles that differ from what "
            "Customer.io holds."
        )
    return code


def lose_writes(ids: list[str]) -> None:
    """Tell the sandbox to accept these customers' writes tonight and never apply them (what
    Customer.io does to some writes: the Track API still answers 200)."""
    _send("POST", "/_sandbox/write_faults", {"ignore": [{"id": i} for i in ids]})
    say(
        f"Lost writes tonight: the workspace will accept every write for {', '.join(ids)} "
        "(HTTP 200) and never apply it."
    )


def explain_lost_writes(checks: int) -> int:
    """The lost-writes night's ending: the sync's exit 9, and what the verification found."""
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    found = report.get("verification") or {}
    say(
        f"\nWhat happened: Customer.io (the sandbox) answered 200 to every request, so the "
        f"delivery, the STATE and the segment checks (exit {checks}) saw nothing wrong. The "
        f"verification read {found.get('checked', 0)} of the people sent back and found "
        f"{len(found.get('discrepancies', []))} discrepancies: the sync exited "
        f"{EXIT_VERIFY} (docs/verification.md). Its STATE was written: re-sending needs "
        "`full_resend: true` for those people, or `make demo`."
    )
    return EXIT_VERIFY


def _wait_past(marks: dict[str, Any]) -> None:
    """Sleep until tonight's changes (stamped within the minute before now) sort after every
    bookmark: nights run back to back would otherwise write rows the next sync never reads."""
    latest = 0.0
    for value in marks.values():
        try:
            latest = max(latest, datetime.fromisoformat(str(value)).timestamp())
        except ValueError:
            continue
    wait = latest + CHANGES_SPAN_S - time.time()
    if wait > 0:
        say(
            f"Waiting {wait:.0f} s: tonight's changes are stamped within the minute before now, "
            "and must sort after the last bookmark to be read."
        )
        time.sleep(wait)


def _last_night() -> int:
    try:
        return int(NIGHT_FILE.read_text().strip())
    except (OSError, ValueError):
        return 1


def cmd_status() -> None:
    pg = postgres()
    port = pg.running_port()
    say(f"PostgreSQL  {f'running on 127.0.0.1:{port}' if port else 'stopped'}")
    pid = _sandbox_pid()
    answers = sandbox_answers() is not None
    say(
        f"Sandbox     {'running at ' + SANDBOX_URL if answers else 'stopped'}"
        + (f" (pid {pid})" if pid else "")
    )


def cmd_stop() -> None:
    stop_sandbox()
    if (PG_DATA / "PG_VERSION").exists():
        pg = postgres()
        was = pg.is_running()
        pg.stop()
        say(f"PostgreSQL  {'stopped' if was else 'not running'}")
    else:
        say("PostgreSQL  not initialised")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.run_demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "command", choices=["run", "again", "up", "status", "stop"], nargs="?", default="run"
    )
    parser.add_argument(
        "--broken",
        action="store_true",
        help=f"(again) a night whose sync stops sending last_order_at; also "
        f"NIGHT={BROKEN_NIGHT} in the environment",
    )
    parser.add_argument(
        "--lost-writes",
        action="store_true",
        help=f"(again) a night whose writes for {LOST_WRITES} customers Customer.io accepts and "
        f"never applies: the verification exits {EXIT_VERIFY}; also NIGHT={LOST_WRITES_NIGHT}",
    )
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    requested = _requested_night()
    broken = args.broken or requested == BROKEN_NIGHT
    lost = args.lost_writes or requested == LOST_WRITES_NIGHT
    if args.command == "again" or (args.command == "run" and (broken or lost)):
        return cmd_again(broken=broken, requested=requested, lost=lost)
    if args.command == "run":
        return cmd_run()
    {"up": cmd_up, "status": cmd_status, "stop": cmd_stop}[args.command]()
    return 0


def _requested_night() -> int | None:
    """NIGHT from the environment: `make demo-again NIGHT=3` exports it to this command."""
    try:
        return int(os.environ.get("NIGHT", ""))
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
