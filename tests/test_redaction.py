"""Secrets and the user's data (target_customerio/redaction.py), as properties.

A configured secret never appears in anything the target writes: stderr, stdout, the reject,
report and dry-run files. A rejected record reaches the reject file as it came, unless a value
holds a secret: only the secrets of the configuration are masked in it, never a shape such as
`mailto:a@b` or `password=...` (the record is the user's own data, to be fixed and sent again).
The shapes still mask what the target writes about its settings and errors.

The secrets' alphabet leaves out `*`, the mask's own character: a secret that starts or ends
with it can be formed again by a mask and the text beside it (`*abc` in `**abcabc`).
"""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_customerio import report as report_module
from target_customerio.redaction import MASK, Redactor
from target_customerio.report import RunReport
from tests.harness import LONG_PROPERTIES, record, run_target, schema

STREAM = "public-customers"
ROUTES = {STREAM: {"kind": "person", "identifier": {"field": "id", "type": "id"}}}
SCHEMA = schema(
    STREAM, {"id": {"type": ["string", "null"]}, "note": {}, "link": {}, "n": {"type": "integer"}}
)
QUIET = logging.getLogger("test_redaction")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False

SECRET = st.text(
    alphabet=string.ascii_letters + string.digits + "!\"#$%&'()+,-./:;<=>?@[\\]^_`{|}~",
    min_size=8,
    max_size=24,
)
WORD = st.text(alphabet=string.ascii_letters + string.digits + ".-_", min_size=1, max_size=8)
# What the shapes of redaction.py match, as a user's data can hold it.
SHAPED = st.one_of(
    st.builds("mailto:{}@{}".format, WORD, WORD),
    st.builds("{}:{}@{}".format, WORD, WORD, WORD),
    st.builds("https://{}:{}@{}/x".format, WORD, WORD, WORD),
    st.builds("password={}".format, WORD),
    st.builds("{{'api_key': '{}'}}".format, WORD),
    st.builds("Authorization: Basic {}".format, WORD),
)


def values(secrets: list[str]) -> st.SearchStrategy[Any]:
    """A record's value: plain text, a shape the redaction masks in messages, a secret inside
    text, a number, or nothing."""
    holding = st.builds(
        "{}{}{}".format, st.text(max_size=5), st.sampled_from(secrets), st.text(max_size=5)
    )
    return st.one_of(st.text(max_size=30), SHAPED, holding, st.integers(), st.none())


def holds(value: Any, secrets: list[str]) -> bool:
    text = value if isinstance(value, str) else json.dumps(value)
    return any(secret in text for secret in secrets)


def strings(value: Any) -> list[str]:
    """Every string of a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value, *(s for v in value.values() for s in strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [json.dumps(value)]


def assert_as_it_came_unless_a_secret(sent: dict, written: dict, secrets: list[str]) -> None:
    assert written.keys() == sent.keys()
    for name, value in sent.items():
        if holds(value, secrets):
            assert not holds(written[name], secrets), (name, value, written[name])
        else:
            assert written[name] == value, (name, value, written[name])


@st.composite
def configurations(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A configuration holding secrets of each kind redaction.py learns, and those secrets."""
    api_key, app_key, password, token = (draw(SECRET) for _ in range(4))
    config = {
        "api_key": api_key,
        "app_api_key": app_key,
        "ledger_url": f"postgresql://etl:{quote(password, safe='')}@db.example.com:5432/ledger",
        "track_api_url": f"https://proxy.example.com/?token={quote(token, safe='')}",
    }
    return config, [api_key, app_key, password, token]


@settings(
    max_examples=500 if LONG_PROPERTIES else 100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), configured=configurations())
def test_a_rejected_record_is_written_as_it_came_unless_it_holds_a_secret(
    tmp_path: Path, data: st.DataObject, configured: tuple[dict[str, Any], list[str]]
) -> None:
    """RunReport.reject, the one writer of the reject file, with a redaction that knows this
    configuration: the record as it came, the secrets masked, the message masked by shape too."""
    config, secrets = configured
    redactor = Redactor()
    redactor.learn_config(config)
    rows = data.draw(
        st.lists(
            st.fixed_dictionaries({"note": values(secrets), "link": values(secrets)}), max_size=5
        )
    )
    path = tmp_path / "rejects.jsonl"
    path.unlink(missing_ok=True)
    with mock.patch.object(report_module, "REDACTOR", redactor):
        report = RunReport(reject_file=str(path), report_file=None, dry_run=True, logger=QUIET)
        for row in rows:
            message = f"bad value {row['note']!r} ({config['ledger_url']}, db=etl:pw_never_told@db)"
            report.reject(STREAM, "contract", "note", message, row)
        report.close("ok")
    written = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    assert len(written) == len(rows)
    for row, entry in zip(rows, written, strict=True):
        assert_as_it_came_unless_a_secret(row, entry["record"], secrets)
        assert not any(holds(text, secrets) for text in strings(entry)), entry
        assert f"etl:{MASK}@db" in entry["message"]  # an error text: masked by its shape too


@settings(
    max_examples=40 if LONG_PROPERTIES else 6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), api_key=SECRET)
def test_no_output_of_a_run_holds_the_api_key_and_rejects_are_the_records_sent(
    tmp_path: Path, data: st.DataObject, api_key: str
) -> None:
    """The real target process, a dry run: records without an id are rejected (their values
    written as they came unless they hold the api_key), the others go to the dry-run file; the
    api_key is in no output."""
    secrets = [api_key]
    rows = data.draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.one_of(st.none(), st.just("C1")),
                    "note": values(secrets),
                    "link": values(secrets),
                    "n": st.integers(-(2**40), 2**40),
                }
            ),
            min_size=1,
            max_size=6,
        )
    )
    work = tmp_path / f"run-{abs(hash(api_key))}-{len(rows)}"
    work.mkdir(exist_ok=True)
    files = {"reject_file": "rejects.jsonl", "report_file": "report.json", "dry_run_file": "dry"}
    for name in files.values():
        (work / name).unlink(missing_ok=True)
    config = {
        "dry_run": True,
        "api_key": api_key,
        "streams": ROUTES,
        "ledger_path": str(work / "ledger.sqlite"),
        **{setting: str(work / name) for setting, name in files.items()},
    }
    run = run_target(config, [SCHEMA, *(record(STREAM, row) for row in rows)], work)
    assert run.returncode == 0, run.stderr
    assert api_key not in run.stderr and api_key not in run.stdout
    rejected = [row for row in rows if row["id"] is None]
    assert len(run.rejects) == len(rejected)
    for row, entry in zip(rejected, run.rejects, strict=True):
        assert_as_it_came_unless_a_secret(row, entry["record"], secrets)
    documents = [entry for entry in run.rejects] + [run.report]
    dry_run = (work / "dry").read_text(encoding="utf-8").split("\n")
    documents += [json.loads(line) for line in dry_run if line]
    for document in documents:
        assert not any(holds(text, secrets) for text in strings(document)), document
