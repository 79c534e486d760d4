"""Property: mapping a record never ends the run. Whatever value any field holds (a Unicode
digit such as '²' that isdigit() accepts and int() refuses, an integer of 30 or 5000 digits,
a lone surrogate, NaN, a signalling NaN, a date out of range, deep nesting), every record is
sent, rejected with a reason, or skipped, through the mapping the target uses (StreamMapping,
as in `mapping_workers: 0` and in each mapping process), and its reject can be written.

Every kind is covered, and every column its route reads: the columns are taken from the
route's own `columns_named()` (plus the delete markers and an attribute), not listed here.
`LONG_PROPERTIES=1` runs many more examples.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_customerio.mapping_processes import ProcessMapping
from target_customerio.report import RunReport
from target_customerio.settings import load_settings
from target_customerio.stream_mapping import InlineMapping, Mapped, StreamSpec
from tests.harness import LONG_PROPERTIES, record, run_target, schema, target_config

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "0")) or (1000 if LONG_PROPERTIES else 100)
STREAM = "public-things"
ID = {"field": "who", "type": "id"}
# One route of each kind (and the event kind's two ways of naming events); the columns each
# reads come from the route itself.
ROUTES: dict[str, dict[str, Any]] = {
    "person": {"kind": "person", "identifier": ID, "on_delete": "suppress"},
    "person_email": {"kind": "person", "identifier": {"field": "who", "type": "email"}},
    "event": {
        "kind": "event",
        "identifier": ID,
        "event_name": "Order Placed",
        "event_id": ["order_id", "line"],
        "timestamp": "at",
        "max_age": "3d",
        "mirror_to_attribute": "last_order_at",
    },
    "event_named_by_column": {
        "kind": "event",
        "identifier": ID,
        "event_name_field": "what",
        "event_id": "order_id",
        "timestamp": "at",
    },
    "merge": {"kind": "merge", "primary": ID, "secondary": {"field": "other", "type": "email"}},
    "object": {
        "kind": "object",
        "object_type_id": 1,
        "object_id": "order_id",
        "relationships": [ID],
    },
    "segment": {"kind": "segment", "identifier": ID, "segment_id": "segment"},
    "reconcile": {
        "kind": "reconcile",
        "segment_id": "segment",
        "expected_count": "count",
        "tolerance": "margin",
    },
}
QUIET = logging.getLogger("tests.hostile")
QUIET.propagate = False  # the rejects' warnings: thousands of lines, read from the file instead
EXTRA_COLUMNS = ("_sdc_deleted_at", "_sdc_operation_type", "note")

digits = st.characters(categories=["Nd", "No", "Nl"])
lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
hostile = st.one_of(
    st.text(digits, min_size=1, max_size=4),  # '²', '٣', 'Ⅻ'
    st.integers(min_value=2**63 - 2, max_value=10**40),
    st.integers(min_value=-(10**40), max_value=-1),
    st.sampled_from([10**5000, -(10**5000), 2**64, 2**63, 2**63 - 1, 0]),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), lone_surrogates, st.text(max_size=3)),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.0, 1e308, 5e-324]),
    st.sampled_from(
        [Decimal("NaN"), Decimal("sNaN"), Decimal("-Infinity"), Decimal("1E+999999"), Decimal("-0")]
    ),
    st.sampled_from(
        ["", " ", "\x00", "\u2028", "0000-00-00", "9999-12-31T23:59:59+14:00", "1e400", "²³"]
        + ["u:\ud800@h", "http//user:pw@host", "password=\udcff"]
    ),
    st.sampled_from(["0001-01-01T00:00:00-23:59", "2026-13-40", "  12 ", "٣", "1_000", "0x10"]),
    st.sampled_from([dt.datetime.min, dt.datetime.max, dt.date.min, dt.time(23, 59)]),
    st.sampled_from([True, False, None, [], {}, [[[[[]]]]], {"": {"": None}}]),
    st.text(min_size=1, max_size=40),
    st.text(min_size=300, max_size=1200),
)
deep = st.integers(240, 400).map(lambda n: json.loads("[" * n + "]" * n))
sane = st.one_of(
    st.integers(1, 10**6),
    st.sampled_from(["C1", "a@b.co", "2026-11-22T12:00:00Z", "order_placed", "7", "5%"]),
)
value = st.one_of(hostile, hostile, sane, deep)


def _columns(kind: str) -> list[str]:
    config = load_settings({"dry_run": True, "streams": {STREAM: ROUTES[kind]}}, Path("."))
    route = config.routes.match(STREAM)
    assert route is not None
    return sorted({column for _, column in route.columns_named()} | set(EXTRA_COLUMNS))


def _mapping_settings(kind: str, tmp: Path) -> Any:
    return load_settings(
        {
            "dry_run": True,
            "streams": {STREAM: ROUTES[kind]},
            "ledger_path": str(tmp / "ledger.sqlite"),
            "mapping_workers": 0,
        },
        tmp,
    )


def _spec(columns: list[str], scope: str) -> StreamSpec:
    properties = {column: {} for column in columns}
    return StreamSpec(STREAM, {"properties": properties}, [], 1_800_000_000.0, scope, 2)


def record_line(row: dict[str, Any]) -> bytes | None:
    """The RECORD line a Python tap would write for the row (NaN as NaN, lone surrogates
    escaped, a huge integer in full), or None when the row holds what JSON text cannot."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # a tap may write any integer; the target reads it as it can
    try:
        text = json.dumps({"type": "RECORD", "stream": STREAM, "record": row})
    except (TypeError, ValueError):
        return None
    finally:
        sys.set_int_max_str_digits(limit)
    return text.encode()


def accounted(items: list[Any], mapped: Mapped) -> None:
    """Every record of the chunk is sent, rejected (with a reason and a message) or skipped,
    exactly once."""
    rejected = [index for index, *_ in mapped.rejects]
    sent = {index for segment in mapped.segments.values() for index in segment.item_of}
    assert len(set(rejected)) == len(rejected)
    assert not sent & set(rejected)
    assert len(sent) + len(rejected) + sum(mapped.skipped.values()) == len(items)
    for _, reason, field, message, _rule in mapped.rejects:
        assert isinstance(reason, str) and reason
        assert isinstance(message, str) and message
        assert field is None or isinstance(field, str)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.mark.parametrize("kind", sorted(ROUTES))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mapping_any_value_of_any_field_rejects_the_record_not_the_run(kind, workdir, data):
    columns = _columns(kind)
    rows = data.draw(
        st.lists(st.fixed_dictionaries({}, optional=dict.fromkeys(columns, value)), max_size=6)
    )
    items: list[Any] = []
    for row in rows:
        line = record_line(row) if data.draw(st.booleans()) else None
        items.append(line if line is not None else row)  # the direct path, or the SDK's
    mapping = InlineMapping(_mapping_settings(kind, workdir))
    scope = f"http://127.0.0.1\x1fsite\x1f{STREAM}"
    try:
        key = mapping.open(_spec(columns, scope if data.draw(st.booleans()) else None))
        mapped = mapping.map(key, items)
    finally:
        mapping.close()
    accounted(items, mapped)
    rejects = workdir / "rejects.jsonl"
    rejects.unlink(missing_ok=True)  # an example that failed may have left its lines
    report = RunReport(
        reject_file=str(rejects),
        report_file=None,
        dry_run=True,
        logger=QUIET,
    )
    for index, reason, field, message, rule in mapped.rejects:
        report.reject(STREAM, reason, field, message, items[index], rule)
    report.close("ok")
    lines = rejects.read_bytes().decode("utf-8").split("\n")[:-1]  # strict: UTF-8 JSON lines
    assert [json.loads(line)["reason"] for line in lines] == [r[1] for r in mapped.rejects]


def test_a_mapping_process_rejects_what_it_cannot_map_and_goes_on(tmp_path):
    """The worker processes map with the same code: a value that raised there ended the run."""
    columns = _columns("reconcile")
    settings_ = load_settings(
        {
            "dry_run": True,
            "streams": {STREAM: ROUTES["reconcile"]},
            "ledger_path": str(tmp_path / "ledger.sqlite"),
        },
        tmp_path,
    )
    mapping = ProcessMapping(settings_, 1)
    answers: list[Mapped] = []
    try:
        key = mapping.open(_spec(columns, None))
        rows = [{"segment": "²", "count": 3, "margin": 0}, {"segment": 7, "count": 10**30}]
        mapping.submit(key, rows, lambda items, mapped: answers.append(mapped))
        mapping.drain()
    finally:
        mapping.close()
    [mapped] = answers
    accounted(rows, mapped)
    assert [reason for _, reason, *_ in mapped.rejects] == [
        "invalid_segment_id",
        "invalid_expected_count",
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_run_goes_on_past_values_no_check_foresaw(sandbox, tmp_path, workers):
    """The issue's run, end to end: a segment id '²' and a 30-digit count were exit 1 (a
    traceback with `mapping_workers: 0`); now each is one reject and the run ends well."""
    streams = {
        "public-vip": ROUTES["segment"],
        "public-checks": {**ROUTES["reconcile"], "tolerance": 0},
    }
    config = target_config(sandbox.url, tmp_path, streams, mapping_workers=workers)
    config.update(app_api_key=sandbox.app_api_key, app_api_url=sandbox.url, dry_run=True)
    huge = 10**5000
    messages = [
        schema("public-vip", {"who": {}, "segment": {}}),
        record("public-vip", {"who": "C1", "segment": "²"}),
        record("public-vip", {"who": "C2", "segment": 7}),
        schema("public-checks", {"segment": {}, "count": {}}),
        record("public-checks", {"segment": 7, "count": 10**30}),
        '{"type":"RECORD","stream":"public-checks","record":{"segment":7,"count":NaN}}',
        record("public-checks", {"segment": 7, "count": 1}),
    ]
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        line = json.dumps(record("public-vip", {"who": huge, "segment": 7}))
    finally:
        sys.set_int_max_str_digits(limit)
    run = run_target(config, [*messages, line], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.report is not None
    assert run.report["streams"]["public-vip"]["rejected"] == 2
    assert run.report["streams"]["public-checks"]["rejected"] == 2
    reasons = sorted(reject["reason"] for reject in run.rejects)
    assert reasons == [
        "invalid_expected_count",  # 10**30 and NaN
        "invalid_expected_count",
        "invalid_identifier",  # 5000 digits
        "invalid_segment_id",  # '²'
    ]
