"""Tenant attacks on the running operator (issue 11): a tenant's trainer sends every hostile
report we could think of, crafts its termination message, squats a child's name, and its pods
carry no Kubernetes credentials; another tenant's job is admitted within 10 s after each attack,
and nothing hostile shows in any status or message."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ..kube import Cluster, restricted, wait_for
from ..operator_proc import (
    OperatorProcess,
    admitted_soon,
    finish_pod,
    ftj,
    job_pods,
    job_status,
    report_progress,
    wait_phase,
)

pytestmark = pytest.mark.cluster

# (what, body, the status and the rejection reason the parser gives for its content)
HOSTILE: list[tuple[str, object, int, str]] = [
    ("wrong types", {"step": "abc"}, 400, "invalid"),
    ("bool as int", {"step": True}, 400, "invalid"),
    ("negative", {"step": -5}, 400, "invalid"),
    ("huge int", {"step": 2**63}, 400, "invalid"),
    ("bad time", {"step": 1, "updatedAt": 5}, 400, "invalid"),
    ("garbage savedAt", {"step": 1, "checkpoint": {"step": 1, "savedAt": "garbage"}}, 400,
     "invalid"),
    ("path traversal", {"step": 1, "checkpoint": {"step": 1, "path": "../../other/ckpt"}}, 400,
     "invalid"),
    ("absolute path", {"step": 1, "checkpoint": {"step": 1, "path": "/etc/passwd"}}, 400,
     "invalid"),
    ("extra keys", {"step": 1, "namespace": "team-b", "job": "victim"}, 400, "invalid"),
    # refused from its Content-Length, never parsed; the server drops the body after its answer
    ("huge string", {"step": 1, "state": "x" * 20000}, 413, "too-large"),
    ("deep nesting", json.loads("[" * 50 + "]" * 50), 400, "too-deep"),
    ("not an object", [1, 2, 3], 400, "not-json"),
]


def _rejected(operator: OperatorProcess, reason: str) -> float:
    found = re.search(rf'^finetune_report_rejected_total{{reason="{reason}"}} (\S+)$',
                      operator.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


def _refused_for_its_content(cluster: Cluster, operator: OperatorProcess, ns: str, pod: str,
                             body: Any, code: int, reason: str) -> None:
    """Send the report until the per-pod rate limit lets it through (a 429 says nothing about
    the body), then it must get ``code`` and count once under ``reason``."""
    before = _rejected(operator, reason)
    wait_for(f"HTTP {code} past the rate limit", lambda: report_progress(
        cluster, ns, pod, body, expect=(code, 429)) == code, 60, interval=1)
    assert _rejected(operator, reason) == before + 1, reason


def _all_text(cluster: Cluster, namespaces: list[str]) -> str:
    out = []
    for ns in namespaces:
        out.append(cluster.kubectl("get", "finetunejobs,events", "-n", ns, "-o", "json").stdout)
    return "\n".join(out)


def test_hostile_reports_are_dropped_and_nobody_stalls(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 8)
    evil, other = make_namespace(), make_namespace()
    cluster.apply(ftj("evil", 1, "finetune-normal", sel), evil)
    wait_phase(cluster, evil, "evil", "Running")
    pod = job_pods(cluster, evil, "evil")[0]["metadata"]["name"]
    for what, body, code, reason in HOSTILE:
        _refused_for_its_content(cluster, operator, evil, pod, body, code, reason)
        admitted_soon(cluster, other, sel)
        assert job_status(cluster, evil, "evil")["phase"] == "Running", what
    wait_for("the good report accepted once the rate limit allows", lambda: report_progress(
        cluster, evil, pod, {"step": 3, "totalSteps": 10, "loss": 0.5}, expect=(204, 429))
        == 204, 30, interval=1)
    st = wait_for("the one good report mirrored", lambda: (
        lambda s: s if (s.get("progress") or {}).get("step") == 3 else None)(
        job_status(cluster, evil, "evil")), 15)
    assert st["progress"]["loss"] == 0.5
    text = _all_text(cluster, [evil, other])
    for needle in ("../../other", "/etc/passwd", "garbage", "x" * 100, '"victim"'):
        assert needle not in text, needle
    rejected = operator.metrics()
    assert 'finetune_report_rejected_total{reason="invalid"}' in rejected
    assert evil not in rejected.split("finetune_report_rejected_total")[1][:2000]


def test_a_pod_that_is_not_a_managed_trainer_cannot_report(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    cluster.apply(restricted({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "impostor", "labels": {"finetune.dev/job": "nope"}}, "spec": {
            "containers": [{"name": "c", "image": "x"}], "nodeSelector": gpu_nodes(1, 1)}}), ns)
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nope-config"},
                   "data": {"config.yaml": "{}"}}, ns)
    pod = wait_for("impostor bound", lambda: (lambda p: p if p and p["spec"].get("nodeName")
                                              else None)(cluster.get("pod", "impostor", ns)), 30)
    assert pod["metadata"]["uid"]
    # the impostor borrows a real job's report config (URL + CA are not secrets)
    sel = gpu_nodes(1, 2)
    cluster.apply(ftj("real", 1, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "real", "Running")
    real_cfg = cluster.get("configmap", "real-config", ns)
    assert real_cfg is not None
    cluster.kubectl("patch", "configmap", "nope-config", "-n", ns, "--type=merge", "-p",
                    json.dumps({"data": real_cfg["data"]}))
    report_progress(cluster, ns, "impostor", {"step": 1}, expect=403)


def test_trainer_pods_carry_no_api_credentials(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    cluster.apply(ftj("plain", 1, "finetune-normal", gpu_nodes(1, 1)), ns)
    wait_phase(cluster, ns, "plain", "Running")
    pod = job_pods(cluster, ns, "plain")[0]
    assert pod["spec"]["automountServiceAccountToken"] is False
    audiences = [s["serviceAccountToken"].get("audience") for v in pod["spec"]["volumes"]
                 for s in (v.get("projected") or {}).get("sources") or []
                 if "serviceAccountToken" in s]
    assert audiences == ["finetune.dev/operator"]  # only a token the API server refuses
    sa = f"system:serviceaccount:{ns}:{pod['spec'].get('serviceAccountName') or 'default'}"
    for verb in ("patch", "update", "delete"):
        can = cluster.kubectl("auth", "can-i", verb, "pods", "-n", ns, f"--as={sa}",
                              check=False).stdout.strip()
        assert can == "no", (verb, can)


def test_a_squatted_child_name_is_never_adopted(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "squat-config", "labels": {"owner": "someone"}},
                   "data": {"keep": "me"}}, ns)
    cluster.apply(ftj("squat", 1, "finetune-normal", gpu_nodes(1, 1)), ns)
    st = wait_for("the conflict reported", lambda: (
        lambda s: s if "ChildConflict" in json.dumps(s) else None)(job_status(cluster, ns,
                                                                             "squat")), 30)
    assert "squat-config" in json.dumps(st)
    cm = cluster.get("configmap", "squat-config", ns)
    assert cm is not None and cm["data"] == {"keep": "me"}
    assert not cm["metadata"].get("ownerReferences")
    assert job_pods(cluster, ns, "squat") == []
    cluster.kubectl("delete", "finetunejob", "squat", "-n", ns, "--wait=true")
    assert cluster.get("configmap", "squat-config", ns) is not None  # never deleted with it


def test_hostile_termination_message_never_reaches_the_status(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    cluster.apply(ftj("liar", 1, "finetune-normal", gpu_nodes(1, 1)), ns)
    wait_phase(cluster, ns, "liar", "Running")
    pod = job_pods(cluster, ns, "liar")[0]["metadata"]["name"]
    finish_pod(cluster, ns, pod, 0, "Completed", {
        "reason": "Completed", "adapterPath": "../../team-b/secret", "finalStep": "lots",
        "metrics": {"evalLoss": "NaN"}, "injected": "<script>"})
    st = wait_phase(cluster, ns, "liar", "Succeeded")
    text = json.dumps(st)
    for needle in ("team-b/secret", "lots", "<script>", "NaN"):
        assert needle not in text, needle
