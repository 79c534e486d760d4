"""`mapping_workers` unset: chosen for the CPUs the target may use and for what feeds it.

From a pipe a tap runs beside the target (`tap | target`, every `meltano run`) and needs a CPU,
and the target's reading thread needs one: the mapping processes get what is left. From a file
the target has the CPUs to itself. Checked through the real process, its CPUs limited as a
container's cpuset limits them, and the line it logs at start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import API_KEY, SITE_ID, TARGET, record, schema

STREAM = "public-customers"
ROUTES = {STREAM: {"kind": "person", "identifier": {"field": "id", "type": "id"}}}
LINES = [
    schema(STREAM, {"id": {"type": "integer"}, "plan": {"type": "string"}}, ["id"]),
    *(record(STREAM, {"id": i, "plan": "gold"}) for i in range(1, 6)),
]
CPUS = sorted(os.sched_getaffinity(0))


def start_up_line(tmp: Path, url: str, *, cpus: int, from_file: bool, **settings: object) -> str:
    """The target's `mapping:` log line, run on `cpus` CPUs and fed by a pipe or a file."""
    config = tmp / "config.json"
    config.write_text(
        json.dumps(
            {"site_id": SITE_ID, "api_key": API_KEY, "track_api_url": url, "streams": ROUTES}
            | {"ledger_path": str(tmp / "ledger.sqlite"), **settings}
        )
    )
    data = "".join(json.dumps(line) + "\n" for line in LINES)
    feed = tmp / "input.jsonl"
    feed.write_text(data)
    with feed.open("rb") as file_in:
        proc = subprocess.run(
            [TARGET, "--config", str(config)],
            stdin=file_in if from_file else None,
            input=None if from_file else data.encode(),
            capture_output=True,
            cwd=tmp,
            timeout=120,
            check=False,
            preexec_fn=lambda: os.sched_setaffinity(0, CPUS[:cpus]),
        )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [x for x in proc.stderr.decode().splitlines() if "mapping: " in x]
    assert len(lines) == 1, proc.stderr.decode()
    return lines[0]


def expected(cpus: int, *, from_file: bool) -> str:
    workers = min(4, cpus if from_file else max(0, cpus - 2))
    return f"{workers} worker process(es)" if workers else "in the reading thread"


# as many CPUs as a runner may have, up to what this machine lets the tests use
@pytest.mark.parametrize("cpus", [n for n in (1, 2, 3, 6) if n <= len(CPUS)])
@pytest.mark.parametrize("from_file", [False, True], ids=["pipe", "file"])
def test_unset_mapping_workers_leave_a_tap_its_cpu(
    sandbox, tmp_path: Path, cpus: int, from_file: bool
) -> None:
    line = start_up_line(tmp_path, sandbox.url, cpus=cpus, from_file=from_file)
    assert line.endswith(expected(cpus, from_file=from_file)), line
    assert len(sandbox.people()) == 5


def test_mapping_workers_set_is_obeyed_whatever_feeds_it(sandbox, tmp_path: Path) -> None:
    line = start_up_line(tmp_path, sandbox.url, cpus=1, from_file=False, mapping_workers=2)
    assert line.endswith("2 worker process(es)"), line
    line = start_up_line(tmp_path, sandbox.url, cpus=1, from_file=True, mapping_workers=0)
    assert line.endswith("in the reading thread"), line
