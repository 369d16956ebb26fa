"""The import contracts of pyproject.toml ([tool.importlinter]) hold on the real tree, and each
one breaks when a module crosses its line (checked on a copy of the four packages with one
import added, so the tree itself is never touched)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {"finetune_api": "api", "finetune_operator": "operator",
                 "finetune_trainer": "trainer", "finetune_dev": "dev",
                 "finetune_server": "server"}
CONTRACTS = {"api-stands-alone", "trainer-uses-only-the-api", "products-never-import-dev",
             "pure-cores-never-talk-to-the-api", "operator-never-imports-the-trainer",
             "server-stands-alone"}
PURE_CORES = {"finetune_operator.admission", "finetune_operator.jobs.decide",
              "finetune_operator.jobs.reconcile", "finetune_operator.jobs.pods",
              "finetune_operator.jobs.writes", "finetune_operator.jobs.build",
              "finetune_operator.reports.model", "finetune_operator.sweep.plan",
              "finetune_operator.sweep.expand", "finetune_operator.view"}
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]


def lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def verdicts(output: str) -> dict[str, str]:
    """contract id -> KEPT or BROKEN, from lint-imports' summary (names start with the id)."""
    flat = re.sub(r"\s*\n\s*", " ", output)
    return {cid: m.group(1) for cid in CONTRACTS
            if (m := re.search(rf"{re.escape(cid)}:.*? (KEPT|BROKEN)\b", flat))}


def test_the_configured_contracts_are_the_layouts() -> None:
    cfg = config()
    assert set(cfg["root_packages"]) == set(DISTRIBUTIONS)
    assert cfg["include_external_packages"] is True
    by_id = {c["id"]: c for c in cfg["contracts"]}
    assert set(by_id) >= CONTRACTS
    for cid in CONTRACTS:
        assert by_id[cid]["name"].startswith(f"{cid}:"), "the summary is read by the id"
    pure = by_id["pure-cores-never-talk-to-the-api"]
    assert set(pure["source_modules"]) >= PURE_CORES
    assert {"kubernetes", "kopf", "urllib3", "finetune_operator.kube"} <= set(
        pure["forbidden_modules"])


def test_the_real_tree_keeps_every_contract() -> None:
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert verdicts(out.stdout) == dict.fromkeys(CONTRACTS, "KEPT"), out.stdout


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five packages and pyproject.toml, copied (sources only)."""
    root = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for package, dist in DISTRIBUTIONS.items():
        shutil.copytree(ROOT / dist / package, root / dist / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


# (contract, module file, the import added to it): one direct and, where it matters, one
# indirect crossing per contract
CROSSINGS = [
    ("api-stands-alone", "api/finetune_api/labels.py", "import kubernetes"),
    ("api-stands-alone", "api/finetune_api/spec.py", "from finetune_operator import settings"),
    ("api-stands-alone", "api/finetune_api/times.py", "import torch"),
    ("trainer-uses-only-the-api", "trainer/finetune_trainer/config.py", "import kopf"),
    ("trainer-uses-only-the-api", "trainer/finetune_trainer/progress.py",
     "from finetune_operator.reports import model"),
    ("products-never-import-dev", "operator/finetune_operator/cli/__main__.py",
     "import finetune_dev.tiny"),
    ("products-never-import-dev", "trainer/finetune_trainer/config.py",
     "from finetune_dev import gpucheck"),
    ("pure-cores-never-talk-to-the-api", "operator/finetune_operator/jobs/writes.py",
     "from finetune_operator.kube import client"),
    ("pure-cores-never-talk-to-the-api", "operator/finetune_operator/admission/policy.py",
     "import urllib3"),
    # indirect: lifecycle imports kopf
    ("pure-cores-never-talk-to-the-api", "operator/finetune_operator/sweep/plan.py",
     "from finetune_operator import lifecycle"),
    ("pure-cores-never-talk-to-the-api", "operator/finetune_operator/view/describe.py",
     "import kopf"),
    ("operator-never-imports-the-trainer", "operator/finetune_operator/http/server.py",
     "import finetune_trainer.checkpoint"),
    ("server-stands-alone", "server/finetune_server/engine.py", "import finetune_operator"),
    ("server-stands-alone", "server/finetune_server/args.py", "import kubernetes"),
]


@pytest.mark.parametrize(("contract", "module", "line"), CROSSINGS,
                         ids=[f"{c}-{Path(m).stem}-{line.split()[1]}" for c, m, line in CROSSINGS])
def test_each_contract_breaks_when_a_module_crosses_its_line(
        pristine: Path, tmp_path: Path, contract: str, module: str, line: str) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    target = tree / module
    assert target.exists(), f"{module} moved: point this case at a module that exists"
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # crossing\n",
                      encoding="utf-8")
    # the copies come first on the path (the editable installs' finders come after it)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / d)
                                                       for d in DISTRIBUTIONS.values())}
    out = lint_imports(tree, env)
    assert out.returncode != 0, out.stdout + out.stderr
    assert verdicts(out.stdout)[contract] == "BROKEN", out.stdout
    dotted = module.split("/", 1)[1].removesuffix(".py").replace("/", ".")
    assert f"{dotted} -> " in out.stdout, out.stdout  # the chain starts at the edited module
