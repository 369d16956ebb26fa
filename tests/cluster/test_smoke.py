"""The local control plane is real: quota admission, scheduler preemption, kwok pod lifecycle."""

from __future__ import annotations

import json

import pytest

from ..kube import Cluster, gpu_pod, priority_class, short_id, wait_for

pytestmark = pytest.mark.cluster


def _quota(cluster: Cluster, namespace: str, gpus: int) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota",
                   "metadata": {"name": "gpus", "namespace": namespace},
                   "spec": {"hard": {"requests.nvidia.com/gpu": str(gpus)}}})
    # enforced only once the controller-manager has filled status.hard
    wait_for("quota status.hard", lambda: (cluster.get("resourcequota", "gpus", namespace) or {})
             .get("status", {}).get("hard"), 30)


def test_resource_quota_rejects_pod_over_gpu_quota(cluster: Cluster, namespace: str) -> None:
    _quota(cluster, namespace, 2)
    cluster.apply(gpu_pod("fits", 2), namespace)
    p = cluster.kubectl("create", "-n", namespace, "-f", "-", check=False,
                        input=json.dumps(gpu_pod("over", 1)))
    assert p.returncode != 0
    assert "exceeded quota" in p.stderr and "(Forbidden)" in p.stderr, p.stderr
    assert "requests.nvidia.com/gpu" in p.stderr
    assert cluster.get("pod", "over", namespace) is None


def test_kwok_moves_bound_pod_to_running(cluster: Cluster, namespace: str) -> None:
    node = cluster.gpu_node(f"smoke-run-{short_id()}", 2)
    try:
        cluster.apply(gpu_pod("runner", 1, node=node), namespace)
        pod = wait_for("pod Running", lambda: (lambda p: p if p and p["status"].get("phase")
                                               == "Running" else None)(
            cluster.get("pod", "runner", namespace)), 30)
        assert pod["spec"]["nodeName"] == node
    finally:
        cluster.kubectl("delete", "node", node, "--ignore-not-found")


@pytest.fixture
def preempt_setup(cluster: Cluster, namespace: str):  # type: ignore[no-untyped-def]
    sid = short_id()
    node = cluster.gpu_node(f"smoke-preempt-{sid}", 2)
    classes = {"low": f"smoke-low-{sid}", "high": f"smoke-high-{sid}",
               "never": f"smoke-never-{sid}"}
    cluster.apply([priority_class(classes["low"], 100),
                   priority_class(classes["high"], 1000),
                   priority_class(classes["never"], 1000, "Never")])
    cluster.apply(gpu_pod("low", 2, node=node, priority_class=classes["low"]), namespace)
    wait_for("low pod Running", lambda: (cluster.get("pod", "low", namespace) or {})
             .get("status", {}).get("phase") == "Running", 30)
    yield node, classes
    cluster.kubectl("delete", "node", node, "--ignore-not-found")
    cluster.kubectl("delete", "priorityclass", *classes.values(), "--ignore-not-found")


def test_scheduler_preempts_lower_priority_pod(cluster: Cluster, namespace: str,
                                               preempt_setup) -> None:  # type: ignore[no-untyped-def]
    node, classes = preempt_setup
    core = cluster.core()
    low_uid = core.read_namespaced_pod("low", namespace).metadata.uid
    cluster.apply(gpu_pod("high", 2, node=node, priority_class=classes["high"]), namespace)

    seen_disruption: list[str] = []

    def low_gone_or_disrupted() -> bool:
        p = cluster.get("pod", "low", namespace)
        if p and p["metadata"]["uid"] == low_uid:
            for c in p.get("status", {}).get("conditions", []):
                if c["type"] == "DisruptionTarget":
                    seen_disruption.append(c.get("reason", ""))
            return False
        return True

    wait_for("low pod preempted and deleted", low_gone_or_disrupted, 60)
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={low_uid}")
    reasons = {e.reason for e in events.items}
    assert "Preempted" in reasons or "PreemptionByScheduler" in seen_disruption, (
        f"no sign of scheduler preemption: events {reasons}, conditions {seen_disruption}")
    high = wait_for("high pod bound to the node", lambda: (lambda p: p if p and p["spec"].get(
        "nodeName") == node else None)(cluster.get("pod", "high", namespace)), 60)
    assert high["spec"]["priority"] == 1000


def test_preemption_policy_never_stays_pending(cluster: Cluster, namespace: str,
                                               preempt_setup) -> None:  # type: ignore[no-untyped-def]
    node, classes = preempt_setup
    cluster.apply(gpu_pod("never", 2, node=node, priority_class=classes["never"]), namespace)

    def unschedulable() -> bool:
        p = cluster.get("pod", "never", namespace) or {}
        return any(c["type"] == "PodScheduled" and c["status"] == "False"
                   and c.get("reason") == "Unschedulable"
                   for c in p.get("status", {}).get("conditions", []))

    wait_for("never pod marked Unschedulable", unschedulable, 60)
    # the low pod keeps its GPUs; the never pod is not bound
    low = cluster.get("pod", "low", namespace)
    assert low is not None and low["status"]["phase"] == "Running"
    assert not low.get("metadata", {}).get("deletionTimestamp")
    never = cluster.get("pod", "never", namespace)
    assert never is not None and not never["spec"].get("nodeName")
