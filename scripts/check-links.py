#!/usr/bin/env python3
"""Check every relative link and anchor in the repository's Markdown files, offline.

    scripts/check-links.py [ROOT]        # default: the repository this script is in

For each ``*.md`` file (hidden directories such as ``.venv`` and ``.git`` skipped) it reads the
inline links and images (``[text](target)``), reference definitions (``[id]: target``) and
autolinks (``<scheme:...>``) outside code, and reports, one line each (``file:line: ...``):

- a target with a scheme (``https:``, ``mailto:`` ...): the docs link only inside the repository;
- a path that leaves the repository (``../shared/...``) or does not exist;
- an anchor (``#section``, ``other.md#section``) that no heading (GitHub's slugs, ``-1``, ``-2``
  for repeats) or ``<a id=...>``/``<a name=...>`` of the target file defines.

Nothing is fetched: the check reads only files. Exit status 1 when anything is reported.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]+)>")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:id|name)=[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    message: str

    def render(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}: {self.message}"


def markdown_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*.md")):
        rel = path.relative_to(root).parts
        if any(p.startswith(".") or p in ("node_modules", "__pycache__") for p in rel[:-1]):
            continue
        out.append(path)
    return out


def outside_fences(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks (``` or ~~~)."""
    fence = ""
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = ""
            continue
        if m:
            fence = m.group(1)
            continue
        yield number, line


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, code spans blanked."""
    for number, line in outside_fences(text):
        yield number, CODE_SPAN.sub(lambda s: " " * len(s.group(0)), line)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text, lower case, punctuation dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # links -> their text
    text = re.sub(r"<[^>]+>", "", text)                          # inline HTML
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in outside_fences(text):
        out.update(HTML_ANCHOR.findall(line))
        h = HEADING.match(line)
        if h is None:
            continue
        base = slug(h.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def targets(text: str) -> Iterator[tuple[int, str]]:
    for number, line in prose_lines(text):
        for m in INLINE_LINK.finditer(line):
            yield number, m.group(1)
        for m in AUTOLINK.finditer(line):
            yield number, m.group(1)
        d = REF_DEF.match(line)
        if d is not None:
            yield number, d.group(1)


def check_file(path: Path, root: Path, cache: dict[Path, set[str]]) -> list[Problem]:
    def anchors_of(p: Path) -> set[str]:
        if p not in cache:
            cache[p] = anchors(p.read_text(encoding="utf-8"))
        return cache[p]

    problems: list[Problem] = []
    for line, target in targets(path.read_text(encoding="utf-8")):
        if not target:
            problems.append(Problem(path, line, "empty link target"))
            continue
        if SCHEME.match(target):
            problems.append(Problem(
                path, line, f"link to {target} leaves the repository; the docs link only to "
                "files in it: put what is needed in a doc here, or name it without a link"))
            continue
        raw_path, _, fragment = target.partition("#")
        rel = unquote(raw_path)
        if not rel:
            dest = path
        else:
            dest = ((root / rel.lstrip("/")) if rel.startswith("/") else path.parent / rel)
            dest = dest.resolve()
        if not dest.is_relative_to(root):
            problems.append(Problem(
                path, line, f"link {target} points outside the repository; link a file in it "
                "or drop the link"))
            continue
        if not dest.exists():
            problems.append(Problem(
                path, line, f"link {target}: {rel} does not exist (relative to "
                f"{path.parent.relative_to(root) or '.'}); fix the path or drop the link"))
            continue
        if (fragment and dest.is_file() and dest.suffix == ".md"
                and unquote(fragment) not in anchors_of(dest)):
            problems.append(Problem(
                path, line, f"link {target}: no heading of "
                f"{dest.relative_to(root)} has the anchor #{fragment}; "
                "fix the anchor (GitHub's slug of the heading) or the heading"))
    return problems


def check(root: Path) -> list[Problem]:
    root = root.resolve()
    cache: dict[Path, set[str]] = {}
    out: list[Problem] = []
    for path in markdown_files(root):
        out.extend(check_file(path, root, cache))
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for p in problems:
        print(p.render(root.resolve()), file=sys.stderr)
    files = len(markdown_files(root.resolve()))
    if problems:
        print(f"check-links: {len(problems)} broken link(s) in {files} Markdown files",
              file=sys.stderr)
        return 1
    print(f"check-links: every relative link and anchor of {files} Markdown files resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
