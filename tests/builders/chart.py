"""The Helm chart rendered by `helm template` for the cluster tests that apply parts of it (the
apply-time policy: tests/cluster/test_policy.py, test_examples.py).

    from tests.builders.chart import CHART, POLICY_KINDS, render_chart

    docs = render_chart("ft", "finetune-system", {"watchNamespaces": [ns]})
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from finetune_dev.devcluster import build

CHART = Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def render_chart(release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's documents for this release, namespace and values (fails the test when helm
    does)."""
    proc = subprocess.run(
        [str(build.binary("helm")), "template", release, str(CHART), "--namespace", namespace,
         "--values", "-"], input=yaml.safe_dump(values), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]
