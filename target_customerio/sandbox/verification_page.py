"""The QA page's "Last verification": the `verification` (and `qa_sync`) sections of a target's
run report, read from the report file the sandbox was given (`report_file`, --report-file):
how many sampled people were read back, how many held what the run sent, and each
discrepancy with its check."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any


def last_verification(path: str | Path) -> dict[str, Any]:
    """{"path", "exists", "verification": the section or None, "qa_sync", "finished_at"}."""
    out: dict[str, Any] = {"path": str(path), "exists": False, "verification": None}
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return out
    except ValueError:
        return {**out, "exists": True}
    report = report if isinstance(report, dict) else {}
    return {
        **out,
        "exists": True,
        "verification": report.get("verification"),
        "qa_sync": report.get("qa_sync"),
        "finished_at": report.get("finished_at"),
    }


def section(path: str, table: Any) -> str:
    """The page's section; `table(id, label, headings, rows, empty)` draws a sortable table."""
    last = last_verification(path)
    title = "<h2>Last verification <small class=muted>the run report</small></h2>"
    where = f"<code>{escape(path)}</code>"
    if not last["exists"]:
        return f"{title}<p class=muted>No run report at {where}.</p>"
    found = last["verification"]
    if not isinstance(found, dict):
        return f"{title}<p class=muted>The run in {where} verified nothing (verify_sample off).</p>"
    qa = last.get("qa_sync")
    qa_text = f" QA sync of {len(qa.get('people', []))} people." if isinstance(qa, dict) else ""
    problems = found.get("discrepancies") or []
    verdict = (
        "<span class='flag ok'>all ok</span>"
        if not problems
        else f"<span class='flag bad'>{len(problems)} discrepancies</span>"
    )
    stats = (
        f"<p class=stats>{verdict} <span><b>{found.get('checked', 0)}</b> of "
        f"<b>{found.get('sampled', 0)}</b> sampled people read back, "
        f"<b>{found.get('ok', 0)}</b> ok</span>"
        f"<span class=muted>{where}, finished {escape(str(last.get('finished_at')))}."
        f"{escape(qa_text)}</span></p>"
    )
    rows = [
        f"<tr><td>{escape(str(d.get('stream')))}</td><td>{escape(str(d.get('identifier')))}</td>"
        f"<td><span class='flag bad'>{escape(str(d.get('check')))}</span></td>"
        f"<td><code>{escape(json.dumps(d.get('sent'), ensure_ascii=False))}</code></td>"
        f"<td><code>{escape(json.dumps(d.get('found'), ensure_ascii=False))}</code></td></tr>"
        for d in problems
    ]
    headings = ["stream", "identifier", "check", "sent", "found"]
    return title + stats + table("verification", "discrepancies", headings, rows, "None.")
