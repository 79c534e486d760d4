"""SQL Server → Customer.io: tap-mssql's REAL output piped through the real target process.

The tap runs its own code (discovery, FULL_TABLE, INCREMENTAL, LOG_BASED, row conversion,
message serialisation) in its own venv against the stand-in SQL Server of tests/mssql/. Its stdout
lines go, unchanged, through `target-customerio` into the local Track API sandbox, and the tests
assert what the sandbox holds: attribute JSON types, unix-second dates, event names, ids and
timestamps, and what the run report counted.

The stand-in's clock is US Eastern (tests/mssql/fake_sqlserver.py): its datetime2 values are naive
local times, so the routes say `source_timezone: America/New_York`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from target_customerio.operations.delete import is_delete
from target_customerio.operations.event_ids import event_ulid
from target_customerio.operations.operation import Skipped
from tests.harness import API_KEY, SITE_ID, Run, run_target, target_config
from tests.operations.helpers import Kind
from tests.test_mssql_tap import (
    FULL_TABLE,
    INCREMENTAL,
    LOG_BASED,
    TAP_PYTHON,
    discovered,  # noqa: F401  (the module-scoped discovery fixture, shared)
    final_state,
    records,
    sync,
)

pytestmark = pytest.mark.skipif(
    not TAP_PYTHON.exists(),
    reason=".venv-tap-mssql is missing; create it with: make .venv-tap-mssql/bin/python",
)

SERVER_TZ = "America/New_York"
CUSTOMERS, ORDER_EVENTS = "dbo-customers", "dbo-order_events"
CUSTOMER_ROUTE = {
    "kind": "person",
    "identifier": {"field": "customer_id", "type": "id"},
    "attributes": {"rename": {"last_order_date": "last_order_at"}},
    "contract": "builtin:customer",
    "source_timezone": SERVER_TZ,
}
EVENT_ROUTE = {
    "kind": "event",
    "identifier": {"field": "customer_id", "type": "id"},
    "event_name_field": "event_name",
    "event_id": ["event_id"],
    "timestamp": "occurred_at",
    "source_timezone": SERVER_TZ,
}
ROUTES = {CUSTOMERS: CUSTOMER_ROUTE, ORDER_EVENTS: EVENT_ROUTE}


def at(wall_clock: str, zone: str = SERVER_TZ) -> int:
    """Unix seconds of a wall-clock time `YYYY-MM-DD hh:mm:ss` in a zone."""
    return int(dt.datetime.fromisoformat(wall_clock).replace(tzinfo=ZoneInfo(zone)).timestamp())


@dataclass
class TapRun:
    lines: list[str]  # the tap's stdout, byte for byte, as the target receives it
    messages: list[dict[str, Any]]

    @property
    def state(self) -> dict:
        return final_state(self.messages)


def tap(workdir: Path, discovered: dict, streams: dict[str, dict], **kw: Any) -> TapRun:
    messages = sync(workdir, discovered, streams, **kw)  # TZ=UTC, as docs/sqlserver.md says
    return TapRun((workdir / "stdout.jsonl").read_text().splitlines(), messages)


def deliver(sandbox, tmp: Path, lines: list[str], routes: dict | None = None, **extra: Any) -> Run:
    """One `target-customerio` run; it must succeed without a traceback."""
    tmp.mkdir(parents=True, exist_ok=True)
    run = run_target(target_config(sandbox.url, tmp, routes or ROUTES, **extra), lines, tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    return run


def stream_report(run: Run, stream: str) -> dict:
    assert run.report is not None
    return run.report["streams"][stream]


def people(sandbox) -> dict[str, dict]:
    return {p["id"]: p for p in sandbox.people()}


def events(sandbox) -> dict[str, dict]:
    """Events by the source's event_id (kept in the event data)."""
    return {e["attributes"]["event_id"]: e for e in sandbox.events()}


# ---- tap runs (module scope: each is one subprocess of the real tap) ---------------------------


@pytest.fixture(scope="module")
def full_table(tmp_path_factory: pytest.TempPathFactory, discovered: dict) -> TapRun:
    return tap(tmp_path_factory.mktemp("full"), discovered, FULL_TABLE)


@pytest.fixture(scope="module")
def incremental(tmp_path_factory: pytest.TempPathFactory, discovered: dict) -> list[TapRun]:
    """The event view read twice: at the 'initial' moment, then resumed at 'latest'."""
    work = tmp_path_factory.mktemp("inc")
    first = tap(work / "1", discovered, INCREMENTAL, snapshot="initial")
    second = tap(work / "2", discovered, INCREMENTAL, state=first.state)
    assert [r["event_id"] for r in records(second.messages, ORDER_EVENTS)] == [
        "order:1003:placed",  # the tap re-sends the boundary row (>= on its bookmark)
        "order:1005:placed",  # a store POS uploads an order two days after it was taken
        "refund:1002",  # the refund, two days after its order
        "order:1004:placed",
    ]
    return [first, second]


@pytest.fixture(scope="module")
def cdc(tmp_path_factory: pytest.TempPathFactory, discovered: dict) -> list[TapRun]:
    """dbo.customers by CDC: initial load (all I), then U/I/D changes, then an idle re-run."""
    work = tmp_path_factory.mktemp("cdc")
    first = tap(work / "1", discovered, LOG_BASED, snapshot="initial")
    second = tap(work / "2", discovered, LOG_BASED, state=first.state)
    third = tap(work / "3", discovered, LOG_BASED, state=second.state)
    return [first, second, third]


# ---- the customer view ------------------------------------------------------------------------


def test_customer_table_lands_with_the_types_segments_need(sandbox, tmp_path, full_table):
    lines = [x for x in full_table.lines if CUSTOMERS in x or '"STATE"' in x]
    run = deliver(sandbox, tmp_path, lines)
    assert stream_report(run, CUSTOMERS)["sent"] == 5 and run.rejects == []

    found = people(sandbox)
    assert set(found) == {"1", "2", "3", "5", "6"}  # customer_id int -> id "1"
    ada = found["1"]["attributes"]
    # datetime2 (naive, server local time) -> unix seconds of that local time
    assert ada["last_order_at"] == at("2025-11-16 14:02:11") and type(ada["last_order_at"]) is int
    assert "last_order_date" not in ada  # renamed by the route
    # 7 fractional digits are floored, never rounded into the next second (or day)
    assert found["6"]["attributes"]["last_order_at"] == at("2025-11-21 23:59:59")
    # datetimeoffset arrives as UTC 'Z' text: the same instant whatever source_timezone says
    assert ada["created_at"] == at("2023-04-02 07:30:00", "UTC")
    assert found["3"]["attributes"]["created_at"] == at("2025-01-06 03:10:05", "UTC")  # -05:00
    # money -> JSON number (integral values become integers), never "1250.5000"
    assert ada["lifetime_value"] == 1250.5 and type(ada["lifetime_value"]) is float
    assert found["5"]["attributes"]["lifetime_value"] == 18250.75
    assert (
        found["2"]["attributes"]["lifetime_value"] == 0
        and type(found["2"]["attributes"]["lifetime_value"]) is int
    )
    # bit -> boolean; NULL bit -> attribute not set
    assert ada["refund_flag"] is False and found["2"]["attributes"]["refund_flag"] is True
    assert "refund_flag" not in found["3"]["attributes"]
    # nvarchar, uniqueidentifier -> strings
    assert ada["vip_tier"] == "gold" and found["5"]["attributes"]["vip_tier"] == "platinum"
    assert ada["external_ref"] == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    # mixed-case email is lower-cased and becomes the email identifier too
    assert found["1"]["email"] == ada["email"] == "ada.lovelace@example.com"
    assert found["3"]["email"] is None  # a phone order: no email
    for person in found.values():
        assert "customer_id" not in person["attributes"]
        assert not [k for k in person["attributes"] if k.startswith("_sdc")]
        for name in ("last_order_at", "created_at", "updated_at"):
            assert type(person["attributes"].get(name, 0)) is int, (name, person)
    assert run.states[-1] == full_table.state


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "America/Chicago"])
def test_source_timezone_moves_datetime2_but_not_datetimeoffset(
    sandbox, tmp_path, full_table, zone
):
    routes = {CUSTOMERS: {**CUSTOMER_ROUTE, "source_timezone": zone}}
    lines = [x for x in full_table.lines if CUSTOMERS in x]
    deliver(sandbox, tmp_path, lines, routes)
    ada = people(sandbox)["1"]["attributes"]
    assert ada["last_order_at"] == at("2025-11-16 14:02:11", zone)
    assert ada["updated_at"] == at("2025-11-17 08:00:00", zone)
    assert ada["created_at"] == at("2023-04-02 07:30:00", "UTC")


# ---- the event view ---------------------------------------------------------------------------


def test_order_event_view_lands_with_source_time_and_deterministic_ids(
    sandbox, tmp_path, full_table
):
    contract = tmp_path / "order_events.schema.json"
    contract.write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["event_id", "amount"],
                "properties": {
                    "event_id": {"type": "string"},
                    "amount": {"type": "number", "minimum": 0},
                },
            }
        )
    )
    routes = {ORDER_EVENTS: {**EVENT_ROUTE, "contract": str(contract)}}
    lines = [x for x in full_table.lines if ORDER_EVENTS in x]
    run = deliver(sandbox, tmp_path / "run", lines, routes)
    assert stream_report(run, ORDER_EVENTS)["sent"] == 6 and run.rejects == []
    assert run.report["near_duplicate_event_names"] == {}

    found = events(sandbox)
    placed, refund = found["order:1002:placed"], found["refund:1002"]
    # "Order Placed" / "Refund Issued" from the view's event_name column
    assert (placed["name"], refund["name"]) == ("order_placed", "refund_issued")
    assert {e["name"] for e in found.values()} == {"order_placed", "refund_issued"}
    assert (placed["person_id"], refund["person_id"]) == ("2", "2")
    # the event time is the source's datetime2 in the server's zone, never sync time
    assert placed["timestamp"] == at("2025-11-19 20:45:00")
    assert refund["timestamp"] == at("2025-11-21 09:12:29")
    assert found["order:1004:placed"]["timestamp"] == at("2025-11-21 23:59:59")
    # the ULID is a pure function of (event name, event_id): pinned, so an upgrade never re-fires
    assert found["order:1001:placed"]["id"] == "1YBNYT64SC3BJ508Y5QET2CZ60"
    for key, event in found.items():
        assert event["id"] == event_ulid(event["name"], [key])
        assert type(event["timestamp"]) is int
    # decimal(12,2) -> number
    assert (
        refund["attributes"]["amount"] == 89.99
        and found["order:1001:placed"]["attributes"]["amount"] == 120
    )


def test_legacy_datetime_is_mislabelled_utc_and_lands_off_by_the_server_offset(
    sandbox, tmp_path, full_table
):
    """Documented pitfall: tap-mssql labels a legacy `datetime` (local time) as +00:00.

    The target cannot tell: the value says UTC, so `source_timezone` does not apply. Convert it in
    the view (or use datetime2/datetimeoffset). See docs/sqlserver.md.
    """
    lines = [x for x in full_table.lines if ORDER_EVENTS in x]
    deliver(sandbox, tmp_path, lines)
    order = events(sandbox)["order:1001:placed"]  # datetime2 and datetime hold the same wall clock
    assert order["timestamp"] == at("2025-11-16 14:02:11")  # datetime2 + source_timezone: right
    assert order["attributes"]["legacy_time"] == at("2025-11-16 14:02:11", "UTC")  # 5 h early
    assert order["timestamp"] - order["attributes"]["legacy_time"] == 5 * 3600


def test_incremental_reruns_fire_nothing_twice(sandbox, tmp_path, incremental):
    first, second = incremental
    run1 = deliver(sandbox, tmp_path / "1", first.lines)
    assert stream_report(run1, ORDER_EVENTS)["sent"] == 3
    run2 = deliver(sandbox, tmp_path / "2", second.lines)
    # the tap's boundary re-send of order 1003 reuses its ULID: Customer.io drops it
    assert stream_report(run2, ORDER_EVENTS)["sent"] == 4
    assert sandbox.counters()["duplicate_events_dropped"] == 1
    assert len(sandbox.events()) == 6 and set(events(sandbox)) == {
        "order:1001:placed",
        "order:1002:placed",
        "order:1003:placed",
        "order:1004:placed",
        "order:1005:placed",
        "refund:1002",
    }
    assert run2.states[-1] == second.state

    # the whole second sync again (a retried `meltano run`): every event dropped as a duplicate
    deliver(sandbox, tmp_path / "3", second.lines)
    assert sandbox.counters()["duplicate_events_dropped"] == 1 + 4
    assert len(sandbox.events()) == 6


def _max_age_opening_at(wall_clock: str) -> str:
    """A max_age whose window opens at a moment of the stand-in's history (Nov 2025).

    The target measures age from its own start, and the stand-in's rows are from 2025, so the
    guard is sized in hours from now: the window opens within the hour before `wall_clock`.
    """
    return f"{math.ceil((time.time() - at(wall_clock)) / 3600)}h"


@pytest.mark.parametrize("guard", [None, "2025-11-21 18:00:00"], ids=["no-max-age", "max-age"])
def test_a_refund_that_arrives_days_late(sandbox, tmp_path, incremental, guard):
    """The refund of order 1002 lands in a later sync than the order; the POS order 1005 too."""
    first, second = incremental
    route = dict(EVENT_ROUTE)
    if guard:
        route["max_age"] = _max_age_opening_at(guard)
    deliver(sandbox, tmp_path / "1", first.lines)
    run = deliver(sandbox, tmp_path / "2", second.lines, {ORDER_EVENTS: route})
    tally = stream_report(run, ORDER_EVENTS)
    found = events(sandbox)
    if guard is None:
        # sent with its true time (source datetime2 in the server's zone), not the sync time
        assert tally["sent"] == 4 and tally["skipped"] == 0
        refund = found["refund:1002"]
        assert refund["timestamp"] == at("2025-11-21 09:12:29")
        assert refund["received_at"] - refund["timestamp"] > 2 * 86400
        assert found["order:1005:placed"]["timestamp"] == at("2025-11-20 09:40:00")
    else:
        # older than max_age: skipped and counted (backfill guard), never fired as if new
        assert tally["sent"] == 1 and tally["skipped_by_reason"] == {"stale": 3}
        assert "refund:1002" not in found and "order:1005:placed" not in found
        assert found["order:1004:placed"]["timestamp"] == at("2025-11-21 23:59:59")
        assert run.rejects == []  # skipped is not rejected: nothing is wrong with the rows
    assert run.states[-1] == second.state


# ---- ACTIVATE_VERSION ------------------------------------------------------------------------


def test_activate_version_deletes_nothing(sandbox, tmp_path, discovered, full_table):
    """FULL_TABLE sends ACTIVATE_VERSION before and after the rows; a table swap would erase
    people."""
    kinds = [json.loads(x)["type"] for x in full_table.lines]
    assert kinds.count("ACTIVATE_VERSION") == 4
    run1 = deliver(sandbox, tmp_path / "1", full_table.lines)
    # a second full-table sync (a new table version) with only the customers stream
    again = tap(tmp_path / "tap", discovered, {CUSTOMERS: FULL_TABLE[CUSTOMERS]})
    run2 = deliver(sandbox, tmp_path / "2", again.lines)
    for run in (run1, run2):
        assert "not implemented by this target" not in run.stderr
    assert set(people(sandbox)) >= {"1", "2", "3", "5", "6"}
    assert len(sandbox.events()) == 6
    assert sandbox.counters().get("people_deleted", 0) == 0
    assert run2.states[-1] == again.state


# ---- CDC (LOG_BASED) ---------------------------------------------------------------------------


def _delete_person(sandbox, person_id: str) -> None:
    """Erase a person in the workspace, as a privacy request handled in Customer.io would."""
    op = {"type": "person", "action": "delete", "identifiers": {"id": person_id}}
    answer = requests.post(
        f"{sandbox.url}/api/v2/batch", json={"batch": [op]}, auth=(SITE_ID, API_KEY), timeout=10
    )
    assert answer.status_code == 200, answer.text


def test_cdc_inserts_and_updates_land_and_a_delete_never_resurrects(sandbox, tmp_path, cdc):
    first, second, third = cdc
    run1 = deliver(sandbox, tmp_path / "1", first.lines)
    assert stream_report(run1, CUSTOMERS)["sent"] == 5
    assert run1.states[-1] == first.state
    assert set(people(sandbox)) == {"1", "2", "3", "4", "5"}
    _delete_person(sandbox, "4")  # Margaret is erased in Customer.io too
    identified = sandbox.counters()["people_identified"]

    # U for 2, I for 6, D for 4 (the D row carries Margaret's whole row)
    ops = [
        (r["customer_id"], r["_sdc_operation_type"]) for r in records(second.messages, CUSTOMERS)
    ]
    assert ops == [(2, "U"), (6, "I"), (4, "D")]
    run2 = deliver(sandbox, tmp_path / "2", second.lines)
    tally = stream_report(run2, CUSTOMERS)
    assert (tally["received"], tally["sent"], tally["skipped_by_reason"]) == (3, 2, {"deleted": 1})
    assert sandbox.counters()["people_identified"] == identified + 2
    found = people(sandbox)
    assert "4" not in found  # not resurrected by an identify built from the deleted row
    grace = found["2"]["attributes"]
    assert grace["refund_flag"] is True and grace["lifetime_value"] == 0
    assert grace["updated_at"] == at("2025-11-21 09:12:30")
    assert found["6"]["attributes"]["last_order_at"] == at("2025-11-21 23:59:59")
    for person in found.values():  # _sdc_operation_type, _sdc_lsn_* are metadata, not attributes
        assert not [k for k in person["attributes"] if k.startswith("_sdc")], person
    assert run2.states[-1] == second.state

    # idle re-run: tap-mssql re-reads the last LSN's change (the D again); still nothing sent
    run3 = deliver(sandbox, tmp_path / "3", third.lines)
    tally = stream_report(run3, CUSTOMERS)
    assert (tally["sent"], tally["skipped_by_reason"]) == (0, {"deleted": 1})
    assert "4" not in people(sandbox)
    assert run3.states[-1] == third.state


def test_cdc_schema_quirks_are_accepted(cdc):
    """The CDC SCHEMA's odd formats and `bookmark_properties: [null]` reach the target as they
    are."""
    schema = next(json.loads(x) for x in cdc[1].lines if '"SCHEMA"' in x)
    props = schema["schema"]["properties"]
    assert props["_sdc_operation_type"]["format"] == "string"
    assert schema["bookmark_properties"] == [None]
    assert props["email"]["inclusion"] == "available"
    assert props["last_order_date"]["additionalProperties"] == {"sql_data_type": "datetime2"}
    # ... and the target ran on exactly this stream in the test above; here the mapper directly:
    mapper = Kind(CUSTOMER_ROUTE, schema["schema"])
    row = records(cdc[1].messages, CUSTOMERS)[0]
    body = json.loads(mapper.map(row).body)
    assert body["identifiers"] == {"id": "2"} and not [
        k for k in body["attributes"] if k.startswith("_sdc")
    ]


@pytest.mark.parametrize("kind", ["person", "event"])
@pytest.mark.parametrize(
    "marker", [{"_sdc_operation_type": "D"}, {"_sdc_deleted_at": "2025-11-22T07:30:00+00:00"}]
)
def test_a_deleted_row_is_skipped_not_sent(kind, marker):
    mapper = Kind(
        CUSTOMER_ROUTE if kind == "person" else EVENT_ROUTE,
        {"properties": {"occurred_at": {"format": "date-time"}}},
    )
    row = {
        "customer_id": 4,
        "event_id": "order:1",
        "event_name": "Order Placed",
        "occurred_at": "2025-11-20 09:15:02.1234567",
        "email": "m@example.com",
    }
    for op in ("I", "U"):
        assert mapper.map({**row, "event_id": f"order:{op}", "_sdc_operation_type": op}).body
    assert is_delete({**row, **marker}) and not is_delete({**row, "_sdc_operation_type": "U"})
    with pytest.raises(Skipped) as skipped:
        mapper.build({**row, **marker})  # the route's on_delete is `ignore`
    assert skipped.value.reason == "deleted"


# ---- mirror: a customer who leaves the table --------------------------------------------------


MIRROR_ROUTES = {CUSTOMERS: {**CUSTOMER_ROUTE, "mirror": True, "max_exit_ratio": 0.5}}


def test_a_full_table_mirror_unsets_who_left_and_a_cut_version_exits_nobody(
    sandbox, tmp_path, discovered
):
    """FULL_TABLE sends ACTIVATE_VERSION before and after the rows: the closing one says the
    table was read whole. Margaret (4) is erased at the source between the two moments."""
    initial = tap(
        tmp_path / "tap1", discovered, {CUSTOMERS: FULL_TABLE[CUSTOMERS]}, snapshot="initial"
    )
    latest = tap(tmp_path / "tap2", discovered, {CUSTOMERS: FULL_TABLE[CUSTOMERS]})
    ledger = {"ledger_path": str(tmp_path / "ledger.sqlite")}  # one project, three runs
    run = deliver(sandbox, tmp_path / "1", initial.lines, MIRROR_ROUTES, **ledger)
    assert run.report["mirror"][CUSTOMERS]["members"] == 5
    # the tap stopped before its closing ACTIVATE_VERSION: not read whole, nobody leaves
    kinds = [json.loads(line)["type"] for line in latest.lines]
    closing = len(kinds) - 1 - kinds[::-1].index("ACTIVATE_VERSION")
    cut = deliver(sandbox, tmp_path / "2", latest.lines[:closing], MIRROR_ROUTES, **ledger)
    assert cut.report["mirror"][CUSTOMERS]["complete"] is False
    assert people(sandbox)["4"]["attributes"]  # Margaret is still there, as she was
    whole = deliver(sandbox, tmp_path / "3", latest.lines, MIRROR_ROUTES, **ledger)
    mirror = whole.report["mirror"][CUSTOMERS]
    # known: the first run's 5 and the new customer (6) the cut run sent: a run that did not
    # read the table whole still keeps whom it sent, so that one who leaves before the next
    # complete run is told to leave (docs/ledger.md)
    assert (mirror["complete"], mirror["known"], mirror["left"]) == (True, 6, 1)
    assert mirror["exits"] == {"unset": 1}
    assert people(sandbox)["4"]["attributes"] == {}
    assert people(sandbox)["6"]["attributes"]  # and the new customer arrived


def test_a_cdc_stream_cannot_mirror(sandbox, tmp_path, cdc):
    tmp = tmp_path / "cdc"
    tmp.mkdir()
    cfg = target_config(sandbox.url, tmp, {CUSTOMERS: {**CUSTOMER_ROUTE, "mirror": True}})
    run = run_target(cfg, cdc[0].lines, tmp)
    assert run.returncode == 2
    assert "is change data capture (its SCHEMA declares _sdc_operation_type)" in run.stderr
