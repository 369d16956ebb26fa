"""One preemptor (issue 10 item 5): the chart's PriorityClass bands all say
`preemptionPolicy: Never`, so the kube-scheduler never evicts another workload's pod to place a
FineTuneJob's pod, whatever its band; only the operator preempts, and only FineTuneJobs.

On the real scheduler with a kwok GPU node: a priority-0 foreign pod holds the node's GPUs; a
pod of the highest band (finetune-critical) asking for them stays Pending, the scheduler says it
is not eligible to preempt, and the foreign pod keeps running untouched.
"""

from __future__ import annotations

import json

import pytest

from ..kube import Cluster, gpu_pod, short_id, wait_for

pytestmark = pytest.mark.cluster


def test_chart_bands_never_make_the_scheduler_evict_a_foreign_pod(
        cluster: Cluster, namespace: str, priority_classes: list[str]) -> None:
    stored = {name: cluster.get("priorityclass", name) for name in priority_classes}
    policies = {n: (pc or {}).get("preemptionPolicy") for n, pc in stored.items()}
    assert set(policies.values()) == {"Never"}, (
        f"PriorityClasses in the cluster: {policies}; preemptionPolicy is immutable, so a class "
        "created by an older chart keeps PreemptLowerPriority: recreate it with "
        "`helm template ... --show-only templates/priorityclasses.yaml | kubectl replace "
        "--force -f -`")
    top = max(priority_classes, key=lambda n: int((stored[n] or {})["value"]))
    assert top == "finetune-critical"

    node = cluster.gpu_node(f"one-preemptor-{short_id()}", 2)
    try:
        foreign = gpu_pod("foreign", 2, node=node)  # no class: priority 0
        cluster.apply(foreign, namespace)
        running = wait_for("the foreign pod Running", lambda: (lambda p: p if p and p["status"]
                           .get("phase") == "Running" else None)(
            cluster.get("pod", "foreign", namespace)), 60)
        assert running["spec"].get("priority", 0) == 0
        uid = running["metadata"]["uid"]

        # what the operator would create for a finetune-critical job on that node
        cluster.apply(gpu_pod("critical-trainer", 2, node=node, priority_class=top), namespace)

        def refused_preemption() -> str | None:
            events = json.loads(cluster.kubectl(
                "get", "events", "-n", namespace, "--field-selector",
                "involvedObject.name=critical-trainer,reason=FailedScheduling",
                "-o", "json").stdout)["items"]
            msgs = [e.get("message", "") for e in events]
            return next((m for m in msgs if "preemptionPolicy=Never" in m), None)

        msg = wait_for("the scheduler to decline preemption for the critical pod",
                       refused_preemption, 60)
        assert "nvidia.com/gpu" in msg, msg
        pending = cluster.get("pod", "critical-trainer", namespace)
        assert pending is not None
        assert pending["spec"]["priority"] == int((stored[top] or {})["value"])
        assert pending["status"]["phase"] == "Pending"
        assert not pending["spec"].get("nodeName")
        assert not pending["status"].get("nominatedNodeName")
        after = cluster.get("pod", "foreign", namespace)
        assert after is not None and after["metadata"]["uid"] == uid
        assert after["status"]["phase"] == "Running"
        assert not after["metadata"].get("deletionTimestamp")
        assert not [c for c in after["status"].get("conditions", [])
                    if c["type"] == "DisruptionTarget"], after["status"]["conditions"]
    finally:
        cluster.kubectl("delete", "node", node, "--ignore-not-found", "--wait=false")
