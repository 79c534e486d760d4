"""Settings from the environment: `--config ENV` reads TARGET_CUSTOMERIO_* variables (and a
`.env` file) strictly by type, and a variable with the prefix that names no setting is a typo
in every mode."""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any

from target_customerio.errors import ConfigError
from target_customerio.redaction import SENSITIVE_SETTINGS, shown
from target_customerio.setting_schema import known_settings

# Environment variables with the settings' prefix that are not settings (COMPILE is the build's
# switch: hatch_build.py).
_NOT_SETTINGS_ENV = ("LOGLEVEL", "LOG_LEVEL", "COMPILE")
ENV_PREFIX = "TARGET_CUSTOMERIO_"
# Meltano also exports each key of an object setting as a variable of its own
# (TARGET_CUSTOMERIO_STREAMS_PUBLIC_CUSTOMERS_KIND): those are not typos.
_OBJECT_SETTINGS_ENV = ("STREAMS_", "STREAM_MAPS_", "STREAM_MAP_CONFIG_", "FAKER_CONFIG_")


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def env_config(environ: dict[str, str], schema: dict[str, Any]) -> dict[str, Any]:
    """`--config ENV`: the TARGET_CUSTOMERIO_<NAME> variables of the environment and of a
    `.env` file in the working directory, never a parent's (the environment wins), each read
    strictly as its setting's type: `maybe` is not a boolean, `10` is a number. A variable that
    names no setting is a typo. Raises ConfigError."""
    values = {**dotenv_here(), **environ}
    check_env(values)
    config: dict[str, Any] = {}
    for name, spec in schema.get("properties", {}).items():
        var = ENV_PREFIX + name.upper()
        if var in values:
            config[name] = _from_env(var, values[var], spec, name in SENSITIVE_SETTINGS)
    return config


def dotenv_here() -> dict[str, str]:
    """The `.env` file of the working directory only: one in a parent directory belongs to
    another project (it once turned a run into a dry run)."""
    from dotenv import dotenv_values

    path = Path.cwd() / ".env"
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def check_env_reached(
    environ: dict[str, str], config: dict[str, Any], schema: dict[str, Any]
) -> None:
    """Settings from a file (`--config FILE`, as Meltano passes them): a TARGET_CUSTOMERIO_<NAME>
    variable whose value the file does not hold never reached the target. Meltano passes only
    the settings a plugin declares, so `TARGET_CUSTOMERIO_DRY_RUN=true` on an undeclared setting
    would send for real: that is a ConfigError naming the variable and the fix. Values are never
    quoted (they may be secrets)."""
    check_env(environ)
    properties = schema.get("properties", {})
    for var, text in environ.items():
        name = var[len(ENV_PREFIX) :].lower() if var.startswith(ENV_PREFIX) else ""
        if name not in properties or _agrees(text, name, config, properties[name]):
            continue
        how = "holds another value" if name in config else "does not hold it"
        raise ConfigError(
            f"environment variable {var} is set, but the configuration the target was given "
            f"{how}: declare `{name}` in the loader's settings (meltano.yml, or install it from "
            f"hub/loaders/target-customerio.yml) or set it in --config, or unset {var}"
        )


def _agrees(text: str, name: str, config: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether a variable's text means the value the configuration holds (Meltano writes a value
    as JSON, or a string as it is), or, when the configuration holds none, the default."""
    if name not in config or config[name] is None:
        return not text.strip() or _means(text, spec.get("default"))
    return _means(text, config[name])


def _means(text: str, value: Any) -> bool:
    if isinstance(value, str):
        return text == value
    if isinstance(value, bool):
        return text.strip().lower() in (_TRUE if value else _FALSE)
    if isinstance(value, int | float):
        try:
            return float(text) == value
        except ValueError:
            return False
    if value is None:
        return False
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return text == str(value)
    # Meltano exports an object setting with its nested keys flattened ("route.kind": "person").
    return parsed in (value, _flattened(value)) or text == str(value)


def _flattened(value: Any, prefix: str = "") -> Any:
    if not isinstance(value, dict) or (prefix and not value):
        return value
    flat: dict[str, Any] = {}
    for key, item in value.items():
        nested = _flattened(item, f"{prefix}{key}.")
        if isinstance(item, dict) and item:
            flat.update(nested)
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _from_env(var: str, text: str, spec: dict[str, Any], secret: bool) -> Any:
    kinds = spec.get("type", "string")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    quoted = "(secret)" if secret else repr(shown(text, 60))
    if "boolean" in kinds:
        if text.strip().lower() in _TRUE + _FALSE:
            return text.strip().lower() in _TRUE
        raise ConfigError(f"environment variable {var}: {quoted} is not true or false")
    if "integer" in kinds or "number" in kinds:
        try:
            number = int(text) if "integer" in kinds else float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"environment variable {var}: {quoted} is not a number")
        return number
    if ("object" in kinds or "array" in kinds) and "string" not in kinds:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise ConfigError(f"environment variable {var}: not JSON") from None
    return text


def check_env(environ: dict[str, str]) -> None:
    """A TARGET_CUSTOMERIO_ variable that names no setting is a typo, whether the settings come
    from the environment (`--config ENV`) or from a file (Meltano passes one, and would ignore
    a misspelled variable: `TARGET_CUSTOMERIO_DRYRUN=true` would send for real)."""
    known = [name.upper() for name in known_settings()]
    for var in environ:
        if var.startswith(ENV_PREFIX):
            name = var[len(ENV_PREFIX) :]
            nested = name.startswith(_OBJECT_SETTINGS_ENV)  # Meltano exports object settings flat
            if (
                name not in known
                and name not in _NOT_SETTINGS_ENV
                and not nested
                and not name.startswith("_")
            ):
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
                raise ConfigError(f"environment variable {var} names no setting{hint}")
