"""The chart's user role (`<release>-finetune-operator-edit`, the one docs/install.md binds a
team to) runs every `kubectl finetune` command in its namespace: each command runs here as a
ServiceAccount bound only to that role (its own token in its own kubeconfig, so RBAC decides),
against the real operator, and none is refused. A ServiceAccount without the binding is
refused with a message that names the missing permission.

The role is rendered from the chart (`helm template`), under a name of this test's own (a
ClusterRole is cluster-wide; the Helm install test creates the chart's under its release)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from finetune_dev.devcluster import build
from tests.builders.cli import SWEEP_CRD, table
from tests.builders.users import (
    REFUSED,
    GpuNodes,
    MakeNamespace,
    allowed,
    as_user,
    user_kubeconfig,
    user_role,
)

from ..kube import Cluster, wait_for
from ..operator_proc import OperatorProcess, job_pods

pytestmark = pytest.mark.cluster
__all__ = ["user_role"]  # the fixture, imported for this module's tests

def test_the_user_role_runs_every_command(
        cluster: Cluster, operator: OperatorProcess, make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes, user_role: str, tmp_path: Path) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SWEEP_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunesweeps.finetune.dev")
    ns = make_namespace(gpu_quota=2)
    sel = gpu_nodes(1, 4)
    cluster.kubectl("create", "rolebinding", "team", "-n", ns, f"--clusterrole={user_role}",
                    f"--serviceaccount={ns}:alice")
    me = user_kubeconfig(cluster, ns, "alice", tmp_path / "alice.yaml")
    wait_for("RBAC to grant alice the role", lambda: cluster.kubectl(
        "auth", "can-i", "get", "pods/log", "-n", ns, f"--as=system:serviceaccount:{ns}:alice",
        check=False).stdout.strip() == "yes", 30)
    (key, value), = sel.items()
    job_flags = ["--model-hub", "example/tiny", "--dataset-configmap", "data:train.jsonl",
                 "--gpus", "2", "--priority", "finetune-normal", "--max-steps", "100",
                 "--node-selector", f"{key}={value}"]

    allowed(me, "submit", "--name", "dry", "--dry-run=server", *job_flags)
    assert "created" in allowed(me, "submit", "--name", "first", *job_flags)
    allowed(me, "submit", "--name", "second", *job_flags)  # waits: the quota is 2 GPUs
    wait_for("first to run and second to wait", lambda: sorted(
        (r["NAME"], r["PHASE"]) for r in table(allowed(me, "list"))) ==
        [("first", "Running"), ("second", "Queued")], 60)
    assert sorted(j["metadata"]["name"] for j in json.loads(
        allowed(me, "list", "-o", "json"))["items"]) == ["first", "second"]

    # the exact position from the operator's visibility endpoint, with alice's own token (the
    # kubeconfig's; the operator asks the API server whether alice may list jobs here)
    queued = allowed(me, "list", "--queue")
    assert next(r for r in table(queued) if r["NAME"] == "second")["QUEUE"] == "1", queued

    described = allowed(me, "describe", "first")  # events and the attempt's pods
    assert "Admitted" in described and "Scheduled" in described, described
    # logs: alice may read pods/log; the fake node serves none, and the plugin says so
    assert job_pods(cluster, ns, "first")
    code, _, err = as_user(me, "logs", "first")
    assert code == 1 and f"cannot serve the logs of pod {ns}/first-a1-0" in err, err
    assert not REFUSED.search(err), err
    top = table(allowed(me, "top"))  # ResourceQuotas
    assert [r["NAMESPACE"] for r in top] == [ns] and top[0]["QUOTA"] != "-", top
    assert "suspended" in allowed(me, "suspend", "first")
    assert "resumed" in allowed(me, "resume", "first")
    allowed(me, "compare", "first", "second")

    # sweeps: alice creates one (parked: suspended trials), then lists, describes, compares
    sweep = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
             "metadata": {"name": "grid", "namespace": ns},
             "spec": {"template": {
                 "model": {"name": "tiny", "source": {"hub": {"repo": "example/tiny"}}},
                 "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}}},
                 "training": {"maxSteps": 10}, "resources": {"gpus": 0}, "suspend": True},
                 "maxParallel": 1, "parameters": [{"path": "lora.rank", "values": [4, 8]}],
                 "objective": {"metric": "evalLoss"}}}
    created = subprocess.run([str(build.binary("kubectl")), "--kubeconfig", str(me), "apply",
                              "-f", "-"], input=json.dumps(sweep), capture_output=True,
                             text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    assert "grid" in allowed(me, "sweep", "list")
    allowed(me, "sweep", "describe", "grid")
    allowed(me, "sweep", "compare", "grid")

    # someone in the namespace without the binding is refused, and told which permission
    other = user_kubeconfig(cluster, ns, "mallory", tmp_path / "mallory.yaml")
    code, _, err = as_user(other, "describe", "first")
    assert code == 1
    assert f"system:serviceaccount:{ns}:mallory may not get finetunejobs.finetune.dev in " \
           f"namespace {ns}" in err, err
    assert f"RoleBinding in namespace {ns}" in err, err
