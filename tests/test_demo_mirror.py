"""The demo's mirror syncs end to end: the sample database's `vip_customers` and `vip_segment`
views (FULL_TABLE) through the real tap-postgres and target-customerio process, with the routes
of meltano.yml, against a sandbox with demo/segments.json. Night 1 adds the VIPs to the `vip`
attribute and the manual segment "VIP (from SQL)"; demoting two VIPs removes them from both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo import run_demo
from demo.sample_data import (
    VIP_SEGMENT_ID,
    VIP_SEGMENT_VIEW,
    VIP_VIEW,
    demote_vips,
    load,
    mutate,
    vips,
)
from target_customerio.sandbox import Sandbox
from tests.harness import API_KEY, SITE_ID, Run, run_target, target_config
from tests.pg_fixtures import discover, incremental_catalog, run_tap, tap_config, write_json
from tests.pg_fixtures import postgres as postgres  # noqa: PLC0414  (fixture; `as` avoids F811)

ROOT = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((ROOT / "meltano.yml").read_text())
LOADER = next(p for p in PROJECT["plugins"]["loaders"] if p["name"] == "target-customerio")
ROUTES = LOADER["config"]["streams"]
PROFILES = "public-customer_profiles"
VIP, MEMBERS = f"public-{VIP_VIEW}", f"public-{VIP_SEGMENT_VIEW}"


def test_meltano_yml_mirrors_the_vip_views_read_whole():
    main = next(p for p in PROJECT["plugins"]["extractors"] if p["name"] == "tap-postgres")
    for stream in (VIP, MEMBERS):
        assert f"{stream}.*" in main["select"]
        assert main["metadata"][stream] == {"replication-method": "FULL_TABLE"}
    assert ROUTES[VIP] == {
        "kind": "person",
        "identifier": {"field": "customer_id", "type": "id"},
        "attributes": {"include": ["vip", "vip_tier"]},
        "mirror": True,
        "on_exit": "unset",
    }
    assert ROUTES[MEMBERS] == {
        "kind": "segment",
        "identifier": {"field": "customer_id", "type": "id"},
        "segment_id": "segment_id",
    }
    segments = json.loads(run_demo.SEGMENTS_FILE.read_text())
    assert {"id": VIP_SEGMENT_ID, "name": "VIP (from SQL)", "kind": "manual"} in segments


def catalog(discovered: dict[str, Any]) -> dict[str, Any]:
    """What Meltano writes for the demo's tap-postgres, cut to the profiles (INCREMENTAL) and
    the two VIP views (FULL_TABLE), the profiles first."""
    streams = incremental_catalog(discovered, {"customer_profiles": "updated_at"})["streams"]
    for view in (VIP_VIEW, VIP_SEGMENT_VIEW):
        entry = json.loads(
            json.dumps(next(e for e in discovered["streams"] if e["table_name"] == view))
        )
        entry["replication_method"] = "FULL_TABLE"
        root = next(m for m in entry["metadata"] if m["breadcrumb"] == [])
        root["metadata"].update({"selected": True, "replication-method": "FULL_TABLE"})
        streams.append(entry)
    return {"streams": streams}


@pytest.fixture
def workspace():
    with Sandbox(
        site_id=SITE_ID,
        api_key=API_KEY,
        db_path=":memory:",
        segments_file=str(run_demo.SEGMENTS_FILE),
    ) as sb:
        yield sb


def sync(server, sandbox: Sandbox, directory: Path, state: dict | None) -> tuple[Run, dict]:
    config = write_json(directory / "tap.json", tap_config(server))
    cat = write_json(directory / "catalog.json", catalog(discover(config)))
    state_path = write_json(directory / "state.json", state) if state else None
    tap = run_tap(config, cat, state_path)
    routes = {s: ROUTES[s] for s in (PROFILES, VIP, MEMBERS)}
    (directory / "target").mkdir(exist_ok=True)
    target = target_config(sandbox.url, directory / "target", routes)
    return run_target(target, tap.stdout.splitlines(), directory / "target"), tap.state


def held(sandbox: Sandbox) -> tuple[dict[str, Any], set[str]]:
    """{id: vip_tier} of the people with vip = true, and the segment's member ids."""
    holders = {
        p["id"]: p["attributes"].get("vip_tier")
        for p in sandbox.people()
        if p["attributes"].get("vip") is True
    }
    return holders, {p["id"] for p in sandbox.segment_members(VIP_SEGMENT_ID)}


def test_night_1_adds_the_vips_and_demoting_two_removes_them_from_both(
    postgres, workspace, tmp_path
):
    load(postgres.dsn)
    try:
        expected = vips(postgres.dsn)
        night1, state = sync(postgres, workspace, tmp_path, None)
        assert night1.returncode == 0, night1.stderr
        holders, members = held(workspace)
        assert holders == expected and members == set(expected)
        mirror = night1.report["mirror"]
        assert mirror[VIP]["members"] == len(expected) and mirror[VIP]["left"] == 0
        assert mirror[MEMBERS]["segment_adds"] == len(expected)

        mutate(postgres.dsn)
        demoted = demote_vips(postgres.dsn, 2)["customer_ids"]
        assert len(demoted) == 2
        night2, _ = sync(postgres, workspace, tmp_path, state)
        assert night2.returncode == 0, night2.stderr
        holders, members = held(workspace)
        remaining = {c: t for c, t in expected.items() if c not in demoted}
        assert holders == remaining and members == set(remaining)
        for person_id in demoted:
            attributes = workspace.person(id=person_id)["attributes"]
            assert "vip" not in attributes and "vip_tier" not in attributes
            assert "lifetime_value" in attributes  # the profile's own attributes stay
        mirror = night2.report["mirror"]
        assert mirror[VIP]["left"] == 2 and mirror[VIP]["exits"] == {"unset": 2}
        assert mirror[VIP]["guard"] == "ok" and mirror[MEMBERS]["guard"] == "ok"
        assert mirror[MEMBERS]["segment_removes"] == 2
        assert mirror[MEMBERS].get("segment_adds", 0) == 0
    finally:
        load(postgres.dsn)
