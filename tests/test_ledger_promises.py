"""What the ledger promises (docs/ledger.md): it holds only what Customer.io confirmed, written
ahead; what depends on a refused operation is not recorded; nothing it sends re-creates a person
this target (or, with the App API, anyone) deleted; a mirror route whose ledger knows nobody says
so. Through the real target process and the sandbox; the ledger's own semantics also against
SQLite and Postgres directly (a Hypothesis state model)."""

from __future__ import annotations

import uuid

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from target_customerio.ledger import Ledger, PostgresLedger, SqliteLedger
from tests.harness import LONG_PROPERTIES as LONG
from tests.harness import record, run_target, schema, state, target_config
from tests.orders import ORDER_ROUTE
from tests.pg_fixtures import postgres  # noqa: F401  (module-scoped embedded Postgres)

BATCH = "/api/v2/batch"
V, C, S = "public-vip", "public-customers", "public-segment_members"
APP_KEY = "app-secret"  # the sandbox fixture's default App API key
VIP = {
    "kind": "person",
    "identifier": {"field": "id", "type": "id"},
    "mirror": True,
    "max_exit_ratio": 1,
}
PEOPLE = {"kind": "person", "identifier": {"field": "id", "type": "id"}}
SEGMENT = {
    "kind": "segment",
    "identifier": {"field": "id", "type": "id"},
    "segment_id": "segment_id",
    "max_exit_ratio": 1,
}


def vips(ids, night: int) -> list[dict]:
    return [
        schema(V, {"id": {"type": "string"}, "tier": {"type": "string"}}),
        *(record(V, {"id": i, "tier": "gold"}) for i in ids),
        state({"night": night}),
    ]


def people(rows: dict[str, str]) -> list[dict]:
    return [
        schema(
            C,
            {
                "id": {"type": "string"},
                "plan": {"type": "string"},
                "_sdc_deleted_at": {"type": ["string", "null"]},
            },
        ),
        *(record(C, {"id": i, "plan": plan}) for i, plan in rows.items()),
    ]


def members(ids, segment: int) -> list[dict]:
    return [
        schema(S, {"id": {"type": "string"}, "segment_id": {"type": "integer"}}),
        *(record(S, {"id": i, "segment_id": segment}) for i in ids),
    ]


IDS = [f"C{i}" for i in range(5)]


# ---- 1. written ahead: an unknown outcome is in doubt, and in doubt is never unchanged ----


@pytest.mark.parametrize("on_exit", ["unset", "delete"])
def test_an_exit_whose_answer_was_lost_is_undone_when_the_person_comes_back(
    sandbox, tmp_path, on_exit
):
    """Customer.io applied the exit, the answer was lost (500s after processing, retries
    exhausted, exit 4): when the person is back in the view, they are sent again, not skipped
    as unchanged by the fingerprint from before the exit."""
    config = target_config(sandbox.url, tmp_path, {V: VIP | {"on_exit": on_exit}}, max_retries=1)
    assert run_target(config, vips(IDS, 1), tmp_path).returncode == 0
    sandbox.inject(500, times=2, mode="process_then", path=BATCH, retry_after=0.01)
    lost = run_target(config, vips(IDS[:4], 2), tmp_path)
    assert lost.returncode == 4, lost.stderr
    gone = sandbox.person(id="C4")
    assert gone is None or gone["attributes"] == {}  # the exit was applied all the same

    back = run_target(config, vips(IDS, 3), tmp_path)
    assert back.returncode == 0, back.stderr
    assert sandbox.person(id="C4")["attributes"] == {"tier": "gold"}
    assert back.report["streams"][V]["skipped_by_reason"] == {"unchanged": 4}


@pytest.mark.parametrize("where", ["ledger_path", "ledger_url"])
def test_an_identify_whose_answer_was_lost_is_sent_again_even_when_the_row_went_back(
    sandbox, tmp_path, request, where
):
    """pro -> team (applied, answer lost) -> pro: without the write-ahead, `pro` is what the
    ledger holds and the row would be `unchanged` while Customer.io holds `team`. SQLite and
    Postgres alike."""
    pg = where == "ledger_url"
    ledger = {"ledger_url": request.getfixturevalue("postgres").dsn} if pg else {}
    config = target_config(sandbox.url, tmp_path, {C: PEOPLE}, max_retries=0, **ledger)
    assert run_target(config, [*people({"A": "pro"}), state({"n": 1})], tmp_path).returncode == 0
    sandbox.inject(0, times=1, mode="process_then_drop", path=BATCH)
    lost = run_target(config, [*people({"A": "team"}), state({"n": 2})], tmp_path)
    assert lost.returncode == 4, lost.stderr
    assert sandbox.person(id="A")["attributes"] == {"plan": "team"}
    again = run_target(config, [*people({"A": "pro"}), state({"n": 3})], tmp_path)
    assert again.returncode == 0, again.stderr
    assert sandbox.person(id="A")["attributes"] == {"plan": "pro"}


def test_a_segment_removal_whose_answer_was_lost_is_added_back_when_the_member_returns(
    sandbox, tmp_path
):
    segment = sandbox.add_segment("vip", kind="manual")
    config = target_config(sandbox.url, tmp_path, {C: PEOPLE, S: SEGMENT}, max_retries=0)
    rows = {i: "pro" for i in IDS}
    night = [*people(rows), *members(IDS, segment), state({"n": 1})]
    assert run_target(config, night, tmp_path).returncode == 0
    sandbox.inject(500, times=1, mode="process_then", path="/api/v1/segments/")
    lost = run_target(config, [*people(rows), *members(IDS[:4], segment)], tmp_path)
    assert lost.returncode == 4, lost.stderr
    assert {m["id"] for m in sandbox.segment_members(segment)} == set(IDS[:4])
    back = run_target(config, night, tmp_path)
    assert back.returncode == 0, back.stderr
    assert {m["id"] for m in sandbox.segment_members(segment)} == set(IDS)


# ---- 2. dependencies, and who was deleted ----


def test_a_membership_of_a_person_whose_identify_was_rejected_waits_for_the_person(
    sandbox, tmp_path
):
    segment = sandbox.add_segment("vip", kind="manual")
    config = target_config(sandbox.url, tmp_path, {C: PEOPLE, S: SEGMENT})
    bad = {"A": "pro", "B": "x" * 1001}  # B's value is over Customer.io's 1000 bytes
    first = run_target(config, [*people(bad), *members(["A", "B"], segment)], tmp_path)
    assert first.returncode == 0, first.stderr
    assert {m["id"] for m in sandbox.segment_members(segment)} == {"A"}
    [refused] = [r for r in first.rejects if r["stream"] == S]
    assert refused["reason"] == "person_refused"

    night = [*people({"A": "pro", "B": "pro"}), *members("AB", segment)]
    fixed = run_target(config, night, tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert {m["id"] for m in sandbox.segment_members(segment)} == {"A", "B"}


def test_an_unset_exit_never_recreates_a_person_this_target_deleted(sandbox, tmp_path):
    """Deleted by an `on_delete: delete` route in the same run as they leave the VIP view: the
    exit (an identify with nulls) would re-create an empty profile; the ledger knows better."""
    routes = {C: PEOPLE | {"on_delete": "delete"}, V: VIP}
    config = target_config(sandbox.url, tmp_path, routes)
    rows = {i: "pro" for i in IDS}
    assert run_target(config, [*people(rows), *vips(IDS, 1)], tmp_path).returncode == 0
    deleted = record(C, {"id": "C4", "plan": "pro", "_sdc_deleted_at": "2026-11-22T13:48:04Z"})
    night = [*people({}), deleted, *vips(IDS[:4], 2)]
    run = run_target(config, night, tmp_path)
    assert run.returncode == 0, run.stderr
    assert sandbox.person(id="C4") is None
    assert run.report["mirror"][V]["exits_absent"] == 1


E, M, CART = "public-orders", "public-registrations", "public-carts"
ORDERS = ORDER_ROUTE
MERGES = {
    "kind": "merge",
    "primary": {"field": "customer_id", "type": "id"},
    "secondary": {"field": "guest_email", "type": "email"},
}
CARTS = {
    "kind": "object",
    "object_type_id": 1,
    "object_id": "cart_id",
    "relationships": [{"field": "customer_id", "type": "id"}],
}


PLACED = "2026-11-22T13:00:00+00:00"


def orders(rows: list[tuple[str, str]]) -> list[dict]:
    return [
        schema(
            E,
            {
                "order_id": {"type": "string"},
                "customer_id": {"type": "string"},
                "placed_at": {"type": "string", "format": "date-time"},
            },
        ),
        *(record(E, {"order_id": o, "customer_id": c, "placed_at": PLACED}) for o, c in rows),
    ]


def test_nothing_sent_recreates_a_person_this_target_deleted_until_the_database_has_them(
    sandbox, tmp_path
):
    """B is deleted (`on_delete: delete`); their order, their membership, a merge into them and
    a cart related to them come after, in the same run and the next: none re-creates B (each
    is skipped `deleted_person`; the cart goes without its relationship). B's row restored:
    from their identify on, what names B is sent. (One delivery worker: a merge travels on its
    secondary's worker, a cart on its own, so across workers they may go out as the delete
    does: docs/ledger.md.)"""
    segment = sandbox.add_segment("vip", kind="manual")
    routes = {C: PEOPLE | {"on_delete": "delete"}, E: ORDERS, S: SEGMENT, M: MERGES, CART: CARTS}
    config = target_config(sandbox.url, tmp_path, routes, delivery_workers=1)
    assert run_target(config, people({"A": "pro", "B": "pro"}), tmp_path).returncode == 0

    def after_b() -> list[dict]:
        return [
            *orders([("O1", "A"), ("O2", "B")]),
            *members(["B"], segment),
            schema(M, {"customer_id": {"type": "string"}, "guest_email": {"type": "string"}}),
            record(M, {"customer_id": "B", "guest_email": "guest@example.com"}),
            schema(CART, {"cart_id": {"type": "string"}, "customer_id": {"type": "string"}}),
            record(CART, {"cart_id": "cart-1", "customer_id": "B"}),
        ]

    deleted = record(C, {"id": "B", "plan": "pro", "_sdc_deleted_at": "2026-11-22T13:48:04Z"})
    night = [*people({}), deleted]
    for n in (2, 3):  # the run that deletes B (first), and a later one
        run = run_target(config, [*night, *after_b(), state({"n": n})], tmp_path)
        assert run.returncode == 0, run.stderr
        assert sandbox.person(id="B") is None
        skipped = {s: run.report["streams"][s].get("skipped_by_reason", {}) for s in (E, S, M)}
        assert {s: r.get("deleted_person") for s, r in skipped.items()} == dict.fromkeys(
            (E, S, M), 1
        ), (skipped, n)
        [cart] = sandbox.objects()
        assert cart["relationships"] == []
        night = []
    assert {e["attributes"]["order_id"] for e in sandbox.events()} == {"O1"}

    back = run_target(config, [*people({"B": "team"}), *after_b(), state({"n": 4})], tmp_path)
    assert back.returncode == 0, back.stderr
    assert sandbox.person(id="B")["attributes"] == {"plan": "team"}
    assert {e["attributes"]["order_id"] for e in sandbox.events()} == {"O1", "O2"}
    assert {m["id"] for m in sandbox.segment_members(segment)} == {"B"}
    assert sandbox.objects()[0]["relationships"] == [{"identifiers": {"id": "B"}}]


def test_a_person_deleted_and_restored_in_one_request_is_not_gone(sandbox, tmp_path):
    """The delete and the identify after it travel in one request: the last word counts, so
    B's order that night and the next night's are sent."""
    routes = {C: PEOPLE | {"on_delete": "delete"}, E: ORDERS}
    config = target_config(sandbox.url, tmp_path, routes)
    assert run_target(config, people({"B": "pro"}), tmp_path).returncode == 0
    deleted = record(C, {"id": "B", "plan": "pro", "_sdc_deleted_at": "2026-11-22T13:48:04Z"})
    restored = [*people({}), deleted, record(C, {"id": "B", "plan": "pro"})]
    for n, night in ((1, restored), (2, people({"B": "pro"}))):
        run = run_target(config, [*night, *orders([(f"O{n}", "B")]), state({"n": n})], tmp_path)
        assert run.returncode == 0, run.stderr
    assert sandbox.person(id="B")["attributes"] == {"plan": "pro"}
    assert sorted(e["attributes"]["order_id"] for e in sandbox.events()) == ["O1", "O2"]


def test_with_the_app_api_an_exit_is_not_sent_for_someone_deleted_elsewhere(sandbox, tmp_path):
    config = target_config(
        sandbox.url, tmp_path, {V: VIP}, app_api_key=APP_KEY, app_api_url=sandbox.url
    )
    assert run_target(config, vips(IDS, 1), tmp_path).returncode == 0
    sandbox.v1_op({"type": "person", "action": "delete", "identifiers": {"id": "C4"}})
    assert sandbox.person(id="C4") is None  # deleted in the dashboard
    run = run_target(config, vips(IDS[:4], 2), tmp_path)
    assert run.returncode == 0, run.stderr
    assert sandbox.person(id="C4") is None
    assert run.report["mirror"][V]["exits_absent"] == 1
    asked = [r for r in sandbox.requests() if r["path"] == "/v1/customers/attributes"]
    assert len(asked) == 1


# ---- 3. a ledger that knows nobody says so ----


def test_a_lost_ledger_says_nobody_could_leave_and_a_segment_is_read_back(sandbox, tmp_path):
    segment = sandbox.add_segment("vip", kind="manual")
    routes = {C: PEOPLE, S: SEGMENT}
    config = target_config(
        sandbox.url, tmp_path, routes, app_api_key=APP_KEY, app_api_url=sandbox.url
    )
    rows = {i: "pro" for i in IDS}
    night = [*people(rows), *members(IDS, segment)]
    assert run_target(config, night, tmp_path).returncode == 0
    for path in tmp_path.glob(".customerio-ledger.sqlite*"):
        path.unlink()  # an ephemeral runner
    run = run_target(config, [*people(rows), *members(IDS[:3], segment)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert {m["id"] for m in sandbox.segment_members(segment)} == set(IDS[:3])
    mirror = run.report["mirror"][S]
    assert "holds nobody for this route" in mirror["reason"]
    assert f"mirror: {S}: the ledger (ledger_path" in run.stderr

    no_app = target_config(sandbox.url, tmp_path, routes)
    for path in tmp_path.glob(".customerio-ledger.sqlite*"):
        path.unlink()
    run = run_target(no_app, [*people(rows), *members(IDS[:2], segment)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "nobody could leave the view" in run.report["mirror"][S]["reason"]
    assert {m["id"] for m in sandbox.segment_members(segment)} == set(IDS[:3])  # as warned


# ---- the ledger's own semantics, SQLite and Postgres ----

KEYS = st.integers(1, 6)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.lists(st.tuples(KEYS, st.integers(1, 3)), min_size=1)),
        st.tuples(st.just("accept"), st.integers(0, 10)),
        st.tuples(st.just("flush"), st.just(0)),
    ),
    max_size=30,
)


def check_doubt(ledger: Ledger, steps) -> None:
    """Requests are marked in doubt when sent; any of them may be accepted later (or never: a
    lost answer); a lookup shows a key's fingerprint only when no request about it is in doubt,
    and it is the last one accepted."""
    confirmed: dict[int, int] = {}  # what Customer.io holds, as far as it confirmed
    doubt: dict[int, int] = {}  # key -> the mark of the last request about it
    sent: list[tuple[int, list[tuple[int, int]]]] = []
    for step, arg in steps:
        if step == "send":
            mark = ledger.in_doubt([key for key, _ in arg])
            doubt.update((key, mark) for key, _ in arg)
            sent.append((mark, arg))
        elif step == "accept" and sent:
            mark, entries = sent.pop(arg % len(sent))
            ledger.record(entries, mark)
            for key, fingerprint in entries:
                confirmed[key] = fingerprint
                if doubt.get(key) == mark:
                    del doubt[key]
        else:
            ledger.flush()
            expected = {k: f for k, f in confirmed.items() if k not in doubt}
            assert ledger.accepted(range(1, 7)) == expected
            assert ledger.fingerprints(range(1, 7)) == expected


@settings(max_examples=300 if LONG else 60, deadline=None)
@given(steps=STEPS)
def test_sqlite_ledger_in_doubt_is_never_unchanged(steps):
    ledger = SqliteLedger(":memory:")
    try:
        check_doubt(ledger, steps)
    finally:
        ledger.close()


def test_postgres_ledger_in_doubt_is_never_unchanged(postgres):  # noqa: F811
    @settings(max_examples=100 if LONG else 20, deadline=None)
    @given(steps=STEPS)
    def check(steps):
        table = f"doubt_{uuid.uuid4().hex[:12]}"
        ledger = PostgresLedger(postgres.dsn, table=table)
        try:
            check_doubt(ledger, steps)
        finally:
            ledger.close()

    check()


def check_gone(ledger: Ledger) -> None:
    """Who is gone: kept by `record_gone`, forgotten by `forget_gone` (a person route's
    identify), `any_gone` says whether anyone is."""
    assert not ledger.any_gone()
    ledger.record_gone([1, 2, 3])
    assert ledger.any_gone() and set(ledger.gone([1, 2, 4])) == {1, 2}
    ledger.forget_gone([2, 4])
    assert set(ledger.gone([1, 2, 3, 4])) == {1, 3}
    ledger.forget_gone([1, 3])
    assert not ledger.any_gone()


def test_sqlite_and_postgres_ledgers_keep_and_forget_who_is_gone(tmp_path, postgres):  # noqa: F811
    for ledger in (
        SqliteLedger(str(tmp_path / "ledger.sqlite")),
        PostgresLedger(postgres.dsn, table=f"gone_{uuid.uuid4().hex[:12]}"),
    ):
        try:
            check_gone(ledger)
        finally:
            ledger.close()


def test_a_merge_whose_primary_was_refused_is_sent_again(sandbox, tmp_path):
    """The merge's identify of its primary is refused (207 naming it), the merge itself is
    not: the merge depends on its primary, so it is not recorded and goes out again."""
    m = "public-registrations"
    route = {
        "kind": "merge",
        "primary": {"field": "customer_id", "type": "id"},
        "secondary": {"field": "guest_email", "type": "email"},
    }
    config = target_config(sandbox.url, tmp_path, {m: route})
    rows = [
        schema(m, {"customer_id": {"type": "string"}, "guest_email": {"type": "string"}}),
        record(m, {"customer_id": "A", "guest_email": "guest@example.com"}),
    ]
    refused = {"errors": [{"batch_index": 0, "reason": "invalid", "message": "primary"}]}
    sandbox.inject(207, body=refused, path=BATCH)  # answered, nothing applied
    first = run_target(config, rows, tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_target(config, rows, tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.report["streams"][m].get("skipped_by_reason", {}).get("unchanged") is None
    merges = [r for r in sandbox.requests() if r["path"] == BATCH and r["status"] == 200]
    assert len(merges) == 1  # the second run sent identify and merge again


def test_a_row_changed_and_changed_back_in_one_run_ends_as_the_database(sandbox, tmp_path):
    """A log-based tap sends every change: pro -> team -> pro, or a delete and the same row
    inserted again, in one run. The last one matches the ledger, but the run already sent
    something else for the person, so it is not `unchanged`."""
    config = target_config(sandbox.url, tmp_path, {C: PEOPLE | {"on_delete": "delete"}})
    assert run_target(config, [*people({"A": "pro", "B": "pro"})], tmp_path).returncode == 0
    deleted = record(C, {"id": "B", "plan": "pro", "_sdc_deleted_at": "2026-11-22T13:48:04Z"})
    night = [
        *people({"A": "team"}),
        record(C, {"id": "A", "plan": "pro"}),
        deleted,
        record(C, {"id": "B", "plan": "pro"}),
    ]
    run = run_target(config, night, tmp_path)
    assert run.returncode == 0, run.stderr
    assert sandbox.person(id="A")["attributes"] == {"plan": "pro"}
    assert sandbox.person(id="B")["attributes"] == {"plan": "pro"}


def test_who_joined_a_view_in_a_failed_run_is_told_when_they_leave(sandbox, tmp_path):
    """C4 joins the VIP view in a run that fails (exit 4) after their identify was accepted,
    and leaves before the next complete run: the failed run kept whom it sent, so C4 leaves."""
    # one delivery worker: the requests go out in input order, so the fault skips V's batch
    config = target_config(
        sandbox.url, tmp_path, {V: VIP, C: PEOPLE}, max_retries=1, delivery_workers=1
    )
    assert run_target(config, vips(IDS[:4], 1), tmp_path).returncode == 0
    sandbox.inject(503, times=2, path=BATCH, skip=1, retry_after=0.01)  # V's batch goes through
    failed = run_target(config, [*vips(IDS, 2)[:-1], *people({"A": "pro"})], tmp_path)
    assert failed.returncode == 4, failed.stderr
    assert sandbox.person(id="C4")["attributes"] == {"tier": "gold"}
    left = run_target(config, vips(IDS[:4], 3), tmp_path)
    assert left.returncode == 0, left.stderr
    assert sandbox.person(id="C4")["attributes"] == {}
    assert left.report["mirror"][V]["exits"] == {"unset": 1}
