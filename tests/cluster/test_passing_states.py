"""Issue 10 on the real control plane: pods that never start go back to the queue and then
fail with the pod's reason, a refused pod creation is reported at once, a pod stuck terminating
on a lost node is force-deleted without a second victim, a quota dip or scoped quotas never
fail a job, the deadline counts admitted time only, and a finished job's TTL deletes it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest

from ..kube import Cluster, wait_for
from ..operator_proc import (
    OperatorProcess,
    complete,
    ftj,
    job_pods,
    job_status,
    wait_phase,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def op(cluster, crd_installed, priority_classes, tmp_path_factory) -> Iterator[OperatorProcess]:  # type: ignore[no-untyped-def]
    proc = OperatorProcess(cluster, tmp_path_factory.mktemp("passing"), {
        "FINETUNE_PODS_READY_TIMEOUT_SECONDS": "10",  # the scheduler has said why by then
        "FINETUNE_MAX_PODS_READY_REQUEUES": "1",
        "FINETUNE_FORCE_DELETE_MARGIN_SECONDS": "2",
        "FINETUNE_GRACE_PERIOD_SECONDS": "2",
        "FINETUNE_UNSCHEDULABLE_GRACE_SECONDS": "600",
    })
    proc.start()
    yield proc
    proc.stop()


def _time(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def _cond(st: dict, type_: str) -> dict:
    return next(c for c in st.get("conditions") or [] if c["type"] == type_)


def _events(cluster: Cluster, ns: str, name: str) -> str:
    return cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                           f"involvedObject.name={name}", "-o", "json").stdout


def test_pods_that_never_start_are_requeued_then_fail_with_the_pods_reason(
        cluster: Cluster, op: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    sel = gpu_nodes(1, 1)
    # 1000 CPUs fit no node: the scheduler leaves the pod Pending (Unschedulable)
    cluster.apply(ftj("stuck", 1, "finetune-normal", sel,
                      resources={"gpus": 1, "cpu": "1000", "nodeSelector": sel}), ns)
    st = wait_phase(cluster, ns, "stuck", "Failed", 120)
    failed = _cond(st, "Failed")
    assert failed["reason"] == "PodsNotReady", failed
    assert "Unschedulable" in failed["message"] or "Insufficient cpu" in failed["message"]
    assert st["startRequeues"] == 2 and st["failures"] == 0
    assert "PodsNotReady" in _events(cluster, ns, "stuck")
    assert not [p for p in job_pods(cluster, ns, "stuck") if not p["metadata"].get(
        "deletionTimestamp")]  # its GPUs were given back


def test_a_refused_pod_creation_is_reported_at_once(
        cluster: Cluster, op: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    cluster.kubectl("create", "quota", "cpu", "-n", ns, "--hard=requests.cpu=1")
    wait_for("quota status", lambda: (cluster.get("resourcequota", "cpu", ns) or {})
             .get("status", {}).get("hard"), 30)
    sel = gpu_nodes(1, 1)
    cluster.apply(ftj("refused", 1, "finetune-normal", sel,
                      resources={"gpus": 1, "cpu": "4", "nodeSelector": sel}), ns)
    st = wait_for("the refusal in the status", lambda: (
        lambda s: s if "exceeded quota" in json.dumps(s) else None)(
        job_status(cluster, ns, "refused")), 30)
    assert st["startRequeues"] >= 1 and st["failures"] == 0
    assert "exceeded quota" in _events(cluster, ns, "refused")


def test_a_pod_stuck_terminating_on_a_lost_node_is_force_deleted_without_a_second_victim(
        cluster: Cluster, op: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    sel = gpu_nodes(2, 4)
    cluster.apply([ftj("low-a", 4, "finetune-low", sel), ftj("low-b", 4, "finetune-low", sel)],
                  ns)
    wait_phase(cluster, ns, "low-a", "Running")
    wait_phase(cluster, ns, "low-b", "Running")
    lost = job_pods(cluster, ns, "low-a")[0]["spec"]["nodeName"]
    # the node goes away: kwok stops answering for it and it reports NotReady
    cluster.kubectl("annotate", "node", lost, "kwok.x-k8s.io/node-")
    cluster.kubectl("patch", "node", lost, "--subresource=status", "--type=strategic", "-p",
                    json.dumps({"status": {"conditions": [{
                        "type": "Ready", "status": "False", "reason": "NodeLost",
                        "message": "test: the node is gone"}]}}))
    # a critical job needs 4 GPUs: the operator preempts a low job; if it picks the one on the
    # lost node, that pod never finishes terminating by itself
    cluster.apply(ftj("urgent", 4, "finetune-critical", sel), ns)
    victim = wait_for("a victim", lambda: next(
        (n for n in ("low-a", "low-b") if job_status(cluster, ns, n).get("phase")
         in ("Preempting", "Queued")), None), 30)
    other = "low-b" if victim == "low-a" else "low-a"
    st = wait_phase(cluster, ns, victim, "Queued", 60)
    assert st["preemptions"] == 1 and st["failures"] == 0
    assert job_status(cluster, ns, other)["phase"] == "Running"  # no second victim
    assert job_status(cluster, ns, other).get("preemptions", 0) == 0
    if victim == "low-a":  # its pod was on the lost node: it had to be force-deleted
        assert not [p for p in job_pods(cluster, ns, "low-a")
                    if p["spec"].get("nodeName") == lost]
    wait_for("urgent admitted", lambda: job_status(cluster, ns, "urgent").get("phase")
             in ("Admitted", "Running"), 30)


def test_a_quota_dip_never_fails_a_waiting_job(
        cluster: Cluster, op: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace(gpu_quota=16)
    sel = gpu_nodes(1, 8)
    cluster.apply(ftj("first", 8, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "first", "Running")
    cluster.apply(ftj("second", 8, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "second", "Queued")

    def set_quota(n: int) -> None:
        cluster.kubectl("patch", "resourcequota", "gpus", "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": {"hard": {"requests.nvidia.com/gpu": str(n)}}}))
        wait_for(f"quota {n} in force", lambda: (cluster.get("resourcequota", "gpus", ns) or {})
                 .get("status", {}).get("hard", {}).get("requests.nvidia.com/gpu") == str(n), 30)

    set_quota(4)  # 8 GPUs can never fit a 4-GPU quota... for now
    st = wait_for("second waits with the reason", lambda: (
        lambda s: s if s.get("unschedulableSince") else None)(job_status(cluster, ns, "second")),
        30)
    assert st["phase"] == "Queued"
    assert _cond(st, "Admitted")["status"] == "False"
    set_quota(16)
    complete(cluster, ns, "first")
    st = wait_phase(cluster, ns, "second", "Running", 30)
    assert st["failures"] == 0 and not st.get("unschedulableSince")


def test_per_priority_class_quotas_are_honoured(
        cluster: Cluster, op: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    for name, cls, hard in (("high-band", "finetune-high", 8), ("low-band", "finetune-low", 2)):
        cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name},
                       "spec": {"hard": {"requests.nvidia.com/gpu": str(hard)},
                                "scopeSelector": {"matchExpressions": [{
                                    "scopeName": "PriorityClass", "operator": "In",
                                    "values": [cls]}]}}}, ns)
        wait_for("quota status", lambda name=name: (cluster.get("resourcequota", name, ns)
                                                     or {}).get("status", {}).get("hard"), 30)
    sel = gpu_nodes(1, 8)
    cluster.apply([ftj("big-high", 8, "finetune-high", sel),
                   ftj("big-low", 4, "finetune-low", sel)], ns)
    wait_phase(cluster, ns, "big-high", "Running")  # only the high-band quota applies to it
    st = wait_for("big-low waits on its own band's quota", lambda: (
        lambda s: s if "quota" in json.dumps(s.get("queue") or {}) else None)(
        job_status(cluster, ns, "big-low")), 30)
    assert st["phase"] == "Queued"


def test_deadline_counts_admitted_time_only(
        cluster: Cluster, op: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    sel = gpu_nodes(1, 2)
    cluster.apply(ftj("blocker", 2, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "blocker", "Running")
    cluster.apply(ftj("timed", 2, "finetune-normal", sel, activeDeadlineSeconds=6), ns)
    since = _time(wait_phase(cluster, ns, "timed", "Queued")["queuedSince"])

    def queued_past_deadline() -> bool:  # time in the queue does not count
        st = job_status(cluster, ns, "timed")
        assert st["phase"] == "Queued", st
        return dt.datetime.now(dt.UTC) - since > dt.timedelta(seconds=8)

    wait_for("timed queued longer than its deadline", queued_past_deadline, 30, interval=0.5)
    complete(cluster, ns, "blocker")
    wait_phase(cluster, ns, "timed", "Running", 30)
    st = wait_phase(cluster, ns, "timed", "Failed", 30)
    assert _cond(st, "Failed")["reason"] == "DeadlineExceeded"


def test_ttl_after_finished_deletes_the_job_and_its_children(
        cluster: Cluster, op: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    cluster.apply(ftj("brief", 1, "finetune-normal", gpu_nodes(1, 1),
                      ttlSecondsAfterFinished=2), ns)
    wait_phase(cluster, ns, "brief", "Running")
    complete(cluster, ns, "brief")
    wait_for("the job deleted after its TTL", lambda: cluster.get("finetunejob", "brief", ns)
             is None, 30)
    wait_for("its pods garbage-collected", lambda: job_pods(cluster, ns, "brief") == [], 60)
