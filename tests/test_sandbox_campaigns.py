"""Sandbox campaigns: definitions by file and endpoint, the App API's campaign reads, and the
trigger simulation (72-hour window, once per event id, segment adds), shown on the QA page."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_customerio.sandbox import Sandbox
from target_customerio.sandbox.campaigns import CampaignError

AUTH = ("site", "secret")
APP = {"Authorization": "Bearer app-secret"}
HOUR = 3600
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@pytest.fixture
def sb():
    with Sandbox(site_id="site", api_key="secret") as sandbox:
        yield sandbox


def ulid(n: int) -> str:
    return "01" + "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(24))


def event(person: str, name: str, n: int, hours_ago: float) -> dict:
    return {
        "type": "person",
        "action": "event",
        "identifiers": {"id": person},
        "name": name,
        "id": ulid(n),
        "timestamp": int(time.time() - hours_ago * HOUR),
    }


def send(sb, *ops) -> None:
    r = requests.post(f"{sb.url}/api/v2/batch", json={"batch": list(ops)}, auth=AUTH)
    assert r.status_code == 200, r.text


def test_the_app_api_lists_campaigns_with_their_triggers(sb):
    segment = sb.add_segment("Winback list", kind="manual")
    post = sb.add_campaign("Post-purchase", event_name="order_placed")
    winback = sb.add_campaign("Winback", trigger_segment_ids=[segment], state="stopped")
    listed = requests.get(f"{sb.url}/v1/campaigns", headers=APP).json()["campaigns"]
    assert [(c["id"], c["state"], c["active"]) for c in listed] == [
        (post, "running", True),
        (winback, "stopped", False),
    ]
    assert listed[0]["event_name"] == "order_placed" and "trigger_segment_ids" not in listed[0]
    assert listed[1]["trigger_segment_ids"] == [segment] and "event_name" not in listed[1]
    assert {"actions", "filter_segment_ids"} <= set(listed[0])
    one = requests.get(f"{sb.url}/v1/campaigns/{post}", headers=APP).json()["campaign"]
    assert one == listed[0]
    assert requests.get(f"{sb.url}/v1/campaigns/999", headers=APP).status_code == 404
    used = requests.get(f"{sb.url}/v1/segments/{segment}/used_by", headers=APP).json()
    assert used["used_by"]["campaigns"] == [winback]
    assert requests.get(f"{sb.url}/v1/campaigns", headers={"Authorization": "x"}).status_code == 401


def test_an_event_enters_its_person_once_per_event_id_within_72_hours(sb):
    post = sb.add_campaign("Post-purchase", event_name="order_placed")
    draft = sb.add_campaign("Draft", event_name="order_placed", state="draft")
    ops = [
        event("a", "order_placed", 1, 1),
        event("a", "order_placed", 2, 71),  # a second event: a second entry
        event("b", "order_placed", 3, 73),  # too old: nobody enters
        event("c", "checkout_started", 4, 1),
    ]
    send(sb, *ops)
    send(sb, *ops)  # re-sent: the event ids are seen, nobody enters twice
    assert [(e["person_id"], e["trigger"]) for e in sb.campaign_entries(post)] == [
        ("a", f"event {ulid(1)}"),
        ("a", f"event {ulid(2)}"),
    ]
    assert sb.campaign_entries(draft) == []
    assert sb.counters()["campaign_entries"] == 2


def test_a_segment_add_enters_the_campaigns_it_triggers_once(sb):
    segment = sb.add_segment("Winback list", kind="manual")
    winback = sb.add_campaign("Winback", trigger_segment_ids=[segment])
    send(sb, {"type": "person", "action": "identify", "identifiers": {"id": "a"}})
    for _ in range(2):
        r = requests.post(
            f"{sb.url}/api/v1/segments/{segment}/add_customers", json={"ids": ["a"]}, auth=AUTH
        )
        assert r.status_code == 200, r.text
    assert [e["person_id"] for e in sb.campaign_entries(winback)] == ["a"]


def test_definitions_by_endpoint_and_file_and_the_qa_page(sb, tmp_path):
    r = requests.post(
        f"{sb.url}/_sandbox/campaigns", json={"name": "Cart", "event_name": "checkout_started"}
    )
    assert r.status_code == 200, r.text
    cart = r.json()["id"]
    for bad in ({"name": "x"}, {"name": "x", "event_name": "e", "stat": "running"}):
        assert requests.post(f"{sb.url}/_sandbox/campaigns", json=bad).status_code == 400
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps([{"id": 9, "name": "Post-purchase", "event_name": "order_placed"}]))
    assert sb.load_campaigns(str(path)) == [9]
    assert sb.load_campaigns(str(path)) == [9]  # loaded again: replaced, not doubled
    send(sb, event("bob", "order_placed", 7, 2))
    listed = requests.get(f"{sb.url}/_sandbox/campaigns").json()
    assert [(c["id"], c["entries"]) for c in listed] == [(cart, 0), (9, 1)]
    one = requests.get(f"{sb.url}/_sandbox/campaigns/9").json()
    assert [e["person_id"] for e in one["entries"]] == ["bob"]
    index = requests.get(f"{sb.url}/").text
    assert "<h2>Campaigns</h2>" in index and "Post-purchase" in index
    page = requests.get(f"{sb.url}/campaigns/9").text
    assert "bob" in page and ulid(7) in page
    sb.reset()  # entries go, definitions stay
    assert [(c["id"], c["entries"]) for c in sb.campaigns()] == [(cart, 0), (9, 0)]
    path.write_text(json.dumps([{"name": "x", "event_name": "e", "state": "paused"}]))
    with pytest.raises(CampaignError, match="campaign 1: state must be one of"):
        sb.load_campaigns(str(path))


def test_console_script_takes_a_campaigns_file(tmp_path):
    path = tmp_path / "campaigns.json"
    path.write_text("[{}]")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from target_customerio.sandbox import main; main()",
            "--db",
            ":memory:",
            "--campaigns",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "--campaigns" in proc.stderr and "campaign 1" in proc.stderr


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.integers(0, 20), st.sampled_from([1, 50, 80])),
        max_size=25,
    )
)
def test_entries_are_one_per_distinct_event_id_within_the_window(sb, sent):
    """Whatever is sent, and however often: an entry for each distinct event id whose time is
    within 72 hours, for the person it first came for."""
    sb.reset()
    post = sb.campaign_store.get(1) or sb.campaign_store.add("Post", event_name="order_placed")
    ops = [event(person, "order_placed", n, hours) for person, n, hours in sent]
    if ops:
        send(sb, *ops)
    first: dict[str, tuple[str, float]] = {}
    for person, n, hours in sent:
        first.setdefault(ulid(n), (person, hours))
    expected = sorted(
        (f"event {eid}", person) for eid, (person, hours) in first.items() if hours < 72
    )
    got = sorted((e["trigger"], e["person_id"]) for e in sb.campaign_entries(post["id"]))
    assert got == expected
