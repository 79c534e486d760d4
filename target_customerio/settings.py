"""The target's settings checked and loaded: a typo or a wrong value is one ConfigError naming
the setting (what the settings are: setting_schema.py; the environment: environment.py)."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema_rs

from target_customerio.errors import ConfigError, did_you_mean
from target_customerio.redaction import SENSITIVE_SETTINGS, shown
from target_customerio.routes import Routes, max_campaign_entries_option
from target_customerio.setting_schema import CONFIG_SCHEMA, SDK_SETTINGS_IGNORED, known_settings

REGION_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
APP_REGION_URLS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}


def check_config(config: dict[str, Any]) -> list[str]:
    """Fail closed on the whole configuration before anything runs: an unknown setting (a typo
    must never reach production) or a value of the wrong type is a ConfigError. Returns the
    warnings for SDK settings that do nothing here. Messages never hold a sensitive value."""
    known = known_settings()
    for name in config:
        if name not in known:
            shown_name = shown(name, 60)
            close = did_you_mean(shown_name, known)
            raise ConfigError(
                f"unknown setting `{shown_name}`"
                + (close or " (`target-customerio --about` lists the settings)")
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
    mapping_workers: int | None  # None: chosen at start-up (mapping_processes.workers_for)
    checkpoint_interval_seconds: float
    change_detection: bool
    ledger_path: str
    ledger_url: str | None
    ledger_lock_timeout: float  # seconds a ledger held locked by another process is waited for
    full_resend: bool
    max_reject_ratio: float | None
    verify_sample: int = 0  # people read back after the run (verification.py); 0: off
    verify_timeout: float = 300.0
    on_verify_failure: str = "fail"
    qa_sample: int | None = None  # a QA sync's most people (qa_sync.py); None: a normal run
    qa_stratify: tuple[str, ...] = ()
    max_campaign_entries: int | None = None  # campaigns.py: None, no guard

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
    verify = _verification(config, dry_run)
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
        else None,
        checkpoint_interval_seconds=_positive(config, "checkpoint_interval_seconds", 60),
        change_detection=change_detection,
        ledger_path=config.get("ledger_path") or ".customerio-ledger.sqlite",
        ledger_url=config.get("ledger_url") or None,
        ledger_lock_timeout=_positive(config, "ledger_lock_timeout", 30),
        full_resend=bool(config.get("full_resend", False)),
        max_reject_ratio=_ratio(config.get("max_reject_ratio")),
        **verify,
        max_campaign_entries=max_campaign_entries_option(
            "setting `max_campaign_entries`", config.get("max_campaign_entries")
        ),
    )


def _verification(config: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """verify_sample, verify_timeout, on_verify_failure, qa_sample and qa_stratify, checked:
    reading back needs the App API key (not on a dry run, which reads nothing back)."""
    sample = int(config.get("verify_sample") or 0)
    qa = config.get("qa_sample")
    failure = config.get("on_verify_failure", "fail")
    if failure not in ("fail", "warn"):
        raise ConfigError(f"setting `on_verify_failure`: {failure!r} is not fail or warn")
    stratify = config.get("qa_stratify") or []
    if stratify and qa is None:
        raise ConfigError(
            "setting `qa_stratify` applies only with `qa_sample` (a QA sync): it would do nothing"
        )
    if stratify != list(dict.fromkeys(stratify)):
        raise ConfigError("setting `qa_stratify` names a column twice")
    no_key = not str(config.get("app_api_key") or "").strip()
    if (sample or qa is not None) and not dry_run and no_key:
        which = "qa_sample" if qa is not None else "verify_sample"
        raise ConfigError(
            f"setting `app_api_key` is required by `{which}`: people are read back from "
            "the App API (TARGET_CUSTOMERIO_APP_API_KEY)"
        )
    return {
        "verify_sample": sample,
        "verify_timeout": _positive(config, "verify_timeout", 300),
        "on_verify_failure": failure,
        "qa_sample": None if qa is None else int(qa),
        "qa_stratify": tuple(stratify),
    }


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
    # The value is never quoted: one that does not parse may still hold a password
    # (`http//user:pw@host`), and the redaction only knows the URLs it can parse.
    not_a_url = ConfigError(
        f"setting `{setting}` is not an http(s) URL such as https://track.customer.io "
        "(the value is not shown: it may hold a password)"
    )
    try:
        parsed = urlparse(url.strip())
        parsed.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise not_a_url from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise not_a_url
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
