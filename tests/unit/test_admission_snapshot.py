"""Parsing Nodes, Pods and ResourceQuotas into admission inputs; Policy from operator settings."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.admission import Policy, Taint
from finetune_operator.admission.snapshot import (
    count,
    nodes_from_k8s,
    pod_requests,
    quotas_from_k8s,
)
from finetune_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

GPU = "nvidia.com/gpu"


def node(name: str, gpus: str = "8", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"pool": "a"}}, "spec": spec,
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", GPU: gpus}}}


def pod(node_name: str | None, gpus: int, phase: str = "Running", init: int = 0) -> dict[str, Any]:
    res = {"requests": {GPU: str(gpus), "cpu": "2"}, "limits": {GPU: str(gpus)}}
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": res}]}
    if node_name:
        spec["nodeName"] = node_name
    if init:
        spec["initContainers"] = [{"name": "i", "resources": {"limits": {GPU: str(init)}}}]
    return {"spec": spec, "status": {"phase": phase}}


@pytest.mark.parametrize(("text", "value"), [("8", 8), (8, 8), ("8000m", 8), ("1k", 1000),
                                              ("2Ki", 2048), ("1500m", 1)])
def test_count(text: Any, value: int) -> None:
    assert count(text) == value


def test_count_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a resource quantity"):
        count("eight")


def test_pod_requests_sum_containers_and_take_init_max() -> None:
    p = pod("n1", 2, init=3)
    p["spec"]["containers"].append({"name": "d", "resources": {"limits": {GPU: "1"}}})
    assert pod_requests(p) == {GPU: 3}  # max(2 + 1, init 3); cpu is not an extended resource


def test_nodes_subtract_bound_unfinished_pods() -> None:
    nodes = [node("n2"), node("n1", unschedulable=True,
                              taints=[{"key": "gpu", "value": "a100", "effect": "NoSchedule"}])]
    pods = [pod("n1", 2), pod("n1", 1, phase="Pending"), pod("n1", 4, phase="Succeeded"),
            pod(None, 8), pod("n2", 8), pod("n2", 1)]
    infos = nodes_from_k8s(nodes, pods)
    assert [n.name for n in infos] == ["n1", "n2"]
    n1, n2 = infos
    assert n1.allocatable == {GPU: 8} and n1.free == {GPU: 5}
    assert n1.unschedulable and n1.taints == (Taint(key="gpu", value="a100"),)
    assert n1.labels == {"pool": "a"}
    assert n2.free == {GPU: 0}  # over-committed never goes negative


def test_quotas_from_status() -> None:
    rqs = [
        {"metadata": {"namespace": "team-a"},
         "status": {"hard": {"requests.nvidia.com/gpu": "4", "requests.cpu": "10"},
                    "used": {"requests.nvidia.com/gpu": "3"}}},
        {"metadata": {"namespace": "team-b"}, "spec": {"hard": {"requests.nvidia.com/gpu": "2"}}},
    ]
    quotas = quotas_from_k8s(rqs)
    assert len(quotas) == 1  # team-b's quota has no status yet: not enforced yet either
    q = quotas[0]
    assert (q.namespace, q.resource, q.hard, q.used, q.free) == ("team-a", GPU, 4, 3, 1)


def test_policy_from_operator_settings() -> None:
    settings = OperatorSettings(aging_rate_per_minute=5, aging_cap=300,
                                max_running_jobs_per_namespace=2,
                                preempting_priority_classes=["finetune-critical", "finetune-high"],
                                min_runtime_before_preemption_seconds=60,
                                max_reserved_idle_share=0.25)
    policy = Policy.from_settings(settings)
    # every policy setting is carried, none left at its default (a sectioned settings object
    # once dropped max_reserved_idle_share silently)
    assert policy == Policy(aging_rate_per_minute=5.0, aging_cap=300.0,
                            max_running_jobs_per_namespace=2,
                            preempting_priority_classes=frozenset({"finetune-critical",
                                                                   "finetune-high"}),
                            min_runtime_before_preemption_seconds=60.0,
                            max_reserved_idle_share=0.25)
    assert policy.reserve_threshold_seconds == 300 / 5 * 60


def test_reserve_threshold() -> None:
    assert Policy(aging_rate_per_minute=0).reserve_threshold_seconds is None
    assert Policy(reserve_after_seconds=30).reserve_threshold_seconds == 30
