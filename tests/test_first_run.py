"""What a new user sees on a first run: the sandbox says which credentials it accepts (at start
and in --help), a dry run ends without a ResourceWarning, the `mapping:` line explains itself,
and the LICENSE is the one pyproject declares."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import record, run_target, schema, state, target_config

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = str(Path(sys.executable).with_name("target-customerio-sandbox"))
CREDENTIALS = ("sandbox-site", "sandbox-key", "sandbox-app-key")
PERSON = {"public-c": {"kind": "person", "identifier": {"field": "id", "type": "id"}}}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TARGET_CUSTOMERIO_")}


def test_the_sandbox_help_names_the_credentials_it_accepts():
    out = subprocess.run(
        [SANDBOX, "--help"], capture_output=True, text=True, env=_clean_env(), check=True
    ).stdout
    for name, value in zip(("site_id", "api_key", "app_api_key"), CREDENTIALS, strict=True):
        assert re.search(rf"^\s+{name}\s+{value}$", out, re.MULTILINE), out


def test_the_sandbox_prints_its_credentials_at_start_but_never_a_key_it_was_given(tmp_path):
    def first_lines(env: dict[str, str]) -> str:
        proc = subprocess.Popen(
            [SANDBOX, "--port", "0", "--db", ":memory:"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        try:
            assert proc.stderr is not None
            return proc.stderr.readline() + proc.stderr.readline()
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    started = first_lines(_clean_env())
    assert "site_id sandbox-site, api_key sandbox-key, app_api_key sandbox-app-key" in started
    given = first_lines({**_clean_env(), "TARGET_CUSTOMERIO_API_KEY": "sk_live_real_key_123"})
    assert "sk_live_real_key_123" not in given and "api_key (as given, not shown)" in given


def test_a_dry_run_ends_without_a_resource_warning_and_says_how_it_maps(tmp_path):
    config = target_config("http://127.0.0.1:9", tmp_path, PERSON, dry_run=True)
    messages = [schema("public-c", {"id": {}}), record("public-c", {"id": "1"}), state({"a": 1})]
    for workers in (0, 2):
        config["mapping_workers"] = workers
        run = run_target(config, messages, tmp_path, env={"PYTHONWARNINGS": "default"})
        assert run.returncode == 0, run.stderr
        assert "Warning" not in run.stderr.replace("WARNING", ""), run.stderr
    [line] = [line for line in run.stderr.splitlines() if "mapping: " in line]
    assert "mapping: compiled" in line or (
        "mapping: interpreted (plain Python, as expected from a source install; the compiled "
        "wheel maps about a fifth faster: docs/performance.md)" in line
    )
    assert "slower" not in line


def test_the_license_is_the_apache_2_0_text_pyproject_declares():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert (
        "/LICENSE"
        in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
            "targets"
        ]["sdist"]["include"]
    )
