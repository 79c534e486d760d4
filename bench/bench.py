"""Throughput benchmark: target-customerio against a no-op singer-sdk target, in one run.

It measures the target-customerio installed in the environment of the Python that runs it (its
console script beside that Python): `make bench` runs it with .venv-compiled, the compiled wheel
(what users of the wheels run; `make compiled` builds and installs it). Run with .venv's Python
it measures the checkout's plain-Python sources. The form measured is printed with the table.

    .venv-compiled/bin/python bench/bench.py                    # 200,000 records a stream
    .venv-compiled/bin/python bench/bench.py --records 1000000  # make bench ARGS="--records …"
    .venv-compiled/bin/python bench/bench.py --rate-limit 0     # skip the rate-limited scenario
    .venv-compiled/bin/python bench/bench.py --no-ledger        # change_detection off
    .venv-compiled/bin/python bench/bench.py --repeat 5         # rounds per scenario (default 3)
    .venv-compiled/bin/python bench/bench.py --mapping-workers 1  # the target's setting

What it does:

1. Generates two Singer streams in tap-postgres's shape (SCHEMA, RECORD with time_extracted,
   STATE every 10,000 records): `public-customer_profiles` (one row per customer: timestamps,
   numerics, booleans, an email, a small jsonb column) and `public-order_placed_events` (the
   dirty view, one row per line item, deduplicated by order_id). Files are generated once into
   the temp directory and reused (they are deterministic).
2. For each stream, runs, in each of `--repeat` rounds, (a) the no-op baseline
   (bench/noop_target.py: validation off, the SDK's msgspec reader) and (b) the real
   `target-customerio` process with the built-in contracts and its default settings (change
   detection on, with a new ledger), into a local sandbox Track API (store=False,
   validate=False: nothing checked or stored, it accepts as fast as it can). For
   the person stream, (b') the same sync again: every row unchanged, nothing sent. Wall time
   and CPU time are measured with os.wait4 (the process and its mapping workers); peak memory is
   sampled over the process tree: the sum of RSS every 20 ms (pages shared by the forked
   workers counted once per process) and the sum of PSS every 200 ms (shared pages divided
   among them; reading PSS is costly enough to slow the process measured if done more often).
   Rounds interleave the baseline and the target, so a busy minute on a shared machine slows
   both; each row shows the round with the median wall time, the ratio is of the median walls,
   and every round's wall time is listed under the table.
3. (c) 1,000,000 person records (--rate-limit-records) against a sandbox that allows 100
   requests/s (token bucket), with the target's own `max_requests_per_second` at 100: wall time
   and the number of 429s the sandbox answered (must be 0; the run exits 1 otherwise).

No thresholds are asserted on time; the invariants asserted are: every record accounted for,
no rejects, no request of 500,000 bytes or more, and no 429.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from target_customerio.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TARGET = str(Path(sys.executable).with_name("target-customerio"))
NOOP = [PYTHON, str(HERE / "noop_target.py")]
CACHE = Path(tempfile.gettempdir()) / "target-customerio-bench"
GENERATOR_VERSION = 1  # bump when the generated data changes: the cache key includes it
SITE_ID, API_KEY = "bench-site", "bench-key"
MAX_REQUEST_BYTES = 500_000

PERSON_STREAM = "public-customer_profiles"
EVENT_STREAM = "public-order_placed_events"
ROUTES = {
    PERSON_STREAM: {
        "kind": "person",
        "identifier": {"field": "customer_id", "type": "id"},
        "contract": "builtin:customer",
    },
    EVENT_STREAM: {
        "kind": "event",
        "identifier": {"field": "customer_id", "type": "id"},
        "event_name": "order_placed",
        "event_id": ["order_id"],
        "timestamp": "placed_at",
        "contract": "builtin:order_placed",
    },
}


def target_form() -> str:
    """Which target-customerio the console script runs: compiled (the wheel's build manifest,
    hatch_build.py, lists its compiled modules) or plain Python, and from where. Asked of this
    Python outside the checkout, as the console script imports it."""
    code = (
        "import importlib, json, pathlib, target_customerio as p\n"
        "d = pathlib.Path(p.__file__).parent; m = d / '_mypyc_build.json'\n"
        "names = json.loads(m.read_text())['modules'] if m.is_file() else []\n"
        "ok = names and not any(importlib.import_module(n).__file__.endswith('.py')"
        " for n in names)\n"
        "print('compiled' if ok else 'plain Python', d)"
    )
    with tempfile.TemporaryDirectory() as neutral:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        run = subprocess.run(
            [PYTHON, "-c", code], cwd=neutral, env=env, capture_output=True, text=True, check=True
        )
    return run.stdout.strip()


# ---- the streams ------------------------------------------------------------------------------

_T = {"type": ["string", "null"]}
_TS = {"format": "date-time", "type": ["string", "null"]}
_B = {"type": ["boolean", "null"]}
_I = {"type": ["integer", "null"]}
_N = {"type": ["number", "null"]}
_JSONB = {
    "type": ["string", "number", "integer", "array", "object", "boolean"],
    "additionalProperties": True,
}
SCHEMAS = {
    PERSON_STREAM: {
        "customer_id": _T,
        "email": _T,
        "first_name": _T,
        "last_name": _T,
        "phone": _T,
        "email_opt_in": _B,
        "sms_opt_in": _B,
        "is_subscriber": _B,
        "subscription_status": _T,
        "last_order_at": _TS,
        "orders_count": _I,
        "lifetime_value": _N,
        "next_reorder_due_at": _TS,
        "created_at": _TS,
        "updated_at": _TS,
        "preferences": _JSONB,
    },
    EVENT_STREAM: {
        "order_id": _I,
        "customer_id": _T,
        "placed_at": _TS,
        "total": _N,
        "currency": _T,
        "items_count": _I,
        "sku": _T,
    },
}
BOOKMARKS = {PERSON_STREAM: "updated_at", EVENT_STREAM: "placed_at"}

FIRST = [
    "Noah",
    "Emma",
    "Diego",
    "Aiko",
    "Fatima",
    "Liam",
    "Olivia",
    "Mateo",
    "Sofia",
    "Chen",
    "Amara",
    "Lukas",
]
LAST = [
    "Larsen",
    "Dubois",
    "Garcia",
    "Tanaka",
    "Okafor",
    "Smith",
    "Rossi",
    "Novak",
    "Kowalski",
    "Silva",
]
DOMAINS = ["example.com", "mail.example.net", "Example.ORG", "shop.example.co.uk"]
SKUS = [
    ("COF-HOUSE-12", "16.00"),
    ("COF-DECAF-12", "17.50"),
    ("COF-ESPR-2LB", "38.00"),
    ("TEA-SENCHA-50", "12.25"),
    ("SKN-SERUM-30", "34.99"),
    ("SKN-SPF-50", "24.00"),
    ("SUP-PROT-VAN", "49.90"),
    ("RZR-BLADE-8", "19.00"),
]
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)  # fixed: the files are deterministic
_encoder = msgspec.json.Encoder(decimal_format="number")  # Decimal as a JSON number, like the tap


def _ts(value: dt.datetime | None) -> str | None:
    return (
        None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    )  # tap-postgres' form


def customer_rows(rnd: random.Random) -> Iterator[dict[str, Any]]:
    for n in range(1, 10**9):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        orders = rnd.choice([0, 0, 1, 1, 2, 3, 4, 7, 12])
        created = NOW - dt.timedelta(days=rnd.uniform(30, 1500))
        last_order = (
            NOW - dt.timedelta(days=rnd.uniform(0, 200), seconds=rnd.randrange(86400))
            if orders
            else None
        )
        status = rnd.choice(["none", "none", "none", "active", "paused", "canceled"])
        email = f"{first}.{last}{n}@{rnd.choice(DOMAINS)}"
        if n % 7 == 0:
            email = f"  {email.upper()} "  # dirty at the source: padded, mixed case
        elif n % 53 == 0:
            email = None
        yield {
            "customer_id": f"C{n:07}",
            "email": email,
            "first_name": first,
            "last_name": last,
            "phone": f"+1 415 555 {rnd.randrange(10000):04}" if rnd.random() < 0.6 else None,
            "email_opt_in": rnd.random() < 0.7,
            "sms_opt_in": rnd.random() < 0.3,
            "is_subscriber": status == "active",
            "subscription_status": status,
            "last_order_at": _ts(last_order),
            "orders_count": orders,
            "lifetime_value": Decimal(orders * rnd.randrange(1500, 9000)).scaleb(-2),
            "next_reorder_due_at": _ts(last_order + dt.timedelta(days=30)) if last_order else None,
            "created_at": _ts(created),
            "updated_at": _ts(max(created, last_order or created) + dt.timedelta(minutes=5)),
            "preferences": {
                "size": rnd.choice("SML"),
                "roast": rnd.choice(["light", "medium", "dark"]),
                "channels": ["email", "sms"][: rnd.choice([1, 2])],
                "birthday_month": rnd.randrange(1, 13),
            },
        }


def order_rows(rnd: random.Random) -> Iterator[dict[str, Any]]:
    """The dirty view: one row per line item, the order's columns repeated (dedupe by order_id)."""
    for order_id in range(100_000, 10**10):
        lines = rnd.choices([1, 2, 3], weights=[85, 12, 3])[0]
        skus = rnd.sample(SKUS, lines)
        placed = NOW - dt.timedelta(seconds=rnd.randrange(48 * 3600))
        total = sum(Decimal(price) for _, price in skus)
        order = {
            "order_id": order_id,
            "customer_id": f"C{rnd.randrange(1, 200_000):07}",
            "placed_at": _ts(placed),
            "total": total,
            "currency": "USD",
            "items_count": lines,
        }
        for sku, _ in skus:
            yield {**order, "sku": sku}


def generate(stream: str, records: int) -> Path:
    """The stream as Singer JSON lines, generated once per (stream, size) and then reused."""
    kind = "person" if stream == PERSON_STREAM else "event"
    path = CACHE / f"{kind}-{records}-v{GENERATOR_VERSION}.jsonl"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = customer_rows(random.Random(1)) if kind == "person" else order_rows(random.Random(2))
    schema = {
        "type": "SCHEMA",
        "stream": stream,
        "key_properties": [],
        "bookmark_properties": [BOOKMARKS[stream]],
        "schema": {
            "properties": SCHEMAS[stream],
            "type": "object",
            "$schema": "https://json-schema.org/draft/2020-12/schema",
        },
    }
    extracted = _ts(NOW).replace("+00:00", "Z")
    tmp = path.with_suffix(".tmp")
    started = time.perf_counter()
    with tmp.open("wb") as out:
        out.write(_encoder.encode(schema) + b"\n")
        for n in range(1, records + 1):
            row = next(rows)
            out.write(
                _encoder.encode(
                    {"type": "RECORD", "stream": stream, "record": row, "time_extracted": extracted}
                )
                + b"\n"
            )
            if n % 10_000 == 0 or n == records:
                bookmark = {
                    "replication_key": BOOKMARKS[stream],
                    "replication_key_value": row[BOOKMARKS[stream]],
                }
                out.write(
                    _encoder.encode({"type": "STATE", "value": {"bookmarks": {stream: bookmark}}})
                    + b"\n"
                )
    tmp.rename(path)
    size, took = path.stat().st_size / 1e6, time.perf_counter() - started
    print(f"generated {path} ({size:.0f} MB) in {took:.0f} s", file=sys.stderr)
    return path


# ---- running one process ----------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    cpu: float
    peak_rss_mb: float
    peak_pss_mb: float
    returncode: int
    stdout: bytes
    stderr: bytes


def run(cmd: list[str], stdin: Path, workdir: Path) -> Run:
    """Run a process on a file: wall time; CPU time of it and its children (the mapping
    workers; os.wait4's rusage); peak RSS and PSS of the whole process tree, summed (see
    `_sample_tree_rss`; RSS: or the process's own peak from wait4 where that is larger)."""
    out, err = workdir / "stdout", workdir / "stderr"
    with stdin.open("rb") as fin, out.open("wb") as fout, err.open("wb") as ferr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=workdir)
        peak = [0, 0]
        sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, peak), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    cpu = usage.ru_utime + usage.ru_stime
    return Run(
        wall,
        cpu,
        max(peak[0], usage.ru_maxrss) / 1024,
        peak[1] / 1024,
        proc.returncode,
        out.read_bytes(),
        err.read_bytes(),
    )


PSS_EVERY = 10  # samples: reading smaps_rollup walks the page tables (~3 ms for 150 MB) and
# takes the process's memory lock, so read every 20 ms it would slow the process it measures.


def _sample_tree_rss(pid: int, peak: list[int]) -> None:
    """Peaks of the summed RSS (every 20 ms) and PSS (every 200 ms), in KB, of `pid` and its
    descendants, until `pid` exits."""
    for sample in itertools.count():
        total, pss, todo = 0, 0, [pid]
        while todo:
            current = todo.pop()
            try:
                status = Path(f"/proc/{current}/status").read_text()
                children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            except OSError:
                if current == pid:
                    return
                continue
            if current == pid and "State:\tZ" in status:
                return
            total += _kb(status, "VmRSS:")
            if sample % PSS_EVERY == 0:
                with contextlib.suppress(OSError):
                    pss += _kb(Path(f"/proc/{current}/smaps_rollup").read_text(), "Pss:")
            todo += [int(child) for child in children]
        peak[0], peak[1] = max(peak[0], total), max(peak[1], pss)
        time.sleep(0.02)


def _kb(text: str, key: str) -> int:
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith(key)), 0)


def run_target(
    sandbox: Sandbox, stdin: Path, workdir: Path, *, again: bool = False, **settings: Any
) -> tuple[Run, dict]:
    """One sync: a first one with a new, empty ledger (every record is sent), or `again`."""
    sandbox.reset()
    if not again:
        for old in workdir.glob("ledger.sqlite*"):
            old.unlink()
    config = {
        "site_id": SITE_ID,
        "api_key": API_KEY,
        "track_api_url": sandbox.url,
        "streams": ROUTES,
        "report_file": str(workdir / "report.json"),
        "reject_file": str(workdir / "rejects.jsonl"),
        "ledger_path": str(workdir / "ledger.sqlite"),
        **settings,
    }
    (workdir / "config.json").write_text(json.dumps(config))
    result = run([TARGET, "--config", str(workdir / "config.json")], stdin, workdir)
    if result.returncode != 0:
        sys.exit(
            f"target-customerio failed ({result.returncode}):\n{result.stderr.decode()[-3000:]}"
        )
    return result, json.loads((workdir / "report.json").read_text())


# ---- scenarios --------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    records: int
    wall: float
    cpu: float
    peak_rss_mb: float
    peak_pss_mb: float
    sent: int | None = None
    requests: int | None = None
    bytes_avg: float | None = None
    bytes_max: int | None = None
    ratio: float | None = None  # wall time over the no-op baseline's (medians)
    rejected_429: int | None = None
    walls: list[float] = field(default_factory=list)  # every round's, in order


def target_row(scenario: str, records: int, result: Run, report: dict, sandbox: Sandbox) -> Row:
    """Check the accounting and the request sizes, and summarise one target-customerio run."""
    totals = report["totals"]
    assert totals["received"] == records, totals
    assert totals["rejected"] == 0, report["streams"]
    assert totals["sent"] + totals["skipped"] == records, totals
    batches = [r for r in sandbox.requests() if r["path"] == "/api/v2/batch" and r["status"] == 200]
    assert sum(r["ops"] for r in batches) == totals["sent"], (
        "the sandbox did not get every operation"
    )
    sizes = [r["bytes"] for r in batches]
    assert max(sizes, default=0) < MAX_REQUEST_BYTES
    return Row(
        scenario,
        records,
        result.wall,
        result.cpu,
        result.peak_rss_mb,
        result.peak_pss_mb,
        totals["sent"],
        len(batches),
        sum(sizes) / len(sizes) if sizes else None,
        max(sizes, default=None),
        rejected_429=sandbox.counters()["rate_limited"],
    )


def throughput(
    stream: str, records: int, workdir: Path, settings: dict[str, Any], repeat: int
) -> list[Row]:
    """The no-op baseline and target-customerio on one stream (person: also a second, unchanged
    sync), `repeat` rounds, interleaved so that a busy minute on a shared machine slows both;
    each row is the round with the median wall time, and the ratio is of the median walls."""
    path = generate(stream, records)
    name = "person" if stream == PERSON_STREAM else "event"
    scenarios = [f"{name}: no-op sdk target", f"{name}: target-customerio"]
    if name == "person" and settings.get("change_detection", True):
        scenarios.append(f"{name}: again, all unchanged")
    rounds: dict[str, list[Row]] = {scenario: [] for scenario in scenarios}
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, store=False, validate=False) as sandbox:
        for _ in range(repeat):
            base = run(NOOP, path, workdir)
            if base.returncode != 0:
                sys.exit(f"no-op target failed:\n{base.stderr.decode()[-3000:]}")
            rounds[scenarios[0]].append(
                Row(scenarios[0], records, base.wall, base.cpu, base.peak_rss_mb, base.peak_pss_mb)
            )
            for again, scenario in enumerate(scenarios[1:]):
                result, report = run_target(sandbox, path, workdir, again=bool(again), **settings)
                rounds[scenario].append(target_row(scenario, records, result, report, sandbox))
    baseline = median_row(rounds[scenarios[0]]).wall
    rows = [median_row(runs) for runs in rounds.values()]
    for row in rows[1:]:
        row.ratio = row.wall / baseline
    return rows


def median_row(runs: list[Row]) -> Row:
    """The run with the median wall time (the lower one of an even count), with every wall noted."""
    ordered = sorted(runs, key=lambda row: row.wall)
    row = ordered[(len(ordered) - 1) // 2]
    row.walls = [run.wall for run in runs]
    return row


def rate_limited(records: int, per_second: float, workdir: Path, settings: dict[str, Any]) -> Row:
    """Person records against a server that answers 429 above `per_second` (token bucket)."""
    path = generate(PERSON_STREAM, records)
    with Sandbox(
        site_id=SITE_ID, api_key=API_KEY, store=False, validate=False, rate_limit=per_second
    ) as sandbox:
        result, report = run_target(
            sandbox, path, workdir, max_requests_per_second=per_second, **settings
        )
        return target_row(f"person @ {per_second:g} req/s server", records, result, report, sandbox)


# ---- the table --------------------------------------------------------------------------------

COLUMNS: list[tuple[str, str, Callable[[Row], Any]]] = [
    ("scenario", "<30", lambda r: r.scenario),
    ("records", ">9", lambda r: f"{r.records:,}"),
    ("wall s", ">7", lambda r: f"{r.wall:.2f}"),
    ("cpu s", ">6", lambda r: f"{r.cpu:.2f}"),
    ("records/s", ">9", lambda r: f"{r.records / r.wall:,.0f}"),
    ("sent", ">9", lambda r: f"{r.sent:,}" if r.sent is not None else "-"),
    ("requests", ">8", lambda r: f"{r.requests:,}" if r.requests is not None else "-"),
    ("ops/req", ">7", lambda r: f"{r.sent / r.requests:.0f}" if r.requests else "-"),
    ("bytes/req avg", ">13", lambda r: f"{r.bytes_avg:,.0f}" if r.bytes_avg else "-"),
    ("bytes/req max", ">13", lambda r: f"{r.bytes_max:,}" if r.bytes_max else "-"),
    ("B/op", ">4", lambda r: f"{r.bytes_avg * r.requests / r.sent:.0f}" if r.bytes_avg else "-"),
    ("RSS MB", ">6", lambda r: f"{r.peak_rss_mb:.0f}"),
    ("PSS MB", ">6", lambda r: f"{r.peak_pss_mb:.0f}"),
    ("vs no-op", ">8", lambda r: f"{r.ratio:.2f}x" if r.ratio else "-"),
    ("429s", ">4", lambda r: str(r.rejected_429) if r.rejected_429 is not None else "-"),
]


def table(rows: list[Row]) -> str:
    head = "  ".join(f"{title:{fmt}}" for title, fmt, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    lines += ["  ".join(f"{get(row):{fmt}}" for _, fmt, get in COLUMNS) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=200_000, help="records per stream (default 200,000)"
    )
    parser.add_argument(
        "--rate-limit", type=float, default=100, help="requests/s of the limited server (0: skip)"
    )
    parser.add_argument(
        "--rate-limit-records", type=int, default=1_000_000, help="person records sent to it"
    )
    parser.add_argument(
        "--only", choices=["person", "event", "rate-limit"], help="run one scenario"
    )
    parser.add_argument(
        "--no-ledger", action="store_true", help="run target-customerio with change_detection off"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="interleaved rounds of each throughput scenario; the median is shown (default 3)",
    )
    parser.add_argument(
        "--mapping-workers", type=int, help="target-customerio's mapping_workers (default: its own)"
    )
    args = parser.parse_args(argv)
    settings: dict[str, Any] = {"change_detection": False} if args.no_ledger else {}
    if args.mapping_workers is not None:
        settings["mapping_workers"] = args.mapping_workers

    form = target_form()
    print(f"target-customerio: {form}", file=sys.stderr)
    if not form.startswith("compiled"):
        print(
            "  (not the compiled form users of the wheels run: make bench uses .venv-compiled)",
            file=sys.stderr,
        )
    rows: list[Row] = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tcio-bench-") as tmp:
        workdir = Path(tmp)
        for stream, name in ((PERSON_STREAM, "person"), (EVENT_STREAM, "event")):
            if args.only in (None, name):
                rows += throughput(stream, args.records, workdir, settings, args.repeat)
                print(table(rows), file=sys.stderr)
        if args.rate_limit and args.only in (None, "rate-limit"):
            rows.append(rate_limited(args.rate_limit_records, args.rate_limit, workdir, settings))
    print(
        f"\ntarget-customerio ({form}) throughput: {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}, "
        f"load average {load:.2f} before / {os.getloadavg()[0]:.2f} after; change detection "
        f"{'off' if args.no_ledger else 'on (new ledger per first sync)'}.\n"
        "Baseline: a singer-sdk target whose sink does nothing, validation off, the SDK's reader "
        "(MsgSpecReader over stdin bytes). Peaks of RSS and PSS are of the whole process tree "
        "(target + its mapping workers, summed); CPU includes the workers.\n"
    )
    print(table(rows))
    rounds = [
        f"  {row.scenario:<30} {'  '.join(f'{w:.2f}' for w in row.walls)}"
        for row in rows
        if len(row.walls) > 1
    ]
    if rounds:
        print("\nwall s, every round:", *rounds, sep="\n")
    if any(row.rejected_429 for row in rows):
        sys.exit(
            "the sandbox answered 429: the client's own rate limit let too many requests through"
        )


if __name__ == "__main__":
    main()
