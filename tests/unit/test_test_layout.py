"""The test tree's own rules: no test module imports another one (shared code lives in
tests/builders/), a test's tier marker comes from its folder (tests/conftest.py), and every run
ends with the time per tier."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TIERS, misplaced, tier_of

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, dotted name) of every module ``path`` imports, relative imports resolved against
    its package under ``root`` (``from . import test_x`` names ``<package>.test_x``)."""
    package = path.relative_to(root).parent.parts
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return found


def imports_of_test_modules(path: Path, root: Path = ROOT) -> list[str]:
    """Where ``path`` imports a test module (``test_*``), as ``file:line imports name``."""
    hits: dict[tuple[int, str], None] = {}
    for line, name in imported_modules(path, root):
        parts = name.split(".")
        first = next((i for i, part in enumerate(parts) if part.startswith("test_")), None)
        if first is not None:
            hits[(line, ".".join(parts[:first + 1]))] = None
    return [f"{path.relative_to(root)}:{line} imports {module}" for line, module in hits]


def test_no_test_module_imports_another() -> None:
    offenders = [hit for path in sorted(TESTS.rglob("test_*.py"))
                 for hit in imports_of_test_modules(path)]
    assert not offenders, ("a test module imports another; move the shared code into "
                           "tests/builders/:\n" + "\n".join(offenders))


def test_every_spelling_of_such_an_import_is_seen(tmp_path: Path) -> None:
    probe = tmp_path / "tests" / "e2e" / "test_probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from .test_e2e import RUN\n"
                     "from . import conftest, test_gang\n"
                     "import tests.cluster.test_policy\n"
                     "from ..cluster.test_cli import run_cli\n"
                     "from tests.builders.e2e import RUN\n"
                     "from ..kube import wait_for\n"
                     "def f():\n    from .test_sweep import grid\n")
    hits = [h.split(" imports ")[1] for h in imports_of_test_modules(probe, tmp_path)]
    assert sorted(hits) == ["tests.cluster.test_cli", "tests.cluster.test_policy",
                            "tests.e2e.test_e2e", "tests.e2e.test_gang", "tests.e2e.test_sweep"]


def test_the_tier_is_the_folder() -> None:
    assert tier_of(TESTS / "unit" / "trainer" / "test_config.py") == "unit"
    assert tier_of(TESTS / "trainer" / "test_train.py") == "trainer"
    assert tier_of(TESTS / "test_loose.py") is None
    assert tier_of(ROOT / "benchmarks" / "test_x.py") is None
    assert set(TIERS) == {"unit", "cluster", "e2e", "trainer", "image", "chaos"}
    assert misplaced("trainer", {"trainer"}) is None
    assert misplaced("trainer", set()) is None
    why = misplaced("trainer", {"unit"})
    assert why is not None and "tests/unit/" in why
    assert misplaced(None, set()) is not None


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch test tree with the real tests/conftest.py and pytest settings."""
    root = tmp_path_factory.mktemp("tree")
    (root / "tests").mkdir()
    shutil.copy(TESTS / "conftest.py", root / "tests" / "conftest.py")
    (root / "tests" / "__init__.py").write_text("")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "__init__.py").touch()
    path.write_text("import pytest\n\n" + text)


def pytest_in(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=root, capture_output=True, text=True, timeout=120)


def test_markers_follow_folders_and_the_run_ends_with_time_per_tier(tree: Path) -> None:
    write(tree, "tests/unit/test_a.py", "def test_one():\n    assert True\n\n"
          "def test_two():\n    assert True\n")
    write(tree, "tests/trainer/test_b.py", "@pytest.mark.gpu\ndef test_three():\n    assert True\n")
    unit = pytest_in(tree, "-m", "unit", "tests")
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "2 passed, 1 deselected" in unit.stdout, unit.stdout
    gpu = pytest_in(tree, "-m", "trainer and gpu", "--co", "-q", "tests")
    assert "tests/trainer/test_b.py::test_three" in gpu.stdout, gpu.stdout
    every = pytest_in(tree, "tests")
    assert every.returncode == 0, every.stdout + every.stderr
    summary = every.stdout.split("time per tier", 1)[1]
    rows = {line.split()[0]: line.split()[1] for line in summary.splitlines()[1:]
            if line.strip() and not line.startswith("=")}
    assert rows["unit"] == "2" and rows["trainer"] == "1" and rows["all"] == "3", summary
    assert "wall" in summary


def test_a_module_marked_for_another_tier_is_a_collection_error(tree: Path) -> None:
    write(tree, "tests/trainer/test_c.py",
          "pytestmark = pytest.mark.unit\n\ndef test_four():\n    assert True\n")
    try:
        out = pytest_in(tree, "--co", "-q", "tests")
    finally:
        (tree / "tests" / "trainer" / "test_c.py").unlink()
    assert out.returncode != 0
    assert ("tests/trainer/test_c.py is marked unit but lives in tests/trainer/"
            in out.stdout + out.stderr), out.stdout + out.stderr
