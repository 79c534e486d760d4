"""`--config` files: read strictly, so that a file that is missing, unreadable, not JSON or not
an object is one line and exit 2, like any other configuration error."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

from target_customerio import redaction
from target_customerio.errors import ConfigError

_MAX_CONFIG_BYTES = 16 << 20


def read_config_file(path: str) -> dict[str, t.Any]:
    file = Path(path)
    try:
        if file.exists() and not file.is_dir() and not file.is_file():  # a FIFO or a device
            raise ConfigError(f"--config {path}: not a regular file")
        if file.is_file() and file.stat().st_size > _MAX_CONFIG_BYTES:
            raise ConfigError(
                f"--config {path}: larger than {_MAX_CONFIG_BYTES >> 20} MB, not a config file"
            )
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"--config {path}: cannot read it ({reason})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--config {path}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ConfigError(f"--config {path}: nested too deeply") from None
    if not isinstance(config, dict):
        raise ConfigError(
            f"--config {path}: must be a JSON object of settings, not {type(config).__name__}"
        )
    redaction.REDACTOR.learn_config(config)
    return config
