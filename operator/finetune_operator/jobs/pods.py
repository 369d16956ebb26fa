"""Pure reading of what a job's pods say: outcome, failure cause, progress, conditions.

No API calls: inputs are the pods as the watch cache keeps them (``slim.SlimPod``, made by
``kube/cache.py`` ``slim_pod``: its termination message already parsed), and `now`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from finetune_api.labels import ATTEMPT_LABEL, RANK_LABEL
from finetune_api.memory import GPU_MEMORY_EXCEEDED
from finetune_api.status import (
    CheckpointStatus,
    Condition,
    FineTuneJobStatus,
    GpuMemoryStatus,
    OutputStatus,
    Progress,
    SourceRevision,
)
from finetune_api.times import TIME_MAX, TIME_MIN, clamp_time, parse_time, rfc3339
from finetune_operator.reports.model import CheckpointReport, ProgressReport, TerminationMessage
from finetune_operator.slim import SlimPod, SlimTermination

# DisruptionTarget reasons that mean "someone needed the resources" (not a failure)
PREEMPTION_REASONS = {"PreemptionByScheduler", "EvictionByEvictionAPI"}
# ... and the ones that mean the node is gone (a failure, retried)
NODE_LOST_REASONS = {"DeletionByTaintManager", "DeletionByPodGC", "TerminationByKubelet"}
# the trainer's exit code for an invalid config or malformed data (docs/contracts.md)
INVALID_INPUT_EXIT_CODE = 2

Pod = SlimPod  # a pod as the cache keeps it (kube/cache.py slim_pod)


def attempt_of(pod: Pod) -> int:
    try:
        return int(pod["metadata"].get("labels", {}).get(ATTEMPT_LABEL, "0"))
    except ValueError:
        return 0


def rank_of(pod: Pod) -> int:
    try:
        return int(pod["metadata"].get("labels", {}).get(RANK_LABEL, "0"))
    except ValueError:
        return 0


def _terminated(pod: Pod) -> dict[str, Any] | None:
    for cs in pod["status"].get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return dict(term)
    return None


def owner_uid(pod: Pod) -> str | None:
    """The uid of the FineTuneJob that owns a pod, if any."""
    return next((r.get("uid") for r in pod["metadata"].get("ownerReferences") or []
                 if r.get("kind") == "FineTuneJob"), None)


def termination(pod: Pod) -> SlimTermination | None:
    """The pod's termination message as the cache parsed it (None: it left none)."""
    return pod["status"].get("termination")


def termination_message(pod: Pod) -> TerminationMessage | None:
    """The trainer's JSON summary (docs/contracts.md), parsed strictly when the pod entered the
    cache; None when it left none, plain text, or a message that breaks the model."""
    term = termination(pod)
    return term["parsed"] if term is not None else None


def termination_detail(pod: Pod) -> str:
    """What the pod's message says went wrong: the summary's message, else the log tail a
    crashed trainer leaves ("" when neither)."""
    term = termination(pod)
    if term is None:
        return ""
    return term["parsed"].message if term["parsed"] is not None else term["logTail"]


def disruption_reason(pod: Pod) -> str | None:
    for c in pod["status"].get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return str(c.get("reason") or "Disrupted")
    return None


@dataclass
class PodsView:
    """What the pods of the current attempt say, in the order the reconcile checks it."""

    expected: int
    present: list[Pod] = field(default_factory=list)
    completed: bool = False                # rank 0 completed (exit 0, not stopped)
    summary: TerminationMessage | None = None  # rank 0's termination message, when completed
    failure: str | None = None             # cause, when a pod failed
    failed_pod: str | None = None          # the pod of that failure (its log tells why)
    failed_rank: int = 0
    failure_reason: str = "exit-code"      # metric label: exit-code | oom-killed | node-lost
    preempted_by: str | None = None        # scheduler | eviction | deleted | trainer
    invalid_input: bool = False            # the trainer exited 2: retrying cannot help
    gpu_memory_exceeded: bool = False      # out of CUDA memory within resources.gpuMemory
    node_lost: str | None = None           # a pod's node went away: retried, not counted
    stopped_checkpoint: CheckpointReport | None = None  # rank 0: stopped on SIGTERM, its save
    stopped_summary: TerminationMessage | None = None   # rank 0's message then (its sources)
    running: int = 0
    active: list[Pod] = field(default_factory=list)     # not terminated
    deletable: list[Pod] = field(default_factory=list)  # active and not being deleted

    @property
    def all_running(self) -> bool:
        return self.running == self.expected

    @property
    def gone(self) -> bool:
        """No pod of the attempt holds resources any more."""
        return not self.active


def observe(pods: list[Pod], expected: int, ever_ran: bool) -> PodsView:
    v = PodsView(expected=expected, present=pods)
    for p in sorted(pods, key=rank_of):
        phase = p["status"].get("phase")
        deleting = bool(p["metadata"].get("deletionTimestamp"))
        term = _terminated(p)
        done = phase in ("Succeeded", "Failed") or term is not None
        if not done:
            v.active.append(p)
            if not deleting:
                v.deletable.append(p)
            if phase == "Running":
                v.running += 1
        disruption = disruption_reason(p)
        msg = termination_message(p)
        if disruption in PREEMPTION_REASONS:
            v.preempted_by = v.preempted_by or (
                "scheduler" if disruption == "PreemptionByScheduler" else "eviction")
        elif disruption in NODE_LOST_REASONS and not v.node_lost:
            v.node_lost = f"node lost ({disruption}) for pod {p['metadata']['name']}"
        if not done:
            if deleting and not v.preempted_by and disruption not in NODE_LOST_REASONS:
                v.preempted_by = "deleted"
            continue
        code = (term or {}).get("exitCode", 0 if phase == "Succeeded" else 1)
        if code == 0 and msg is not None and msg.reason == "Preempted":
            v.preempted_by = v.preempted_by or "trainer"
            if rank_of(p) == 0 and msg.checkpoint is not None:
                v.stopped_checkpoint = msg.checkpoint
            if rank_of(p) == 0:
                v.stopped_summary = msg
        elif code == 0 and not deleting and rank_of(p) == 0 and not v.completed:
            v.completed, v.summary = True, msg
        elif code != 0 and not v.failure and not v.preempted_by and not v.node_lost:
            v.failure, v.failure_reason = _failure_cause(p, term or {}, termination_detail(p))
            v.failed_pod, v.failed_rank = p["metadata"]["name"], rank_of(p)
            v.invalid_input = code == INVALID_INPUT_EXIT_CODE
            v.gpu_memory_exceeded = msg is not None and msg.cause == GPU_MEMORY_EXCEEDED
    if ever_ran and len(pods) < expected and not v.failure and not v.completed \
            and not v.node_lost:
        v.preempted_by = v.preempted_by or "deleted"
    return v


def pending_cause(pods: list[Pod]) -> str:
    """Why the pods of an attempt are not running: the first waiting container's reason and
    message (``ImagePullBackOff: ...``), else the scheduler's, else that none exist."""
    if not pods:
        return "its pods do not exist"
    for p in sorted(pods, key=rank_of):
        name = p["metadata"]["name"]
        for cs in p["status"].get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                return (f"{waiting.get('reason')}: {str(waiting.get('message') or '')[:300]}"
                        f" (pod {name})")
        for c in p["status"].get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return (f"{c.get('reason') or 'Unschedulable'}: "
                        f"{str(c.get('message') or '')[:300]} (pod {name})")
    first = sorted(pods, key=rank_of)[0]
    phase = first["status"].get("phase") or "Pending"
    return f"pod {first['metadata']['name']} is still {phase}"


def _failure_cause(pod: Pod, term: dict[str, Any], detail: str) -> tuple[str, str]:
    code = term.get("exitCode", "unknown")
    reason = term.get("reason") or pod["status"].get("reason") or "Error"
    what = f"pod {pod['metadata']['name']} exited with code {code} ({reason})"
    if detail:
        what += f": {str(detail)[:400]}"
    label = "oom-killed" if reason == "OOMKilled" else "exit-code"
    if reason == "OOMKilled":
        what += "; raise resources.memory or lower training.batchSize / dataset.cutoffLen"
    return what, label


# ------------------------------------------------------------------------ progress


def _num(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _float(v: float | None) -> float | None:
    return None if v is None else float(v)


def apply_progress(st: FineTuneJobStatus, report: ProgressReport, attempt: int,
                   now: dt.datetime | None = None) -> int:
    """Mirror a progress report into the status; returns steps lost by this attempt's resume.

    Its times are clamped to [this attempt's admission, now] (see :func:`_reported_time`); its
    checkpoint never replaces a newer one of the same attempt (the stopped trainer's
    termination message may have named a later save than its last report)."""
    lost = 0
    resumed = report.resumed_from_step
    if resumed is None and "resumed_from_step" in report.model_fields_set:
        resumed = 0  # the trainer found no complete checkpoint: it restarted from scratch
    same_attempt = st.progress_attempt == attempt
    if not same_attempt:
        if st.progress is not None and isinstance(resumed, int):
            lost = max(0, st.progress.step - resumed)
        st.progress_attempt = attempt
    step, total = report.step, report.total_steps
    st.progress = Progress(
        summary=f"{step}/{total}" if total else str(step), step=step,
        total_steps=total or None, epoch=_float(report.epoch), loss=_float(report.loss),
        learning_rate=_float(report.learning_rate),
        tokens_per_second=_float(report.tokens_per_second),
        eta_seconds=_float(report.eta_seconds),
        updated_at=_reported_time(st, report.updated_at, now), resumed_from_step=resumed,
    )
    ck = _checkpoint(st, report.checkpoint, now)
    if ck is not None and not (same_attempt and st.checkpoint and ck.step < st.checkpoint.step):
        st.checkpoint = ck
    if report.gpu_memory is not None:  # the trainer's estimate from config.json
        kept = st.gpu_memory  # the operator's own fields (the share it gave) stay
        st.gpu_memory = GpuMemoryStatus.model_validate(report.gpu_memory.model_dump())
        if kept is not None:
            st.gpu_memory = st.gpu_memory.model_copy(update={
                "request": kept.request, "raises": kept.raises,
                "attempt_share": kept.attempt_share})
    st.lost_steps += lost
    return lost


def apply_stopped_checkpoint(st: FineTuneJobStatus,
                             checkpoint: CheckpointReport | dict[str, Any],
                             now: dt.datetime | None = None) -> None:
    """The checkpoint a stopped trainer's termination message names, when newer than the one
    the status holds: the report sent after that save may not have reached this operator (it
    was restarting, say); the message stays on the pod until the pod is deleted."""
    ck = _checkpoint(st, checkpoint, now)
    if ck is not None and (st.checkpoint is None or ck.step > st.checkpoint.step):
        st.checkpoint = ck


def _reported_time(st: FineTuneJobStatus, value: Any, now: dt.datetime | None) -> str | None:
    """A time a pod reported, as the status stores it: zero-padded RFC 3339, clamped to
    [the current attempt's admission, now] (a pod speaks only for its own attempt: a savedAt
    in the past would make its job look expensive to preempt, one in the future would last);
    None when it is not a time."""
    t = value if isinstance(value, dt.datetime) else parse_time(value)
    if t is None:
        return None
    return rfc3339(clamp_time(t, parse_time(st.admitted_at) or TIME_MIN, now or TIME_MAX))


def _checkpoint(st: FineTuneJobStatus, ck: CheckpointReport | dict[str, Any] | None,
                now: dt.datetime | None) -> CheckpointStatus | None:
    """A reported checkpoint (a progress report's, typed, or a termination message's)."""
    if isinstance(ck, CheckpointReport):
        ck = {"step": ck.step, "path": ck.path, "savedAt": ck.saved_at,
              "saveSeconds": ck.save_seconds}
    if not isinstance(ck, dict) or not isinstance(ck.get("step"), int):
        return None
    path, old = str(ck.get("path", "")), st.checkpoint
    # the checkpoint the status holds, restated by a later attempt that resumed from it, keeps
    # the time stored when it was new (clamping it again would move it to this attempt's start)
    same = old is not None and old.step == ck["step"] and old.path == path and old.saved_at
    return CheckpointStatus(step=ck["step"], path=path,
                            saved_at=old.saved_at if same and old is not None
                            else _reported_time(st, ck.get("savedAt"), now),
                            save_seconds=_num(ck, "saveSeconds"))


def sources_from(msg: TerminationMessage | None,
                 current: list[SourceRevision]) -> list[SourceRevision]:
    """status.sources: the revisions the trainer's message names, else what status had."""
    if msg is None or not msg.sources:
        return current
    return [SourceRevision(source=s.source, uri=s.uri, revision=s.revision,
                           version_id=s.version_id) for s in msg.sources]


def output_from(msg: TerminationMessage | None) -> OutputStatus:
    """The status's output: what the completed trainer's message names (empty without one)."""
    if msg is None:
        return OutputStatus(adapter_path="", merged_path="", metrics={})
    return OutputStatus(adapter_path=msg.adapter_path, merged_path=msg.merged_path,
                        adapter_uri=msg.adapter_uri or "", merged_uri=msg.merged_uri or "",
                        metrics={k: float(v) for k, v in msg.metrics.items()})


# ------------------------------------------------------------------------ conditions


def set_condition(st: FineTuneJobStatus, type_: str, status: bool, reason: str, message: str,
                  now: dt.datetime, generation: int) -> None:
    """Upsert a condition; lastTransitionTime changes only when status flips."""
    value = "True" if status else "False"
    for c in st.conditions:
        if c.type == type_:
            if c.status != value:
                c.last_transition_time = rfc3339(now)
            c.status, c.reason, c.message = value, reason, message  # type: ignore[assignment]
            c.observed_generation = generation
            return
    st.conditions.append(Condition(type=type_, status=value, reason=reason, message=message,
                                   last_transition_time=rfc3339(now),
                                   observed_generation=generation))


# ------------------------------------------------------------------------ invalid data

INVALID_DATA = "InvalidData"


def set_invalid_data(st: FineTuneJobStatus, problem: str | None, now: dt.datetime,
                     generation: int) -> None:
    """The InvalidData condition: True naming the problem (a per-job step of the cycle could not
    process this job's data; it sits out of scheduling), False once it is processed again. A
    job that never had the problem gets no condition."""
    if problem is None:
        if any(c.type == INVALID_DATA and c.status == "True" for c in st.conditions):
            set_condition(st, INVALID_DATA, False, "Processed",
                          "the job's data is processed again", now, generation)
        return
    set_condition(st, INVALID_DATA, True, INVALID_DATA,
                  f"the operator could not process this job's data ({problem[:400]}); the job "
                  "is left out of scheduling (not admitted, not preempted) until it or its "
                  "trainer's report changes: correct the field named, or delete and recreate "
                  "the job", now, generation)
