"""Issue 10 in the pure state machine: a pod that never starts, a refused pod creation, a pod
stuck terminating on a lost node, finished-job TTL, and the timers the shell schedules."""

from __future__ import annotations

import datetime as dt

from finetune_api.times import parse_time, rfc3339
from finetune_operator.jobs.reconcile import JobVerdict, due_at
from tests.builders.jobs import make_job
from tests.builders.pods import make_pod
from tests.builders.reconcile import DONE, Sim, admitted, cond, running

# no "ttl": the operator setting is unset (finished jobs are kept)
TIMING = {"pods_ready_timeout": 600.0, "force_delete_margin": 60.0, "unschedulable_grace": 900.0}


def pending(sim: Sim, reason: str = "ImagePullBackOff") -> dict:
    pod = make_pod(sim.job, sim.st.attempt, 0, phase="Pending")
    pod["status"]["containerStatuses"] = [{"name": "trainer", "state": {"waiting": {
        "reason": reason, "message": "Back-off pulling image \"nope:1\""}}}]
    return pod


def test_pods_not_ready_in_time_go_back_to_the_queue_with_the_pods_reason() -> None:
    sim = admitted()
    p = sim.tick(599).step([pending(sim)])
    assert p.status.phase == "Admitted"
    p = sim.tick(2).step([pending(sim)])
    st = p.status
    assert st.phase == "Queued" and st.start_requeues == 1 and st.failures == 0
    assert "ImagePullBackOff" in cond(st, "Admitted").message
    assert [e[1] for e in p.events] == ["PodsNotReady"]
    assert "ImagePullBackOff" in p.events[0][2]
    assert [x["metadata"]["name"] for x in p.delete_pods] == ["bot-a1-0"]
    assert st.retry_after is not None  # not re-admitted in a tight loop


def test_pods_never_ready_fail_the_job_after_the_bounded_requeues() -> None:
    sim = admitted()
    sim.ctx_extra = {"max_start_requeues": 1}
    sim.tick(601).step([pending(sim)])
    assert sim.st.phase == "Queued"
    sim.tick(60).step(decision=JobVerdict(admit=True))
    assert sim.st.phase == "Admitted" and sim.st.attempt == 2
    p = sim.tick(601).step([pending(sim)])
    assert p.status.phase == "Failed"
    failed = cond(p.status, "Failed")
    assert failed.reason == "PodsNotReady" and "ImagePullBackOff" in failed.message


def test_a_refused_pod_creation_requeues_at_once_with_the_servers_message() -> None:
    sim = admitted()
    sim.ctx_extra = {"create_error": "PodCreateFailed: could not create Pod bot-a1-0: "
                     "exceeded quota: cpu, requested: limits.cpu=8"}
    p = sim.tick(1).step([])
    assert p.status.phase == "Queued" and p.status.start_requeues == 1
    assert "exceeded quota" in cond(p.status, "Admitted").message
    assert p.create_attempt is None


def test_a_pod_stuck_terminating_on_a_not_ready_node_is_force_deleted() -> None:
    sim = running()
    pod = make_pod(sim.job, 1, 0, deleting=True)
    gone_by = parse_time(pod["metadata"]["deletionTimestamp"])
    assert gone_by is not None
    sim.now = gone_by + dt.timedelta(seconds=30)
    sim.ctx_extra = {"node_ready": lambda name: False}
    assert sim.step([pod]).force_delete_pods == []  # within the margin: wait
    sim.now = gone_by + dt.timedelta(seconds=61)
    assert [x["metadata"]["name"] for x in sim.step([pod]).force_delete_pods] == ["bot-a1-0"]
    sim.ctx_extra = {"node_ready": lambda name: True}  # a live kubelet finishes it itself
    assert sim.step([pod]).force_delete_pods == []


def test_ttl_after_finished_deletes_the_job() -> None:
    sim = running(make_job(ttl_seconds_after_finished=100))
    sim.tick(10).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE)])
    assert sim.st.phase == "Succeeded"
    assert not sim.tick(99).step().delete_job
    assert sim.tick(2).step().delete_job


def test_ttl_zero_means_at_once_in_the_spec_and_in_the_operator_setting() -> None:
    """One meaning (issue 27): 0 deletes at once wherever it is set; unset everywhere keeps."""
    for job, extra in ((make_job(ttl_seconds_after_finished=0), {}),
                       (make_job(), {"ttl_seconds_after_finished": 0})):
        sim = running(job)
        sim.ctx_extra = extra
        sim.tick(10).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE)])
        assert sim.st.phase == "Succeeded"
        assert sim.tick(0).step().delete_job, extra
    sim = running(make_job())
    sim.tick(10).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE)])
    assert not sim.tick(10 ** 7).step().delete_job  # neither set: kept
    assert due_at(sim.job, sim.st, [], TIMING, sim.now) is None
    assert due_at(sim.job, sim.st, [], {**TIMING, "ttl": 0.0}, sim.now) is None  # already due
    finished = parse_time(sim.st.completion_time)
    assert finished is not None
    assert due_at(sim.job, sim.st, [], {**TIMING, "ttl": 30.0}, finished) == \
        finished + dt.timedelta(seconds=30)


def test_timers_name_the_next_instant_a_plan_can_change() -> None:
    sim = admitted(make_job(active_deadline_seconds=3600))
    admitted_at = parse_time(sim.st.admitted_at)
    assert admitted_at is not None
    due = due_at(sim.job, sim.st, [], TIMING, sim.now)
    assert due == admitted_at + dt.timedelta(seconds=600)  # pods-ready timeout first
    sim.st.retry_after = rfc3339(sim.now + dt.timedelta(seconds=30))
    sim.st.phase = "Queued"
    assert due_at(sim.job, sim.st, [], TIMING, sim.now) == sim.now + dt.timedelta(seconds=30)
    sim.st.retry_after = None
    assert due_at(sim.job, sim.st, [], TIMING, sim.now) is None  # only events change it


def test_an_admitted_status_without_an_attempt_goes_back_to_the_queue() -> None:
    """A status someone else wrote (phase Admitted, attempt 0): no pod named attempt 0."""
    sim = Sim(make_job(gpus=1))
    sim.step()
    sim.st.phase = "Admitted"
    p = sim.tick(1).step()
    assert p.status.phase == "Queued" and p.create_attempt is None


def test_a_failed_gang_member_ends_its_peers_at_once() -> None:
    """Rank 1 died: rank 0 would block in a collective; it is deleted with grace 0."""
    sim = running(make_job(gpus=2, nodes=2))
    p = sim.tick(60).step([make_pod(sim.job, 1, 0), make_pod(sim.job, 1, 1, exit_code=1)])
    assert p.status.failures == 1 and p.status.phase == "Queued"
    assert [x["metadata"]["name"] for x in p.force_delete_pods] == ["bot-a1-0"]
    assert p.delete_pods == []
