"""scripts/check-links.py: every relative link and anchor of the repository's Markdown resolves.

The checker reads files only (no network); the tests run it over the repository and over small
trees with one known fault each, so a checker that passed everything would fail here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check-links.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_links", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_links"] = module
    spec.loader.exec_module(module)
    return module


check_links = load()


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "repo"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def messages(root: Path) -> list[str]:
    return [p.render(root.resolve()) for p in check_links.check(root)]


def test_the_repository_docs_have_no_broken_link() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "every relative link and anchor" in proc.stdout
    # it did look at the docs: the README and the pages under docs/
    found = {p.relative_to(ROOT).as_posix() for p in check_links.markdown_files(ROOT)}
    assert {"README.md", "docs/install.md", "docs/contracts.md"} <= found
    assert not any(name.startswith(".") for name in found)


def test_resolving_links_and_anchors_pass(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "README.md": "See [install](docs/install.md#upgrade-and-uninstall), "
                     "[the RBAC table](docs/install.md#what-the-operator-may-do-rbac), "
                     "[again](docs/install.md#notes-1), [top](#readme), [dir](docs/), "
                     "![img](docs/pic%20one.png) and [code](docs/x.py#L3).\n\n"
                     "[ref]: docs/install.md\n",
        "docs/install.md": "# Install\n## Upgrade and uninstall\n"
                           "### What the operator may do (RBAC)\n"
                           "## Notes\n## Notes\n<a id=\"custom\"></a>\n[back](../README.md#readme)"
                           " [custom](#custom) [self](#install)\n",
        "docs/pic one.png": "",
        "docs/x.py": "",
    })
    (root / "README.md").write_text("# README\n" + (root / "README.md").read_text())
    assert messages(root) == []


@pytest.mark.parametrize(("text", "expected"), [
    ("[gone](docs/missing.md)", "README.md:1: link docs/missing.md: docs/missing.md does not"),
    ("[anchor](docs/a.md#nowhere)", "README.md:1: link docs/a.md#nowhere: no heading of docs/a.md "
                                    "has the anchor #nowhere"),
    ("[local](#nowhere)", "README.md:1: link #nowhere: no heading of README.md has the anchor"),
    ("[out](../shared/design/x.md)", "README.md:1: link ../shared/design/x.md points outside "
                                     "the repository"),
    ("[web](https://example.invalid/x)", "README.md:1: link to https://example.invalid/x leaves "
                                         "the repository"),
    ("<https://example.invalid/y>", "README.md:1: link to https://example.invalid/y leaves"),
    ("x\n\n[r]: docs/nothing.md", "README.md:3: link docs/nothing.md: docs/nothing.md does not"),
])
def test_each_fault_is_reported_with_file_and_line(tmp_path: Path, text: str,
                                                    expected: str) -> None:
    root = tree(tmp_path, {"README.md": text + "\n", "docs/a.md": "# A\n"})
    found = messages(root)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_code_is_not_read_as_links_and_hidden_dirs_are_skipped(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "README.md": "```\n[not a link](missing.md)\n```\n`[nor this](missing.md)`\n"
                     "~~~yaml\n# a comment, not a heading\n~~~\n"
                     "[heading in code](#a-comment-not-a-heading)\n",
        ".venv/lib/x.md": "[broken](nowhere.md)\n",
    })
    found = messages(root)
    assert found == ["README.md:8: link #a-comment-not-a-heading: no heading of README.md has the "
                     "anchor #a-comment-not-a-heading; fix the anchor (GitHub's slug of the "
                     "heading) or the heading"]


def test_the_command_fails_and_names_the_fault(tmp_path: Path) -> None:
    root = tree(tmp_path, {"docs/a.md": "[x](b.md)\n"})
    proc = subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "docs/a.md:1: link b.md: b.md does not exist (relative to docs)" in proc.stderr
    assert "1 broken link(s) in 1 Markdown files" in proc.stderr
