"""Kueue for the scale benchmark: the runner (build, CRDs, config, start) is the dev tooling's
(``finetune_dev.kueue``); the benchmark's objects are here."""

from __future__ import annotations

from typing import Any

from finetune_dev.kueue import (  # noqa: F401  (re-exported: the benchmark's one Kueue module)
    PRIORITY_LABEL,
    QUEUE_LABEL,
    THROTTLE_LINE,
    VERSION,
    crd_dir,
    ensure_built,
    recorded_build_seconds,
    start,
    write_config,
)

# ---------------------------------------------------------------- objects

V = "kueue.x-k8s.io/v1beta2"


def flavor() -> dict:
    return {"apiVersion": V, "kind": "ResourceFlavor", "metadata": {"name": "default"}}


def cluster_queue(ns: str, gpus: int, gpu_resource: str) -> dict:
    return {"apiVersion": V, "kind": "ClusterQueue", "metadata": {"name": f"cq-{ns}"},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                     "queueingStrategy": "BestEffortFIFO",
                     "resourceGroups": [{"coveredResources": [gpu_resource], "flavors": [
                         {"name": "default", "resources": [
                             {"name": gpu_resource, "nominalQuota": gpus}]}]}]}}


def local_queue(ns: str) -> dict:
    return {"apiVersion": V, "kind": "LocalQueue",
            "metadata": {"name": "lq", "namespace": ns}, "spec": {"clusterQueue": f"cq-{ns}"}}


def priority_class(name: str, value: int) -> dict:
    return {"apiVersion": V, "kind": "WorkloadPriorityClass", "metadata": {"name": name},
            "value": value, "description": "the benchmark's band of the same name as ours"}


def job(name: str, gpus: int, gpu_resource: str, selector: dict[str, str],
        priority: str | None = None) -> dict[str, Any]:
    """A suspended one-pod batch/v1 Job with the queue label (no webhook needed) and, when
    given, a WorkloadPriorityClass label."""
    res = {gpu_resource: str(gpus)}
    labels = {QUEUE_LABEL: "lq", **({PRIORITY_LABEL: priority} if priority else {})}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"suspend": True, "parallelism": 1, "completions": 1, "backoffLimit": 0,
                 "template": {"spec": {
                     "restartPolicy": "Never", "nodeSelector": selector,
                     "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "trainer", "image": "example.invalid/trainer:1",
                                     "resources": {"requests": res, "limits": res}}]}}},
    }
