"""The job state machine, pure: (job, its pods, the admission decision, now) -> Plan.

Level-based: everything is recomputed from the job's status and its pods, so an operator that
restarts at any instant picks up where it was. The shell (loop.py) executes a Plan in this
order: status patch first, then creations, then deletions — so a crash between the two leaves
a status that tells the next pass what to finish (e.g. phase Admitted with no pods: create them;
phase Preempting: keep deleting).

Phases: Queued -> Admitted -> Running -> (Preempting -> Queued)* -> Succeeded | Failed;
spec.suspend parks a job as Suspended (its pods stopped gracefully) until it is cleared.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from .api.job import FineTuneJob
from .api.status import FineTuneJobStatus, QueueStatus
from .status import (
    PodsView,
    apply_progress,
    attempt_of,
    iso,
    observe,
    output_from,
    parse_time,
    read_progress,
    set_condition,
)

ACTIVE_PHASES = ("Admitted", "Running", "Preempting")
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class JobDecision:
    """What the admission policy says about one job this pass."""

    admit: bool = False
    preempt: str | None = None      # reason, when a running job must make room
    position: int | None = None
    reason: str = ""
    code: str = ""                  # the policy's wait code: the Admitted=False reason
    impossible: str | None = None   # can never be admitted as configured


@dataclass
class Plan:
    status: FineTuneJobStatus
    create_attempt: int | None = None                 # create (or finish creating) children
    delete_pods: list[dict] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    metrics: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class Ctx:
    now: dt.datetime
    backoff_seconds: float                # delay before the next retry if this pass fails it
    priority_class: str | None = None
    policy_error: str | None = None       # e.g. a priority class the namespace may not use
    # the newest progress report of the current attempt seen on the pod watch: the trainer's
    # last report (right after its SIGTERM save) may land just before its pod disappears
    watched_report: dict[str, Any] | None = None


def wants_admission(job: FineTuneJob, now: dt.datetime) -> bool:
    """Queued, not suspended, and past its retry delay: the admission policy may pick it."""
    st = job.status
    if (st.phase or "Queued") != "Queued" or job.spec.suspend:
        return False
    retry = parse_time(st.retry_after)
    return retry is None or retry <= now


def plan(job: FineTuneJob, pods: list[dict], decision: JobDecision, ctx: Ctx) -> Plan:
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

    report = read_progress(current)
    seen = ctx.watched_report
    if seen is not None and (report is None or seen.get("step", 0) > report.get("step", 0)):
        report = seen
    if report is not None:
        lost = apply_progress(st, report, st.attempt)
        if lost:
            p.metrics.append(("lost", {"steps": lost}))

    if st.phase in TERMINAL_PHASES:
        p.delete_pods.extend(observe(current, job.spec.resources.nodes, True).deletable)
        return p
    if st.phase is None:
        _to_queue(p, job, "Created", "waiting for admission", now, first=True)

    if ctx.policy_error:
        _fail(p, job, "PolicyViolation", ctx.policy_error, now)
        return p
    if decision.impossible and st.phase == "Queued":
        _fail(p, job, "Unschedulable", decision.impossible, now)
        return p
    deadline = job.spec.active_deadline_seconds
    started = parse_time(st.start_time)
    if deadline and started and (now - started).total_seconds() > deadline:
        _fail(p, job, "DeadlineExceeded",
              f"ran longer than activeDeadlineSeconds={deadline}", now, current)
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
                             .deletable if x not in p.delete_pods)
        _queued(p, job, decision, ctx)
    return p


def _reconcile_active(p: Plan, job: FineTuneJob, current: list[dict], decision: JobDecision,
                      ctx: Ctx) -> None:
    st, now, gen = p.status, ctx.now, job.metadata.generation
    # pods missing while the attempt is only Admitted means "not created yet" (create them);
    # missing once it was Running means someone deleted them (a preemption)
    view = observe(current, job.spec.resources.nodes, ever_ran=st.phase == "Running")
    stopping = st.phase == "Preempting" or job.spec.suspend or st.phase == "Suspended"
    if view.completed is not None:
        _succeed(p, job, view, now)
    elif view.failure and not stopping and not view.preempted_by:
        _failed_attempt(p, job, view, ctx)
    elif stopping or view.preempted_by or decision.preempt:
        _stop(p, job, view, decision, now)
    elif not current or len(current) < view.expected:
        p.create_attempt = st.attempt  # admitted but children missing (e.g. operator restart)
    elif view.all_running and st.phase != "Running":
        st.phase = "Running"
        st.start_time = st.start_time or iso(now)
        set_condition(st, "Running", True, "Running", f"attempt {st.attempt}: "
                      f"{view.expected} pod(s) running", now, gen)
        resume = st.checkpoint.step if st.checkpoint else 0
        p.events.append(("Normal", "Running", f"attempt {st.attempt} running"
                         + (f", resuming from checkpoint step {resume}" if resume else "")))


def _stop(p: Plan, job: FineTuneJob, view: PodsView, decision: JobDecision,
          now: dt.datetime) -> None:
    """Graceful stop of the attempt (preemption or suspend); finish when no pod holds GPUs."""
    st, gen = p.status, job.metadata.generation
    suspending = job.spec.suspend
    unsuspended = not suspending and st.stop_reason == "suspend"  # cleared while stopping
    if suspending and st.phase != "Suspended":
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
    st.preemptions += 1
    reason = st.stop_reason or "preempted"
    kind = "scheduler" if "kube-scheduler" in reason else (
        "eviction" if "Eviction" in reason else "operator")
    set_condition(st, "Preempted", True, "Preempted", f"{reason} (preemption "
                  f"{st.preemptions}; not counted as a failure)", now, gen)
    p.metrics.append(("preemption", {"reason": kind}))
    p.events.append(("Normal", "Preempted", f"{reason}; back in the queue, will resume from "
                     f"checkpoint step {st.checkpoint.step if st.checkpoint else 0}"))
    st.stop_reason = None
    _to_queue(p, job, "Preempted", "waiting to resume", now)


def _succeed(p: Plan, job: FineTuneJob, view: PodsView, now: dt.datetime) -> None:
    st, gen = p.status, job.metadata.generation
    msg = view.completed or {}
    st.phase, st.completion_time, st.output = "Succeeded", iso(now), output_from(msg)
    st.start_time = st.start_time or iso(now)
    if isinstance(msg.get("finalStep"), int) and st.progress is not None:
        st.progress.step = msg["finalStep"]
        total = st.progress.total_steps
        st.progress.summary = f"{st.progress.step}/{total}" if total else str(st.progress.step)
    set_condition(st, "Complete", True, "Completed", f"output in {st.output.adapter_path or '-'}",
                  now, gen)
    set_condition(st, "Running", False, "Completed", "training finished", now, gen)
    p.delete_pods.extend(view.deletable)
    p.events.append(("Normal", "Completed", f"training finished after {st.attempt} attempt(s), "
                     f"{st.preemptions} preemption(s), {st.failures} failure(s)"))
    p.metrics.append(("completion", {}))


def _failed_attempt(p: Plan, job: FineTuneJob, view: PodsView, ctx: Ctx) -> None:
    st, now, gen = p.status, ctx.now, job.metadata.generation
    st.failures += 1
    p.delete_pods.extend(view.deletable)  # a gang restarts whole
    p.metrics.append(("failure", {"reason": view.failure_reason}))
    cause = view.failure or "unknown failure"
    limit = job.spec.backoff_limit
    if view.invalid_input:
        _fail(p, job, "InvalidInput", f"{cause}; the trainer rejected its config or data "
              "(exit code 2), which a retry cannot fix: correct the spec or the data and "
              "re-create the job", now, count=False)
        return
    if st.failures > limit:
        _fail(p, job, "BackoffLimitExceeded",
              f"failed {st.failures} time(s), more than backoffLimit={limit}; last: {cause}", now,
              count=False)
        return
    delay = ctx.backoff_seconds
    st.retry_after = iso(now + dt.timedelta(seconds=delay))
    set_condition(st, "Running", False, "Failed", f"attempt {st.attempt} failed: {cause}", now,
                  gen)
    p.events.append(("Warning", "AttemptFailed", f"attempt {st.attempt} failed ({st.failures}/"
                     f"{limit} allowed): {cause}; retrying in {delay:.0f}s from the newest "
                     "checkpoint"))
    _to_queue(p, job, "Retrying", f"retry {st.failures} after {delay:.0f}s backoff", now)


def _fail(p: Plan, job: FineTuneJob, reason: str, message: str, now: dt.datetime,
          current: list[dict] | None = None, count: bool = True) -> None:
    """End the job. count=False when the failed attempt was already counted."""
    st, gen = p.status, job.metadata.generation
    st.phase, st.completion_time, st.queue = "Failed", iso(now), None
    set_condition(st, "Failed", True, reason, message, now, gen)
    if any(c.type == "Running" for c in st.conditions):
        set_condition(st, "Running", False, reason, message, now, gen)
    if current:
        p.delete_pods.extend(observe(current, job.spec.resources.nodes, True).deletable)
    p.events.append(("Warning", reason, message))
    if count:
        p.metrics.append(("failure", {"reason": "deadline" if reason == "DeadlineExceeded"
                                      else "policy"}))


def _to_queue(p: Plan, job: FineTuneJob, reason: str, message: str, now: dt.datetime,
              first: bool = False) -> None:
    st = p.status
    st.phase, st.queued_since = "Queued", iso(now)
    st.queue = QueueStatus(position=None, reason=message)
    set_condition(st, "Admitted", False, reason, message, now, job.metadata.generation)
    if first:
        p.events.append(("Normal", "Queued", "accepted; waiting for admission"))


def _queued(p: Plan, job: FineTuneJob, decision: JobDecision, ctx: Ctx) -> None:
    st, now, gen = p.status, ctx.now, job.metadata.generation
    retry = parse_time(st.retry_after)
    if retry and retry > now:  # a stable text (no countdown) so the status is not rewritten
        st.queue = QueueStatus(position=None, reason=f"backing off after failure {st.failures}: "
                               f"retry at {st.retry_after}")
        return
    if not decision.admit:
        st.queue = QueueStatus(position=decision.position, reason=decision.reason)
        set_condition(st, "Admitted", False, decision.code or _waiting_reason(decision.reason),
                      decision.reason or "waiting for admission", now, gen)
        return
    queued = parse_time(st.queued_since) or now
    st.attempt += 1
    st.phase, st.queue, st.admitted_at, st.retry_after = "Admitted", None, iso(now), None
    p.create_attempt = st.attempt
    resume = st.checkpoint.step if st.checkpoint else 0
    msg = (f"attempt {st.attempt} admitted after {(now - queued).total_seconds():.0f}s in queue"
           + (f"; resumes from checkpoint step {resume}" if resume else ""))
    set_condition(st, "Admitted", True, "Admitted", msg, now, gen)
    p.events.append(("Normal", "Admitted", msg))
    p.metrics.append(("admission", {"wait": (now - queued).total_seconds()}))


def _waiting_reason(reason: str) -> str:
    r = reason.lower()
    if "quota" in r:
        return "QuotaExhausted"
    if "node" in r or "capacity" in r or "free" in r:
        return "InsufficientCapacity"
    if "maxrunningjobs" in r or "already runs" in r:
        return "NamespaceLimit"
    return "Waiting"
