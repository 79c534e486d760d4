"""The README and docs/*.md say what runs: every shell command in them is run, by this test or
by the test its marker names, or is marked as one that cannot run here, with the reason; every
relative link (and #anchor) resolves. The markers are described in tests/markdown_docs.py.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.markdown_docs import (
    REPO,
    Block,
    anchors,
    blocks,
    documents,
    github_anchor,
    indented_code,
    links,
    run_shell,
)

COMMAND_TIMEOUT_S = 60
NAMED_FILE = re.compile(r"(?:tests|\.ci)/[\w./-]+\w")


def shell_blocks() -> list[Block]:
    return [block for doc in documents() for block in blocks(doc) if block.is_shell]


def run_here() -> list[Block]:
    return [block for block in shell_blocks() if block.marker in (None, "run here")]


def test_every_shell_block_is_run_or_says_why_not():
    problems = []
    for block in shell_blocks():
        what = block.marker
        if what is None or what == "run here":
            continue
        if what.startswith("run by "):
            named = REPO / what.removeprefix("run by ").strip()
            if not named.is_file():
                problems.append(f"{block.where}: {named.relative_to(REPO)} does not exist")
            elif block.path.name not in named.read_text():
                problems.append(f"{block.where}: {named.name} never reads {block.path.name}")
        elif what.startswith("not run:") and what.removeprefix("not run:").strip():
            missing = [f for f in NAMED_FILE.findall(what) if not (REPO / f).exists()]
            problems.extend(
                f"{block.where}: the marker names {f}, which is missing" for f in missing
            )
        else:
            problems.append(
                f"{block.where}: unknown marker {what!r} (run here | run by FILE | not run: REASON)"
            )
    assert not problems, "\n".join(problems)


def test_commands_are_in_fenced_blocks():
    """An indented code block is invisible to the checks above: commands go in ```bash."""
    found = [
        f"{doc.relative_to(REPO)}:{line}" for doc in documents() for line in indented_code(doc)
    ]
    assert not found, f"indented code blocks (use a fenced ```bash block): {found}"


@pytest.mark.parametrize("block", run_here(), ids=lambda block: block.where)
def test_shell_block_runs(block: Block):
    """Each unmarked (or `run here`) block runs from the checkout, with the test's venv first on
    the PATH (as after `make setup`), and exits 0."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run_shell(block.text, cwd=REPO, env=env, timeout=COMMAND_TIMEOUT_S, what=block.where)


def test_some_blocks_run_here():
    """The markers cannot quietly turn every block into `not run`."""
    assert len(run_here()) >= 2


def broken_links(doc: Path) -> list[str]:
    """The relative links of `doc` that name no file, or no heading of a markdown file."""
    problems = []
    for line, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file, _, fragment = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            problems.append(f"{doc.name}:{line}: {target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            problems.append(f"{doc.name}:{line}: {target}: no heading with that anchor")
    return problems


def test_relative_links_resolve():
    problems = [p for doc in [*documents(), REPO / "CHANGELOG.md"] for p in broken_links(doc)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("title", "anchor"),
    [
        ("Reconcile: Customer.io's segment counts", "reconcile-customerios-segment-counts"),
        ("Try it: `make demo`", "try-it-make-demo"),
        ("Environments and `.env`", "environments-and-env"),
        ("The sandbox workspace (QA page)", "the-sandbox-workspace-qa-page"),
        (
            "Two forms of one package: plain and compiled",
            "two-forms-of-one-package-plain-and-compiled",
        ),
    ],
)
def test_anchor_as_github_makes_it(title: str, anchor: str):
    assert github_anchor(title) == anchor


def test_a_broken_link_is_found(tmp_path):
    """The link check can fail: a missing page and a missing anchor are reported, a link whose
    text wraps is read, and a good file and anchor pass."""
    doc = tmp_path / "page.md"
    doc.write_text("# Title\n\n[a](missing.md), [b](#nope), [c](#title), [d\ne](page.md#title)\n")
    assert broken_links(doc) == [
        "page.md:3: missing.md: no such file",
        "page.md:3: #nope: no heading with that anchor",
    ]
    assert [target for _, target in links(doc)][-1] == "page.md#title"


def test_every_docs_page_is_in_the_readme_table():
    """A newcomer finds the reference from the README: each page of docs/ has its row."""
    readme = (REPO / "README.md").read_text()
    pages = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))
    assert [page for page in pages if f"]({page})" not in readme] == []
