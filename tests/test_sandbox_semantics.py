"""The sandbox applies delete, suppress, unsuppress and attribute removal as Customer.io does."""

from __future__ import annotations

import pytest
import requests

from target_customerio.sandbox import Sandbox

AUTH = ("site", "secret")
ULID_A = "01J0000000000000000000000A"
ULID_B = "01J0000000000000000000000B"


@pytest.fixture
def sb():
    with Sandbox(site_id="site", api_key="secret") as sandbox:
        yield sandbox


@pytest.fixture
def http():
    with requests.Session() as session:
        session.auth = AUTH
        yield session


def person_op(action: str, ident: dict, **extra) -> dict:
    return {"type": "person", "action": action, "identifiers": ident, **extra}


def send(http, sb, *ops) -> requests.Response:
    r = http.post(f"{sb.url}/api/v2/batch", json={"batch": list(ops)})
    assert r.status_code == 200, r.text
    return r


def test_delete_removes_the_person_its_events_and_segment_memberships(sb, http):
    send(
        http,
        sb,
        person_op("identify", {"id": "1"}, attributes={"vip": True}),
        person_op("event", {"id": "1"}, name="order_placed", id=ULID_A),
        person_op("identify", {"id": "2"}, attributes={"vip": True}),
    )
    vip, manual = sb.add_segment("VIP", "vip = true"), sb.add_segment("List", kind="manual")
    sb.add_to_segment(manual, ["1", "2"])
    send(http, sb, person_op("delete", {"id": "1"}), person_op("delete", {"id": "nobody"}))
    assert sb.person(id="1") is None and sb.events() == []
    assert sb.segment_count(vip) == 1 and sb.segment_count(manual) == 1
    # Identified again: a new profile, in no manual segment.
    send(http, sb, person_op("identify", {"id": "1"}, attributes={"vip": True}))
    assert sb.segment_count(vip) == 2 and sb.segment_count(manual) == 1
    assert sb.counters()["people_deleted"] == 1


def test_suppress_removes_the_data_and_ignores_the_identifiers_from_then_on(sb, http):
    send(
        http,
        sb,
        person_op("identify", {"id": "1"}, attributes={"email": "a@example.com", "plan": "pro"}),
        person_op("event", {"id": "1"}, name="order_placed", id=ULID_A),
    )
    segment = sb.add_segment("Pro", "plan = 'pro'")
    send(http, sb, person_op("suppress", {"email": "A@example.com"}))
    tomb = sb.person(id="1")
    assert tomb["suppressed"] and tomb["attributes"] == {} and sb.events() == []
    assert sb.segment_count(segment) == 0
    # Later identifies and events, by either identifier, are accepted and ignored.
    send(
        http,
        sb,
        person_op("identify", {"id": "1"}, attributes={"plan": "pro"}),
        person_op("identify", {"email": "a@example.com"}, attributes={"plan": "pro"}),
        person_op("event", {"id": "1"}, name="order_placed", id=ULID_B),
    )
    assert sb.person(id="1")["attributes"] == {} and sb.events() == []
    assert sb.counters()["suppressed_dropped"] == 3 and sb.segment_count(segment) == 0
    # Suppressing an id nobody has yet blocks it too; v1 suppress does the same.
    send(http, sb, person_op("suppress", {"id": "future"}))
    assert http.post(f"{sb.url}/api/v1/customers/other/suppress").status_code == 200
    send(
        http,
        sb,
        person_op("identify", {"id": "future"}, attributes={"plan": "pro"}),
        person_op("identify", {"id": "other"}, attributes={"plan": "pro"}),
    )
    assert sb.segment_count(segment) == 0


def test_unsuppress_lets_the_identifier_back_without_restoring_the_data(sb, http):
    send(http, sb, person_op("identify", {"id": "1"}, attributes={"plan": "pro"}))
    old = sb.person(id="1")["cio_id"]
    send(http, sb, person_op("suppress", {"id": "1"}), person_op("unsuppress", {"id": "1"}))
    assert sb.person(id="1") is None  # nothing restored
    send(http, sb, person_op("identify", {"id": "1"}, attributes={"tier": "gold"}))
    again = sb.person(id="1")
    assert again["attributes"] == {"tier": "gold"} and not again["suppressed"]
    assert again["cio_id"] != old
    # Unsuppressing someone who is not suppressed changes nothing.
    assert http.post(f"{sb.url}/api/v1/customers/1/unsuppress").status_code == 200
    assert sb.person(id="1")["attributes"] == {"tier": "gold"}


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_an_identify_with_null_or_empty_values_removes_those_attributes(sb, http, version):
    def put(attributes: dict) -> None:
        if version == "v2":
            send(http, sb, person_op("identify", {"id": "1"}, attributes=attributes))
        else:
            assert http.put(f"{sb.url}/api/v1/customers/1", json=attributes).status_code == 200

    put({"a": 1, "b": "x", "c": 3, "last_order_at": 1_700_000_000})
    has_date = sb.add_segment("dated", "last_order_at exists")
    assert sb.segment_count(has_date) == 1
    put({"a": None, "b": "", "last_order_at": None, "d": 0, "e": False})
    assert sb.person(id="1")["attributes"] == {"c": 3, "d": 0, "e": False}  # 0 and false stay
    assert sb.segment_count(has_date) == 0


def test_object_attributes_sent_as_null_are_removed_too(sb, http):
    obj = {
        "type": "object",
        "action": "identify",
        "identifiers": {"object_type_id": "1", "object_id": "acme"},
    }
    send(http, sb, {**obj, "attributes": {"n": 1, "plan": "x"}})
    send(http, sb, {**obj, "attributes": {"plan": None}})
    assert sb.objects()[0]["attributes"] == {"n": 1}
