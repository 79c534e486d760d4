"""The singer-sdk members that are not its public API: all named in sdk.py, checked at import,
touched nowhere else, and a missing one is one line naming it and the installed version."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import singer_sdk
from singer_sdk import Target
from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.plugin_base import PluginBase
from singer_sdk.sinks import Sink

from target_customerio import sdk

PACKAGE = Path(sdk.__file__).parent
SDK_DIR = Path(singer_sdk.__file__).parent
SDK_CLASSES = (Target, PluginBase, Sink, MsgSpecReader)


def _sdk_private_names() -> set[str]:
    """Every single-underscore name of the SDK classes the target extends: their members and
    the attributes their code sets on `self`."""
    names: set[str] = set()
    for cls in SDK_CLASSES:
        for klass in cls.__mro__:
            if klass.__module__.startswith("singer_sdk"):
                names |= {
                    name
                    for name in vars(klass)
                    if name.startswith("_") and not name.startswith("__")
                }
                names |= set(re.findall(r"self\.(_[a-zA-Z]\w*)", inspect.getsource(klass)))
    return names


def _touched(path: Path, private: set[str]) -> list[str]:
    """The SDK private names a module overrides or reads: in a class that extends an SDK class,
    any of its members or `self._...` attributes; anywhere, `<not self>._...` (a target or sink
    reached from outside)."""
    module = importlib.import_module(
        ".".join(("target_customerio", *path.relative_to(PACKAGE).with_suffix("").parts))
    )
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, node.name, None)
            if isinstance(cls, type) and issubclass(cls, SDK_CLASSES):
                found += [
                    f"{node.name}.{item.name}"
                    for item in node.body
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and item.name in private
                ]
                found += [
                    f"{node.name}: self.{sub.attr}"
                    for sub in ast.walk(node)
                    if isinstance(sub, ast.Attribute)
                    and sub.attr in private
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in private
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("singer_sdk"):
            found += [f"import {alias.name}" for alias in node.names if alias.name.startswith("_")]
    return found


def test_no_module_but_the_adapter_touches_an_sdk_private_member():
    private = _sdk_private_names()
    assert {
        "_write_state_message",
        "_sinks_active",
        "_validate_and_parse",
    } <= private  # the scan sees them
    modules = [
        path
        for path in PACKAGE.rglob("*.py")
        if path.name != "sdk.py" and "sandbox" not in path.parts and path.name != "__main__.py"
    ]
    touched = {
        str(path.relative_to(PACKAGE)): found
        for path in modules
        if (found := _touched(path, private))
    }
    assert touched == {}, f"use (or add) a hook in sdk.py instead: {touched}"


def test_every_private_member_the_adapter_uses_is_in_its_checked_list():
    used = {name for name in re.findall(r"\b(_[a-zA-Z]\w*)", Path(sdk.__file__).read_text())}
    checked = {name for _, name, _ in sdk.PRIVATE_MEMBERS} | {
        name for _, name in sdk.PRIVATE_ATTRIBUTES
    }
    assert used & _sdk_private_names() - {"_plugin_base", "_ConfigInput"} <= checked


def test_a_missing_member_names_itself_and_the_installed_version():
    with pytest.raises(sdk.SdkMismatch) as err:
        sdk.check([(Target, "_write_state_message_renamed", None)], [])
    assert "Target._write_state_message_renamed" in str(err.value) and sdk.SDK_VERSION in str(
        err.value
    )


def test_a_member_whose_parameters_changed_is_a_mismatch_too():
    with pytest.raises(sdk.SdkMismatch, match=r"Target._write_state_message\(self, message\)"):
        sdk.check([(Target, "_write_state_message", ("self", "message"))], [])


def test_an_attribute_the_sdk_no_longer_sets_is_a_mismatch():
    with pytest.raises(sdk.SdkMismatch, match="Target._sinks_gone"):
        sdk.check([], [(Target, "_sinks_gone")])


def test_the_command_with_a_mismatched_sdk_says_so_in_one_line_and_exits_1(tmp_path):
    """An SDK without `_write_state_message` (as a release that renamed it would be): the
    command stops before reading anything, instead of emitting STATE before delivery."""
    (tmp_path / "sitecustomize.py").write_text(
        "import singer_sdk.target_base as t\ndel t.Target._write_state_message\n"
    )
    run = subprocess.run(
        [str(Path(sys.executable).with_name("target-customerio")), "--version"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
        check=False,
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "target-customerio: target-customerio relies on singer-sdk's "
        "Target._write_state_message, which "
        f"singer-sdk {sdk.SDK_VERSION} does not have: install the singer-sdk version this release "
        "requires (pip install target-customerio again)"
    ]
