"""The `make demo` orchestration: embedded PostgreSQL + sandbox workspace + a real `meltano run`.

    python -m demo.run_demo run      # night 1: start services, load the sample data, sync all
    python -m demo.run_demo again    # night 2: change some rows, sync again (only the changes)
    python -m demo.run_demo up       # only start the services (idempotent)
    python -m demo.run_demo status
    python -m demo.run_demo stop     # stop the sandbox and PostgreSQL

Everything lives under `.demo/` (PostgreSQL data, the sandbox's SQLite file, its pid and log)
and `output/` (the run report, the reject file, Meltano's log). Ports and credentials are the
ones the `demo` environment of meltano.yml uses: PostgreSQL on 127.0.0.1:54329
(postgres/postgres, database shop), the sandbox on http://127.0.0.1:8089
(site id `sandbox-site`, key `sandbox-key`). Meltano is `.venv-meltano/bin/meltano` (or $MELTANO).
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
REPORT = OUTPUT / "report.json"
REJECTS = OUTPUT / "rejects.jsonl"
MELTANO_LOG = OUTPUT / "meltano-demo.log"
NIGHT_FILE = DEMO_DIR / "night"  # which night the last sync was (1 after `run`)
ENVIRONMENT = "demo"
STATE_ID = f"{ENVIRONMENT}:tap-postgres-to-target-customerio"  # what `meltano run` names it

# Lines of Meltano's log worth showing live (the full log goes to output/meltano-demo.log).
_SHOW = ("with bookmark value", "Incremental state has been updated", "target-customerio ok",
         "target-customerio failed", "Run completed", "No state was found")


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
    return SystemExit(f"port {port} ({what}) is taken by another process, most likely a demo "
                      "still running from another checkout: run `make demo-stop` there (or stop "
                      f"whatever listens on 127.0.0.1:{port}), then `make demo` again")


def start_postgres():
    server = postgres()
    was_running = server.is_running()
    if not was_running and port_taken(PG_PORT):
        raise _taken(PG_PORT, "the demo's PostgreSQL")
    server.start()
    say(f"PostgreSQL  {'already running' if was_running else 'started'} on 127.0.0.1:{server.port}"
        f"  (data {PG_DATA.relative_to(ROOT)})")
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
    cmd = [str(script)] if script.exists() else [
        sys.executable, "-c", "from target_customerio.sandbox import main; main()"]
    cmd += ["--port", str(SANDBOX_PORT), "--db", str(SANDBOX_DB),
            "--site-id", SITE_ID, "--api-key", API_KEY]
    with open(SANDBOX_LOG, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=ROOT, start_new_session=True)
    SANDBOX_PID.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the sandbox exited at once ({proc.returncode}); see {SANDBOX_LOG}:\n"
                             + _tail(SANDBOX_LOG, 10))
        if sandbox_answers() is not None:
            say(f"Sandbox     started at {SANDBOX_URL}  (pid {proc.pid}, db "
                f"{SANDBOX_DB.relative_to(ROOT)}, log {SANDBOX_LOG.relative_to(ROOT)})")
            return
        time.sleep(0.2)
    raise SystemExit(f"the sandbox did not answer on {SANDBOX_URL} within 15 s; see {SANDBOX_LOG}")


def stop_sandbox() -> None:
    pid = _sandbox_pid()
    if pid is None:
        SANDBOX_PID.unlink(missing_ok=True)
        if sandbox_answers() is not None:
            say(f"Sandbox     a sandbox answers on {SANDBOX_URL} but was not started by "
                "`make demo`; left alone")
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
    request = urllib.request.Request(f"{SANDBOX_URL}/_sandbox/reset", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


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
        raise SystemExit("Meltano is not installed: run `make meltano-install` "
                         "(creates .venv-meltano)")
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


def meltano_run() -> float:
    """`meltano --environment=demo run tap-postgres target-customerio`, log to output/."""
    OUTPUT.mkdir(exist_ok=True)
    REPORT.unlink(missing_ok=True)
    REJECTS.unlink(missing_ok=True)
    cmd = [meltano_bin(), f"--environment={ENVIRONMENT}",
           "run", "tap-postgres", "target-customerio"]
    say(f"\n$ meltano --environment={ENVIRONMENT} run tap-postgres target-customerio"
        f"   (full log: {MELTANO_LOG.relative_to(ROOT)})")
    started = time.monotonic()
    with open(MELTANO_LOG, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if any(marker in line for marker in _SHOW):
                say("  " + _strip_log_prefix(line))
        code = proc.wait()
    elapsed = time.monotonic() - started
    if code != 0:
        say(_tail(MELTANO_LOG, 25))
        raise SystemExit(f"meltano run failed (exit {code}); full log: {MELTANO_LOG}")
    return elapsed


def _strip_log_prefix(line: str) -> str:
    """'2026-…Z [info     ] tap-postgres Starting …' -> 'tap-postgres Starting …'"""
    line = line.rstrip()
    if "] " in line[:60]:
        line = line.split("] ", 1)[1]
    return line.strip()


# ---- the summary -------------------------------------------------------------------------------


def print_summary(elapsed: float, night: int) -> None:
    if not REPORT.exists():
        raise SystemExit(f"no run report at {REPORT}")
    report = json.loads(REPORT.read_text())
    say(f"\nRun summary (night {night}, {elapsed:.1f} s, from {REPORT.relative_to(ROOT)}):")
    header = f"  {'stream':34} {'received':>8} {'sent':>6} {'rejected':>8} {'skipped':>8}  why"
    say(header)
    say("  " + "-" * (len(header) - 2))
    for name, s in report["streams"].items():
        why = {**{f"rejected {k}": v for k, v in s["rejected_by_reason"].items()},
               **s["skipped_by_reason"]}
        why_text = ", ".join(f"{k} {v}" for k, v in why.items())
        say(f"  {name:34} {s['received']:>8} {s['sent']:>6} {s['rejected']:>8} {s['skipped']:>8}"
            f"  {why_text}")
    t = report["totals"]
    say(f"  {'total':34} {t['received']:>8} {t['sent']:>6} {t['rejected']:>8} {t['skipped']:>8}"
        f"  {t['requests']} request(s), {t['retried_requests']} retried")
    if report.get("near_duplicate_event_names"):
        say(f"  near-duplicate event names: {report['near_duplicate_event_names']}")
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
    say(f"\nSandbox workspace now holds {len(people)} people and {len(events)} events; "
        f"{counters.get('duplicate_events_dropped', 0)} re-sent event(s) were dropped by id "
        "(deterministic ULIDs), as Customer.io does.")
    say(f"Open {SANDBOX_URL}/ to inspect people, attribute types and each person's activity.")


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


def cmd_run() -> None:
    """Night 1: a fresh start (data reloaded, sandbox emptied, Meltano state cleared)."""
    from demo.sample_data import load

    server = cmd_up()
    counts = load(server.dsn)
    say(f"Sample data loaded: {counts['customers']} customers, {counts['orders']} orders "
        f"({counts['order_placed_events']} rows in order_placed_events: one per line item), "
        f"{counts['checkouts']} checkouts, {counts['refunds']} refunds, "
        f"{counts['subscription_events']} subscription events")
    reset_sandbox()
    for ledger in DEMO_DIR.glob("ledger.sqlite*"):  # the target's change-detection ledger
        ledger.unlink()
    meltano("state", "clear", "--force", STATE_ID)
    say(f"Sandbox emptied, ledger and Meltano state {STATE_ID!r} cleared: this run sends everything.")
    elapsed = meltano_run()
    NIGHT_FILE.write_text("1\n")
    print_summary(elapsed, night=1)
    say("\nNext: `make demo-again` changes a few rows and syncs again: only the changes are sent.")


def cmd_again() -> None:
    """Night 2: change some rows, sync again from the bookmarks in Meltano's state backend."""
    from demo.sample_data import mutate

    server = cmd_up()
    marks = bookmarks()
    if not marks:
        raise SystemExit("no Meltano state for the demo yet: run `make demo` first")
    night = _last_night() + 1
    if night > 2:
        say(f"Note: night {night}. The sample changes are written for one second night; later "
            "ones repeat them, and their checkouts (stamped 5 minutes before the order) can fall "
            "behind the last bookmark and be missed, as any row written late with an older "
            "event time is. `make demo` starts over.")
    try:
        changes = mutate(server.dsn)
    except Exception as exc:  # noqa: BLE001 - psycopg2 errors when the schema is missing
        raise SystemExit(f"cannot change the sample data ({exc}); run `make demo` first") from None
    keys = changes["new_event_keys"]
    say(f"Changed at the source: customers {', '.join(changes['changed_customer_ids'])}; new "
        + ", ".join(f"{view} {len(v)}" for view, v in keys.items() if v))
    say(f"Bookmarks in Meltano's state backend ({STATE_ID}):")
    for stream, value in sorted(marks.items()):
        say(f"  {stream:34} {value}")
    elapsed = meltano_run()
    NIGHT_FILE.write_text(f"{night}\n")
    print_summary(elapsed, night=night)
    say("\nOnly rows at or after each bookmark were read (tap-postgres re-reads the row *on* the "
        "bookmark: the ledger knows it was delivered as it is, so it is skipped as unchanged).")


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
    say(f"Sandbox     {'running at ' + SANDBOX_URL if answers else 'stopped'}"
        + (f" (pid {pid})" if pid else ""))


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
    parser = argparse.ArgumentParser(prog="python -m demo.run_demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "again", "up", "status", "stop"], nargs="?",
                        default="run")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    {"run": cmd_run, "again": cmd_again, "up": cmd_up, "status": cmd_status,
     "stop": cmd_stop}[args.command]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
