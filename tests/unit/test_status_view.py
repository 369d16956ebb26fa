"""status.py: what the pods of one attempt say (observe), progress mirroring, conditions."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.status import CheckpointStatus, FineTuneJobStatus, Progress
from finetune_api.times import parse_time, rfc3339
from finetune_operator.jobs.pods import (
    apply_progress,
    attempt_of,
    disruption_reason,
    observe,
    output_from,
    rank_of,
    set_condition,
    termination_detail,
    termination_message,
)
from finetune_operator.reports.model import ProgressReport, TerminationMessage
from finetune_operator.slim import SlimPod
from tests.builders.jobs import make_job
from tests.builders.pods import gang as api_gang
from tests.builders.pods import make_pod as api_pod
from tests.builders.reconcile import cached
from tests.builders.reports import report

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
JOB = make_job(gpus=1)
GANG = make_job(name="big", gpus=2, nodes=2)
DONE = {"reason": "Completed", "message": "done", "finalStep": 20,
        "adapterPath": "output/adapter", "mergedPath": "", "metrics": {"evalLoss": 0.9}}
PREEMPTED = {"reason": "Preempted", "message": "SIGTERM: saved checkpoint-12", "finalStep": 12}
SUMMARY = TerminationMessage.model_validate(DONE)


def make_pod(*args: Any, **kwargs: Any) -> SlimPod:
    """A pod as the cache keeps it (termination message parsed once, there)."""
    return cached([api_pod(*args, **kwargs)])[0]


def gang(*args: Any, **kwargs: Any) -> list[SlimPod]:
    return cached(api_gang(*args, **kwargs))


# ------------------------------------------------------------------ the pod factory


def test_factory_pod_carries_the_builder_labels_and_owner() -> None:
    pod = make_pod(GANG, 3, 1, progress={"step": 1})
    meta = pod["metadata"]
    assert meta["name"] == "big-a3-1"
    assert meta["labels"]["finetune.dev/attempt"] == "3"
    assert meta["labels"]["finetune.dev/rank"] == "1"
    assert meta["labels"]["finetune.dev/job"] == "big"
    assert meta["ownerReferences"][0]["uid"] == GANG.metadata.uid
    assert meta["ownerReferences"][0]["kind"] == "FineTuneJob"
    assert attempt_of(pod) == 3 and rank_of(pod) == 1
    assert pod["spec"]["nodeName"] == "node-1"
    assert pod["status"]["phase"] == "Running"
    assert "deletionTimestamp" not in meta


def test_attempt_and_rank_default_to_zero_on_missing_or_garbage_labels() -> None:
    pod = make_pod(JOB, 1, 0)
    pod["metadata"]["labels"]["finetune.dev/attempt"] = "x"
    del pod["metadata"]["labels"]["finetune.dev/rank"]
    assert attempt_of(pod) == 0 and rank_of(pod) == 0


# ------------------------------------------------------------------ termination message


def test_termination_message_json_object() -> None:
    pod = make_pod(JOB, exit_code=0, message=DONE)
    assert termination_message(pod) == SUMMARY
    assert termination_detail(pod) == "done"


def test_the_cache_keeps_the_parsed_message_not_the_raw_text() -> None:
    pod = make_pod(JOB, exit_code=0, message=DONE)
    assert "message" not in pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_termination_message_raw_text_is_kept_as_its_tail() -> None:
    text = "Traceback...\n" + "x" * 2000 + "\nRuntimeError: CUDA error\n"
    pod = make_pod(JOB, exit_code=1, message=text)
    assert termination_message(pod) is None
    assert termination_detail(pod).endswith("RuntimeError: CUDA error")
    assert len(termination_detail(pod)) == 512


def test_termination_message_json_that_is_not_an_object() -> None:
    pod = make_pod(JOB, exit_code=1, message="[1, 2]")
    assert termination_message(pod) is None and termination_detail(pod) == "[1, 2]"


def test_a_message_that_breaks_the_model_is_dropped_and_its_rejection_kept() -> None:
    pod = make_pod(JOB, exit_code=1, message='{"reason": "Nope"}')
    assert termination_message(pod) is None and termination_detail(pod) == ""
    term = pod["status"].get("termination")
    assert term is not None and term["rejected"] is not None
    assert term["rejected"][0] == "invalid"


def test_termination_message_absent() -> None:
    assert termination_message(make_pod(JOB)) is None
    assert termination_message(make_pod(JOB, exit_code=1)) is None
    assert termination_detail(make_pod(JOB, exit_code=1)) == ""


def test_disruption_reason_only_when_true() -> None:
    pod = make_pod(JOB, disruption="PreemptionByScheduler")
    assert disruption_reason(pod) == "PreemptionByScheduler"
    pod["status"]["conditions"][-1]["status"] = "False"
    assert disruption_reason(pod) is None
    assert disruption_reason(make_pod(JOB)) is None


# ------------------------------------------------------------------ observe: outcomes


def test_running_pods_are_active_deletable_and_counted() -> None:
    view = observe(gang(GANG), 2, ever_ran=False)
    assert view.running == 2 and view.all_running
    assert [p["metadata"]["name"] for p in view.deletable] == ["big-a1-0", "big-a1-1"]
    assert not view.gone
    assert not view.completed and view.failure is None and view.preempted_by is None


def test_pending_pod_is_active_but_not_running() -> None:
    pods = [make_pod(GANG, 1, 0), make_pod(GANG, 1, 1, phase="Pending", node=None)]
    view = observe(pods, 2, ever_ran=False)
    assert view.running == 1 and not view.all_running
    assert len(view.active) == 2


def test_rank0_exit0_completed_is_success_with_its_message() -> None:
    view = observe([make_pod(JOB, exit_code=0, message=DONE)], 1, ever_ran=True)
    assert view.completed and view.summary == SUMMARY
    assert view.failure is None and view.preempted_by is None
    assert view.gone


def test_success_only_from_rank0() -> None:
    pods = [make_pod(GANG, 1, 0), make_pod(GANG, 1, 1, exit_code=0, message=DONE)]
    view = observe(pods, 2, ever_ran=True)
    assert not view.completed
    assert [p["metadata"]["name"] for p in view.deletable] == ["big-a1-0"]


def test_exit0_without_termination_message_is_success() -> None:
    """docs/contracts.md: exit 0 = completed unless the message says Preempted."""
    view = observe([make_pod(JOB, exit_code=0)], 1, ever_ran=True)
    assert view.completed and view.summary is None and view.preempted_by is None


def test_exit0_while_being_deleted_is_not_success() -> None:
    pod = make_pod(JOB, exit_code=0, message=DONE, deleting=True)
    assert not observe([pod], 1, ever_ran=True).completed


def test_exit0_with_reason_preempted_is_a_trainer_preemption_not_success() -> None:
    view = observe([make_pod(JOB, exit_code=0, message=PREEMPTED)], 1, ever_ran=True)
    assert not view.completed
    assert view.preempted_by == "trainer"
    assert view.failure is None


def test_nonzero_exit_is_a_failure_naming_pod_code_reason_and_message() -> None:
    pod = make_pod(JOB, exit_code=1, message={"reason": "Error", "message": "loss is NaN"})
    view = observe([pod], 1, ever_ran=True)
    assert view.failure is not None
    assert "bot-a1-0" in view.failure
    assert "code 1" in view.failure
    assert "(Error)" in view.failure
    assert "loss is NaN" in view.failure
    assert view.failure_reason == "exit-code"


def test_oomkilled_is_a_failure_with_its_label_and_a_hint() -> None:
    view = observe([make_pod(JOB, exit_code=137, reason="OOMKilled")], 1, ever_ran=True)
    assert view.failure is not None
    assert "137" in view.failure and "OOMKilled" in view.failure
    assert "resources.memory" in view.failure
    assert view.failure_reason == "oom-killed"


def test_failed_pod_without_container_status_uses_pod_reason() -> None:
    pod = make_pod(JOB, phase="Failed", pod_reason="UnexpectedAdmissionError")
    view = observe([pod], 1, ever_ran=True)
    assert view.failure is not None and "UnexpectedAdmissionError" in view.failure
    assert view.gone


def test_long_failure_message_is_bounded() -> None:
    pod = make_pod(JOB, exit_code=1, message={"reason": "Error", "message": "y" * 5000})
    failure = observe([pod], 1, ever_ran=True).failure
    assert failure is not None and len(failure) < 600


def test_first_failing_rank_is_reported() -> None:
    pods = [make_pod(GANG, 1, 0, exit_code=3), make_pod(GANG, 1, 1, exit_code=137,
                                                        reason="OOMKilled")]
    view = observe(list(reversed(pods)), 2, ever_ran=True)
    assert view.failure is not None and "big-a1-0" in view.failure


@pytest.mark.parametrize("reason", ["PreemptionByScheduler", "EvictionByEvictionAPI"])
def test_disruption_by_someone_needing_resources_is_a_preemption(reason: str) -> None:
    pod = make_pod(JOB, disruption=reason, deleting=True)
    view = observe([pod], 1, ever_ran=True)
    assert view.preempted_by == ("scheduler" if reason == "PreemptionByScheduler"
                                 else "eviction")
    assert view.failure is None
    assert not view.gone
    assert view.deletable == []  # already being deleted: nothing to delete again


def test_scheduler_victim_killed_with_a_signal_is_still_a_preemption_not_a_failure() -> None:
    pod = make_pod(JOB, exit_code=137, disruption="PreemptionByScheduler", deleting=True)
    view = observe([pod], 1, ever_ran=True)
    assert view.preempted_by == "scheduler"
    assert view.failure is None
    assert view.gone


def test_node_lost_is_not_a_failure() -> None:
    pod = make_pod(JOB, phase="Failed", disruption="DeletionByPodGC", pod_reason="NodeLost")
    view = observe([pod], 1, ever_ran=True)
    assert view.failure is None
    assert view.node_lost is not None and "node lost" in view.node_lost


def test_node_lost_pod_still_terminating_is_node_lost() -> None:
    pod = make_pod(JOB, disruption="DeletionByTaintManager", deleting=True)
    view = observe([pod], 1, ever_ran=True)
    assert view.failure is None and view.preempted_by is None
    assert view.node_lost is not None and "DeletionByTaintManager" in view.node_lost
    assert view.active  # still holds its GPUs until it is gone


def test_pod_being_deleted_by_someone_is_a_preemption() -> None:
    view = observe([make_pod(JOB, deleting=True)], 1, ever_ran=True)
    assert view.preempted_by == "deleted"
    assert view.active and not view.deletable


def test_missing_pod_after_it_ran_is_a_preemption() -> None:
    view = observe([make_pod(GANG, 1, 0)], 2, ever_ran=True)
    assert view.preempted_by == "deleted"
    assert observe([], 1, ever_ran=True).preempted_by == "deleted"


def test_missing_pod_before_it_ran_is_not_a_preemption() -> None:
    view = observe([make_pod(GANG, 1, 0)], 2, ever_ran=False)
    assert view.preempted_by is None
    assert not view.all_running
    assert observe([], 1, ever_ran=False).gone


def test_missing_pod_is_not_a_preemption_when_rank0_completed() -> None:
    view = observe([make_pod(GANG, 1, 0, exit_code=0, message=DONE)], 2, ever_ran=True)
    assert view.completed and view.summary == SUMMARY and view.preempted_by is None


def test_observe_does_not_depend_on_pod_order() -> None:
    pods = [make_pod(GANG, 1, 1, exit_code=1), make_pod(GANG, 1, 0, exit_code=0, message=DONE)]
    a, b = observe(pods, 2, True), observe(list(reversed(pods)), 2, True)
    assert (a.completed, a.summary, a.failure, a.preempted_by) == (
        b.completed, b.summary, b.failure, b.preempted_by)


# ------------------------------------------------------------------ progress


def _report(step: int, resumed: int | None = None, ckpt: int | None = None,
            **extra: object) -> ProgressReport:
    r: dict[str, object] = {"step": step, "totalSteps": 300, "epoch": 1.2, "loss": 0.83,
                            "learningRate": 1.6e-4, "tokensPerSecond": 5400.0,
                            "etaSeconds": 210.0, "updatedAt": "2026-01-01T11:59:00Z",
                            "resumedFromStep": resumed, "state": "training"}
    if ckpt is not None:
        r["checkpoint"] = {"step": ckpt, "path": f"checkpoints/checkpoint-{ckpt}",
                           "savedAt": "2026-01-01T11:58:00Z", "saveSeconds": 1.7}
    r.update(extra)
    return report({k: v for k, v in r.items() if v is not None or k == "resumedFromStep"})


def test_apply_progress_mirrors_report_and_checkpoint() -> None:
    st = FineTuneJobStatus(attempt=1)
    lost = apply_progress(st, _report(120, ckpt=100), 1)
    assert lost == 0
    assert st.progress is not None
    assert st.progress.step == 120 and st.progress.total_steps == 300
    assert st.progress.summary == "120/300"
    assert st.progress.loss == pytest.approx(0.83)
    assert st.progress.learning_rate == pytest.approx(1.6e-4)
    assert st.progress.tokens_per_second == pytest.approx(5400.0)
    assert st.progress.eta_seconds == pytest.approx(210.0)
    assert st.progress.updated_at == "2026-01-01T11:59:00Z"
    assert st.checkpoint == CheckpointStatus(step=100, path="checkpoints/checkpoint-100",
                                             saved_at="2026-01-01T11:58:00Z", save_seconds=1.7)
    assert st.progress_attempt == 1


def test_apply_progress_without_total_and_with_bad_numbers() -> None:
    st = FineTuneJobStatus(attempt=1)
    apply_progress(st, report({"step": 7}), 1)
    assert st.progress is not None
    assert st.progress.summary == "7" and st.progress.total_steps is None
    assert st.progress.loss is None and st.progress.epoch is None
    with pytest.raises(ValidationError):  # bad numbers never get past the channel's model
        report({"step": 7, "loss": "nan?", "epoch": True})


def test_report_without_checkpoint_keeps_the_last_one() -> None:
    st = FineTuneJobStatus(attempt=1, checkpoint=CheckpointStatus(step=100, path="c/100"))
    apply_progress(st, _report(130), 1)
    assert st.checkpoint is not None and st.checkpoint.step == 100


def test_lost_steps_counted_once_per_attempt_from_resumed_step() -> None:
    st = FineTuneJobStatus(attempt=2, progress=Progress(step=130), progress_attempt=1)
    assert apply_progress(st, _report(100, resumed=100), 2) == 30
    assert st.lost_steps == 30
    # the same attempt reporting again (and again) counts nothing more
    assert apply_progress(st, _report(101, resumed=100), 2) == 0
    assert apply_progress(st, _report(150, resumed=100), 2) == 0
    assert st.lost_steps == 30
    # the next attempt adds its own loss
    assert apply_progress(st, _report(140, resumed=140), 3) == 10
    assert st.lost_steps == 40


def test_no_lost_steps_when_the_sigterm_save_worked() -> None:
    st = FineTuneJobStatus(attempt=2, progress=Progress(step=120), progress_attempt=1)
    assert apply_progress(st, _report(120, resumed=120), 2) == 0
    assert st.lost_steps == 0


def test_lost_steps_never_negative() -> None:
    st = FineTuneJobStatus(attempt=2, progress=Progress(step=50), progress_attempt=1)
    assert apply_progress(st, _report(60, resumed=60), 2) == 0
    assert st.lost_steps == 0


def test_first_attempt_loses_nothing() -> None:
    st = FineTuneJobStatus(attempt=1)
    assert apply_progress(st, _report(0, resumed=None, state="loading"), 1) == 0
    assert st.lost_steps == 0


def test_fresh_restart_without_checkpoint_loses_all_previous_steps() -> None:
    """The trainer reports resumedFromStep null when it starts from scratch (no complete
    checkpoint): every step of the previous attempt is redone."""
    st = FineTuneJobStatus(attempt=2, progress=Progress(step=8), progress_attempt=1)
    lost = apply_progress(st, report({"state": "loading", "step": 0, "resumedFromStep": None}),
                          2)
    assert lost == 8
    assert st.lost_steps == 8


def test_output_from_termination_message() -> None:
    out = output_from(SUMMARY)
    assert out.adapter_path == "output/adapter" and out.merged_path == ""
    assert out.metrics == {"evalLoss": 0.9}
    assert output_from(None).adapter_path == "" and output_from(None).metrics == {}


# ------------------------------------------------------------------ conditions and time


def test_set_condition_transition_time_changes_only_on_flips() -> None:
    st = FineTuneJobStatus()
    t0, t1, t2 = NOW, NOW + dt.timedelta(minutes=1), NOW + dt.timedelta(minutes=2)
    set_condition(st, "Running", True, "Running", "a", t0, 1)
    set_condition(st, "Running", True, "StillRunning", "b", t1, 2)
    (c,) = st.conditions
    assert c.last_transition_time == rfc3339(t0)
    assert (c.reason, c.message, c.observed_generation) == ("StillRunning", "b", 2)
    set_condition(st, "Running", False, "Preempting", "c", t2, 2)
    assert c.status == "False" and c.last_transition_time == rfc3339(t2)


def test_set_condition_keeps_one_entry_per_type() -> None:
    st = FineTuneJobStatus()
    set_condition(st, "Admitted", False, "Created", "x", NOW, 1)
    set_condition(st, "Running", True, "Running", "x", NOW, 1)
    set_condition(st, "Admitted", True, "Admitted", "y", NOW, 1)
    assert [c.type for c in st.conditions] == ["Admitted", "Running"]
    assert st.conditions[0].status == "True"


def test_iso_and_parse_time_round_trip_in_utc() -> None:
    local = dt.datetime(2026, 1, 1, 14, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert rfc3339(local) == "2026-01-01T12:00:05Z"
    assert parse_time(rfc3339(local)) == local
    assert parse_time(None) is None and parse_time("") is None


def test_factory_message_is_json_on_the_wire() -> None:
    pod = api_pod(JOB, exit_code=0, message=DONE)
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert json.loads(term["message"]) == DONE
    assert term["reason"] == "Completed"
