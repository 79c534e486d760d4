"""Build hook: compile the modules every record passes through with mypyc, into the wheel only.

The same source, compiled to C through its type annotations: about a fifth fewer instructions a
record. Two forms of the one package:

- Plain Python while developing: an editable install (`pip install -e .`, `make setup`) never
  compiles, whatever the environment says, and no build writes anything into the checkout. An
  edited source is what runs, at once.
- Compiled in wheels, when asked: with TARGET_CUSTOMERIO_COMPILE=1 a wheel build (cibuildwheel's
  release wheels, `make test`'s second run, `make bench`) compiles a copy of the package in a
  temporary directory and puts the compiled modules into the wheel beside their sources (the
  wheel is then platform-tagged, e.g. cp311-cp311-linux_x86_64), with `_mypyc_build.json`: each
  compiled module's name and the SHA-256 of the source it was compiled from (tests/test_build.py
  compares them with the checkout). Without TARGET_CUSTOMERIO_COMPILE=1 the wheel is pure Python
  (py3-none-any). Where it cannot compile (no C compiler or Python headers) the build warns and
  the wheel is pure Python: the same code, slower. The target logs which one runs
  (`mapping: compiled` or `mapping: interpreted`).

Which modules are compiled: the hook's `include` in pyproject.toml (gitignore-style patterns, as
hatch-mypyc matches them; a directory names every module under it).

hatch-mypyc compiles in the working directory (`setup.py build_ext --inplace`) and renames the
project's pyproject.toml while it does (so that setuptools does not read its [project] table): in
the checkout an interrupted build would leave compiled modules beside the sources and no
pyproject.toml. Here it runs in a copy of the package instead, where there is nothing to hide, and
the wheel takes the compiled modules from the copy, which `finalize` removes.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hatch_mypyc.plugin import MypycBuildHook

PACKAGE = "target_customerio"
MANIFEST = f"{PACKAGE}/_mypyc_build.json"  # in the compiled wheel only
COMPILED_SUFFIXES = (".so", ".pyd")


class CompileHook(MypycBuildHook):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._copy: str | None = None
        if version == "editable" or self.target_name != "wheel":
            return  # development runs the sources: nothing compiled, whatever the environment
        if os.environ.get("TARGET_CUSTOMERIO_COMPILE") != "1":
            return  # the pure-Python wheel (py3-none-any)
        try:
            self._compile_a_copy(version, build_data)
        except Exception as exc:  # noqa: BLE001 - any compile failure leaves the plain-Python wheel
            self._remove_copy()
            self.app.display_warning(
                "target-customerio: not compiled, the wheel is plain Python "
                f"({str(exc).strip()[:300]})"
            )

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        self._remove_copy()  # the wheel holds the compiled modules now

    def _compile_a_copy(self, version: str, build_data: dict[str, Any]) -> None:
        """Runs hatch-mypyc in a copy of the package; the wheel takes the compiled modules (and
        the manifest) from there. Nothing is written into the checkout."""
        self._copy = copy = tempfile.mkdtemp(prefix="target-customerio-mypyc-")
        atexit.register(shutil.rmtree, copy, True)  # should the build stop before finalize
        root = Path(self.root)
        shutil.copytree(
            root / PACKAGE,
            Path(copy) / PACKAGE,
            ignore=shutil.ignore_patterns(*(f"*{s}" for s in COMPILED_SUFFIXES), "__pycache__"),
        )
        sources = list(self.normalized_included_files)
        if not sources:
            raise RuntimeError("the build hook's `include` in pyproject.toml matches no module")
        manifest = {
            "python": sys.implementation.cache_tag,
            "modules": {
                _module_name(source): {
                    "source": source,
                    "sha256": hashlib.sha256((Path(copy) / source).read_bytes()).hexdigest(),
                }
                for source in sources
            },
        }
        scratch: dict[str, Any] = {"artifacts": [], "force_include": {}}
        with _working_directory(copy):
            super().initialize(version, scratch)  # compiles in the copy (cwd)
        built = sorted(p for s in COMPILED_SUFFIXES for p in Path(copy).rglob(f"*{s}"))
        missing = [s for s in sources if not any(_compiled_from(p, copy, s) for p in built)]
        if missing:
            raise RuntimeError(f"mypyc built no module for {', '.join(missing)}")
        (Path(copy) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in [*built, Path(copy) / MANIFEST]:
            build_data["force_include"][str(path)] = path.relative_to(copy).as_posix()
        # A platform wheel (hatch-mypyc sets these; its artifact patterns would pick up files in
        # the checkout, so they are not taken).
        build_data["pure_python"] = scratch.get("pure_python", False)
        build_data["infer_tag"] = scratch.get("infer_tag", True)

    def clean(self, versions: list[str]) -> None:
        """Nothing is ever built in the checkout, so nothing there to clean (hatch-mypyc's clean
        would delete files in the project; `make setup` removes an old checkout's leftovers)."""

    @contextmanager
    def hide_project_file(self) -> Iterator[None]:
        """Nothing to hide: the copy being compiled has no pyproject.toml."""
        yield

    def _remove_copy(self) -> None:
        copy, self._copy = getattr(self, "_copy", None), None
        if copy:
            shutil.rmtree(copy, ignore_errors=True)


def _module_name(source: str) -> str:
    return ".".join(Path(source).with_suffix("").parts).removesuffix(".__init__")


def _compiled_from(path: Path, copy: str, source: str) -> bool:
    """Whether `path` (e.g. target_customerio/mapping.cpython-311-x86_64-linux-gnu.so) is the
    compiled module of `source` (target_customerio/mapping.py)."""
    relative = path.relative_to(copy).as_posix()
    return relative.startswith(source.removesuffix(".py") + ".")


@contextmanager
def _working_directory(path: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def get_build_hook() -> type[CompileHook]:
    return CompileHook  # hatchling's choice when a module holds several hook classes
