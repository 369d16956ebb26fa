"""Admission mode kueue, the pure part (kueue/workload.py, kueue/admitter.py) and its shell's
write discipline (kueue/sync.py against the recording fake): what a Workload means for the job,
the one write per change, none when nothing changed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.server import ModelServer
from finetune_operator.admission.model import WaitCode
from finetune_operator.admission.seam import ClusterView
from finetune_operator.jobs.build.pod import build_pod
from finetune_operator.kueue.admitter import KueueAdmitter
from finetune_operator.kueue.sync import WorkloadSync
from finetune_operator.kueue.workload import (
    EXTERNAL_FRAMEWORKS,
    JOB_UID_LABEL,
    QUEUE_LABEL,
    SPEC_ANNOTATION,
    ResourceFlavor,
    Workload,
    build_workload,
    plan_writes,
    positions,
    server_workload,
    slim_flavor,
    slim_workload,
    verdict,
    workload_name,
)
from finetune_operator.serving import build as server_build
from finetune_operator.serving.plan import plan_server
from finetune_operator.settings import OperatorSettings
from tests.builders.jobkube import RecordingJobKube
from tests.builders.server_cases import valid_server

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


# ---- ModelServers: admitted by Kueue like a job ----------------------------------------

CLASSES = {"finetune-normal": 100, "finetune-high": 1000}


def server(uid: str = "s1", queue: str | None = "lq", phase: str | None = None,
           band: str = "finetune-normal") -> ModelServer:
    body = valid_server("chat", "team-a")
    body["metadata"].update(uid=uid, generation=1,
                            labels={QUEUE_LABEL: queue} if queue else {})
    body["spec"].update(runtime="transformers", adapters=[], priorityClassName=band)
    body["status"] = {"phase": phase, "observedGeneration": 1} if phase else {}
    return ModelServer.from_body(body)


def server_wl(uid: str = "s1", **kw: Any) -> Workload:
    raw = raw_wl(uid=uid, **kw)
    raw["metadata"]["ownerReferences"][0]["kind"] = "ModelServer"
    for a in (raw["status"].get("admission") or {}).get("podSetAssignments") or []:
        a["name"] = "server"
    got = slim_workload(raw)
    assert got is not None
    return got


def server_body(s: ModelServer) -> dict[str, Any]:
    body = server_workload(s, SETTINGS, CLASSES)
    assert body is not None
    return body


def test_kueue_is_told_both_kinds() -> None:
    assert EXTERNAL_FRAMEWORKS == ("FineTuneJob.v1alpha1.finetune.dev",
                                   "ModelServer.v1alpha1.finetune.dev")


def test_a_servers_workload_is_its_one_pod_owned_by_it_in_its_band() -> None:
    s = server()
    body = server_body(s)
    assert body["metadata"]["name"] == workload_name(s)
    assert body["metadata"]["name"].startswith("modelserver-chat-")
    assert body["metadata"]["labels"] == {JOB_UID_LABEL: "s1"}
    owner = body["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ModelServer", "chat", "s1", True)
    (ps,) = body["spec"]["podSets"]
    assert (ps["name"], ps["count"]) == ("server", 1)
    pod_spec = server_build.build_pod(s, SETTINGS, (), "finetune-normal", None)["spec"]
    tmpl = ps["template"]["spec"]
    assert tmpl["containers"][0]["resources"] == pod_spec["containers"][0]["resources"]
    assert tmpl["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert tmpl["tolerations"] == pod_spec["tolerations"]
    assert tmpl["priorityClassName"] == "finetune-normal"
    assert body["spec"]["priorityClassRef"]["name"] == "finetune-normal"
    assert (body["spec"]["priority"], body["spec"]["queueName"], body["spec"]["active"]) == (
        100, "lq", True)
    # a band that is not installed: no Workload (the server's status says why)
    assert server_workload(s, SETTINGS, {"finetune-high": 1000}) is None


def test_a_servers_workload_is_read_with_its_flavor() -> None:
    got = server_wl(conds=ADMITTED, flavor="h100")
    assert (got.owner_kind, got.job_uid, got.flavors, got.admitted) == (
        "ModelServer", "s1", ("h100",), True)
    # a Workload owned by another ModelServer than its label names is not the operator's
    raw = raw_wl(uid="s1", owner_uid="other")
    raw["metadata"]["ownerReferences"][0]["kind"] = "ModelServer"
    assert slim_workload(raw) is None


def test_a_server_is_admitted_with_the_flavor_and_waits_with_kueues_message() -> None:
    s = server()
    v = verdict(s, server_wl(conds=ADMITTED, flavor="h100"), FLAVORS)
    assert v.admit and v.node_selector == {"pool": "h100"}
    plan = plan_server(s, [], {}, v, "finetune-normal", None, SETTINGS)
    assert plan.create_pod is not None and plan.admitted
    spec = plan.create_pod["spec"]
    assert spec["nodeSelector"] == {"pool": "h100"}
    assert {"effect": "NoSchedule", "key": "gpu", "operator": "Exists"} in spec["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]  # its own kept
    pending = [cond("QuotaReserved", False, "Pending", "insufficient unused quota for gpu")]
    v = verdict(s, server_wl(conds=pending), FLAVORS, position=2)
    plan = plan_server(s, [], {}, v, "finetune-normal", None, SETTINGS)
    assert plan.create_pod is None and not plan.admitted
    assert plan.reason.startswith("waiting for Kueue (position 2): queued in Kueue LocalQueue lq")
    assert "insufficient unused quota" in plan.reason
    nolabel = verdict(server(queue=None), None, FLAVORS)
    assert "kubectl label modelserver chat" in nolabel.reason and "this server" in nolabel.reason


def test_an_evicted_server_stops_then_its_reservation_is_cleared() -> None:
    s = server(phase="Ready")
    evicted = server_wl(conds=[*ADMITTED, cond("Evicted", True, "Preempted", "for urgent")],
                        flavor="h100")
    v = verdict(s, evicted, FLAVORS)
    pod = {"name": "chat-1", "uid": "p1", "phase": "Running", "deleting": False, "hash": "h",
           "ip": "10.0.0.1", "node": "n", "created": None, "message": ""}
    plan = plan_server(s, [pod], {}, v, "finetune-normal", None, SETTINGS)
    assert plan.delete_pods == [("chat-1", "p1")] and "evicted by Kueue" in plan.reason
    assert plan_writes(s, evicted, 1, 0, 1, None, NOW) is None  # its pod still holds the GPU
    w = plan_writes(s, evicted, 0, 0, 1, None, NOW)
    assert w is not None and w.kind == "status" and w.clear_admission


def test_a_failed_server_finishes_its_workload_and_gets_a_new_one_once_fixed() -> None:
    w = plan_writes(server(phase="Failed"), server_wl(conds=ADMITTED, flavor="h100"), 0, 0, 1,
                    None, NOW)
    assert w is not None and w.kind == "status"
    fin = next(c for c in w.conditions if c["type"] == "Finished")
    assert (fin["status"], fin["reason"], fin["message"]) == ("True", "Failed",
                                                              "ModelServer Failed")
    done = server_wl(conds=[*ADMITTED, cond("Finished", True, "Failed")], flavor="h100")
    assert plan_writes(server(phase="Failed"), done, 0, 0, 1, None, NOW) is None
    # its spec fixed (no longer Failed): a Finished Workload admits nothing; it is replaced
    fixed = server(phase="Queued")
    assert not verdict(fixed, done, FLAVORS).admit
    w = plan_writes(fixed, done, 0, 0, 1, server_body(fixed), NOW)
    assert w is not None and w.kind == "delete"


def test_the_admitter_decides_servers_from_their_workloads() -> None:
    view = ClusterView(jobs=[job(uid="a")], pods_by_uid={}, classes={}, nodes=[],
                       active_pods=[], quotas=[], flavors=FLAVORS,
                       workloads={"s1": server_wl(conds=ADMITTED, flavor="h100")},
                       servers=[server(), server(uid="s2")])
    out = KueueAdmitter(SETTINGS).decide(view, NOW)
    assert out.by_uid["s1"].admit and not out.by_uid["s2"].admit
    assert "creating its Kueue Workload" in out.by_uid["s2"].reason
    rows = {r["name"]: r for r in out.queue_view["team-a"]}
    assert rows["chat"]["gpus"] == 1 and rows["chat"]["priorityClass"] == "finetune-normal"


def test_server_sync_creates_once_then_writes_nothing_while_idle_and_forgets_the_deleted(
        ) -> None:
    kube = RecordingJobKube()
    store: dict[str, Workload] = {}
    sync = WorkloadSync(kube, SETTINGS, store.get, lambda: 0.0)
    servers = [server()]
    assert sync.sync_servers(servers, {}, CLASSES, NOW) == 1
    ((verb, kind, *_),) = kube.calls
    assert (verb, kind) == ("create", "Workload")
    for _ in range(3):  # nothing changed: no write
        assert sync.sync_servers(servers, {}, CLASSES, NOW) == 0
    # its status changed before the watch brought the Workload: not created again
    assert sync.sync_servers([server(phase="Queued")], {}, CLASSES, NOW) == 0
    # admitted, its pod running: PodsReady once, then nothing
    store["s1"] = server_wl(conds=ADMITTED, flavor="h100", rv="8")
    pods = {"s1": [{"phase": "Running", "deleting": False}]}
    assert sync.sync_servers(servers, pods, CLASSES, NOW) == 1
    assert kube.calls[-1][:2] == ("patch", "workloads/status")
    store["s1"] = server_wl(conds=[*ADMITTED, cond("PodsReady", True)], flavor="h100", rv="9")
    for _ in range(3):
        assert sync.sync_servers(servers, pods, CLASSES, NOW) == 0
    assert len(kube.calls) == 2
    # a band that is not installed: no Workload until it is
    other = [server(uid="s3", band="finetune-high")]
    assert sync.sync_servers(other, {}, {"finetune-normal": 100}, NOW) == 0
    assert sync.sync_servers(other, {}, CLASSES, NOW) == 1
    assert "s1" not in sync._seen  # the deleted server is forgotten


def test_an_admitted_servers_changed_spec_gives_its_quota_back_and_asks_anew() -> None:
    s = server(phase="Ready")
    old = server_body(s)
    bigger = server(phase="Ready")
    bigger.spec.resources.gpus = 2
    new = server_body(bigger)
    raw = raw_wl(uid="s1", conds=ADMITTED, flavor="h100")
    raw["metadata"]["ownerReferences"][0]["kind"] = "ModelServer"
    raw["metadata"]["annotations"] = old["metadata"]["annotations"]
    raw["status"]["admission"]["podSetAssignments"][0]["name"] = "server"
    held = slim_workload(raw)
    assert held is not None
    digest = new["metadata"]["annotations"][SPEC_ANNOTATION]
    # unchanged: admitted as before
    assert verdict(s, held, FLAVORS, None, old["metadata"]["annotations"][SPEC_ANNOTATION]).admit
    # changed: its pod stops (a preemption of the old reservation), then the Workload goes
    v = verdict(bigger, held, FLAVORS, None, digest)
    assert not v.admit and v.preempt is not None and "spec changed" in v.preempt
    w = plan_writes(bigger, held, 1, 1, 1, new, NOW)  # its pod still holds the GPU
    assert w is None or w.kind != "delete"
    w = plan_writes(bigger, held, 0, 0, 1, new, NOW)
    assert w is not None and w.kind == "delete"
    # the admitter compares each server's Workload with what it asks now
    view = ClusterView(jobs=[], pods_by_uid={}, classes=CLASSES, nodes=[], active_pods=[],
                       quotas=[], flavors=FLAVORS, workloads={"s1": held}, servers=[bigger])
    assert KueueAdmitter(SETTINGS).decide(view, NOW).by_uid["s1"].preempt is not None
