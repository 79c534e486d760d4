"""Server-rendered QA pages: what would land in Customer.io, and what a retention team would regret.

`/` shows the segments with their live counts (and the count a reconcile run expected), the
campaigns with their entries, the people with their flags (checks.py), the last verification
of the target's run report (verification_page.py) and the newest run of the target's reject
file; `/people/ID` one profile; `/segments/ID` one segment's members;
`/campaigns/ID` who entered one campaign. Every table sorts (click a heading) and filters
(the search box) with the little script below: no external assets, the page works offline.
The state is kept in the URL's fragment (`#q.people=bob&sort.people=-2`), so a view
can be shared, and reloaded by a headless browser in the tests.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from target_customerio.sandbox import identity, rejects, verification_page
from target_customerio.sandbox.checks import (
    attribute_issues,
    duplicates,
    event_issues,
    json_type,
)

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox

MAX_PEOPLE = 1000
MAX_EVENTS = 500
MAX_REJECTS = 1000
MAX_RECORD_CHARS = 300

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
table.data th{cursor:pointer;user-select:none}
table.data th[data-dir=asc]:after{content:" \\25B2"}
table.data th[data-dir=desc]:after{content:" \\25BC"}
input.search{font:inherit;padding:4px 8px;border:1px solid #d0d7de;border-radius:6px;width:260px}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}pre{margin:0;white-space:pre-wrap}
.flag{display:inline-block;border-radius:10px;padding:1px 8px;margin:1px 2px;font-size:12px;
background:#fff4d4;color:#7a4d00;border:1px solid #f0d48a}
.flag.bad{background:#ffe3e3;color:#8a1c1c;border-color:#f3b1b1}
.flag.ok{background:#dafbe1;color:#116329;border-color:#a6e0b5}
a.flag{text-decoration:none}.flag.muted{background:#eef1f4;color:#57606a;border-color:#d0d7de}
.stats span{display:inline-block;margin-right:18px}.stats b{font-size:16px}
.muted{color:#57606a}a{color:#5a32c8}
"""

# Sort on a heading's click (numbers as numbers, via data-sort when the text is not the value),
# filter rows on the search box; both remembered in the URL fragment, per table id.
_JS = """
(function(){
var state={};location.hash.slice(1).split('&').forEach(function(p){
  var i=p.indexOf('=');
  if(i>0)state[decodeURIComponent(p.slice(0,i))]=decodeURIComponent(p.slice(i+1));});
function save(){var parts=[];for(var k in state)if(state[k]!=='')
  parts.push(encodeURIComponent(k)+'='+encodeURIComponent(state[k]));
  history.replaceState(null,'',parts.length?'#'+parts.join('&'):location.pathname);}
function key(td){if(!td)return'';var v=td.hasAttribute('data-sort')?td.getAttribute('data-sort'):
  td.textContent.trim();var n=Number(v);return v!==''&&isFinite(n)?n:v.toLowerCase();}
function cmp(x,y){if(typeof x!==typeof y){x=String(x);y=String(y);}return x<y?-1:x>y?1:0;}
document.querySelectorAll('table.data').forEach(function(t){
  var body=t.tBodies[0],heads=t.tHead.rows[0].cells,id=t.id;
  var box=document.createElement('input');box.type='search';box.className='search';
  box.placeholder='Search '+(t.getAttribute('data-label')||'rows');t.parentNode.insertBefore(box,t);
  function filter(){var q=box.value.toLowerCase();state['q.'+id]=box.value;
    Array.prototype.forEach.call(body.rows,function(r){if(r.classList.contains('empty'))return;
      r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});}
  function sort(col,asc){
    Array.prototype.forEach.call(heads,function(h){h.removeAttribute('data-dir');});
    heads[col].setAttribute('data-dir',asc?'asc':'desc');state['sort.'+id]=(asc?'':'-')+(col+1);
    var rows=Array.prototype.slice.call(body.rows)
      .filter(function(r){return!r.classList.contains('empty');});
    rows.sort(function(a,b){return cmp(key(a.cells[col]),key(b.cells[col]))*(asc?1:-1);});
    rows.forEach(function(r){body.appendChild(r);});}
  box.addEventListener('input',function(){filter();save();});
  Array.prototype.forEach.call(heads,function(h,col){h.title='sort';h.addEventListener('click',
    function(){sort(col,h.getAttribute('data-dir')!=='asc');save();});});
  if(state['q.'+id]){box.value=state['q.'+id];filter();}
  var s=parseInt(state['sort.'+id]||'',10);if(s&&Math.abs(s)<=heads.length)sort(Math.abs(s)-1,s>0);
});
})();
"""


def render(sandbox: Sandbox, path: str) -> tuple[int, str]:
    """The page for a path: (status, HTML)."""
    html: str | None = None
    if path == "/":
        html = render_index(sandbox)
    elif path.startswith("/people/"):
        html = render_person(sandbox, unquote(path[len("/people/") :]))
    elif path.startswith("/segments/") and path[len("/segments/") :].isdigit():
        html = render_segment(sandbox, int(path[len("/segments/") :]))
    elif path.startswith("/campaigns/") and path[len("/campaigns/") :].isdigit():
        html = render_campaign(sandbox, int(path[len("/campaigns/") :]))
    if html is None:
        return 404, render_not_found(path)
    return 200, html


# ---- pieces ---------------------------------------------------------------------------------


def _layout(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        "<header><h1><a href='/'>Customer.io sandbox</a> <small>local Track API · QA</small>"
        f"</h1></header><main>{body}</main><script>{_JS}</script></body></html>"
    )


def _table(table_id: str, label: str, headings: list[str], rows: list[str], empty: str) -> str:
    """A sortable, searchable table (class data); `empty` is the row shown when there is none."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    filler = f"<tr class=empty><td colspan={len(headings)} class=muted>{escape(empty)}</td></tr>"
    return (
        f"<table class=data id={table_id} data-label='{escape(label)}'><thead><tr>{head}</tr>"
        f"</thead><tbody>{''.join(rows) or filler}</tbody></table>"
    )


def _facts(facts: list[tuple[str, str]]) -> str:
    """A page's summary: one `name | value` row each (values are HTML already)."""
    rows = "".join(f"<tr><th>{escape(name)}</th><td>{value}</td></tr>" for name, value in facts)
    return f"<table><tbody>{rows}</tbody></table>"


def _first_of(total: int) -> str:
    """The note under a table that shows only its first MAX_PEOPLE rows."""
    if total <= MAX_PEOPLE:
        return ""
    return f"<p class=muted>Showing the first {MAX_PEOPLE} of {total}.</p>"


def _flag(text: str, kind: str = "", title: str = "") -> str:
    title_attr = f" title='{escape(title)}'" if title else ""
    return f"<span class='flag {kind}'{title_attr}>{escape(text)}</span>"


def _person_link(cio_id: str, text: str | None = None) -> str:
    return f"<a href='/people/{escape(quote(cio_id, safe=''))}'>{escape(text or cio_id)}</a>"


def _segment_link(segment: dict) -> str:
    return f"<a href='/segments/{segment['id']}'>{escape(segment['name'])}</a>"


def _or_dash(value: Any) -> str:
    return escape(str(value)) if value not in (None, "") else "<span class=muted>—</span>"


def _num(value: int) -> str:
    return f"<td class=num data-sort={int(value)}>{int(value)}</td>"


def _condition(condition: str | None) -> str:
    return f"<code>{escape(condition)}</code>" if condition else "<span class=muted>—</span>"


def _utc(timestamp: Any) -> str:
    if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool):
        return "—"
    try:
        return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def person_flags(
    person: dict,
    dupes: dict[str, set[str]],
    ghosts: set[str] | frozenset[str] = frozenset(),
    refused: int = 0,
) -> list[str]:
    flags = []
    if person["cio_id"] in ghosts:
        flags.append(
            _flag("ghost profile", "bad", "created by an event or a reference, never identified")
        )
    if refused:
        flags.append(
            _flag(
                f"identity conflict ×{refused}",
                "bad",
                "an identify set an email or id another person holds: Customer.io refused it "
                "(failed_attribute_change)",
            )
        )
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


def reconcile_flag(segment: dict) -> str:
    """The live count against the count a reconcile run expected (record_reconcile)."""
    expected = segment.get("expected")
    if expected is None:
        return "<span class=muted>—</span>"
    drift = segment["count"] - expected
    if drift == 0:
        return _flag("matches", "ok")
    return _flag(f"drift {drift:+d}", "bad", "live count minus the count the database expects")


# ---- the index ------------------------------------------------------------------------------


def render_index(sandbox: Sandbox) -> str:
    store, counters = sandbox.store, sandbox.counters()
    people = store.people()
    counts = store.event_counts()
    dupes = duplicates(people)
    ghosts, refused = identity.ghosts(store), identity.conflicts(store)

    def flags(p: dict) -> list[str]:
        return person_flags(p, dupes, ghosts, refused.get(p["cio_id"], 0))

    rows = [
        "<tr>"
        f"<td>{_person_link(p['cio_id'])}</td><td>{_or_dash(p['id'])}</td>"
        f"<td>{_or_dash(p['email'])}</td>{_num(len(p['attributes']))}"
        f"{_num(counts.get(p['cio_id'], 0))}"
        f"<td>{''.join(flags(p))}</td></tr>"
        for p in people[:MAX_PEOPLE]
    ]
    flagged = sum(1 for p in people if flags(p))
    more = _first_of(len(people))
    stats = (
        "<p class=stats>"
        f"<span><b>{len(people)}</b> people</span>"
        f"<span><b>{sum(counts.values())}</b> events</span>"
        f"<span><b>{flagged}</b> flagged</span>"
        f"<span><b>{sum(refused.values())}</b> identity conflicts</span>"
        f"<span><b>{len(ghosts)}</b> ghost profiles</span>"
        f"<span><b>{counters.get('requests', 0)}</b> API requests</span>"
        f"<span><b>{counters.get('duplicate_events_dropped', 0)}</b> duplicate events dropped"
        "</span>"
        f"<span><b>{counters.get('rate_limited', 0)}</b> rate-limited</span></p>"
    )
    table = _table(
        "people",
        "people",
        ["cio_id", "id", "email", "attributes", "events", "flags"],
        rows,
        "No people yet.",
    )
    campaigns = sandbox.campaigns()  # shown once the workspace has any
    body = (
        f"{stats}<h2>Segments</h2>{_segments_table(sandbox.segments())}"
        + (f"<h2>Campaigns</h2>{_campaigns_table(campaigns)}" if campaigns else "")
        + f"<h2>People</h2>{table}{more}"
    )
    if sandbox.report_file:
        body += verification_page.section(sandbox.report_file, _table)
    if sandbox.reject_file:
        body += _rejects_section(sandbox.reject_file)
    return _layout("People · Customer.io sandbox", body)


def _segments_table(segments: list[dict]) -> str:
    rows = [
        f"<tr><td class=num data-sort={s['id']}>{s['id']}</td><td>{_segment_link(s)}</td>"
        f"<td>{escape(s['kind'])}</td>"
        f"<td>{_condition(s['condition'])}</td>"
        f"{_num(s['count'])}"
        f"<td class=num>{_or_dash(s['expected'])}</td><td>{reconcile_flag(s)}</td></tr>"
        for s in segments
    ]
    return _table(
        "segments",
        "segments",
        ["id", "name", "type", "condition", "count", "expected", "reconcile"],
        rows,
        "No segments: POST /_sandbox/segments, or start with --segments FILE.",
    )


def _trigger(campaign: dict) -> str:
    if campaign["event_name"]:
        return f"event <code>{escape(campaign['event_name'])}</code>"
    return "segment " + ", ".join(
        f"<a href='/segments/{s}'>{s}</a>" for s in campaign["trigger_segment_ids"]
    )


def _campaigns_table(campaigns: list[dict]) -> str:
    rows = [
        f"<tr><td class=num data-sort={c['id']}>{c['id']}</td>"
        f"<td><a href='/campaigns/{c['id']}'>{escape(c['name'])}</a></td>"
        f"<td>{_flag(c['state'], 'ok' if c['state'] == 'running' else 'muted')}</td>"
        f"<td>{_trigger(c)}</td>{_num(c['entries'])}</tr>"
        for c in campaigns
    ]
    return _table(
        "campaigns",
        "campaigns",
        ["id", "name", "state", "trigger", "entries"],
        rows,
        "No campaigns: POST /_sandbox/campaigns, or start with --campaigns FILE.",
    )


def render_campaign(sandbox: Sandbox, campaign_id: int) -> str | None:
    """One campaign: who entered it, and what started each entry (an event id, a segment)."""
    campaign = sandbox.campaign_store.get(campaign_id)
    if campaign is None:
        return None
    entries = sandbox.campaign_entries(campaign_id)
    summary = _facts(
        [
            ("id", str(campaign["id"])),
            ("state", escape(campaign["state"])),
            (
                "trigger",
                f"{_trigger(campaign)} <span class=muted>(events more than 72 hours old start "
                "nobody; one entry per event id)</span>",
            ),
            ("entries", str(len(entries))),
        ]
    )
    rows = [
        f"<tr><td>{_person_link(e['cio_id'])}</td><td>{_or_dash(e['person_id'])}</td>"
        f"<td>{_or_dash(e['person_email'])}</td><td><code>{escape(e['trigger'])}</code></td>"
        f"<td data-sort={int(e['entered_at'])}>{_utc(e['entered_at'])}</td></tr>"
        for e in entries[:MAX_PEOPLE]
    ]
    table = _table(
        "entries",
        "entries",
        ["cio_id", "id", "email", "started by", "entered"],
        rows,
        "Nobody entered.",
    )
    more = _first_of(len(entries))
    body = f"<h2>{escape(campaign['name'])}</h2>{summary}<h3>Entries</h3>{table}{more}"
    return _layout(f"{campaign['name']} · Customer.io sandbox", body)


def _rejects_section(path: str) -> str:
    run = rejects.newest_run(path)
    if not run["exists"]:
        return f"<h2>Rejected records</h2><p class=muted>No reject file at {escape(path)}.</p>"
    lines = run["lines"]
    rows = [
        f"<tr><td>{_or_dash(e.get('stream'))}</td><td>{_or_dash(e.get('reason'))}</td>"
        f"<td>{_or_dash(e.get('field'))}</td><td>{_or_dash(e.get('message'))}</td>"
        f"<td><code>{escape(_short(e.get('record')))}</code></td>"
        f"<td>{_or_dash(e.get('rejected_at'))}</td></tr>"
        for e in lines[-MAX_REJECTS:]
    ]
    shown = (f"; showing the last {MAX_REJECTS}" if len(lines) > MAX_REJECTS else "") + (
        "; the file's start was not read" if run["truncated"] else ""
    )
    return (
        f"<h2>Rejected records <small class=muted>newest run</small></h2>"
        f"<p class=muted><code>{escape(path)}</code>: {len(lines)} line(s){shown}.</p>"
        + _table(
            "rejects",
            "rejects",
            ["stream", "reason", "field", "message", "record", "rejected at"],
            rows,
            "No rejected records.",
        )
    )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_RECORD_CHARS else text[:MAX_RECORD_CHARS] + "…"


# ---- one person, one segment ----------------------------------------------------------------


def render_person(sandbox: Sandbox, cio_id: str) -> str | None:
    store = sandbox.store
    person = store.person(cio_id=cio_id)
    if person is None:
        return None
    dupes = duplicates(store.people())
    refused = identity.conflicts(store).get(person["cio_id"], 0)
    flags = person_flags(person, dupes, identity.ghosts(store), refused)
    by_id = {s["id"]: s for s in sandbox.segment_store.all()}
    member_of = [by_id[i] for i in sandbox.segment_store.of_person(person["cio_id"])]
    updated = _utc(person["updated"]) if person["updated"] else "—"
    identifiers = _facts(
        [
            ("cio_id", f"<code>{escape(person['cio_id'])}</code>"),
            ("id", _or_dash(person["id"])),
            ("email", _or_dash(person["email"])),
            ("updated", updated),
            ("flags", "".join(flags) or "—"),
            ("segments", ", ".join(_segment_link(s) for s in member_of) or "—"),
        ]
    )
    title = person["email"] or person["id"] or person["cio_id"]
    body = (
        f"<h2>{escape(title)}</h2>{identifiers}"
        f"<h3>Attributes ({len(person['attributes'])})</h3>{_attributes_table(person)}"
        f"<h3>Activity</h3>{_events_table(store.events(cio_id=person['cio_id']))}"
        f"<h3>Identity activity</h3>{_identity_table(store, person['cio_id'])}"
    )
    return _layout(f"{title} · Customer.io sandbox", body)


def render_segment(sandbox: Sandbox, segment_id: int) -> str | None:
    segment = sandbox.segment(segment_id)
    if segment is None:
        return None
    members = sandbox.segment_members(segment_id)
    summary = _facts(
        [
            ("id", str(segment["id"])),
            ("type", escape(segment["kind"])),
            ("condition", _condition(segment["condition"])),
            ("live count", str(segment["count"])),
            ("expected", f"{_or_dash(segment['expected'])} {reconcile_flag(segment)}"),
        ]
    )
    rows = [
        f"<tr><td>{_person_link(p['cio_id'])}</td><td>{_or_dash(p['id'])}</td>"
        f"<td>{_or_dash(p['email'])}</td>{_num(len(p['attributes']))}</tr>"
        for p in members[:MAX_PEOPLE]
    ]
    table = _table(
        "members", "members", ["cio_id", "id", "email", "attributes"], rows, "No members."
    )
    more = _first_of(len(members))
    body = f"<h2>{escape(segment['name'])}</h2>{summary}<h3>Members</h3>{table}{more}"
    return _layout(f"{segment['name']} · Customer.io sandbox", body)


def _attributes_table(person: dict) -> str:
    issues = attribute_issues(person["attributes"])
    rows = [
        f"<tr><td><code>{escape(name)}</code></td><td>{json_type(value)}</td>"
        f"<td><code>{escape(json.dumps(value, ensure_ascii=False))}</code></td>"
        f"<td>{_flag(issues[name]) if name in issues else ''}</td></tr>"
        for name, value in sorted(person["attributes"].items())
    ]
    return _table(
        "attributes", "attributes", ["name", "type", "value", "flag"], rows, "No attributes."
    )


def _events_table(events: list[dict]) -> str:
    events = sorted(events, key=lambda e: (e["timestamp"] or 0, e["received_at"]), reverse=True)
    rows = [
        f"<tr><td><b>{escape(e['name'])}</b></td><td><code>{escape(e['id'])}</code></td>"
        f"<td data-sort={int(e['timestamp'] or 0)}>{_utc(e['timestamp'])}<br>"
        f"<span class=muted>{escape(str(e['timestamp']))}</span></td>"
        f"<td><pre>{escape(json.dumps(e['attributes'], indent=1, ensure_ascii=False))}</pre></td>"
        f"<td>{''.join(_flag(i) for i in event_issues(e))}</td></tr>"
        for e in events[:MAX_EVENTS]
    ]
    more = ""
    if len(events) > MAX_EVENTS:
        more = f"<p class=muted>Showing {MAX_EVENTS} of {len(events)}.</p>"
    table = _table(
        "events", "events", ["event", "id (ULID)", "timestamp", "data", "flags"], rows, "No events."
    )
    return table + more


def _identity_table(store: Any, cio_id: str) -> str:
    """The person's refused identifier changes and merges (the store's activity log)."""
    rows = []
    for a in reversed(store.activities(cio_id)):
        if a["type"] not in ("failed_attribute_change", "profile_merge"):
            continue
        data = a["data"]
        attribute, value = data.get("attribute"), data.get("value")
        holder = (
            store.person(**{attribute: value})
            if attribute in ("id", "email") and isinstance(value, str)
            else None
        )
        what = (
            f"{escape(str(attribute))} = {escape(str(value))}, held by "
            f"{_person_link(holder['cio_id'])}"
            if holder is not None and holder["cio_id"] != cio_id
            else escape(json.dumps(data, ensure_ascii=False))
        )
        kind = "bad" if a["type"] == "failed_attribute_change" else "muted"
        rows.append(
            f"<tr><td>{_flag(a['type'], kind)}</td><td>{what}</td>"
            f"<td data-sort={a['timestamp']}>{_utc(a['timestamp'])}</td></tr>"
        )
    return _table(
        "identity", "identity activity", ["type", "what", "when"], rows, "No identity activity."
    )


def render_not_found(path: str) -> str:
    return _layout("Not found", f"<h2>Not found</h2><p><code>{escape(path)}</code></p>")
