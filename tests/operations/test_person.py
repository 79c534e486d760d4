"""`kind: person`: a record in, the exact identify (or the reason it is not sent) out."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from target_customerio.operations.operation import Rejected
from tests.operations.helpers import NOW, PERSON, Kind, op


def test_identify_uses_one_identifier_and_keeps_email_as_attribute():
    out = op(
        Kind(PERSON), {"customer_id": 42, "email": "  Jane.Doe@Example.COM ", "first_name": "Jane"}
    )
    assert out == {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "42"},
        "attributes": {"email": "jane.doe@example.com", "first_name": "Jane"},
    }


def test_email_identifier_is_trimmed_and_lower_cased():
    m = Kind({"kind": "person", "identifier": {"field": "email", "type": "email"}})
    assert op(m, {"email": " A@B.COM "})["identifiers"] == {"email": "a@b.com"}


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_identifier_is_rejected_with_reason(value):
    with pytest.raises(Rejected) as err:
        Kind(PERSON).map({"customer_id": value, "email": "x@y.z"})
    assert (err.value.reason, err.value.field) == ("missing_identifier", "customer_id")


def test_identifier_over_150_bytes_is_rejected():
    with pytest.raises(Rejected, match="150 bytes"):
        Kind(PERSON).map({"customer_id": "x" * 151})


def test_types_become_what_customerio_segments_need():
    m = Kind(PERSON)
    out = op(
        m,
        {
            "customer_id": "C1",
            "last_order_at": dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.timezone.utc),
            "naive_at": dt.datetime(2026, 11, 20, 10, 0),
            "placed_at": "2026-11-20 10:00:00.1234567",  # SQL Server datetime2, a date-time
            "born_on": dt.date(1980, 5, 17),
            "lifetime_value": Decimal("250.00"),
            "aov": Decimal("83.33"),
            "is_subscriber": True,
            "prefs": {"sizes": ["M", "L"], "ratio": Decimal("0.5")},
        },
    )["attributes"]
    assert out["last_order_at"] == 1795168800 and isinstance(out["last_order_at"], int)
    assert out["naive_at"] == 1795168800  # naive = UTC unless the route says otherwise
    assert out["placed_at"] == 1795168800
    assert out["born_on"] == int(dt.datetime(1980, 5, 17, tzinfo=dt.timezone.utc).timestamp())
    assert out["lifetime_value"] == 250 and isinstance(out["lifetime_value"], int)
    assert out["aov"] == 83.33
    assert out["is_subscriber"] is True
    assert out["prefs"] == {"sizes": ["M", "L"], "ratio": 0.5}


def test_source_timezone_reads_naive_times_in_the_source_zone():
    m = Kind({**PERSON, "source_timezone": "America/New_York"})
    out = op(m, {"customer_id": 1, "placed_at": "2026-07-01 08:00:00.0000000"})["attributes"]
    assert out["placed_at"] == int(
        dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    )


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), float("nan"), float("-inf")])
def test_nan_and_infinity_are_rejected(bad):
    with pytest.raises(Rejected) as err:
        Kind(PERSON).map({"customer_id": 1, "score": bad})
    assert (err.value.reason, err.value.field) == ("invalid_value", "score")


def test_unparseable_date_is_rejected_not_crashing():
    with pytest.raises(Rejected) as err:
        Kind(PERSON).map({"customer_id": 1, "placed_at": "10000-01-01T00:00:00"})
    assert err.value.field == "placed_at"


def test_include_exclude_rename_and_sdc_columns():
    m = Kind(
        {
            **PERSON,
            "attributes": {"exclude": ["internal_notes"], "rename": {"ltv": "lifetime_value"}},
        }
    )
    out = op(m, {"customer_id": 1, "internal_notes": "vip?", "ltv": 5, "_sdc_lsn": 123})[
        "attributes"
    ]
    assert out == {"lifetime_value": 5}
    m = Kind({**PERSON, "attributes": {"include": ["email"]}})
    assert op(m, {"customer_id": 1, "email": "a@b.c", "x": 1})["attributes"] == {"email": "a@b.c"}


def test_person_limits():
    with pytest.raises(Rejected) as err:
        Kind(PERSON).map({"customer_id": 1, "bio": "é" * 600})  # 1200 bytes
    assert (err.value.reason, err.value.field) == ("attribute_value_too_large", "bio")
    with pytest.raises(Rejected) as err:
        Kind(PERSON).map({"customer_id": 1, **{f"a{i}": i for i in range(301)}})
    assert err.value.reason == "too_many_attributes"
    with pytest.raises(Rejected) as err:
        Kind(PERSON).map({"customer_id": 1, "n" * 151: 1})
    assert err.value.reason == "attribute_name_too_long"


def test_contract_violations_are_rejected_with_field_and_numeric_strings_are_not_coerced():
    m = Kind({**PERSON, "contract": "builtin:customer"})
    with pytest.raises(Rejected) as err:
        m.map({"customer_id": 1, "lifetime_value": "250.00"})
    assert (err.value.reason, err.value.field) == ("contract_violation", "lifetime_value")
    with pytest.raises(Rejected) as err:
        m.map({"customer_id": 1, "email_opt_in": "true"})
    assert err.value.field == "email_opt_in"
    with pytest.raises(Rejected) as err:
        m.map(
            {"customer_id": 1, "orders_count": 3}
        )  # cross-field rule: orders need a last order time
    assert (err.value.field, err.value.rule) == ("last_order_at", "allOf/0/then/required")
    op(
        m,
        {
            "customer_id": 1,
            "orders_count": 3,
            "last_order_at": NOW,
            "lifetime_value": Decimal("10.5"),
        },
    )
