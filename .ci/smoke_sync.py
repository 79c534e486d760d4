"""A short sync with an installed target-customerio, as a user would run it: what is shipped is
what is tested (.ci/run and the release workflow run it on each built wheel).

    python .ci/smoke_sync.py VENV [--expect compiled|interpreted]

VENV is a fresh virtual environment with only the built wheel installed. The script starts that
environment's `target-customerio-sandbox` on a free port, pipes a person stream and an event
stream into its `target-customerio`, and checks the exit code, the STATE line and what the
sandbox received. Standard library only: it never imports the package from the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SITE_ID, API_KEY = "smoke-site", "smoke-key"
PEOPLE = [
    {"customer_id": f"c{n}", "email": f"c{n}@example.com", "orders_count": n} for n in (1, 2, 3)
]
ORDERS = [
    {"order_id": "o1", "customer_id": "c1", "total": 25.5, "placed_at": "2026-01-02T03:04:05Z"}
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", type=Path)
    parser.add_argument("--expect", choices=["compiled", "interpreted"])
    args = parser.parse_args()
    bin_dir = args.venv.absolute() / ("Scripts" if os.name == "nt" else "bin")
    version = _run([str(bin_dir / "target-customerio"), "--version"]).stdout.strip()
    print(f"smoke: {version}", flush=True)
    port = _free_port()
    # A file: a pipe nobody reads could fill up.
    with tempfile.TemporaryFile(mode="w+") as sandbox_log:
        sandbox = subprocess.Popen(
            [
                str(bin_dir / "target-customerio-sandbox"),
                "--port",
                str(port),
                "--db",
                ":memory:",
                "--site-id",
                SITE_ID,
                "--api-key",
                API_KEY,
            ],
            stdout=subprocess.DEVNULL,
            stderr=sandbox_log,
            text=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for(url, sandbox)
            log = _sync(bin_dir, url)
            return _check(url, log, args.expect)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)


def _sync(bin_dir: Path, url: str) -> str:
    """Runs the target on a few Singer messages; returns its log (stderr)."""
    with tempfile.TemporaryDirectory(prefix="target-customerio-smoke-") as work:
        config = Path(work) / "config.json"
        config.write_text(
            json.dumps(
                {
                    "site_id": SITE_ID,
                    "api_key": API_KEY,
                    "track_api_url": url,
                    "ledger_path": str(Path(work) / "ledger.sqlite"),
                    "mapping_workers": 0,
                    "streams": {
                        "public-customers": {
                            "kind": "person",
                            "identifier": {"field": "customer_id", "type": "id"},
                        },
                        "public-orders": {
                            "kind": "event",
                            "identifier": {"field": "customer_id", "type": "id"},
                            "event_name": "order_placed",
                            "event_id": ["order_id"],
                            "timestamp": "placed_at",
                        },
                    },
                }
            )
        )
        run = _run(
            [str(bin_dir / "target-customerio"), "--config", str(config)],
            input=_messages(),
            cwd=work,
            check=False,
        )
    if run.returncode != 0:
        raise SystemExit(f"smoke: target-customerio exited {run.returncode}\n{run.stderr[-4000:]}")
    states = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    if not states or states[-1] != {"bookmark": "end"}:  # Meltano reads the bare value
        raise SystemExit(f"smoke: the last STATE is not the tap's: {run.stdout[-1000:]!r}")
    return run.stderr


def _messages() -> str:
    def schema(stream: str, rows: list[dict], key: str) -> dict:
        properties = {
            name: {"type": ["string"] if isinstance(value, str) else ["number"]}
            for name, value in rows[0].items()
        }
        if stream == "public-orders":
            properties["placed_at"] = {"type": ["string"], "format": "date-time"}
        return {
            "type": "SCHEMA",
            "stream": stream,
            "key_properties": [key],
            "schema": {"type": "object", "properties": properties},
        }

    lines = [
        schema("public-customers", PEOPLE, "customer_id"),
        *({"type": "RECORD", "stream": "public-customers", "record": row} for row in PEOPLE),
        schema("public-orders", ORDERS, "order_id"),
        *({"type": "RECORD", "stream": "public-orders", "record": row} for row in ORDERS),
        {"type": "STATE", "value": {"bookmark": "end"}},
    ]
    return "".join(json.dumps(line) + "\n" for line in lines)


def _check(url: str, log: str, expect: str | None) -> int:
    people = {p.get("id") or p.get("identifiers", {}).get("id") for p in _get(url, "people")}
    events = _get(url, "events")
    missing = {row["customer_id"] for row in PEOPLE} - people
    if missing or len(events) != len(ORDERS):
        raise SystemExit(
            f"smoke: the sandbox has people {sorted(map(str, people))} and "
            f"{len(events)} event(s); expected c1..c3 and {len(ORDERS)}\n{log[-3000:]}"
        )
    ran = "compiled" if "mapping: compiled" in log else "interpreted"
    if expect and ran != expect:
        raise SystemExit(f"smoke: the target ran {ran}, expected {expect}")
    print(f"smoke: ok ({len(people)} people, {len(events)} event, mapping {ran})")
    return 0


def _get(url: str, what: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/_sandbox/{what}", timeout=10) as response:
        return json.load(response)


def _wait_for(url: str, sandbox: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sandbox.poll() is not None:
            raise SystemExit(f"smoke: the sandbox exited {sandbox.returncode} before answering")
        try:
            _get(url, "people")
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("smoke: the sandbox did not answer within 30 s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    if check and run.returncode != 0:
        raise SystemExit(
            f"smoke: {' '.join(command)} exited {run.returncode}\n{run.stderr[-3000:]}"
        )
    return run


if __name__ == "__main__":
    sys.exit(main())
