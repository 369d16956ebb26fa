"""reconcile.plan(): the job state machine, pass by pass, on pods shaped like the API server's.

Each pass feeds the previous plan's status back (through the wire format, as the operator
re-reads it), like the loop does. Pods are whatever the cluster shows at that pass.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from finetune_api.job import FineTuneJob
from finetune_api.status import FineTuneJobStatus
from finetune_api.times import parse_time, rfc3339
from finetune_operator.admission import JobVerdict, WaitCode
from finetune_operator.jobs.reconcile import Ctx, Outcome, Plan, plan, wants_admission
from tests.builders.jobs import make_job
from tests.builders.pods import gang, make_pod
from tests.builders.reconcile import (
    ADMIT,
    DONE,
    NOW,
    PREEMPTED,
    SCHED,
    VICTIM,
    WAIT,
    Sim,
    admitted,
    at,
    cached,
    cond,
    metric_kinds,
    names,
    queued,
    reasons,
    running,
    with_spec,
    with_status,
)
from tests.builders.reports import report

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------ first pass, queue


def test_first_pass_queues_the_job_with_a_created_event() -> None:
    sim = Sim(make_job(gpus=1, generation=4))
    p = sim.step(decision=JobVerdict(position=3, reason="needs 1 nvidia.com/gpu; quota team-a "
                                      "has 0 free; lower resources.gpus or wait",
                                      code=WaitCode.QUOTA))
    st = p.status
    assert st.phase == "Queued"
    assert st.attempt == 0 and st.preemptions == 0 and st.failures == 0
    assert st.queue is not None and st.queue.position == 3
    assert st.queue.reason.startswith("needs 1 nvidia.com/gpu")
    assert st.queued_since == rfc3339(NOW)
    assert st.observed_generation == 4
    assert st.effective_priority_class == "finetune-high"
    admitted_c = cond(st, "Admitted")
    assert admitted_c.status == "False" and admitted_c.reason == "QuotaExhausted"
    assert admitted_c.last_transition_time == rfc3339(NOW)
    assert ("Normal", "Queued", "accepted; waiting for admission") in p.events
    assert p.create_attempt is None and p.delete_pods == [] and p.outcomes == []


def test_first_pass_does_not_mutate_the_input_job() -> None:
    job = make_job(gpus=1)
    before = job.model_dump()
    plan(job, [], ADMIT, Ctx(now=NOW, backoff_seconds=10))
    assert job.model_dump() == before


def test_waiting_job_pass_is_quiet() -> None:
    sim = queued()
    decision = JobVerdict(position=2, reason="needs 1 nvidia.com/gpu on one node; largest free "
                           "node has 0", code=WaitCode.CAPACITY)
    first = sim.tick(5).step(decision=decision)
    assert cond(first.status, "Admitted").reason == "InsufficientCapacity"
    again = sim.tick(5).step(decision=decision)
    assert again.events == [] and again.outcomes == [] and again.create_attempt is None
    assert again.status == first.status


@pytest.mark.parametrize(("text", "code", "reason"), [
    ("needs 4 nvidia.com/gpu; quota team-a has 2 free; lower resources.gpus or wait",
     WaitCode.QUOTA, "QuotaExhausted"),
    ("needs 2 nodes with 4 nvidia.com/gpu free each; 1 node(s) have that",
     WaitCode.CAPACITY, "InsufficientCapacity"),
    ("namespace team-a already runs 2 jobs (maxRunningJobsPerNamespace); wait for one to finish",
     WaitCode.NAMESPACE_LIMIT, "NamespaceJobLimit"),
    # the reason is the admitter's code, never guessed from the text
    ("quota text, but the code says capacity", WaitCode.CAPACITY, "InsufficientCapacity"),
    ("", None, "Waiting"),
])
def test_waiting_reason_of_the_admitted_condition(text: str, code: WaitCode | None,
                                                  reason: str) -> None:
    p = queued().step(decision=JobVerdict(position=1, reason=text, code=code))
    c = cond(p.status, "Admitted")
    assert c.reason == reason
    assert c.message == (text or "waiting for admission")


def test_wants_admission() -> None:
    sim = queued()
    assert wants_admission(make_job(), NOW)  # a new job (no phase yet) is a queued job
    assert wants_admission(sim.job, NOW)
    assert not wants_admission(with_spec(sim.job, suspend=True), NOW)
    sim.step(decision=ADMIT)
    assert not wants_admission(sim.job, NOW)


# ------------------------------------------------------------------ admission


def test_admission_starts_attempt_1_and_asks_for_its_children() -> None:
    sim = queued()
    p = sim.tick(90).step(decision=ADMIT)
    st = p.status
    assert st.phase == "Admitted"
    assert st.attempt == 1 and p.create_attempt == 1
    assert st.queue is None and st.retry_after is None
    assert st.admitted_at == rfc3339(at(90))
    c = cond(st, "Admitted")
    assert c.status == "True" and c.reason == "Admitted"
    assert c.last_transition_time == rfc3339(at(90))
    assert "attempt 1 admitted after 90s in queue" in c.message
    assert reasons(p) == ["Admitted"]
    assert p.outcomes == [Outcome.admitted(90.0)]
    assert p.delete_pods == []


def test_new_job_admitted_on_its_first_pass() -> None:
    p = Sim(make_job(gpus=1)).step(decision=ADMIT)
    assert p.status.phase == "Admitted" and p.create_attempt == 1
    assert reasons(p) == ["Admitted"]  # admitted at first sight: one Event, not two
    assert p.outcomes == [Outcome.admitted(0.0)]


def test_admission_carries_the_policy_placement_to_the_children() -> None:
    p = Sim(make_job(gpus=2, nodes=2)).step(decision=JobVerdict(admit=True,
                                                                 placement=("n1", "n2")))
    assert p.create_attempt == 1 and p.placement == ("n1", "n2")
    again = Sim(make_job(gpus=2, nodes=2)).step(decision=ADMIT)
    assert again.placement == ()  # unknown (e.g. children recreated after a restart)


def test_children_missing_after_admission_are_created_again_idempotently() -> None:
    sim = admitted()
    first = sim.tick(5).step()  # operator restarted before creating anything
    assert first.create_attempt == 1
    assert first.status.phase == "Admitted" and first.status.attempt == 1
    assert first.events == [] and first.outcomes == []
    second = sim.tick(5).step()
    assert second.create_attempt == 1
    assert second.status == first.status and second.events == []


def test_gang_partly_created_is_completed() -> None:
    sim = admitted(make_job(gpus=2, nodes=2))
    p = sim.tick(5).step([make_pod(sim.job, 1, 0, phase="Pending", node=None)])
    assert p.create_attempt == 1
    assert p.status.phase == "Admitted" and p.status.preemptions == 0


def test_admitted_pods_pending_wait_quietly() -> None:
    sim = admitted(make_job(gpus=2, nodes=2))
    pods = [make_pod(sim.job, 1, 0), make_pod(sim.job, 1, 1, phase="Pending", node=None)]
    p = sim.tick(5).step(pods)
    assert p.status.phase == "Admitted"
    assert p.create_attempt is None and p.events == [] and p.delete_pods == []


def test_readmitted_job_with_children_missing_creates_them_not_a_preemption() -> None:
    """After a preemption, start_time is set (from attempt 1). Attempt 2 is admitted; the
    operator restarts before creating its pods. The missing pods of an attempt that never ran
    must be created, not taken for a preemption."""
    sim = running()
    sim.tick(60).step(decision=JobVerdict(preempt=VICTIM))
    sim.tick(5).step()  # pods gone -> Queued, preemptions 1
    assert sim.st.phase == "Queued" and sim.st.preemptions == 1
    sim.tick(30).step(decision=ADMIT)
    assert sim.st.phase == "Admitted" and sim.st.attempt == 2
    p = sim.tick(2).step()  # attempt 2's pods not there (yet)
    assert p.status.phase == "Admitted"
    assert p.create_attempt == 2
    assert p.status.preemptions == 1


def test_readmitted_gang_partly_created_is_completed_not_preempted() -> None:
    sim = running(make_job(gpus=2, nodes=2))
    sim.tick(60).step(decision=JobVerdict(preempt=VICTIM))
    sim.tick(5).step()
    sim.tick(30).step(decision=ADMIT)
    p = sim.tick(2).step([make_pod(sim.job, 2, 0, phase="Pending", node=None)])
    assert p.status.phase == "Admitted" and p.create_attempt == 2
    assert p.status.preemptions == 1


# ------------------------------------------------------------------ running


def test_all_pods_running_sets_running_and_start_time_once() -> None:
    sim = admitted(make_job(gpus=2, nodes=2))
    p = sim.tick(10).step(gang(sim.job, 1))
    st = p.status
    assert st.phase == "Running"
    assert st.start_time == rfc3339(sim.now)
    c = cond(st, "Running")
    assert c.status == "True" and c.reason == "Running"
    assert "2 pod(s) running" in c.message
    assert reasons(p) == []  # a first start: the Admitted Event and the phase say it (budget)
    assert p.create_attempt is None and p.delete_pods == []
    later = sim.tick(600).step(gang(sim.job, 1))
    assert later.status.start_time == st.start_time
    assert later.events == [] and later.outcomes == []
    assert later.status == st


def test_start_time_is_kept_across_attempts() -> None:
    sim = running()
    first_start = sim.st.start_time
    sim.tick(100).step(decision=JobVerdict(preempt=VICTIM))
    sim.tick(5).step()
    sim.tick(5).step(decision=ADMIT)
    p = sim.tick(5).step([make_pod(sim.job, 2, 0, progress={
        "step": 12, "resumedFromStep": 12,
        "checkpoint": {"step": 12, "path": "checkpoints/checkpoint-12"}})])
    assert p.status.phase == "Running" and p.status.attempt == 2
    assert p.status.start_time == first_start
    assert ("Normal", "Running", "attempt 2 running, resuming from checkpoint step 12") in p.events


def test_progress_annotation_is_mirrored() -> None:
    sim = running()
    wire = {"step": 12, "totalSteps": 20, "loss": 0.5, "resumedFromStep": None,
              "checkpoint": {"step": 10, "path": "checkpoints/checkpoint-10",
                             "savedAt": "2026-01-01T12:00:30Z", "saveSeconds": 2.0}}
    p = sim.tick(30).step([make_pod(sim.job, 1, 0, progress=wire)])
    assert p.status.progress is not None and p.status.progress.summary == "12/20"
    assert p.status.checkpoint is not None and p.status.checkpoint.step == 10
    assert p.status.progress_attempt == 1
    assert p.events == [] and p.outcomes == []


def test_last_report_seen_on_the_watch_counts_when_the_pod_is_already_gone() -> None:
    """The trainer's report right after its SIGTERM save can land just before its pod is
    deleted: the status still gets that checkpoint (from the pod watch)."""
    sim = running()
    sim.tick(5).step([make_pod(sim.job, 1, 0, progress={"step": 7, "totalSteps": 20})])
    final = {"step": 9, "totalSteps": 20, "checkpoint": {
        "step": 9, "path": "checkpoints/checkpoint-9", "savedAt": "2026-01-01T12:01:00Z"}}
    ctx = Ctx(now=sim.now + dt.timedelta(seconds=5), backoff_seconds=10,
              priority_class="finetune-high", watched_report=report(final))
    p = plan(sim.job, [], WAIT, ctx)  # the pod vanished (a preemption)
    assert p.status.checkpoint is not None and p.status.checkpoint.step == 9
    assert p.status.progress is not None and p.status.progress.step == 9
    # an older watched report never rolls the status back
    stale = Ctx(now=ctx.now, backoff_seconds=10, priority_class="finetune-high",
                watched_report=report({"step": 3, "totalSteps": 20}))
    sim.job = with_status(sim.job, p.status)
    p2 = plan(sim.job, [make_pod(sim.job, 1, 0)], WAIT, stale)
    assert p2.status.progress is not None and p2.status.progress.step == 9


# ------------------------------------------------------------------ success


def test_rank0_exit0_completed_succeeds() -> None:
    sim = running()
    sim.tick(30).step([make_pod(sim.job, 1, 0, progress={"step": 19, "totalSteps": 20})])
    p = sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE,
                                    progress={"step": 19, "totalSteps": 20})])
    st = p.status
    assert st.phase == "Succeeded"
    assert st.completion_time == rfc3339(sim.now)
    assert st.output is not None
    assert st.output.adapter_path == "output/adapter"
    assert st.output.merged_path == "output/merged"
    assert st.output.metrics == {"evalLoss": 0.91, "trainLoss": 0.8}
    assert st.progress is not None and st.progress.step == 20
    assert st.progress.summary == "20/20"
    complete = cond(st, "Complete")
    assert complete.status == "True" and complete.reason == "Completed"
    assert "output/adapter" in complete.message
    assert cond(st, "Running").status == "False"
    assert reasons(p) == ["Completed"]
    assert metric_kinds(p) == ["completion"]
    assert st.failures == 0 and st.preemptions == 0


def test_success_completes_the_gang_and_removes_the_other_ranks() -> None:
    sim = running(make_job(gpus=2, nodes=2))
    pods = [make_pod(sim.job, 1, 0, exit_code=0, message=DONE), make_pod(sim.job, 1, 1)]
    p = sim.tick(30).step(pods)
    assert p.status.phase == "Succeeded"
    assert names(p.delete_pods) == ["bot-a1-1"]


def test_success_seen_before_running_still_sets_start_time() -> None:
    sim = admitted()
    p = sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE)])
    assert p.status.phase == "Succeeded"
    assert p.status.start_time == rfc3339(sim.now)


def test_exit0_of_a_pod_being_deleted_is_not_a_success() -> None:
    sim = running()
    pod = make_pod(sim.job, 1, 0, exit_code=0, message=DONE, deleting=True)
    p = sim.tick(30).step([pod])
    assert p.status.phase != "Succeeded"
    assert p.status.completion_time is None
    assert "completion" not in metric_kinds(p)


def test_exit0_of_rank1_alone_is_not_a_success() -> None:
    sim = running(make_job(gpus=2, nodes=2))
    pods = [make_pod(sim.job, 1, 0), make_pod(sim.job, 1, 1, exit_code=0, message=DONE)]
    p = sim.tick(30).step(pods)
    assert p.status.phase == "Running"
    assert p.status.completion_time is None


def test_trainer_exit0_with_reason_preempted_is_a_preemption_not_a_success() -> None:
    sim = running()
    p = sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=PREEMPTED)])
    st = p.status
    assert st.phase == "Queued"
    assert st.preemptions == 1 and st.failures == 0
    assert st.completion_time is None and st.output is None
    assert "Preempting" in reasons(p) and "Preempted" in reasons(p)
    assert "Completed" not in reasons(p)
    assert metric_kinds(p) == ["preemption"]


# ------------------------------------------------------------------ preemption


def test_scheduler_preemption_waits_for_the_pod_then_requeues() -> None:
    sim = running()
    victim = make_pod(sim.job, 1, 0, disruption=SCHED, deleting=True)
    p1 = sim.tick(60).step([victim])
    st = p1.status
    assert st.phase == "Preempting"
    assert st.preemptions == 0 and st.failures == 0
    running_c = cond(st, "Running")
    assert running_c.status == "False" and running_c.reason == "Preempting"
    assert "kube-scheduler" in running_c.message
    assert reasons(p1) == ["Preempting"]
    assert p1.delete_pods == []  # the scheduler is already deleting it
    assert p1.outcomes == []

    # the trainer saves and is killed: terminated but the object still exists
    dying = make_pod(sim.job, 1, 0, exit_code=143, disruption=SCHED, deleting=True)
    p2 = sim.tick(20).step([dying])
    st = p2.status
    assert st.phase == "Queued"
    assert st.preemptions == 1 and st.failures == 0
    assert st.retry_after is None
    assert st.queued_since == rfc3339(sim.now)
    assert cond(st, "Admitted").status == "False"
    pre = cond(st, "Preempted")
    assert pre.status == "True" and "not counted as a failure" in pre.message
    assert p2.outcomes == [Outcome.preempted("scheduler")]
    assert reasons(p2) == ["Preempted"]
    assert wants_admission(sim.job, sim.now)

    p3 = sim.tick(5).step([])
    assert p3.events == [] and p3.outcomes == []
    assert p3.status.preemptions == 1


def test_scheduler_preemption_pod_gone_at_once() -> None:
    sim = running()
    sim.tick(60).step([make_pod(sim.job, 1, 0, disruption=SCHED, deleting=True)])
    p = sim.tick(20).step([])
    assert p.status.phase == "Queued" and p.status.preemptions == 1
    assert p.outcomes == [Outcome.preempted("scheduler")]


def test_eviction_api_is_a_preemption() -> None:
    sim = running()
    sim.tick(60).step([make_pod(sim.job, 1, 0, disruption="EvictionByEvictionAPI",
                                deleting=True)])
    assert sim.st.phase == "Preempting"
    p = sim.tick(20).step([])
    assert p.status.preemptions == 1 and p.status.failures == 0
    assert p.outcomes == [Outcome.preempted("eviction")]


def test_operator_preemption_deletes_pods_and_requeues_when_gone() -> None:
    sim = running(make_job(gpus=2, nodes=2))
    p1 = sim.tick(60).step(gang(sim.job, 1), decision=JobVerdict(preempt=VICTIM))
    assert p1.status.phase == "Preempting"
    assert p1.status.stop_reason == VICTIM
    assert names(p1.delete_pods) == ["bot-a1-0", "bot-a1-1"]
    assert cond(p1.status, "Running").message == VICTIM
    assert ("Normal", "Preempting", VICTIM) in p1.events

    # pods terminating: no new decision, no second delete, no new event
    p2 = sim.tick(5).step(gang(sim.job, 1, deleting=True))
    assert p2.status.phase == "Preempting"
    assert p2.delete_pods == [] and p2.events == [] and p2.outcomes == []

    p3 = sim.tick(30).step([])
    assert p3.status.phase == "Queued"
    assert p3.status.preemptions == 1 and p3.status.failures == 0
    assert p3.status.stop_reason is None
    assert p3.outcomes == [Outcome.preempted("operator")]
    assert cond(p3.status, "Preempted").message.startswith(VICTIM)


def test_preempting_job_keeps_deleting_pods_that_are_still_there() -> None:
    sim = running()
    sim.tick(60).step(decision=JobVerdict(preempt=VICTIM), pods=[make_pod(sim.job, 1, 0)])
    p = sim.tick(5).step([make_pod(sim.job, 1, 0)])  # the delete did not happen (crash)
    assert p.status.phase == "Preempting"
    assert names(p.delete_pods) == ["bot-a1-0"]
    assert p.events == []


def test_preemption_of_an_admitted_job_without_pods() -> None:
    sim = admitted()
    p = sim.tick(5).step(decision=JobVerdict(preempt=VICTIM))
    assert p.status.phase == "Queued" and p.status.preemptions == 1
    assert p.create_attempt is None


def test_pod_vanishing_while_running_is_a_preemption() -> None:
    sim = running()
    p = sim.tick(60).step([])
    st = p.status
    assert st.phase == "Queued"
    assert st.preemptions == 1 and st.failures == 0
    assert "its pod was deleted" in cond(st, "Preempted").message
    assert reasons(p) == ["Preempting", "Preempted"]


def test_pod_deleted_by_a_user_while_running_is_a_preemption() -> None:
    sim = running()
    p = sim.tick(60).step([make_pod(sim.job, 1, 0, deleting=True)])
    assert p.status.phase == "Preempting"
    p = sim.tick(60).step([])
    assert p.status.preemptions == 1 and p.status.failures == 0


def test_nonzero_exit_while_preempting_is_not_a_failure() -> None:
    sim = running()
    sim.tick(60).step([make_pod(sim.job, 1, 0)], decision=JobVerdict(preempt=VICTIM))
    p = sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=137, deleting=True)])
    assert p.status.phase == "Queued"
    assert p.status.failures == 0 and p.status.preemptions == 1


def test_rank0_completing_while_preempting_is_a_success() -> None:
    sim = running()
    sim.tick(60).step([make_pod(sim.job, 1, 0)], decision=JobVerdict(preempt=VICTIM))
    p = sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE)])
    assert p.status.phase == "Succeeded"


def test_preemption_without_a_checkpoint_says_it_restarts_from_scratch() -> None:
    sim = running(make_job(gpus=1, checkpoint={"intervalSteps": 50}))
    p = sim.tick(60).step([make_pod(sim.job, 1, 0, progress={"step": 7})],
                          decision=JobVerdict(preempt=VICTIM))
    p = sim.tick(10).step([])
    [text] = [e[2] for e in p.events if e[1] == "Preempted"]
    assert "checkpoint step 0" not in text and "will resume" not in text
    assert "no checkpoint was saved yet, so it restarts from scratch" in text
    assert "7 step(s) of work are redone" in text
    assert "every 50 steps (spec.checkpoint.intervalSteps)" in text


def test_preemption_with_a_checkpoint_says_where_it_resumes() -> None:
    sim = running()
    ck = {"step": 12, "path": "checkpoints/checkpoint-12", "savedAt": "2026-01-01T12:01:00Z"}
    sim.tick(60).step([make_pod(sim.job, 1, 0, progress={"step": 12, "checkpoint": ck})],
                      decision=JobVerdict(preempt=VICTIM))
    p = sim.tick(10).step([])
    [text] = [e[2] for e in p.events if e[1] == "Preempted"]
    assert text.endswith("back in the queue, will resume from checkpoint step 12")


def test_readmission_after_preemption_resumes_from_the_checkpoint() -> None:
    sim = running()
    ck = {"step": 12, "path": "checkpoints/checkpoint-12", "savedAt": "2026-01-01T12:01:00Z"}
    sim.tick(60).step([make_pod(sim.job, 1, 0, progress={"step": 12, "checkpoint": ck})],
                      decision=JobVerdict(preempt=VICTIM))
    sim.tick(10).step([])
    p = sim.tick(20).step(decision=ADMIT)
    assert p.status.attempt == 2 and p.create_attempt == 2
    assert "resumes from checkpoint step 12" in cond(p.status, "Admitted").message
    assert p.outcomes == [Outcome.admitted(20.0)]


# ------------------------------------------------------------------ failures and retries


def test_failure_counts_and_requeues_with_backoff() -> None:
    sim = running()
    pod = make_pod(sim.job, 1, 0, exit_code=1, message={"reason": "Error", "message": "boom"})
    p = sim.tick(60).step([pod], backoff=40)
    st = p.status
    assert st.phase == "Queued"
    assert st.failures == 1 and st.preemptions == 0
    assert st.retry_after == rfc3339(sim.now + dt.timedelta(seconds=40))
    run_c = cond(st, "Running")
    assert run_c.status == "False" and run_c.reason == "Failed"
    assert "code 1" in run_c.message and "boom" in run_c.message
    assert cond(st, "Admitted").reason == "Retrying"
    # an absolute time, not a countdown: the status stays the same pass after pass
    assert st.queue is not None and f"retry at {st.retry_after}" in st.queue.reason
    assert [e[:2] for e in p.events] == [("Warning", "AttemptFailed")]
    assert "(1/3 allowed)" in p.events[0][2]
    assert p.outcomes == [Outcome.failed("exit-code")]
    assert p.delete_pods == [] and p.create_attempt is None


def test_backoff_is_respected_before_retry_after() -> None:
    sim = running()
    sim.tick(60).step([make_pod(sim.job, 1, 0, exit_code=1)], backoff=40)
    assert not wants_admission(sim.job, sim.now)
    assert not wants_admission(sim.job, sim.now + dt.timedelta(seconds=39))
    # even told to admit, the state machine does not admit before retryAfter
    p = sim.tick(10).step(decision=ADMIT)
    assert p.status.phase == "Queued" and p.create_attempt is None
    assert p.status.attempt == 1
    assert p.status.queue is not None
    assert f"retry at {p.status.retry_after}" in p.status.queue.reason
    assert wants_admission(sim.job, sim.now + dt.timedelta(seconds=30))
    p = sim.tick(30).step(decision=ADMIT)
    assert p.status.phase == "Admitted" and p.create_attempt == 2
    assert p.status.retry_after is None
    assert p.status.failures == 1


def test_backoff_delay_comes_from_the_context() -> None:
    sim = running()
    p = sim.tick(60).step([make_pod(sim.job, 1, 0, exit_code=1)], backoff=600)
    assert p.status.retry_after == rfc3339(sim.now + dt.timedelta(seconds=600))


def test_oomkilled_past_backoff_limit_fails_with_the_cause() -> None:
    sim = running(make_job(gpus=1, backoff_limit=1))
    sim.tick(60).step([make_pod(sim.job, 1, 0, exit_code=1)])
    assert sim.st.failures == 1 and sim.st.phase == "Queued"
    sim.tick(60).step(decision=ADMIT)
    sim.tick(10).step([make_pod(sim.job, 2, 0)])
    p = sim.tick(60).step([make_pod(sim.job, 2, 0, exit_code=137, reason="OOMKilled")])
    st = p.status
    assert st.phase == "Failed"
    assert st.failures == 2
    assert st.completion_time == rfc3339(sim.now)
    assert st.queue is None
    failed = cond(st, "Failed")
    assert failed.status == "True" and failed.reason == "BackoffLimitExceeded"
    assert "backoffLimit=1" in failed.message
    assert "OOMKilled" in failed.message and "137" in failed.message
    assert "resources.memory" in failed.message
    assert cond(st, "Running").status == "False"
    assert ("Warning", "BackoffLimitExceeded") in [e[:2] for e in p.events]
    assert p.create_attempt is None


def test_backoff_limit_exceeded_points_to_the_failed_attempts_log() -> None:
    """The Failed message names the attempt, the pod and a logs command that reads it (the
    pod of the last attempt is kept while the job exists)."""
    sim = running(make_job(gpus=1, backoff_limit=0))
    p = sim.tick(60).step([make_pod(sim.job, 1, 0, exit_code=1)])
    msg = cond(p.status, "Failed").message
    assert "kubectl finetune logs bot -n team-a --attempt 1 " in msg
    assert "kubectl logs bot-a1-0 -n team-a -c trainer" in msg
    assert "--rank" not in msg
    assert p.delete_pods == []  # the failed pod and its log stay


def test_backoff_limit_exceeded_of_a_gang_names_the_failed_rank() -> None:
    sim = running(make_job(gpus=1, nodes=2, backoff_limit=0))
    p = sim.tick(60).step([make_pod(sim.job, 1, 0), make_pod(sim.job, 1, 1, exit_code=3)])
    msg = cond(p.status, "Failed").message
    assert "pod bot-a1-1 exited with code 3" in msg
    assert "kubectl finetune logs bot -n team-a --attempt 1 --rank 1" in msg
    assert "kubectl logs bot-a1-1 -n team-a" in msg


def test_backoff_limit_zero_fails_on_the_first_failure() -> None:
    sim = running(make_job(gpus=1, backoff_limit=0))
    p = sim.tick(60).step([make_pod(sim.job, 1, 0, exit_code=3)])
    assert p.status.phase == "Failed" and p.status.failures == 1
    assert "exited with code 3" in cond(p.status, "Failed").message


def test_final_failure_is_counted_once_in_the_failure_metric() -> None:
    """finetune_failures_total counts failed attempts (docs/metrics.md): the last one too,
    once, with its cause."""
    sim = running(make_job(gpus=1, backoff_limit=0))
    p = sim.tick(60).step([make_pod(sim.job, 1, 0, exit_code=137, reason="OOMKilled")])
    assert p.status.phase == "Failed"
    assert [m for m in p.outcomes if m.kind == "failure"] == [Outcome.failed("oom-killed")]


def test_exit_code_2_invalid_config_is_not_retried() -> None:
    """docs/contracts.md: exit code 2 = invalid config or data, not worth retrying."""
    sim = running()
    msg = {"reason": "Error", "message": "dataset train.jsonl line 3: missing field 'messages'"}
    p = sim.tick(60).step([make_pod(sim.job, 1, 0, exit_code=2, message=msg)])
    st = p.status
    assert st.phase == "Failed"
    assert "line 3: missing field 'messages'" in cond(st, "Failed").message


def test_gang_member_failing_restarts_the_whole_gang() -> None:
    sim = running(make_job(gpus=2, nodes=2))
    pods = [make_pod(sim.job, 1, 0), make_pod(sim.job, 1, 1, exit_code=1)]
    p = sim.tick(60).step(pods)
    assert p.status.phase == "Queued" and p.status.failures == 1
    assert "bot-a1-1" in cond(p.status, "Running").message
    assert names(p.force_delete_pods) == ["bot-a1-0"]  # grace 0: it would block on its peer
    p = sim.tick(60).step(decision=ADMIT)
    assert p.create_attempt == 2  # a fresh gang, both ranks


def test_node_lost_is_a_retry_neither_failure_nor_preemption() -> None:
    """Issue 10: node loss is a failure-free retry. The taint manager deletes pods of an
    unreachable node (DeletionByTaintManager): the job waits for the pod to go, then requeues."""
    sim = running()
    pod = make_pod(sim.job, 1, 0, disruption="DeletionByTaintManager", deleting=True)
    p = sim.tick(60).step([pod])
    assert p.status.phase == "Preempting" and p.status.failures == 0
    p = sim.tick(5).step([])
    st = p.status
    assert st.failures == 0 and st.preemptions == 0
    assert st.phase == "Queued"
    assert cond(st, "Running").reason == "NodeLost"
    assert ("Warning", "NodeLost") in [e[:2] for e in p.events]
    assert not [m for m in p.outcomes if m.kind == "failure"]


def test_node_lost_pod_already_failed_is_a_retry() -> None:
    sim = running()
    pod = make_pod(sim.job, 1, 0, phase="Failed", disruption="DeletionByPodGC",
                   pod_reason="NodeLost")
    p = sim.tick(60).step([pod])
    assert p.status.failures == 0 and p.status.preemptions == 0
    assert p.status.phase == "Queued"


def test_queued_after_failure_still_deletes_the_attempts_leftover_pods() -> None:
    """Level-based: the status patch (Queued) landed, the deletion of the gang peer did not
    (operator restart). The next pass must finish it; nothing else will."""
    sim = running(make_job(gpus=2, nodes=2))
    sim.tick(60).step([make_pod(sim.job, 1, 0), make_pod(sim.job, 1, 1, exit_code=1)])
    assert sim.st.phase == "Queued"
    p = sim.tick(5).step([make_pod(sim.job, 1, 0), make_pod(sim.job, 1, 1, exit_code=1)])
    assert names(p.delete_pods) == ["bot-a1-0"]


# ------------------------------------------------------------------ suspend


def test_suspend_while_queued() -> None:
    sim = queued()
    sim.edit(suspend=True)
    p = sim.tick(5).step(decision=JobVerdict(position=1, reason="x"))
    st = p.status
    assert st.phase == "Suspended" and st.queue is None
    c = cond(st, "Suspended")
    assert c.status == "True" and c.reason == "Suspended"
    assert st.observed_generation == 2
    assert reasons(p) == ["Suspended"]
    assert not wants_admission(sim.job, sim.now)
    again = sim.tick(5).step()
    assert again.events == [] and again.status == st


def test_new_job_created_suspended() -> None:
    sim = Sim(make_job(gpus=1, suspend=True))
    p = sim.step(decision=ADMIT)
    assert p.status.phase == "Suspended"
    assert p.create_attempt is None and p.status.attempt == 0
    assert reasons(p) == ["Queued", "Suspended"]


def test_suspend_while_running_stops_gracefully_without_a_preemption() -> None:
    sim = running()
    sim.edit(suspend=True)
    p1 = sim.tick(60).step([make_pod(sim.job, 1, 0)])
    st = p1.status
    assert st.phase == "Suspended"
    assert cond(st, "Suspended").reason == "Stopping"
    assert names(p1.delete_pods) == ["bot-a1-0"]
    assert reasons(p1) == ["Suspending"]

    p2 = sim.tick(5).step([make_pod(sim.job, 1, 0, deleting=True)])
    assert p2.status.phase == "Suspended"
    assert cond(p2.status, "Suspended").reason == "Stopping"
    assert p2.delete_pods == [] and p2.events == []

    p3 = sim.tick(30).step([])
    st = p3.status
    assert st.phase == "Suspended"
    susp = cond(st, "Suspended")
    assert susp.status == "True" and susp.reason == "Suspended"
    assert cond(st, "Running").status == "False"
    assert st.preemptions == 0 and st.failures == 0
    assert st.stop_reason is None
    assert reasons(p3) == ["Suspended"]
    assert "preemption" not in metric_kinds(p3)
    assert not wants_admission(sim.job, sim.now)

    p4 = sim.tick(30).step([])
    assert p4.events == [] and p4.outcomes == [] and p4.status == st


def test_suspend_of_an_admitted_job_without_pods() -> None:
    sim = admitted()
    sim.edit(suspend=True)
    p = sim.tick(5).step()
    assert p.status.phase == "Suspended"
    assert cond(p.status, "Suspended").reason == "Suspended"
    assert p.create_attempt is None and p.status.preemptions == 0


def test_unsuspend_requeues() -> None:
    sim = running()
    sim.edit(suspend=True)
    sim.tick(60).step([make_pod(sim.job, 1, 0)])
    sim.tick(30).step([])
    sim.edit(suspend=False)
    p = sim.tick(600).step()
    st = p.status
    assert st.phase == "Queued"
    c = cond(st, "Suspended")
    assert c.status == "False" and c.reason == "Resumed"
    assert st.queued_since == rfc3339(sim.now)
    assert "Resumed" in reasons(p)
    assert st.preemptions == 0
    assert wants_admission(sim.job, sim.now)
    p = sim.tick(5).step(decision=ADMIT)
    assert p.status.attempt == 2 and p.create_attempt == 2


def test_unsuspend_while_still_stopping() -> None:
    sim = running()
    sim.edit(suspend=True)
    sim.tick(60).step([make_pod(sim.job, 1, 0)])
    sim.edit(suspend=False)
    p = sim.tick(5).step([make_pod(sim.job, 1, 0, deleting=True)])
    assert p.status.phase == "Suspended"  # still stopping: its GPUs are not free yet
    assert p.create_attempt is None and p.delete_pods == []
    p = sim.tick(30).step([])
    st = p.status
    assert st.phase == "Queued"
    assert st.preemptions == 0 and st.failures == 0
    assert st.stop_reason is None
    assert cond(st, "Suspended").status == "False"


def test_unsuspend_as_the_pods_disappear_clears_the_stop() -> None:
    """Suspend while running, then clear spec.suspend in the pass where the pods are gone."""
    sim = running()
    sim.edit(suspend=True)
    sim.tick(60).step([make_pod(sim.job, 1, 0)])
    assert sim.st.phase == "Suspended" and sim.st.stop_reason == "suspend"
    sim.edit(suspend=False)
    p = sim.tick(30).step([])
    assert p.status.phase == "Queued"
    assert p.status.stop_reason is None


def test_preemption_after_a_suspend_cycle_is_counted() -> None:
    sim = running()
    sim.edit(suspend=True)
    sim.tick(60).step([make_pod(sim.job, 1, 0)])
    sim.edit(suspend=False)
    sim.tick(30).step([])
    sim.tick(5).step(decision=ADMIT)
    sim.tick(5).step([make_pod(sim.job, 2, 0)])
    assert sim.st.phase == "Running"
    p = sim.tick(600).step([make_pod(sim.job, 2, 0, disruption=SCHED, deleting=True)])
    assert p.status.phase == "Preempting"
    p = sim.tick(30).step([])
    assert p.status.phase == "Queued"
    assert p.status.preemptions == 1


def test_suspended_job_with_a_leftover_terminated_pod_is_quiet_and_resumes_cleanly() -> None:
    """The pod failed in the pass where spec.suspend was set: the suspend wins, the failed
    pod object stays (nobody deletes a terminated pod). Later passes must be quiet, and clearing
    spec.suspend must not count a preemption."""
    sim = running()
    sim.edit(suspend=True)
    failed = make_pod(sim.job, 1, 0, exit_code=1)
    p = sim.tick(60).step([failed])
    assert p.status.phase == "Suspended"
    assert cond(p.status, "Suspended").reason == "Suspended"
    again = sim.tick(30).step([failed])
    assert again.events == [] and again.outcomes == []
    assert again.status == p.status
    sim.edit(suspend=False)
    p = sim.tick(30).step([failed])
    assert p.status.phase == "Queued"
    assert p.status.preemptions == 0


# ------------------------------------------------------------------ deadline, policy, impossible


def test_active_deadline_fails_the_job_and_deletes_its_pods() -> None:
    """Issue 10: activeDeadlineSeconds counts admitted time, from admission on."""
    sim = running(make_job(gpus=2, nodes=2, active_deadline_seconds=3600))
    admitted = parse_time(sim.st.admitted_at)
    assert admitted is not None
    sim.now = admitted + dt.timedelta(seconds=3600)
    on_time = sim.step(gang(sim.job, 1))
    assert on_time.status.phase == "Running"  # exactly at the deadline: not past it
    sim.now = admitted + dt.timedelta(seconds=3601)
    p = sim.step(gang(sim.job, 1))
    st = p.status
    assert st.phase == "Failed"
    failed = cond(st, "Failed")
    assert failed.reason == "DeadlineExceeded"
    assert "activeDeadlineSeconds=3600" in failed.message
    assert cond(st, "Running").status == "False"
    assert st.completion_time == rfc3339(sim.now)
    assert names(p.delete_pods) == ["bot-a1-0", "bot-a1-1"]
    assert p.outcomes == [Outcome.failed("deadline")]
    assert [e[:2] for e in p.events] == [("Warning", "DeadlineExceeded")]


def test_deadline_pauses_while_queued_after_a_preemption() -> None:
    """Time in the queue does not count: 3000 s admitted, preempted, 2 h queued, readmitted:
    590 s later it is still within a 3600 s deadline, 610 s later it is past it."""
    sim = running(make_job(active_deadline_seconds=3600))
    admitted = parse_time(sim.st.admitted_at)
    assert admitted is not None
    sim.now = admitted + dt.timedelta(seconds=3000)
    sim.step(decision=JobVerdict(preempt=VICTIM))
    sim.tick(1).step()
    assert sim.st.phase == "Queued" and 3000 <= sim.st.active_seconds <= 3002
    sim.tick(7200).step(decision=ADMIT)
    p = sim.tick(500).step([make_pod(sim.job, 2, 0)])
    assert p.status.phase == "Running"
    p = sim.tick(90).step([make_pod(sim.job, 2, 0)])
    assert p.status.phase == "Running"
    p = sim.tick(20).step([make_pod(sim.job, 2, 0)])
    assert p.status.phase == "Failed" and cond(p.status, "Failed").reason == "DeadlineExceeded"


def test_active_deadline_does_not_run_before_the_job_starts() -> None:
    sim = queued(make_job(gpus=1, active_deadline_seconds=60))
    p = sim.tick(3600).step()
    assert p.status.phase == "Queued"


def test_policy_error_fails_the_job() -> None:
    sim = Sim(make_job(gpus=1, priority_class="system-cluster-critical"))
    err = ("priorityClassName system-cluster-critical is not allowed in namespace team-a; "
           "allowed: finetune-high; ask your platform team or pick one of these")
    p = sim.step(decision=ADMIT, policy_error=err)
    st = p.status
    assert st.phase == "Failed"
    c = cond(st, "Failed")
    assert c.reason == "PolicyViolation" and c.message == err
    assert p.create_attempt is None and st.attempt == 0
    assert ("Warning", "PolicyViolation", err) in p.events
    assert p.outcomes == [Outcome.failed("policy")]


def test_impossible_now_waits_then_fails_after_the_grace_period() -> None:
    """Issue 10: "cannot be admitted now" is a waiting reason; only a grace period ends it."""
    why = ("needs 16 nvidia.com/gpu per pod but the largest node has 8; lower resources.gpus")
    sim = queued()
    p = sim.tick(5).step(decision=JobVerdict(impossible=why))
    assert p.status.phase == "Queued" and p.status.unschedulable_since is not None
    waiting = cond(p.status, "Admitted")
    assert waiting.reason == "Unschedulable" and waiting.message.startswith(why)
    assert p.status.queue is not None and "fails at" in p.status.queue.reason
    p = sim.tick(899).step(decision=JobVerdict(impossible=why))
    assert p.status.phase == "Queued"
    p = sim.tick(2).step(decision=JobVerdict(impossible=why))
    st = p.status
    assert st.phase == "Failed"
    c = cond(st, "Failed")
    assert c.reason == "Unschedulable" and c.message.startswith(why)
    assert "grace period" in c.message
    assert st.queue is None and p.create_attempt is None


def test_impossible_clears_when_it_fits_again() -> None:
    """A quota dip: impossible for a while, then admissible again: it runs."""
    sim = queued()
    sim.tick(5).step(decision=JobVerdict(impossible="quota 4 < 8"))
    assert sim.st.unschedulable_since is not None
    p = sim.tick(600).step(decision=JobVerdict(position=1, reason="waiting"))
    assert p.status.unschedulable_since is None and p.status.phase == "Queued"
    p = sim.tick(5).step(decision=ADMIT)
    assert p.status.phase == "Admitted"


def test_more_gpus_per_node_than_the_largest_node_fails_at_once() -> None:
    sim = Sim(make_job(gpus=16))
    sim.ctx_extra = {"max_gpus_per_node": 8}
    p = sim.step()
    assert p.status.phase == "Failed" and "max_gpus_per_node" in cond(p.status, "Failed").message


def test_impossible_is_ignored_for_a_job_that_holds_pods() -> None:
    sim = running()
    p = sim.tick(5).step([make_pod(sim.job, 1, 0)], decision=JobVerdict(impossible="x"))
    assert p.status.phase == "Running"


# ------------------------------------------------------------------ terminal and stale pods


def test_terminal_job_deletes_leftover_active_pods_and_stays_put() -> None:
    sim = running(make_job(gpus=2, nodes=2))
    sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE),
                       make_pod(sim.job, 1, 1)])
    assert sim.st.phase == "Succeeded"
    status = sim.st
    done = make_pod(sim.job, 1, 0, exit_code=0, message=DONE)
    p = sim.tick(30).step([done, make_pod(sim.job, 1, 1)], decision=ADMIT)
    assert p.status.phase == "Succeeded"
    assert names(p.delete_pods) == ["bot-a1-1"]
    assert p.events == [] and p.outcomes == [] and p.create_attempt is None
    assert p.status == status
    p = sim.tick(30).step([done, make_pod(sim.job, 1, 1, deleting=True)])
    assert p.delete_pods == []  # already going
    assert p.status == status


def test_failed_job_deletes_leftover_pods() -> None:
    sim = running(make_job(gpus=1, backoff_limit=0))
    sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=1)])
    assert sim.st.phase == "Failed"
    p = sim.tick(30).step([make_pod(sim.job, 1, 0)], decision=ADMIT)
    assert p.status.phase == "Failed"
    assert names(p.delete_pods) == ["bot-a1-0"]
    assert p.events == [] and p.create_attempt is None


def test_stale_pods_of_older_attempts_are_deleted() -> None:
    sim = running()
    sim.tick(60).step([])  # vanished: preempted
    sim.tick(5).step(decision=ADMIT)
    pods = cached([make_pod(sim.job, 1, 0),                            # stale, active
                   make_pod(sim.job, 1, 0, deleting=True),             # stale, going
                   make_pod(sim.job, 1, 0, exit_code=1),               # stale, terminated
                   make_pod(sim.job, 2, 0)])                           # current
    p = sim.tick(5).step(pods)
    assert names(p.delete_pods) == ["bot-a1-0"]
    assert p.delete_pods[0] is pods[0]
    assert p.status.phase == "Running" and p.status.attempt == 2


def test_pods_before_any_attempt_are_stale() -> None:
    job = make_job(gpus=1)
    p = Sim(job).step([make_pod(job, 1, 0)])
    assert names(p.delete_pods) == ["bot-a1-0"]
    assert p.status.phase == "Queued"


def test_admission_never_deletes_the_pod_it_creates() -> None:
    """A pod of the next attempt already exists while the status says an older attempt (a
    status written back by a deposed leader, or restored from a backup). Admitting in that pass
    would create ``bot-a1-0`` (409: get the existing one) and then delete that very pod, and the
    next pass would take the deletion for a preemption. One plan must not do both."""
    job = make_job(gpus=1)
    ghost = make_pod(job, 1, 0)
    p = Sim(job).step([ghost], decision=ADMIT)
    created = {f"bot-a{p.create_attempt}-0"} if p.create_attempt else set()
    assert not created & set(names(p.delete_pods)), (p.create_attempt, names(p.delete_pods))


# ------------------------------------------------------------------ lost steps


def test_lost_steps_counted_once_per_attempt() -> None:
    sim = running()
    sim.tick(60).step([make_pod(sim.job, 1, 0, progress={"step": 130, "totalSteps": 300})])
    sim.tick(5).step([])  # vanished before saving: preempted
    sim.tick(5).step(decision=ADMIT)
    wire = {"step": 100, "totalSteps": 300, "resumedFromStep": 100}
    p = sim.tick(5).step([make_pod(sim.job, 2, 0, progress=wire)])
    assert p.status.lost_steps == 30
    assert Outcome.lost_work(30) in p.outcomes
    for _ in range(3):
        wire = {**wire, "step": wire["step"] + 5}
        p = sim.tick(5).step([make_pod(sim.job, 2, 0, progress=wire)])
        assert p.status.lost_steps == 30
        assert "lost" not in metric_kinds(p)


def test_no_lost_steps_when_the_trainer_saved_on_sigterm() -> None:
    sim = running()
    ck = {"step": 130, "path": "checkpoints/checkpoint-130"}
    pod = make_pod(sim.job, 1, 0, exit_code=0, message=PREEMPTED,
                   progress={"step": 130, "checkpoint": ck})
    sim.tick(60).step([pod])
    assert sim.st.preemptions == 1
    sim.tick(5).step(decision=ADMIT)
    p = sim.tick(5).step([make_pod(sim.job, 2, 0, progress={"step": 130,
                                                            "resumedFromStep": 130})])
    assert p.status.lost_steps == 0 and "lost" not in metric_kinds(p)


# ------------------------------------------------------------------ determinism


def _all_inputs() -> list[tuple[FineTuneJob, list[dict[str, Any]], JobVerdict]]:
    sim = running(make_job(gpus=2, nodes=2))
    pods = [make_pod(sim.job, 1, 0, progress={"step": 3}), make_pod(sim.job, 1, 1, exit_code=1)]
    return [(sim.job, pods, WAIT), (sim.job, gang(sim.job, 1), JobVerdict(preempt=VICTIM)),
            (queued().job, [], ADMIT), (make_job(), [], JobVerdict(position=1, reason="q"))]


@pytest.mark.parametrize("case", range(4))
def test_same_inputs_same_plan(case: int) -> None:
    job, pods, decision = _all_inputs()[case]
    ctx = Ctx(now=NOW, backoff_seconds=20, priority_class="finetune-high")
    a = plan(job, pods, decision, ctx)
    b = plan(job, pods, decision, ctx)
    assert a == b
    assert a.status.to_wire() == b.status.to_wire()


def test_plan_does_not_depend_on_pod_order() -> None:
    sim = running(make_job(gpus=2, nodes=2))
    pods = [make_pod(sim.job, 1, 0), make_pod(sim.job, 1, 1, exit_code=137, reason="OOMKilled")]
    ctx = Ctx(now=at(600), backoff_seconds=20)
    a = plan(sim.job, pods, WAIT, ctx)
    b = plan(sim.job, list(reversed(pods)), WAIT, ctx)
    assert a.status == b.status and a.events == b.events and a.outcomes == b.outcomes
    assert names(a.delete_pods) == names(b.delete_pods)


# ------------------------------------------------------------------ properties
#
# A level-based controller must reach a fixpoint when the world stops changing: with the same
# pods and the same decision, repeated passes end with no events, no metrics and the same
# status (creations and deletions may repeat: they are idempotent requests). And a few
# invariants hold on every pass, whatever the state and the pods.


def _base_states() -> dict[str, Sim]:
    def fail_once(s: Sim) -> Sim:
        s.tick(60).step([make_pod(s.job, s.st.attempt, 0, exit_code=1)], backoff=600)
        return s

    def preempting(s: Sim) -> Sim:
        s.tick(60).step(gang(s.job, 1), decision=JobVerdict(preempt=VICTIM))
        return s

    def stopping(s: Sim) -> Sim:
        s.edit(suspend=True)
        s.tick(60).step([make_pod(s.job, 1, 0)])
        return s

    def suspended(s: Sim) -> Sim:
        stopping(s).tick(30).step([])
        return s

    def succeeded(s: Sim) -> Sim:
        s.tick(60).step([make_pod(s.job, 1, 0, exit_code=0, message=DONE)])
        return s

    def failed(s: Sim) -> Sim:
        s.edit(backoff_limit=0)
        return fail_once(s)

    def resumed(s: Sim) -> Sim:  # attempt 2 admitted after a preemption
        s.tick(60).step([])
        s.tick(5).step(decision=ADMIT)
        return s

    states = {
        "new": Sim(make_job(gpus=1)),
        "queued": queued(),
        "admitted": admitted(),
        "running": running(),
        "backoff": fail_once(running()),
        "preempting": preempting(running()),
        "stopping": stopping(running()),
        "suspended": suspended(running()),
        "succeeded": succeeded(running()),
        "failed": failed(running()),
        "resumed": resumed(running()),
        "gang-running": running(make_job(gpus=2, nodes=2)),
        "gang-preempting": preempting(running(make_job(gpus=2, nodes=2))),
    }
    assert [s.st.phase for s in states.values()] == [
        None, "Queued", "Admitted", "Running", "Queued", "Preempting", "Suspended", "Suspended",
        "Succeeded", "Failed", "Admitted", "Running", "Preempting"]
    return states


def _pod_sets(job: FineTuneJob, attempt: int) -> dict[str, list[dict[str, Any]]]:
    """Pods the cluster may show for a job whose status is at ``attempt``."""
    if attempt == 0:
        return {"none": []}
    a = attempt
    sets = {
        "none": [],
        "running": gang(job, a),
        "pending": gang(job, a, phase="Pending", node=None),
        "deleting": gang(job, a, deleting=True),
        "completed": gang(job, a, exit_code=0, message=DONE),
        "failed": gang(job, a, exit_code=1),
        "oom": gang(job, a, exit_code=137, reason="OOMKilled"),
        "trainer-preempted": gang(job, a, exit_code=0, message=PREEMPTED),
        "scheduler": gang(job, a, disruption=SCHED, deleting=True),
    }
    if a > 1:
        sets["stale"] = [make_pod(job, a - 1, 0), *gang(job, a)]
    if job.spec.resources.nodes > 1:
        sets["one-failed"] = [make_pod(job, a, 0), make_pod(job, a, 1, exit_code=1)]
        sets["one-missing"] = [make_pod(job, a, 0)]
    return sets


DECISIONS = {"wait": JobVerdict(position=1, reason="needs 1 nvidia.com/gpu; quota team-a has 0 "
                                 "free", code=WaitCode.QUOTA),
             "admit": ADMIT, "preempt": JobVerdict(preempt=VICTIM)}


def _cases(state: str) -> list[tuple[str, Sim, list[dict[str, Any]], JobVerdict]]:
    base = _base_states()[state]
    out = []
    for suspend in (False, True):
        for pods_name, pods in _pod_sets(base.job, base.st.attempt).items():
            for dec_name, decision in DECISIONS.items():
                sim = Sim(base.job, base.now)
                if sim.job.spec.suspend != suspend:
                    sim.edit(suspend=suspend)
                out.append((f"{state}/suspend={suspend}/pods={pods_name}/{dec_name}", sim, pods,
                            decision))
    return out


def _violations(before: FineTuneJobStatus, p: Plan) -> list[str]:
    st, bad = p.status, []
    if st.phase is None:
        bad.append("no phase")
    if p.create_attempt is not None and (p.create_attempt != st.attempt
                                         or st.phase != "Admitted"):
        bad.append(f"create_attempt={p.create_attempt} with attempt={st.attempt} "
                   f"phase={st.phase}")
    for counter in ("attempt", "preemptions", "failures", "lost_steps"):
        if getattr(st, counter) < getattr(before, counter):
            bad.append(f"{counter} went down")
    if st.attempt > before.attempt + 1:
        bad.append("attempt jumped")
    if before.phase in ("Succeeded", "Failed") and st.phase != before.phase:
        bad.append(f"left terminal phase {before.phase} for {st.phase}")
    deleted = names(p.delete_pods)
    if len(set(deleted)) != len(deleted):
        bad.append(f"pod deleted twice: {deleted}")
    for pod in p.delete_pods:
        if pod["metadata"].get("deletionTimestamp"):
            bad.append(f"deletes {pod['metadata']['name']} again")
        if pod["status"]["phase"] in ("Succeeded", "Failed"):
            bad.append(f"deletes terminated {pod['metadata']['name']}")
        if st.phase in ("Admitted", "Running") and pod["metadata"]["labels"][
                "finetune.dev/attempt"] == str(st.attempt):
            bad.append(f"phase {st.phase} but deletes its own pod {pod['metadata']['name']}")
    types = [c.type for c in st.conditions]
    if len(set(types)) != len(types):
        bad.append(f"duplicate conditions {types}")
    if any(e[0] not in ("Normal", "Warning") for e in p.events):
        bad.append(f"bad event type in {p.events}")
    return bad


STATES = ["new", "queued", "admitted", "running", "backoff", "preempting", "stopping",
          "suspended", "succeeded", "failed", "resumed", "gang-running", "gang-preempting"]


@pytest.mark.parametrize("state", STATES)
def test_invariants_hold_on_every_pass(state: str) -> None:
    problems = []
    for case, sim, pods, decision in _cases(state):
        for n in range(4):
            before = sim.st
            p = sim.step(pods, decision)
            problems += [f"{case} pass {n + 1}: {v}" for v in _violations(before, p)]
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("state", STATES)
def test_plan_converges_when_nothing_changes(state: str) -> None:
    """Same pods, same decision, same clock: within a few passes the plan stops emitting events
    and metrics and the status stops changing — and stays so."""
    stuck = []
    for case, sim, pods, decision in _cases(state):
        history = []
        for _ in range(6):
            before = sim.st
            p = sim.step(pods, decision)
            history.append((p.status == before, bool(p.events or p.outcomes),
                            [e[1] for e in p.events], p.status.phase))
        tail = history[-3:]
        if not all(same and not noisy for same, noisy, _, _ in tail):
            stuck.append(f"{case}: last passes (unchanged, noisy, events, phase) = {tail}")
    assert not stuck, f"{len(stuck)} case(s) never settle:\n" + "\n".join(stuck[:20])


@pytest.mark.parametrize("state", STATES)
def test_plan_is_a_function_of_its_inputs(state: str) -> None:
    for case, sim, pods, decision in _cases(state):
        ctx = Ctx(now=sim.now, backoff_seconds=10, priority_class="finetune-high")
        before = sim.job.model_dump()
        a, b = plan(sim.job, pods, decision, ctx), plan(sim.job, pods, decision, ctx)
        assert a == b, case
        assert sim.job.model_dump() == before, f"{case}: plan() mutated its input"


def test_a_stopped_trainers_checkpoint_counts_when_its_last_report_was_lost() -> None:
    """The report after the SIGTERM save never arrived (the operator was restarting): the
    checkpoint named by rank 0's termination message reaches the status, and the resume that
    starts there loses nothing."""
    sim = running()
    sim.tick(30).step([make_pod(sim.job, 1, 0, progress={
        "step": 100, "checkpoint": {"step": 100, "path": "checkpoints/checkpoint-100"}})])
    stopped = {**PREEMPTED, "finalStep": 130,
               "checkpoint": {"step": 130, "path": "checkpoints/checkpoint-130",
                              "saveSeconds": 2.5}}
    sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=stopped)])
    assert sim.st.preemptions == 1
    assert sim.st.checkpoint is not None and sim.st.checkpoint.step == 130
    assert sim.st.checkpoint.save_seconds == 2.5  # the next attempt's grace period uses it
    sim.tick(5).step(decision=ADMIT)
    p = sim.tick(5).step([make_pod(sim.job, 2, 0, progress={"step": 130,
                                                            "resumedFromStep": 130})])
    assert p.status.lost_steps == 0


def test_a_termination_message_never_moves_the_checkpoint_back() -> None:
    sim = running()
    sim.tick(30).step([make_pod(sim.job, 1, 0, progress={
        "step": 140, "checkpoint": {"step": 140, "path": "checkpoints/checkpoint-140"}})])
    older = {**PREEMPTED, "checkpoint": {"step": 120, "path": "checkpoints/checkpoint-120"}}
    sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=older)])
    assert sim.st.checkpoint is not None and sim.st.checkpoint.step == 140
