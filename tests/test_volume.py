"""`max_volume_change`: a stream whose volume leaves its recent range fails the run (exit 7),
after its records are delivered and its STATE written; the report shows the history."""

from __future__ import annotations

from tests.harness import record, run_target, schema, state, target_config

P = "public-customers"
ROUTE = {"kind": "person", "identifier": {"field": "id", "type": "id"}, "max_volume_change": 0.5}


def rows(count: int, night: int) -> list[dict]:
    return [
        schema(P, {"id": {"type": "string"}, "night": {"type": "integer"}}),
        *[record(P, {"id": f"C{i}", "night": night}) for i in range(count)],
        state({"night": night}),
    ]


def test_a_stream_that_shrinks_past_its_range_fails_after_delivery(sandbox, tmp_path):
    config = target_config(
        sandbox.url, tmp_path, {P: ROUTE}, ledger_path=str(tmp_path / "ledger.sqlite")
    )
    for night, count in enumerate([100, 110, 90]):  # the history: no check until 3 completed runs
        run = run_target(config, rows(count, night), tmp_path)
        assert run.returncode == 0, run.stderr
        assert (
            run.report["volume"][P]["ok"] is True
            and "not checked" in run.report["volume"][P]["reason"]
        )
    run = run_target(config, rows(120, 3), tmp_path)  # within 50% of the median (100)
    assert run.returncode == 0, run.stderr
    assert run.report["volume"][P]["median"] == 100 and run.report["volume"][P]["ok"] is True

    run = run_target(config, rows(30, 4), tmp_path)  # a broken join: 30 rows
    assert run.returncode == 7, run.stderr
    assert run.states == [{"night": 4}]  # what came was delivered, and its STATE kept
    check = run.report["volume"][P]
    assert (
        check["ok"] is False
        and check["median"] == 105
        and [r["received"] for r in check["history"]] == [100, 110, 90, 120]
    )
    assert "received 30 records, 71% away from the median 105 of the last 4 runs" in run.stderr
    assert sum(1 for p in sandbox.people() if p["attributes"].get("night") == 4) == 30


def test_without_the_ledger_the_check_is_skipped_with_a_warning(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, {P: ROUTE}, change_detection=False)
    run = run_target(config, rows(5, 0), tmp_path)
    assert run.returncode == 0, run.stderr
    assert "max_volume_change needs change_detection" in run.stderr
