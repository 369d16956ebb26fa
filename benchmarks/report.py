"""Shared by the benchmark scripts: write one named section of BENCHMARKS.md in place."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_section(title: str, script: str, lines: list[str]) -> None:
    """Replace (or append) `## {title}`: the machine line, lines[0] as the lead, the rest."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    env = (f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s)"
           " shared with other work (figures are indicative); "
           f"{time.strftime('%Y-%m-%d')}; `python benchmarks/{script}`.")
    section = f"## {title}\n\n{env}\n\n{lines[0]}:\n\n" + "\n".join(lines[1:]) + "\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote the {title} section of {path}", file=sys.stderr)
