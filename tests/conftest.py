from __future__ import annotations

import os
import sys
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader
from pathlib import Path

PACKAGE_DIR = os.path.realpath(Path(__file__).resolve().parent.parent / "target_customerio")


def _from_source(path: str) -> FileFinder:
    """A finder for the package's directory that sees only .py files, not the compiled modules."""
    if os.path.realpath(path) != PACKAGE_DIR:
        raise ImportError  # any other directory: the usual finders
    return FileFinder(path, (SourceFileLoader, SOURCE_SUFFIXES))


# TARGET_CUSTOMERIO_INTERPRETED=1: this test process imports the package's sources, not its
# compiled modules (tests/test_build.py runs the mapping tests that way too).
if os.environ.get("TARGET_CUSTOMERIO_INTERPRETED"):
    assert "target_customerio.mapping" not in sys.modules
    sys.path_hooks.insert(0, _from_source)
    sys.path_importer_cache.clear()

import pytest  # noqa: E402

from target_customerio.sandbox import Sandbox  # noqa: E402
from tests.harness import API_KEY, SITE_ID  # noqa: E402


@pytest.fixture
def sandbox():
    """A fresh local Track API workspace on 127.0.0.1 for each test."""
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:") as sb:
        yield sb
