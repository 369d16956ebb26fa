"""The job state machine, pure: (job, its pods, the admission decision, now) -> Plan.

Level-based: everything is recomputed from the job's status and its pods, so an operator that
restarts at any instant picks up where it was. The shell (executor.py) executes a Plan in this
order: status patch first, then creations, then deletions — so a crash between the two leaves
a status that tells the next pass what to finish (e.g. phase Admitted with no pods: create them;
phase Preempting: keep deleting).

Phases: Queued -> Admitted -> Running -> (Preempting -> Queued)* -> Succeeded | Failed;
spec.suspend parks a job as Suspended (its pods stopped gracefully) until it is cleared.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from finetune_api.job import FineTuneJob
from finetune_api.memory import MAX_RAISES, gib, raised_share, spec_status
from finetune_api.status import FineTuneJobStatus, GpuMemoryStatus, QueueStatus
from finetune_api.times import parse_time, rfc3339, time_after
from finetune_operator.admission.seam import JobVerdict
from finetune_operator.jobs.build.names import pod_name
from finetune_operator.jobs.build.output import output_location
from finetune_operator.jobs.build.output import summary as output_summary
from finetune_operator.jobs.build.pod import Flavor
from finetune_operator.jobs.pods import (
    Pod,
    PodsView,
    apply_progress,
    apply_stopped_checkpoint,
    attempt_of,
    observe,
    output_from,
    pending_cause,
    set_condition,
    sources_from,
)
from finetune_operator.reports.model import ProgressReport

ACTIVE_PHASES = ("Admitted", "Running", "Preempting")
TERMINAL_PHASES = ("Succeeded", "Failed")


class OutcomeKind(StrEnum):
    ADMISSION = "admission"
    PREEMPTION = "preemption"
    FAILURE = "failure"
    COMPLETION = "completion"
    LOST_WORK = "lost"


@dataclass(frozen=True)
class Outcome:
    """Something that happened to the job in this pass, for the metrics (executor.py records
    it once the plan's writes landed)."""

    kind: OutcomeKind
    # preemption: scheduler | eviction | operator; failure: exit-code | oom-killed | deadline |
    # policy (the metric's reason label)
    reason: str = ""
    wait_seconds: float = 0.0  # admission: time in the queue
    steps: int = 0             # lost work: steps redone by this resume

    @classmethod
    def admitted(cls, wait_seconds: float) -> Outcome:
        return cls(OutcomeKind.ADMISSION, wait_seconds=wait_seconds)

    @classmethod
    def preempted(cls, reason: str) -> Outcome:
        return cls(OutcomeKind.PREEMPTION, reason=reason)

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        return cls(OutcomeKind.FAILURE, reason=reason)

    @classmethod
    def completed(cls) -> Outcome:
        return cls(OutcomeKind.COMPLETION)

    @classmethod
    def lost_work(cls, steps: int) -> Outcome:
        return cls(OutcomeKind.LOST_WORK, steps=steps)


@dataclass
class Plan:
    status: FineTuneJobStatus
    create_attempt: int | None = None                 # create (or finish creating) children
    placement: tuple[str, ...] = ()                   # nodes the pods should prefer, by rank
    flavor: Flavor | None = None                      # Kueue's flavor: node labels, tolerations
    delete_pods: list[Pod] = field(default_factory=list)
    # stuck terminating past their grace period on a NotReady/deleted node: delete with grace 0
    force_delete_pods: list[Pod] = field(default_factory=list)
    delete_job: bool = False                          # ttlSecondsAfterFinished has passed
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass
class Ctx:
    now: dt.datetime
    backoff_seconds: float                # delay before the next retry if this pass fails it
    priority_class: str | None = None
    policy_error: str | None = None       # e.g. a priority class the namespace may not use
    # the newest progress report of the current attempt seen on the pod watch: the trainer's
    # last report (right after its SIGTERM save) may land just before its pod disappears
    watched_report: ProgressReport | None = None
    # why creating this attempt's children was refused (quota, webhook, a name taken)
    create_error: str | None = None
    node_ready: Callable[[str], bool | None] | None = None  # None: the node is gone
    pods_ready_timeout_seconds: float = 600.0
    max_start_requeues: int = 3
    force_delete_margin_seconds: float = 60.0
    unschedulable_grace_seconds: float = 900.0
    max_gpus_per_node: int = 0
    ttl_seconds_after_finished: int | None = None  # the operator setting; None = keep


def wants_admission(job: FineTuneJob, now: dt.datetime) -> bool:
    """Queued, not suspended, and past its retry delay: the admission policy may pick it."""
    st = job.status
    if (st.phase or "Queued") != "Queued" or job.spec.suspend:
        return False
    retry = parse_time(st.retry_after)
    return retry is None or retry <= now


def plan(job: FineTuneJob, pods: list[Pod], decision: JobVerdict, ctx: Ctx) -> Plan:
    st = job.status.model_copy(deep=True)
    p = Plan(status=st)
    gen, now = job.metadata.generation, ctx.now
    st.observed_generation = gen
    if ctx.priority_class:
        st.effective_priority_class = ctx.priority_class

    # a status written back by a deposed leader (or restored) may lag behind existing pods
    st.attempt = max([st.attempt, *(attempt_of(x) for x in pods)])
    current = [x for x in pods if attempt_of(x) == st.attempt and st.attempt > 0]
    stale = [x for x in pods if attempt_of(x) != st.attempt
             and not x["metadata"].get("deletionTimestamp")
             and x.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
    p.delete_pods.extend(stale)

    report = ctx.watched_report
    if report is not None and st.progress is not None and st.progress_attempt == st.attempt \
            and report.step < st.progress.step:
        report = None  # an older report never rolls the status back
    if report is not None:
        lost = apply_progress(st, report, st.attempt, now)
        if lost:
            p.outcomes.append(Outcome.lost_work(lost))

    _force_stuck(p, pods, ctx)
    if st.phase in TERMINAL_PHASES:
        p.delete_pods.extend(observe(current, job.spec.resources.nodes, True).deletable)
        finished = parse_time(st.completion_time)
        ttl = _ttl(job, ctx)
        if ttl is not None and finished and (now - finished).total_seconds() >= ttl:
            p.delete_job = True
        return p
    if st.phase is None:
        _to_queue(p, job, "Created", "waiting for admission", now, first=True)
    if st.phase in ("Queued", "Suspended") and (st.gpu_memory is None
                                                 or st.gpu_memory.source == "spec"):
        kept = st.gpu_memory
        st.gpu_memory = spec_status(job.spec)  # the spec may change until admission
        if kept is not None and (kept.request or kept.raises or kept.attempt_share):
            st.gpu_memory = (st.gpu_memory or GpuMemoryStatus()).model_copy(update={
                "request": kept.request, "raises": kept.raises,
                "attempt_share": kept.attempt_share})

    if ctx.policy_error:
        _fail(p, job, "PolicyViolation", ctx.policy_error, now)
        return p
    res = job.spec.resources
    if ctx.max_gpus_per_node and res.gpus > ctx.max_gpus_per_node and st.phase == "Queued":
        _fail(p, job, "Unschedulable", f"asks {res.gpus} GPUs per node but the largest node "
              f"size is {ctx.max_gpus_per_node} (operator setting max_gpus_per_node); lower "
              "resources.gpus and raise resources.nodes", now)
        return p
    if st.phase == "Queued" and decision.impossible:
        since = parse_time(st.unschedulable_since) or now
        st.unschedulable_since = rfc3339(since)
        waited = (now - since).total_seconds()
        if waited >= ctx.unschedulable_grace_seconds:
            _fail(p, job, "Unschedulable", f"{decision.impossible} (for {waited:.0f}s, more "
                  f"than the {ctx.unschedulable_grace_seconds:.0f}s grace period)", now)
            return p
    elif st.phase == "Queued" or st.phase in ACTIVE_PHASES:
        st.unschedulable_since = None
    deadline = job.spec.active_deadline_seconds
    if deadline and st.phase in ACTIVE_PHASES and active_seconds(st, now) > deadline:
        _fail(p, job, "DeadlineExceeded",
              f"was admitted for longer than activeDeadlineSeconds={deadline} (time in the "
              "queue or suspended does not count)", now, current)
        return p

    holding = observe(current, job.spec.resources.nodes, False).active
    if st.phase in ACTIVE_PHASES or (st.phase == "Suspended" and (holding or st.stop_reason)):
        _reconcile_active(p, job, current, decision, ctx)
    elif st.phase == "Suspended" and not job.spec.suspend:
        set_condition(st, "Suspended", False, "Resumed", "spec.suspend cleared", now, gen)
        p.events.append(("Normal", "Resumed", "spec.suspend cleared; back in the queue"))
        _to_queue(p, job, "Resumed", "waiting for admission", now)
    elif st.phase == "Queued" and job.spec.suspend:
        st.phase, st.queue = "Suspended", None
        set_condition(st, "Suspended", True, "Suspended", "spec.suspend is true", now, gen)
        p.events.append(("Normal", "Suspended", "suspended while queued"))

    if st.phase == "Queued":
        # e.g. a gang member still running after its peer failed and the operator restarted
        p.delete_pods.extend(x for x in observe(current, job.spec.resources.nodes, False)
                             .deletable if x not in p.delete_pods
                             and x not in p.force_delete_pods)
        _queued(p, job, decision, ctx)
    if job.status.phase is None and st.phase == "Admitted":  # admitted at first sight:
        p.events = [e for e in p.events if e[1] != "Queued"]  # one Event, not two
    return p


def active_seconds(st: FineTuneJobStatus, now: dt.datetime) -> float:
    """Time admitted (counted for activeDeadlineSeconds): earlier attempts plus this one."""
    admitted = parse_time(st.admitted_at)
    current = (now - admitted).total_seconds() if admitted and st.phase in ACTIVE_PHASES \
        else 0.0
    return st.active_seconds + max(0.0, current)


def _leave_active(st: FineTuneJobStatus, now: dt.datetime) -> None:
    """Bank this attempt's admitted time before the phase leaves Admitted/Running/Preempting."""
    if st.phase in ACTIVE_PHASES:
        st.active_seconds = round(active_seconds(st, now), 3)


def _ttl(job: FineTuneJob, ctx: Ctx) -> int | None:
    """Seconds a finished job is kept (0 = delete at once), None = kept: the spec, else the
    operator setting; both mean the same."""
    ttl = job.spec.ttl_seconds_after_finished
    return ctx.ttl_seconds_after_finished if ttl is None else ttl


def _stuck(pod: Pod, ctx: Ctx, now: dt.datetime) -> bool:
    """Terminating past its deadline plus a margin, on a node that is NotReady or gone."""
    gone_by = parse_time(pod["metadata"].get("deletionTimestamp"))
    if gone_by is None or ctx.node_ready is None:
        return False
    if (now - gone_by).total_seconds() < ctx.force_delete_margin_seconds:
        return False
    node = (pod.get("spec") or {}).get("nodeName")
    return not node or ctx.node_ready(node) is not True


def _force_stuck(p: Plan, pods: list[Pod], ctx: Ctx) -> None:
    p.force_delete_pods.extend(x for x in pods if _stuck(x, ctx, ctx.now))


def due_at(job: FineTuneJob, st: FineTuneJobStatus, pods: list[Pod],
           timing: dict[str, float], now: dt.datetime) -> dt.datetime | None:
    """The next instant at which this job's plan may change with nothing else happening:
    a retry delay ending, the pods-ready timeout, the deadline, the unschedulable grace, a pod
    becoming force-deletable, the TTL after finishing. None: only events change it."""
    times: list[dt.datetime] = []
    if st.phase == "Queued" and (t := parse_time(st.retry_after)):
        times.append(t)
    admitted = parse_time(st.admitted_at)
    if st.phase == "Admitted" and admitted:
        times.append(time_after(admitted, timing["pods_ready_timeout"]))
    deadline = job.spec.active_deadline_seconds
    if deadline and st.phase in ACTIVE_PHASES:
        times.append(time_after(now, deadline - active_seconds(st, now) + 0.5))
    if st.phase == "Queued" and (t := parse_time(st.unschedulable_since)):
        times.append(time_after(t, timing["unschedulable_grace"] + 0.1))
    for pod in pods:
        if (t := parse_time(pod["metadata"].get("deletionTimestamp"))):
            times.append(time_after(t, timing["force_delete_margin"] + 0.5))
    if st.phase in TERMINAL_PHASES and (t := parse_time(st.completion_time)):
        ttl = job.spec.ttl_seconds_after_finished
        if ttl is None and timing.get("ttl") is not None:
            ttl = int(timing["ttl"])
        if ttl is not None:
            times.append(time_after(t, ttl))
    future = [t for t in times if t > now]
    return min(future) if future else None


def _reconcile_active(p: Plan, job: FineTuneJob, current: list[Pod], decision: JobVerdict,
                      ctx: Ctx) -> None:
    st, now, gen = p.status, ctx.now, job.metadata.generation
    # pods missing while the attempt is only Admitted means "not created yet" (create them);
    # missing once it was Running means someone deleted them (a preemption)
    view = observe(current, job.spec.resources.nodes, ever_ran=st.phase == "Running")
    stopping = st.phase == "Preempting" or job.spec.suspend or st.phase == "Suspended"
    admitted = parse_time(st.admitted_at) or now
    if view.completed:
        _succeed(p, job, view, now)
    elif view.failure and not stopping and not view.preempted_by:
        _failed_attempt(p, job, view, ctx)
    elif view.node_lost and not stopping and st.phase != "Preempting":
        _stop(p, job, view, JobVerdict(preempt=f"{view.node_lost}; retried from the newest "
                                        "checkpoint, not counted as a failure"), now)
    elif stopping or view.preempted_by or decision.preempt:
        _stop(p, job, view, decision, now)
    elif st.phase == "Admitted" and ctx.create_error:
        _requeue_start(p, job, view, ctx.create_error, ctx)
    elif st.phase == "Admitted" and not view.all_running and \
            (now - admitted).total_seconds() >= ctx.pods_ready_timeout_seconds:
        _requeue_start(p, job, view, f"not running {ctx.pods_ready_timeout_seconds:.0f}s "
                       f"after admission: {pending_cause(current)}", ctx)
    elif st.attempt < 1:  # a status written by someone else (not an admission): start over
        _to_queue(p, job, "Requeued", "status said admitted but no attempt was started", now)
    elif not current or len(current) < view.expected:
        p.create_attempt = st.attempt  # admitted but children missing (e.g. operator restart)
        if decision.node_selector or decision.tolerations:  # Kueue's flavor, as at admission
            p.flavor = Flavor(dict(decision.node_selector), tuple(decision.tolerations))
    elif view.all_running and st.phase != "Running":
        st.phase = "Running"
        st.start_time = st.start_time or rfc3339(now)
        set_condition(st, "Running", True, "Running", f"attempt {st.attempt}: "
                      f"{view.expected} pod(s) running", now, gen)
        resume = st.checkpoint.step if st.checkpoint else 0
        if st.attempt > 1 or resume:  # the first start is the Admitted Event + the phase
            p.events.append(("Normal", "Running", f"attempt {st.attempt} running"
                             + (f", resuming from checkpoint step {resume}" if resume else "")))


def _resume_note(job: FineTuneJob, st: FineTuneJobStatus) -> str:
    """Where the next attempt starts: the newest checkpoint, or from scratch when none was
    saved yet (a checkpoint is written every checkpoint.intervalSteps steps)."""
    if st.checkpoint and st.checkpoint.step:
        return f"will resume from checkpoint step {st.checkpoint.step}"
    done = st.progress.step if st.progress and st.progress.step else 0
    return ("no checkpoint was saved yet, so it restarts from scratch (step 0"
            + (f"; {done} step(s) of work are redone" if done else "")
            + f"); checkpoints are saved every {job.spec.checkpoint.interval_steps} steps "
            "(spec.checkpoint.intervalSteps)")


def _requeue_start(p: Plan, job: FineTuneJob, view: PodsView, cause: str, ctx: Ctx) -> None:
    """The attempt never started (pods not ready in time, creation refused): give its GPUs
    back and wait in the queue again; fail with the cause after max_start_requeues."""
    st, now = p.status, ctx.now
    st.start_requeues += 1
    p.delete_pods.extend(view.deletable)
    if st.start_requeues > ctx.max_start_requeues:
        _fail(p, job, "PodsNotReady", f"attempt {st.attempt}: {cause}; gave up after "
              f"{st.start_requeues} tries: fix the cause (image, resources, Secret, PVC, "
              "quota) and re-create the job", now)
        return
    _leave_active(st, now)
    st.retry_after = rfc3339(time_after(now, ctx.backoff_seconds))
    p.events.append(("Warning", "PodsNotReady", f"attempt {st.attempt}: {cause}; back in the "
                     f"queue ({st.start_requeues}/{ctx.max_start_requeues} such requeues)"))
    _to_queue(p, job, "PodsNotReady", cause, now)


def _stop(p: Plan, job: FineTuneJob, view: PodsView, decision: JobVerdict,
          now: dt.datetime) -> None:
    """Graceful stop of the attempt (preemption or suspend); finish when no pod holds GPUs."""
    st, gen = p.status, job.metadata.generation
    if view.stopped_checkpoint is not None:
        apply_stopped_checkpoint(st, view.stopped_checkpoint, now)
    st.sources = sources_from(view.stopped_summary, st.sources)  # pinned by the first attempt
    suspending = job.spec.suspend
    unsuspended = not suspending and st.stop_reason == "suspend"  # cleared while stopping
    if suspending and st.phase != "Suspended":
        _leave_active(st, now)
        st.phase, st.stop_reason = "Suspended", "suspend"
        set_condition(st, "Suspended", True, "Stopping",
                      "spec.suspend is true: the trainer saves a checkpoint and exits", now, gen)
        p.events.append(("Normal", "Suspending", "spec.suspend set: stopping gracefully"))
    elif not suspending and not unsuspended and st.phase != "Preempting":
        reason = decision.preempt or {
            "scheduler": "preempted by the kube-scheduler",
            "eviction": "evicted through the Eviction API",
            "trainer": "the trainer stopped on SIGTERM after saving a checkpoint",
        }.get(view.preempted_by or "", "its pod was deleted")
        st.phase, st.stop_reason = "Preempting", reason
        set_condition(st, "Running", False, "Preempting", reason, now, gen)
        p.events.append(("Normal", "Preempting", reason))
    p.delete_pods.extend(view.deletable)
    if not view.gone:
        return
    if suspending:
        st.stop_reason = None
        set_condition(st, "Suspended", True, "Suspended", "stopped with its checkpoint kept; "
                      "clear spec.suspend to resume", now, gen)
        set_condition(st, "Running", False, "Suspended", "suspended", now, gen)
        p.events.append(("Normal", "Suspended", "pods stopped; checkpoint kept"))
        return
    if unsuspended:
        st.stop_reason = None
        set_condition(st, "Suspended", False, "Resumed", "spec.suspend cleared", now, gen)
        p.events.append(("Normal", "Resumed", "spec.suspend cleared; back in the queue"))
        _to_queue(p, job, "Resumed", "waiting for admission", now)
        return
    reason = st.stop_reason or "preempted"
    if reason.startswith("node lost"):
        st.stop_reason = None
        set_condition(st, "Running", False, "NodeLost", reason, now, gen)
        p.events.append(("Warning", "NodeLost", reason))
        _to_queue(p, job, "NodeLost", "waiting to resume after a node loss", now)
        return
    st.preemptions += 1
    kind = "scheduler" if "kube-scheduler" in reason else (
        "eviction" if "Eviction" in reason else "operator")
    set_condition(st, "Preempted", True, "Preempted", f"{reason} (preemption "
                  f"{st.preemptions}; not counted as a failure)", now, gen)
    p.outcomes.append(Outcome.preempted(kind))
    p.events.append(("Normal", "Preempted",
                     f"{reason}; back in the queue, {_resume_note(job, st)}"))
    st.stop_reason = None
    _to_queue(p, job, "Preempted", "waiting to resume", now)


def _succeed(p: Plan, job: FineTuneJob, view: PodsView, now: dt.datetime) -> None:
    st, gen = p.status, job.metadata.generation
    msg = view.summary
    _leave_active(st, now)
    st.phase, st.completion_time, st.output = "Succeeded", rfc3339(now), output_from(msg)
    st.sources = sources_from(msg, st.sources)
    st.start_time = st.start_time or rfc3339(now)
    if msg is not None and st.progress is not None:
        st.progress.step = msg.final_step
        total = st.progress.total_steps
        st.progress.summary = f"{st.progress.step}/{total}" if total else str(st.progress.step)
    where = output_location(job, st.output.adapter_path, st.output.merged_path)
    set_condition(st, "Complete", True, "Completed", output_summary(where), now, gen)
    set_condition(st, "Running", False, "Completed", "training finished", now, gen)
    p.delete_pods.extend(view.deletable)
    p.events.append(("Normal", "Completed", f"training finished after {st.attempt} attempt(s), "
                     f"{st.preemptions} preemption(s), {st.failures} failure(s)"))
    p.outcomes.append(Outcome.completed())


def _failed_attempt(p: Plan, job: FineTuneJob, view: PodsView, ctx: Ctx) -> None:
    st, now, gen = p.status, ctx.now, job.metadata.generation
    gm = st.gpu_memory
    share = gm.attempt_share if gm else None
    bigger = raised_share(share, gm.raises) if share and gm and view.gpu_memory_exceeded \
        else None
    if bigger is not None and gm is not None and share:  # the estimate was short: not a failure
        p.delete_pods.extend(view.deletable)
        st.gpu_memory = gm.model_copy(update={"request": bigger, "raises": gm.raises + 1})
        msg = (f"attempt {st.attempt} ran out of GPU memory within its share of {gib(share)}"
               f" ({view.failure}); the next attempt asks {gib(bigger)} (raise "
               f"{gm.raises + 1}/{MAX_RAISES}, not counted as a failure)")
        set_condition(st, "Running", False, "GPUMemoryExceeded", msg, now, gen)
        p.events.append(("Warning", "ShareRaised", msg))
        _to_queue(p, job, "ShareRaised", msg, now)
        return
    st.failures += 1
    # a gang restarts whole; its survivors would block in a collective with a dead peer, so
    # they are deleted at once (grace 0: there is nothing consistent left for them to save)
    if job.spec.resources.nodes > 1:
        p.force_delete_pods.extend(view.deletable)
    else:
        p.delete_pods.extend(view.deletable)
    p.outcomes.append(Outcome.failed(view.failure_reason))
    cause = view.failure or "unknown failure"
    limit = job.spec.backoff_limit
    if view.invalid_input:
        _fail(p, job, "InvalidInput", f"{cause}; the trainer rejected its config or data "
              "(exit code 2), which a retry cannot fix: correct the spec or the data and "
              "re-create the job", now, count=False)
        return
    if st.failures > limit:
        _fail(p, job, "BackoffLimitExceeded",
              f"failed {st.failures} time(s), more than backoffLimit={limit}; last: {cause}; "
              + _logs_hint(job, st.attempt, view), now, count=False)
        return
    delay = ctx.backoff_seconds
    st.retry_after = rfc3339(time_after(now, delay))
    set_condition(st, "Running", False, "Failed", f"attempt {st.attempt} failed: {cause}", now,
                  gen)
    p.events.append(("Warning", "AttemptFailed", f"attempt {st.attempt} failed ({st.failures}/"
                     f"{limit} allowed): {cause}; retrying in {delay:.0f}s from the newest "
                     "checkpoint"))
    _to_queue(p, job, "Retrying", f"retry {st.failures} after {delay:.0f}s backoff", now)


def _logs_hint(job: FineTuneJob, attempt: int, view: PodsView) -> str:
    """Where the failed attempt's log is: its pod is kept while the job exists."""
    m = job.metadata
    rank = f" --rank {view.failed_rank}" if view.failed_rank else ""
    pod = view.failed_pod or pod_name(m.name, max(attempt, 1), view.failed_rank)
    return (f"read why in attempt {attempt}'s log: kubectl finetune logs {m.name} -n "
            f"{m.namespace} --attempt {attempt}{rank} (or kubectl logs {pod} -n {m.namespace} "
            "-c trainer)")


def _fail(p: Plan, job: FineTuneJob, reason: str, message: str, now: dt.datetime,
          current: list[Pod] | None = None, count: bool = True) -> None:
    """End the job. count=False when the failed attempt was already counted."""
    st, gen = p.status, job.metadata.generation
    _leave_active(st, now)
    st.phase, st.completion_time, st.queue = "Failed", rfc3339(now), None
    set_condition(st, "Failed", True, reason, message, now, gen)
    if any(c.type == "Running" for c in st.conditions):
        set_condition(st, "Running", False, reason, message, now, gen)
    if current:
        p.delete_pods.extend(observe(current, job.spec.resources.nodes, True).deletable)
    p.events.append(("Warning", reason, message))
    if count:
        p.outcomes.append(Outcome.failed("deadline" if reason == "DeadlineExceeded"
                                         else "policy"))


def _to_queue(p: Plan, job: FineTuneJob, reason: str, message: str, now: dt.datetime,
              first: bool = False) -> None:
    st = p.status
    _leave_active(st, now)
    st.phase, st.queued_since = "Queued", rfc3339(now)
    st.first_queued_at = st.first_queued_at or rfc3339(now)  # keeps its place: aging goes on
    st.queue = QueueStatus(position=None, reason=message)
    set_condition(st, "Admitted", False, reason, message, now, job.metadata.generation)
    if first:
        p.events.append(("Normal", "Queued", "accepted; waiting for admission"))


def _queued(p: Plan, job: FineTuneJob, decision: JobVerdict, ctx: Ctx) -> None:
    st, now, gen = p.status, ctx.now, job.metadata.generation
    retry = parse_time(st.retry_after)
    if retry and retry > now:  # a stable text (no countdown) so the status is not rewritten
        st.queue = QueueStatus(position=None, reason=f"backing off after failure {st.failures}: "
                               f"retry at {st.retry_after}")
        return
    since = parse_time(st.unschedulable_since)
    if decision.impossible and since:  # a stable text: the instant it gives up, no countdown
        until = rfc3339(time_after(since, ctx.unschedulable_grace_seconds))
        why = (f"{decision.impossible}; waiting in case it fits again (quota raised, node "
               f"back); fails at {until} if it still cannot")
        st.queue = QueueStatus(position=None, reason=why)
        set_condition(st, "Admitted", False, "Unschedulable", why, now, gen)
        return
    if not decision.admit:
        st.queue = QueueStatus.waiting(decision.position, decision.reason)
        set_condition(st, "Admitted", False, str(decision.code or "Waiting"),
                      decision.reason or "waiting for admission", now, gen)
        return
    queued = parse_time(st.queued_since) or now
    st.attempt += 1
    st.phase, st.queue, st.admitted_at, st.retry_after = "Admitted", None, rfc3339(now), None
    p.create_attempt, p.placement = st.attempt, decision.placement
    if decision.node_selector or decision.tolerations:
        p.flavor = Flavor(dict(decision.node_selector), tuple(decision.tolerations))
    if decision.share is not None or (st.gpu_memory and st.gpu_memory.attempt_share):
        # the attempt's pod holds a share of a GPU (a DRA claim) or, None, whole GPUs
        st.gpu_memory = (st.gpu_memory or GpuMemoryStatus()).model_copy(
            update={"attempt_share": decision.share})
    resume = st.checkpoint.step if st.checkpoint else 0
    msg = (f"attempt {st.attempt} admitted after {(now - queued).total_seconds():.0f}s in queue"
           + (f"; resumes from checkpoint step {resume}" if resume else ""))
    set_condition(st, "Admitted", True, "Admitted", msg, now, gen)
    p.events.append(("Normal", "Admitted", msg))
    p.outcomes.append(Outcome.admitted((now - queued).total_seconds()))

