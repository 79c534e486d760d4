"""Settings that never reached the target: a TARGET_CUSTOMERIO_<SETTING> variable the
configuration file does not hold is exit 2 (Meltano passes only the settings a plugin declares,
so a documented `TARGET_CUSTOMERIO_DRY_RUN=true` once sent for real), and a `.env` file is read
from the working directory only."""

from __future__ import annotations

import json
import os
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.environment import check_env_reached
from target_customerio.errors import ConfigError
from target_customerio.setting_schema import CONFIG_SCHEMA
from tests.harness import API_KEY, TARGET, record, run_target, schema, target_config

P = "public-people"
ROUTES = {P: {"kind": "person", "identifier": {"field": "id", "type": "id"}}}
MESSAGES = [
    schema(P, {"id": {"type": "string"}, "name": {"type": "string"}}),
    *(record(P, {"id": str(i), "name": f"n{i}"}) for i in range(3)),
    {"type": "STATE", "value": {"bookmark": 3}},
]


def _clean_env(**extra: str) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("TARGET_CUSTOMERIO_")}
    return {**kept, **extra}


def test_a_dry_run_variable_the_config_file_does_not_hold_sends_nothing(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, ROUTES)
    run = run_target(config, MESSAGES, tmp_path, env=_clean_env(TARGET_CUSTOMERIO_DRY_RUN="true"))
    assert run.returncode == 2, run.stderr
    assert "TARGET_CUSTOMERIO_DRY_RUN is set" in run.stderr
    assert "does not hold it" in run.stderr and "dry_run" in run.stderr
    assert sandbox.people() == [] and run.states == []


def test_a_variable_the_config_file_holds_is_fine(sandbox, tmp_path):
    """Meltano exports every setting it passes as a variable too: those agree."""
    config = target_config(sandbox.url, tmp_path, ROUTES, dry_run=True)
    env = _clean_env(
        TARGET_CUSTOMERIO_DRY_RUN="true",
        TARGET_CUSTOMERIO_API_KEY=API_KEY,
        TARGET_CUSTOMERIO_STREAMS=json.dumps(ROUTES),
        TARGET_CUSTOMERIO_REGION="us",  # not in the file, but the default
    )
    run = run_target(config, MESSAGES, tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert sandbox.people() == []


def test_a_secret_variable_that_differs_is_named_but_never_shown(sandbox, tmp_path):
    config = target_config(sandbox.url, tmp_path, ROUTES)
    other = "sk_other_key_never_shown"
    run = run_target(config, MESSAGES, tmp_path, env=_clean_env(TARGET_CUSTOMERIO_API_KEY=other))
    assert run.returncode == 2
    assert "TARGET_CUSTOMERIO_API_KEY is set" in run.stderr and "holds another value" in run.stderr
    assert other not in run.stderr and API_KEY not in run.stderr
    assert sandbox.people() == []


def test_a_parent_directorys_dotenv_is_not_read(sandbox, tmp_path):
    (tmp_path / ".env").write_text("TARGET_CUSTOMERIO_DRY_RUN=true\n")
    here = tmp_path / "project"
    here.mkdir()
    env = _clean_env(
        TARGET_CUSTOMERIO_SITE_ID="test-site",
        TARGET_CUSTOMERIO_API_KEY=API_KEY,
        TARGET_CUSTOMERIO_TRACK_API_URL=sandbox.url,
        TARGET_CUSTOMERIO_STREAMS=json.dumps(ROUTES),
    )
    data = "".join(json.dumps(m) + "\n" for m in MESSAGES).encode()
    run = subprocess.run(
        [TARGET, "--config", "ENV"], input=data, capture_output=True, cwd=here, env=env, timeout=60
    )
    assert run.returncode == 0, run.stderr.decode()
    assert len(sandbox.people()) == 3  # sent: the parent's .env did not make it a dry run
    (here / ".env").write_text("TARGET_CUSTOMERIO_DRY_RUN=true\n")
    sandbox.reset()
    run = subprocess.run(
        [TARGET, "--config", "ENV"], input=data, capture_output=True, cwd=here, env=env, timeout=60
    )
    assert run.returncode == 0, run.stderr.decode()
    assert sandbox.people() == []  # the working directory's .env is read


def test_a_dotenv_variable_the_config_file_does_not_hold_stops_the_run(sandbox, tmp_path):
    (tmp_path / ".env").write_text("TARGET_CUSTOMERIO_DRY_RUN=true\n")
    run = run_target(target_config(sandbox.url, tmp_path, ROUTES), MESSAGES, tmp_path)
    assert run.returncode == 2 and "TARGET_CUSTOMERIO_DRY_RUN is set" in run.stderr
    assert sandbox.people() == []


# Values of each JSON type a setting can hold, and the text Meltano exports for them
# (meltano.core.setting_definition.stringify_value: a string as it is, anything else as JSON).
KINDS = [
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
]
NAMES = st.sampled_from(sorted(CONFIG_SCHEMA["properties"]))


def _meltano_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _agrees(env: dict[str, str], config: dict[str, object]) -> bool:
    try:
        check_env_reached(env, config, CONFIG_SCHEMA)
    except ConfigError as exc:
        assert all(text not in str(exc) for text in env.values() if len(text) > 3)
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(NAMES, st.sampled_from(KINDS).flatmap(lambda kind: st.tuples(kind, kind)))
def test_a_variable_agrees_exactly_when_it_means_the_configured_value(name, values):
    """What Meltano exports for the value it passes always agrees; a different value of the
    same type never does (and is never quoted); with nothing configured, only the setting's
    default or an empty (blank) variable gets through."""
    held, other = values
    var = "TARGET_CUSTOMERIO_" + name.upper()
    assert _agrees({var: _meltano_text(held)}, {name: held})
    assert _agrees({var: _meltano_text(other)}, {name: held}) == (other == held)
    default = CONFIG_SCHEMA["properties"][name].get("default")
    unset_ok = not _meltano_text(other).strip() or (default is not None and other == default)
    if type(default) is type(other) or default is None:
        assert _agrees({var: _meltano_text(other)}, {}) == unset_ok


def test_meltano_s_flattened_export_of_the_routes_agrees():
    """Meltano exports an object setting with its nested keys joined by dots."""
    flat = {
        f"{P}.kind": "person",
        f"{P}.identifier.field": "id",
        f"{P}.identifier.type": "id",
    }
    assert _agrees({"TARGET_CUSTOMERIO_STREAMS": json.dumps(flat)}, {"streams": ROUTES})
    flat[f"{P}.kind"] = "event"
    assert not _agrees({"TARGET_CUSTOMERIO_STREAMS": json.dumps(flat)}, {"streams": ROUTES})
