"""Sandbox segments: the condition language, data-driven counts, definitions over HTTP and files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_customerio.sandbox import Sandbox
from target_customerio.sandbox.conditions import (
    And,
    Blank,
    Compare,
    ConditionError,
    Exists,
    Or,
    Performed,
    Within,
    join,
    parse,
)

AUTH = ("site", "secret")
DAY = 86_400


@pytest.fixture
def sb():
    with Sandbox(site_id="site", api_key="secret") as sandbox:
        yield sandbox


@pytest.fixture
def http():
    with requests.Session() as session:
        session.auth = AUTH
        yield session


def identify(ident: dict, **attributes) -> dict:
    return {"type": "person", "action": "identify", "identifiers": ident, "attributes": attributes}


def event(ident: dict, name: str, timestamp: int) -> dict:
    return {
        "type": "person",
        "action": "event",
        "identifiers": ident,
        "name": name,
        "timestamp": timestamp,
    }


def send(http, sb, *ops) -> None:
    r = http.post(f"{sb.url}/api/v2/batch", json={"batch": list(ops)})
    assert r.status_code == 200, r.text


def define(sb, name: str, condition: str | None = None, **extra) -> requests.Response:
    body = {"name": name, **({"condition": condition} if condition is not None else {}), **extra}
    return requests.post(f"{sb.url}/_sandbox/segments", json=body)


def count(sb, segment_id: int) -> int:
    r = requests.get(f"{sb.url}/_sandbox/segments/{segment_id}")
    assert r.status_code == 200, r.text
    return r.json()["count"]


# ---- the language ---------------------------------------------------------------------------


def test_the_examples_parse_to_the_trees_they_say():
    assert parse("orders_count >= 2 AND last_order_at within 60 days") == And(
        (Compare("orders_count", ">=", 2), Within("last_order_at", 60))
    )
    assert parse("orders_count > 0 AND last_order_at blank") == And(
        (Compare("orders_count", ">", 0), Blank("last_order_at"))
    )
    assert parse('performed "Order Placed" within 1 day OR `first name` exists') == Or(
        (Performed("Order Placed", 1), Exists("first name"))
    )
    assert parse("performed refund_issued") == Performed("refund_issued")
    assert parse("plan = 'pro' and vip == TRUE") == And(
        (Compare("plan", "=", "pro"), Compare("vip", "=", True))
    )
    assert parse("ltv < -1.5e2") == Compare("ltv", "<", -150.0)


def test_and_binds_tighter_than_or_and_parentheses_group():
    a, b, c = (Compare(x, "=", 1) for x in "abc")
    assert parse("a = 1 OR b = 1 AND c = 1") == Or((a, And((b, c))))
    assert parse("(a = 1 OR b = 1) AND c = 1") == And((Or((a, b)), c))
    assert parse("((a = 1)) AND (b = 1 AND c = 1)") == And((a, b, c))  # one tree per meaning
    assert str(parse("(a = 1 OR b = 1) AND c = 1")) == "(a = 1 OR b = 1) AND c = 1"


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "the condition is empty"),
        (
            "orders_count >=",
            "expected a value (a number, a \"string\", true or false) after '>=',"
            " got the end (column 16)",
        ),
        ("AND a = 1", "expected a condition, got 'AND' (column 1)"),
        ("a = 1 b = 2", "expected AND, OR or the end, got 'b' (column 7)"),
        ("(a = 1", "expected ')' to close the '(' of column 1 (column 7)"),
        (
            "a within sixty days",
            "expected a whole number of days after 'within', got 'sixty' (column 10)",
        ),
        ("a within 2.5 days", "expected a whole number of days after 'within', got '2.5'"),
        ("a within 3 weeks", "expected 'days' after 'within 3', got 'weeks' (column 12)"),
        ("a ~ 1", "unexpected character '~' (column 3)"),
        ("a", "expected an operator, exists, blank or within after 'a', got the end (column 2)"),
        ('"first name" = 1', "(a name that is not a plain word goes in `backticks`)"),
        ("performed", "expected an event name after 'performed', got the end"),
        ("x = 1e999", "number out of range: 1e999 (column 5)"),
        ("days > 1", "expected a condition, got 'days' (column 1)"),  # keywords need `backticks`
    ],
)
def test_errors_are_one_line_and_say_where(text, message):
    with pytest.raises(ConditionError) as caught:
        parse(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


_NAME_CHARS = st.characters(blacklist_characters="`", blacklist_categories=("Cs",))
names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.sampled_from(["days", "AND", "or", "within", "true", "first name", "a-b", "1x"]),
    st.text(_NAME_CHARS, min_size=1, max_size=10),
)
values = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
    st.booleans(),
)
days = st.integers(0, 10_000)
leaves = st.one_of(
    st.builds(Compare, names, st.sampled_from(["=", "!=", ">", ">=", "<", "<="]), values),
    st.builds(Exists, names),
    st.builds(Blank, names),
    st.builds(Within, names, days),
    st.builds(Performed, st.one_of(names, st.text(min_size=1, max_size=8)), st.none() | days),
)
trees = st.recursive(
    leaves,
    lambda kids: st.lists(kids, min_size=2, max_size=4).flatmap(
        lambda terms: st.sampled_from([join(And, terms), join(Or, terms)])
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(trees)
def test_a_condition_printed_back_parses_to_the_same_tree(tree):
    text = str(tree)
    assert parse(text) == tree, text
    assert str(parse(text)) == text


# ---- counts over the store, against a brute-force filter ---------------------------------


ATTRIBUTES = ["orders_count", "ltv", "plan", "vip", "last_order_at"]
NOW = time.time()
# Days ago, kept half a day away from any window boundary the conditions below use (1, 30, 60):
# the count is computed a moment after the brute force, and must not land on the other side.
AGES = [-2.0, 0.5, 10.0, 29.5, 30.5, 59.5, 60.5, 100.0]
attribute_values = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([0.5, 2.0, 250.0, "250.00", "2", "pro", "basic", "", True, False]),
    st.sampled_from(AGES).map(lambda d: int(NOW - d * DAY)),
    st.just("2024-05-01T10:00:00Z"),  # a date sent as a string: never "within" anything
)
people = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(ATTRIBUTES), attribute_values, max_size=5),
        st.lists(
            st.tuples(st.sampled_from(["order_placed", "refund_issued"]), st.sampled_from(AGES)),
            max_size=3,
        ),
    ),
    max_size=12,
)
literals = st.sampled_from([0, 1, 2, 2.0, 100, "2", "pro", "250.00", True, False, -1])
simple = st.one_of(
    st.tuples(
        st.just("cmp"),
        st.sampled_from(ATTRIBUTES),
        st.sampled_from(["=", "!=", ">", ">=", "<", "<="]),
        literals,
    ),
    st.tuples(st.sampled_from(["exists", "blank"]), st.sampled_from(ATTRIBUTES)),
    st.tuples(st.just("within"), st.sampled_from(ATTRIBUTES), st.sampled_from([1, 30, 60])),
    st.tuples(
        st.just("performed"),
        st.sampled_from(["order_placed", "refund_issued", "x"]),
        st.sampled_from([None, 1, 30, 60]),
    ),
)
conditions = st.recursive(
    simple,
    lambda kids: st.tuples(st.sampled_from(["AND", "OR"]), st.lists(kids, min_size=2, max_size=3)),
    max_leaves=5,
)


def text_of(cond) -> str:
    """The test's own printer: the sandbox must parse what a person would write."""
    kind = cond[0]
    if kind in ("AND", "OR"):
        return "(" + f" {kind} ".join(text_of(c) for c in cond[1]) + ")"
    if kind == "cmp":
        _, name, op, value = cond
        shown = json.dumps(value) if isinstance(value, (str, bool)) else repr(value)
        return f"{name} {op} {shown}"
    if kind in ("exists", "blank"):
        return f"{cond[1]} {kind}"
    if kind == "within":
        return f"{cond[1]} within {cond[2]} days"
    within = f" within {cond[2]} days" if cond[2] is not None else ""
    return f"performed {cond[1]}{within}"


def brute(cond, attributes: dict, events: list, now: float) -> bool:
    kind = cond[0]
    if kind == "AND":
        return all(brute(c, attributes, events, now) for c in cond[1])
    if kind == "OR":
        return any(brute(c, attributes, events, now) for c in cond[1])
    if kind == "performed":
        return any(
            name == cond[1] and (cond[2] is None or age <= cond[2]) and age >= 0
            for name, age in events
        )
    value = attributes.get(cond[1])
    if kind == "exists":
        return value not in (None, "")
    if kind == "blank":
        return value in (None, "")
    if kind == "within":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and now - cond[2] * DAY <= value <= now
    _, _, op, literal = cond
    if value is None:
        return False

    def type_of(v):
        return bool if isinstance(v, bool) else float if isinstance(v, (int, float)) else type(v)

    if type_of(value) is not type_of(literal):
        return op == "!="
    if type_of(value) is bool and op not in ("=", "!="):
        return False
    return {
        "=": value == literal,
        "!=": value != literal,
        ">": value > literal,
        ">=": value >= literal,
        "<": value < literal,
        "<=": value <= literal,
    }[op]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(people, conditions)
def test_the_live_count_is_a_brute_force_filter_over_the_people(population, cond):
    with Sandbox(site_id="site", api_key="secret") as sandbox, requests.Session() as http:
        http.auth = AUTH
        ops = []
        for i, (attributes, events) in enumerate(population):
            ops.append(identify({"id": f"p{i}"}, **attributes))
            ops += [event({"id": f"p{i}"}, name, int(NOW - age * DAY)) for name, age in events]
        if ops:
            send(http, sandbox, *ops)
        r = define(sandbox, "generated", text_of(cond))
        assert r.status_code == 200, r.text
        now = time.time()
        stored = {p["id"]: p["attributes"] for p in sandbox.people()}  # "" attributes are gone
        expected = sum(
            brute(cond, stored[f"p{i}"], [(n, a) for n, a in events], now)
            for i, (_, events) in enumerate(population)
        )
        assert r.json()["count"] == expected, text_of(cond)


# ---- segments over HTTP -------------------------------------------------------------------


def test_define_list_get_and_delete_segments_over_http(sb, http):
    send(
        http,
        sb,
        identify({"id": "1"}, orders_count=3, last_order_at=int(NOW - 5 * DAY)),
        identify({"id": "2"}, orders_count=1, last_order_at=int(NOW - 5 * DAY)),
        identify({"id": "3"}, orders_count=4, last_order_at="2024-05-01T10:00:00Z"),
        identify({"id": "4"}, orders_count="7"),
    )  # a number as a string counts as no number
    r = define(sb, "Repeat buyers", "orders_count >= 2 AND last_order_at within 60 days")
    assert r.status_code == 200, r.text
    repeat = r.json()
    assert repeat["kind"] == "dynamic" and repeat["count"] == 1 and isinstance(repeat["id"], int)
    second = define(sb, "Has orders, no date", "orders_count > 0 AND last_order_at blank").json()
    assert second["id"] == repeat["id"] + 1 and second["count"] == 0
    listed = requests.get(f"{sb.url}/_sandbox/segments").json()
    assert [(s["name"], s["count"]) for s in listed] == [
        ("Repeat buyers", 1),
        ("Has orders, no date", 0),
    ]
    one = requests.get(f"{sb.url}/_sandbox/segments/{repeat['id']}").json()
    assert one["members"] == [{"id": "1", "email": None, "cio_id": sb.person(id="1")["cio_id"]}]
    assert sb.segment_count(repeat["id"]) == 1 and sb.segment(repeat["id"])["count"] == 1
    # Live: the next identify changes the count at once.
    send(http, sb, identify({"id": "2"}, orders_count=2))
    assert count(sb, repeat["id"]) == 2
    assert requests.delete(f"{sb.url}/_sandbox/segments/{repeat['id']}").status_code == 200
    assert requests.get(f"{sb.url}/_sandbox/segments/{repeat['id']}").status_code == 404
    assert requests.delete(f"{sb.url}/_sandbox/segments/{repeat['id']}").status_code == 404
    assert requests.get(f"{sb.url}/_sandbox/segments/x").status_code == 404


@pytest.mark.parametrize(
    "body,message",
    [
        ({"name": "x", "condition": "a >="}, "condition: expected a value"),
        ({"name": "", "condition": "a = 1"}, "name must be a non-empty string"),
        ({"name": "x", "condition": "a = 1", "kind": "manual"}, "a manual segment has no"),
        ({"name": "x", "kind": "dynamic"}, "a dynamic segment needs a condition"),
        ({"name": "x", "kind": "smart"}, "kind must be one of dynamic, manual"),
        ({"name": "x", "condition": "a = 1", "id": "7"}, "id must be a positive integer"),
        ({"name": "x", "conditon": "a = 1"}, "unknown field 'conditon'"),
    ],
)
def test_bad_definitions_are_400_with_one_line(sb, body, message):
    r = requests.post(f"{sb.url}/_sandbox/segments", json=body)
    assert r.status_code == 400 and message in r.json()["meta"]["error"], r.text
    assert requests.get(f"{sb.url}/_sandbox/segments").json() == []


def test_explicit_ids_and_the_python_interface(sb, http):
    assert sb.add_segment("Seven", "vip = true", id=7) == 7
    assert sb.add_segment("Next") == 8  # no condition: manual
    assert define(sb, "Again", "vip = true", id=7).json()["meta"]["error"] == "segment 7 exists"
    with pytest.raises(ValueError, match="condition: expected"):
        sb.add_segment("bad", "vip =")
    send(http, sb, identify({"id": "1"}, vip=True), identify({"id": "2"}, vip="true"))
    assert sb.segment_count(7) == 1 and sb.segment(8)["kind"] == "manual"
    assert [p["id"] for p in sb.segment_members(7)] == ["1"]
    with pytest.raises(KeyError):
        sb.segment_count(99)
    assert sb.segment(99) is None
    sb.reset()  # data goes, definitions stay
    assert [s["id"] for s in sb.segments()] == [7, 8] and sb.segment_count(7) == 0


def test_missing_attributes_match_no_comparison_and_suppressed_people_no_segment(sb, http):
    send(
        http,
        sb,
        identify({"id": "1"}, plan="pro"),
        identify({"id": "2"}),
        identify({"id": "3"}, plan="basic"),
        identify({"id": "4"}, plan=3),
    )
    assert sb.segment_count(sb.add_segment("not pro", "plan != 'pro'")) == 2  # 3 and 4, not 2
    assert sb.segment_count(sb.add_segment("after b", "plan > 'b'")) == 2  # strings as strings
    blank = sb.add_segment("no plan", "plan blank")
    assert sb.segment_count(blank) == 1
    send(http, sb, {"type": "person", "action": "suppress", "identifiers": {"id": "2"}})
    assert sb.segment_count(blank) == 0


def test_performed_counts_events_within_the_window(sb, http):
    send(
        http,
        sb,
        event({"id": "1"}, "order_placed", int(NOW - 2 * DAY)),
        event({"id": "2"}, "order_placed", int(NOW - 40 * DAY)),
        event({"id": "3"}, "refund_issued", int(NOW - 1 * DAY)),
    )
    assert sb.segment_count(sb.add_segment("ever", "performed order_placed")) == 2
    assert sb.segment_count(sb.add_segment("recent", "performed order_placed within 30 days")) == 1
    both = sb.add_segment(
        "either", "performed order_placed within 30 days OR performed refund_issued"
    )
    assert sb.segment_count(both) == 2


def test_definitions_persist_in_a_db_file(tmp_path):
    db = str(tmp_path / "sb.sqlite")
    with Sandbox(db_path=db) as first:
        first.add_segment("VIP", "vip = true", id=3)
    again = Sandbox(db_path=db)
    assert again.segment(3)["name"] == "VIP" and again.segment(3)["condition"] == "vip = true"


def test_a_segments_file_defines_segments_and_loading_it_again_replaces_them(tmp_path):
    path = tmp_path / "segments.json"
    path.write_text(
        json.dumps(
            [
                {"id": 7, "name": "Repeat buyers", "condition": "orders_count >= 2"},
                {"id": 8, "name": "Winback list", "kind": "manual"},
                {"name": "Anyone with an email", "condition": "email exists"},
            ]
        )
    )
    db = str(tmp_path / "sb.sqlite")
    with Sandbox(db_path=db, segments_file=str(path)) as sandbox:
        assert [(s["id"], s["kind"]) for s in sandbox.segments()] == [
            (7, "dynamic"),
            (8, "manual"),
            (9, "dynamic"),
        ]
    path.write_text(
        json.dumps(
            {"segments": [{"id": 7, "name": "Repeat buyers", "condition": "orders_count >= 3"}]}
        )
    )
    sandbox = Sandbox(db_path=db, segments_file=str(path))
    assert sandbox.segment(7)["condition"] == "orders_count >= 3"
    assert len(sandbox.segments()) == 3
    path.write_text(json.dumps([{"id": 9, "name": "typo", "conditon": "x = 1"}]))
    with pytest.raises(ValueError, match=r"segments.json: segment 1: unknown field 'conditon'"):
        Sandbox(segments_file=str(path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_console_script_loads_segments_and_refuses_a_bad_file(tmp_path):
    path = tmp_path / "segments.json"
    path.write_text(json.dumps([{"id": 4, "name": "VIP", "condition": "vip = true"}]))
    port = _free_port()
    cmd = [
        sys.executable,
        "-c",
        "from target_customerio.sandbox import main; main()",
        "--port",
        str(port),
        "--db",
        ":memory:",
        "--segments",
        str(path),
    ]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}" in line and "1 segment(s)" in line
        r = requests.get(f"http://127.0.0.1:{port}/_sandbox/segments/4")
        assert (r.status_code, r.json()["name"], r.json()["count"]) == (200, "VIP", 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    path.write_text(json.dumps([{"name": "bad", "condition": "vip ="}]))
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--segments" in bad.stderr and "segment 1" in bad.stderr


# ---- manual segments (Track API v1) ---------------------------------------------------------


def members_url(sb, segment_id, action: str = "add") -> str:
    return f"{sb.url}/api/v1/segments/{segment_id}/{action}_customers"


def test_manual_segment_add_and_remove_customers(sb, http):
    send(
        http,
        sb,
        identify({"id": "1"}, email="one@example.com"),
        identify({"id": "2"}),
        identify({"email": "three@example.com"}),
    )
    winback = sb.add_segment("Winback list", kind="manual")
    r = http.post(members_url(sb, winback), json={"ids": ["1", "2", "nobody", 2]})
    assert (r.status_code, r.json()) == (200, {})  # unknown ids are accepted and ignored
    assert sb.segment_count(winback) == 2
    r = http.post(
        members_url(sb, winback), params={"id_type": "email"}, json={"ids": ["THREE@example.com"]}
    )
    assert r.status_code == 200 and sb.segment_count(winback) == 3
    cio = sb.person(id="2")["cio_id"]
    r = http.post(
        members_url(sb, winback, "remove"), params={"id_type": "cio_id"}, json={"ids": [cio]}
    )
    assert r.status_code == 200
    assert sorted(p["id"] or p["email"] for p in sb.segment_members(winback)) == [
        "1",
        "three@example.com",
    ]
    assert sb.requests()[-1]["ops"] == 1 and sb.requests()[-1]["status"] == 200
    # The Python interface does the same.
    assert sb.remove_from_segment(winback, ["1"]) == 1 and sb.add_to_segment(winback, ["1"]) == 1
    # Deleted and suppressed people leave every segment; a merge keeps the primary's place.
    send(http, sb, {"type": "person", "action": "delete", "identifiers": {"id": "1"}})
    assert [p["email"] for p in sb.segment_members(winback)] == ["three@example.com"]
    send(
        http,
        sb,
        {"type": "person", "action": "suppress", "identifiers": {"email": "three@example.com"}},
    )
    assert sb.segment_count(winback) == 0
    sb.add_to_segment(winback, ["2"])
    send(http, sb, identify({"id": "4"}))
    send(
        http,
        sb,
        {"type": "person", "action": "merge", "primary": {"id": "4"}, "secondary": {"id": "2"}},
    )
    assert [p["id"] for p in sb.segment_members(winback)] == ["4"]


def test_manual_segment_requests_are_checked(sb, http):
    manual = sb.add_segment("List", kind="manual")
    dynamic = sb.add_segment("Dyn", "vip = true")
    cases = [
        (members_url(sb, manual), {"ids": [str(i) for i in range(1001)]}, {}, 400, "at most 1000"),
        (members_url(sb, manual), {"id": ["1"]}, {}, 400, '{"ids": [...]}'),
        (members_url(sb, manual), {"ids": [None]}, {}, 400, "non-empty strings"),
        (members_url(sb, manual), {"ids": ["1"]}, {"id_type": "phone"}, 400, "id_type"),
        (members_url(sb, dynamic), {"ids": ["1"]}, {}, 400, "is dynamic, not manual"),
        (members_url(sb, 999), {"ids": ["1"]}, {}, 404, "segment 999 not found"),
    ]
    for url, body, params, status, message in cases:
        r = http.post(url, json=body, params=params)
        assert r.status_code == status and message in r.json()["meta"]["error"], (url, r.text)
    assert http.post(members_url(sb, manual), json={"ids": ["x"] * 1000}).status_code == 200
    assert requests.post(members_url(sb, manual), json={"ids": []}).status_code == 401
    assert (
        requests.post(members_url(sb, manual), json={"ids": []}, auth=("site", "wrong")).status_code
        == 401
    )


def test_manual_memberships_persist_and_reset_empties_them(tmp_path):
    db = str(tmp_path / "sb.sqlite")
    with Sandbox(db_path=db) as sandbox, requests.Session() as http:
        http.auth = AUTH
        send(http, sandbox, identify({"id": "1"}))
        manual = sandbox.add_segment("List", kind="manual")
        http.post(members_url(sandbox, manual), json={"ids": ["1"]})
    again = Sandbox(db_path=db)
    assert again.segment_count(manual) == 1
    again.reset()
    assert again.segment_count(manual) == 0 and again.segment(manual)["kind"] == "manual"


def test_faults_apply_to_the_segment_routes(sb, http):
    manual = sb.add_segment("List", kind="manual")
    sb.inject(503, path="/api/v1/segments/")
    assert http.post(members_url(sb, manual), json={"ids": []}).status_code == 503
    assert http.post(members_url(sb, manual), json={"ids": []}).status_code == 200
