"""The QA flags: what in a profile or an event would mislead segments, templates or a team.

Dates that are not unix seconds (strings, milliseconds), numbers and booleans sent as strings,
and duplicate profiles of one human (same email, or one's id equal to another's email).
"""

from __future__ import annotations

import re
from typing import Any

MS_THRESHOLD = 10**11  # unix seconds stay below this until the year 5138

_DATE_NAME = re.compile(r"(_at|_ts)$|(^|_)(date|datetime|timestamp|birthday|dob)(_|$)")
_DATE_NAME_CAMEL = re.compile(r"[a-z](At|Date|Timestamp)$")
_DATE_VALUE = re.compile(
    r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?",
    re.IGNORECASE,
)
_NUMBER_TEXT = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?")
# Names whose numeric-looking text is legitimately text (codes keep leading zeros, ids are opaque).
_TEXTUAL_NAME = re.compile(r"(^|_)(id|zip|postal|postcode|phone|code|sku|number)s?$", re.IGNORECASE)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def attribute_issue(name: str, value: Any) -> str | None:
    """Why this attribute would mislead segments or templates, or None."""
    date_name = bool(_DATE_NAME.search(name.lower()) or _DATE_NAME_CAMEL.search(name))
    if isinstance(value, str):
        if _DATE_VALUE.fullmatch(value.strip()) or (date_name and value):
            return "date as string"
        if _NUMBER_TEXT.fullmatch(value) and not _TEXTUAL_NAME.search(name):
            return "number as string"
        if value.lower() in ("true", "false"):
            return "boolean as string"
    elif (
        date_name
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value > MS_THRESHOLD
    ):
        return "date in milliseconds"
    return None


def attribute_issues(attributes: dict) -> dict[str, str]:
    issues = {}
    for name, value in attributes.items():
        issue = attribute_issue(name, value)
        if issue:
            issues[name] = issue
    return issues


def duplicates(people: list[dict]) -> dict[str, set[str]]:
    """cio_id → cio_ids of other profiles that look like the same human.

    Same email case-insensitively (identifier or `email` attribute), or one's id equal to the
    other's email: the classic result of identifying by id in one sync and by email in another.
    """
    by_email: dict[str, set[str]] = {}
    for p in people:
        for email in _emails(p):
            by_email.setdefault(email, set()).add(p["cio_id"])
    found: dict[str, set[str]] = {}
    for p in people:
        keys = set(_emails(p))
        if p["id"]:
            keys.add(p["id"].lower())
        for key in keys:
            for other in by_email.get(key, ()):
                if other != p["cio_id"]:
                    found.setdefault(p["cio_id"], set()).add(other)
                    found.setdefault(other, set()).add(p["cio_id"])
    return found


def _emails(person: dict) -> list[str]:
    values = [person.get("email"), person["attributes"].get("email")]
    return sorted({v.lower() for v in values if isinstance(v, str) and v})


def event_issues(event: dict) -> list[str]:
    issues = []
    timestamp = event.get("timestamp")
    if isinstance(timestamp, int) and timestamp > MS_THRESHOLD:
        issues.append("timestamp in milliseconds")
    for name, issue in attribute_issues(event.get("attributes") or {}).items():
        issues.append(f"{issue}: {name}")
    return issues
