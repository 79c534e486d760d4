"""The local Track API sandbox, exercised over HTTP like the target (and a browser) would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import requests

from target_customerio.sandbox import Sandbox

AUTH = ("site", "secret")
ULID_A = "01J0000000000000000000000A"
ULID_B = "01J0000000000000000000000B"
ULID_C = "01J0000000000000000000000C"
ULID_D = "01J0000000000000000000000D"


@pytest.fixture
def sb():
    with Sandbox(site_id="site", api_key="secret") as sandbox:
        yield sandbox


@pytest.fixture
def http():
    with requests.Session() as session:
        session.auth = AUTH
        yield session


def identify(ident: dict, **attributes) -> dict:
    return {"type": "person", "action": "identify", "identifiers": ident, "attributes": attributes}


def event(ident: dict, name: str, event_id: str | None = None, **extra) -> dict:
    op = {"type": "person", "action": "event", "identifiers": ident, "name": name, **extra}
    if event_id:
        op["id"] = event_id
    return op


def batch(http, sb, *ops, **kw) -> requests.Response:
    return http.post(f"{sb.url}/api/v2/batch", json={"batch": list(ops)}, **kw)


# ---- auth, region, batch -----------------------------------------------------------------


def test_missing_or_wrong_credentials_are_401(sb):
    for auth in (None, ("site", "wrong"), ("other", "secret")):
        r = requests.post(f"{sb.url}/api/v2/batch", json={"batch": []}, auth=auth)
        assert r.status_code == 401
        assert r.json() == {"meta": {"error": "Unauthorized request"}}
    assert requests.get(f"{sb.url}/api/v1/accounts/region").status_code == 401
    assert sb.counters()["unauthorized"] == 4


@pytest.mark.parametrize(
    "region,url", [("us", "https://track.customer.io"), ("eu", "https://track-eu.customer.io")]
)
def test_region(region, url):
    with Sandbox(region=region) as sandbox:
        r = requests.get(f"{sandbox.url}/api/v1/accounts/region", auth=AUTH)
    assert r.status_code == 200
    assert r.json() == {"url": url, "data_center": region, "environment_id": 1, "region": region}


def test_batch_of_valid_ops_is_200_and_stored(sb, http):
    r = batch(
        http,
        sb,
        identify({"id": "42"}, first_name="Ada", orders_count=3),
        event(
            {"id": "42"},
            "order_placed",
            ULID_A,
            timestamp=1_700_000_000,
            attributes={"total": 25.5},
        ),
    )
    assert (r.status_code, r.json()) == (200, {})
    person = sb.person(id="42")
    assert person["attributes"] == {"first_name": "Ada", "orders_count": 3}
    assert len(person["cio_id"]) > 0 and person["email"] is None
    [ev] = sb.events()
    assert ev["person_id"] == "42" and ev["name"] == "order_placed" and ev["id"] == ULID_A
    assert ev["timestamp"] == 1_700_000_000 and ev["attributes"] == {"total": 25.5}
    assert sb.requests()[-1] | {"at": 0} == {
        "method": "POST",
        "path": "/api/v2/batch",
        "status": 200,
        "bytes": len(r.request.body),
        "ops": 2,
        "errors": 0,
        "at": 0,
    }


def test_bad_ops_among_good_ones_are_207_with_their_batch_index(sb, http):
    r = batch(
        http,
        sb,
        identify({"id": "1"}, a=1),
        identify({"id": "2", "email": "two@example.com"}, a=2),  # two identifiers
        identify({"id": "3"}, a=3),
        event({"id": "4"}, "order_placed", "not-a-ulid"),
        event({"id": "5"}, "order_placed", timestamp="2024-01-01T00:00:00Z"),
        {"type": "person", "action": "explode", "identifiers": {"id": "6"}},
        event({"id": "7"}, "order_placed"),
    )
    assert r.status_code == 207
    errors = r.json()["errors"]
    assert [e["batch_index"] for e in errors] == [1, 3, 4, 5]
    assert [e["field"] for e in errors] == ["identifiers", "id", "timestamp", "action"]
    assert all(e["reason"] and e["message"] for e in errors)
    assert sorted(p["id"] for p in sb.people()) == ["1", "3", "7"]
    assert len(sb.events()) == 1


def test_whole_request_errors(sb, http):
    url = f"{sb.url}/api/v2/batch"
    assert http.post(url, data=b"{not json").status_code == 400
    assert http.post(url, json={"nope": []}).status_code == 400
    r = http.post(url, json={"batch": "x"})
    assert r.status_code == 400 and "error" in r.json()["meta"]


def test_request_over_500_kb_is_rejected_whole(sb, http):
    value = "x" * 900
    ops = [identify({"id": str(i)}, **{f"a{j}": value for j in range(10)}) for i in range(60)]
    r = batch(http, sb, *ops)
    assert len(r.request.body) > 500 * 1024
    assert r.status_code == 413 and "error" in r.json()["meta"]
    assert sb.people() == []
    # One op fewer than the limit still goes through.
    assert batch(http, sb, *ops[:50]).status_code == 200
    assert len(sb.people()) == 50


def test_op_over_32_kb_is_an_item_error(sb, http):
    big = event({"id": "1"}, "big", attributes={f"k{i}": "y" * 900 for i in range(40)})
    r = batch(http, sb, identify({"id": "0"}, a=1), big)
    assert r.status_code == 207
    assert r.json()["errors"] == [
        {
            "batch_index": 1,
            "reason": "too_large",
            "field": "",
            "message": "operation is larger than 32768 bytes",
        }
    ]
    assert [p["id"] for p in sb.people()] == ["0"]


@pytest.mark.parametrize(
    "op,field",
    [
        (identify({"id": "x" * 151}), "identifiers.id"),
        (identify({}), "identifiers"),
        (identify({"id": "1"}, **{f"a{i}": i for i in range(301)}), "attributes"),
        (identify({"id": "1"}, **{"n" * 151: 1}), "attributes." + "n" * 151),
        (identify({"id": "1"}, note="z" * 1001), "attributes.note"),
        (event({"id": "1"}, "e" * 101), "name"),
        (event({"id": "1"}, ""), "name"),
        (event({"id": "1"}, "e", attributes={f"k{i}": "v" * 990 for i in range(110)}), ""),
        ({"type": "person", "action": "merge", "primary": {"id": "1"}}, "secondary"),
        (
            {"type": "object", "action": "identify", "identifiers": {"object_id": "1"}},
            "identifiers",
        ),
    ],
)
def test_per_op_limits(sb, http, op, field):
    r = http.post(f"{sb.url}/api/v2/batch", data=json.dumps({"batch": [op]}))
    assert r.status_code in (207, 413), r.text
    if r.status_code == 207:
        assert r.json()["errors"][0]["field"] == field


def test_attribute_value_limit_counts_string_text_not_json_quotes(sb, http):
    assert batch(http, sb, identify({"id": "1"}, note="z" * 1000)).status_code == 200


# ---- Customer.io semantics ----------------------------------------------------------------


def test_event_with_a_seen_id_is_dropped_but_accepted(sb, http):
    op = event({"id": "1"}, "order_placed", ULID_A, timestamp=1_700_000_000)
    assert batch(http, sb, op).status_code == 200
    assert batch(http, sb, op, {**op, "id": ULID_A.lower()}).status_code == 200
    assert batch(http, sb, {**op, "id": ULID_B}).status_code == 200
    assert [e["id"] for e in sb.events()] == [ULID_A, ULID_B]
    assert sb.counters()["duplicate_events_dropped"] == 2


def test_event_without_id_or_timestamp_gets_a_ulid_and_received_time(sb, http):
    before = int(time.time())
    batch(http, sb, event({"email": "New@Example.com"}, "signed_up"))
    [ev] = sb.events()
    assert len(ev["id"]) == 26 and before <= ev["timestamp"] <= time.time()
    assert ev["person_email"] == "new@example.com"  # the event created the person


def test_email_is_case_insensitive_and_id_case_sensitive(sb, http):
    batch(
        http,
        sb,
        identify({"email": "Ada@Example.COM"}, a=1),
        identify({"email": "ada@example.com"}, b=2),
        identify({"id": "Abc"}),
        identify({"id": "abc"}),
    )
    assert sb.person(email="ADA@example.com")["attributes"] == {"a": 1, "b": 2}
    assert sb.person(email="ada@example.com")["email"] == "ada@example.com"
    assert sorted(p["id"] or "-" for p in sb.people()) == ["-", "Abc", "abc"]


def test_null_or_empty_attribute_removes_it(sb, http):
    batch(http, sb, identify({"id": "1"}, a=1, b=2, c=3))
    batch(http, sb, identify({"id": "1"}, a=None, b="", d=4))
    assert sb.person(id="1")["attributes"] == {"c": 3, "d": 4}


def test_identify_older_than_last_update_is_dropped(sb, http):
    op = identify({"id": "1"}, plan="pro")
    batch(http, sb, {**op, "timestamp": 2_000})
    batch(http, sb, {**op, "timestamp": 1_000, "attributes": {"plan": "old"}})
    assert sb.person(id="1")["attributes"] == {"plan": "pro"}
    assert sb.counters()["stale_identify_dropped"] == 1


def test_delete_suppress_merge_and_objects(sb, http):
    batch(
        http,
        sb,
        identify({"id": "1"}, a=1),
        identify({"email": "x@example.com"}, a=2, b=2),
        event({"email": "x@example.com"}, "e", ULID_A),
        identify({"id": "gone"}),
    )
    r = batch(
        http,
        sb,
        {
            "type": "person",
            "action": "merge",
            "primary": {"id": "1"},
            "secondary": {"email": "x@example.com"},
        },
        {"type": "person", "action": "delete", "identifiers": {"id": "gone"}},
        {"type": "person", "action": "suppress", "identifiers": {"id": "spam"}},
        {
            "type": "object",
            "action": "identify",
            "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "attributes": {"n": 1},
            "cio_relationships": [{"identifiers": {"id": "1"}}],
        },
    )
    assert r.status_code == 200, r.text
    merged = sb.person(id="1")
    assert merged["email"] == "x@example.com" and merged["attributes"] == {"a": 1, "b": 2}
    assert sb.events()[0]["person_id"] == "1"
    assert sb.person(id="gone") is None and sb.person(id="spam")["suppressed"]
    assert sb.objects()[0]["attributes"] == {"n": 1}
    batch(http, sb, identify({"id": "spam"}, a=1))
    assert sb.person(id="spam")["attributes"] == {}


def test_v1_endpoints(sb, http):
    base = f"{sb.url}/api/v1"
    assert http.put(f"{base}/customers/7", json={"plan": "pro"}).json() == {}
    assert http.put(f"{base}/customers/Bo%40Example.com", json={"x": 1}).status_code == 200
    r = http.post(
        f"{base}/customers/7/events",
        json={
            "name": "order_placed",
            "id": ULID_A,
            "timestamp": 1_700_000_000,
            "data": {"total": 1},
        },
    )
    assert r.status_code == 200
    assert sb.events()[0]["attributes"] == {"total": 1}
    bad = http.post(f"{base}/customers/7/events", json={"name": "x", "timestamp": "yesterday"})
    assert bad.status_code == 400 and "timestamp" in bad.json()["meta"]["error"]
    assert (
        http.post(
            f"{base}/merge_customers",
            json={"primary": {"id": "7"}, "secondary": {"email": "bo@example.com"}},
        ).status_code
        == 200
    )
    assert sb.person(id="7")["attributes"] == {"plan": "pro", "x": 1}
    assert http.delete(f"{base}/customers/7").status_code == 200
    assert sb.people() == [] and sb.events() == []


def test_v1_event_data_limit_is_100_kb(sb, http):
    url = f"{sb.url}/api/v1/customers/7/events"
    data = {f"k{i}": "v" * 900 for i in range(50)}  # ~45 KB: over the v2 op limit, fine on v1
    assert http.post(url, json={"name": "e", "data": data}).status_code == 200
    data = {f"k{i}": "v" * 900 for i in range(120)}
    r = http.post(url, json={"name": "e", "data": data})
    assert r.status_code == 400 and "larger" in r.json()["meta"]["error"]


def test_chunked_request_body(sb, http):
    body = json.dumps({"batch": [identify({"id": "1"}, a=1)]}).encode()
    r = http.post(f"{sb.url}/api/v2/batch", data=iter([body[:10], body[10:]]))
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 200 and sb.person(id="1") is not None


# ---- faults -------------------------------------------------------------------------------


def test_fault_respond_429_with_and_without_retry_after(sb, http):
    sb.inject(429, times=2, retry_after=2)
    sb.inject(429)
    op = identify({"id": "1"}, a=1)
    for _ in range(2):
        r = batch(http, sb, op)
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    r = batch(http, sb, op)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert sb.people() == []  # respond = not processed
    assert batch(http, sb, op).status_code == 200
    assert sb.counters()["rate_limited"] == 0  # injected, not rate limited
    assert [q["status"] for q in sb.requests()] == [429, 429, 429, 200]


def test_fault_applies_to_api_only_and_custom_body(sb, http):
    sb.inject(503, body={"meta": {"error": "maintenance"}})
    assert requests.get(f"{sb.url}/_sandbox/people").status_code == 200
    assert requests.get(f"{sb.url}/").status_code == 200
    r = http.get(f"{sb.url}/api/v1/accounts/region")
    assert (r.status_code, r.json()) == (503, {"meta": {"error": "maintenance"}})


def test_fault_process_then_500_stores_the_data(sb, http):
    sb.inject(500, mode="process_then")
    r = batch(http, sb, event({"id": "1"}, "order_placed", ULID_A))
    assert r.status_code == 500
    assert len(sb.events()) == 1
    # The client retries the same event: deduplicated, stored once.
    assert batch(http, sb, event({"id": "1"}, "order_placed", ULID_A)).status_code == 200
    assert len(sb.events()) == 1 and sb.counters()["duplicate_events_dropped"] == 1


def test_fault_skip_lets_requests_through_first(sb, http):
    """`skip`: the fault applies after that many matching requests were answered normally (a
    run's later request: an exit, not its first batch)."""
    sb.inject(500, mode="process_then", skip=2, path="/api/v2/batch")
    codes = [batch(http, sb, event({"id": "1"}, "e", u)).status_code for u in (ULID_A, ULID_B)]
    assert codes == [200, 200]
    assert batch(http, sb, event({"id": "2"}, "e", ULID_C)).status_code == 500
    assert batch(http, sb, event({"id": "3"}, "e", ULID_D)).status_code == 200
    with pytest.raises(ValueError, match="skip"):
        sb.inject(500, skip=-1)


def test_fault_drop_closes_the_connection(sb, http):
    sb.inject(mode="drop")
    with pytest.raises(requests.ConnectionError):
        batch(http, sb, identify({"id": "1"}))
    assert sb.people() == []
    assert sb.requests()[-1]["status"] == 0
    assert batch(http, sb, identify({"id": "1"})).status_code == 200


def test_fault_process_then_drop_stores_then_closes(sb, http):
    sb.inject(mode="process_then_drop")
    with pytest.raises(requests.ConnectionError):
        batch(http, sb, identify({"id": "1"}))
    assert sb.person(id="1") is not None


def test_fault_slow(sb, http):
    sb.inject(mode="slow", delay=0.6)
    start = time.monotonic()
    assert batch(http, sb, identify({"id": "1"})).status_code == 200
    assert time.monotonic() - start >= 0.6
    sb.inject(mode="slow", delay=1.0)
    with pytest.raises(requests.Timeout):
        batch(http, sb, identify({"id": "2"}), timeout=0.2)
    time.sleep(1.0)
    assert sb.person(id="2") is not None  # processed after the delay all the same


def test_clear_faults_and_bad_fault_args(sb, http):
    sb.inject(500, times=5)
    sb.clear_faults()
    assert batch(http, sb, identify({"id": "1"})).status_code == 200
    with pytest.raises(ValueError):
        sb.inject(500, mode="explode")


def test_rate_limit_returns_429_without_retry_after():
    with Sandbox(rate_limit=5) as sandbox, requests.Session() as http:
        http.auth = AUTH
        statuses = []
        for _ in range(20):
            r = http.get(f"{sandbox.url}/api/v1/accounts/region")
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert "Retry-After" not in r.headers
        assert statuses[:5] == [200] * 5 and statuses.count(429) >= 10
        assert sandbox.counters()["rate_limited"] == statuses.count(429)
        time.sleep(0.5)
        assert http.get(f"{sandbox.url}/api/v1/accounts/region").status_code == 200


# ---- inspection API, modes, lifecycle -----------------------------------------------------


def test_inspection_endpoints(sb, http):
    batch(http, sb, identify({"id": "1"}, a=1), event({"id": "1"}, "e", ULID_A))
    base = f"{sb.url}/_sandbox"
    assert [p["id"] for p in requests.get(f"{base}/people").json()] == ["1"]
    assert requests.get(f"{base}/person", params={"id": "1"}).json()["attributes"] == {"a": 1}
    assert [e["id"] for e in requests.get(f"{base}/events").json()] == [ULID_A]
    assert requests.get(f"{base}/requests").json()[0]["ops"] == 2
    assert requests.get(f"{base}/counters").json()["events_accepted"] == 1
    r = requests.post(f"{base}/faults", json={"status": 429, "times": 1, "retry_after": 0.5})
    assert r.status_code == 200 and r.json()[0]["status"] == 429
    assert batch(http, sb, identify({"id": "2"})).headers["Retry-After"] == "0.5"
    assert requests.post(f"{base}/faults", json={"mode": "nope"}).status_code == 400
    requests.post(f"{base}/faults", json={"status": 500, "times": 3})
    assert requests.delete(f"{base}/faults").json() == []
    assert requests.post(f"{base}/reset").status_code == 200
    assert sb.people() == [] and sb.events() == [] and sb.requests() == []


def test_benchmark_mode_validates_and_counts_without_storing():
    with Sandbox(store=False) as sandbox, requests.Session() as http:
        http.auth = AUTH
        op = event({"id": "1"}, "e", ULID_A)
        assert batch(http, sandbox, identify({"id": "1"}, a=1), op, op).status_code == 200
        assert batch(http, sandbox, identify({"id": "1", "email": "a@b.c"})).status_code == 207
        assert sandbox.people() == [] and sandbox.events() == []
        counts = sandbox.counters()
        assert counts["events_accepted"] == 1 and counts["duplicate_events_dropped"] == 1
        assert len(sandbox.requests()) == 2


def test_concurrent_requests_are_all_applied(sb):
    def worker(n: int) -> None:
        with requests.Session() as http:
            http.auth = AUTH
            for i in range(10):
                ops = [event({"id": f"p{n}"}, "e", attributes={"i": i, "j": j}) for j in range(10)]
                assert batch(http, sb, *ops).status_code == 200

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sb.events()) == 800 and len(sb.people()) == 8


def test_restart_keeps_data_and_port_and_cuts_kept_alive_connections(http, tmp_path):
    sandbox = Sandbox(db_path=str(tmp_path / "sb.sqlite")).start()
    url = sandbox.url
    batch(http, sandbox, identify({"id": "1"}, a=1))
    sandbox.stop()
    with pytest.raises(requests.ConnectionError):
        http.get(f"{url}/api/v1/accounts/region")
    assert sandbox.person(id="1")["attributes"] == {"a": 1}  # readable after stop
    with sandbox:
        assert sandbox.url == url
        assert http.get(f"{url}/api/v1/accounts/region").status_code == 200
    again = Sandbox(db_path=str(tmp_path / "sb.sqlite"))
    assert again.person(id="1") is not None  # a file database persists


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_console_script_serves_until_sigterm(tmp_path):
    port = _free_port()
    env = {**os.environ, "TARGET_CUSTOMERIO_SITE_ID": "s1", "TARGET_CUSTOMERIO_API_KEY": "k1"}
    cmd = [
        sys.executable,
        "-c",
        "from target_customerio.sandbox import main; main()",
        "--port",
        str(port),
        "--db",
        str(tmp_path / "qa.sqlite"),
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}" in line
        r = requests.get(f"http://127.0.0.1:{port}/api/v1/accounts/region", auth=("s1", "k1"))
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    bad = subprocess.run(cmd[:3] + ["--host", "0.0.0.0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "loopback" in bad.stderr


# ---- QA page ------------------------------------------------------------------------------


def _seed_problem_data(sb, http) -> None:
    batch(
        http,
        sb,
        identify(
            {"id": "42"},
            email="Bob@Example.com",
            first_name="<script>alert(1)</script>",
            last_order_at="2024-05-01T10:00:00Z",
            lifetime_value="250.00",
            signed_up_at=1_700_000_000_000,
            orders_count=3,
            vip=True,
        ),
        identify({"email": "bob@example.com"}, plan="pro"),  # same human as id 42
        identify({"id": "ada@example.com"}, orders_count=1),
        identify({"email": "ADA@example.com"}, last_order_at=1_700_000_000, lifetime_value=12.5),
        event(
            {"id": "42"},
            "order_placed",
            ULID_A,
            timestamp=1_700_000_000,
            attributes={"total": 250.0},
        ),
    )


def test_page_flags_and_escapes_over_plain_http(sb, http):
    _seed_problem_data(sb, http)
    html = requests.get(f"{sb.url}/").text
    assert (
        "<script>alert(1)"
        not in requests.get(f"{sb.url}/people/{sb.person(id='42')['cio_id']}").text
    )
    ada_by_id, ada_by_email = sb.person(id="ada@example.com"), sb.person(email="ada@example.com")
    assert f"duplicate of {ada_by_email['cio_id']}" in html
    assert f"duplicate of {ada_by_id['cio_id']}" in html
    assert "date as string: last_order_at" in html
    assert "date in milliseconds: signed_up_at" in html
    assert "number as string: lifetime_value" in html
    assert requests.get(f"{sb.url}/people/nope").status_code == 404


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def _browser(url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_pages_render_in_headless_chromium(sb, http, tmp_path):
    _seed_problem_data(sb, http)
    people = _browser(f"{sb.url}/", "--dump-dom")
    assert "duplicate of" in people
    assert "date as string: last_order_at" in people
    assert "number as string: lifetime_value" in people
    assert "date in milliseconds: signed_up_at" in people

    bob = sb.person(id="42")
    profile = _browser(f"{sb.url}/people/{bob['cio_id']}", "--dump-dom")
    assert "bob@example.com" in profile and "order_placed" in profile and ULID_A in profile
    assert "2023-11-14 22:13:20 UTC" in profile  # 1_700_000_000 rendered as a UTC date
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in profile  # escaped, not executed
    for json_type in ("integer", "string", "boolean"):
        assert f"<td>{json_type}</td>" in profile

    shot = tmp_path / "sandbox.png"
    _browser(f"{sb.url}/", f"--screenshot={shot}", "--window-size=1200,900")
    assert shot.stat().st_size > 5000
