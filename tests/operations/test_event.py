"""`kind: event`: a record in, the exact event (or the reason it is not sent) out."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import orjson
import pytest

from target_customerio.operations.event_ids import event_ulid
from target_customerio.operations.operation import Rejected, Skipped
from tests.operations.helpers import EVENT, Kind, op

ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def test_event_operation_shape():
    out = op(
        Kind(EVENT),
        {
            "order_id": 7,
            "customer_id": 42,
            "placed_at": "2026-11-22T11:00:00Z",
            "total": Decimal("99.90"),
        },
    )
    assert out["type"] == "person" and out["action"] == "event"
    assert out["identifiers"] == {"id": "42"}
    assert out["name"] == "order_placed"
    assert out["timestamp"] == int(
        dt.datetime(2026, 11, 22, 11, tzinfo=dt.timezone.utc).timestamp()
    )
    assert ULID_RE.match(out["id"])
    assert out["attributes"] == {"order_id": 7, "placed_at": out["timestamp"], "total": 99.9}


def test_event_ulid_is_deterministic_and_depends_on_name_and_key():
    a = event_ulid("order_placed", [7])
    assert (
        a == event_ulid("order_placed", [7]) == "59653G5ZMVSAGJ94RY6Y01ZSN7"
    )  # golden: changing the derivation would re-fire every event
    assert a != event_ulid("order_placed", [8])
    assert a != event_ulid("order_fulfilled", [7])
    assert ULID_RE.match(a)


def test_rows_repeated_in_a_run_carry_one_dedupe_key_and_one_id():
    """The sink sends each dedupe key once a run (tests/test_target.py covers it end to end)."""
    m = Kind(EVENT)
    row = {"order_id": 7, "customer_id": 42, "placed_at": "2026-11-22T11:00:00Z", "sku": "A"}
    first, again = (
        m.map(row),
        m.map({**row, "sku": "B"}),
    )  # the same order joined to its second line item
    assert first.seen is not None and again.seen == first.seen
    assert orjson.loads(again.body)["id"] == orjson.loads(first.body)["id"]
    assert m.map({**row, "order_id": 8}).seen != first.seen


def test_a_row_of_an_event_already_sent_is_skipped_before_it_is_mapped():
    """Only the first row of an event counts: a later row is a duplicate even when its own data
    would break the contract. A key not yet sent is mapped as usual."""
    sent: set[int] = set()
    m = Kind({**EVENT, "contract": "builtin:order_placed"}, sent_events=sent)
    row = {"order_id": 7, "customer_id": 42, "placed_at": "2026-11-22T11:00:00Z", "total": 20}
    sent.add(m.map(row).seen)
    with pytest.raises(Skipped, match="duplicate"):
        m.map({**row, "total": -5})
    with pytest.raises(Rejected) as err:
        m.map({**row, "order_id": 8, "total": -5})
    assert err.value.field == "total"


def test_missing_or_bad_timestamp_is_rejected_never_stamped_with_sync_time():
    m = Kind(EVENT)
    with pytest.raises(Rejected) as err:
        m.map({"order_id": 1, "customer_id": 1, "placed_at": None})
    assert err.value.reason == "missing_timestamp"
    with pytest.raises(Rejected) as err:
        m.map({"order_id": 2, "customer_id": 1, "placed_at": 1795356000000})
    assert err.value.reason == "invalid_timestamp"
    with pytest.raises(Rejected) as err:
        m.map({"order_id": 3, "customer_id": 1, "placed_at": "1969-12-31T00:00:00Z"})
    assert err.value.reason == "invalid_timestamp"


def test_max_age_skips_old_events():
    m = Kind({**EVENT, "max_age": "2h"})
    m.map({"order_id": 1, "customer_id": 1, "placed_at": "2026-11-22T10:30:00Z"})
    with pytest.raises(Skipped, match="stale"):
        m.map({"order_id": 2, "customer_id": 1, "placed_at": "2026-11-22T09:59:00Z"})


def test_event_name_field_is_normalised_and_spellings_reported():
    names: list = []
    m = Kind({**EVENT, "event_name": None, "event_name_field": "event_name"}, names=names)
    base = {"customer_id": 1, "placed_at": "2026-11-22T11:00:00Z"}
    assert op(m, {**base, "order_id": 1, "event_name": "Order Placed"})["name"] == "order_placed"
    assert op(m, {**base, "order_id": 2, "event_name": "order_placed"})["name"] == "order_placed"
    assert op(m, {**base, "order_id": 3, "event_name": "RefundIssued"})["name"] == "refund_issued"
    assert ("Order Placed", "order_placed") in names and ("order_placed", "order_placed") in names
    assert "event_name" not in op(m, {**base, "order_id": 4, "event_name": "x"})["attributes"]


def test_event_contract_checks_event_data():
    m = Kind({**EVENT, "contract": "builtin:order_placed"})
    with pytest.raises(Rejected) as err:
        m.map({"order_id": 1, "customer_id": 1, "placed_at": "2026-11-22T11:00:00Z", "total": -5})
    assert err.value.field == "total"


def test_operation_over_32kb_is_rejected():
    m = Kind(EVENT)
    with pytest.raises(Rejected) as err:
        m.map(
            {
                "order_id": 1,
                "customer_id": 1,
                "placed_at": "2026-11-22T11:00:00Z",
                "blob": "x" * 40_000,
            }
        )
    assert err.value.reason == "operation_too_large"


def test_a_numeric_event_time_in_seconds_is_floored_to_whole_seconds():
    epoch_schema = {
        "properties": {"placed_at": {"type": "number"}}
    }  # a string column holding one is a schema_violation
    out = op(
        Kind(EVENT, epoch_schema),
        {"order_id": 7, "customer_id": 42, "placed_at": Decimal("1795356000.75")},
    )
    assert out["timestamp"] == 1795356000


def test_mirror_to_attribute_follows_the_event_with_its_time_on_the_person():
    built = Kind({**EVENT, "mirror_to_attribute": "last_order_at"}).build(
        {"order_id": 7, "customer_id": 42, "placed_at": "2026-11-22T11:00:00Z"}
    )
    event, mirrored = (orjson.loads(o.body) for o in built.operations)
    assert mirrored == {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "42"},
        "attributes": {"last_order_at": event["timestamp"]},
    }
    assert built.identifier == ("id", "42") and built.timestamp == event["timestamp"]
    assert built.operations[1].ledger is None  # it follows its event: never tracked on its own


def test_an_event_is_tracked_in_the_ledger_by_its_id_alone():
    kind = Kind(EVENT, ledger_scope="workspace\x1fstream")
    first = kind.map(
        {"order_id": 7, "customer_id": 42, "placed_at": "2026-11-22T11:00:00Z", "total": 1}
    )
    changed = kind.map(
        {"order_id": 7, "customer_id": 42, "placed_at": "2026-11-22T11:00:00Z", "total": 2}
    )
    assert first.ledger is not None and first.ledger == changed.ledger and first.ledger[1] == 0


@pytest.mark.parametrize(
    "marker", [{"_sdc_deleted_at": "2026-11-22T11:00:00Z"}, {"_sdc_operation_type": "D"}]
)
def test_a_deleted_event_row_is_skipped(marker):
    with pytest.raises(Skipped, match="deleted"):
        Kind(EVENT).map(
            {"order_id": 7, "customer_id": 42, "placed_at": "2026-11-22T11:00:00Z", **marker}
        )


def _in_hours(hours: float) -> str:
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
    return moment.isoformat()


@pytest.mark.parametrize(
    "spec, hours, future",
    [
        ({}, 0.5, False),  # the default max_future is 1h: clocks a little apart are fine
        ({}, 48, True),  # the row dated two days ahead
        ({"max_future": "3d"}, 48, False),
        ({"max_future": "0s"}, 0.1, True),
    ],
)
def test_an_event_later_than_now_plus_max_future_is_rejected(spec, hours, future):
    """A future event time would become the tap's INCREMENTAL bookmark and hide the rows until
    then (docs/meltano.md): it is refused, naming the column, not sent."""
    m = Kind({**EVENT, **spec})
    row = {"order_id": 1, "customer_id": 1, "placed_at": _in_hours(hours)}
    if not future:
        assert op(m, row)["name"] == "order_placed"
        return
    with pytest.raises(Rejected) as err:
        m.map(row)
    assert (err.value.reason, err.value.field) == ("future_timestamp", "placed_at")
    assert "max_future" in err.value.message


@pytest.mark.parametrize("value", ["soon", 3600, "1 year", "-1h"])
def test_max_future_is_a_duration(value):
    from target_customerio.errors import ConfigError

    with pytest.raises(ConfigError, match="max_future"):
        Kind({**EVENT, "max_future": value})


def test_event_names_keep_their_unicode_letters_and_collapsed_spellings_are_reported():
    names: list = []
    m = Kind({**EVENT, "event_name": None, "event_name_field": "event_name"}, names=names)
    base = {"customer_id": 1, "placed_at": "2026-11-22T11:00:00Z"}
    sent = [
        op(m, {**base, "order_id": i, "event_name": raw})["name"]
        for i, raw in enumerate(["Café Visité", "ÜBER uns", "über uns", "ber uns"])
    ]
    assert sent == ["café_visité", "über_uns", "über_uns", "ber_uns"]
    assert ("ÜBER uns", "über_uns") in names and ("über uns", "über_uns") in names
