"""Kueue v0.17.0 (built from the Go module proxy by ``make cluster-bins``, cached) running out of
cluster against the test cluster, configured as a platform team would for this operator
(``docs/kueue.md``): ``integrations.externalFrameworks`` names FineTuneJob and ModelServer,
no built-in integration is needed. Plus the Kueue objects the tests create (flavors, queues,
classes).
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune_dev import kueue as runner
from finetune_operator.kueue.workload import EXTERNAL_FRAMEWORKS, JOB_UID_LABEL, QUEUE_LABEL
from tests.kube import Cluster, short_id, wait_for
from tests.operator_proc import free_port, ftj, wait_phase

V = "kueue.x-k8s.io/v1beta2"
KINDS = ("workloads", "clusterqueues", "localqueues", "resourceflavors",
         "workloadpriorityclasses", "cohorts")


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(runner.crd_dir()))
    def established(name: str) -> bool:
        conds = ((cluster.get("crd", name) or {}).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conds)

    for kind in KINDS:
        name = f"{kind}.kueue.x-k8s.io"
        wait_for(f"CRD {name} Established", functools.partial(established, name), 60)
    if cluster.get("namespace", "kueue-system") is None:
        cluster.kubectl("create", "namespace", "kueue-system")


@contextlib.contextmanager
def running_kueue(cluster: Cluster, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Kueue running (healthy) for the block; its log is ``work/kueue.log``."""
    binary, _ = runner.ensure_built()
    install_crds(cluster)
    ports = {"health": free_port(), "metrics": free_port(), "webhook": free_port()}
    config = runner.write_config(
        work, ports, qps=5000, burst=10000, frameworks=(), external=EXTERNAL_FRAMEWORKS)
    log = work / "kueue.log"
    proc = runner.start(binary, cluster.kubeconfig, config, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Kueue exited with {proc.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['health']}/readyz",
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for("Kueue ready", healthy, 90)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def kueue_log(work: Path, tail: int = 4000) -> str:
    try:
        return (work / "kueue.log").read_text(errors="replace")[-tail:]
    except FileNotFoundError:
        return ""


# ---------------------------------------------------------------- objects


def flavor(name: str, node_labels: dict[str, str],
           tolerations: list[dict[str, str]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeLabels": node_labels}
    if tolerations:
        spec["tolerations"] = tolerations
    return {"apiVersion": V, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec}


def cluster_queue(name: str, namespace: str, flavor_name: str, gpus: int,
                  cohort: str | None = None, **preemption: str) -> dict[str, Any]:
    """A ClusterQueue for one namespace: ``gpus`` nominal GPUs (cpu and memory unlimited
    enough), preempting lower priorities within itself, reclaiming within the cohort."""
    res = [{"name": "nvidia.com/gpu", "nominalQuota": gpus},
           {"name": "cpu", "nominalQuota": 1000}, {"name": "memory", "nominalQuota": "4Ti"}]
    spec: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "queueingStrategy": "BestEffortFIFO",
        "resourceGroups": [{"coveredResources": ["nvidia.com/gpu", "cpu", "memory"],
                            "flavors": [{"name": flavor_name, "resources": res}]}],
        "preemption": {"withinClusterQueue": "LowerPriority",
                       "reclaimWithinCohort": "Any", **preemption},
    }
    if cohort:
        spec["cohortName"] = cohort
    return {"apiVersion": V, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec}


def local_queue(namespace: str, name: str, cluster_queue_name: str) -> dict[str, Any]:
    return {"apiVersion": V, "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue_name}}


def priority_classes(cluster: Cluster, names: list[str]) -> None:
    """A WorkloadPriorityClass per band, with the band's PriorityClass value (the chart
    creates them with admission.mode kueue)."""
    for name in names:
        pc = cluster.get("priorityclass", name)
        assert pc is not None, f"PriorityClass {name} missing"
        cluster.apply({"apiVersion": V, "kind": "WorkloadPriorityClass",
                       "metadata": {"name": name}, "value": pc["value"]})


def queued(job: dict[str, Any], queue: str) -> dict[str, Any]:
    job["metadata"].setdefault("labels", {})[QUEUE_LABEL] = queue
    return job


def workloads(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "workloads.kueue.x-k8s.io", "-n", namespace, "-l",
                          JOB_UID_LABEL, "-o", "json").stdout
    return list(json.loads(out)["items"])


def workload_of(cluster: Cluster, namespace: str, job: str) -> dict[str, Any] | None:
    obj = cluster.get("finetunejob", job, namespace)
    if obj is None:
        return None
    uid = obj["metadata"]["uid"]
    got = [w for w in workloads(cluster, namespace)
           if w["metadata"]["labels"].get(JOB_UID_LABEL) == uid]
    return got[0] if got else None


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def unique(prefix: str) -> str:
    return f"{prefix}-{short_id()}"


def job(name: str, gpus: int, band: str = "finetune-normal", **spec: Any) -> dict[str, Any]:
    """A FineTuneJob for queue ``lq`` with no node selector of its own: the flavor Kueue
    assigns puts its pods on the queue's nodes."""
    return queued(ftj(name, gpus, band, {}, **spec), "lq")


def running(cluster: Cluster, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    return wait_phase(cluster, ns, name, "Running", timeout)
