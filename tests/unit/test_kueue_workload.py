"""Admission mode kueue, the pure part (kueue/workload.py, kueue/admitter.py) and its shell's
write discipline (kueue/sync.py against the recording fake): what a Workload means for the job,
the one write per change, none when nothing changed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_operator.admission.model import WaitCode
from finetune_operator.admission.seam import ClusterView
from finetune_operator.jobs.build.pod import build_pod
from finetune_operator.kueue.admitter import KueueAdmitter
from finetune_operator.kueue.sync import WorkloadSync
from finetune_operator.kueue.workload import (
    JOB_UID_LABEL,
    QUEUE_LABEL,
    ResourceFlavor,
    Workload,
    build_workload,
    plan_writes,
    positions,
    slim_flavor,
    slim_workload,
    verdict,
    workload_name,
)
from finetune_operator.settings import OperatorSettings
from tests.builders.jobkube import RecordingJobKube

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
SETTINGS = OperatorSettings()


def job(name: str = "j", uid: str = "u1", queue: str | None = "lq", phase: str | None = None,
        suspend: bool = False, nodes: int = 1, attempt: int = 0) -> FineTuneJob:
    labels = {QUEUE_LABEL: queue} if queue else {}
    return FineTuneJob.from_body({
        "metadata": {"name": name, "namespace": "team-a", "uid": uid, "labels": labels},
        "spec": {"model": {"name": "m", "source": {"hub": {"repo": "org/m"}}},
                 "dataset": {"source": {"configMap": {"name": "d", "key": "t.jsonl"}}},
                 "resources": {"gpus": 2, "nodes": nodes}, "suspend": suspend},
        "status": {"phase": phase, "attempt": attempt} if phase else {}})


def cond(type_: str, status: bool, reason: str = "R", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True" if status else "False", "reason": reason,
            "message": message, "lastTransitionTime": "2026-12-07T11:00:00Z"}


def raw_wl(uid: str = "u1", conds: list[dict[str, Any]] | None = None, active: bool = True,
           flavor: str | None = None, rv: str = "7", owner_uid: str | None = None,
           priority: int = 100, created: str = "2026-12-07T10:00:00Z") -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conds or []}
    if flavor:
        status["admission"] = {"clusterQueue": "cq", "podSetAssignments": [
            {"name": "trainer", "flavors": {"nvidia.com/gpu": flavor}}]}
    return {"metadata": {"name": f"finetunejob-j-{uid}", "namespace": "team-a", "uid": "w-" + uid,
                         "resourceVersion": rv, "creationTimestamp": created,
                         "labels": {JOB_UID_LABEL: uid},
                         "ownerReferences": [{"kind": "FineTuneJob", "uid": owner_uid or uid,
                                              "controller": True}]},
            "spec": {"queueName": "lq", "active": active, "priority": priority},
            "status": status}


def wl(**kw: Any) -> Workload:
    got = slim_workload(raw_wl(**kw))
    assert got is not None
    return got


ADMITTED = [cond("QuotaReserved", True), cond("Admitted", True)]
FLAVORS = {"h100": ResourceFlavor(node_labels=(("pool", "h100"),),
                                  tolerations=((("effect", "NoSchedule"), ("key", "gpu"),
                                                ("operator", "Exists")),))}


# ---- reading a Workload -------------------------------------------------------------------

def test_only_the_operators_own_workloads_are_read() -> None:
    assert slim_workload(raw_wl(owner_uid="someone-else")) is None
    other = raw_wl()
    del other["metadata"]["labels"][JOB_UID_LABEL]
    assert slim_workload(other) is None
    got = wl(conds=ADMITTED, flavor="h100")
    assert got.admitted and got.flavors == ("h100",) and got.job_uid == "u1"


def test_flavor_keeps_node_labels_and_tolerations() -> None:
    f = slim_flavor({"spec": {"nodeLabels": {"pool": "h100"}, "tolerations": [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}})
    assert f == FLAVORS["h100"]


# ---- verdicts -----------------------------------------------------------------------------

def test_admitted_workload_admits_with_the_flavors_constraints() -> None:
    v = verdict(job(), wl(conds=ADMITTED, flavor="h100"), FLAVORS)
    assert v.admit and v.node_selector == {"pool": "h100"}
    assert v.tolerations == [{"effect": "NoSchedule", "key": "gpu", "operator": "Exists"}]
    # a flavor the cache has not seen yet: wait, never create pods without its constraints
    v = verdict(job(), wl(conds=ADMITTED, flavor="a100"), FLAVORS)
    assert not v.admit and "a100" in v.reason


def test_evicted_workload_preempts_with_kueues_reason() -> None:
    conds = [*ADMITTED, cond("Evicted", True, "Preempted", "Preempted to accommodate a job")]
    v = verdict(job(phase="Running", attempt=1), wl(conds=conds, flavor="h100"), FLAVORS)
    assert not v.admit and v.preempt is not None
    assert "evicted by Kueue (Preempted)" in v.preempt and "accommodate" in v.preempt


def test_waiting_says_why_in_kueues_words_and_where() -> None:
    conds = [cond("QuotaReserved", False, "Pending", "insufficient unused quota for gpu")]
    v = verdict(job(), wl(conds=conds), FLAVORS, position=3)
    assert (v.admit, v.code, v.position) == (False, WaitCode.KUEUE, 3)
    assert "insufficient unused quota" in v.reason and "LocalQueue lq" in v.reason
    assert "creating" in verdict(job(), None, FLAVORS).reason
    nolabel = verdict(job(queue=None), None, FLAVORS)
    assert not nolabel.admit and QUEUE_LABEL in nolabel.reason and "kubectl label" in \
        nolabel.reason


def test_positions_follow_kueues_order_per_queue() -> None:
    pending = [cond("QuotaReserved", False, "Pending", "")]
    got = positions([
        wl(uid="old-low", conds=pending, priority=10, created="2026-12-07T09:00:00Z"),
        wl(uid="new-high", conds=pending, priority=1000, created="2026-12-07T11:00:00Z"),
        wl(uid="old-high", conds=pending, priority=1000, created="2026-12-07T10:00:00Z"),
        wl(uid="running", conds=ADMITTED, priority=5000)])
    assert got == {"old-high": 1, "new-high": 2, "old-low": 3}


def test_admitter_decides_every_unfinished_job() -> None:
    jobs = [job(uid="a"), job(name="b", uid="b", phase="Succeeded"), job(name="c", uid="c")]
    view = ClusterView(jobs=jobs, pods_by_uid={}, classes={}, nodes=[], active_pods=[],
                       quotas=[], workloads={"a": wl(uid="a", conds=ADMITTED, flavor="h100")},
                       flavors=FLAVORS)
    out = KueueAdmitter(SETTINGS).decide(view, NOW)
    assert out.by_uid["a"].admit and "b" not in out.by_uid
    assert not out.by_uid["c"].admit
    (row,) = out.queue_view["team-a"]
    assert (row["name"], row["clusterPosition"]) == ("c", 1)


# ---- the Workload ----------------------------------------------------------------------

def test_workload_is_one_pod_set_of_the_real_pods() -> None:
    j = job(nodes=2)
    body = build_workload(j, build_pod(j, SETTINGS, 1, 0, "finetune-high", None), 2,
                          "finetune-high", 1000)
    assert body["metadata"]["name"] == workload_name(j)
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u1"
    (ps,) = body["spec"]["podSets"]
    assert ps["count"] == 2  # a gang: admitted whole
    res = ps["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert res["nvidia.com/gpu"] == "2"
    assert body["spec"]["priorityClassRef"] == {
        "group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "finetune-high"}
    assert (body["spec"]["priority"], body["spec"]["queueName"]) == (1000, "lq")
    assert len(workload_name(job(name="x" * 253))) <= 253


# ---- writes -------------------------------------------------------------------------------

def test_one_write_per_change() -> None:
    body = {"metadata": {"name": "w"}}
    assert plan_writes(job(), None, 0, 0, 1, body, NOW).kind == "create"  # type: ignore[union-attr]
    assert plan_writes(job(queue=None), None, 0, 0, 1, body, NOW) is None
    assert plan_writes(job(phase="Succeeded"), None, 0, 0, 1, body, NOW) is None
    # finished: Finished=True once
    w = plan_writes(job(phase="Succeeded"), wl(conds=ADMITTED), 0, 0, 1, None, NOW)
    assert w is not None and {"type": "Finished", "status": "True"}.items() <= next(
        c for c in w.conditions if c["type"] == "Finished").items()
    done = wl(conds=[*ADMITTED, cond("Finished", True)])
    assert plan_writes(job(phase="Succeeded"), done, 0, 0, 1, None, NOW) is None
    # suspend deactivates, resume activates
    w = plan_writes(job(suspend=True), wl(conds=ADMITTED), 1, 1, 1, None, NOW)
    assert w is not None and (w.kind, w.active) == ("active", False)
    w = plan_writes(job(), wl(conds=ADMITTED, active=False), 0, 0, 1, None, NOW)
    assert w is not None and (w.kind, w.active) == ("active", True)


def test_eviction_clears_the_reservation_only_once_every_pod_stopped() -> None:
    evicted = wl(conds=[*ADMITTED, cond("Evicted", True, "Preempted", "for a higher one")],
                 flavor="h100")
    assert plan_writes(job(phase="Running", attempt=1), evicted, 1, 0, 1, None, NOW) is None
    w = plan_writes(job(phase="Queued", attempt=1), evicted, 0, 0, 1, None, NOW)
    assert w is not None and w.kind == "status" and w.clear_admission
    got = {c["type"]: c for c in w.conditions}
    assert got["QuotaReserved"]["status"] == "False" and got["Admitted"]["status"] == "False"
    assert got["Requeued"]["status"] == "True"  # a preemption: Kueue requeues it


def test_pods_ready_is_reported_when_it_changes() -> None:
    running = job(phase="Running", attempt=1)
    w = plan_writes(running, wl(conds=ADMITTED, flavor="h100"), 1, 1, 1, None, NOW)
    assert w is not None and {c["type"]: c["status"] for c in w.conditions}["PodsReady"] == "True"
    ready = wl(conds=[*ADMITTED, cond("PodsReady", True)], flavor="h100")
    assert plan_writes(running, ready, 1, 1, 1, None, NOW) is None  # steady: nothing


def test_sync_writes_once_and_then_nothing_while_idle() -> None:
    kube = RecordingJobKube()
    store: dict[str, Workload] = {}
    sync = WorkloadSync(kube, SETTINGS, store.get, lambda: 0.0)
    jobs = [job(uid="a"), job(name="b", uid="b")]
    assert sync.sync(jobs, {}, {"finetune-normal": 100}, NOW) == 2
    assert [c[:2] for c in kube.calls] == [("create", "Workload")] * 2
    for _ in range(3):  # nothing changed: no write, not even a look
        assert sync.sync(jobs, {}, {"finetune-normal": 100}, NOW) == 0
    assert len(kube.calls) == 2
    # Kueue admitted a (the watch brings the Workload): PodsReady=False once pods are asked
    store["a"] = wl(uid="a", conds=ADMITTED, flavor="h100")
    assert sync.sync(jobs, {}, {}, NOW) == 1
    assert kube.calls[-1][:2] == ("patch", "workloads/status")


def test_a_waiting_jobs_changed_spec_replaces_its_workload() -> None:
    j = job()
    body = build_workload(j, build_pod(j, SETTINGS, 1, 0, "finetune-normal", None), 1,
                          "finetune-normal", 100)
    same = slim_workload({**raw_wl(conds=[cond("QuotaReserved", False, "Pending", "")]),
                          "metadata": {**raw_wl()["metadata"],
                                       "annotations": body["metadata"]["annotations"]}})
    assert same is not None
    assert plan_writes(j, same, 0, 0, 1, body, NOW) is None  # unchanged: nothing
    bigger = job(nodes=2)
    body2 = build_workload(bigger, build_pod(bigger, SETTINGS, 1, 0, "finetune-normal", None),
                           2, "finetune-normal", 100)
    w = plan_writes(bigger, same, 0, 0, 2, body2, NOW)
    assert w is not None and w.kind == "delete"
    # never while Kueue holds quota for it (admitted or evicted but not yet released)
    held = slim_workload({**raw_wl(conds=ADMITTED, flavor="h100"),
                          "metadata": {**raw_wl()["metadata"],
                                       "annotations": body["metadata"]["annotations"]}})
    assert held is not None
    w = plan_writes(bigger, held, 1, 1, 2, body2, NOW)
    assert w is None or w.kind != "delete"
