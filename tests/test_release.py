"""What a release ships agrees with itself: the Meltano Hub definition (hub/) describes the
settings and capabilities `--about` reports, meltano.yml's loader definition is the Hub's, and
the installed package knows its version. (Building the sdist and the wheel, and a sync with the
wheel installed alone, run in .ci/check_dist.sh: slower than a unit test.)"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from target_customerio.redaction import SENSITIVE_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
TARGET = str(ROOT / ".venv" / "bin" / "target-customerio")
HUB = ROOT / "hub" / "loaders" / "target-customerio.yml"
HUB_KEYS = {
    "name",
    "namespace",
    "variant",
    "label",
    "description",
    "docs",
    "repo",
    "pip_url",
    "executable",
    "capabilities",
    "keywords",
    "maintenance_status",
    "settings",
}
SETTING_KEYS = {"name", "kind", "label", "description", "sensitive"}


@cache
def about() -> dict[str, Any]:
    run = subprocess.run(
        [TARGET, "--about", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(run.stdout)


@cache
def hub() -> dict[str, Any]:
    return yaml.safe_load(HUB.read_text())


def hub_settings() -> dict[str, dict[str, Any]]:
    return {setting["name"]: setting for setting in hub()["settings"]}


def meltano_loader() -> dict[str, Any]:
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    (loader,) = [p for p in project["plugins"]["loaders"] if p["name"] == "target-customerio"]
    return loader


def expected_kind(schema: dict[str, Any]) -> str:
    """The Meltano setting kind for a JSON Schema property (as the SDK's Hub metadata does)."""
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    types = [name for name in types if name != "null"]
    if schema.get("secret"):
        return "password"
    if "enum" in schema:
        return "options"
    if "object" in types:  # `streams` is an object, or the same as a JSON string
        return "object"
    return {
        "string": "string",
        "boolean": "boolean",
        "integer": "integer",
        "number": "decimal",
        "array": "array",
    }[types[0]]


def test_the_hub_definition_has_every_field():
    missing = HUB_KEYS - set(hub())
    assert not missing, f"{HUB.name} lacks {sorted(missing)}"
    assert hub()["name"] == about()["name"] == "target-customerio"
    assert hub()["pip_url"] == "target-customerio"
    for setting in hub()["settings"]:
        assert set(setting) >= SETTING_KEYS, (
            f"{setting['name']} lacks {SETTING_KEYS - set(setting)}"
        )


def test_the_hub_settings_are_the_ones_about_lists():
    assert list(hub_settings()) == list(about()["settings"]["properties"])


def test_each_hub_setting_matches_its_schema():
    for name, schema in about()["settings"]["properties"].items():
        setting = hub_settings()[name]
        assert setting["kind"] == expected_kind(schema), name
        assert setting["sensitive"] is bool(schema.get("secret")), name
        assert setting["description"] == schema["description"], f"{name}: description differs"
        assert setting.get("value") == schema.get("default"), f"{name}: default differs"
        if "enum" in schema:
            assert [option["value"] for option in setting["options"]] == schema["enum"], name


def test_every_secret_is_sensitive_everywhere():
    sensitive = {name for name, setting in hub_settings().items() if setting["sensitive"]}
    assert (
        sensitive
        == set(SENSITIVE_SETTINGS) & set(hub_settings())
        == {"api_key", "ledger_url", "app_api_key"}
    )
    secret = {name for name, p in about()["settings"]["properties"].items() if p.get("secret")}
    assert secret == sensitive


def test_every_setting_says_what_it_does_and_its_default():
    for name, schema in about()["settings"]["properties"].items():
        assert len(schema.get("description", "")) >= 20, f"{name}: no real description"
        if (
            name in hub_settings()
            and "default" not in schema
            and name.split("_")[0] not in ("add", "stream", "faker", "flattening")
        ):  # singer-sdk's own: off when unset
            assert re.search(r"Unset|Required|Overrides", schema["description"]), (
                f"{name}: no default, and the description does not say what unset means"
            )


def test_the_capabilities_are_the_targets():
    assert hub()["capabilities"] == about()["capabilities"]
    assert "validate-records" not in hub()["capabilities"]  # contracts validate, not the SDK


def test_meltano_yml_defines_the_loader_as_the_hub_does():
    loader, definition = meltano_loader(), hub()
    assert loader["namespace"] == definition["namespace"]
    assert loader["executable"] == definition["executable"]
    assert loader["capabilities"] == definition["capabilities"]
    ours = {setting["name"]: setting for setting in loader["settings"]}
    assert set(ours) == set(hub_settings())
    for name, setting in hub_settings().items():
        assert ours[name].get("kind", "string") == setting["kind"], name
        assert bool(ours[name].get("sensitive")) is setting["sensitive"], name
        assert ours[name].get("value") == setting.get("value"), f"{name}: default differs"


def test_about_in_text_and_markdown_shows_the_same_settings():
    for form in ("text", "markdown"):
        command = [TARGET, "--about", *(["--format", form] if form != "text" else [])]
        shown = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=True
        ).stdout
        for name, setting in hub_settings().items():
            assert name in shown, f"--about --format {form} does not show {name}"
            assert setting["description"] in shown, f"--about ({form}): {name}'s description"
        for ignored in ("load_method", "batch_size_rows", "validate_records"):
            assert ignored not in shown, f"--about --format {form} shows {ignored}"


def test_version_prints_the_installed_version():
    run = subprocess.run(
        [TARGET, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    match = re.match(r"target-customerio v(\d+\.\d+[.\w+]*)", run.stdout)
    assert match, run.stdout
    assert match.group(1) == about()["version"]
