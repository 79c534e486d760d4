"""Live campaigns through the real target process against the sandbox: what a run can start is
previewed and counted (the counts match what the sandbox's simulator then records), events
older than 72 hours are counted apart and enter nobody, stopped and draft campaigns are not
counted, max_campaign_entries stops a backfill (exit 10) before anybody past the limit enters,
and a re-run enters nobody again."""

from __future__ import annotations

import json
import time

import pytest

from tests.harness import record, run_target, schema, state, target_config

ORDERS = "public-orders"
MEMBERS = "public-segment_members"
PEOPLE = "public-customers"
HOUR = 3600
ORDER_ROUTE = {
    "kind": "event",
    "identifier": {"field": "customer_id", "type": "id"},
    "event_name": "Order Placed",  # normalised: order_placed, as the campaign's trigger
    "event_id": ["order_id"],
    "timestamp": "placed_at",
}


def config(sandbox, tmp_path, routes=None, **extra):
    return target_config(
        sandbox.url,
        tmp_path,
        routes or {ORDERS: ORDER_ROUTE},
        app_api_key=sandbox.app_api_key,
        app_api_url=sandbox.url,
        **extra,
    )


def orders(rows: list[tuple[str, int]], every: int | None = None) -> list[dict]:
    """Order events (customer, hours ago), with a STATE after every `every` of them."""
    now = time.time()
    out = [
        schema(
            ORDERS,
            {
                "order_id": {"type": "integer"},
                "customer_id": {"type": "string"},
                "placed_at": {"type": "integer"},
            },
        )
    ]
    for i, (customer, hours_ago) in enumerate(rows, 1):
        row = {"order_id": i, "customer_id": customer, "placed_at": int(now - hours_ago * HOUR)}
        out.append(record(ORDERS, row))
        if every and i % every == 0:
            out.append(state({"orders": i}))
    return [*out, state({"orders": len(rows)})]


def entries(sandbox, campaign_id: int) -> list[dict]:
    return sandbox.campaign_entries(campaign_id)


def counted(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["campaigns"]["campaigns"]}


@pytest.fixture
def campaigns(sandbox):
    return {
        "running": sandbox.add_campaign("Post-purchase", event_name="order_placed"),
        "draft": sandbox.add_campaign("Draft", event_name="order_placed", state="draft"),
        "stopped": sandbox.add_campaign("Old", event_name="order_placed", state="stopped"),
        "other": sandbox.add_campaign("Cart", event_name="checkout_started"),
    }


# 8 people with 10 recent orders (two with two), and 5 orders from 4 days ago
BACKFILL = (
    [(f"C{i}", 1) for i in range(8)] + [("C0", 2), ("C1", 3)] + [(f"OLD{i}", 96) for i in range(5)]
)


def test_the_preview_counts_what_the_sandbox_then_records(sandbox, campaigns, tmp_path):
    dry = run_target(
        config(sandbox, tmp_path, dry_run=True, dry_run_file=str(tmp_path / "dry.jsonl")),
        orders(BACKFILL),
        tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == ""  # the preview goes to stderr: stdout is for STATE only
    assert "campaigns this run would start" in dry.stderr
    assert "order_placed can start Post-purchase (running) for 8 people; 5 older events cannot" in (
        dry.stderr
    )
    preview = counted(dry.report)
    assert set(preview) == {"Post-purchase", "Cart"}  # a stopped or draft campaign starts nobody
    assert preview["Post-purchase"] == {
        "id": campaigns["running"],
        "name": "Post-purchase",
        "state": "running",
        "trigger": {"event_name": "order_placed"},
        "events": 10,
        "people": 8,
        "too_old_to_trigger": 5,
        "guard": None,
    }
    assert preview["Cart"]["events"] == 0
    assert sandbox.events() == []

    run = run_target(config(sandbox, tmp_path), orders(BACKFILL), tmp_path)
    assert run.returncode == 0, run.stderr
    assert counted(run.report) == preview  # a real run writes what it sent
    entered = entries(sandbox, campaigns["running"])
    assert len(entered) == preview["Post-purchase"]["events"]
    assert len({e["person_id"] for e in entered}) == preview["Post-purchase"]["people"]
    assert not any(e["person_id"].startswith("OLD") for e in entered)  # too old: nobody
    assert len([e for e in sandbox.events() if e["person_id"].startswith("OLD")]) == 5
    for name in ("draft", "stopped", "other"):
        assert entries(sandbox, campaigns[name]) == []
    assert sandbox.app_api_key not in run.stderr + json.dumps(run.report)


@pytest.mark.parametrize("how", ["ledger", "full_resend"])
def test_a_rerun_enters_nobody_again(sandbox, campaigns, tmp_path, how):
    first = run_target(config(sandbox, tmp_path), orders(BACKFILL), tmp_path)
    assert first.returncode == 0, first.stderr
    before = entries(sandbox, campaigns["running"])
    extra = {"full_resend": True} if how == "full_resend" else {}
    again = run_target(config(sandbox, tmp_path, **extra), orders(BACKFILL), tmp_path)
    assert again.returncode == 0, again.stderr
    assert entries(sandbox, campaigns["running"]) == before
    if how == "ledger":  # nothing re-sent, so nothing counted
        assert counted(again.report)["Post-purchase"]["events"] == 0
    else:  # re-sent: counted (an upper bound), and Customer.io drops the event ids it has seen
        assert counted(again.report)["Post-purchase"]["events"] == 10
        assert sandbox.counters()["duplicate_events_dropped"] == 15


@pytest.mark.parametrize("workers", [0, 2])
def test_the_guard_stops_a_backfill_before_the_first_person_past_the_limit(
    sandbox, campaigns, tmp_path, workers
):
    rows = [(f"C{i}", 1) for i in range(2000)]  # several chunks: the guard is met mid-stream
    run = run_target(
        config(
            sandbox,
            tmp_path,
            max_campaign_entries=600,
            mapping_workers=workers,
            checkpoint_interval_seconds=0.001,
        ),
        orders(rows, every=100),
        tmp_path,
    )
    assert run.returncode == 10, run.stderr
    assert "CampaignGuardError" in run.stderr
    assert "target-customerio failed (max_campaign_entries)" in run.stderr.splitlines()[-1]
    assert "'Post-purchase' (id 1, running) for more than max_campaign_entries 600" in run.stderr
    assert "order_placed" in run.stderr
    entered = entries(sandbox, campaigns["running"])
    assert len(entered) == 600  # those before it delivered, nobody past the limit
    assert {e["person_id"] for e in entered} == {f"C{i}" for i in range(600)}
    assert len(sandbox.events()) == 600
    assert all(s["orders"] <= 600 for s in run.states)  # STATE: only what was delivered
    guard = counted(run.report)["Post-purchase"]["guard"]
    assert guard["action"] == "stopped the run" and guard["max_campaign_entries"] == 600
    assert run.report["status"] == "failed"


def test_a_route_overrides_the_setting_and_a_dry_run_reports_what_the_guard_would_do(
    sandbox, campaigns, tmp_path
):
    routes = {ORDERS: {**ORDER_ROUTE, "max_campaign_entries": 3}}
    run = run_target(
        config(
            sandbox,
            tmp_path,
            routes,
            max_campaign_entries=1000,
            dry_run=True,
            dry_run_file=str(tmp_path / "dry.jsonl"),
        ),
        orders(BACKFILL),
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    post = counted(run.report)["Post-purchase"]
    assert post["guard"] == {
        "max_campaign_entries": 3,
        "stream": ORDERS,
        "event_name": "order_placed",
        "action": "would stop the run (dry run)",
    }
    assert post["people"] == 8  # counted on: what the run would try to send
    assert "would start campaign 'Post-purchase'" in run.stderr
    assert sandbox.events() == []


def test_segment_adds_that_trigger_a_campaign_are_counted(sandbox, tmp_path):
    segment = sandbox.add_segment("Winback list", kind="manual")
    campaign = sandbox.add_campaign("Winback", trigger_segment_ids=[segment])
    routes = {
        PEOPLE: {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}},
        MEMBERS: {
            "kind": "segment",
            "identifier": {"field": "customer_id", "type": "id"},
            "segment_id": "segment_id",
        },
    }
    ids = [f"W{i}" for i in range(6)]
    messages = [
        schema(PEOPLE, {"customer_id": {"type": "string"}}),
        *[record(PEOPLE, {"customer_id": i}) for i in ids],
        schema(MEMBERS, {"customer_id": {"type": "string"}, "segment_id": {"type": "integer"}}),
        *[record(MEMBERS, {"customer_id": i, "segment_id": segment}) for i in ids],
        state({"b": 1}),
    ]
    run = run_target(config(sandbox, tmp_path, routes), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    winback = counted(run.report)["Winback"]
    assert winback["trigger"] == {"segment_ids": [segment]}
    assert (winback["events"], winback["people"]) == (6, 6)
    assert len(entries(sandbox, campaign)) == 6


def test_max_campaign_entries_without_the_app_api_key_is_a_config_error(sandbox, tmp_path):
    cfg = target_config(sandbox.url, tmp_path, {ORDERS: ORDER_ROUTE}, max_campaign_entries=5)
    run = run_target(cfg, orders([("C1", 1)]), tmp_path)
    assert run.returncode == 2
    assert "max_campaign_entries needs setting `app_api_key`" in run.stderr
    assert sandbox.events() == []


def test_without_the_app_api_key_no_campaign_is_read(sandbox, tmp_path):
    sandbox.add_campaign("Post-purchase", event_name="order_placed")
    cfg = target_config(sandbox.url, tmp_path, {ORDERS: ORDER_ROUTE})
    run = run_target(cfg, orders([("C1", 1)]), tmp_path)
    assert run.returncode == 0, run.stderr
    assert "campaigns" not in run.report
    assert not [r for r in sandbox.requests() if r["path"].startswith("/v1/")]


def test_a_campaign_read_refused_stops_the_run_before_anything_is_sent(sandbox, tmp_path):
    cfg = {**config(sandbox, tmp_path), "app_api_key": "wrong-key"}
    run = run_target(cfg, orders([("C1", 1)]), tmp_path)
    assert run.returncode == 3, run.stderr
    assert "app_api_key" in run.stderr and "wrong-key" not in run.stderr
    assert sandbox.events() == []


def test_the_demo_line_reads_the_report_and_the_sandbox(sandbox, campaigns, tmp_path):
    from demo.run_demo import campaign_lines

    run = run_target(config(sandbox, tmp_path), orders(BACKFILL), tmp_path)
    assert run.returncode == 0, run.stderr
    entered = {c["id"]: c["entries"] for c in sandbox.campaigns()}
    assert campaign_lines(run.report, entered)[0] == (
        "  order_placed can start Post-purchase (running) for 8 people (10 events; the sandbox "
        "has let in 10 in all); 5 older rows cannot (max_age 3d)"
    )
    assert campaign_lines({}, {}) == ["  (not read: the sync has no app_api_key)"]
