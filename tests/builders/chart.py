"""The Helm chart rendered by ``helm template`` (no cluster): for the unit tests of the chart and
its alerts (tests/unit/test_chart.py, test_alerts.py), for the cluster tests that apply parts of
it (the apply-time policy: tests/cluster/test_policy.py, test_examples.py; the user roles:
tests/builders/users.py), and the RBAC the operator's API calls need (test_chart.py diffs the
chart with it; tests/cluster/test_rbac_operator.py asks the API server).

    from tests.builders.chart import CHART, POLICY_KINDS, one, render, render_chart

    docs = render({"watchNamespaces": [ns]})                  # release finetune-operator
    docs = render_chart("ft", "finetune-system", {"watchNamespaces": [ns]})
"""

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
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def helm() -> str:
    from finetune_dev.devcluster.build import binary

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


def render_chart(release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's documents for this release, namespace and values (fails the test when helm
    does)."""
    proc = subprocess.run(
        [helm(), "template", release, str(CHART), "--namespace", namespace, "--values", "-"],
        input=yaml.safe_dump(values), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


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


# ---- the operator's API calls -> the RBAC it needs (tests/unit/test_chart.py diffs the chart
# with this; tests/cluster/test_rbac_operator.py asks the API server) ----------------------

# Kubernetes' names: a kind or plural as kube/client.py counts it -> (API group, resource).
API_RESOURCES: dict[str, tuple[str, str]] = {
    "Pod": ("", "pods"), "pods": ("", "pods"), "ConfigMap": ("", "configmaps"),
    "PersistentVolumeClaim": ("", "persistentvolumeclaims"), "Service": ("", "services"),
    "ServiceAccount": ("", "serviceaccounts"), "Event": ("", "events"),
    "nodes": ("", "nodes"), "resourcequotas": ("", "resourcequotas"),
    "namespaces": ("", "namespaces"),
    "priorityclasses": ("scheduling.k8s.io", "priorityclasses"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "Lease": ("coordination.k8s.io", "leases"),
    "FineTuneJob": ("finetune.dev", "finetunejobs"),
    "finetunejobs": ("finetune.dev", "finetunejobs"),
    "finetunejobs/status": ("finetune.dev", "finetunejobs/status"),
    "FineTuneSweep": ("finetune.dev", "finetunesweeps"),
    "finetunesweeps": ("finetune.dev", "finetunesweeps"),
    "finetunesweeps/status": ("finetune.dev", "finetunesweeps/status"),
    "customresourcedefinitions": ("apiextensions.k8s.io", "customresourcedefinitions"),
    "TokenReview": ("authentication.k8s.io", "tokenreviews"),
    "tokenreviews": ("authentication.k8s.io", "tokenreviews"),
    "SubjectAccessReview": ("authorization.k8s.io", "subjectaccessreviews"),
    "subjectaccessreviews": ("authorization.k8s.io", "subjectaccessreviews"),
    "Workload": ("kueue.x-k8s.io", "workloads"), "workloads": ("kueue.x-k8s.io", "workloads"),
    "workloads/status": ("kueue.x-k8s.io", "workloads/status"),
    "resourceflavors": ("kueue.x-k8s.io", "resourceflavors"),
    "modelservers": ("finetune.dev", "modelservers"),
    "modelservers/status": ("finetune.dev", "modelservers/status"),
    "resourceslices": ("resource.k8s.io", "resourceslices"),
    "resourceclaims": ("resource.k8s.io", "resourceclaims"),
    "ResourceClaimTemplate": ("resource.k8s.io", "resourceclaimtemplates"),
}
CLUSTER_SCOPED = {"nodes", "namespaces", "priorityclasses", "customresourcedefinitions",
                  "tokenreviews", "subjectaccessreviews", "resourceflavors", "resourceslices",
                  "resourceclaims"}
# What kopf itself calls (it runs the process): watch the resources it has handlers for (those
# are in k8s's surface too), observe CRDs for its resource discovery and namespaces for
# namespace patterns, and post Events (core v1) for warnings.
KOPF_CALLS = {("list", "customresourcedefinitions"), ("watch", "customresourcedefinitions"),
              ("list", "namespaces"), ("watch", "namespaces"), ("create", "Event")}


def operator_calls(kueue: bool = False, sharing: bool = False) -> set[tuple[str, str]]:
    """Every (verb, resource) the operator's code calls: kube/client.py's declared surface
    (``API_SURFACE``, the one declaration: each request is counted as self._count(verb,
    resource) and checked against it at run time), every literal self._count(...) in
    kube/client.py (so the declaration cannot miss one), plus kopf's own calls while kopf runs
    the process."""
    import ast

    from finetune_operator.kube import client as k8s

    calls = set(k8s.API_SURFACE)
    if not kueue:  # admission mode kueue only (the chart grants them with admission.mode kueue)
        calls -= k8s.KUEUE_SURFACE
    if not sharing:  # GPU sharing only (gpuSharing.deviceClass)
        calls -= k8s.SHARING_SURFACE
    tree = ast.parse((ROOT / "operator" / "finetune_operator" / "kube" / "client.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_count" and len(node.args) == 2
                and all(isinstance(a, ast.Constant) for a in node.args)):
            verb, resource = (a.value for a in node.args)  # type: ignore[attr-defined]
            assert (verb, resource) in calls | k8s.KUEUE_SURFACE | k8s.SHARING_SURFACE, (
                f"kube/client.py line {node.lineno} calls {verb} {resource}, not in API_SURFACE")
    main_src = (ROOT / "operator" / "finetune_operator" / "__main__.py").read_text()
    if "kopf.run(" in main_src:
        calls |= KOPF_CALLS
    return calls


def rbac_verb(verb: str) -> str:
    return {"replace": "update"}.get(verb, verb)


def needed_grants(kueue: bool = False, sharing: bool = False,
                  ) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for verb, resource in operator_calls(kueue, sharing):
        assert resource in API_RESOURCES, (
            f"kube/client.py calls {verb} {resource}: add its API group and plural to "
            "tests/builders/chart.py API_RESOURCES, then grant it in the chart's rbac.yaml")
        out.setdefault(API_RESOURCES[resource], set()).add(rbac_verb(verb))
    return out
