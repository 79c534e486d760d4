"""The tap's SCHEMA is checked: routes name only columns it declares (else exit 2, nothing sent),
its declared types are the default contract (`schema_violation`), and a date-time declared
through `$ref`, `$defs`, `definitions` or `allOf` is sent as unix seconds.

Process tests run the real target against the local Track API; the property test at the end
holds the person builder to jsonschema's verdict on the column's declared type."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from target_customerio.operations.operation import Rejected
from tests.harness import record, run_target, schema, state, target_config, writes
from tests.operations.helpers import Kind

RECENT = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).replace(microsecond=0)
RECENT_TEXT = RECENT.isoformat()
PERSON = {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}}
ORDER_EVENT = {
    "kind": "event",
    "identifier": {"field": "customer_id", "type": "id"},
    "event_name": "order_placed",
    "event_id": ["order_id"],
    "timestamp": "placed_at",
}
STREAMS = {
    "public-customers": {
        "customer_id": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "orders_count": {"type": "integer"},
        "lifetime_value": {"type": "number"},
        "internal_notes": {"type": ["string", "null"]},
    },
    "public-orders": {
        "order_id": {"type": "integer"},
        "customer_id": {"type": "string"},
        "placed_at": {"type": "string", "format": "date-time"},
        "event_type": {"type": "string"},
        "total": {"type": "number"},
    },
    "public-merges": {"customer_id": {"type": "string"}, "guest_email": {"type": "string"}},
    "public-carts": {
        "cart_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "total": {"type": "number"},
    },
}
ROWS = {
    "public-customers": {
        "customer_id": "C1",
        "email": "a@example.com",
        "orders_count": 1,
        "lifetime_value": 10.5,
        "internal_notes": "vip",
    },
    "public-orders": {
        "order_id": 1,
        "customer_id": "C1",
        "placed_at": RECENT_TEXT,
        "event_type": "Order Placed",
        "total": 9.5,
    },
    "public-merges": {"customer_id": "C1", "guest_email": "g@example.com"},
    "public-carts": {"cart_id": "K1", "customer_id": "C1", "total": 3},
}
MERGE = {
    "kind": "merge",
    "primary": {"field": "customer_id", "type": "id"},
    "secondary": {"field": "guest_email", "type": "email"},
}
CART = {
    "kind": "object",
    "object_type_id": 1,
    "object_id": "cart_id",
    "relationships": [{"field": "customer_id", "type": "id"}],
}

# (stream, route, option the message names, the typo, the column it should have been)
TYPOS = [
    (
        "public-customers",
        {**PERSON, "identifier": {"field": "custmer_id", "type": "id"}},
        "identifier.field",
        "custmer_id",
        "customer_id",
    ),
    (
        "public-customers",
        {**PERSON, "attributes": {"include": ["emial", "orders_count"]}},
        "attributes.include",
        "emial",
        "email",
    ),
    (
        "public-customers",
        {**PERSON, "attributes": {"exclude": ["internal_note"]}},
        "attributes.exclude",
        "internal_note",
        "internal_notes",
    ),
    (
        "public-customers",
        {**PERSON, "attributes": {"rename": {"lifetime_valu": "ltv"}}},
        "attributes.rename",
        "lifetime_valu",
        "lifetime_value",
    ),
    ("public-orders", {**ORDER_EVENT, "event_id": ["ordr_id"]}, "event_id", "ordr_id", "order_id"),
    ("public-orders", {**ORDER_EVENT, "timestamp": "placed"}, "timestamp", "placed", "placed_at"),
    (
        "public-orders",
        {
            **{k: v for k, v in ORDER_EVENT.items() if k != "event_name"},
            "event_name_field": "event_typ",
        },
        "event_name_field",
        "event_typ",
        "event_type",
    ),
    (
        "public-merges",
        {**MERGE, "primary": {"field": "customer", "type": "id"}},
        "primary.field",
        "customer",
        "customer_id",
    ),
    (
        "public-merges",
        {**MERGE, "secondary": {"field": "guest_emails", "type": "email"}},
        "secondary.field",
        "guest_emails",
        "guest_email",
    ),
    ("public-carts", {**CART, "object_id": "cart"}, "object_id", "cart", "cart_id"),
    (
        "public-carts",
        {**CART, "relationships": [{"field": "customr_id", "type": "id"}]},
        "relationships[0].field",
        "customr_id",
        "customer_id",
    ),
]


def stream_of(name: str, rows: int = 3) -> list[dict]:
    messages: list[dict] = [schema(name, STREAMS[name])]
    for n in range(rows):
        messages.append(record(name, {**ROWS[name], "customer_id": f"C{n}"}))
    return [*messages, state({"bookmarks": {name: {"replication_key_value": "x"}}})]


@pytest.mark.parametrize(
    ("stream", "route", "option", "typo", "meant"), TYPOS, ids=[t[2] for t in TYPOS]
)
def test_a_route_naming_a_column_the_schema_lacks_stops_before_anything_is_sent(
    sandbox,
    tmp_path,
    stream,
    route,
    option,
    typo,
    meant,
):
    run = run_target(
        target_config(sandbox.url, tmp_path, {stream: route}), stream_of(stream), tmp_path
    )
    message = (
        f"streams.{stream}.{option}: column {typo!r} is not in stream {stream}"
        f" (did you mean {meant!r}?)"
    )
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert run.states == [] and writes(sandbox) == [] and sandbox.people() == []


def test_every_wrong_column_is_named_at_once_under_the_glob_that_routed_the_stream(
    sandbox, tmp_path
):
    route = {**ORDER_EVENT, "event_id": ["ordr_id"], "timestamp": "when"}
    run = run_target(
        target_config(sandbox.url, tmp_path, {"public-*": route}),
        stream_of("public-orders"),
        tmp_path,
    )
    assert run.returncode == 2
    assert (
        "streams.public-*.event_id: column 'ordr_id' is not in stream public-orders"
        " (did you mean 'order_id'?)" in run.stderr
    )
    assert (
        "streams.public-*.timestamp: column 'when' is not in stream public-orders"
        " (its columns: order_id," in run.stderr
    )


def test_a_wrong_column_in_a_later_stream_lets_no_state_out(sandbox, tmp_path):
    routes = {"public-customers": PERSON, "public-orders": {**ORDER_EVENT, "timestamp": "placed"}}
    messages = [*stream_of("public-customers"), *stream_of("public-orders")]
    run = run_target(target_config(sandbox.url, tmp_path, routes), messages, tmp_path)
    assert run.returncode == 2 and "streams.public-orders.timestamp" in run.stderr
    assert run.states == [] and sandbox.events() == []


def test_mirror_to_attribute_names_an_attribute_not_a_column(sandbox, tmp_path):
    route = {**ORDER_EVENT, "mirror_to_attribute": "last_order_at"}
    run = run_target(
        target_config(sandbox.url, tmp_path, {"public-orders": route}),
        stream_of("public-orders"),
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert {p["attributes"]["last_order_at"] for p in sandbox.people()} == {int(RECENT.timestamp())}


def test_a_schema_with_empty_properties_is_warned_about_and_not_checked(sandbox, tmp_path):
    messages = [
        schema("public-customers", {}),
        record("public-customers", {"customer_id": "C1", "n": "x"}),
    ]
    run = run_target(
        target_config(sandbox.url, tmp_path, {"public-customers": PERSON}), messages, tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "declares no properties" in run.stderr
    assert [p["attributes"] for p in sandbox.people()] == [{"n": "x"}]


TYPED = {
    "customer_id": {"type": "string"},
    "orders_count": {"type": "integer"},
    "lifetime_value": {"type": "number"},
    "email_opt_in": {"type": "boolean"},
    "city": {"type": "string"},
    "prefs": {"type": "object"},
    "tags": {"type": ["array", "null"]},
    "anything": {},
    "score": {"type": ["integer", "string"]},
}
GOOD = {
    "orders_count": 2,
    "lifetime_value": 12.5,
    "email_opt_in": True,
    "city": "Oslo",
    "prefs": {"a": 1},
    "tags": ["x"],
    "anything": "whatever",
    "score": 3,
}
# The value each bad row holds in one column, and that column
BAD = [
    ({"orders_count": "many"}, "orders_count"),
    ({"orders_count": 3.5}, "orders_count"),
    ({"lifetime_value": "12.50"}, "lifetime_value"),
    ({"email_opt_in": "yes"}, "email_opt_in"),
    ({"city": {"name": "Oslo"}}, "city"),
    ({"city": 5}, "city"),
    ({"prefs": ["a"]}, "prefs"),
    ({"score": True}, "score"),
]


def test_values_that_contradict_the_schema_are_rejected_and_the_rest_sent(sandbox, tmp_path):
    stream = "public-customers"
    rows = [
        {"customer_id": "OK1", **GOOD},
        {
            "customer_id": "OK2",
            **GOOD,
            "orders_count": 3.0,
            "lifetime_value": 7,
            "score": "high",
            "anything": [1],
        },
        {
            "customer_id": "NULLS",
            **{column: None for column in GOOD},
        },  # null is accepted everywhere
        *({"customer_id": f"BAD{n}", **GOOD, **bad} for n, (bad, _) in enumerate(BAD)),
    ]
    messages = [schema(stream, TYPED), *(record(stream, row) for row in rows), state({"n": 1})]
    run = run_target(target_config(sandbox.url, tmp_path, {stream: PERSON}), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert {p["id"] for p in sandbox.people()} == {"OK1", "OK2", "NULLS"}
    assert sandbox.person(id="OK2")["attributes"]["orders_count"] == 3
    assert [(r["reason"], r["field"], r["record"]["customer_id"]) for r in run.rejects] == [
        ("schema_violation", column, f"BAD{n}") for n, (_, column) in enumerate(BAD)
    ]
    assert (
        run.rejects[0]["message"]
        == "orders_count holds a string ('many'); the stream's SCHEMA declares integer"
    )
    assert run.report["streams"][stream]["rejected_by_reason"] == {"schema_violation": len(BAD)}
    assert run.states == [{"n": 1}]


def test_a_schema_violation_fails_the_run_when_the_route_says_fail(sandbox, tmp_path):
    stream = "public-customers"
    messages = [
        schema(stream, TYPED),
        record(stream, {"customer_id": "C1", **GOOD, "lifetime_value": "12.50"}),
        state({"n": 1}),
    ]
    route = {**PERSON, "on_contract_violation": "fail"}
    run = run_target(target_config(sandbox.url, tmp_path, {stream: route}), messages, tmp_path)
    assert (
        run.returncode == 6
        and "schema violation at lifetime_value" in run.stderr
        and run.states == []
    )


DATE_SCHEMA = {
    "type": "object",
    "$defs": {
        "ts": {"type": "string", "format": "date-time"},
        "maybe_ts": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/ts"}]},
    },
    "definitions": {"day": {"type": ["string", "null"], "format": "date"}},
    "properties": {
        "customer_id": {"type": "string"},
        "via_defs": {"$ref": "#/$defs/ts"},
        "via_definitions": {"$ref": "#/definitions/day"},
        "via_all_of": {"allOf": [{"$ref": "#/$defs/ts"}, {"description": "when"}]},
        "via_nested_ref": {"$ref": "#/$defs/maybe_ts"},
        "via_one_of": {"oneOf": [{"type": "null"}, {"allOf": [{"$ref": "#/$defs/ts"}]}]},
        "plain_text": {"$ref": "#/$defs/text"},
    },
}


def test_a_date_time_declared_through_refs_and_all_of_is_sent_as_unix_seconds(sandbox, tmp_path):
    stream = "public-customers"
    row = {
        "customer_id": "C1",
        "via_defs": RECENT_TEXT,
        "via_definitions": "2026-01-02",
        "via_all_of": RECENT_TEXT,
        "via_nested_ref": RECENT_TEXT,
        "via_one_of": RECENT_TEXT,
        "plain_text": RECENT_TEXT,
    }
    messages = [
        {"type": "SCHEMA", "stream": stream, "schema": DATE_SCHEMA, "key_properties": []},
        record(stream, row),
    ]
    run = run_target(target_config(sandbox.url, tmp_path, {stream: PERSON}), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    attributes = sandbox.person(id="C1")["attributes"]
    seconds = int(RECENT.timestamp())
    assert {
        k: attributes[k] for k in ("via_defs", "via_all_of", "via_nested_ref", "via_one_of")
    } == dict.fromkeys(("via_defs", "via_all_of", "via_nested_ref", "via_one_of"), seconds)
    assert attributes["via_definitions"] == int(
        dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc).timestamp()
    )
    assert (
        attributes["plain_text"] == RECENT_TEXT
    )  # $defs/text does not exist: no format, no constraint


# ---- the type check against jsonschema, at the builder --------------------------------------

TYPE_NAMES = ["null", "boolean", "string", "object", "array", "integer", "number"]
_leaf = st.one_of(
    st.just({}),
    st.sampled_from(TYPE_NAMES).map(lambda name: {"type": name}),
    st.lists(st.sampled_from(TYPE_NAMES), min_size=1, max_size=3, unique=True).map(
        lambda names: {"type": names}
    ),
)
_column_schemas = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda subs: {"allOf": subs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda subs: {"anyOf": subs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda subs: {"oneOf": subs}),
        inner.map(lambda sub: {"$ref": sub}),  # a placeholder: moved into $defs by `_with_defs`
        st.tuples(st.sampled_from(TYPE_NAMES), inner).map(
            lambda pair: {"type": pair[0], "allOf": [pair[1]]}
        ),
    ),
    max_leaves=6,
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-1000, 1000).map(float),
    st.text(max_size=8),
    st.decimals(
        min_value=-(10**6), max_value=10**6, places=2, allow_nan=False, allow_infinity=False
    ),
)
_small_ints = st.integers(-(2**53), 2**53)
_values = st.one_of(
    _scalars,
    st.lists(_small_ints, max_size=2),
    st.dictionaries(st.text(max_size=3), _small_ints, max_size=2),
)


def _with_defs(node: Any, defs: dict[str, Any]) -> Any:
    """The generated schema with each `$ref` placeholder's target moved into `$defs`."""
    if isinstance(node, list):
        return [_with_defs(sub, defs) for sub in node]
    if not isinstance(node, dict):
        return node
    out = {key: _with_defs(sub, defs) for key, sub in node.items()}
    if isinstance(out.get("$ref"), dict):
        name = f"d{len(defs)}"
        defs[name] = out["$ref"]
        out["$ref"] = f"#/$defs/{name}"
    return out


def _one_of_as_any_of(node: Any) -> Any:
    if isinstance(node, list):
        return [_one_of_as_any_of(sub) for sub in node]
    if not isinstance(node, dict):
        return node
    return {
        ("anyOf" if key == "oneOf" else key): _one_of_as_any_of(sub) for key, sub in node.items()
    }


def _oracle_value(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(column=_column_schemas, value=_values, native=st.booleans())
def test_the_mapper_accepts_exactly_what_jsonschema_accepts_for_the_declared_type(
    column, value, native
):
    """Modulo the documented rules (tap_schema.py): null is always accepted, oneOf is read as
    anyOf."""
    if native and isinstance(value, Decimal):
        value = float(value)  # a native record holds what a strict JSON decoder returns
    defs: dict[str, Any] = {}
    properties = {"customer_id": {"type": "string"}, "c": _with_defs(column, defs)}
    stream_schema = {"type": "object", "properties": properties, "$defs": defs}
    oracle = jsonschema_rs.Draft202012Validator(_one_of_as_any_of(stream_schema))
    expected = value is None or oracle.is_valid({"c": _oracle_value(value)})

    mapper = Kind(PERSON, stream_schema, now=0)
    mapper.map(
        {"customer_id": "warm", "c": None}, native
    )  # the columns are learned: the next takes the fast path
    try:
        mapper.map({"customer_id": "C1", "c": value}, native)
        accepted = True
    except Rejected as rej:
        assert rej.reason == "schema_violation" and rej.field == "c", rej.message
        accepted = False
    event("accepted" if accepted else "schema_violation")
    assert accepted == expected, (stream_schema, value)
