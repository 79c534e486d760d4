"""Reading the project's markdown (README.md, docs/*.md) the way tests/test_docs.py checks it,
and running its shell blocks (tests/test_docs.py, tests/test_readme_install.py).

A fenced block in a shell language holds commands. The comment on the line before it (blank
lines between are allowed) says who runs them:

    <!-- docs-test: run here -->                   tests/test_docs.py runs the block (the default)
    <!-- docs-test: run by tests/test_x.py -->     that test runs it (it reads the block itself)
    <!-- docs-test: not run: REASON -->            it cannot run here; REASON says why, and which
                                                   test or CI step covers it, if any

Links: every relative `[text](target)` and `[text](#anchor)` must name a file that exists and,
for a markdown file, a heading whose GitHub anchor is the fragment.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<what>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target>[^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


def documents() -> list[Path]:
    """The markdown a user reads: the README and every page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text and its docs-test marker."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    marker: str | None  # what follows `docs-test:`, or None when unmarked

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of `path`, in order."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        language = opening["info"].strip().split(" ")[0].lower()
        body = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Block(path, index + 1, language, body, _marker_before(lines, index)))
        index = end + 1
    return found


def run_shell(
    script: str, *, cwd: Path, env: dict[str, str], timeout: float, what: str
) -> subprocess.CompletedProcess:
    """Run a block's commands as a reader would paste them (bash, stopping at the first failing
    command or pipe) and assert it exits 0; `what` names the block in the failure, which shows
    the commands and the last lines of their output."""
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{script}\n{tail}"
    return proc


def _marker_before(lines: list[str], index: int) -> str | None:
    previous = index - 1
    while previous >= 0 and not lines[previous].strip():
        previous -= 1
    match = MARKER.match(lines[previous].strip()) if previous >= 0 else None
    return match["what"] if match else None


def indented_code(path: Path) -> list[int]:
    """Lines that open an indented (4-space) code block outside any list or fence.

    Commands belong in fenced blocks with a language, where tests/test_docs.py sees them.
    """
    lines = path.read_text().splitlines()
    fenced = _fenced_lines(path)
    found = []
    for n, line in enumerate(lines):
        if n in fenced or not line.startswith("    ") or not line.strip():
            continue
        if n == 0 or lines[n - 1].strip():
            continue  # a continuation line, not the start of a block
        context = _paragraph_before(lines, n)
        if context is None or not _in_list(context):
            found.append(n + 1)
    return found


def _paragraph_before(lines: list[str], n: int) -> str | None:
    previous = n - 1
    while previous >= 0 and not lines[previous].strip():
        previous -= 1
    return lines[previous] if previous >= 0 else None


def _in_list(line: str) -> bool:
    """Whether `line` belongs to a list item (its own line or an indented continuation)."""
    stripped = line.lstrip()
    return (
        line.startswith("  ")
        or stripped.startswith(("- ", "* ", "+ "))
        or re.match(r"^\d+\.\s", stripped) is not None
    )


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link outside code blocks and inline code (a link's text may wrap)."""
    lines = path.read_text().splitlines()
    for n in _fenced_lines(path):
        lines[n] = ""
    prose = re.sub(r"`[^`\n]*`", lambda code: " " * len(code[0]), "\n".join(lines))
    return [
        (prose.count("\n", 0, match.start()) + 1, match["target"]) for match in LINK.finditer(prose)
    ]


def _fenced_lines(path: Path) -> set[int]:
    """0-based numbers of the lines inside fenced blocks, fences included."""
    return {
        n
        for block in blocks(path)
        for n in range(block.line - 1, block.line + block.text.count("\n") + 1)
    }


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of `path` (duplicates numbered -1, -2, …)."""
    seen: dict[str, int] = {}
    result = set()
    fenced = _fenced_lines(path)
    for n, line in enumerate(path.read_text().splitlines()):
        heading = HEADING.match(line)
        if heading is None or n in fenced:
            continue
        slug = github_anchor(heading["title"])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def github_anchor(title: str) -> str:
    """GitHub's heading anchor: markup dropped, lower-cased, punctuation removed, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    kept = "".join(
        char
        for char in text.strip().lower()
        if char in " -_" or unicodedata.category(char)[0] in {"L", "N"}
    )
    return kept.replace(" ", "-")
