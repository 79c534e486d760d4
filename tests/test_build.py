"""The modules every record passes through run compiled (mypyc, hatch_build.py), from their
current source, and the same tests pass when they run interpreted (no C compiler at install)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from target_customerio.mapping import compiled

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
HOOK = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
SOURCES = [ROOT / pattern.lstrip("/") for pattern in HOOK["include"]]
INTERPRETED = bool(os.environ.get("TARGET_CUSTOMERIO_INTERPRETED"))
# The mapping tests, unit-level: they import the modules in the test process.
MAPPING_TESTS = ["tests/test_mapping.py", "tests/test_fast_paths.py", "tests/test_packing.py", "tests/test_routes.py"]


def _module(source: Path):
    return importlib.import_module(".".join(source.relative_to(ROOT).with_suffix("").parts))


@pytest.mark.skipif(INTERPRETED or bool(os.environ.get("TARGET_CUSTOMERIO_PURE_PYTHON")), reason="runs interpreted")
def test_the_mapping_modules_run_compiled_from_their_current_source():
    assert compiled()
    for source in SOURCES:
        module_file = Path(_module(source).__file__ or "")
        assert module_file.suffix == ".so", f"{source.name} is not compiled: reinstall (make setup) and read the build's warning"
        built = [path.stat().st_mtime for path in source.parent.glob(f"{source.stem}.*.so")]
        assert built and min(built) >= source.stat().st_mtime, f"{source.name} changed after it was compiled: run make setup"


@pytest.mark.skipif(not INTERPRETED, reason="the interpreted run below")
def test_interpreted_runs_the_sources():
    assert not compiled()
    assert all(_module(source).__file__ == str(source) for source in SOURCES)


@pytest.mark.skipif(INTERPRETED, reason="already interpreted")
def test_the_mapping_tests_pass_interpreted_too():
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_build.py", *MAPPING_TESTS],
        cwd=ROOT, env={**os.environ, "TARGET_CUSTOMERIO_INTERPRETED": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
