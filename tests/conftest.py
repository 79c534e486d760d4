from __future__ import annotations

import pytest

from target_customerio.sandbox import Sandbox
from tests.harness import API_KEY, SITE_ID


@pytest.fixture
def sandbox():
    """A fresh local Track API workspace on 127.0.0.1 for each test."""
    with Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:") as sb:
        yield sb
