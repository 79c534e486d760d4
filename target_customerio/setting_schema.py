"""What the settings are: their JSON Schema with a description each (what --about, Meltano
and the Hub definition show), singer-sdk's own settings, and the --about text."""

from __future__ import annotations

import json
from typing import Any

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
            "from the App API; with it, the campaigns an event or segment route can start are "
            "read at start-up and counted, and verification reads people back (verify_sample, "
            "qa_sample). Secret: never logged. Required when a reconcile route's stream arrives "
            "(unless dry_run), or with max_campaign_entries, verify_sample or qa_sample.",
        },
        "app_api_url": {
            "type": "string",
            "description": "Overrides the region's App API base URL (https://api.customer.io, EU "
            "https://api-eu.customer.io); plain http:// only for loopback hosts.",
        },
        "verify_sample": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10000,
            "default": 0,
            "description": "Read back up to this many people the run sent something to, from "
            "Customer.io's App API, after everything else (needs app_api_key): profile, "
            "emails, attributes, failed changes, events. A discrepancy exits 9. 0: off.",
        },
        "verify_timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 86400,
            "default": 300,
            "description": "Seconds a verification keeps reading a mismatch again before it "
            "counts (Customer.io applies writes asynchronously).",
        },
        "on_verify_failure": {
            "type": "string",
            "enum": ["fail", "warn"],
            "default": "fail",
            "description": "A verification discrepancy: fail exits 9; warn logs it and exits 0 "
            "(the report's verification lists it either way).",
        },
        "qa_sample": {
            "type": "integer",
            "minimum": 1,
            "maximum": 10000,
            "description": "A QA sync: send at most this many people (the same ones every time "
            "for the same data, covering every person route and each qa_stratify value), with "
            "their events, write no STATE, and verify every one of them (needs app_api_key). "
            "Unset: a normal run.",
        },
        "qa_stratify": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "description": "Columns of person routes whose every value a QA sync covers (the "
            "lifecycle states: status, segment, ...). Unset: routes only.",
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
        "ledger_lock_timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "default": 30,
            "description": "Seconds to wait for a ledger another process holds locked (a "
            "SQLite file in use, a lock in the Postgres ledger) before the run stops (exit 1).",
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
        "max_campaign_entries": {
            "type": "integer",
            "minimum": 0,
            "description": "The most people one run may start a running Customer.io campaign "
            "for (needs app_api_key): the run stops before the first event past it, exit 10 "
            "(an event route's max_campaign_entries overrides it). Unset: no limit; the "
            "report's campaigns section still counts them.",
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
            "reading thread. Unset: read from a pipe (a tap beside it), the usable CPUs less 2 "
            "(0 on two CPUs); read from a file, the usable CPUs; at most 4.",
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


def known_settings() -> list[str]:
    return [*CONFIG_SCHEMA["properties"], *SDK_SETTINGS, *SDK_SETTINGS_IGNORED]


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
