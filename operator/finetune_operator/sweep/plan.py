"""Pure: (sweep, the FineTuneJobs of its namespace, now) -> what to create, stop and report.

Level-based like the job reconciler: everything is recomputed from what is in the cluster.
A trial is the FineTuneJob ``<sweep>-t<index>`` owned by the sweep (owner reference with the
sweep's uid); trials are created in index order, so a planner working on a stale view asks
for the same names again (create-or-get makes that a no-op) and never for more than
``maxParallel`` unfinished trials. A job with a trial's name that the sweep does not own is
never adopted: the sweep reports the conflict instead.

A trial is *finished* when its job Succeeded or Failed, or when its ``spec.suspend`` is true
(early-stopped by the sweep, or suspended by hand: it frees its slot; set suspend back to false
to continue it). The sweep Succeeded when every trial exists and is finished.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from finetune_api.job import API_VERSION, KIND, FineTuneJob
from finetune_api.labels import (
    EARLY_STOP_ANNOTATION,
    MANAGED_BY_VALUE,
    PARAMETERS_ANNOTATION,
    PART_OF_LABEL,
    SWEEP_LABEL,
    TRIAL_LABEL,
)
from finetune_api.sweep import (
    SWEEP_KIND,
    BestTrial,
    FineTuneSweep,
    FineTuneSweepStatus,
    TrialStatus,
)
from finetune_api.times import parse_time
from finetune_operator.sweep.expand import SweepInvalid, Trial, expand, trial_name

FINISHED_JOB_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class TrialJob:
    """A FineTuneJob as the planner reads it: its name, namespace and owners' uids, and its
    model parsed once (the operator's job cache parses each job once per resourceVersion and
    hands these in: ``jobs/feeds.py`` ``JobEntry.trial``); ``job`` is None when it does not
    parse (a foreign shape is not the planner's to read)."""

    namespace: str
    name: str
    owners: frozenset[str]
    job: FineTuneJob | None

    @classmethod
    def of(cls, body: dict[str, Any], job: FineTuneJob | None) -> TrialJob:
        """``job``: ``body`` already parsed (None: it did not parse)."""
        meta = body.get("metadata") or {}
        return cls(namespace=str(meta.get("namespace", "")), name=str(meta.get("name")),
                   owners=frozenset(str(r.get("uid")) for r in meta.get("ownerReferences") or []
                                    if r.get("uid")),
                   job=job)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> TrialJob:
        """A body not parsed yet (one the API server just returned for a creation)."""
        try:
            job: FineTuneJob | None = FineTuneJob.from_body(body)
        except (ValidationError, KeyError, TypeError):
            job = None
        return cls.of(body, job)


Jobs = Sequence[TrialJob | dict[str, Any]]  # parsed once, or bodies (parsed here)


def trial_jobs(jobs: Jobs) -> list[TrialJob]:
    return [j if isinstance(j, TrialJob) else TrialJob.from_body(j) for j in jobs]


@dataclass
class SweepPlan:
    creates: list[dict[str, Any]] = field(default_factory=list)  # FineTuneJob bodies
    stops: list[tuple[str, str, str]] = field(default_factory=list)  # (trial, its uid, why)
    status: dict[str, Any] = field(default_factory=dict)  # the whole new status (wire)
    status_changed: bool = False
    best: BestTrial | None = None


def owner_reference(sweep: FineTuneSweep) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": SWEEP_KIND, "name": sweep.metadata.name,
            "uid": sweep.metadata.uid, "controller": True, "blockOwnerDeletion": True}


def owned_by(body: dict[str, Any], uid: str) -> bool:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(r.get("uid") == uid for r in refs)


def trial_body(sweep: FineTuneSweep, trial: Trial) -> dict[str, Any]:
    """The child FineTuneJob of one trial."""
    m = sweep.metadata
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": trial_name(m.name, trial.index),
            "namespace": m.namespace,
            "labels": {SWEEP_LABEL: m.name, TRIAL_LABEL: str(trial.index),
                       PART_OF_LABEL: MANAGED_BY_VALUE},
            "annotations": {PARAMETERS_ANNOTATION: json.dumps(trial.parameters,
                                                              sort_keys=True)},
            "ownerReferences": [owner_reference(sweep)],
        },
        "spec": trial.spec,
    }


def _condition(old: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
               now: datetime, generation: int) -> dict[str, Any]:
    prev = next((c for c in old if c.get("type") == type_), None)
    since = (prev.get("lastTransitionTime") if prev and prev.get("status") == status else None)
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since or now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "observedGeneration": generation}


def _gpu_hours_start_to_completion(job: FineTuneJob) -> float | None:
    """A finished trial's GPUs x wall-clock hours from its first start to its completion
    (preempted and re-queued spells included: what it spanned, not what it computed)."""
    start, end = parse_time(job.status.start_time), parse_time(job.status.completion_time)
    if start is None or end is None:
        return None
    return round(job.spec.resources.total_gpus * (end - start).total_seconds() / 3600.0, 4)


def _trial_phase(job: FineTuneJob | None) -> str:
    if job is None:
        return "Pending"
    if job.status.phase in FINISHED_JOB_PHASES:
        return job.status.phase or "Queued"
    if job.spec.suspend:
        return "Stopped"
    return job.status.phase or "Queued"


def _finished(phase: str) -> bool:
    return phase in ("Succeeded", "Failed", "Stopped")


def _record_losses(sweep: FineTuneSweep, jobs: dict[int, FineTuneJob],
                   statuses: list[TrialStatus]) -> None:
    """Each trial's loss at earlyStop.afterSteps: kept from the stored status once recorded,
    else taken from the first progress report at or past afterSteps."""
    es = sweep.spec.early_stop
    if es is None:
        return
    before = {t.index: t for t in sweep.status.trials}
    for s in statuses:
        prev = before.get(s.index)
        if prev is not None and prev.early_stop_loss is not None:
            s.early_stop_step, s.early_stop_loss = prev.early_stop_step, prev.early_stop_loss
            continue
        job = jobs.get(s.index)
        pr = job.status.progress if job is not None else None
        if pr is not None and pr.loss is not None and pr.step >= es.after_steps:
            s.early_stop_step, s.early_stop_loss = pr.step, pr.loss


def _early_stops(sweep: FineTuneSweep, jobs: dict[int, FineTuneJob],
                 statuses: list[TrialStatus]) -> list[tuple[str, str, str]]:
    """Running trials whose loss at afterSteps is worse than the best trial's by more than the
    margin."""
    es = sweep.spec.early_stop
    seen = [s for s in statuses if s.early_stop_loss is not None]
    if es is None or len(seen) < 2:
        return []
    best = min(seen, key=lambda s: (s.early_stop_loss, s.index))
    assert best.early_stop_loss is not None
    out = []
    for s in seen:
        job = jobs.get(s.index)
        if s is best or job is None or _trial_phase(job) != "Running":
            continue
        assert s.early_stop_loss is not None
        if s.early_stop_loss > best.early_stop_loss + es.margin:
            out.append((s.name, job.metadata.uid,
                        f"loss {s.early_stop_loss:.4g} at step {s.early_stop_step} is worse than "
                        f"trial {best.index}'s {best.early_stop_loss:.4g} at step "
                        f"{best.early_stop_step} by more than {es.margin:g}"))
    return out


def _rank(sweep: FineTuneSweep, trials: list[TrialStatus]) -> BestTrial | None:
    metric = sweep.spec.objective.metric
    done = [t for t in trials if t.phase == "Succeeded" and t.objective is not None]
    if not done:
        return None
    sign = 1.0 if sweep.spec.objective.minimize() else -1.0
    best = min(done, key=lambda t: (sign * (t.objective or 0.0), t.index))
    assert best.objective is not None
    return BestTrial(name=best.name, index=best.index, metric=metric, value=best.objective,
                     parameters=dict(best.parameters))


def rank_trials(sweep: FineTuneSweep, trials: list[TrialStatus]) -> list[TrialStatus]:
    """Trials best first: finished with the metric (by direction), then the rest by index."""
    sign = 1.0 if sweep.spec.objective.minimize() else -1.0
    return sorted(trials, key=lambda t: (t.objective is None,
                                         sign * t.objective if t.objective is not None else 0.0,
                                         t.index))


def plan_sweep(sweep: FineTuneSweep, jobs: Jobs, now: datetime,
               create: bool = True) -> SweepPlan:
    """The sweep's next step. ``jobs``: the FineTuneJobs of the sweep's namespace (others are
    ignored), parsed (:class:`TrialJob`) or bodies; only those owned by the sweep's uid count
    as its trials. ``create=False``: the status of what exists, planning no creation."""
    m = sweep.metadata
    old = sweep.status.to_wire()
    plan = SweepPlan()
    try:
        trials = expand(sweep.spec)
    except SweepInvalid as e:
        return _finish(plan, old, _invalid(sweep, str(e), now))
    by_name: dict[str, TrialJob] = {}
    for tj in trial_jobs(jobs):
        if tj.namespace in (m.namespace, ""):
            by_name[tj.name] = tj
    children: dict[int, FineTuneJob] = {}
    conflicts: list[str] = []
    for t in trials:
        name = trial_name(m.name, t.index)
        found = by_name.get(name)
        if found is None:
            continue
        if not (m.uid and m.uid in found.owners):
            conflicts.append(name)
            continue
        if found.job is not None:  # a trial the API server stored is valid; a foreign shape
            children[t.index] = found.job  # is not ours
    statuses: list[TrialStatus] = []
    for t in trials:
        job = children.get(t.index)
        phase = _trial_phase(job)
        metrics = dict(job.status.output.metrics) if job and job.status.output else {}
        statuses.append(TrialStatus(
            index=t.index, name=trial_name(m.name, t.index), parameters=t.parameters,
            phase=phase,
            metrics=metrics, objective=metrics.get(sweep.spec.objective.metric),
            preemptions=job.status.preemptions if job else 0,
            gpu_hours=(_gpu_hours_start_to_completion(job)
                       if job and phase in ("Succeeded", "Failed") else None),
            early_stopped=bool(job and phase == "Stopped"
                               and job.metadata.annotations.get(EARLY_STOP_ANNOTATION))))
    active = sum(1 for s in statuses if s.phase != "Pending" and not _finished(s.phase))
    if not sweep.metadata.deletion_timestamp:
        for t, s in zip(trials, statuses, strict=True):
            if not create or active >= sweep.spec.max_parallel:
                break
            if s.phase == "Pending" and s.name not in conflicts:
                plan.creates.append(trial_body(sweep, t))
                s.phase = "Queued"
                active += 1
        _record_losses(sweep, children, statuses)
        plan.stops = _early_stops(sweep, children, statuses)
        for name, _uid, _why in plan.stops:
            for s in statuses:
                if s.name == name:
                    s.phase, s.early_stopped = "Stopped", True
    plan.best = _rank(sweep, statuses)
    finished = sum(1 for s in statuses if _finished(s.phase))
    done = finished == len(statuses)
    conditions: list[dict[str, Any]] = []
    if conflicts:
        conditions.append(_condition(
            old.get("conditions", []), "NameConflict", "True", "NameConflict",
            f"FineTuneJob {', '.join(conflicts)} exists and is not owned by this sweep; delete or "
            "rename it (the sweep never adopts a job it did not create)", now, m.generation))
    succeeded = sum(1 for s in statuses if s.phase == "Succeeded")
    failed = [s.name for s in statuses if s.phase == "Failed"]
    none_succeeded = done and not succeeded
    conditions.append(_condition(
        old.get("conditions", []), "Complete", "True" if done else "False",
        ("NoTrialSucceeded" if none_succeeded else "AllTrialsFinished") if done
        else "TrialsRemaining",
        _progress_note(statuses, finished, succeeded, failed, m.namespace)
        + _best_note(plan.best), now, m.generation))
    status = FineTuneSweepStatus(
        phase=("Failed" if none_succeeded else "Succeeded") if done else "Running",
        total_trials=len(statuses),
        active_trials=active, finished_trials=finished,
        summary=f"{finished}/{len(statuses)}", trials=statuses, best=plan.best,
        observed_generation=m.generation,
    ).to_wire()
    status["conditions"] = conditions
    return _finish(plan, old, status)


def _progress_note(statuses: list[TrialStatus], finished: int, succeeded: int,
                   failed: list[str], namespace: str) -> str:
    """``3/4 trials finished: 1 succeeded, 2 failed``; when trials failed, how to read why."""
    stopped = finished - succeeded - len(failed)
    text = (f"{finished}/{len(statuses)} trials finished: {succeeded} succeeded, "
            f"{len(failed)} failed" + (f", {stopped} stopped" if stopped else ""))
    if finished == len(statuses) and not succeeded:
        text += "; no trial succeeded, so there is no best trial"
    if failed:
        text += f"; see why with kubectl finetune describe {failed[0]} -n {namespace}"
    return text


def _best_note(best: BestTrial | None) -> str:
    return f"; best {best.name} {best.metric}={best.value:.6g}" if best else ""


def _invalid(sweep: FineTuneSweep, message: str, now: datetime) -> dict[str, Any]:
    old = sweep.status.to_wire()
    return {**FineTuneSweepStatus(phase="Failed", observed_generation=sweep.metadata.generation)
            .to_wire(),
            "conditions": [_condition(old.get("conditions", []), "Invalid", "True",
                                      "InvalidSpec", message, now, sweep.metadata.generation)]}


def invalid_status(body: dict[str, Any], message: str, now: datetime) -> dict[str, Any]:
    """Status of a sweep whose spec does not even parse (the CRD let it through)."""
    meta = body.get("metadata") or {}
    old = (body.get("status") or {}).get("conditions") or []
    gen = int(meta.get("generation") or 0)
    return {"phase": "Failed", "observedGeneration": gen,
            "conditions": [_condition(old, "Invalid", "True", "InvalidSpec", message[:1024],
                                      now, gen)]}


def _finish(plan: SweepPlan, old: dict[str, Any], status: dict[str, Any]) -> SweepPlan:
    plan.status = status
    plan.status_changed = status != old
    return plan
