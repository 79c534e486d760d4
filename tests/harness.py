"""Run the real target-customerio process on a Singer stream, the way Meltano does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET = str(Path(sys.executable).with_name("target-customerio"))
# Longer property runs: `LONG_PROPERTIES=1`. Its old name, TARGET_CUSTOMERIO_LONG_PROPERTIES, is
# still read for one release (so no CI that sets it silently runs short ones), and taken out of the
# environment: the target takes a TARGET_CUSTOMERIO_ variable for a misspelt setting.
_OLD_LONG_PROPERTIES = os.environ.pop("TARGET_CUSTOMERIO_LONG_PROPERTIES", None)
LONG_PROPERTIES = bool(os.environ.get("LONG_PROPERTIES") or _OLD_LONG_PROPERTIES)
SITE_ID, API_KEY = "test-site", "sk_test_5ecret_never_logged"


def schema(stream: str, properties: dict[str, Any], key: list[str] | None = None) -> dict:
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {"type": "object", "properties": properties},
        "key_properties": key or [],
    }


def record(stream: str, row: dict[str, Any]) -> dict:
    return {"type": "RECORD", "stream": stream, "record": row}


def state(value: dict[str, Any]) -> dict:
    return {"type": "STATE", "value": value}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def states(self) -> list[dict[str, Any]]:
        """Every stdout line must be a STATE value (that is all Meltano reads there)."""
        return [json.loads(line) for line in self.stdout.split("\n") if line.strip()]


def target_config(
    sandbox_url: str, tmp: Path, streams: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {
        "site_id": SITE_ID,
        "api_key": API_KEY,
        "track_api_url": sandbox_url,
        "streams": streams,
        "reject_file": str(tmp / "rejects.jsonl"),
        "report_file": str(tmp / "report.json"),
        **extra,
    }


def run_target(
    config: dict[str, Any],
    messages: Iterable[dict | str],
    tmp: Path,
    *,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> Run:
    """Pipe messages (dicts, or raw lines) through the target process and collect what it leaves."""
    config_path = tmp / "config.json"
    config_path.write_text(json.dumps(config))
    lines = "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages)
    data = lines.encode(errors="surrogateescape")  # lets a test pass raw bytes such as bad UTF-8
    proc = subprocess.run(
        [TARGET, "--config", str(config_path)],
        input=data,
        capture_output=True,
        timeout=timeout,
        cwd=tmp,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return collect(
        proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace"), config
    )


# JSONL is split on "\n" only: a record may hold U+0085 or U+2028, where str.splitlines splits too.
def collect(returncode: int, stdout: str, stderr: str, config: dict[str, Any]) -> Run:
    report_path = Path(config["report_file"]) if config.get("report_file") else None
    reject_path = Path(config["reject_file"]) if config.get("reject_file") else None
    report = (
        json.loads(report_path.read_text())
        if report_path and report_path.is_file() and report_path.stat().st_size
        else None
    )
    rejects = (
        [json.loads(x) for x in reject_path.read_text(encoding="utf-8").split("\n") if x]
        if reject_path and reject_path.is_file()
        else []
    )
    return Run(returncode, stdout, stderr, report, rejects)


def start_target(
    config: dict[str, Any], tmp: Path, *, stderr: Any = subprocess.PIPE
) -> subprocess.Popen:
    """The target process with its config written, stdin and stdout piped, not yet fed."""
    config_path = tmp / "config.json"
    config_path.write_text(json.dumps(config))
    return subprocess.Popen(
        [TARGET, "--config", str(config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=tmp,
    )


def feed(proc: subprocess.Popen, messages: Iterable[dict], *, close: bool = True) -> None:
    """Write messages to a started target's stdin, then close it (the tap ended) or leave it
    open (the tap is still reading). A target that stopped reading is not the test's error."""
    assert proc.stdin is not None
    try:
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages).encode())
        if close:
            proc.stdin.close()
        else:
            proc.stdin.flush()
    except BrokenPipeError:
        pass


def stop_target(
    proc: subprocess.Popen, signum: int, config: dict[str, Any], *, timeout: float = 120
) -> Run:
    """Send `signum` to a started target, wait for its end and collect what it left (`config`
    names its report and reject files; `{}` reads neither)."""
    proc.send_signal(signum)
    if proc.stdin is not None and proc.stdin.closed:
        proc.stdin = None  # fed and closed: communicate() would flush it
    stdout, stderr = proc.communicate(timeout=timeout)
    return collect(proc.returncode, stdout.decode(), stderr.decode(errors="replace"), config)


def writes(sandbox: Any) -> list[dict[str, Any]]:
    """The requests that changed the workspace: all but the start-up credential check (a GET)."""
    return [request for request in sandbox.requests() if request["method"] != "GET"]
