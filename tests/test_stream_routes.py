"""Streams and routes that nearly match: the message names the route that matched no stream and
the stream it probably meant; under `unmapped_streams: skip` such a stream is exit 2 before any
STATE covers the people it skipped; the report lists the routes that received nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from target_customerio.routes import near_miss
from tests.harness import record, run_target, schema, state, target_config, writes

MEMBERS = {"kind": "person", "identifier": {"field": "id", "type": "id"}}
ROUTES = {"members": MEMBERS, "public-orders": MEMBERS}


def _stream(name: str, rows: int = 2) -> list[dict]:
    return [schema(name, {"id": {"type": "string"}})] + [
        record(name, {"id": f"{name}-{i}"}) for i in range(rows)
    ]


def test_a_route_named_nearly_as_a_stream_is_named_with_the_stream_it_meant(sandbox, tmp_path):
    run = run_target(
        target_config(sandbox.url, tmp_path, ROUTES), _stream("shop-members"), tmp_path
    )
    assert run.returncode == 2, run.stderr
    [last] = [line for line in run.stderr.splitlines() if "ConfigError" in line]
    assert "stream 'shop-members'" in last
    assert "the route `members` matches no stream of this run" in last
    assert "did you mean to name the route `shop-members`?" in last


def test_a_skipped_near_miss_of_a_route_that_received_nothing_is_exit_2_before_state(
    sandbox, tmp_path
):
    config = target_config(sandbox.url, tmp_path, ROUTES, unmapped_streams="skip")
    run = run_target(config, [*_stream("shop-members"), state({"n": 1})], tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""  # no STATE covers the people it skipped
    assert "the route `members` matches no stream" in run.stderr
    assert "leave it out of the tap's `select`" in run.stderr
    assert writes(sandbox) == []


def test_a_skipped_stream_is_no_near_miss_once_the_route_has_its_own_stream(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, ROUTES, unmapped_streams="skip")
    messages = [*_stream("members"), *_stream("shop-members"), state({"n": 1})]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.states == [{"n": 1}]
    assert run.report["streams"]["shop-members"]["skipped_by_reason"] == {"unmapped": 2}


def test_the_report_lists_the_routes_that_received_nothing(sandbox, tmp_path):
    routes = {**ROUTES, "public-empty": MEMBERS}
    config = target_config(sandbox.url, tmp_path, routes, unmapped_streams="skip")
    messages = [*_stream("members"), *_stream("public-empty", rows=0), state({"n": 1})]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.report["routes_received_nothing"] == ["public-orders", "public-empty"]
    assert "route(s) that received nothing in this run: public-orders, public-empty" in run.stderr


words = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=6, max_size=20)


@given(words, st.integers(0, 100), st.sampled_from(["drop", "double", "swap"]))
def test_one_typing_mistake_is_a_near_miss(table, at, mistake):
    name = f"public-{table}"
    i = 7 + at % len(table)
    typo = {
        "drop": name[:i] + name[i + 1 :],
        "double": name[:i] + name[i] + name[i:],
        "swap": name[:i] + name[i + 1 : i + 2] + name[i] + name[i + 2 :],
    }[mistake]
    if typo != name:
        assert near_miss(typo, ["other-route", name]) == name


@given(words, words)
def test_tables_of_one_schema_are_not_near_misses_for_sharing_its_prefix(a, b):
    if a in b or b in a or _far(a, b) is False:
        return
    assert near_miss(f"public-{a}", [f"public-{b}"]) is None


def _far(a: str, b: str) -> bool:
    """Clearly different tables: no common letter at the same place, lengths apart or not."""
    return sum(x == y for x, y in zip(a, b, strict=False)) == 0 and len(set(a) & set(b)) < 2
