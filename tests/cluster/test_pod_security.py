"""Pod Security Admission on the real kube-apiserver: every namespace the tests make enforces
the `restricted` Pod Security Standard, so a pod that asks for any privilege is refused at
admission; the operator's trainer pods of every job shape (one GPU, several GPUs, a multi-node
gang behind its headless Service, a sweep trial) and the chart's own pods are admitted there.
A regression in a securityContext fails here (and in every other test) instead of on a
cluster that enforces the profile."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from finetune_dev.devcluster import build
from finetune_dev.devcluster.workloads import CHART, RESTRICTED_NAMESPACE, SWEEP_CRD_FILE
from finetune_operator.jobs.build.names import service_name

from ..kube import Cluster, gpu_pod, plain_gpu_pod, wait_for
from ..operator_proc import OperatorProcess, ftj, job_pods, wait_phase

pytestmark = pytest.mark.cluster

REFUSED = 'violates PodSecurity "restricted:latest"'


@pytest.fixture(scope="module", autouse=True)
def sweep_crd(cluster: Cluster) -> None:
    """Before the module's operator starts: it watches FineTuneSweeps from the start."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SWEEP_CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunesweeps.finetune.dev")


def _create(cluster: Cluster, ns: str, obj: dict[str, Any], *extra: str
            ) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("create", "-n", ns, *extra, "-f", "-", input=json.dumps(obj),
                           check=False)


def _refused(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode != 0 and REFUSED in proc.stderr


def test_test_namespaces_enforce_the_restricted_profile(
        cluster: Cluster, namespace: str, make_namespace: Callable[..., str]) -> None:
    for ns in (namespace, make_namespace()):
        labels = (cluster.get("namespace", ns) or {})["metadata"]["labels"]
        assert labels.items() >= RESTRICTED_NAMESPACE.items(), labels
        plain = _create(cluster, ns, plain_gpu_pod("plain", 0))
        assert _refused(plain), plain.stderr
        for field in ("runAsNonRoot", "allowPrivilegeEscalation", "capabilities",
                      "seccompProfile"):
            assert field in plain.stderr, (field, plain.stderr)
        assert cluster.get("pod", "plain", ns) is None
        root = gpu_pod("root", 0)
        root["spec"]["securityContext"]["runAsUser"] = 0
        assert _refused(_create(cluster, ns, root))
        host = gpu_pod("host", 0)
        host["spec"]["volumes"] = [{"name": "h", "hostPath": {"path": "/"}}]
        assert _refused(_create(cluster, ns, host))
        compliant = _create(cluster, ns, gpu_pod("compliant", 0))
        assert compliant.returncode == 0, compliant.stderr
        assert cluster.get("pod", "compliant", ns) is not None


def _sweep(selector: dict[str, str]) -> dict[str, Any]:
    template = ftj("template", 1, "finetune-normal", selector)["spec"]
    template["evaluation"] = {"dataset": {"source": {"configMap": {"name": "data",
                                                                   "key": "train.jsonl"}}}}
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
            "metadata": {"name": "grid"},
            "spec": {"template": template,
                     "parameters": [{"path": "training.learningRate", "values": [1e-4]}],
                     "maxParallel": 1, "objective": {"metric": "testLoss"}}}


def _running_pods(cluster: Cluster, ns: str, job: str, count: int) -> list[dict[str, Any]]:
    def running() -> list[dict[str, Any]] | None:
        pods = job_pods(cluster, ns, job)
        ok = len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else None

    return wait_for(f"{count} Running pod(s) of {ns}/{job}", running, 60)


def test_every_job_shape_runs_in_a_restricted_namespace(
        cluster: Cluster, operator: OperatorProcess, make_namespace: Callable[..., str],
        gpu_nodes: Callable[[int, int], dict[str, str]]) -> None:
    ns = make_namespace()
    gang = gpu_nodes(2, 1)
    cluster.apply([ftj("one-gpu", 1, "finetune-normal", gpu_nodes(1, 1)),
                   ftj("multi-gpu", 2, "finetune-normal", gpu_nodes(1, 2)),
                   ftj("gang", 1, "finetune-normal", gang,
                       resources={"gpus": 1, "nodes": 2, "nodeSelector": gang}),
                   _sweep(gpu_nodes(1, 1))], ns)
    trial = wait_for("the sweep's trial", lambda: json.loads(cluster.kubectl(
        "get", "finetunejobs", "-n", ns, "-l", "finetune.dev/sweep=grid", "-o", "json",
    ).stdout)["items"], 60)
    assert len(trial) == 1
    shapes = {"one-gpu": 1, "multi-gpu": 1, "gang": 2, trial[0]["metadata"]["name"]: 1}
    for job, count in shapes.items():
        try:
            wait_phase(cluster, ns, job, "Running", 60)
        except AssertionError as e:  # the operator logs why the API server refused its pods
            refusals = [line for line in operator.log().splitlines() if REFUSED in line]
            raise AssertionError(f"{e}; {refusals[-1:]}") from None
        for pod in _running_pods(cluster, ns, job, count):
            assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, job
    assert cluster.get("service", service_name("gang"), ns) is not None


def test_the_charts_pods_are_admitted_in_a_restricted_namespace(
        cluster: Cluster, namespace: str) -> None:
    """The operator Deployment's pod template and the chart's test pod, created as pods (server
    dry run: admission runs, nothing is stored); the ServiceAccount they name is not installed
    here, so they run as `default` for this check."""
    rendered = subprocess.run(
        [str(build.binary("helm")), "template", "ft", str(CHART), "--namespace", namespace],
        capture_output=True, text=True, check=True, timeout=120).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator"},
             "spec": d["spec"]["template"]["spec"]} for d in docs if d["kind"] == "Deployment"]
    pods += [d for d in docs if d["kind"] == "Pod"]
    assert len(pods) >= 2, [d["kind"] for d in docs]
    for pod in pods:
        pod["spec"]["serviceAccountName"] = "default"
        pod["spec"].pop("priorityClassName", None)
        made = _create(cluster, namespace, pod, "--dry-run=server")
        assert made.returncode == 0, (pod["metadata"]["name"], made.stderr)
        bad = json.loads(json.dumps(pod))
        bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        assert _refused(_create(cluster, namespace, bad, "--dry-run=server"))
