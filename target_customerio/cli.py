"""The `target-customerio` command: the target's CLI, once the installed singer-sdk is checked."""

from __future__ import annotations

import logging
import signal
import sys
import typing as t

from singer_sdk.exceptions import (
    ConfigValidationError,
    ConformedNameClashException,
    MapExpressionError,
    MissingKeyPropertiesError,
    RecordsWithoutSchemaException,
    StreamMapConfigError,
)
from singer_sdk.singerlib.exceptions import InvalidInputLine

from target_customerio import redaction
from target_customerio.config_file import read_config_file
from target_customerio.errors import ConfigError, InputError, SdkMismatch, TargetError, Terminated

if t.TYPE_CHECKING:
    from target_customerio.target import TargetCustomerIO


def main() -> None:
    try:
        from target_customerio.target import TargetCustomerIO
    except SdkMismatch as exc:  # one line, not a traceback: the install is wrong, not the code
        sys.stderr.write(f"target-customerio: {exc}\n")
        sys.exit(1)
    TargetCustomerIO.cli()


def config_input(cls: type[TargetCustomerIO], paths: tuple[str, ...]) -> t.Any:
    """`--config` files (or ENV): a file that is missing, unreadable, not JSON or not an object
    is one line and exit 2, like any other configuration error."""
    from target_customerio.sdk import ConfigInput

    redaction.install()
    config: dict[str, t.Any] = {}
    parse_env = False
    try:
        for path in paths:
            if path == "ENV":
                parse_env = True
                continue
            config |= read_config_file(path)
    except ConfigError as exc:
        stop(cls, None, exc)
    return ConfigInput(config=config, parse_env=parse_env)


def run(cls: type[TargetCustomerIO], config: t.Any, file_input: t.IO[str] | None) -> None:
    """Start, check the credentials, read the input and finish; every failure one line on stderr
    and its exit code (docs/guarantees.md, "Exit codes")."""
    target = None
    try:
        target = cls(config=config.config, validate_config=True, parse_env_config=config.parse_env)
        target.check_credentials()
        target.read_campaigns()
        target.listen(file_input)
    except Terminated as exc:
        stop(cls, target, exc, drain=True)
    except TargetError as exc:
        stop(cls, target, exc)
    except ConfigValidationError as exc:
        lines = [str(error).splitlines()[0] for error in exc.errors if str(error).strip()]
        stop(cls, target, ConfigError("; ".join(lines) or str(exc).splitlines()[0]))
    except (MapExpressionError, StreamMapConfigError, ConformedNameClashException) as exc:
        stop(cls, target, ConfigError(f"stream_maps: {str(exc).splitlines()[0]}"))
    except (RecordsWithoutSchemaException, InvalidInputLine, MissingKeyPropertiesError) as exc:
        stop(cls, target, InputError(str(exc).splitlines()[0]))
    except UnicodeDecodeError:
        stop(cls, target, InputError("input is not valid UTF-8"))
    if target is not None:
        target.finish("ok")


def stop(
    cls: type[TargetCustomerIO],
    target: TargetCustomerIO | None,
    error: TargetError,
    *,
    drain: bool = False,
) -> t.NoReturn:
    """End the run on an error: after a signal, drain what was received first (a second signal
    does not cut the drain); write the report; exit with the error's code."""
    if drain and target is not None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            target.drain_all(is_endofpipe=True)
        except TargetError as exc:
            error = exc
    message = str(error)
    cls.logger.error("%s: %s", type(error).__name__, message)
    if target is not None:
        target.finish("failed", message, error.cause)
    logging.shutdown()
    sys.exit(error.exit_code)
