"""Which form of the package the tests run (docs/development.md; tests/test_build.py checks it):

- by default (`make test-plain`, `.venv`): the checkout's sources, plain Python, in this process
  and in the target processes the tests start (`.venv`'s console script, an editable install);
- with TEST_TARGET_CUSTOMERIO_INSTALLED=1 (`make test-compiled`, `.venv-compiled`): the package
  installed in the environment running pytest (there, the compiled wheel), in this process too,
  not the checkout's sources that pytest's `pythonpath = ["."]` puts first on sys.path. The
  variable has no TARGET_CUSTOMERIO_ prefix: the target would take one for a misspelt setting.
"""

from __future__ import annotations

import os
import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "target_customerio"
INSTALLED = os.environ.get("TEST_TARGET_CUSTOMERIO_INSTALLED") == "1"


class _InstalledPackage(MetaPathFinder):
    """Finds the package on sys.path without the checkout: the installed one."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name != PACKAGE:
            return None  # its submodules follow the package's __path__
        elsewhere = [entry for entry in sys.path if Path(entry or os.curdir).resolve() != ROOT]
        return PathFinder.find_spec(name, elsewhere)


if INSTALLED:
    assert PACKAGE not in sys.modules, f"{PACKAGE} was imported before tests/conftest.py"
    sys.meta_path.insert(0, _InstalledPackage())

import pytest  # noqa: E402

import target_customerio  # noqa: E402
from target_customerio.sandbox import Sandbox  # noqa: E402
from tests.harness import API_KEY, SITE_ID  # noqa: E402

PACKAGE_DIR = Path(target_customerio.__file__).resolve().parent
if INSTALLED:
    assert PACKAGE_DIR != ROOT / PACKAGE, (
        f"TEST_TARGET_CUSTOMERIO_INSTALLED=1, but {sys.executable} has no {PACKAGE} installed "
        "other than the checkout's (make test-compiled installs the compiled wheel)"
    )
else:
    assert PACKAGE_DIR == ROOT / PACKAGE, (
        f"the tests import {PACKAGE} from {PACKAGE_DIR}, not from the checkout {ROOT} "
        "(TEST_TARGET_CUSTOMERIO_INSTALLED=1 tests an installed package)"
    )


@pytest.fixture
def sandbox():
    """A fresh local Track API workspace on 127.0.0.1 for each test."""
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:") as sb:
        yield sb
