"""Settings from the environment: `--config ENV` reads TARGET_CUSTOMERIO_* variables (and a
`.env` file) strictly by type, and a variable with the prefix that names no setting is a typo
in every mode."""

from __future__ import annotations

import difflib
import json
import math
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
    `.env` file in the working directory (the environment wins), each read strictly as its
    setting's type: `maybe` is not a boolean, `10` is a number. A variable that names no setting
    is a typo. Raises ConfigError."""
    from dotenv import dotenv_values, find_dotenv

    dotenv = {k: v for k, v in dotenv_values(find_dotenv(usecwd=True)).items() if v is not None}
    values = {**dotenv, **environ}
    check_env(values)
    config: dict[str, Any] = {}
    for name, spec in schema.get("properties", {}).items():
        var = ENV_PREFIX + name.upper()
        if var in values:
            config[name] = _from_env(var, values[var], spec, name in SENSITIVE_SETTINGS)
    return config


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
