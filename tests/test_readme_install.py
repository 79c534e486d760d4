"""The README's install section, followed as a newcomer would: a new Meltano project.

The blocks of README.md marked `<!-- docs-test: run by tests/test_readme_install.py -->` run in
order, as written, with bash: `meltano init`, the loader added from its Meltano Hub definition
and tap-postgres and tap-mssql from their lock files (nothing asks Meltano Hub), the target
installed from this checkout (`CLONE`), tap-postgres pointed at an embedded PostgreSQL holding
the sample shop (its `customers` and `orders` tables stand for the reader's own), the routes,
and then the dry run through `TARGET_CUSTOMERIO_DRY_RUN=true`. The variables the README reads
(`CLONE`, `PG*`, `CUSTOMERIO_*`) come from the test, and `TARGET_CUSTOMERIO_TRACK_API_URL`
points the target at a sandbox workspace, as the README suggests for a first try.

The dry run must send nothing (the sandbox gets no write) and save no bookmark (a dry run emits
no STATE, so Meltano keeps none); the real run that the README runs next sends the people and
events and saves the bookmark, which shows the dry run's silence is the setting's doing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import writes
from tests.markdown_docs import REPO, blocks, run_shell
from tests.pg_fixtures import postgres as postgres  # noqa: PLC0414  (fixture; `as` avoids F811)

MARKER = "run by tests/test_readme_install.py"
MELTANO = REPO / ".venv-meltano" / "bin" / "meltano"
PROJECT = "my-retention"  # the directory the README's `meltano init` makes
STATE_ID = "dev:tap-postgres-to-target-customerio"
STEP_TIMEOUT_S = 300


def readme_steps() -> list[str]:
    steps = [block.text for block in blocks(REPO / "README.md") if block.marker == MARKER]
    assert steps, f"README.md has no block marked `<!-- docs-test: {MARKER} -->`"
    return steps


def run_step(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_shell(script, cwd=cwd, env=env, timeout=STEP_TIMEOUT_S, what="README step")


def newcomer_env(postgres, sandbox, home: Path) -> dict[str, str]:
    """A shell with Meltano on the PATH and nothing of this project's own settings in it."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MELTANO_", "TAP_", "TARGET_CUSTOMERIO", "PG", "VIRTUAL_ENV"))
    }
    config = postgres.tap_config()
    env.update(
        {
            "PATH": f"{MELTANO.parent}{os.pathsep}{env.get('PATH', '')}",
            "HOME": str(home),
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "CLONE": str(REPO),
            "PGHOST": str(config["host"]),
            "PGPORT": str(config["port"]),
            "PGUSER": str(config["user"]),
            "PGPASSWORD": str(config["password"]),
            "PGDATABASE": str(config["database"]),
            "CUSTOMERIO_SITE_ID": sandbox.site_id,
            "CUSTOMERIO_API_KEY": sandbox.api_key,
            "TARGET_CUSTOMERIO_TRACK_API_URL": sandbox.url,
        }
    )
    return env


def saved_states(project: Path, env: dict[str, str]) -> list[str]:
    proc = run_step("meltano state list", project, env)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def test_the_readme_install_section_in_a_new_project(postgres, sandbox, tmp_path):
    if not MELTANO.exists():
        pytest.fail(f"{MELTANO} is missing: `make meltano-install` installs Meltano 4.4.1 there")
    *setup, runs = readme_steps()
    dry_run, real_run = [line for line in runs.splitlines() if line.strip()]
    assert dry_run.startswith("TARGET_CUSTOMERIO_DRY_RUN=true meltano run"), dry_run
    env = newcomer_env(postgres, sandbox, tmp_path / "home")
    (tmp_path / "home").mkdir()

    run_step(setup[0], tmp_path, env)  # meltano init …, and the plugins
    project = tmp_path / PROJECT
    for step in setup[1:]:
        run_step(step, project, env)
    for plugin in ("extractors/tap-postgres", "extractors/tap-mssql", "loaders/target-customerio"):
        executable = project / ".meltano" / plugin / "venv" / "bin" / plugin.split("/")[1]
        assert executable.exists(), f"the README's install section did not install {plugin}"

    run_step(dry_run, project, env)
    assert writes(sandbox) == [], "the dry run sent something"
    assert sandbox.people() == [] and sandbox.events() == []
    assert STATE_ID not in saved_states(project, env), "the dry run saved a bookmark"
    operations = (project / "customerio-dry-run.jsonl").read_text().splitlines()
    assert len(operations) > 100, "the dry run mapped nothing"

    run_step(real_run, project, env)
    assert len(sandbox.people()) == 200 and sandbox.events(), "the real run sent nothing"
    assert STATE_ID in saved_states(project, env), "the real run saved no bookmark"
