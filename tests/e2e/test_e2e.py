"""The whole loop for real: operator + local node agent + real trainer processes.

A trainer pod really trains, really receives SIGTERM when a more urgent job needs its GPUs,
saves, and later really resumes; the final adapter equals an uninterrupted run's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from finetune_dev.devcluster.workloads import (
    MODEL_PATH,
    training_job,
)
from finetune_dev.nodeagent import find_log
from tests.builders.e2e import (
    RUN,
    assert_resumed_cleanly,
    assert_same_weights,
    get_job,
    step_at_least,
)

from ..kube import Cluster, gpu_pod, priority_class, short_id, wait_for
from ..operator_proc import OperatorProcess, job_pods, job_status, wait_phase

pytestmark = pytest.mark.e2e
# The local node agent's GPUs are not real: jobs use 1 GPU (one trainer process). A job with
# gpus > 1 runs torchrun with one process per GPU, which needs real GPUs (tests/gpu).
LONG = 3000  # steps: ~30 s here (a step takes ~10 ms), far more than a report + stop round trip


def test_operator_preemption_saves_resumes_and_matches_uninterrupted(
        cluster: Cluster, operator: OperatorProcess, agent, train_ns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ns = train_ns()
    # no periodic save before the end (interval > steps): a checkpoint mid-run is the SIGTERM one
    cluster.apply(training_job("low", gpus=1, priority_class="finetune-low", node=agent.node,
                               max_steps=LONG, interval_steps=10 * LONG), ns)
    step_at_least(cluster, ns, "low", 8)
    first_pod = job_pods(cluster, ns, "low")[0]["metadata"]["name"]
    cluster.apply(training_job("urgent", gpus=1, priority_class="finetune-critical",
                               node=agent.node, max_steps=10), ns)
    st = wait_for("low preempted and back in the queue", lambda: (
        lambda s: s if s.get("preemptions") == 1 and s.get("phase") in (
            "Queued", "Admitted", "Running", "Succeeded") else None)(
        job_status(cluster, ns, "low")), RUN)
    saved = st["checkpoint"]["step"]
    assert 0 < saved < LONG, "the SIGTERM save holds the step the trainer stopped at"
    log = find_log(agent.root, ns, first_pod, "trainer")
    assert log is not None and "Preempted" in log.read_text()
    wait_phase(cluster, ns, "urgent", "Succeeded", RUN)
    st = wait_phase(cluster, ns, "low", "Succeeded", RUN)
    assert_resumed_cleanly(st, 1)
    assert st["progress"]["resumedFromStep"] == saved
    assert st["progress"]["step"] == LONG
    assert_same_weights(get_job(cluster, ns, "low"), tmp_path)


def test_scheduler_preemption_saves_and_resumes(
        cluster: Cluster, operator: OperatorProcess, agent, train_ns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ns = train_ns()
    cluster.apply(training_job("victim", gpus=1, priority_class="finetune-low",
                               node=agent.node, max_steps=LONG, interval_steps=10 * LONG), ns)
    step_at_least(cluster, ns, "victim", 8)
    # not a FineTuneJob: another workload's pod with a preempting class of its own (the
    # finetune-* bands never preempt through the scheduler), scheduled by the kube-scheduler
    cls = f"other-urgent-{short_id()}"
    cluster.apply(priority_class(cls, 100000))
    intruder = gpu_pod("intruder", 1, node=agent.node, priority_class=cls)
    intruder["spec"]["containers"][0]["command"] = [
        "python", "-c", "import time; time.sleep(2)"]
    intruder["spec"]["restartPolicy"] = "Never"
    cluster.apply(intruder, ns)
    st = wait_for("victim preempted by the scheduler", lambda: (
        lambda s: s if s.get("preemptions") == 1 else None)(
        job_status(cluster, ns, "victim")), RUN)
    preempted = next(c for c in st["conditions"] if c["type"] == "Preempted")
    assert "kube-scheduler" in preempted["message"] or "SIGTERM" in preempted["message"], \
        preempted
    wait_for("intruder ran", lambda: (cluster.get("pod", "intruder", ns) or {}).get(
        "status", {}).get("phase") == "Succeeded", RUN)
    st = wait_phase(cluster, ns, "victim", "Succeeded", RUN)
    assert_resumed_cleanly(st, 1)
    assert_same_weights(get_job(cluster, ns, "victim"), tmp_path)
    cluster.kubectl("delete", "priorityclass", cls)


def test_suspend_saves_and_resume_completes(
        cluster: Cluster, operator: OperatorProcess, agent, train_ns) -> None:  # type: ignore[no-untyped-def]
    ns = train_ns()
    cluster.apply(training_job("pausable", gpus=1, priority_class="finetune-normal",
                               node=agent.node, max_steps=LONG, interval_steps=10 * LONG), ns)
    step_at_least(cluster, ns, "pausable", 5)
    cluster.kubectl("patch", "finetunejob", "pausable", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"suspend": true}}')
    st = wait_for("suspended", lambda: (
        lambda s: s if s.get("phase") == "Suspended" and not job_pods(cluster, ns, "pausable")
        and s.get("stopReason") is None else None)(job_status(cluster, ns, "pausable")), RUN)
    assert st["checkpoint"]["step"] > 0  # saved on the way out
    cluster.kubectl("patch", "finetunejob", "pausable", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"suspend": false}}')
    st = wait_phase(cluster, ns, "pausable", "Succeeded", RUN)
    assert (st["preemptions"], st["failures"], st["lostSteps"], st["attempt"]) == (0, 0, 0, 2)


def test_job_that_cannot_succeed_fails_after_backoff_limit(
        cluster: Cluster, operator: OperatorProcess, agent, train_ns) -> None:  # type: ignore[no-untyped-def]
    ns = train_ns()
    job = training_job("doomed", gpus=1, priority_class="finetune-normal", node=agent.node,
                       max_steps=10, backoffLimit=1)
    job["spec"]["dataset"]["source"] = {"pvc": {"claimName": "models",
                                                "path": f"{MODEL_PATH}/no-such-file.jsonl"}}
    cluster.apply(job, ns)
    st = wait_phase(cluster, ns, "doomed", "Failed", RUN)
    cond = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "BackoffLimitExceeded"
    assert "cannot read the dataset" in cond["message"] and "no-such-file.jsonl" in cond["message"]
    assert (st["failures"], st["preemptions"], st["attempt"]) == (2, 0, 2)


def test_delete_stops_the_trainer_within_its_grace_period(
        cluster: Cluster, operator: OperatorProcess, agent, train_ns) -> None:  # type: ignore[no-untyped-def]
    ns = train_ns()
    cluster.apply(training_job("doomed-run", gpus=1, priority_class="finetune-normal",
                               node=agent.node, max_steps=100000), ns)
    step_at_least(cluster, ns, "doomed-run", 3)
    pod = job_pods(cluster, ns, "doomed-run")[0]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    cluster.kubectl("delete", "finetunejob", "doomed-run", "-n", ns, "--wait=false")
    wait_for("the trainer pod gone", lambda: not job_pods(cluster, ns, "doomed-run"), grace + 30)
    assert time.monotonic() - started < grace
    log = find_log(agent.root, ns, pod["metadata"]["name"], "trainer")
    assert log is not None and "Preempted" in log.read_text()  # SIGTERM: saved and exited 0
    wait_for("children garbage-collected", lambda: not [
        x for x in cluster.kubectl("get", "configmaps,serviceaccounts,roles", "-n", ns,
                                   "-o", "name").stdout.split() if "doomed-run" in x], 60)
    # the checkpoint claim, which holds the trained model, outlives its job by default
    # (checkpoint.storage.whenDeleted: Retain)
    assert cluster.get("pvc", "doomed-run-checkpoints", ns) is not None
