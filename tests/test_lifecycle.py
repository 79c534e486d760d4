"""Identity lifecycle and change detection, through the real target process and workspace."""

from __future__ import annotations

import datetime as dt

from tests.harness import record, run_target, schema, state, target_config
from tests.orders import ORDER_ROUTE, ORDER_SCHEMA, ORDERS, order
from tests.pg_fixtures import postgres  # noqa: F401  (module-scoped embedded Postgres)

BATCH = "/api/v2/batch"
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
P = "public-customers"
PERSON = {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}}
PERSON_SCHEMA = schema(
    P,
    {
        "customer_id": {"type": "string"},
        "email": {"type": ["string", "null"]},
        "tier": {"type": "string"},
        "orders_count": {"type": "integer"},
        "_sdc_deleted_at": {"type": ["string", "null"], "format": "date-time"},
    },
)


def customers(n: int, **changes) -> list[dict]:
    rows = [
        {"customer_id": f"C{i}", "email": f"c{i}@example.com", "tier": "silver", "orders_count": i}
        for i in range(n)
    ]
    for index, row in changes.items():
        rows[int(index[1:])].update(row)
    return [PERSON_SCHEMA, *(record(P, r) for r in rows), state({"run": 1})]


def batch_ops(sandbox) -> int:
    return sum(r["ops"] for r in sandbox.requests() if r["path"] == BATCH)


# Change detection --------------------------------------------------------------------------


def test_unchanged_rows_are_not_sent_again_and_a_change_sends_only_that_person(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, {P: PERSON})
    assert run_target(config, customers(50), tmp_path).returncode == 0
    assert batch_ops(sandbox) == 50

    again = run_target(config, customers(50), tmp_path)
    assert again.returncode == 0 and batch_ops(sandbox) == 50  # nothing more went out
    assert again.report["streams"][P]["skipped_by_reason"] == {"unchanged": 50}
    assert again.states == [{"run": 1}]

    changed = run_target(config, customers(50, c7={"tier": "gold"}), tmp_path)
    assert changed.returncode == 0 and batch_ops(sandbox) == 51
    assert sandbox.person(id="C7")["attributes"]["tier"] == "gold"


def test_the_ledger_moves_only_after_customerio_accepted(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, {P: PERSON}, max_retries=1)
    sandbox.inject(503, times=100, path=BATCH)
    assert run_target(config, customers(10), tmp_path).returncode == 4
    sandbox.clear_faults()
    errors = {"errors": [{"batch_index": 0, "reason": "invalid", "field": "tier", "message": "no"}]}
    sandbox.inject(207, body=errors, path=BATCH, mode="respond")
    first = run_target({**config, "delivery_workers": 1}, customers(10), tmp_path)
    assert first.returncode == 0 and first.report["streams"][P]["sent"] == 9
    retry = run_target(config, customers(10), tmp_path)  # only the refused one goes again
    assert retry.report["streams"][P]["sent"] == 1
    assert retry.report["streams"][P]["skipped_by_reason"] == {"unchanged": 9}


def test_full_resend_and_another_workspace_ignore_the_ledger(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, {P: PERSON})
    run_target(config, customers(5), tmp_path)
    assert (
        run_target({**config, "full_resend": True}, customers(5), tmp_path).report["streams"][P][
            "sent"
        ]
        == 5
    )
    assert (
        run_target({**config, "change_detection": False}, customers(5), tmp_path).report["streams"][
            P
        ]["sent"]
        == 5
    )
    from target_customerio.sandbox import Sandbox

    with Sandbox(site_id="other-site", api_key="other-key", db_path=":memory:") as other:
        moved = run_target(
            {**config, "track_api_url": other.url, "site_id": "other-site", "api_key": "other-key"},
            customers(5),
            tmp_path,
        )
        assert moved.report["streams"][P]["sent"] == 5 and len(other.people()) == 5


def test_a_postgres_ledger_serves_ephemeral_runners(postgres, sandbox, tmp_path):  # noqa: F811
    for runner in ("runner-a", "runner-b"):  # two fresh machines, one ledger table
        work = tmp_path / runner
        work.mkdir()
        config = target_config(sandbox.url, work, {P: PERSON}, ledger_url=postgres.dsn)
        run = run_target(config, customers(20), work)
        assert run.returncode == 0, run.stderr
    assert run.report["streams"][P]["skipped_by_reason"] == {"unchanged": 20}
    assert batch_ops(sandbox) == 20
    assert "postgres:postgres@" not in run.stderr


def test_event_ids_delivered_are_not_sent_again(sandbox, tmp_path):
    rows = [ORDER_SCHEMA, *(order(i, "C1", NOW.isoformat()) for i in range(8))]
    config = target_config(sandbox.url, tmp_path, {ORDERS: ORDER_ROUTE})
    assert run_target(config, rows, tmp_path).report["streams"][ORDERS]["sent"] == 8
    again = run_target(config, rows, tmp_path)
    assert again.report["streams"][ORDERS]["skipped_by_reason"] == {"unchanged": 8}
    assert batch_ops(sandbox) == 8


# Deletes -----------------------------------------------------------------------------------


def deletes(on_delete: str | None, sandbox, tmp_path, marker: dict):
    route = {**PERSON, **({"on_delete": on_delete} if on_delete else {})}
    config = target_config(sandbox.url, tmp_path, {P: route})
    run_target(config, customers(3), tmp_path)
    gone = {
        "customer_id": "C1",
        "email": "c1@example.com",
        "tier": "silver",
        "orders_count": 1,
        **marker,
    }
    return run_target(config, [PERSON_SCHEMA, record(P, gone), state({"run": 2})], tmp_path)


def test_deletes_are_ignored_by_default_and_counted(sandbox, tmp_path):
    run = deletes(None, sandbox, tmp_path, {"_sdc_deleted_at": NOW.isoformat()})
    assert run.report["streams"][P]["skipped_by_reason"] == {"deleted": 1}
    assert sandbox.person(id="C1") is not None


def test_on_delete_delete_removes_the_person_log_based_and_cdc(sandbox, tmp_path):
    run = deletes("delete", sandbox, tmp_path, {"_sdc_deleted_at": "2026-11-22 13:48:04.231713+00"})
    assert run.returncode == 0, run.stderr
    assert sandbox.person(id="C1") is None and sandbox.person(id="C2") is not None
    (tmp_path / ".customerio-ledger.sqlite").unlink()
    sandbox.reset()
    run = deletes("delete", sandbox, tmp_path, {"_sdc_operation_type": "D"})
    assert sandbox.person(id="C1") is None


def test_on_delete_suppress_and_unsubscribe(sandbox, tmp_path):
    deletes("suppress", sandbox, tmp_path, {"_sdc_deleted_at": NOW.isoformat()})
    assert sandbox.person(id="C1")["suppressed"] is True
    (tmp_path / ".customerio-ledger.sqlite").unlink()
    sandbox.reset()
    deletes("unsubscribe", sandbox, tmp_path, {"_sdc_deleted_at": NOW.isoformat()})
    assert sandbox.person(id="C1")["attributes"]["unsubscribed"] is True


# Merges, objects, mirrors, guardrails --------------------------------------------------------


def test_a_guest_checkout_that_registered_is_merged_into_the_account(sandbox, tmp_path):
    checkouts = "public-checkout_started_events"
    merges = "public-account_merges"
    routes = {
        checkouts: {
            "kind": "event",
            "identifier": {"field": "email", "type": "email"},
            "event_name": "checkout_started",
            "event_id": ["checkout_id"],
            "timestamp": "started_at",
        },
        merges: {
            "kind": "merge",
            "primary": {"field": "customer_id", "type": "id"},
            "secondary": {"field": "guest_email", "type": "email"},
        },
    }
    stream = [
        schema(
            checkouts,
            {
                "checkout_id": {"type": "string"},
                "email": {"type": "string"},
                "started_at": {"type": "string", "format": "date-time"},
            },
        ),
        record(
            checkouts,
            {"checkout_id": "K1", "email": " Guest@Example.com", "started_at": NOW.isoformat()},
        ),
        schema(merges, {"customer_id": {"type": "string"}, "guest_email": {"type": "string"}}),
        record(merges, {"customer_id": "C42", "guest_email": "guest@example.com"}),
        state({"s": 1}),
    ]
    run = run_target(target_config(sandbox.url, tmp_path, routes), stream, tmp_path)
    assert run.returncode == 0, run.stderr
    [person] = sandbox.people()
    assert (person["id"], person["email"]) == ("C42", "guest@example.com")
    assert [e["name"] for e in sandbox.events()] == ["checkout_started"]
    assert run_target(target_config(sandbox.url, tmp_path, routes), stream, tmp_path).report[
        "streams"
    ][merges]["skipped_by_reason"] == {"unchanged": 1}


def test_carts_live_as_objects_related_to_their_person(sandbox, tmp_path):
    carts = "public-carts"
    routes = {
        carts: {
            "kind": "object",
            "object_type_id": 1,
            "object_id": "cart_id",
            "relationships": [{"field": "customer_id", "type": "id"}],
        }
    }
    stream = [
        schema(
            carts,
            {
                "cart_id": {"type": "string"},
                "customer_id": {"type": "string"},
                "value": {"type": "number"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        ),
        record(
            carts,
            {
                "cart_id": "cart-9",
                "customer_id": "C1",
                "value": 42.5,
                "updated_at": NOW.isoformat(),
            },
        ),
    ]
    run = run_target(target_config(sandbox.url, tmp_path, routes), stream, tmp_path)
    assert run.returncode == 0, run.stderr
    [cart] = sandbox.objects()
    assert (cart["object_type_id"], cart["object_id"]) == ("1", "cart-9")
    assert cart["attributes"] == {"value": 42.5, "updated_at": int(NOW.timestamp())}
    assert cart["relationships"] == [{"identifiers": {"id": "C1"}}]


def test_event_time_is_mirrored_into_a_person_attribute(sandbox, tmp_path):
    checkouts = "public-checkouts"
    routes = {
        checkouts: {
            "kind": "event",
            "identifier": {"field": "customer_id", "type": "id"},
            "event_name": "checkout_started",
            "event_id": ["checkout_id"],
            "timestamp": "started_at",
            "mirror_to_attribute": "last_checkout_started_at",
        }
    }
    earlier = NOW - dt.timedelta(hours=2)
    stream = [
        schema(
            checkouts,
            {
                "checkout_id": {"type": "string"},
                "customer_id": {"type": "string"},
                "started_at": {"type": "string", "format": "date-time"},
            },
        ),
        record(
            checkouts, {"checkout_id": "K1", "customer_id": "C1", "started_at": earlier.isoformat()}
        ),
        record(
            checkouts, {"checkout_id": "K2", "customer_id": "C1", "started_at": NOW.isoformat()}
        ),
    ]
    run = run_target(target_config(sandbox.url, tmp_path, routes), stream, tmp_path)
    assert run.returncode == 0, run.stderr
    assert sandbox.person(id="C1")["attributes"]["last_checkout_started_at"] == int(NOW.timestamp())
    assert len(sandbox.events()) == 2


def test_rule_violations_are_counted_and_a_drifting_stream_stops_the_run(sandbox, tmp_path):
    route = {**PERSON, "contract": "builtin:customer"}
    rows = customers(
        200, **{f"c{i}": {"orders_count": 0} for i in range(0, 200, 2)}
    )  # odd rows: orders, no last_order_at
    counted = run_target(
        target_config(sandbox.url, tmp_path, {P: route}, change_detection=False), rows, tmp_path
    )
    assert counted.returncode == 0
    assert counted.report["streams"][P]["contract_rules_violated"] == {"allOf/0/then/required": 100}
    stopped = run_target(
        target_config(
            sandbox.url, tmp_path, {P: route}, max_reject_ratio=0.2, change_detection=False
        ),
        rows,
        tmp_path,
    )
    assert stopped.returncode == 6 and stopped.stdout == ""
    assert "public-customers: 50 of 100 records rejected" in stopped.stderr
