"""The real `meltano run tap-postgres target-customerio`: embedded PostgreSQL -> sandbox workspace.

Night 1 syncs the sample database into an empty sandbox; night 2 changes a few rows
(`demo.sample_data.mutate`) and syncs again through Meltano's state backend. The project is the
repository's own meltano.yml and plugins/, copied into a temporary directory with its own
`.meltano` (system database = state backend, run directory, logs); only the installed plugin
venvs are shared, through symlinks into the repository's `.meltano/` (installed once, by
`make meltano-install`, or by the `meltano` fixture below when missing). Ports, the Track API URL
and the output files come in as env vars, which Meltano ranks above meltano.yml's config (but
not above the `demo` environment's own `env:` block, which fixes the sandbox credentials and the
PostgreSQL password: the fixtures use those same values).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from demo.sample_data import mutate
from target_customerio.sandbox import Sandbox
from tests.pg_fixtures import postgres as postgres  # noqa: PLC0414  (fixture; `as` avoids F811)

REPO = Path(__file__).resolve().parents[1]
SYS_DIR = REPO / ".meltano"  # where `meltano install` put the plugin venvs (shared, read-only)
MELTANO_VERSION = "4.4.1"
PLUGIN_EXECUTABLES = [
    SYS_DIR / "extractors" / "tap-postgres" / "venv" / "bin" / "tap-postgres",
    SYS_DIR / "loaders" / "target-customerio" / "venv" / "bin" / "target-customerio",
]
SITE_ID, API_KEY = "sandbox-site", "sandbox-key"  # the demo environment's sandbox credentials
APP_API_KEY = "sandbox-app-key"
STATE_ID = "demo:tap-postgres-to-target-customerio"
RUN_TIMEOUT_S = 150
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
MAX_AGE_SQL = "interval '3 days'"  # the routes' max_age

# view -> (event names, dedupe key column, timestamp column)
MIRROR_VIEWS = ["vip_customers", "vip_segment"]  # FULL_TABLE views, mirrored
EVENT_VIEWS = {
    "checkout_started_events": ("event_key", "started_at"),
    "order_placed_events": ("order_id", "placed_at"),
    "order_fulfilled_events": ("order_id", "fulfilled_at"),
    "refund_issued_events": ("refund_id", "issued_at"),
    "subscription_events": ("event_key", "occurred_at"),
}
VIEW_OF_EVENT = {
    "checkout_started": "checkout_started_events",
    "order_placed": "order_placed_events",
    "order_fulfilled": "order_fulfilled_events",
    "refund_issued": "refund_issued_events",
    "subscription_paused": "subscription_events",
    "subscription_canceled": "subscription_events",
}


# ---- Meltano: installed once, each test module gets its own project directory ------------------


def _meltano_bin() -> Path:
    explicit = os.environ.get("MELTANO")
    return Path(explicit) if explicit else REPO / ".venv-meltano" / "bin" / "meltano"


@pytest.fixture(scope="session")
def meltano() -> Path:
    """The Meltano executable, with tap-postgres and target-customerio installed in .meltano/.

    `make test` installs both beforehand (`make meltano-install`); when pytest runs alone on a
    fresh clone this does the same, once, under a lock so parallel sessions do not collide.
    """
    binary = _meltano_bin()
    lock_path = Path(tempfile.gettempdir()) / "target-customerio-meltano-install.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            venv = REPO / ".venv-meltano"
            _check([sys.executable, "-m", "venv", str(venv)], REPO)
            pip = str(venv / "bin" / "pip")
            _check([pip, "install", "-q", f"meltano=={MELTANO_VERSION}"], REPO)
        if not all(path.exists() for path in PLUGIN_EXECUTABLES):
            _check([str(binary), "install", "tap-postgres", "target-customerio"], REPO)
    return binary


def _check(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed:\n{output}")


@dataclass
class Project:
    """A temporary copy of the Meltano project, wired to one PostgreSQL and one sandbox."""

    root: Path
    meltano: Path
    env: dict[str, str]
    runs: int = 0
    logs: list[str] = field(default_factory=list)

    def run(self) -> dict[str, Any]:
        """`meltano --environment=demo run tap-postgres target-customerio`; the run report."""
        self.runs += 1
        report = self.root / "output" / f"report-{self.runs}.json"
        rejects = self.root / "output" / f"rejects-{self.runs}.jsonl"
        env = {
            **self.env,
            "TARGET_CUSTOMERIO_REPORT_FILE": str(report),
            "TARGET_CUSTOMERIO_REJECT_FILE": str(rejects),
        }
        proc = subprocess.run(
            [str(self.meltano), "--environment=demo", "run", "tap-postgres", "target-customerio"],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        self.logs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"meltano run failed ({proc.returncode}):\n{_tail(proc)}"
        return json.loads(report.read_text())

    def rejects(self, run: int) -> list[dict]:
        path = self.root / "output" / f"rejects-{run}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def state(self) -> dict[str, Any]:
        proc = subprocess.run(
            [str(self.meltano), "--environment=demo", "state", "get", STATE_ID],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, _tail(proc)
        return json.loads(proc.stdout)


def _tail(proc: subprocess.CompletedProcess, lines: int = 40) -> str:
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-lines:])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    db = tmp_path_factory.mktemp("sandbox") / "sandbox.sqlite"
    segments = str(Path(__file__).resolve().parent.parent / "demo" / "segments.json")
    with Sandbox(
        site_id=SITE_ID,
        api_key=API_KEY,
        app_api_key=APP_API_KEY,  # the demo environment verifies 50 people and reads campaigns
        db_path=str(db),
        segments_file=segments,
    ) as sb:
        yield sb  # with the demo's segments: the project's segment route adds to "VIP (from SQL)"


@pytest.fixture(scope="module")
def project(meltano, postgres, sandbox, tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp("meltano-project")
    shutil.copy(REPO / "meltano.yml", root / "meltano.yml")
    shutil.copytree(REPO / "plugins", root / "plugins")
    (root / ".meltano").mkdir()
    for kind in ("extractors", "loaders"):
        (root / ".meltano" / kind).symlink_to(SYS_DIR / kind, target_is_directory=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MELTANO_", "TAP_POSTGRES", "TARGET_CUSTOMERIO", "TAP_MSSQL"))
    }
    env.update(
        {
            "MELTANO_DATABASE_URI": f"sqlite:///{root / '.meltano' / 'meltano.db'}",
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "TAP_POSTGRES_HOST": "127.0.0.1",
            "TAP_POSTGRES_PORT": str(postgres.port),
            "TARGET_CUSTOMERIO_TRACK_API_URL": sandbox.url,
            "TARGET_CUSTOMERIO_APP_API_URL": sandbox.url,
        }
    )
    return Project(root=root, meltano=meltano, env=env)


# ---- what the database says should land ---------------------------------------------------------


def query(dsn: str, sql: str, *args: Any) -> list[tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def expected_events(dsn: str, since: datetime | None = None) -> dict[str, dict[Any, tuple]]:
    """view -> {dedupe key: (customer_id, unix seconds)} of the events the routes must send:
    within max_age, with a customer id, and (when `since` is given) at or after it."""
    out: dict[str, dict[Any, tuple]] = {}
    for view, (key, ts) in EVENT_VIEWS.items():
        sql = (
            f"SELECT DISTINCT {key}, customer_id, extract(epoch FROM {ts})::bigint FROM {view}"
            f" WHERE customer_id IS NOT NULL AND {ts} >= now() - {MAX_AGE_SQL}"
        )
        rows = query(dsn, sql + (f" AND {ts} >= %s" if since else ""), *([since] if since else []))
        out[view] = {row[0]: (row[1], row[2]) for row in rows}
    return out


def event_key(event: dict) -> Any:
    """The source dedupe key of a landed event, rebuilt from its data (event_key is excluded)."""
    data = event["attributes"]
    if event["name"] == "checkout_started":
        return f"checkout:{data['checkout_id']}"
    if event["name"] in ("order_placed", "order_fulfilled"):
        return data["order_id"]
    if event["name"] == "refund_issued":
        return data["refund_id"]
    return f"{event['name']}:{data['subscription_id']}:{event['timestamp']}"


def landed_events(events: list[dict]) -> dict[str, dict[Any, dict]]:
    out: dict[str, dict[Any, dict]] = {view: {} for view in EVENT_VIEWS}
    for event in events:
        view = VIEW_OF_EVENT[event["name"]]
        key = event_key(event)
        assert key not in out[view], f"{event['name']} {key} is stored twice"
        out[view][key] = event
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


# ---- the test ---------------------------------------------------------------------------------


def test_meltano_run_twice_sends_everything_then_only_changes(project, postgres, sandbox):
    dsn = postgres.dsn
    rows = {
        view: query(dsn, f"SELECT count(*) FROM {view}")[0][0]
        for view in ["customer_profiles", *EVENT_VIEWS]
    }
    guests = {
        view: query(dsn, f"SELECT count(*) FROM {view} WHERE customer_id IS NULL")[0][0]
        for view in EVENT_VIEWS
    }
    expected = expected_events(dsn)

    # ---- night 1: everything ----
    started = time.monotonic()
    report = project.run()
    night1_seconds = time.monotonic() - started
    night1_end = int(time.time())
    streams = report["streams"]
    assert report["status"] == "ok", report
    # the demo environment's verify_sample: 50 people read back, every route covered
    assert report["verification"]["ok"] == report["verification"]["sampled"] == 50
    assert set(report["verification"]["covered"]) == set(streams) - {"public-vip_segment"}
    assert set(streams) == {f"public-{view}" for view in [*rows, *MIRROR_VIEWS]}
    vips = query(dsn, "SELECT count(*) FROM vip_customers")[0][0]
    for view in MIRROR_VIEWS:  # read whole (FULL_TABLE); their own tests: tests/test_demo_mirror.py
        assert streams[f"public-{view}"]["received"] == vips, view
    assert streams["public-vip_customers"]["sent"] == vips

    # Report: every row received; people all sent; events sent once per key, old ones skipped.
    assert streams["public-customer_profiles"] == {
        **streams["public-customer_profiles"],
        "received": rows["customer_profiles"],
        "sent": rows["customer_profiles"],
        "rejected": 0,
        "skipped": 0,
    }
    for view in EVENT_VIEWS:
        tally = streams[f"public-{view}"]
        assert tally["received"] == rows[view], view
        assert tally["sent"] == len(expected[view]), view
        assert tally["rejected"] == guests[view], (view, tally["rejected_by_reason"])
        assert tally["sent"] + tally["rejected"] + tally["skipped"] == tally["received"], view
        assert tally["skipped_by_reason"].get("stale", 0) > 0, (view, "max_age skipped nothing")
    orders = streams["public-order_placed_events"]
    distinct_orders = query(dsn, "SELECT count(DISTINCT order_id) FROM order_placed_events")[0][0]
    assert rows["order_placed_events"] > distinct_orders  # the dirty line-item join
    assert orders["skipped_by_reason"]["duplicate"] > 0
    # The guest checkout (no customer_id) is dead-lettered with its reason, not sent.
    rejects = project.rejects(1)
    assert [(r["stream"], r["reason"], r["field"]) for r in rejects] == [
        ("public-checkout_started_events", "missing_identifier", "customer_id")
    ] * guests["checkout_started_events"]

    # People: one per customer row, keyed by id; emails trimmed and lower-cased.
    people = {p["id"]: p for p in sandbox.people()}
    assert all(p["id"] for p in sandbox.people()), "a person without an id (identifier-less row?)"
    profiles = query(
        dsn,
        """
        SELECT customer_id, email, email_opt_in, sms_opt_in, is_subscriber, subscription_status,
               last_order_at, orders_count, lifetime_value, next_reorder_due_at, updated_at
        FROM customer_profiles""",
    )
    assert set(people) == {row[0] for row in profiles}
    for (
        cid,
        email,
        email_in,
        sms_in,
        is_sub,
        sub_status,
        last_order,
        orders_count,
        ltv,
        reorder,
        updated,
    ) in profiles:
        person, attrs = people[cid], people[cid]["attributes"]
        clean = (email or "").strip().lower() or None
        assert person["email"] == clean, cid
        assert attrs.get("email") == clean, cid
        for name, value in [
            ("email_opt_in", email_in),
            ("sms_opt_in", sms_in),
            ("is_subscriber", is_sub),
        ]:
            assert attrs[name] is value, (cid, name, attrs[name])
        assert attrs["subscription_status"] == sub_status
        assert type(attrs["orders_count"]) is int and attrs["orders_count"] == orders_count
        assert _number(attrs["lifetime_value"]), (cid, attrs["lifetime_value"])
        assert Decimal(str(attrs["lifetime_value"])) == ltv, cid
        for name, value in [
            ("last_order_at", last_order),
            ("next_reorder_due_at", reorder),
            ("updated_at", updated),
        ]:
            if value is None:
                assert name not in attrs or attrs[name] is None, (cid, name)
            else:
                assert type(attrs[name]) is int and attrs[name] == _unix(value), (cid, name)
    jane = people["C000001"]
    assert jane["email"] == "jane.doe@example.com"  # "  Jane.Doe@Example.COM " at the source

    # Events: names, one per dedupe key (order_placed once per order), ULIDs, source timestamps.
    events = sandbox.events()
    assert Counter(e["name"] for e in events).keys() == set(VIEW_OF_EVENT)
    assert len({e["id"] for e in events}) == len(events)
    assert all(ULID.match(e["id"]) for e in events)
    landed = landed_events(events)
    for view, keys in expected.items():
        assert set(landed[view]) == set(keys), view
        for key, (customer_id, ts) in keys.items():
            event = landed[view][key]
            assert event["person_id"] == customer_id and event["timestamp"] == ts, (view, key)
    placed = next(iter(landed["order_placed_events"].values()))["attributes"]
    assert _number(placed["total"]) and type(placed["order_id"]) is int
    assert "sku" not in placed  # a line-item column, excluded by the route
    assert type(placed["placed_at"]) is int
    counters = sandbox.counters()
    assert counters["duplicate_events_dropped"] == 0
    assert counters["events_accepted"] == len(events) == sum(map(len, expected.values()))
    assert (
        counters["ops_person_identify"] == rows["customer_profiles"] + vips
    )  # + the vip attribute

    # Meltano kept the bookmarks in its state backend (the project's own system database).
    bookmarks = project.state()["singer_state"]["bookmarks"]
    incremental = set(streams) - {f"public-{view}" for view in MIRROR_VIEWS}
    bookmarks = {stream: mark for stream, mark in bookmarks.items() if stream in incremental}
    assert set(bookmarks) == incremental
    last_profile_change = max(row[10] for row in profiles)

    # ---- night 2: a few rows change at the source ----
    event_ids_before = {e["id"] for e in events}
    time.sleep(max(0.0, night1_end + 1.1 - time.time()))  # identifies of night 2 are later
    changes = mutate(dsn)
    reread = {
        row[0]
        for row in query(
            dsn,
            "SELECT customer_id FROM customer_profiles WHERE updated_at >= %s",
            last_profile_change,
        )
    }
    on_bookmark = reread - set(changes["changed_customer_ids"])
    assert set(changes["changed_customer_ids"]) <= reread
    assert len(on_bookmark) <= 2  # tap-postgres re-reads only the row(s) on the bookmark
    sendable = expected_events(dsn)  # the new guest checkout has no customer id: not sendable
    new_keys = {
        view: {k for k in keys if k in sendable[view]}
        for view, keys in changes["new_event_keys"].items()
    }

    started = time.monotonic()
    report2 = project.run()
    night2_seconds = time.monotonic() - started
    streams2 = report2["streams"]
    assert report2["status"] == "ok", report2

    # Only the changed customers were identified again: tap-postgres re-reads the row on the
    # bookmark, and the ledger (kept between the two meltano runs) knows it is unchanged.
    profiles2 = streams2["public-customer_profiles"]
    changed = set(changes["changed_customer_ids"])
    assert profiles2["received"] == len(reread) and profiles2["sent"] == len(changed)
    assert profiles2["skipped_by_reason"] == (
        {"unchanged": len(on_bookmark)} if on_bookmark else {}
    )
    identified = {p["id"] for p in sandbox.people() if p["updated"] > night1_end}
    assert identified == changed
    counters2 = sandbox.counters()
    assert counters2["ops_person_identify"] - counters["ops_person_identify"] == len(changed)
    people2 = {p["id"]: p for p in sandbox.people()}
    assert len(people2) == len(people)  # no new or duplicate profile
    assert people2["C000001"]["attributes"]["sms_opt_in"] is False
    assert people2["C000002"]["email"] == "sam.okafor@example.com"
    assert people2["C000004"]["attributes"]["orders_count"] == (
        people["C000004"]["attributes"]["orders_count"] + 1
    )
    newest = max(people2)
    assert people2[newest]["attributes"]["last_name"].endswith("-Larsen")

    # Only the new events were sent and stored; the re-read boundary events were known to the
    # ledger and not sent again (were they, their ULID would make the workspace drop them).
    events2 = sandbox.events()
    landed2 = landed_events(events2)
    new_events = [e for e in events2 if e["id"] not in event_ids_before]
    assert {
        view: {k for k in landed2[view] if landed2[view][k]["id"] not in event_ids_before}
        for view in EVENT_VIEWS
    } == new_keys
    assert len(new_events) == sum(map(len, new_keys.values())) > 0
    sent_events2 = sum(streams2[f"public-{view}"]["sent"] for view in EVENT_VIEWS)
    assert counters2["duplicate_events_dropped"] == 0
    assert sent_events2 == len(new_events)
    reread_events = sum(
        streams2[f"public-{view}"]["skipped_by_reason"].get("unchanged", 0) for view in EVENT_VIEWS
    )
    assert reread_events > 0
    assert counters2["events_accepted"] == len(events2)
    assert streams2["public-checkout_started_events"]["rejected_by_reason"] == {
        "missing_identifier": 1
    }  # the new guest checkout
    assert all(
        tally["received"] < 10 for stream, tally in streams2.items() if stream in incremental
    ), streams2

    bookmarks2 = project.state()["singer_state"]["bookmarks"]
    for stream, mark in bookmarks.items():
        assert bookmarks2[stream]["replication_key_value"] >= mark["replication_key_value"]
    assert bookmarks2 != bookmarks
    print(
        f"\nmeltano run: night 1 {night1_seconds:.1f} s ({report['totals']}), "
        f"night 2 {night2_seconds:.1f} s ({report2['totals']}); "
        f"re-read events the ledger did not send again: {reread_events}"
    )
