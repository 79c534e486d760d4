"""Server-rendered QA pages: what would land in Customer.io, and what a retention team would regret.

Flags: duplicate profiles, dates that are not unix seconds, numbers and booleans sent as strings,
event timestamps in milliseconds.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from html import escape
from typing import Any
from urllib.parse import quote

MAX_PEOPLE = 1000
MAX_EVENTS = 500
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

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}
header{background:#2b1a5a;color:#fff;padding:12px 24px}header a{color:#fff;text-decoration:none}
header h1{font-size:18px;margin:0}header small{opacity:.75}
main{padding:16px 24px;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de;
margin:8px 0 20px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}pre{margin:0;white-space:pre-wrap}
.flag{display:inline-block;border-radius:10px;padding:1px 8px;margin:1px 2px;font-size:12px;
background:#fff4d4;color:#7a4d00;border:1px solid #f0d48a}
.flag.bad{background:#ffe3e3;color:#8a1c1c;border-color:#f3b1b1}
a.flag{text-decoration:none}.flag.muted{background:#eef1f4;color:#57606a;border-color:#d0d7de}
.stats span{display:inline-block;margin-right:18px}.stats b{font-size:16px}
.muted{color:#57606a}a{color:#5a32c8}
"""


# ---- checks ---------------------------------------------------------------------------------


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


# ---- rendering ------------------------------------------------------------------------------


def _layout(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        "<header><h1><a href='/'>Customer.io sandbox</a> <small>local Track API · QA</small>"
        f"</h1></header><main>{body}</main></body></html>"
    )


def _flag(text: str, kind: str = "", title: str = "") -> str:
    title_attr = f" title='{escape(title)}'" if title else ""
    return f"<span class='flag {kind}'{title_attr}>{escape(text)}</span>"


def _person_link(cio_id: str, text: str | None = None) -> str:
    return f"<a href='/people/{escape(quote(cio_id, safe=''))}'>{escape(text or cio_id)}</a>"


def _or_dash(value: Any) -> str:
    return escape(str(value)) if value not in (None, "") else "<span class=muted>—</span>"


def _utc(timestamp: Any) -> str:
    if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool):
        return "—"
    try:
        return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def person_flags(person: dict, dupes: dict[str, set[str]]) -> list[str]:
    flags = []
    for other in sorted(dupes.get(person["cio_id"], ())):
        href = escape(f"/people/{quote(other, safe='')}")
        flags.append(
            f"<a class='flag bad' href='{href}' title='same email, or id equals an email'>"
            f"duplicate of {escape(other)}</a>"
        )
    for name, issue in sorted(attribute_issues(person["attributes"]).items()):
        flags.append(_flag(f"{issue}: {name}", "", "dates must be unix seconds, numbers numbers"))
    if person.get("suppressed"):
        flags.append(_flag("suppressed", "muted"))
    return flags


def render_index(store: Any, counters: dict) -> str:
    people = store.people()
    counts = store.event_counts()
    dupes = duplicates(people)
    rows = []
    for p in people[:MAX_PEOPLE]:
        rows.append(
            "<tr>"
            f"<td>{_person_link(p['cio_id'])}</td><td>{_or_dash(p['id'])}</td>"
            f"<td>{_or_dash(p['email'])}</td><td class=num>{len(p['attributes'])}</td>"
            f"<td class=num>{counts.get(p['cio_id'], 0)}</td>"
            f"<td>{''.join(person_flags(p, dupes))}</td></tr>"
        )
    flagged = sum(1 for p in people if person_flags(p, dupes))
    more = (
        f"<p class=muted>Showing the first {MAX_PEOPLE} of {len(people)}.</p>"
        if len(people) > MAX_PEOPLE
        else ""
    )
    stats = (
        "<p class=stats>"
        f"<span><b>{len(people)}</b> people</span>"
        f"<span><b>{sum(counts.values())}</b> events</span>"
        f"<span><b>{flagged}</b> flagged</span>"
        f"<span><b>{counters.get('requests', 0)}</b> API requests</span>"
        f"<span><b>{counters.get('duplicate_events_dropped', 0)}</b> duplicate events dropped"
        "</span>"
        f"<span><b>{counters.get('rate_limited', 0)}</b> rate-limited</span></p>"
    )
    table = (
        "<table><thead><tr><th>cio_id</th><th>id</th><th>email</th><th>attributes</th>"
        "<th>events</th><th>flags</th></tr></thead><tbody>"
        + ("".join(rows) or "<tr><td colspan=6 class=muted>No people yet.</td></tr>")
        + "</tbody></table>"
    )
    return _layout("People · Customer.io sandbox", f"<h2>People</h2>{stats}{table}{more}")


def render_person(store: Any, cio_id: str) -> str | None:
    person = store.person(cio_id=cio_id)
    if person is None:
        return None
    dupes = duplicates(store.people())
    identifiers = (
        "<table><tbody>"
        f"<tr><th>cio_id</th><td><code>{escape(person['cio_id'])}</code></td></tr>"
        f"<tr><th>id</th><td>{_or_dash(person['id'])}</td></tr>"
        f"<tr><th>email</th><td>{_or_dash(person['email'])}</td></tr>"
        f"<tr><th>updated</th><td>{_utc(person['updated']) if person['updated'] else '—'}</td></tr>"
        f"<tr><th>flags</th><td>{''.join(person_flags(person, dupes)) or '—'}</td></tr>"
        "</tbody></table>"
    )
    title = person["email"] or person["id"] or person["cio_id"]
    body = (
        f"<h2>{escape(title)}</h2>{identifiers}"
        f"<h3>Attributes ({len(person['attributes'])})</h3>{_attributes_table(person)}"
        f"<h3>Activity</h3>{_events_table(store.events(cio_id=person['cio_id']))}"
    )
    return _layout(f"{title} · Customer.io sandbox", body)


def _attributes_table(person: dict) -> str:
    issues = attribute_issues(person["attributes"])
    rows = [
        f"<tr><td><code>{escape(name)}</code></td><td>{json_type(value)}</td>"
        f"<td><code>{escape(json.dumps(value, ensure_ascii=False))}</code></td>"
        f"<td>{_flag(issues[name]) if name in issues else ''}</td></tr>"
        for name, value in sorted(person["attributes"].items())
    ]
    return (
        "<table><thead><tr><th>name</th><th>type</th><th>value</th><th>flag</th></tr></thead>"
        "<tbody>"
        + ("".join(rows) or "<tr><td colspan=4 class=muted>No attributes.</td></tr>")
        + "</tbody></table>"
    )


def _events_table(events: list[dict]) -> str:
    events = sorted(events, key=lambda e: (e["timestamp"] or 0, e["received_at"]), reverse=True)
    rows = [
        f"<tr><td><b>{escape(e['name'])}</b></td><td><code>{escape(e['id'])}</code></td>"
        f"<td>{_utc(e['timestamp'])}<br><span class=muted>{escape(str(e['timestamp']))}</span></td>"
        f"<td><pre>{escape(json.dumps(e['attributes'], indent=1, ensure_ascii=False))}</pre></td>"
        f"<td>{''.join(_flag(i) for i in event_issues(e))}</td></tr>"
        for e in events[:MAX_EVENTS]
    ]
    more = ""
    if len(events) > MAX_EVENTS:
        more = f"<p class=muted>Showing {MAX_EVENTS} of {len(events)}.</p>"
    return (
        "<table><thead><tr><th>event</th><th>id (ULID)</th><th>timestamp</th><th>data</th>"
        "<th>flags</th></tr></thead><tbody>"
        + ("".join(rows) or "<tr><td colspan=5 class=muted>No events.</td></tr>")
        + f"</tbody></table>{more}"
    )


def render_not_found(path: str) -> str:
    return _layout("Not found", f"<h2>Not found</h2><p><code>{escape(path)}</code></p>")
