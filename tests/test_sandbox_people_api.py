"""The sandbox's App API people reads, with Customer.io's semantics: attributes as strings,
every profile holding an email, activities (failed_attribute_change when an email belongs to
another person, failed_event), and writes applied late or never."""

from __future__ import annotations

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.sandbox import Sandbox
from target_customerio.sandbox.app_people import as_stored
from target_customerio.verification import stored_equal
from tests.harness import LONG_PROPERTIES

APP_KEY = "app-key-0123456789"
EXAMPLES = 2000 if LONG_PROPERTIES else 200


@pytest.fixture
def sb():
    with Sandbox(site_id="site", api_key="secret", app_api_key=APP_KEY, app_rate_limit=None) as s:
        yield s


@pytest.fixture
def app():
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {APP_KEY}"
    return session


def track(sb, *ops):
    r = requests.post(f"{sb.url}/api/v2/batch", json={"batch": list(ops)}, auth=("site", "secret"))
    assert r.status_code == 200, r.text


def identify(id, **attributes):
    return {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": id},
        "attributes": attributes,
    }


def event(id, name, event_id, timestamp):
    return {
        "type": "person",
        "action": "event",
        "identifiers": {"id": id},
        "name": name,
        "id": event_id,
        "timestamp": timestamp,
    }


def test_attributes_come_back_as_strings_and_absent_people_are_left_out(sb, app):
    track(sb, identify("1", orders=3, ltv=12.5, vip=True, at=1767225600, tags=["a"], gone=None))
    r = app.post(f"{sb.url}/v1/customers/attributes?id_type=id", json={"ids": ["1", "nobody"]})
    assert r.status_code == 200
    [item] = r.json()["customers"]
    attributes = item["customer"]["attributes"]
    assert {k: attributes[k] for k in ("orders", "ltv", "vip", "at", "tags")} == {
        "orders": "3",
        "ltv": "12.5",
        "vip": "true",
        "at": "1767225600",
        "tags": '["a"]',
    }
    assert "gone" not in attributes and attributes["id"] == "1"
    assert item["customer"]["identifiers"]["id"] == "1"
    assert app.get(f"{sb.url}/v1/customers/1/attributes").json()["customer"]["id"] == "1"
    assert app.get(f"{sb.url}/v1/customers/nobody/attributes").status_code == 404


def test_the_attributes_read_takes_1_to_100_ids(sb, app):
    url = f"{sb.url}/v1/customers/attributes"
    assert app.post(url, json={"ids": []}).status_code == 400
    assert app.post(url, json={"ids": [str(i) for i in range(101)]}).status_code == 400
    assert app.post(url + "?id_type=phone", json={"ids": ["1"]}).status_code == 400


def test_every_profile_holding_an_email_answers_it(sb, app):
    track(sb, identify("1", email="Ann+vip@example.com"))
    sb.add_person(id="legacy", attributes={"email": "ann+vip@example.com"})
    r = app.get(f"{sb.url}/v1/customers", params={"email": "ann+vip@example.com"})
    assert sorted(p["id"] for p in r.json()["results"]) == ["1", "legacy"]
    # an unencoded + is a space: not the address
    assert app.get(f"{sb.url}/v1/customers?email=ann+vip@example.com").json()["results"] == []


def test_an_email_another_person_holds_fails_as_an_activity_and_is_not_applied(sb, app):
    track(sb, identify("1", email="ann@example.com"))
    track(sb, identify("2", email="ann@example.com", plan="gold"))
    two = sb.person(id="2")
    assert two["email"] is None and "email" not in two["attributes"]
    assert two["attributes"]["plan"] == "gold"  # the rest of the identify applies
    found = app.get(f"{sb.url}/v1/customers/2/activities").json()["activities"]
    # the plan that did change is an attribute_change, as in Customer.io's activity log
    assert [a["type"] for a in found] == ["attribute_change", "failed_attribute_change"]
    activity = found[1]
    assert activity["data"]["attribute"] == "email"


def test_activities_are_events_newest_first_paged_by_next(sb, app):
    track(
        sb,
        *[
            event("1", "order_placed", f"01ARZ3NDEKTSV4RRFFQ69G5F{i:02d}", 1000 + i)
            for i in range(5)
        ],
    )
    r = app.get(f"{sb.url}/v1/customers/1/activities", params={"limit": 2, "type": "event"})
    page = r.json()
    assert [a["timestamp"] for a in page["activities"]] == [1004, 1003]
    rest = app.get(
        f"{sb.url}/v1/customers/1/activities", params={"limit": 100, "start": page["next"]}
    )
    assert [a["timestamp"] for a in rest.json()["activities"]] == [1002, 1001, 1000]
    assert rest.json()["next"] == ""
    assert app.get(f"{sb.url}/v1/customers/1/activities?limit=101").status_code == 400


def test_a_failed_event_is_accepted_and_recorded_as_failed(sb, app):
    sb.fail_events("order_placed")
    track(sb, event("1", "order_placed", "01ARZ3NDEKTSV4RRFFQ69G5FAV", 1000))
    assert sb.events() == []
    kinds = [a["type"] for a in app.get(f"{sb.url}/v1/customers/1/activities").json()["activities"]]
    assert kinds == ["failed_event"]


def test_writes_wait_for_the_delay_or_a_flush(sb, app):
    sb.delay_writes(3600)
    track(sb, identify("1", plan="gold"))
    assert sb.person(id="1") is None  # accepted, not applied yet
    sb.flush_writes()
    assert sb.person(id="1")["attributes"] == {"plan": "gold"}


def test_a_person_whose_writes_are_ignored_is_never_written(sb, app):
    sb.ignore_writes(id="1")
    track(sb, identify("1", plan="gold"), identify("2", plan="gold"))
    assert sb.person(id="1") is None and sb.person(id="2") is not None
    assert sb.counters()["writes_ignored"] == 1


def test_a_suppressed_person_is_gone_from_the_reads(sb, app):
    track(sb, identify("1", plan="gold"))
    track(sb, {"type": "person", "action": "suppress", "identifiers": {"id": "1"}})
    assert app.get(f"{sb.url}/v1/customers/1/attributes").status_code == 404


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(JSON)
def test_verification_reads_what_the_sandbox_stores_as_what_was_sent(value):
    """The target's comparison and the sandbox's string form agree on every JSON value; a
    removed attribute (null or "") is absent."""
    if value is None or value == "":
        assert stored_equal(value, None)
    else:
        assert stored_equal(value, as_stored(value))
        assert not stored_equal(value, None)


@settings(max_examples=EXAMPLES, deadline=None)
@given(JSON, JSON)
def test_different_values_are_not_taken_for_each_other(sent, other):
    """What Customer.io holds for another value is a mismatch (numbers compare as numbers)."""
    equal_numbers = (
        all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (sent, other))
        and sent == other
    )
    if sent != other and not equal_numbers and not (sent in (None, "") and other in (None, "")):
        held = None if other is None or other == "" else as_stored(other)
        assert not stored_equal(sent, held) or as_stored(sent) == held


def test_write_faults_through_the_inspection_api(sb):
    url = f"{sb.url}/_sandbox/write_faults"
    r = requests.post(url, json={"ignore": [{"id": "1"}], "fail_events": ["x"], "delay": 3600})
    assert r.json() == {
        "delay": 3600.0,
        "ignore": [{"id": "1"}],
        "fail_events": ["x"],
        "pending": 0,
    }
    track(sb, identify("1", plan="gold"), identify("2", plan="gold"))
    assert requests.get(url).json()["pending"] == 1 and sb.person(id="2") is None
    assert requests.delete(url).json()["pending"] == 0  # what waited is applied, then cleared
    assert sb.person(id="2") is not None and sb.person(id="1") is None
    assert requests.post(url, json={"dealy": 1}).status_code == 400
