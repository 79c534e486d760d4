"""A corpus of bad streams and bad configs, each with its expected outcome.

Every case ends in a reject-file entry (the run goes on) or a one-line error with a meaningful
exit code: never a traceback wall, a silent drop, a hang, or the api_key in any output.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.harness import API_KEY, record, run_target, schema, state, target_config

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
P, E = "public-customers", "public-orders"
ROUTES = {
    P: {
        "kind": "person",
        "identifier": {"field": "id", "type": "id"},
        "contract": "builtin:customer",
    },
    E: {
        "kind": "event",
        "identifier": {"field": "id", "type": "id"},
        "event_name": "order_placed",
        "event_id": ["order_id"],
        "timestamp": "at",
    },
}
PERSON_SCHEMA = schema(
    P,
    {
        "id": {"type": "string"},
        "lifetime_value": {"type": "number"},
        "born": {"type": "string", "format": "date"},
    },
)
EVENT_SCHEMA = schema(
    E,
    {
        "id": {"type": "string"},
        "order_id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
    },
)


def person(**row) -> str:
    return json.dumps(record(P, {"id": "C1", **row}))


def event(**row) -> str:
    return json.dumps(record(E, {"id": "C1", "order_id": 1, "at": NOW.isoformat(), **row}))


def raw_person(fragment: str) -> str:
    """A record line with a raw JSON fragment (what json.dumps cannot write)."""
    return f'{{"type":"RECORD","stream":"{P}","record":{{"id":"C1",{fragment}}}}}'


REJECTED = [
    ("missing identifier", [person(id=None)], "missing_identifier", "id"),
    ("blank identifier", [person(id="  ")], "missing_identifier", "id"),
    (
        "number sent as a string",
        [person(lifetime_value="250.00")],
        "schema_violation",
        "lifetime_value",
    ),
    (
        "attribute value over 1000 bytes",
        [person(note="x" * 1001)],
        "attribute_value_too_large",
        "note",
    ),
    (
        "more than 300 attributes",
        [person(**{f"a{i}": i for i in range(301)})],
        "too_many_attributes",
        None,
    ),
    ("event data over 100 KB", [event(blob="x" * 100_001)], "operation_too_large", None),
    ("lone surrogate", [raw_person('"name":"\\ud800x"')], "invalid_value", "name"),
    ("NaN", [raw_person('"score":NaN')], "invalid_value", "score"),
    ("Infinity", [raw_person('"score":-Infinity')], "invalid_value", "score"),
    ("nested 300 deep", [raw_person('"deep":' + "[" * 300 + "]" * 300)], "invalid_value", "deep"),
    ("event before 1970", [event(at="1969-07-20T20:17:00Z")], "invalid_timestamp", "at"),
    ("event after 9999", [event(at="10000-01-01T00:00:00Z")], "invalid_timestamp", "at"),
    ("date after 9999", [person(born="10000-01-01")], "invalid_value", "born"),
    ("event without time", [event(at=None)], "missing_timestamp", "at"),
    ("event without dedupe key", [event(order_id=None)], "missing_event_id", "order_id"),
    (
        "event time in milliseconds",
        [event(at=int(NOW.timestamp() * 1000))],
        "invalid_timestamp",
        "at",
    ),
    ("event time not a time", [event(at=[2026, 11, 22])], "invalid_timestamp", "at"),
    (
        "event time NaN",
        [f'{{"type":"RECORD","stream":"{E}","record":{{"id":"C1","order_id":1,"at":NaN}}}}'],
        "invalid_timestamp",
        "at",
    ),
    (
        "lone surrogate in the identifier",
        [f'{{"type":"RECORD","stream":"{P}","record":{{"id":"C\\ud800"}}}}'],
        "invalid_identifier",
        "id",
    ),
    (
        "NaN identifier",
        [f'{{"type":"RECORD","stream":"{P}","record":{{"id":NaN}}}}'],
        "invalid_identifier",
        "id",
    ),
    (
        "long value of lone surrogates",
        [raw_person('"note":"' + "\\udc00" * 400 + '"')],
        "attribute_value_too_large",
        "note",
    ),
]


@pytest.mark.parametrize(
    "lines, reason, field", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_bad_records_are_rejected_with_reason_and_the_run_goes_on(
    sandbox, tmp_path, lines, reason, field
):
    stream = [PERSON_SCHEMA, EVENT_SCHEMA, *lines, person(id="C2"), state({"ok": 1})]
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), stream, tmp_path)
    assert run.returncode == 0, run.stderr
    assert [(r["reason"], r["field"]) for r in run.rejects] == [(reason, field)]
    assert run.rejects[0]["record"].get("id") != "C2"
    assert [p["id"] for p in sandbox.people()] == ["C2"]  # the good record behind it still lands
    assert run.states == [{"ok": 1}]
    assert (
        "Traceback" not in run.stderr
        and API_KEY not in run.stderr + (tmp_path / "rejects.jsonl").read_text()
    )


def test_invalid_utf8_is_rejected_with_its_record(sandbox, tmp_path):
    bad = raw_person('"name":"caf\xe9"').encode("latin-1").decode("utf-8", errors="surrogateescape")
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES),
        [PERSON_SCHEMA, bad, person(id="C2")],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert [(r["reason"], r["field"]) for r in run.rejects] == [("invalid_value", "name")]


def test_a_schema_change_mid_stream_delivers_both_sides(sandbox, tmp_path):
    wider = schema(P, {**PERSON_SCHEMA["schema"]["properties"], "tier": {"type": "string"}})
    stream = [PERSON_SCHEMA, person(id="C1"), wider, person(id="C2", tier="gold"), state({"s": 1})]
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), stream, tmp_path)
    assert run.returncode == 0, run.stderr
    assert {p["id"]: p["attributes"].get("tier") for p in sandbox.people()} == {
        "C1": None,
        "C2": "gold",
    }
    assert run.states == [{"s": 1}]


def test_record_lines_in_any_spacing_and_key_order_are_delivered(sandbox, tmp_path):
    """The reader passes RECORD lines on undecoded when they start as taps write them (compact,
    or with singer-python's spaces); any other key order takes the SDK's path, to the same end."""
    lines = [
        PERSON_SCHEMA,
        raw_person('"lifetime_value":1.50'),  # compact, as singer-sdk taps write
        person(id="C2", lifetime_value=2.0),  # ", " and ": ", as singer-python taps write
        json.dumps({"record": {"id": "C3", "lifetime_value": 3}, "stream": P, "type": "RECORD"}),
        raw_person('"lifetime_value":4').replace('"C1"', '"C4"'),  # back on the direct path
        state({"s": 1}),
    ]
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), lines, tmp_path)
    assert run.returncode == 0, run.stderr
    assert {p["id"]: p["attributes"]["lifetime_value"] for p in sandbox.people()} == {
        "C1": 1.5,
        "C2": 2,
        "C3": 3,
        "C4": 4,
    }
    assert run.states == [{"s": 1}]


FATAL_INPUT = [
    ("malformed JSON", ["{not json"], "input line 1 is not valid JSON"),
    ("not an object", ["[1, 2]"], "input line 1 is not a JSON object"),
    ("record before schema", [person()], "before a corresponding schema"),
    ("message without type", ['{"stream": "x"}'], "missing required type"),
    ("unknown message type", ['{"type": "BANANA"}'], "unknown message type 'BANANA'"),
    (
        "nested 5000 deep",
        [json.dumps(PERSON_SCHEMA), raw_person('"deep":' + "[" * 5000 + "]" * 5000)],
        "nested too deeply",
    ),
    (
        "schema without properties",
        ['{"type":"SCHEMA","stream":"public-customers","schema":{"type":"object"}}'],
        "properties",
    ),
    (
        "record line that is a STATE too",
        [
            json.dumps(PERSON_SCHEMA),
            f'{{"type":"RECORD","stream":"{P}","record":{{"id":"C1"}},"type":"STATE"}}',
        ],
        "repeats its type, stream or record key",
    ),
]


@pytest.mark.parametrize(
    "lines, words", [c[1:] for c in FATAL_INPUT], ids=[c[0] for c in FATAL_INPUT]
)
def test_a_malformed_stream_is_one_clear_line_and_exit_5(sandbox, tmp_path, lines, words):
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), lines, tmp_path, timeout=60)
    assert_one_line_error(run, 5, words)


BAD_CONFIG = [
    ("unknown route", {}, [schema("public-other", {"x": {}})], 2, "'public-other' has no route"),
    (
        "event route without a name",
        {"streams": {E: {k: v for k, v in ROUTES[E].items() if k != "event_name"}}},
        [EVENT_SCHEMA],
        2,
        "exactly one of `event_name` or `event_name_field`",
    ),
    (
        "bad max_age",
        {"streams": {E: {**ROUTES[E], "max_age": "two days"}}},
        [EVENT_SCHEMA],
        2,
        "max_age",
    ),
    (
        "http to a non-loopback host",
        {"track_api_url": "http://customerio.internal.example"},
        [PERSON_SCHEMA],
        2,
        "only allowed for loopback",
    ),
    ("unknown region", {"region": "ap"}, [PERSON_SCHEMA], 2, "region"),
    ("missing api_key", {"api_key": ""}, [PERSON_SCHEMA], 2, "`api_key` is required"),
    (
        "wrong credentials",
        {"api_key": "not-the-key"},
        [PERSON_SCHEMA, person()],
        3,
        "refused site_id/api_key (HTTP 401)",
    ),
    (
        "contract file missing",
        {"streams": {P: {**ROUTES[P], "contract": "contracts/nope.json"}}},
        [PERSON_SCHEMA],
        2,
        "cannot read",
    ),
]


@pytest.mark.parametrize(
    "override, lines, code, words", [c[1:] for c in BAD_CONFIG], ids=[c[0] for c in BAD_CONFIG]
)
def test_bad_config_is_one_line_naming_the_setting(sandbox, tmp_path, override, lines, code, words):
    config = {**target_config(sandbox.url, tmp_path, ROUTES), **override}
    run = run_target(config, lines, tmp_path, timeout=60)
    assert_one_line_error(run, code, words)
    assert sandbox.people() == []


def assert_one_line_error(run, code: int, words: str) -> None:
    errors = [line for line in run.stderr.splitlines() if "| ERROR" in line or "| CRITICAL" in line]
    assert run.returncode == code, run.stderr[-3000:]
    assert len(errors) == 1 and words in errors[0], run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    assert API_KEY not in run.stderr
