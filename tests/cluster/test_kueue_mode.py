"""Admission mode kueue against the real Kueue v0.17.0 (out of cluster, built from the Go module
proxy) on the local control plane with kwok GPU nodes: Kueue decides, the operator creates the
pods, stops them gracefully when Kueue evicts, and resumes when Kueue admits again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.kueue.workload import QUEUE_LABEL
from tests.builders import kueue as kq
from tests.builders.cli import ok
from tests.builders.kueue import job, running
from tests.kube import Cluster, wait_for
from tests.operator_proc import OperatorProcess, complete, ftj, job_pods, job_status, wait_phase

pytestmark = pytest.mark.timeout(300)


def test_jobs_queue_run_and_are_preempted_in_kueues_order(
        cluster: Cluster, kueue_operator: OperatorProcess, kueue: Path,
        queues: Callable[..., tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    ns, _ = queues(2)
    cluster.apply(job("first", 2), ns)
    st = running(cluster, ns, "first")
    assert st["attempt"] == 1
    wl = kq.workload_of(cluster, ns, "first")
    assert wl is not None and kq.condition(wl, "Admitted").get("status") == "True", wl
    # one Workload, owned by the job, its pods as Kueue sees them, the band's priority
    assert wl["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    (ps,) = wl["spec"]["podSets"]
    assert ps["count"] == 1
    assert ps["template"]["spec"]["containers"][0]["resources"]["requests"][
        "nvidia.com/gpu"] == "2"
    assert wl["spec"]["priorityClassRef"]["name"] == "finetune-normal"
    # the pod carries the flavor's node labels (the job named none)
    (pod,) = job_pods(cluster, ns, "first")
    fl = kq.condition(wl, "QuotaReserved")
    assert fl.get("status") == "True"
    assert pod["spec"]["nodeSelector"] and all(k.startswith("finetune.dev/test")
                                               for k in pod["spec"]["nodeSelector"]), pod["spec"]
    wait_for("PodsReady on the Workload", lambda: kq.condition(
        kq.workload_of(cluster, ns, "first"), "PodsReady").get("status") == "True", 30)

    # two more: normal first, then high; Kueue orders high before normal
    cluster.apply(job("normal", 2), ns)
    cluster.apply(job("low", 2, "finetune-low"), ns)

    def waiting(name: str) -> dict[str, Any] | None:
        s = job_status(cluster, ns, name)
        return s if s.get("phase") == "Queued" and "queued in Kueue LocalQueue lq" in (
            s.get("queue") or {}).get("reason", "") else None

    st_normal = wait_for("normal waits in Kueue", lambda: waiting("normal"), 30)
    assert "insufficient unused quota" in st_normal["queue"]["reason"], st_normal
    assert waiting("low") or wait_for("low waits in Kueue", lambda: waiting("low"), 30)
    # `kubectl finetune list --queue` (the visibility endpoint) shows Kueue's order, as a tenant
    cluster.kubectl("create", "serviceaccount", "alice", "-n", ns)
    cluster.kubectl("create", "role", "ftj-reader", "-n", ns, "--verb=get,list",
                    "--resource=finetunejobs.finetune.dev")
    cluster.kubectl("create", "rolebinding", "alice", "-n", ns, "--role=ftj-reader",
                    f"--serviceaccount={ns}:alice")
    monkeypatch.setenv("FINETUNE_TOKEN",
                       cluster.kubectl("create", "token", "alice", "-n", ns).stdout.strip())
    out = wait_for("both waiting jobs in the queue view", lambda: (
        lambda o: o if "normal" in o and "low" in o else None)(
        ok(cluster, "list", "--queue", "-n", ns)), 20)
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert " 1 " in rows["normal"] and " 2 " in rows["low"], out
    assert not job_pods(cluster, ns, "normal")  # no pod before Kueue admits

    # a high-priority job: Kueue evicts `first` (normal), the operator stops it gracefully
    cluster.apply(job("urgent", 2, "finetune-high"), ns)
    st = wait_for("first preempted by Kueue", lambda: (lambda s: s if s.get("preemptions") == 1
                                                       else None)(job_status(cluster, ns, "first")),
                  60)
    assert st["failures"] == 0, st
    conds = {c["type"]: c for c in st.get("conditions") or []}
    assert "Kueue" in conds["Preempted"]["message"], conds["Preempted"]
    running(cluster, ns, "urgent")
    # Kueue's order after urgent: first (normal, created before `normal`), normal, low
    complete(cluster, ns, "urgent")
    wait_phase(cluster, ns, "urgent", "Succeeded", 60)
    wait_for("urgent's Workload Finished", lambda: kq.condition(
        kq.workload_of(cluster, ns, "urgent"), "Finished").get("status") == "True", 30)
    st = running(cluster, ns, "first")
    assert st["attempt"] == 2 and st["failures"] == 0, st
    assert job_status(cluster, ns, "normal")["phase"] == "Queued"
    complete(cluster, ns, "first")
    running(cluster, ns, "normal")
    assert job_status(cluster, ns, "low")["phase"] == "Queued"
    complete(cluster, ns, "normal")
    running(cluster, ns, "low")
    complete(cluster, ns, "low")
    wait_phase(cluster, ns, "low", "Succeeded", 60)
    # one Workload per job, none created twice
    names = [w["metadata"]["name"] for w in kq.workloads(cluster, ns)]
    assert len(names) == len(set(names)) == 4, names


def test_cohort_borrowing_and_reclaim(
        cluster: Cluster, kueue_operator: OperatorProcess, kueue: Path,
        queues: Callable[..., tuple[str, str]]) -> None:
    cohort = kq.unique("co")
    ns_a, fl = queues(2, cohort=cohort, nodes=1, per_node=4)
    ns_b, _ = queues(2, cohort=cohort, flavor=fl)
    # team a uses team b's idle GPUs: its second job borrows
    cluster.apply(job("own", 2), ns_a)
    cluster.apply(job("borrowed", 2), ns_a)
    running(cluster, ns_a, "own")
    running(cluster, ns_a, "borrowed")
    # team b wants its quota back: Kueue reclaims by evicting a borrowing job of team a
    cluster.apply(job("mine", 2), ns_b)
    running(cluster, ns_b, "mine", 90)
    preempted = [n for n in ("own", "borrowed")
                 if job_status(cluster, ns_a, n).get("preemptions") == 1]
    assert len(preempted) == 1, {n: job_status(cluster, ns_a, n) for n in ("own", "borrowed")}
    st = job_status(cluster, ns_a, preempted[0])
    assert st["failures"] == 0 and st["phase"] in ("Queued", "Preempting"), st
    # team b never learns team a's job names from its own job
    assert ns_a not in json.dumps(job_status(cluster, ns_b, "mine"))


def test_gang_is_admitted_whole_or_not_at_all(
        cluster: Cluster, kueue_operator: OperatorProcess, kueue: Path,
        queues: Callable[..., tuple[str, str]]) -> None:
    ns, _ = queues(3, nodes=2, per_node=2)
    gang = job("gang", 2)
    gang["spec"]["resources"]["nodes"] = 2
    cluster.apply(gang, ns)
    wl = wait_for("the gang's Workload", lambda: kq.workload_of(cluster, ns, "gang"), 30)
    assert wl["spec"]["podSets"][0]["count"] == 2
    wait_for("Kueue says why it waits", lambda: "Kueue" in (
        job_status(cluster, ns, "gang").get("queue") or {}).get("reason", ""), 30)
    assert not job_pods(cluster, ns, "gang")  # 4 GPUs of 3: no pod, not half a gang
    cq = None
    for obj in json.loads(cluster.kubectl("get", "clusterqueues.kueue.x-k8s.io", "-o",
                                          "json").stdout)["items"]:
        if obj["spec"]["namespaceSelector"]["matchLabels"][
                "kubernetes.io/metadata.name"] == ns:
            cq = obj
    assert cq is not None
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = 4
    cluster.kubectl("patch", "clusterqueue.kueue.x-k8s.io", cq["metadata"]["name"],
                    "--type=merge", "-p", json.dumps({"spec": {
                        "resourceGroups": cq["spec"]["resourceGroups"]}}))
    running(cluster, ns, "gang")
    assert len(job_pods(cluster, ns, "gang")) == 2


def test_no_queue_label_waits_with_the_fix_and_suspend_deactivates(
        cluster: Cluster, kueue_operator: OperatorProcess, kueue: Path,
        queues: Callable[..., tuple[str, str]]) -> None:
    ns, _ = queues(2)
    bare = ftj("bare", 1, "finetune-normal", {})
    cluster.apply(bare, ns)
    st = wait_for("the label is asked for", lambda: (lambda s: s if QUEUE_LABEL in (
        s.get("queue") or {}).get("reason", "") else None)(job_status(cluster, ns, "bare")), 30)
    conds = {c["type"]: c for c in st.get("conditions") or []}
    assert conds["Admitted"]["reason"] == "WaitingForKueue", conds
    assert kq.workload_of(cluster, ns, "bare") is None
    cluster.kubectl("label", "finetunejob", "bare", "-n", ns, f"{QUEUE_LABEL}=lq")
    running(cluster, ns, "bare")
    # suspend: the pods stop and the Workload is deactivated (its quota goes back)
    cluster.kubectl("patch", "finetunejob", "bare", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"suspend": true}}')
    wait_phase(cluster, ns, "bare", "Suspended", 60)
    wait_for("the Workload deactivated and its quota released", lambda: (
        lambda w: w is not None and w["spec"].get("active") is False
        and not (w.get("status") or {}).get("admission"))(kq.workload_of(cluster, ns, "bare")),
        60)
    cluster.kubectl("patch", "finetunejob", "bare", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"suspend": false}}')
    st = running(cluster, ns, "bare")
    assert st["attempt"] == 2 and st["failures"] == 0, st


def test_operator_restart_changes_nothing(
        cluster: Cluster, kueue_operator: OperatorProcess, kueue: Path,
        queues: Callable[..., tuple[str, str]]) -> None:
    ns, _ = queues(2)
    cluster.apply(job("steady", 2), ns)
    cluster.apply(job("waiting", 2), ns)
    running(cluster, ns, "steady")
    before = {w["metadata"]["name"]: w["metadata"]["resourceVersion"]
              for w in kq.workloads(cluster, ns)}
    pods_before = [p["metadata"]["uid"] for p in job_pods(cluster, ns, "steady")]
    kueue_operator.kill()
    kueue_operator.start()

    def cycles() -> float:
        for line in kueue_operator.metrics().splitlines():
            if line.startswith("finetune_scheduling_cycle_seconds_count"):
                return float(line.split()[-1])
        return 0.0

    wait_for("several cycles after the restart", lambda: cycles() >= 5, 30)
    # nothing recreated: the same pods, the same Workloads at the same versions
    assert [p["metadata"]["uid"] for p in job_pods(cluster, ns, "steady")] == pods_before
    after = {w["metadata"]["name"]: w["metadata"]["resourceVersion"]
             for w in kq.workloads(cluster, ns)}
    assert after == before, (before, after)
    assert job_status(cluster, ns, "waiting")["phase"] == "Queued"
    complete(cluster, ns, "steady")
    running(cluster, ns, "waiting")


def test_a_waiting_job_edited_gets_a_new_workload(
        cluster: Cluster, kueue_operator: OperatorProcess, kueue: Path,
        queues: Callable[..., tuple[str, str]]) -> None:
    ns, _ = queues(2)
    cluster.apply(job("big", 4), ns)  # 4 GPUs of a 2-GPU queue: it can only wait
    wl = wait_for("its Workload", lambda: kq.workload_of(cluster, ns, "big"), 30)
    wait_for("Kueue says why it waits", lambda: "Kueue LocalQueue" in (
        job_status(cluster, ns, "big").get("queue") or {}).get("reason", ""), 30)
    # the user lowers it while it waits: Kueue's podSets do not follow, so it is replaced
    cluster.kubectl("patch", "finetunejob", "big", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"resources": {"gpus": 2}}}')
    running(cluster, ns, "big")
    new = kq.workload_of(cluster, ns, "big")
    assert new is not None and new["metadata"]["uid"] != wl["metadata"]["uid"]
    assert new["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"][
        "requests"]["nvidia.com/gpu"] == "2"
