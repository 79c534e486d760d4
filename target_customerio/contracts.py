"""Contracts: JSON Schemas that outgoing attributes or event data must conform to (a file of
the user's, or one shipped with the package as `builtin:<name>`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs

from target_customerio.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
_REQUIRED_PROPERTY = re.compile(r'^"(.+)" is a required property')


@dataclass(frozen=True)
class Violation:
    """The first way a payload breaks its contract."""

    field: str
    message: str
    rule: str


class Contract:
    """A compiled JSON Schema (draft 2020-12) for outgoing attributes or event data."""

    def __init__(self, schema: dict[str, Any], source: str) -> None:
        if not jsonschema_rs.meta.is_valid(schema):
            raise ConfigError(f"contract {source} is not a valid JSON Schema")
        self.source = source
        self._validator = jsonschema_rs.Draft202012Validator(schema)

    def check(self, payload: dict[str, Any]) -> Violation | None:
        """None when the payload conforms, else the first violation."""
        if self._validator.is_valid(payload):
            return None
        error = next(iter(self._validator.iter_errors(payload)))
        path = [str(p) for p in error.instance_path]
        missing = _REQUIRED_PROPERTY.match(error.message)
        if missing:
            path.append(missing.group(1))
        rule = "/".join(str(p) for p in error.schema_path)
        return Violation(field=".".join(path), message=error.message, rule=rule)


def load_contract(ref: str, base_dir: Path) -> Contract:
    """`builtin:order_placed` (shipped with the package) or a path to a JSON Schema file."""
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX) :]
        resource = resources.files("target_customerio") / "contracts" / f"{name}.schema.json"
        if not resource.is_file():
            raise ConfigError(
                f"no built-in contract {name!r}; shipped: {', '.join(builtin_contracts())}"
            )
        text = resource.read_text()
    else:
        path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"contract {ref}: cannot read {path} ({exc.strerror})") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"contract {ref}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return Contract(schema, ref)


def builtin_contracts() -> list[str]:
    """Names usable as `builtin:<name>`."""
    folder = resources.files("target_customerio") / "contracts"
    return sorted(
        p.name.removesuffix(".schema.json")
        for p in folder.iterdir()
        if p.name.endswith(".schema.json")
    )
