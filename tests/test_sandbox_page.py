"""The QA page's segments, reconcile hook, reject-file section, and sortable, searchable tables."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import requests

from target_customerio.sandbox import Sandbox
from tests.test_sandbox import _browser, _chromium

AUTH = ("site", "secret")


def identify(ident: dict, **attributes) -> dict:
    return {"type": "person", "action": "identify", "identifiers": ident, "attributes": attributes}


def seed(sb, *ops) -> None:
    r = requests.post(f"{sb.url}/api/v2/batch", json={"batch": list(ops)}, auth=AUTH)
    assert r.status_code == 200, r.text


def reject_line(stream: str, at: dt.datetime, **extra) -> str:
    entry = {
        "stream": stream,
        "reason": "contract",
        "field": "total",
        "message": "not a number",
        "record": {"order_id": 1, "total": "x"},
        "rejected_at": at.isoformat(),
        **extra,
    }
    return json.dumps(entry) + "\n"


@pytest.fixture
def sb(tmp_path):
    with Sandbox(
        site_id="site", api_key="secret", reject_file=str(tmp_path / "rejects.jsonl")
    ) as sandbox:
        yield sandbox


def test_index_lists_segments_with_live_counts_and_the_expected_count(sb):
    seed(
        sb,
        identify({"id": "1"}, vip=True),
        identify({"id": "2"}, vip=True),
        identify({"id": "3"}, vip=False),
    )
    vip = sb.add_segment("VIP <b>customers</b>", "vip = true")
    manual = sb.add_segment("Winback", kind="manual")
    sb.add_to_segment(manual, ["3"])
    html = requests.get(f"{sb.url}/").text
    segments = html[html.index("id=segments") : html.index("</table>", html.index("id=segments"))]
    assert "VIP &lt;b&gt;customers&lt;/b&gt;" in segments and "<b>customers" not in segments
    assert "<code>vip = true</code>" in segments and f"href='/segments/{manual}'" in segments
    assert "data-sort=2>2</td>" in segments and "data-sort=1>1</td>" in segments
    assert "drift" not in segments and "matches" not in segments
    sb.record_reconcile(vip, 3)  # the database says three
    r = requests.post(f"{sb.url}/_sandbox/segments/{manual}/reconcile", json={"expected": 1})
    assert r.status_code == 200 and r.json()["expected"] == 1
    html = requests.get(f"{sb.url}/").text
    assert "drift -1" in html and "matches" in html
    assert sb.segment(vip)["expected"] == 3
    bad = requests.post(f"{sb.url}/_sandbox/segments/{vip}/reconcile", json={"expected": "3"})
    assert bad.status_code == 400
    assert (
        requests.post(f"{sb.url}/_sandbox/segments/99/reconcile", json={"expected": 1}).status_code
        == 404
    )
    with pytest.raises(KeyError):
        sb.record_reconcile(99, 1)


def test_segment_page_lists_members_and_person_page_its_segments(sb):
    seed(sb, identify({"id": "1"}, vip=True), identify({"id": "2"}, vip=False))
    vip = sb.add_segment("VIP", "vip = true")
    one = sb.person(id="1")
    page = requests.get(f"{sb.url}/segments/{vip}")
    assert page.status_code == 200
    members = page.text[page.text.index("id=members") :]
    assert one["cio_id"] in members and sb.person(id="2")["cio_id"] not in members
    profile = requests.get(f"{sb.url}/people/{one['cio_id']}").text
    assert f"<a href='/segments/{vip}'>VIP</a>" in profile
    assert requests.get(f"{sb.url}/segments/99").status_code == 404
    assert requests.get(f"{sb.url}/segments/x").status_code == 404


def test_reject_file_section_shows_the_newest_run_only(sb, tmp_path):
    path = tmp_path / "rejects.jsonl"
    assert "No reject file at" in requests.get(f"{sb.url}/").text
    t0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    path.write_text(
        reject_line("public-old", t0)
        + reject_line("public-old", t0 + dt.timedelta(seconds=5))
        + reject_line("public-orders", t0 + dt.timedelta(hours=1), record={"note": "<script>"})
        + reject_line("public-refunds", t0 + dt.timedelta(hours=1, seconds=30))
        + "{cut short\n"
    )
    html = requests.get(f"{sb.url}/").text
    section = html[
        html.index("Rejected records") : html.index("</table>", html.index("id=rejects"))
    ]
    assert "3 line(s)" in section and "public-old" not in section
    assert "public-orders" in section and "public-refunds" in section
    assert "unreadable line" in section and "<script>" not in section
    run = requests.get(f"{sb.url}/_sandbox/rejects").json()
    assert [e.get("stream") for e in run["lines"]] == ["public-orders", "public-refunds", None]
    # A target that writes a run_id: the run is the lines that share the last one's.
    path.write_text(
        reject_line("a", t0, run_id="r1")
        + reject_line("b", t0, run_id="r2")
        + reject_line("c", t0 + dt.timedelta(hours=2), run_id="r2")
    )
    assert [e["stream"] for e in sb.rejects()["lines"]] == ["b", "c"]


def test_no_reject_file_no_section():
    with Sandbox() as sandbox:
        assert "Rejected records" not in requests.get(f"{sandbox.url}/").text
        assert requests.get(f"{sandbox.url}/_sandbox/rejects").json()["lines"] == []


def test_every_table_is_sortable_and_searchable(sb):
    html = requests.get(f"{sb.url}/").text
    assert html.count("<table class=data") == 2  # segments, people (no reject file yet)
    assert "<script>" in html and "src=" not in html and "http" not in html.split("<script>")[1]


def _rows(dom: str, table_id: str) -> list[str]:
    start = dom.index("<tbody>", dom.index(f'id="{table_id}"'))
    body = dom[start : dom.index("</tbody>", start)]
    return re.findall(r"<tr(?: style=\"([^\"]*)\")?>(.*?)</tr>", body, re.S)


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_sorting_and_search_run_in_headless_chromium(sb):
    seed(
        sb,
        identify({"id": "ada"}, vip=True, orders=3),
        identify({"id": "bob"}, vip=True),
        identify({"id": "cy"}, vip=False, orders=9),
    )
    sb.add_segment("small", "orders > 5")  # 1
    sb.add_segment("big", "orders exists OR vip = true")  # 3
    sb.add_segment("mid", "vip = true")  # 2
    dom = _browser(f"{sb.url}/#q.people=bob&sort.segments=-5", "--dump-dom")
    people = _rows(dom, "people")
    visible = [row for style, row in people if "display: none" not in style]
    assert len(people) == 3 and len(visible) == 1 and ">bob<" in visible[0]
    names = [
        re.search(r"/segments/\d+\">([^<]+)<", row).group(1) for _, row in _rows(dom, "segments")
    ]
    assert names == ["big", "mid", "small"]  # by count, descending
    assert 'data-dir="desc"' in dom and 'value="bob"' not in dom  # the box's value is a property
    dom = _browser(f"{sb.url}/#sort.segments=2", "--dump-dom")
    names = [
        re.search(r"/segments/\d+\">([^<]+)<", row).group(1) for _, row in _rows(dom, "segments")
    ]
    assert names == ["big", "mid", "small"]  # by name
