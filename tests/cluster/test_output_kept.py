"""Issue 27 on the real control plane: a job's output outlives the job by default.

A succeeded job says where its output is (claim, full path, copy command); deleting the job
garbage-collects its pods but keeps the claim (whenDeleted Retain); `kubectl finetune output`,
run as a ServiceAccount bound only to the chart's user role, still finds it; a new job of the
same name runs on the kept claim; with whenDeleted Delete the claim goes with the job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.builders.users import GpuNodes, MakeNamespace, allowed, user_kubeconfig, user_role

from ..kube import Cluster, wait_for
from ..operator_proc import OperatorProcess, complete, ftj, job_pods, wait_phase

pytestmark = pytest.mark.cluster
__all__ = ["user_role"]  # the fixture, imported for this module's tests


def _complete_message(st: dict) -> str:
    return next(c["message"] for c in st.get("conditions") or [] if c["type"] == "Complete")


def _claim(cluster: Cluster, ns: str, name: str) -> dict | None:
    return cluster.get("persistentvolumeclaim", name, ns)


def test_deleting_a_succeeded_job_keeps_its_output_claim(
        cluster: Cluster, operator: OperatorProcess, make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes, user_role: str, tmp_path: Path) -> None:
    ns = make_namespace()
    sel = gpu_nodes(1, 2)
    cluster.kubectl("create", "rolebinding", "team", "-n", ns, f"--clusterrole={user_role}",
                    f"--serviceaccount={ns}:alice")
    me = user_kubeconfig(cluster, ns, "alice", tmp_path / "alice.yaml")
    wait_for("RBAC to grant alice the role", lambda: cluster.kubectl(
        "auth", "can-i", "get", "persistentvolumeclaims", "-n", ns,
        f"--as=system:serviceaccount:{ns}:alice", check=False).stdout.strip() == "yes", 30)

    cluster.apply(ftj("keeper", 1, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "keeper", "Running")
    uid = cluster.get("finetunejob", "keeper", ns)["metadata"]["uid"]  # type: ignore[index]
    complete(cluster, ns, "keeper")
    st = wait_phase(cluster, ns, "keeper", "Succeeded")
    path = f"finetune/{ns}/keeper/{uid}/output/adapter"
    msg = _complete_message(st)
    assert "keeper-checkpoints" in msg and path in msg, msg
    assert f"kubectl finetune output keeper -n {ns}" in msg, msg
    assert "kept when the job is deleted" in msg, msg
    claim = _claim(cluster, ns, "keeper-checkpoints")
    assert claim is not None and not claim["metadata"].get("ownerReferences"), claim

    where = json.loads(allowed(me, "output", "keeper", "-o", "json"))
    assert (where["claim"], where["outputs"], where["kept"]) == (
        "keeper-checkpoints", [path], True), where
    assert "Output claim:" in allowed(me, "describe", "keeper")

    cluster.kubectl("delete", "finetunejob", "keeper", "-n", ns, "--wait=true")
    wait_for("the job's pods garbage-collected", lambda: job_pods(cluster, ns, "keeper") == [],
             60)
    claim = _claim(cluster, ns, "keeper-checkpoints")
    assert claim is not None and not claim["metadata"].get("deletionTimestamp"), claim

    # the user finds it with the job gone: the claim's annotation names the job's directory
    text = allowed(me, "output", "keeper")
    assert "is gone" in text and f"finetune/{ns}/keeper/{uid}/output" in text, text
    assert "kubectl -n" in text and " cp keeper-output:/output/" in text, text

    # a new job of the same name runs on the kept claim (its own directory, by uid)
    cluster.apply(ftj("keeper", 1, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "keeper", "Running", 60)


def test_when_deleted_delete_removes_the_claim_with_the_job(
        cluster: Cluster, operator: OperatorProcess, make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes) -> None:
    ns = make_namespace()
    cluster.apply(ftj("scratch", 1, "finetune-normal", gpu_nodes(1, 1),
                      checkpoint={"storage": {"size": "1Gi", "whenDeleted": "Delete"}}), ns)
    wait_phase(cluster, ns, "scratch", "Running")
    complete(cluster, ns, "scratch")
    st = wait_phase(cluster, ns, "scratch", "Succeeded")
    assert "deleted with the job" in _complete_message(st)
    claim = _claim(cluster, ns, "scratch-checkpoints")
    assert claim is not None and claim["metadata"]["ownerReferences"][0]["name"] == "scratch"
    cluster.kubectl("delete", "finetunejob", "scratch", "-n", ns, "--wait=true")
    wait_for("the claim garbage-collected with its job",
             lambda: _claim(cluster, ns, "scratch-checkpoints") is None, 60)
