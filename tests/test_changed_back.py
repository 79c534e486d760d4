"""A row that changes and changes back within one run (run_sent.py): `unchanged` means equal to
what Customer.io last confirmed, and a key sent earlier in the run is never compared with the
fingerprint from before it. Through the real target process and the sandbox: a first run puts
each key's first value in the ledger; the second run's records repeat keys with changing values
(A -> B -> A among them), far apart (across chunks of 500, so across mapping processes) or close
together; after it, Customer.io holds each key's LAST value."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, example, given, settings

from target_customerio.sandbox import Sandbox
from tests.harness import API_KEY, SITE_ID, record, run_target, schema, state, target_config
from tests.harness import LONG_PROPERTIES as LONG

C = "public-customers"
ROUTES = {C: {"kind": "person", "identifier": {"field": "id", "type": "id"}}}
SCHEMA = schema(C, {"id": {"type": "string"}, "plan": {"type": "string"}})
KEYS = ["K0", "K1", "K2"]
PLANS = st.sampled_from(["a", "b"])
# (key, value, filler rows after it): filler rows of other people push the next change of a
# key into a later chunk (CHUNK = 500), so into another mapping process
STEPS = st.lists(
    st.tuples(st.sampled_from(KEYS), PLANS, st.sampled_from([0, 1, 300, 501])),
    min_size=1,
    max_size=8,
)


def _run(config: dict, rows: list[tuple[str, str]], tmp: Path, night: int) -> None:
    messages = [SCHEMA, *(record(C, {"id": i, "plan": p}) for i, p in rows), state({"n": night})]
    run = run_target(config, messages, tmp, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("workers", [0, 2])
@settings(
    max_examples=25 if LONG else 6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# B in one chunk, A (what the ledger holds) in the next: another mapping process looks it up
@example(first=["a", "a", "a"], steps=[("K0", "b", 501), ("K0", "a", 0)])
@given(first=st.lists(PLANS, min_size=len(KEYS), max_size=len(KEYS)), steps=STEPS)
def test_each_key_ends_with_its_last_value(workers: int, first: list[str], steps) -> None:
    sandbox = Sandbox(site_id=SITE_ID, api_key=API_KEY).start()
    try:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            config = target_config(sandbox.url, tmp, ROUTES, mapping_workers=workers)
            _run(config, list(zip(KEYS, first, strict=True)), tmp, 1)
            rows: list[tuple[str, str]] = []
            for key, plan, filler in steps:
                rows.append((key, plan))
                rows += [(f"F{len(rows)}-{n}", "f") for n in range(filler)]
            _run(config, rows, tmp, 2)
            last = dict(zip(KEYS, first, strict=True))
            last.update({key: plan for key, plan, _ in steps})
            held = {p["id"]: p["attributes"].get("plan") for p in sandbox.people()}
            assert {key: held.get(key) for key in KEYS} == last
    finally:
        sandbox.stop()
