"""The target's settings: their JSON Schema (what Meltano and --about show) and their checks."""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema_rs

from target_customerio.errors import ConfigError, did_you_mean
from target_customerio.redaction import SENSITIVE_SETTINGS, shown
from target_customerio.routes import Routes

REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
APP_REGION_URLS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}

# Every setting's description says what it does and, where it has no default value, what
# happens when it is unset: --about, the Meltano Hub definition (hub/) and `meltano config`
# show them. Secrets carry `secret` and `writeOnly` (redaction.SENSITIVE_SETTINGS).
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "site_id": {
            "type": "string",
            "description": "Track API site ID (Customer.io > Settings > API Credentials). "
            "Required unless dry_run.",
        },
        "api_key": {
            "type": "string",
            "secret": True,
            "writeOnly": True,
            "description": "Track API key, sent with site_id as HTTP Basic auth. Secret: never "
            "logged. Required unless dry_run.",
        },
        "region": {
            "type": "string",
            "enum": ["us", "eu"],
            "default": "us",
            "description": "Workspace region: us (https://track.customer.io) or eu "
            "(https://track-eu.customer.io).",
        },
        "track_api_url": {
            "type": "string",
            "description": "Overrides the region's Track API base URL (sandbox, proxy); plain "
            "http:// only for loopback hosts. Unset: the region's URL.",
        },
        "app_api_key": {
            "type": "string",
            "secret": True,
            "writeOnly": True,
            "description": "App API key (bearer), for reconcile routes: segment counts are read "
            "from the App API. Secret: never logged. Required when a reconcile "
            "route's stream arrives (unless dry_run).",
        },
        "app_api_url": {
            "type": "string",
            "description": "Overrides the region's App API base URL (https://api.customer.io, EU "
            "https://api-eu.customer.io); plain http:// only for loopback hosts.",
        },
        "streams": {
            "type": ["object", "string"],
            "description": "Stream name (exact, or a glob such as *-customers) -> route: kind "
            "(person, event, merge, object, segment, reconcile), identifier, event_name, "
            "event_id, timestamp, attributes, contract, max_age, mirror. "
            "An object, or the same as a JSON string. Unset: no stream has a "
            "route (see unmapped_streams).",
        },
        "unmapped_streams": {
            "type": "string",
            "enum": ["error", "skip"],
            "default": "error",
            "description": "A stream with no route: error fails the run naming it and the "
            "configured ones; skip counts its records as skipped.",
        },
        "max_requests_per_second": {
            "type": "number",
            "minimum": 0.01,
            "maximum": 100000,
            "default": 100,
            "description": "Client-side rate limit on Track API requests.",
        },
        "reject_file": {
            "type": "string",
            "description": "JSONL dead-letter file: every record not sent, with its stream, "
            "reason, field and the record. Unset: rejects are only counted.",
        },
        "report_file": {
            "type": "string",
            "description": "JSON run report: per stream received, sent, rejected, skipped (with "
            "why) and retried. Unset: the summary is only logged.",
        },
        "dry_run": {
            "type": "boolean",
            "default": False,
            "description": "Map and validate everything, send nothing, emit no STATE; the "
            "would-be operations go to dry_run_file.",
        },
        "dry_run_file": {
            "type": "string",
            "default": "customerio-dry-run.jsonl",
            "description": "Where dry_run writes the would-be operations (JSONL).",
        },
        "on_contract_violation": {
            "type": "string",
            "enum": ["reject", "fail"],
            "default": "reject",
            "description": "Default for routes: a record that breaks its contract is rejected "
            "(dead-lettered) or fails the run.",
        },
        "request_timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "default": 30,
            "description": "Longest one try of a request may take, whole: connecting, the "
            "answer's headers and its body.",
        },
        "max_retries": {
            "type": "integer",
            "minimum": 0,
            "default": 7,
            "description": "Retries of one request on 429, 5xx and network errors (backoff with "
            "jitter, Retry-After honoured).",
        },
        "checkpoint_interval_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 86400,
            "default": 60,
            "description": "Longest time between STATE checkpoints on a long run.",
        },
        "change_detection": {
            "type": "boolean",
            "default": True,
            "description": "Skip rows whose operation equals what the ledger says was last "
            "delivered.",
        },
        "ledger_path": {
            "type": "string",
            "default": ".customerio-ledger.sqlite",
            "description": "SQLite ledger of what was delivered, per workspace. Losing it "
            "costs one full re-send.",
        },
        "ledger_url": {
            "type": "string",
            "secret": True,
            "writeOnly": True,
            "description": "Postgres URL: keep the ledger in a table there instead of "
            "ledger_path (ephemeral runners). Secret. Needs "
            "target-customerio[postgres]. Unset: the SQLite ledger.",
        },
        "full_resend": {
            "type": "boolean",
            "default": False,
            "description": "Ignore the ledger for this run and send everything (the ledger is "
            "still updated).",
        },
        "max_reject_ratio": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "Fail the run when a stream's rejected/received ratio passes this "
            "(0..1; checked from 100 records on, and before each STATE). "
            "Unset: no limit.",
        },
        "delivery_workers": {
            "type": "integer",
            "minimum": 1,
            "maximum": 32,
            "default": 4,
            "description": "Requests in flight at once.",
        },
        "mapping_workers": {
            "type": "integer",
            "minimum": 0,
            "maximum": 16,
            "description": "Processes that decode, map and validate records; 0 maps in the "
            "reading thread. Unset: the CPU count, at most 4.",
        },
    },
}


# singer-sdk's own settings. These apply: the SDK does their work before a record reaches a sink.
SDK_SETTINGS = (
    "add_record_metadata",
    "stream_maps",
    "stream_map_config",
    "faker_config",
    "flattening_enabled",
    "flattening_max_depth",
    "flattening_max_key_length",
    "flattening_separator",
)
# The SDK defines these too, for targets that load tables or validate with its validator; this
# target does neither (requests are cut by size, contracts do the checking). Accepted, so a
# project that sets them keeps running, with a warning that they do nothing.
SDK_SETTINGS_IGNORED = (
    "load_method",
    "batch_size_rows",
    "validate_records",
    "process_activate_version_messages",
    "batch_config",
)
# Environment variables with the settings' prefix that are not settings (COMPILE is the build's
# switch: hatch_build.py).
_NOT_SETTINGS_ENV = ("LOGLEVEL", "LOG_LEVEL", "COMPILE")
ENV_PREFIX = "TARGET_CUSTOMERIO_"
# Meltano also exports each key of an object setting as a variable of its own
# (TARGET_CUSTOMERIO_STREAMS_PUBLIC_CUSTOMERS_KIND): those are not typos.
_OBJECT_SETTINGS_ENV = ("STREAMS_", "STREAM_MAPS_", "STREAM_MAP_CONFIG_", "FAKER_CONFIG_")


def known_settings() -> list[str]:
    return [*CONFIG_SCHEMA["properties"], *SDK_SETTINGS, *SDK_SETTINGS_IGNORED]


def check_config(config: dict[str, Any]) -> list[str]:
    """Fail closed on the whole configuration before anything runs: an unknown setting (a typo
    must never reach production) or a value of the wrong type is a ConfigError. Returns the
    warnings for SDK settings that do nothing here. Messages never hold a sensitive value."""
    known = known_settings()
    for name in config:
        if name not in known:
            shown_name = shown(name, 60)
            raise ConfigError(
                f"unknown setting `{shown_name}`{did_you_mean(shown_name, known)}; "
                f"settings: {', '.join(CONFIG_SCHEMA['properties'])}"
            )
    for error in _VALIDATOR.iter_errors(config):  # the SDK checks its own settings
        path = [str(p) for p in error.instance_path]
        name = path[0] if path else ""
        raise ConfigError(f"setting `{'.'.join(path)}`: {_problem(name, error.message)}")
    for name in ("site_id", "api_key", "app_api_key"):
        value = config.get(name)
        if isinstance(value, str) and not (value.isascii() and value.isprintable()):
            raise ConfigError(
                f"setting `{name}` holds characters an HTTP header cannot carry "
                "(it must be printable ASCII: copy it again from Customer.io)"
            )
    return [
        f"setting `{name}` does nothing in target-customerio (requests are cut by size and "
        "contracts check the records); remove it"
        for name in SDK_SETTINGS_IGNORED
        if config.get(name) is not None
    ]


_VALIDATOR = jsonschema_rs.Draft7Validator(CONFIG_SCHEMA)


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


def _problem(name: str, message: str) -> str:
    """The validator's message, or for a sensitive setting one that does not quote the value."""
    if name not in SENSITIVE_SETTINGS:
        return shown(message)
    expected = CONFIG_SCHEMA["properties"].get(name, {}).get("type", "valid")
    return f"must be a {expected} (the value is secret, so it is not shown)"


@dataclass(frozen=True)
class Settings:
    """Validated settings. `api_key` is kept out of repr so it cannot leak into logs."""

    site_id: str
    base_url: str
    region: str | None  # the region to verify against, None when track_api_url overrides it
    app_base_url: str  # the App API's (reconcile routes)
    routes: Routes
    unmapped_streams: str
    max_requests_per_second: float
    reject_file: str | None
    report_file: str | None
    dry_run: bool
    dry_run_file: str
    request_timeout: float
    max_retries: int
    delivery_workers: int
    mapping_workers: int
    checkpoint_interval_seconds: float
    change_detection: bool
    ledger_path: str
    ledger_url: str | None
    full_resend: bool
    max_reject_ratio: float | None

    def __repr__(self) -> str:
        return f"Settings(site_id={self.site_id!r}, base_url={self.base_url!r})"


def load_settings(config: dict[str, Any], base_dir: Path) -> Settings:
    """Check every setting; raise ConfigError naming the first bad one."""
    dry_run = bool(config.get("dry_run", False))
    streams = config.get("streams")
    if isinstance(streams, str):
        try:
            streams = json.loads(streams)
        except (json.JSONDecodeError, RecursionError):
            raise ConfigError("setting `streams` is a string but not JSON") from None
    kinds = (
        {route.get("kind") if isinstance(route, dict) else None for route in streams.values()}
        if isinstance(streams, dict)
        else set()
    )
    needed = [] if dry_run else ["site_id", "api_key"] if kinds != {"reconcile"} else []
    for name in needed:
        if not str(config.get(name) or "").strip():
            raise ConfigError(f"setting `{name}` is required (TARGET_CUSTOMERIO_{name.upper()})")
    region = config.get("region") or "us"
    if region not in REGION_URLS:
        raise ConfigError(f"setting `region`: {region!r} is not us or eu")
    override = config.get("track_api_url")
    if override:
        _check_url(override)
    app_override = config.get("app_api_url")
    if app_override:
        _check_url(app_override, "app_api_url", "app_api_key")
    unmapped = config.get("unmapped_streams", "error")
    if unmapped not in ("error", "skip"):
        raise ConfigError(f"setting `unmapped_streams`: {unmapped!r} is not error or skip")
    violation = config.get("on_contract_violation", "reject")
    if violation not in ("reject", "fail"):
        raise ConfigError(f"setting `on_contract_violation`: {violation!r} is not reject or fail")
    _distinct_outputs(config, dry_run)
    routes = Routes(streams, base_dir, violation)
    change_detection = bool(config.get("change_detection", True))
    mirrored = [route.pattern for route in routes.all() if route.mirror is not None]
    if mirrored and not change_detection:
        raise ConfigError(
            f"streams.{mirrored[0]}: a route that mirrors its view (mirror: true, or kind: "
            "segment) needs change_detection: the ledger keeps who was in it"
        )
    return Settings(
        site_id=str(config.get("site_id") or ""),
        base_url=(override or REGION_URLS[region]).rstrip("/"),
        region=config.get("region")
        if override
        else region,  # verify a proxy's region only when set
        app_base_url=(app_override or APP_REGION_URLS[region]).rstrip("/"),
        routes=routes,
        unmapped_streams=unmapped,
        max_requests_per_second=_positive(config, "max_requests_per_second", 100),
        reject_file=config.get("reject_file") or None,
        report_file=config.get("report_file") or None,
        dry_run=dry_run,
        dry_run_file=config.get("dry_run_file") or "customerio-dry-run.jsonl",
        request_timeout=_positive(config, "request_timeout", 30),
        max_retries=int(config.get("max_retries", 7)),
        delivery_workers=int(config.get("delivery_workers", 4)),
        mapping_workers=int(config["mapping_workers"])
        if config.get("mapping_workers") is not None
        else min(4, os.cpu_count() or 1),
        checkpoint_interval_seconds=_positive(config, "checkpoint_interval_seconds", 60),
        change_detection=change_detection,
        ledger_path=config.get("ledger_path") or ".customerio-ledger.sqlite",
        ledger_url=config.get("ledger_url") or None,
        full_resend=bool(config.get("full_resend", False)),
        max_reject_ratio=_ratio(config.get("max_reject_ratio")),
    )


def _distinct_outputs(config: dict[str, Any], dry_run: bool) -> None:
    """Each file the run writes is its own: a report written over the reject file would erase
    the rejects a STATE promised were kept, and stdout is only for STATE."""
    names = ["reject_file", "report_file", "ledger_path", *(["dry_run_file"] if dry_run else [])]
    seen: dict[str, str] = {}
    for name in names:
        value = config.get(name) or (".customerio-ledger.sqlite" if name == "ledger_path" else None)
        if not value or (
            name == "ledger_path"
            and (config.get("ledger_url") or config.get("change_detection") is False)
        ):
            continue
        path = os.path.realpath(value)
        if path in seen:
            raise ConfigError(
                f"settings `{seen[path]}` and `{name}` name the same file ({value}); "
                "each needs its own"
            )
        seen[path] = name
        if _is_stdout(value):
            raise ConfigError(
                f"setting `{name}`: {value} is standard output, which carries only STATE"
            )


def _is_stdout(path: str) -> bool:
    if path in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        return True
    try:
        mine, theirs = os.stat(path), os.fstat(1)
    except (OSError, ValueError):
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def _ratio(value: Any) -> float | None:
    if value is None:
        return None
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        ratio = -1
    if not 0 <= ratio <= 1:
        raise ConfigError(f"setting `max_reject_ratio`: {value!r} is not a number from 0 to 1")
    return ratio


def _positive(config: dict[str, Any], name: str, default: float) -> float:
    value = config.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1
    if number <= 0:
        raise ConfigError(f"setting `{name}`: {value!r} is not a positive number")
    return number


def _check_url(
    url: str, setting: str = "track_api_url", credentials: str = "site_id and api_key"
) -> None:
    try:
        parsed = urlparse(url.strip())
        parsed.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ConfigError(f"setting `{setting}`: {url!r} is not an http(s) URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"setting `{setting}`: {url!r} is not an http(s) URL")
    if parsed.username or parsed.password:
        raise ConfigError(f"setting `{setting}` must not contain credentials; use {credentials}")
    if parsed.query or parsed.fragment or parsed.params:
        raise ConfigError(
            f"setting `{setting}`: a base URL, without ?query or #fragment "
            "(request paths are added to it)"
        )
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
        raise ConfigError(
            f"setting `{setting}`: plain http:// is only allowed for loopback hosts, "
            f"not {parsed.hostname}"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def about_text(info: Any) -> str:
    """The SDK's text form of --about, each setting with its default, secrecy and description."""
    lines = [
        f"Name: {info.name}",
        f"Description: {info.description}",
        f"Version: {info.version}",
        f"SDK Version: {info.sdk_version}",
        "Supported Python Versions:",
        *(f"  - {v}" for v in info.supported_python_versions or []),
        "Capabilities:",
        *(f"  - {c}" for c in info.capabilities),
        "Settings:",
    ]
    for name, schema in info.settings.get("properties", {}).items():
        lines += [f"  - Name: {name}", f"    Type: {schema.get('type')}"]
        if "default" in schema:
            lines.append(f"    Default: {json.dumps(schema['default'])}")
        if schema.get("secret"):
            lines.append("    Secret: yes (never logged)")
        lines.append(f"    Environment Variable: {info.env_var_prefix}{name.upper()}")
        if schema.get("description"):
            lines.append(f"    Description: {schema['description']}")
    return "\n".join(lines)
