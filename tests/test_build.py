"""Both forms of the package (hatch_build.py; docs/development.md). `make test` runs the suite on
the checkout's sources (plain Python, `.venv`), then on the compiled wheel installed in
`.venv-compiled` (TEST_TARGET_CUSTOMERIO_INSTALLED=1, tests/conftest.py). Which modules are
compiled is the build hook's `include` in pyproject.toml: everything here is derived from it.

How "compiled from the current sources" is checked: the compiled wheel carries
`target_customerio/_mypyc_build.json` (written by hatch_build.py at build time), the name of each
module it compiled and the SHA-256 of the source it compiled; the checkout's sources must hash the
same."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pathspec
import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "target_customerio"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HOOK = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
MANIFEST = "_mypyc_build.json"  # hatch_build.py's MANIFEST, in the package of a compiled wheel
INSTALLED = os.environ.get("TEST_TARGET_CUSTOMERIO_INSTALLED") == "1"
COMPILED_SUFFIXES = (".so", ".pyd")


def _spec(patterns: list[str]) -> pathspec.PathSpec:
    """The patterns read as hatch-mypyc reads them (pathspec's gitwildmatch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pathspec 1.x renamed it
        return pathspec.PathSpec.from_lines(pathspec.patterns.GitWildMatchPattern, patterns)


def package_sources() -> list[str]:
    return sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / PACKAGE).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def compiled_sources() -> list[str]:
    """The checkout's modules the build hook compiles (hatch-mypyc: `include` less `exclude`)."""
    include, exclude = _spec(HOOK["include"]), _spec(HOOK.get("exclude", []))
    return [s for s in package_sources() if include.match_file(s) and not exclude.match_file(s)]


def module_name(source: str) -> str:
    return ".".join(Path(source).with_suffix("").parts).removesuffix(".__init__")


def _venv_imports(code: str, tmp_path: Path) -> str:
    """What the environment running the tests (whose console script the target processes are)
    imports, outside pytest and outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.strip()


def test_every_include_pattern_names_a_module():
    """A pattern that matches nothing (a module renamed or moved) leaves that code interpreted."""
    sources = package_sources()
    for pattern in HOOK["include"]:
        assert any(_spec([pattern]).match_file(s) for s in sources), (
            f"the build hook's include pattern {pattern!r} (pyproject.toml) matches no module"
        )
    assert compiled_sources()
    assert Path(sys.executable).with_name("target-customerio").exists()


@pytest.mark.skipif(INSTALLED, reason="the plain-Python run (make test-plain)")
def test_plain_python_runs_the_checkouts_sources(tmp_path):
    leftovers = [p for s in COMPILED_SUFFIXES for p in (ROOT / PACKAGE).rglob(f"*{s}")]
    assert not leftovers, (
        f"compiled modules in the checkout would shadow their sources: {leftovers}"
    )
    for source in compiled_sources():
        assert importlib.import_module(module_name(source)).__file__ == str(ROOT / source)
    # The target processes the tests start: the editable install of this checkout.
    modules = [module_name(s) for s in compiled_sources()]
    files = _venv_imports(
        f"import importlib; print(*(importlib.import_module(m).__file__ for m in {modules!r}))",
        tmp_path,
    ).split()
    assert files == [str(ROOT / s) for s in compiled_sources()], (
        f"{sys.executable} does not run the checkout's sources (make setup installs it editable)"
    )


@pytest.mark.skipif(not INSTALLED, reason="the compiled run (make test-compiled)")
def test_the_installed_modules_are_compiled_from_the_current_sources(tmp_path):
    package_dir = Path(importlib.import_module(PACKAGE).__file__ or "").parent
    assert package_dir != ROOT / PACKAGE
    manifest_file = package_dir / MANIFEST
    assert manifest_file.is_file(), (
        f"the installed package ({package_dir}) is not compiled: its wheel was built without "
        "TARGET_CUSTOMERIO_COMPILE=1, or could not compile (read the build's warning)"
    )
    manifest = json.loads(manifest_file.read_text())["modules"]
    expected = compiled_sources()
    assert sorted(entry["source"] for entry in manifest.values()) == expected, (
        "the wheel compiled other modules than the build hook's include names: rebuild it "
        "(make test-compiled)"
    )
    for name, entry in manifest.items():
        assert name == module_name(entry["source"])
        current = hashlib.sha256((ROOT / entry["source"]).read_bytes()).hexdigest()
        assert entry["sha256"] == current, (
            f"{entry['source']} changed since the wheel was compiled (make test-compiled rebuilds)"
        )
        module_file = Path(importlib.import_module(name).__file__ or "")
        assert module_file.name.endswith(tuple(EXTENSION_SUFFIXES)), f"{name} runs {module_file}"
        assert module_file.resolve().is_relative_to(package_dir.resolve()), module_file
    # The target processes the tests start: the same installed, compiled modules.
    files = _venv_imports(
        "import importlib; print(*(importlib.import_module(m).__file__ for m in "
        f"{sorted(manifest)!r}))",
        tmp_path,
    ).split()
    assert files == [importlib.import_module(m).__file__ for m in sorted(manifest)]
