"""Unit tests: each fast path gives exactly what its reference (slower) path gives.

The throughput work (issue 5, docs/performance.md) added shortcuts on the per-record path; these
tests pin every shortcut to the code it stands in for, including the error it raises.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import requests
from ulid import ULID

from target_customerio.errors import TargetError
from target_customerio.ledger import _WRITE_BATCH, SqliteLedger, hash64, scope_seed
from target_customerio.operations.event_ids import ulid_text
from target_customerio.operations.operation import Rejected
from target_customerio.operations.payload import (
    MAX_ATTRIBUTE_VALUE_BYTES,
    Payload,
    check_person_limits,
)
from target_customerio.reading import decode_record
from target_customerio.routes import Routes
from target_customerio.sandbox import Sandbox
from target_customerio.values import UTC, BadValue, plain, plain_number, to_unix, unix_seconds
from tests.operations.helpers import Kind

SCHEMA = {
    "properties": {
        "placed_at": {"type": "string", "format": "date-time"},
        "born_on": {"type": ["string", "null"], "format": "date"},
    }
}
PERSON = {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}}


def mapper(spec: dict = PERSON, ledger_scope: str | None = None) -> Kind:
    return Kind(spec, SCHEMA, now=1_795_000_000, ledger_scope=ledger_scope)


def payload(spec: dict) -> Payload:
    return Payload(Routes({"s": spec}, Path("."), "reject").match("s"), SCHEMA)


def reference_plain(value, tz=UTC):
    """`plain` as it was before the fast paths: a new copy of every container."""
    if type(value) in (str, int, bool) or value is None:
        return value
    if type(value) in (Decimal, float):
        return plain_number(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return to_unix(value, tz)
    if type(value) is dict:
        return {k: reference_plain(v, tz) for k, v in value.items()}
    if type(value) in (list, tuple):
        return [reference_plain(v, tz) for v in value]
    if isinstance(value, dt.time):
        return value.isoformat()
    return str(value)


def outcome(call):
    try:
        return ("ok", call())
    except Rejected as rej:
        return ("rejected", rej.reason, rej.field, rej.message)
    except Exception as exc:  # noqa: BLE001 - the reference may raise anything; so must the fast path
        return ("raised", type(exc).__name__, str(exc))


def test_ulid_text_is_what_python_ulid_writes():
    rnd = random.Random(5)
    for _ in range(2000):
        raw = rnd.getrandbits(128).to_bytes(16, "big")
        assert ulid_text(raw) == str(ULID.from_bytes(raw))
    assert ulid_text(b"\x00" * 16) == "0" * 26 and ulid_text(b"\xff" * 16) == "7" + "Z" * 25


def test_unix_seconds_is_exact_where_the_float_timestamp_rounds():
    epoch, second = dt.datetime(1970, 1, 1, tzinfo=UTC), dt.timedelta(seconds=1)
    rnd = random.Random(7)
    for _ in range(20_000):
        offset = dt.timezone(dt.timedelta(minutes=rnd.randrange(-14 * 60, 14 * 60 + 1)))
        moment = dt.datetime(
            rnd.randrange(1900, 9999),
            rnd.randrange(1, 13),
            rnd.randrange(1, 29),
            rnd.randrange(24),
            rnd.randrange(60),
            rnd.randrange(60),
            rnd.choice([0, 1, 499_999, 500_000, 999_999]),
            tzinfo=offset,
        )
        assert unix_seconds(moment) == (moment - epoch) // second, (
            moment
        )  # integer arithmetic throughout
    assert unix_seconds(dt.datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)) == -1
    late = dt.datetime(
        9664, 3, 13, 23, 0, 4, 999_999, tzinfo=UTC
    )  # the float rounds this one up a second
    assert math.floor(late.timestamp()) == 242805510005 and unix_seconds(late) == 242805510004


def test_ledger_keys_are_stable_signed_64_bit_and_scoped_to_workspace_and_stream():
    scope = "https://track.customer.io\x1fsite\x1fpublic-customers"
    other = "https://track.customer.io\x1fsite\x1fpublic-buyers"
    # Pinned: a ledger written by one release must be read by the next (else a full re-send).
    assert hash64(b"person:id:C1", scope_seed(scope)) == 4321978549147328892
    assert hash64(b'{"type":"person"}') == -4472857286816593350
    keys = {
        hash64(f"person:id:C{i}".encode(), scope_seed(s))
        for i in range(1000)
        for s in (scope, other)
    }
    assert len(keys) == 2000 and all(-(2**63) <= k < 2**63 for k in keys)
    op = mapper(ledger_scope=scope).map({"customer_id": "C1", "email": "a@b.c"})
    assert op.ledger == (hash64(b"person:id:C1", scope_seed(scope)), hash64(op.body))


@pytest.mark.parametrize(
    "value",
    [
        {"size": "M", "channels": ["email", "sms"], "n": 3},
        {
            "ratio": Decimal("0.5"),
            "tags": ["a", Decimal("2.00")],
            "deep": {"at": dt.datetime(2026, 1, 1, tzinfo=UTC)},
        },
        [1, "a", None, True],
        [[], {}, ("x", Decimal("1.5"))],
        ("t", 1),
        {},
        [],
        {"t": dt.time(10, 30), "f": 2.5, "d": dt.date(1980, 5, 17)},
    ],
)
def test_plain_converts_json_values_like_the_reference(value):
    assert outcome(lambda: plain(value)) == outcome(lambda: reference_plain(value))


def test_plain_keeps_a_json_value_that_needs_no_change_and_never_changes_its_input():
    value = {"size": "M", "channels": ["email", "sms"], "n": 3}
    assert plain(value) is value
    mixed = {"channels": ["email"], "ratio": Decimal("0.5")}
    out = plain(mixed)
    assert out == {"channels": ["email"], "ratio": 0.5} and mixed["ratio"] == Decimal("0.5")
    assert out["channels"] is mixed["channels"]


def test_plain_fails_on_bad_numbers_and_deep_nesting_like_the_reference():
    for value in [{"x": [Decimal("NaN")]}, [float("inf")]]:
        assert outcome(lambda: plain(value)) == outcome(lambda: reference_plain(value))
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(
        BadValue, match="nested too deeply"
    ):  # compiled, the walk has no recursion limit of its own
        plain({"deep": deep})


RECORDS = [
    {
        "customer_id": "C1",
        "email": " A@B.COM ",
        "placed_at": "2026-11-20T10:00:00.123456+00:00",
        "born_on": "1980-05-17",
        "ltv": Decimal("250.00"),
        "aov": Decimal("83.33"),
        "prefs": {"sizes": ["M"], "r": Decimal("0.5")},
        "ok": True,
    },
    {
        "customer_id": "C2",
        "placed_at": " 2026-11-20T10:00:00Z ",
        "born_on": None,
    },  # whitespace: in-order path
    {
        "customer_id": "C3",
        "placed_at": "2026-11-20 10:00:00.1234567",
        "born_on": "1980-05-17",
    },  # SQL Server datetime2
    {"customer_id": "C4", "placed_at": "2026-11-20T10:00:00+02:00", "new_column": Decimal("1E+2")},
    {
        "customer_id": "C5",
        "placed_at": "not a date",
        "ltv": Decimal("NaN"),
    },  # first bad column wins
    {"customer_id": "C6", "ltv": Decimal("Infinity"), "placed_at": "not a date"},
    {
        "customer_id": "C7",
        "placed_at": dt.datetime(2026, 1, 1, 10),
        "born_on": dt.date(1980, 5, 17),
        "t": (1, 2),
    },
    {"customer_id": "C8", "placed_at": "10000-01-01T00:00:00"},
    {"customer_id": "C9", "_sdc_extracted_at": "2026-01-01", "renamed": "x", "skipped": "y"},
]


@pytest.mark.parametrize(
    "spec",
    [
        PERSON,
        {**PERSON, "source_timezone": "Europe/Berlin"},
        {**PERSON, "attributes": {"rename": {"renamed": "nickname"}, "exclude": ["skipped"]}},
        {**PERSON, "attributes": {"rename": {"renamed": "email"}}},  # two columns sent as one name
    ],
)
def test_payload_fast_path_equals_the_in_order_path(spec):
    fast, reference = payload(spec), payload(spec)
    for record in RECORDS * 2:  # the second pass runs with every column already known
        expected = outcome(lambda: reference._in_order(dict(record)))
        assert outcome(lambda: fast.of(dict(record))) == expected
    fast, reference = mapper(spec), mapper(spec)
    for record in RECORDS * 2:
        assert outcome(lambda: fast.map(dict(record)).body) == outcome(
            lambda: reference.map(dict(record)).body
        )


NATIVE_LINES = [  # records as the reader decodes them from a tap's JSON
    b'{"customer_id":"C1","email":" A@B.COM ","placed_at":"2026-11-20T10:00:00.123456+00:00",'
    b'"born_on":"1980-05-17",'
    b'"ltv":250.00,"aov":83.33,"big":1e300,"prefs":{"sizes":["M"],"r":0.5,"n":2.0},"ok":true}',
    b'{"customer_id":"C2","placed_at":" 2026-11-20T10:00:00Z ","born_on":null}',
    b'{"customer_id":"C3","placed_at":"2026-11-20 10:00:00.1234567","born_on":"1980-05-17"}',
    b'{"customer_id":"C4","placed_at":"2026-11-20T10:00:00+02:00","new_column":1E+2,"huge":123456789012345678901234567890}',
    b'{"customer_id":"C5","placed_at":"not a date","ltv":1}',
    b'{"customer_id":"C9","_sdc_extracted_at":"2026-01-01","renamed":"x","skipped":"y","placed_at":null}',
    b'{"customer_id":"C9","_sdc_extracted_at":"2026-01-01","renamed":"x","skipped":"y","placed_at":"2026-11-20T10:00:00Z"}',
]


@pytest.mark.parametrize(
    "spec",
    [
        PERSON,
        {**PERSON, "source_timezone": "Europe/Berlin"},
        {**PERSON, "attributes": {"rename": {"renamed": "nickname"}, "exclude": ["skipped"]}},
        {**PERSON, "attributes": {"exclude": ["skipped"]}},
        {**PERSON, "attributes": {"rename": {"renamed": "email"}}},
    ],
)
def test_native_payload_sends_reader_values_as_the_in_order_path_does(spec):
    decoded = [
        decode_record(b'{"type":"RECORD","stream":"s","record":' + line + b"}", "s")
        for line in NATIVE_LINES
    ]
    assert all(native for _, native in decoded)
    records = [record for record, _ in decoded]
    assert (
        records[0]["ltv"] == 250
        and type(records[0]["ltv"]) is int
        and records[0]["prefs"]["n"] == 2
    )
    fast, reference = payload(spec), payload(spec)
    for record in records * 2:
        expected = outcome(lambda: reference._in_order(dict(record)))
        assert outcome(lambda: fast.of(dict(record), native=True)) == expected
    fast, reference = mapper(spec), mapper(spec)
    for record in records * 2:
        assert outcome(lambda: fast.map(dict(record), native=True).body) == outcome(
            lambda: reference.map(dict(record)).body
        )


@pytest.mark.parametrize(
    "attributes",
    [
        {"note": "x" * (MAX_ATTRIBUTE_VALUE_BYTES - 100)},
        {"note": "x" * MAX_ATTRIBUTE_VALUE_BYTES},
        {"note": "x" * (MAX_ATTRIBUTE_VALUE_BYTES + 1)},
        {"note": "é" * 501},
        {"prefs": {"a": "x" * 990}},
        {"n" * 151: 1},
        {"é" * 76: 1},
        {f"a{i}": i for i in range(301)},
    ],
)
def test_person_limits_shortcut_rejects_exactly_what_the_full_check_rejects(attributes):
    record = {"customer_id": "C1", **attributes}
    expected = outcome(lambda: check_person_limits(dict(attributes)))
    result = outcome(lambda: mapper().map(record))
    if expected[0] == "ok":
        assert result[0] == "ok"
    else:
        assert result == expected


def test_events_reuse_the_parsed_timestamp_and_keep_their_id():
    spec = {
        "kind": "event",
        "identifier": {"field": "customer_id", "type": "id"},
        "event_name": "order_placed",
        "event_id": ["order_id"],
        "timestamp": "placed_at",
    }
    body = orjson.loads(
        mapper(spec)
        .map(
            {
                "customer_id": "C1",
                "order_id": 7,
                "placed_at": "2026-11-20T10:00:00Z",
                "born_on": None,
            }
        )
        .body
    )
    assert body["timestamp"] == body["attributes"]["placed_at"] == 1795168800
    assert body["attributes"]["born_on"] is None  # a null date is not the parsed timestamp
    assert body["id"] == "59653G5ZMVSAGJ94RY6Y01ZSN7"


def test_ledger_writes_what_it_holds_on_flush_and_finds_exactly_that(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    ledger, lookups = (
        SqliteLedger(path),
        SqliteLedger(path),
    )  # the target writes, its mapping process looks up
    rnd = random.Random(7)
    rows = [(rnd.getrandbits(64) - (1 << 63), rnd.getrandbits(64) - (1 << 63)) for _ in range(1200)]
    keys = [k for k, _ in rows]
    ledger.record(rows[:1000])
    ledger.record(
        [(rows[0][0], 1), (rows[1][0], 2), (rows[0][0], 3)]
    )  # the later entry for a key wins
    assert lookups.fingerprints(keys) == {}  # held, not yet written
    ledger.flush()
    assert lookups.fingerprints(keys) == {
        **dict(rows[:1000]),
        rows[0][0]: 3,
        rows[1][0]: 2,
    }  # more keys than one query takes
    ledger.record([(rows[1000][0], 5)])
    ledger.close()  # writes what it holds
    assert lookups.fingerprints([rows[1000][0]]) == {rows[1000][0]: 5}
    assert SqliteLedger(path, full_resend=True).fingerprints(keys) == {}


def test_a_full_batch_is_written_in_the_background_and_a_failed_write_stops_the_next_flush(
    tmp_path,
):
    path = str(tmp_path / "ledger.sqlite")
    ledger, lookups = SqliteLedger(path), SqliteLedger(path)
    rows = [(key, key + 1) for key in range(_WRITE_BATCH)]
    ledger.record(rows)  # a full batch: written without a flush, by the ledger's own thread
    deadline = time.monotonic() + 60
    while not lookups.fingerprints([0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lookups.fingerprints([0, _WRITE_BATCH - 1]) == {0: 1, _WRITE_BATCH - 1: _WRITE_BATCH}
    sqlite3.connect(path).execute("DROP TABLE delivered")
    ledger.record(rows)  # this write fails (in the background, or in the flush)
    with pytest.raises(
        TargetError, match="cannot write the ledger: OperationalError: no such table"
    ):
        ledger.flush()


def test_sandbox_without_validation_accepts_and_counts_every_operation():
    with Sandbox(store=False, validate=False) as sandbox, requests.Session() as http:
        http.auth = ("site", "secret")
        body = {"batch": [{"type": "person", "action": "identify"}, {"not": "checked"}]}
        assert http.post(f"{sandbox.url}/api/v2/batch", json=body).status_code == 200
        assert http.post(f"{sandbox.url}/api/v2/batch", data=b"not json").status_code == 400
        assert (
            http.post(
                f"{sandbox.url}/api/v2/batch", data=b'{"batch": [{"a": 1}, {"b": ]}'
            ).status_code
            == 400
        )
        assert (
            http.post(f"{sandbox.url}/api/v2/batch", json={"batch": {"not": "a list"}}).status_code
            == 400
        )
        assert [r["ops"] for r in sandbox.requests()] == [2, 0, 0, 0]
        assert sandbox.people() == [] and sandbox.events() == []
