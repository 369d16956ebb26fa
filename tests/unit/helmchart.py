"""Rendering the Helm chart in unit tests (``helm template``; no cluster)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "finetune-operator"
RELEASE = "finetune-operator"
NAMESPACE = "finetune-system"


def helm() -> str:
    from finetune_operator.devcluster.build import binary

    path = binary("helm")
    if path.is_file():
        return str(path)
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail(f"helm not found at {path} nor on PATH: run `make cluster-bins` to build it")


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def value_args(values: dict[str, Any] | None) -> list[str]:
    """Values as a --set-json per top-level key (exact types, no file needed)."""
    out: list[str] = []
    for key, val in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(val)}"]
    return out


def render_text(values: dict[str, Any] | None = None, *extra: str) -> str:
    return run_helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *value_args(values), *extra
    ).stdout


def render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(values, *extra)) if d]


def render_fails(values: dict[str, Any] | None = None) -> str:
    """stderr of a render that must fail."""
    proc = run_helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *value_args(values),
        check=False,
    )
    assert proc.returncode != 0, f"helm template accepted {values}"
    return proc.stderr


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def rules_file_text(values: dict[str, Any] | None = None) -> str:
    """The PrometheusRule's spec as a plain rules file, extracted like
    scripts/render-alert-rules.sh does (text after ``spec:``, de-indented by two)."""
    vals = {**(values or {})}
    text = render_text(
        vals, "--set", "monitoring.prometheusRule.enabled=true",
        "--show-only", "templates/prometheusrule.yaml",
    )
    lines = text.splitlines()
    body = lines[lines.index("spec:") + 1:]
    return "\n".join(line[2:] if line.startswith("  ") else line for line in body) + "\n"


def metric_names() -> set[str]:
    """Every series name the operator's metrics module can expose."""
    from finetune_operator import metrics

    names = set()
    for fam in metrics.REGISTRY.collect():
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(fam.name)
    return names
