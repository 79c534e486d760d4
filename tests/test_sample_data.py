"""The sample retention database, read by the real tap-postgres: discover, sync, re-sync."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from demo.sample_data import (
    CHECKS_VIEW,
    EVENT_KEYS,
    REPLICATION_KEYS,
    VIEWS,
    VIP_GOLD_VALUE,
    VIP_MIN_VALUE,
    VIP_SEGMENT_ID,
    VIP_SEGMENT_VIEW,
    VIP_VIEW,
    break_profiles,
    demote_vips,
    generate,
    load,
    mutate,
    profiles_broken,
    second_orders,
    vips,
)
from target_customerio.sandbox.conditions import Subject, parse
from tests.pg_fixtures import TapRun, discover, incremental_catalog, run_tap, tap_config, write_json
from tests.pg_fixtures import postgres as postgres  # noqa: PLC0414  (fixture; `as` avoids F811)

# What tap-postgres 0.10.0 makes of each view column: JSON type, or "date-time" for a string
# with format date-time (timestamptz). numeric(12,2) becomes a plain "number" (no multipleOf).
EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    "customer_profiles": {
        "customer_id": "string",
        "email": "string",
        "first_name": "string",
        "last_name": "string",
        "email_opt_in": "boolean",
        "sms_opt_in": "boolean",
        "is_subscriber": "boolean",
        "subscription_status": "string",
        "last_order_at": "date-time",
        "orders_count": "integer",
        "lifetime_value": "number",
        "next_reorder_due_at": "date-time",
        "updated_at": "date-time",
    },
    "checkout_started_events": {
        "event_key": "string",
        "customer_id": "string",
        "email": "string",
        "checkout_id": "string",
        "started_at": "date-time",
        "cart_value": "number",
        "items_count": "integer",
        "currency": "string",
        "cart_url": "string",
        "converted": "boolean",
    },
    "order_placed_events": {
        "order_id": "integer",
        "customer_id": "string",
        "placed_at": "date-time",
        "total": "number",
        "currency": "string",
        "items_count": "integer",
        "sku": "string",
    },
    "order_fulfilled_events": {
        "order_id": "integer",
        "customer_id": "string",
        "fulfilled_at": "date-time",
        "carrier": "string",
    },
    "refund_issued_events": {
        "refund_id": "string",
        "order_id": "integer",
        "customer_id": "string",
        "issued_at": "date-time",
        "amount": "number",
        "reason": "string",
    },
    "subscription_events": {
        "event_key": "string",
        "customer_id": "string",
        "event_name": "string",
        "occurred_at": "date-time",
        "subscription_id": "string",
        "interval_days": "integer",
    },
}


def stream(view: str) -> str:
    return f"public-{view}"


def query(dsn: str, sql: str, *args: Any) -> list[tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def scalar(dsn: str, sql: str, *args: Any) -> Any:
    return query(dsn, sql, *args)[0][0]


# --- the data itself -------------------------------------------------------------------------


def test_generation_is_deterministic_for_seed_and_now() -> None:
    now = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
    assert generate(60, 7, now) == generate(60, 7, now)
    assert generate(60, 7, now) != generate(60, 8, now)
    with pytest.raises(ValueError):
        generate(5, 7, now)


def test_load_is_idempotent_and_counts_rows(postgres) -> None:
    now = datetime.now(timezone.utc)
    counts = load(postgres.dsn, now=now)
    again = load(postgres.dsn, now=now)
    assert counts == again
    assert counts["customers"] == counts["customer_profiles"] == 200
    for name in VIEWS:
        assert counts[name] > 0, name
    # The dirty view: one row per line item, so more rows than orders.
    assert counts["order_placed_events"] == counts["order_items"]
    assert counts["order_placed_events_distinct_orders"] == counts["orders"]
    assert counts["order_placed_events"] > counts["orders"]


def test_dirty_cases_from_the_field(postgres) -> None:
    dsn = postgres.dsn
    emails = dict(query(dsn, "SELECT customer_id, email FROM customers"))
    assert emails["C000001"] == "  Jane.Doe@Example.COM "
    assert emails["C000002"] is None and emails["C000003"] == ""
    assert any(e and e != e.strip() for e in emails.values())
    assert any(e and e != e.lower() for e in emails.values())
    # A guest checkout whose email later registered (in another case) as a customer.
    guest = query(
        dsn,
        """
        SELECT ch.started_at, c.created_at
        FROM checkout_started_events ch
        JOIN customers c ON lower(trim(c.email)) = lower(trim(ch.email))
        WHERE ch.customer_id IS NULL""",
    )
    assert guest and all(started < created for started, created in guest)
    # Refunds arrive at least a day after their order.
    gaps = query(
        dsn,
        """
        SELECT r.issued_at - o.placed_at FROM refunds r JOIN orders o USING (order_id)""",
    )
    assert gaps and all(gap >= timedelta(days=1) for (gap,) in gaps)
    money = query(
        dsn,
        """
        SELECT table_name, column_name, data_type FROM information_schema.columns
        WHERE column_name IN ('total', 'amount', 'cart_value', 'lifetime_value')""",
    )
    assert money and {t for _, _, t in money} == {"numeric"}
    assert scalar(dsn, "SELECT count(*) FROM orders WHERE total = 0") >= 1


def test_event_times_are_relative_to_now(postgres) -> None:
    now = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
    load(postgres.dsn, now=now)
    try:
        for view in EVENT_KEYS:
            column = REPLICATION_KEYS[view]
            newest, fresh, old, total = query(
                postgres.dsn,
                f"""
                SELECT max({column}),
                       count(*) FILTER (WHERE {column} > %s - interval '48 hours'),
                       count(*) FILTER (WHERE {column} < %s - interval '3 days'),
                       count(*)
                FROM {view}""",
                now,
                now,
            )[0]
            assert newest <= now - timedelta(minutes=5), view
            assert fresh > total / 2, f"{view}: most events are fresh"
            assert old >= 1, f"{view}: some events are older than 3 days"
    finally:
        load(postgres.dsn)


def test_profile_updated_at_follows_related_rows(postgres) -> None:
    rows = query(
        postgres.dsn,
        """
        SELECT p.customer_id FROM customer_profiles p JOIN customers c USING (customer_id)
        WHERE p.updated_at < c.updated_at
           OR p.updated_at < p.last_order_at
           OR (p.orders_count > 0) <> (p.last_order_at IS NOT NULL)""",
    )
    assert rows == []
    jane = query(
        postgres.dsn,
        """
        SELECT is_subscriber, subscription_status, orders_count, lifetime_value
        FROM customer_profiles WHERE customer_id = 'C000001'""",
    )[0]
    assert jane[:3] == (True, "active", 2) and jane[3] > 0


# --- the reconcile checks (segment_checks) --------------------------------------------------

ALL_SEGMENTS = json.loads(
    (Path(__file__).resolve().parents[1] / "demo" / "segments.json").read_text()
)
SEGMENTS = [s for s in ALL_SEGMENTS if s.get("kind", "dynamic") == "dynamic"]  # with a condition
CANARY, GUARDRAIL = 1, 2


def checks(dsn: str) -> tuple[datetime, dict[int, tuple[int, str]]]:
    """The view's rows as {segment_id: (expected, tolerance)}, and the now() they were counted."""
    rows = query(dsn, f"SELECT now(), segment_id, expected, tolerance FROM {CHECKS_VIEW}")
    return rows[0][0], {segment: (expected, tolerance) for _, segment, expected, tolerance in rows}


def condition_counts(dsn: str, at: datetime) -> dict[int, int]:
    """Each demo segment's count, evaluated with the sandbox's condition language over the
    customer_profiles rows as the target sends them (dates as integer unix seconds)."""
    profiles = query(dsn, "SELECT orders_count, last_order_at FROM customer_profiles")
    people = [
        {"orders_count": orders, "last_order_at": int(last.timestamp()) if last else None}
        for orders, last in profiles
    ]
    return {
        s["id"]: sum(parse(s["condition"]).matches(Subject(p, {}, at.timestamp())) for p in people)
        for s in SEGMENTS
    }


def test_segment_checks_expect_what_a_brute_force_count_of_the_data_says(postgres) -> None:
    now = datetime.now(timezone.utc)
    load(postgres.dsn, now=now)
    rows = generate(200, 7, now)  # the rows load() inserted
    at, found = checks(postgres.dsn)
    orders: dict[str, list[datetime]] = defaultdict(list)
    for order in rows.orders:
        if order["status"] != "canceled":
            orders[order["customer_id"]].append(order["placed_at"])
    canary = sum(
        1
        for c in rows.customers
        if len(orders[c["customer_id"]]) >= 2
        and at - timedelta(days=60) <= max(orders[c["customer_id"]]) <= at
    )
    guardrail = sum(
        1 for c in rows.customers if orders[c["customer_id"]] and not all(orders[c["customer_id"]])
    )
    assert found == {CANARY: (canary, "2%"), GUARDRAIL: (guardrail, "0")}
    assert 20 < canary < 200 and guardrail == 0
    # A repeat buyer whose last order is older than the window is not in the canary.
    assert any(len(t) >= 2 and max(t) < at - timedelta(days=60) for t in orders.values())
    columns = query(
        postgres.dsn,
        """
        SELECT column_name, data_type FROM information_schema.columns
        WHERE table_name = %s ORDER BY ordinal_position""",
        CHECKS_VIEW,
    )
    assert columns == [("segment_id", "integer"), ("expected", "integer"), ("tolerance", "text")]


def test_segment_checks_agree_with_the_segments_over_the_published_profiles(postgres) -> None:
    """demo/segments.json's conditions over customer_profiles (as Customer.io holds it) count
    what segment_checks expects: the ids, the columns and the 60 days are the same."""
    load(postgres.dsn)
    assert sorted(s["id"] for s in SEGMENTS) == [CANARY, GUARDRAIL]
    at, found = checks(postgres.dsn)
    assert condition_counts(postgres.dsn, at) == {k: v[0] for k, v in found.items()}
    mutate(postgres.dsn)
    repeat = second_orders(postgres.dsn, 3)
    assert len(repeat["customer_ids"]) == 3
    at, after = checks(postgres.dsn)
    assert condition_counts(postgres.dsn, at) == {k: v[0] for k, v in after.items()}
    assert after[CANARY][0] >= found[CANARY][0] + 3  # three new repeat buyers, at least


def test_the_broken_profiles_view_loses_last_order_at_but_not_the_expected_counts(postgres) -> None:
    load(postgres.dsn)
    _, healthy = checks(postgres.dsn)
    columns_sql = """SELECT column_name, data_type FROM information_schema.columns
                     WHERE table_name = 'customer_profiles' ORDER BY ordinal_position"""
    columns = query(postgres.dsn, columns_sql)
    assert ("last_order_at", "timestamp with time zone") in columns
    assert not profiles_broken(postgres.dsn)
    break_profiles(postgres.dsn)
    try:
        assert profiles_broken(postgres.dsn)
        assert query(postgres.dsn, columns_sql) == columns  # the same columns: tap, route unchanged
        assert (
            scalar(
                postgres.dsn,
                "SELECT count(*) FROM customer_profiles"
                " WHERE orders_count > 0 AND last_order_at IS NULL",
            )
            > 100
        )
        assert checks(postgres.dsn)[1] == healthy  # counted from the tables, not the view
    finally:
        load(postgres.dsn)
    assert not profiles_broken(postgres.dsn)
    assert (
        scalar(
            postgres.dsn,
            "SELECT count(*) FROM customer_profiles"
            " WHERE orders_count > 0 AND last_order_at IS NULL",
        )
        == 0
    )


# --- through the real tap-postgres -----------------------------------------------------------


@pytest.fixture(scope="module")
def tap_files(postgres, tmp_path_factory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("tap")
    config = write_json(directory / "config.json", tap_config(postgres))
    discovered = discover(config)
    catalog = write_json(directory / "catalog.json", incremental_catalog(discovered))
    return {"dir": directory, "config": config, "catalog": catalog, "discovered": discovered}


def test_discovery_finds_the_views_with_json_types(tap_files) -> None:
    entries = {e["tap_stream_id"]: e for e in tap_files["discovered"]["streams"]}
    for view, columns in EXPECTED_COLUMNS.items():
        entry = entries[stream(view)]
        assert entry["is_view"] is True and entry["key_properties"] == []
        properties = entry["schema"]["properties"]
        assert list(properties) == list(columns), view
        for column, kind in columns.items():
            assert json_kind(properties[column]) == kind, (view, column)
    assert "public-customers" in entries  # tables are discovered too (not selected)
    checks_entry = entries[stream(CHECKS_VIEW)]  # what the reconcile job reads
    assert {c: json_kind(t) for c, t in checks_entry["schema"]["properties"].items()} == {
        "segment_id": "integer",
        "expected": "integer",
        "tolerance": "string",
    }


def json_kind(schema: dict[str, Any]) -> str:
    types = [t for t in schema["type"] if t != "null"]
    assert len(types) == 1 and "null" in schema["type"]
    if schema.get("format") == "date-time":
        assert types == ["string"]
        return "date-time"
    return types[0]


def value_matches(kind: str, value: Any) -> bool:
    if value is None:
        return True
    if kind == "date-time":
        return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
    expected = {"string": str, "boolean": bool, "integer": int, "number": (int, float)}[kind]
    return isinstance(value, expected) and (kind == "boolean" or not isinstance(value, bool))


def test_incremental_sync_then_second_night(postgres, tap_files) -> None:
    load(postgres.dsn)
    first = run_tap(tap_files["config"], tap_files["catalog"])
    check_first_sync(postgres.dsn, first)

    changes = mutate(postgres.dsn)
    state = write_json(tap_files["dir"] / "state.json", first.state)
    second = run_tap(tap_files["config"], tap_files["catalog"], state)

    changed = rows_after_bookmark(first, second, "customer_profiles", "customer_id")
    assert changed == set(changes["changed_customer_ids"])
    for view, keys in changes["new_event_keys"].items():
        assert keys, view
        assert rows_after_bookmark(first, second, view, EVENT_KEYS[view]) == set(keys), view
    for view in VIEWS:
        assert parse_time(second.bookmark(stream(view))) > parse_time(first.bookmark(stream(view)))


def check_first_sync(dsn: str, run: TapRun) -> None:
    assert set(run.records) == {stream(v) for v in VIEWS}
    for view, columns in EXPECTED_COLUMNS.items():
        records = run.records[stream(view)]
        assert len(records) == scalar(dsn, f"SELECT count(*) FROM {view}"), view
        for record in records:
            assert list(record) == list(columns), view
            for column, kind in columns.items():
                assert value_matches(kind, record[column]), (view, column, record[column])
        key = REPLICATION_KEYS[view]
        bookmark = run.state["bookmarks"][stream(view)]
        assert bookmark["replication_key"] == key
        newest = max(parse_time(r[key]) for r in records)
        assert parse_time(bookmark["replication_key_value"]) == newest
        assert run.schemas[stream(view)]["bookmark_properties"] == [key]
    placed = run.records[stream("order_placed_events")]
    assert len(placed) > len({r["order_id"] for r in placed})


def rows_after_bookmark(first: TapRun, second: TapRun, view: str, key: str) -> set:
    """Keys of second-sync rows newer than the first bookmark; asserts nothing else came out.

    tap-postgres filters with `replication_key >= bookmark`, so rows sitting exactly on the
    bookmark are re-emitted (unchanged) on every run; everything else must be new.
    """
    column = REPLICATION_KEYS[view]
    bookmark = parse_time(first.bookmark(stream(view)))
    rows = second.records.get(stream(view), [])
    assert all(parse_time(r[column]) >= bookmark for r in rows), view
    previous = [r for r in first.records[stream(view)] if parse_time(r[column]) == bookmark]
    on_bookmark = [r for r in rows if parse_time(r[column]) == bookmark]
    assert all(r in previous for r in on_bookmark), view
    return {r[key] for r in rows if parse_time(r[column]) > bookmark}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- the mirrored VIP views (vip_customers, vip_segment) -------------------------------------


def brute_force_vips(rows: Any) -> dict[str, str]:
    """customer_id -> vip_tier by the rule, over the generated rows: lifetime value (orders that
    are not canceled, less refunds) >= VIP_MIN_VALUE; gold from VIP_GOLD_VALUE."""
    value: dict[str, Decimal] = defaultdict(Decimal)
    customer_of = {o["order_id"]: o["customer_id"] for o in rows.orders}
    for order in rows.orders:
        if order["status"] != "canceled":
            value[order["customer_id"]] += order["total"]
    for refund in rows.refunds:
        value[customer_of[refund["order_id"]]] -= refund["amount"]
    return {
        c: ("gold" if v >= VIP_GOLD_VALUE else "silver")
        for c, v in value.items()
        if v >= VIP_MIN_VALUE
    }


def test_the_vip_views_select_what_the_rule_says(postgres) -> None:
    now = datetime.now(timezone.utc)
    load(postgres.dsn, now=now)
    expected = brute_force_vips(generate(200, 7, now))
    assert vips(postgres.dsn) == expected
    assert 20 < len(expected) <= 30  # two leaving stays under the guard's 10%
    assert 2 / len(expected) < 0.1
    assert {"gold", "silver"} <= set(expected.values())
    rows = query(postgres.dsn, f"SELECT customer_id, vip FROM {VIP_VIEW}")
    assert all(vip is True for _, vip in rows) and len(rows) == len(expected)
    members = query(postgres.dsn, f"SELECT customer_id, segment_id FROM {VIP_SEGMENT_VIEW}")
    assert sorted(members) == sorted((c, VIP_SEGMENT_ID) for c in expected)
    # The same lifetime value customer_profiles publishes.
    profiles = dict(
        query(postgres.dsn, "SELECT customer_id, lifetime_value FROM customer_profiles")
    )
    assert {c for c, v in profiles.items() if v >= VIP_MIN_VALUE} == set(expected)
    columns_sql = """SELECT column_name, data_type FROM information_schema.columns
                     WHERE table_name = %s ORDER BY ordinal_position"""
    assert query(postgres.dsn, columns_sql, VIP_VIEW) == [
        ("customer_id", "text"),
        ("vip", "boolean"),
        ("vip_tier", "text"),
    ]
    assert query(postgres.dsn, columns_sql, VIP_SEGMENT_VIEW) == [
        ("customer_id", "text"),
        ("segment_id", "integer"),
    ]
    assert {"id": VIP_SEGMENT_ID, "name": "VIP (from SQL)", "kind": "manual"} in ALL_SEGMENTS


def test_demoting_two_vips_takes_exactly_them_out_of_both_views(postgres) -> None:
    load(postgres.dsn)
    mutate(postgres.dsn)
    before = vips(postgres.dsn)
    demoted = demote_vips(postgres.dsn, 2)
    assert len(demoted["customer_ids"]) == 2 and len(demoted["refund_ids"]) == 2
    assert set(demoted["customer_ids"]) <= set(before)
    after = vips(postgres.dsn)
    assert after == {c: t for c, t in before.items() if c not in demoted["customer_ids"]}
    members = {
        c for c, _ in query(postgres.dsn, f"SELECT customer_id, segment_id FROM {VIP_SEGMENT_VIEW}")
    }
    assert members == set(after)
    refunds = query(
        postgres.dsn,
        "SELECT refund_id, customer_id FROM refund_issued_events WHERE refund_id = ANY(%s)",
        demoted["refund_ids"],
    )
    assert sorted(c for _, c in refunds) == sorted(demoted["customer_ids"])
