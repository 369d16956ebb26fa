"""Operator behaviour on the real control plane, one concern per test: policy errors, suspend,
failures and backoff, scheduler preemption, deletion, metrics."""

from __future__ import annotations

import json
import re

import pytest

from ..kube import Cluster, gpu_pod, priority_class, short_id, wait_for
from ..operator_proc import (
    OperatorProcess,
    complete,
    finish_pod,
    ftj,
    job_pods,
    job_status,
    wait_phase,
)

pytestmark = pytest.mark.cluster


def _condition(st: dict, type_: str) -> dict:
    return next(c for c in st.get("conditions", []) if c["type"] == type_)


def test_jobs_impossible_by_policy_fail_with_a_reason(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    ns = make_namespace(gpu_quota=4)
    cluster.apply([ftj("escalate", 1, "system-cluster-critical", sel),
                   ftj("too-big-node", 8, "finetune-normal", sel),
                   ftj("too-big-quota", 4, "finetune-normal", sel,
                       resources={"gpus": 3, "nodes": 2, "nodeSelector": sel}),
                   ], ns)
    # a policy violation fails at once; "cannot fit" fails only after the grace period
    # (FINETUNE_UNSCHEDULABLE_GRACE_SECONDS, 3 s in tests): a quota dip must not kill jobs
    expect = {"escalate": ("PolicyViolation", "system-cluster-critical is not allowed"),
              "too-big-node": ("Unschedulable", "grace period"),
              "too-big-quota": ("Unschedulable", "quota")}
    for name, (reason, text) in expect.items():
        st = wait_phase(cluster, ns, name, "Failed")
        cond = _condition(st, "Failed")
        assert cond["reason"] == reason, (name, cond)
        assert text in cond["message"], (name, cond["message"])
        assert job_pods(cluster, ns, name) == []


def test_a_gpu_resource_no_node_offers_waits_naming_the_usual_causes(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    """A fresh install's "Queued forever": no node advertises the job's GPU resource (no device
    plugin, or another resource name); the wait reason says so and what the nodes offer."""
    sel = gpu_nodes(1, 2)  # nodes that offer nvidia.com/gpu, not the job's resource
    ns = make_namespace()
    cluster.apply(ftj("unplugged", 1, "finetune-normal", sel, resources={
        "gpus": 1, "gpuResource": "example.com/no-such-gpu", "nodeSelector": sel}), ns)
    st = wait_for("unplugged waiting with a reason", lambda: (
        lambda s: s if s.get("phase") == "Queued" and (s.get("queue") or {}).get("reason")
        else None)(job_status(cluster, ns, "unplugged")), 30)
    reason = st["queue"]["reason"]
    assert reason.startswith("no node offers example.com/no-such-gpu (in its status.allocatable)")
    assert "nvidia.com/gpu" in reason.split("the nodes offer ", 1)[1].split(":", 1)[0]
    assert "device plugin" in reason and "resources.gpuResource" in reason
    assert _condition(st, "Admitted")["reason"] == "NoMatchingNodes"
    assert job_pods(cluster, ns, "unplugged") == []


def test_suspend_round_trip(cluster: Cluster, operator: OperatorProcess, make_namespace,
                            gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    cluster.apply(ftj("pausable", 2, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "pausable", "Running")
    cluster.kubectl("patch", "finetunejob", "pausable", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"suspend": true}}')
    st = wait_for("suspended with no pods", lambda: (
        lambda s: s if s.get("phase") == "Suspended" and _condition(s, "Suspended")["reason"]
        == "Suspended" and not job_pods(cluster, ns, "pausable") else None)(
        job_status(cluster, ns, "pausable")), 30)
    assert st["preemptions"] == 0 and st["failures"] == 0
    cluster.kubectl("patch", "finetunejob", "pausable", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"suspend": false}}')
    st = wait_phase(cluster, ns, "pausable", "Running")
    assert (st["attempt"], st["preemptions"], st["failures"]) == (2, 0, 0)
    assert _condition(st, "Suspended")["status"] == "False"
    complete(cluster, ns, "pausable")
    wait_phase(cluster, ns, "pausable", "Succeeded")


def test_failures_retry_with_backoff_then_fail_with_cause(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    cluster.apply(ftj("flaky", 1, "finetune-normal", sel, backoffLimit=1), ns)
    seen: dict = {}
    for attempt in (1, 2):
        def running(a: int = attempt) -> bool:
            seen.clear()
            seen.update(job_status(cluster, ns, "flaky"))
            return seen.get("phase") == "Running" and seen.get("attempt") == a
        try:
            wait_for(f"attempt {attempt} running", running, 30)
        except AssertionError as e:  # the status says where it stopped
            raise AssertionError(f"{e}; status: {seen}") from None
        pod = job_pods(cluster, ns, "flaky")
        running = next(p for p in pod if p["status"].get("phase") == "Running")
        finish_pod(cluster, ns, running["metadata"]["name"], 137, "OOMKilled")
        if attempt == 1:
            st = wait_for("back in queue after failure 1", lambda: (
                lambda s: s if s.get("failures") == 1 and s.get("phase") in (
                    "Queued", "Admitted", "Running") else None)(
                job_status(cluster, ns, "flaky")), 30)
            assert st["preemptions"] == 0
    st = wait_phase(cluster, ns, "flaky", "Failed")
    cond = _condition(st, "Failed")
    assert cond["reason"] == "BackoffLimitExceeded"
    assert "exited with code 137 (OOMKilled)" in cond["message"]
    assert "resources.memory" in cond["message"]  # says what to do
    assert (st["failures"], st["preemptions"], st["attempt"]) == (2, 0, 2)
    # ... and where the failed attempt's log is: that pod is kept while the job exists
    assert f"kubectl finetune logs flaky -n {ns} --attempt 2 " in cond["message"]
    assert f"kubectl logs flaky-a2-0 -n {ns} -c trainer" in cond["message"]
    kept = cluster.get("pod", "flaky-a2-0", ns)
    assert kept is not None and kept["status"]["phase"] == "Failed"


def test_scheduler_preemption_is_not_a_failure(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 2)
    ns = make_namespace()
    cls = f"urgent-{short_id()}"
    cluster.apply(priority_class(cls, 100000))
    try:
        cluster.apply(ftj("victim", 2, "finetune-low", sel), ns)
        st = wait_phase(cluster, ns, "victim", "Running")
        node = job_pods(cluster, ns, "victim")[0]["spec"]["nodeName"]
        # someone else's pod with a preempting class: the kube-scheduler evicts the trainer
        cluster.apply(gpu_pod("intruder", 2, node=node, priority_class=cls), ns)
        st = wait_for("victim back in queue", lambda: (
            lambda s: s if s.get("phase") == "Queued" and s.get("preemptions") == 1 else None)(
            job_status(cluster, ns, "victim")), 60)
        assert st["failures"] == 0
        assert "kube-scheduler" in _condition(st, "Preempted")["message"] or \
            "deleted" in _condition(st, "Preempted")["message"]
        # it waits (the intruder holds the GPUs) and says why
        st = wait_for("queue reason", lambda: (job_status(cluster, ns, "victim").get("queue")
                                               or {}).get("reason"), 20)
        assert "nvidia.com/gpu" in st
        cluster.kubectl("delete", "pod", "intruder", "-n", ns, "--wait=true")
        st = wait_phase(cluster, ns, "victim", "Running", 30)
        assert (st["attempt"], st["preemptions"], st["failures"]) == (2, 1, 0)
    finally:
        cluster.kubectl("delete", "priorityclass", cls, "--ignore-not-found")


def test_delete_removes_children_but_never_an_existing_claim(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "shared-ckpt"},
                   "spec": {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}}}}, ns)
    cluster.apply([ftj("own-pvc", 1, "finetune-normal", sel),
                   ftj("shared", 1, "finetune-normal", sel,
                       checkpoint={"storage": {"claimName": "shared-ckpt"}})], ns)
    for name in ("own-pvc", "shared"):
        wait_phase(cluster, ns, name, "Running")
    assert cluster.get("pvc", "own-pvc-checkpoints", ns) is not None
    assert cluster.get("pvc", "shared-checkpoints", ns) is None  # no PVC for an existing claim
    cluster.kubectl("delete", "finetunejob", "own-pvc", "shared", "-n", ns)

    def children_gone() -> bool:
        left = cluster.kubectl("get", "pods,configmaps,serviceaccounts,roles,rolebindings,pvc",
                               "-n", ns, "-o", "name").stdout.split()
        ours = re.compile(r"/(own-pvc|shared)-(config|trainer|a\d)")
        return not [x for x in left if ours.search(x)]

    wait_for("garbage collection of the jobs' children", children_gone, 60)
    assert cluster.get("pvc", "shared-ckpt", ns) is not None  # the user's claim stays
    # the claim the operator created holds the output: kept (whenDeleted Retain, the default)
    assert cluster.get("pvc", "own-pvc-checkpoints", ns) is not None
    assert cluster.get("pvc", "shared-checkpoints", ns) is None


def test_metrics_follow_the_queue(cluster: Cluster, operator: OperatorProcess, make_namespace,
                                  gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 2)
    ns = make_namespace(gpu_quota=4)
    cluster.apply([ftj("m-first", 2, "finetune-low", sel)], ns)
    wait_phase(cluster, ns, "m-first", "Running")
    cluster.apply([ftj("m-second", 2, "finetune-low", sel)], ns)
    wait_phase(cluster, ns, "m-second", "Queued")

    def value(text: str, metric: str, **labels: str) -> float | None:
        for line in text.splitlines():
            if line.startswith(metric + "{") and all(f'{k}="{v}"' in line
                                                     for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return None

    text = wait_for("queue depth 1", lambda: (
        lambda t: t if value(t, "finetune_queue_depth", namespace=ns) == 1.0 else None)(
        operator.metrics()), 15)
    assert value(text, "finetune_gpus_allocated", namespace=ns) == 2.0
    assert value(text, "finetune_gpu_quota", namespace=ns) == 4.0
    assert value(text, "finetune_admissions_total", namespace=ns) == 1.0
    assert value(text, "finetune_admission_wait_seconds_count", namespace=ns) == 1.0
    complete(cluster, ns, "m-first")
    wait_phase(cluster, ns, "m-second", "Running")
    text = wait_for("queue drained", lambda: (
        lambda t: t if value(t, "finetune_queue_depth", namespace=ns) == 0.0 else None)(
        operator.metrics()), 15)
    assert value(text, "finetune_completions_total", namespace=ns) == 1.0
    assert value(text, "finetune_admissions_total", namespace=ns) == 2.0
    events = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
    assert any(e["reason"] == "Completed" for e in events["items"])


def test_multi_node_gang_is_admitted_whole(cluster: Cluster, operator: OperatorProcess,
                                           make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(2, 4)
    ns = make_namespace()
    # one node is partly taken: a 2-node gang of 4 GPUs per pod cannot start on one node
    cluster.apply(ftj("blocker", 2, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "blocker", "Running")
    cluster.apply(ftj("gang", 4, "finetune-normal", sel,
                      resources={"gpus": 4, "nodes": 2, "nodeSelector": sel}), ns)
    st = wait_for("gang waits whole", lambda: (
        lambda s: s if s.get("phase") == "Queued" and (s.get("queue") or {}).get("reason")
        else None)(job_status(cluster, ns, "gang")), 20)
    assert job_pods(cluster, ns, "gang") == []  # no partial gang
    complete(cluster, ns, "blocker")
    st = wait_phase(cluster, ns, "gang", "Running")
    pods = job_pods(cluster, ns, "gang")
    assert sorted(p["metadata"]["name"] for p in pods) == ["gang-a1-0", "gang-a1-1"]
    assert len({p["spec"]["nodeName"] for p in pods}) == 2  # one pod per node
    svc = cluster.get("service", "gang-workers", ns)
    assert svc is not None and svc["spec"]["clusterIP"] == "None"
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["NNODES"] == "2" and env["MASTER_ADDR"].startswith("gang-a1-0.gang-workers.")
    # a failing member restarts the whole gang (both pods of the attempt go)
    finish_pod(cluster, ns, "gang-a1-1", 1, "Error")
    st = wait_for("gang back to one attempt later", lambda: (
        lambda s: s if s.get("attempt") == 2 and s.get("phase") == "Running" else None)(
        job_status(cluster, ns, "gang")), 60)
    assert st["failures"] == 1
    names = sorted(p["metadata"]["name"] for p in job_pods(cluster, ns, "gang")
                   if not p["metadata"].get("deletionTimestamp"))
    assert [n for n in names if n.startswith("gang-a2")] == ["gang-a2-0", "gang-a2-1"]
