"""The SQL Server path, exercised through tap-mssql's own code (see tests/mssql/README.md).

Each test runs the real tap-mssql 2.6.5 (discovery, FULL_TABLE, INCREMENTAL, LOG_BASED) in its
own venv against the in-memory stand-in SQL Server and checks the Singer messages it writes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TAP_PYTHON = ROOT / ".venv-tap-mssql" / "bin" / "python"
HARNESS = ROOT / "tests" / "mssql" / "run_tap.py"
SAMPLE = ROOT / "tests" / "mssql" / "sample_output.jsonl"

pytestmark = pytest.mark.skipif(
    not TAP_PYTHON.exists(),
    reason=f"{TAP_PYTHON.relative_to(ROOT)} is missing; create it with: python3 -m venv "
    ".venv-tap-mssql && .venv-tap-mssql/bin/pip install tap-mssql==2.6.5",
)

CONFIG = {
    "host": "sqlserver.invalid",
    "port": 1433,
    "user": "meltano",
    "password": "not-used",
    "database": "shop",
}
DATETIME2 = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{7}$")  # naive, space, 100 ns
DATETIMEOFFSET_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{7})?Z$")
UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
Message = dict[str, Any]


def run_tap(
    workdir: Path,
    *args: str,
    catalog: dict | None = None,
    state: dict | None = None,
    tz: str = "UTC",
    query_log: Path | None = None,
) -> list[Message]:
    """Run the harness; in sync mode every stdout line must be a Singer message (exact numbers)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.json"
    config.write_text(json.dumps(CONFIG))
    argv = [str(TAP_PYTHON), str(HARNESS), "--config", str(config), *args]
    for name, payload in (("catalog", catalog), ("state", state)):
        if payload is not None:
            path = workdir / f"{name}.json"
            path.write_text(json.dumps(payload, default=float))  # multipleOf: Decimal -> float
            argv += [f"--{name}", str(path)]
    if query_log:
        argv += ["--query-log", str(query_log)]
    env = {**os.environ, "TZ": tz}
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    if "discover" in args:  # Catalog.dump() writes one indented JSON document
        return [json.loads(proc.stdout, parse_float=Decimal)]
    (workdir / "stdout.jsonl").write_text(proc.stdout)
    return parse(proc.stdout)


def parse(jsonl: str) -> list[Message]:
    return [json.loads(line, parse_float=Decimal) for line in jsonl.splitlines()]


def sync(
    workdir: Path, discovered: dict, streams: dict[str, dict], snapshot: str = "latest", **kw: Any
) -> list[Message]:
    """Select the given streams (stream-level metadata as given) and run a sync."""
    catalog = {"streams": []}
    for entry in copy.deepcopy(discovered["streams"]):
        if entry["tap_stream_id"] in streams:
            top = next(m for m in entry["metadata"] if m["breadcrumb"] == [])
            top["metadata"].update({"selected": True, **streams[entry["tap_stream_id"]]})
            catalog["streams"].append(entry)
    return run_tap(workdir, "--mode", "sync", "--snapshot", snapshot, catalog=catalog, **kw)


def of(messages: list[Message], kind: str, stream: str | None = None) -> list[Message]:
    return [
        m for m in messages if m["type"] == kind and (stream is None or m.get("stream") == stream)
    ]


def records(messages: list[Message], stream: str) -> list[dict]:
    return [m["record"] for m in of(messages, "RECORD", stream)]


def final_state(messages: list[Message]) -> dict:
    return of(messages, "STATE")[-1]["value"]


FULL_TABLE = {
    "dbo-customers": {"replication-method": "FULL_TABLE"},
    "dbo-order_events": {"replication-method": "FULL_TABLE", "view-key-properties": ["event_id"]},
}
LOG_BASED = {"dbo-customers": {"replication-method": "LOG_BASED"}}
INCREMENTAL = {
    "dbo-order_events": {
        "replication-method": "INCREMENTAL",
        "replication-key": "occurred_at",
        "view-key-properties": ["event_id"],
    }
}


@pytest.fixture(scope="module")
def discovered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    (catalog,) = run_tap(tmp_path_factory.mktemp("discover"), "--mode", "discover")
    return catalog


@pytest.fixture(scope="module")
def full_table_dir(tmp_path_factory: pytest.TempPathFactory, discovered: dict) -> Path:
    work = tmp_path_factory.mktemp("full")
    sync(work, discovered, FULL_TABLE)
    return work


@pytest.fixture(scope="module")
def full_table(full_table_dir: Path) -> list[Message]:
    return parse((full_table_dir / "stdout.jsonl").read_text())


# ---- discovery ------------------------------------------------------------------------------


def test_discovery_names_streams_schema_dash_table(discovered: dict) -> None:
    by_id = {s["tap_stream_id"]: s for s in discovered["streams"]}
    assert set(by_id) == {"dbo-customers", "dbo-order_events"}
    assert by_id["dbo-customers"]["stream"] == "customers"  # sync messages use the tap_stream_id
    top = {
        k: next(m["metadata"] for m in s["metadata"] if m["breadcrumb"] == [])
        for k, s in by_id.items()
    }
    assert top["dbo-customers"] == {
        "selected-by-default": False,
        "database-name": "dbo",
        "is-view": False,
        "table-key-properties": ["customer_id"],
    }
    assert top["dbo-order_events"]["is-view"] is True
    assert top["dbo-order_events"]["table-key-properties"] == []  # views: set view-key-properties


@pytest.mark.parametrize(
    "stream, column, sql_type, expected",
    [
        (
            "dbo-customers",
            "customer_id",
            "int",
            {
                "type": ["null", "integer"],
                "minimum": -(2**31),
                "maximum": 2**31 - 1,
                "inclusion": "automatic",
            },
        ),
        ("dbo-customers", "email", "nvarchar", {"type": ["null", "string"], "maxLength": 320}),
        (
            "dbo-customers",
            "last_order_date",
            "datetime2",
            {
                "type": ["null", "string"],
                "format": "date-time",
                "additionalProperties": {"sql_data_type": "datetime2"},
            },
        ),
        (
            "dbo-customers",
            "lifetime_value",
            "money",
            {"type": ["null", "number"], "multipleOf": Decimal("0.0001")},
        ),
        ("dbo-customers", "refund_flag", "bit", {"type": ["null", "boolean"]}),
        ("dbo-customers", "external_ref", "uniqueidentifier", {"type": ["null", "string"]}),
        (
            "dbo-customers",
            "created_at",
            "datetimeoffset",
            {
                "type": ["null", "string"],
                "format": "date-time",
                "additionalProperties": {"sql_data_type": "datetimeoffset"},
            },
        ),
        (
            "dbo-order_events",
            "occurred_at",
            "datetime2",
            {"type": ["null", "string"], "format": "date-time"},
        ),
        (
            "dbo-order_events",
            "amount",
            "decimal",
            {"type": ["null", "number"], "multipleOf": Decimal("0.01")},
        ),
        (
            "dbo-order_events",
            "legacy_time",
            "datetime",
            {
                "type": ["null", "string"],
                "format": "date-time",
                "additionalProperties": {"sql_data_type": "datetime"},
            },
        ),
    ],
)
def test_discovery_json_schema_per_sql_type(
    discovered: dict, stream: str, column: str, sql_type: str, expected: dict
) -> None:
    entry = next(s for s in discovered["streams"] if s["tap_stream_id"] == stream)
    prop = entry["schema"]["properties"][column]
    assert {k: prop.get(k) for k in expected} == expected
    if sql_type == "uniqueidentifier":
        assert "format" not in prop and "maxLength" not in prop
    md = next(m["metadata"] for m in entry["metadata"] if m["breadcrumb"] == ["properties", column])
    assert md == {"selected-by-default": True, "sql-datatype": sql_type}


# ---- FULL_TABLE -----------------------------------------------------------------------------


def test_full_table_message_sequence(full_table: list[Message]) -> None:
    streams = {m["stream"] for m in full_table if "stream" in m}
    assert streams == {"dbo-customers", "dbo-order_events"}
    for stream in streams:
        kinds = [m["type"] for m in full_table if m.get("stream") == stream]
        # SCHEMA, ACTIVATE_VERSION, RECORD..., ACTIVATE_VERSION (same version throughout)
        assert kinds[:2] == ["SCHEMA", "ACTIVATE_VERSION"] and kinds[-1] == "ACTIVATE_VERSION"
        assert set(kinds[2:-1]) == {"RECORD"}
        versions = {
            m["version"] for m in full_table if m.get("stream") == stream and m["type"] != "SCHEMA"
        }
        assert len(versions) == 1
    assert of(full_table, "SCHEMA", "dbo-order_events")[0]["key_properties"] == ["event_id"]
    assert final_state(full_table) == {
        "currently_syncing": None,
        "bookmarks": {
            "dbo-customers": {"initial_full_table_complete": True},
            "dbo-order_events": {"initial_full_table_complete": True},
        },
    }


def test_full_table_customer_values(full_table: list[Message]) -> None:
    rows = {r["customer_id"]: r for r in records(full_table, "dbo-customers")}
    assert sorted(rows) == [1, 2, 3, 5, 6]  # 4 was deleted at the "latest" moment
    ada, grace, linus = rows[1], rows[2], rows[3]
    # datetime2: naive SQL Server text, 7 fractional digits, space separator, no zone
    assert ada["last_order_date"] == "2025-11-16 14:02:11.4830000"
    assert all(DATETIME2.match(r["updated_at"]) for r in rows.values())
    assert linus["last_order_date"] is None
    # datetimeoffset: CONVERT(..., 127) shifts to UTC ('Z'); +02:00 09:30 -> 07:30Z
    assert ada["created_at"] == "2023-04-02T07:30:00.1234567Z"
    assert linus["created_at"] == "2025-01-06T03:10:05.5000000Z"  # -05:00 crosses midnight
    assert all(DATETIMEOFFSET_UTC.match(r["created_at"]) for r in rows.values())
    # money: a JSON number with the 4 places pymssql returns
    assert (
        ada["lifetime_value"] == Decimal("1250.5000") and str(ada["lifetime_value"]) == "1250.5000"
    )
    assert rows[5]["lifetime_value"] == Decimal("18250.75")
    # bit: JSON booleans, NULL stays null
    assert (ada["refund_flag"], grace["refund_flag"], linus["refund_flag"]) == (False, True, None)
    # uniqueidentifier: lower-case canonical text (SSMS shows upper case)
    assert ada["external_ref"] == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert linus["external_ref"] is None
    assert all(UUID_TEXT.match(r["external_ref"]) for r in rows.values() if r["external_ref"])
    # strings arrive untouched: mixed-case emails, a customer without email
    assert ada["email"] == "Ada.Lovelace@Example.com" and linus["email"] is None


def test_full_table_numbers_respect_multiple_of(full_table: list[Message]) -> None:
    for stream, column in (("dbo-customers", "lifetime_value"), ("dbo-order_events", "amount")):
        step = of(full_table, "SCHEMA", stream)[0]["schema"]["properties"][column]["multipleOf"]
        for row in records(full_table, stream):
            assert row[column] % step == 0, (stream, row)


def test_full_table_order_event_values(full_table: list[Message]) -> None:
    rows = {r["event_id"]: r for r in records(full_table, "dbo-order_events")}
    placed, refund = rows["order:1002:placed"], rows["refund:1002"]
    assert (placed["event_name"], refund["event_name"]) == ("Order Placed", "Refund Issued")
    assert refund["occurred_at"] == "2025-11-21 09:12:29.8123456"  # two days after the order
    assert all(DATETIME2.match(r["occurred_at"]) for r in rows.values())
    assert (
        refund["amount"] == Decimal("89.99") and str(rows["order:1003:placed"]["amount"]) == "42.50"
    )
    # legacy datetime is not CONVERTed: pymssql datetime + "+00:00", although it is local time,
    # and datetime's 1/300 s rounding moves 23:59:59.9999999 into the next day
    assert rows["order:1003:placed"]["legacy_time"] == "2025-11-20T09:15:02.123000+00:00"
    assert placed["legacy_time"] == "2025-11-19T20:45:00+00:00"  # isoformat drops zero µs
    assert rows["order:1004:placed"]["legacy_time"] == "2025-11-22T00:00:00+00:00"
    assert rows["order:1005:placed"]["legacy_time"] is None


def test_sample_output_is_real_harness_output(full_table_dir: Path) -> None:
    """tests/mssql/sample_output.jsonl is this FULL_TABLE run's stdout (UPDATE_SAMPLE=1 rewrites
    it)."""
    fresh = (full_table_dir / "stdout.jsonl").read_text()
    if os.environ.get("UPDATE_SAMPLE") == "1":
        SAMPLE.write_text(fresh)

    def normalise(jsonl: str) -> str:  # the stream version and extraction time change per run
        jsonl = re.sub(r'"version":\d+', '"version":0', jsonl)
        return re.sub(r'"time_extracted":"[^"]+"', '"time_extracted":"T"', jsonl)

    assert normalise(SAMPLE.read_text()) == normalise(fresh)


# ---- LOG_BASED (CDC) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdc_runs(tmp_path_factory: pytest.TempPathFactory, discovered: dict) -> list[list[Message]]:
    """Three runs: initial load (moment 'initial'), changes since, and an idle re-run."""
    work = tmp_path_factory.mktemp("cdc")
    first = sync(work / "1", discovered, LOG_BASED, snapshot="initial")
    second = sync(work / "2", discovered, LOG_BASED, state=final_state(first))
    third = sync(work / "3", discovered, LOG_BASED, state=final_state(second))
    return [first, second, third]


def test_cdc_initial_load_is_all_inserts(cdc_runs: list[list[Message]]) -> None:
    first = cdc_runs[0]
    rows = records(first, "dbo-customers")
    assert [r["customer_id"] for r in rows] == [1, 2, 3, 4, 5]
    assert {r["_sdc_operation_type"] for r in rows} == {"I"}
    assert rows[0]["_sdc_lsn_commit_timestamp"] == "1900-01-01T00:00:00+00:00"
    assert (
        rows[0]["_sdc_lsn_value"] == "00000000000000000000" and rows[0]["_sdc_lsn_operation"] == 2
    )
    assert final_state(first)["bookmarks"]["dbo-customers"] == {
        "lsn": "0000002d000001d80003",
        "initial_full_table_complete": True,
    }


def test_cdc_changes_carry_operation_type(cdc_runs: list[list[Message]]) -> None:
    second = cdc_runs[1]
    (schema,) = of(second, "SCHEMA", "dbo-customers")
    props = schema["schema"]["properties"]
    assert props["_sdc_operation_type"] == {
        "description": "Source operation I=Insert, D=Delete, U=Update",
        "format": "string",
        "type": ["null", "string"],
    }
    assert props["_sdc_lsn_deleted_at"]["format"] == "date-time"
    assert schema["bookmark_properties"] == [None]  # no replication-key for LOG_BASED
    rows = records(second, "dbo-customers")
    assert [
        (r["customer_id"], r["_sdc_operation_type"], r["_sdc_lsn_operation"]) for r in rows
    ] == [(2, "U", 4), (6, "I", 2), (4, "D", 1)]  # in LSN order
    update, insert, delete = rows
    assert update["refund_flag"] is True and update["lifetime_value"] == Decimal("0.0000")
    assert update["_sdc_lsn_deleted_at"] is None
    assert update["_sdc_lsn_commit_timestamp"] == "2025-11-21T09:12:30.447000+00:00"  # server local
    assert insert["last_order_date"] == "2025-11-21 23:59:59.9999999"
    # a delete carries the whole before-image, so the person can still be identified
    assert delete["email"] == "MARGARET.Hamilton@EXAMPLE.COM"
    assert (
        delete["_sdc_lsn_deleted_at"]
        == delete["_sdc_lsn_commit_timestamp"]
        == "2025-11-22T07:30:00+00:00"
    )
    assert delete["_sdc_lsn_value"] == "0000002d000002080003"
    assert final_state(second)["bookmarks"]["dbo-customers"]["lsn"] == "0000002d000002080003"
    # one ACTIVATE_VERSION, at the end, with a fresh version (only the changed rows were sent)
    assert [m["type"] for m in second if m.get("stream")][-1] == "ACTIVATE_VERSION"
    assert len(of(second, "ACTIVATE_VERSION")) == 1


def test_cdc_idle_run_repeats_the_last_lsn(cdc_runs: list[list[Message]]) -> None:
    """tap-mssql quirk: if the server's max LSN has not moved, it re-reads that LSN's changes."""
    third = cdc_runs[2]
    assert [
        (r["customer_id"], r["_sdc_operation_type"]) for r in records(third, "dbo-customers")
    ] == [(4, "D")]
    assert final_state(third) == final_state(cdc_runs[1])


# ---- INCREMENTAL on the view ------------------------------------------------------------------


@pytest.fixture(scope="module")
def incremental_state(tmp_path_factory: pytest.TempPathFactory, discovered: dict) -> dict:
    first = sync(tmp_path_factory.mktemp("inc"), discovered, INCREMENTAL, snapshot="initial")
    assert [r["event_id"] for r in records(first, "dbo-order_events")] == [
        "order:1001:placed",
        "order:1002:placed",
        "order:1003:placed",
    ]
    return final_state(first)


def test_incremental_bookmark_is_the_naive_datetime2_text(incremental_state: dict) -> None:
    bookmark = incremental_state["bookmarks"]["dbo-order_events"]
    assert bookmark["replication_key"] == "occurred_at"
    assert bookmark["replication_key_value"] == "2025-11-20 09:15:02.1234567"


@pytest.mark.parametrize(
    "tz, literal, expected",
    [
        # >= on a millisecond-truncated bookmark: the boundary row comes again
        (
            "UTC",
            "2025-11-20 09:15:02.123",
            ["order:1003:placed", "order:1005:placed", "refund:1002", "order:1004:placed"],
        ),
        # the tap reads the naive bookmark as UTC, then datetime.fromtimestamp() makes it local to
        # the tap's machine: east of UTC the bookmark jumps forward and the late order 1005 is lost
        ("Europe/Berlin", "2025-11-20 10:15:02.123", ["refund:1002", "order:1004:placed"]),
    ],
)
def test_incremental_resume_depends_on_tap_timezone(
    tmp_path: Path,
    discovered: dict,
    incremental_state: dict,
    tz: str,
    literal: str,
    expected: list[str],
) -> None:
    log = tmp_path / "queries.sql"
    second = sync(tmp_path, discovered, INCREMENTAL, state=incremental_state, tz=tz, query_log=log)
    assert f'WHERE "occurred_at" >= \'{literal}\' ORDER BY "occurred_at" ASC' in log.read_text()
    assert [r["event_id"] for r in records(second, "dbo-order_events")] == expected
