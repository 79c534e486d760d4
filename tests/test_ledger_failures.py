"""The ledger's database failing, through the real target process (ledger_db.py): one line, a
documented exit, the report written, no STATE; several targets starting at once on a fresh
Postgres ledger all succeed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from target_customerio.ledger import PostgresLedger
from tests.harness import TARGET, record, run_target, schema, state, target_config
from tests.pg_fixtures import postgres  # noqa: F401  (module-scoped embedded Postgres)

P = "public-customers"
PERSON = {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}}
WAIT = 2  # ledger_lock_timeout in these tests (seconds)

# Another process opens the SQLite file, takes its write lock and holds it until killed.
HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("CREATE TABLE IF NOT EXISTS held (x)")
print("held", flush=True)
time.sleep(600)
"""


def customers(n: int, night: int = 1) -> list[dict]:
    rows = [{"customer_id": f"C{i}", "night": night} for i in range(n)]
    props = {"customer_id": {"type": "string"}, "night": {"type": "integer"}}
    return [schema(P, props, ["customer_id"]), *(record(P, r) for r in rows), state({"n": night})]


def hold(path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


@pytest.mark.parametrize("when", ["at start", "mid-run"])
def test_a_sqlite_ledger_held_by_another_process_is_waited_for_then_one_line_and_exit_1(
    sandbox, tmp_path, when
):
    """At start: a fresh file another process created and holds (opening it needs the lock).
    Mid-run: the ledger of an earlier run, held while this run writes what was accepted."""
    ledger = tmp_path / "ledger.sqlite"
    config = target_config(
        sandbox.url, tmp_path, {P: PERSON}, ledger_path=str(ledger), ledger_lock_timeout=WAIT
    )
    if when == "mid-run":
        assert run_target(config, customers(3), tmp_path).returncode == 0
    holder = hold(ledger)
    try:
        started = time.monotonic()
        run = run_target(config, customers(3, night=2), tmp_path)
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    line = (
        f"cannot write the ledger (ledger_path '{ledger}'): the database is locked by another "
        f"process (waited {WAIT} s: ledger_lock_timeout)"
    )
    assert run.returncode == 1, run.stderr
    assert f"LedgerError: {line}" in run.stderr and "Traceback" not in run.stderr
    assert run.report is not None and (run.report["status"], run.report["error"]) == (
        "failed",
        line,
    )
    assert run.states == []  # nothing after the last STATE is confirmed
    assert WAIT <= took < WAIT + 30  # waited, boundedly


def fresh_database(server, name: str) -> str:
    admin = psycopg2.connect(server.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return server.dsn.rsplit("/", 1)[0] + f"/{name}"


def test_targets_starting_at_once_on_a_fresh_postgres_ledger_all_succeed(
    postgres,  # noqa: F811
    sandbox,
    tmp_path,
):
    """Each creates the ledger's tables if they are missing; started together, each waits for
    the others' creation instead of failing on it (before: one stopped with exit 2)."""
    for attempt in range(3):  # three fresh databases: the race had several chances
        dsn = fresh_database(postgres, f"ledger_race_{attempt}")
        procs = []
        for runner in range(3):
            work = tmp_path / f"{attempt}-{runner}"
            work.mkdir()
            config = target_config(sandbox.url, work, {P: PERSON}, ledger_url=dsn)
            (work / "config.json").write_text(json.dumps(config))
            lines = "".join(json.dumps(m) + "\n" for m in customers(5))
            (work / "input.jsonl").write_text(lines)
            procs.append((work, subprocess.Popen(
                [TARGET, "--config", str(work / "config.json")],
                stdin=(work / "input.jsonl").open("rb"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )))  # fmt: skip
        for work, proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (work, err.decode()[-2000:])
            assert [json.loads(line) for line in out.decode().splitlines()] == [{"n": 1}]


def test_ledgers_opened_at_the_same_instant_on_a_fresh_postgres_all_open(postgres):  # noqa: F811
    """The race itself, made likely: eight connections released at once by a barrier, each
    creating the tables (without the advisory lock, `CREATE TABLE IF NOT EXISTS` fails some of
    them on the catalog's unique index)."""
    for attempt in range(4):
        dsn = fresh_database(postgres, f"ledger_barrier_{attempt}")
        barrier = threading.Barrier(8)
        failures: list[str] = []

        def open_one(dsn: str = dsn, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                PostgresLedger(dsn).close()
            except Exception as exc:  # noqa: BLE001 - collected, then asserted
                failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=open_one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
