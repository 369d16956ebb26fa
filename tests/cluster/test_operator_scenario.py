"""Issue 3's scenario on the real control plane: two namespaces under GPU quotas on fake GPU
nodes; queue order by priority and aging; a critical job preempting a low one; the low one
resuming with attempt and preemptions incremented and failures unchanged."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ..kube import Cluster, wait_for
from ..operator_proc import (
    OperatorProcess,
    complete,
    ftj,
    job_pods,
    job_status,
    report_progress,
    wait_phase,
)

pytestmark = pytest.mark.cluster


def _ago(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _age(cluster: Cluster, ns: str, name: str, minutes: float) -> None:
    """Pretend the job has waited `minutes` (status.firstQueuedAt is what aging counts from).
    Retried until it sticks: the operator may be writing the status at the same moment."""
    since = _ago(minutes * 60)

    def patched() -> bool:
        cluster.kubectl("patch", "finetunejob", name, "-n", ns, "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": {
                            "queuedSince": since, "firstQueuedAt": since}}))
        return all(job_status(cluster, ns, name).get("firstQueuedAt") == since
                   for _ in range(3))

    wait_for(f"queuedSince of {ns}/{name} to stick", patched, 20, interval=0.5)


def test_quota_priority_aging_preemption_and_resume(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    team_a, team_b = make_namespace(gpu_quota=4), make_namespace(gpu_quota=8)

    # a low job takes the whole node; it reports progress and a checkpoint like the trainer
    cluster.apply(ftj("low-running", 4, "finetune-low", sel), team_a)
    wait_phase(cluster, team_a, "low-running", "Running")
    pod = job_pods(cluster, team_a, "low-running")[0]["metadata"]["name"]
    report_progress(cluster, team_a, pod, {
        "step": 40, "totalSteps": 100, "loss": 1.25, "tokensPerSecond": 900.0,
        "etaSeconds": 60.0, "checkpoint": {"step": 40, "path": "checkpoints/checkpoint-40",
                                           "savedAt": _ago(5),
                                           "saveSeconds": 2.0}})
    st = wait_for("progress mirrored into status", lambda: (
        lambda s: s if (s.get("progress") or {}).get("step") == 40 else None)(
        job_status(cluster, team_a, "low-running")), 15)
    assert st["progress"]["summary"] == "40/100" and st["progress"]["loss"] == 1.25
    assert st["checkpoint"]["step"] == 40

    # three waiting jobs: an old low one (aged 40 min: +3000 capped), a normal and a high one
    cluster.apply(ftj("low-old", 4, "finetune-low", sel), team_b)
    wait_phase(cluster, team_b, "low-old", "Queued")
    _age(cluster, team_b, "low-old", 40)
    cluster.apply(ftj("normal", 4, "finetune-normal", sel), team_b)
    cluster.apply(ftj("high", 4, "finetune-high", sel), team_b)

    def positions() -> dict[str, int] | None:
        pos = {n: (job_status(cluster, team_b, n).get("queue") or {}).get("position")
               for n in ("high", "low-old", "normal")}
        return pos if None not in pos.values() and len(set(pos.values())) == 3 else None

    pos = wait_for("queue positions for all waiting jobs", positions, 20)
    # priority first (high 7500), then aging lifts low-old (2500+3000) above normal (5000)
    assert pos["high"] < pos["low-old"] < pos["normal"], pos
    reason = job_status(cluster, team_b, "normal")["queue"]["reason"]
    assert "nvidia.com/gpu" in reason or "priority" in reason, reason

    # a critical job arrives: the low running job is preempted (not a failure)
    cluster.apply(ftj("critical", 4, "finetune-critical", sel), team_b)
    wait_phase(cluster, team_b, "critical", "Running", 30)
    low = wait_phase(cluster, team_a, "low-running", "Queued")
    assert low["preemptions"] == 1 and low["failures"] == 0 and low["attempt"] == 1
    preempted = next(c for c in low["conditions"] if c["type"] == "Preempted")
    # tenant words: team-a is told a job of another namespace took its GPUs, not which one
    assert preempted["status"] == "True" and "another namespace" in preempted["message"]
    assert team_b not in json.dumps(low) and "critical\"" not in json.dumps(low)

    # waiting jobs are admitted one at a time, in queue order, as GPUs free up
    sequence = [(team_b, "critical"), (team_b, "high"), (team_b, "low-old"), (team_b, "normal"),
                (team_a, "low-running")]
    for i, (ns, name) in enumerate(sequence[:-1]):
        wait_phase(cluster, ns, name, "Running")
        for later_ns, later in sequence[i + 1:]:  # everyone behind it still waits
            assert job_status(cluster, later_ns, later)["phase"] == "Queued", (name, later)
        complete(cluster, ns, name)
        done = wait_phase(cluster, ns, name, "Succeeded")
        assert done["output"]["adapterPath"] == "output/adapter"

    # the preempted job resumes: attempt 2, preemptions 1, failures 0, checkpoint kept
    low = wait_phase(cluster, team_a, "low-running", "Running")
    assert (low["attempt"], low["preemptions"], low["failures"]) == (2, 1, 0)
    assert low["checkpoint"]["step"] == 40
    pod2 = job_pods(cluster, team_a, "low-running")
    assert [p["metadata"]["labels"]["finetune.dev/attempt"] for p in pod2] == ["2"]
    env = {e["name"]: e.get("value") for e in pod2[0]["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_ATTEMPT"] == "2"
    # the resumed trainer reports it resumed from step 40: no steps lost
    report_progress(cluster, team_a, pod2[0]["metadata"]["name"],
                    {"step": 41, "totalSteps": 100, "resumedFromStep": 40})
    st = wait_for("resumed progress", lambda: (
        lambda s: s if (s.get("progress") or {}).get("step") == 41 else None)(
        job_status(cluster, team_a, "low-running")), 15)
    assert st["lostSteps"] == 0
    # the previous attempt's nested fields do not linger (a merge patch would keep them)
    assert "loss" not in st["progress"] and "etaSeconds" not in st["progress"], st["progress"]
    complete(cluster, team_a, "low-running")
    final = wait_phase(cluster, team_a, "low-running", "Succeeded")
    assert (final["attempt"], final["preemptions"], final["failures"]) == (2, 1, 0)
    events = cluster.kubectl("get", "events", "-n", team_a, "--field-selector",
                             "involvedObject.name=low-running", "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    # admitted at first sight: one Admitted Event, no Queued one (the write budget)
    assert {"Admitted", "Running", "Preempting", "Preempted", "Completed"} <= reasons
    assert "Queued" not in reasons
