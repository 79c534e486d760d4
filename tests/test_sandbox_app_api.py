"""The sandbox's App API (/v1/segments/...): bearer auth, counts, its rate limit and faults."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from target_customerio.sandbox import Sandbox

AUTH = ("site", "secret")
APP_KEY = "app-key-1"


@pytest.fixture
def sb():
    with Sandbox(site_id="site", api_key="secret", app_api_key=APP_KEY) as sandbox:
        yield sandbox


@pytest.fixture
def app():
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {APP_KEY}"
        yield session


def identify(ident: dict, **attributes) -> dict:
    return {"type": "person", "action": "identify", "identifiers": ident, "attributes": attributes}


def seed(sb, *ops) -> None:
    r = requests.post(f"{sb.url}/api/v2/batch", json={"batch": list(ops)}, auth=AUTH)
    assert r.status_code == 200, r.text


def test_customer_count_and_segment(sb, app):
    seed(sb, identify({"id": "1"}, vip=True), identify({"id": "2"}, vip=False))
    vip = sb.add_segment("VIP", "vip = true", id=7)
    r = app.get(f"{sb.url}/v1/segments/7/customer_count")
    assert (r.status_code, r.json()) == (200, {"segment_id": 7, "count": 1})
    segment = app.get(f"{sb.url}/v1/segments/{vip}").json()["segment"]
    assert (segment["id"], segment["name"], segment["type"]) == (7, "VIP", "dynamic")
    manual = sb.add_segment("Winback", kind="manual")
    assert app.get(f"{sb.url}/v1/segments/{manual}").json()["segment"]["type"] == "manual"
    assert app.get(f"{sb.url}/v1/segments/{manual}/customer_count").json()["count"] == 0
    listed = app.get(f"{sb.url}/v1/segments").json()["segments"]
    assert [(s["id"], s["type"]) for s in listed] == [(7, "dynamic"), (8, "manual")]
    assert sb.counters()["app_requests"] == 5
    assert [q["path"] for q in sb.requests()][-1] == "/v1/segments"


@pytest.mark.parametrize(
    "path", ["/v1/segments/99/customer_count", "/v1/segments/99", "/v1/segments/99/membership"]
)
def test_unknown_segment_is_404_with_the_app_api_error_shape(sb, app, path):
    r = app.get(f"{sb.url}{path}")
    assert r.status_code == 404
    [item] = r.json()["errors"]
    assert "segment 99 not found" in item["detail"]


def test_no_route_is_404(sb, app):
    for path in ("/v1/segments/abc", "/v1/segments/0", "/v1/customers/1/x", "/v1/segments/7/x"):
        assert app.get(f"{sb.url}{path}").status_code == 404, path
    assert app.post(f"{sb.url}/v1/segments/1/customer_count").status_code == 404


def test_bearer_auth_with_the_app_api_key_only(sb):
    sb.add_segment("VIP", "vip = true", id=7)
    url = f"{sb.url}/v1/segments/7/customer_count"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": APP_KEY}):
        r = requests.get(url, headers=headers)
        assert r.status_code == 401 and r.json()["errors"][0]["detail"].startswith("unauthorized")
    assert requests.get(url, auth=AUTH).status_code == 401  # Track credentials are not App ones
    # And the App key is no Track credential.
    r = requests.get(
        f"{sb.url}/api/v1/accounts/region", headers={"Authorization": f"Bearer {APP_KEY}"}
    )
    assert r.status_code == 401
    assert sb.counters()["app_unauthorized"] == 4


def test_membership_pages(sb, app):
    seed(
        sb,
        *(identify({"id": str(i)}, vip=True) for i in range(5)),
        identify({"email": "e@x.io"}, vip=True),
    )
    sb.add_segment("VIP", "vip = true", id=3)
    first = app.get(f"{sb.url}/v1/segments/3/membership", params={"limit": 4}).json()
    assert first["ids"] == ["0", "1", "2", "3"] and first["next"] == "4"
    rest = app.get(
        f"{sb.url}/v1/segments/3/membership", params={"limit": 4, "start": first["next"]}
    ).json()
    assert rest["ids"] == ["4"] and rest["next"] == ""
    assert rest["identifiers"][1]["email"] == "e@x.io" and rest["identifiers"][1]["id"] is None
    bad = app.get(f"{sb.url}/v1/segments/3/membership", params={"limit": 0})
    assert bad.status_code == 400


def test_rate_limit_is_10_a_second_by_default_and_configurable(app):
    with Sandbox(app_api_key=APP_KEY) as sandbox:
        sandbox.add_segment("VIP", "vip = true", id=1)
        url = f"{sandbox.url}/v1/segments/1/customer_count"
        statuses = [app.get(url).status_code for _ in range(20)]
        assert statuses[:10] == [200] * 10 and statuses.count(429) >= 5
        assert sandbox.counters()["app_rate_limited"] == statuses.count(429)
        assert sandbox.counters().get("rate_limited", 0) == 0  # the Track limit is another
        r = app.get(url)
        assert r.status_code == 429 and r.json()["errors"][0]["detail"] == "Too many requests"
    with Sandbox(app_api_key=APP_KEY, app_rate_limit=2) as sandbox:
        sandbox.add_segment("VIP", "vip = true", id=1)
        url = f"{sandbox.url}/v1/segments/1/customer_count"
        assert [app.get(url).status_code for _ in range(3)] == [200, 200, 429]
        time.sleep(0.6)
        assert app.get(url).status_code == 200
    with Sandbox(app_api_key=APP_KEY, app_rate_limit=None) as sandbox:
        sandbox.add_segment("VIP", "vip = true", id=1)
        url = f"{sandbox.url}/v1/segments/1/customer_count"
        assert {app.get(url).status_code for _ in range(30)} == {200}


def test_faults_are_injectable_on_the_app_api(sb, app):
    sb.add_segment("VIP", "vip = true", id=7)
    url = f"{sb.url}/v1/segments/7/customer_count"
    sb.inject(429, retry_after=1, path="/v1/segments")
    r = app.get(url)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    sb.inject(500, mode="process_then", path="/v1/")
    assert app.get(url).status_code == 500
    sb.inject(mode="drop", path="/v1/")
    with pytest.raises(requests.ConnectionError):
        app.get(url)
    r = requests.post(f"{sb.url}/_sandbox/faults", json={"status": 503, "path": "/v1/segments/7"})
    assert r.status_code == 200
    assert app.get(url).status_code == 503
    assert app.get(url).json() == {"segment_id": 7, "count": 0}
    # A fault for the Track API waits for a Track request: the App API request passes it by.
    sb.inject(503, path="/api/v2/batch")
    assert app.get(url).status_code == 200
    assert [q["status"] for q in sb.requests()] == [429, 500, 0, 503, 200, 200]


def test_console_script_takes_the_app_api_key():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-c",
        "from target_customerio.sandbox import main; main()",
        "--port",
        str(port),
        "--db",
        ":memory:",
        "--app-api-key",
        "k-app",
        "--app-rate-limit",
        "0",
    ]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    try:
        assert f"http://127.0.0.1:{port}" in proc.stderr.readline()
        url = f"http://127.0.0.1:{port}/v1/segments"
        assert requests.get(url, headers={"Authorization": "Bearer k-app"}).json() == {
            "segments": []
        }
        assert requests.get(url, headers={"Authorization": "Bearer other"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
