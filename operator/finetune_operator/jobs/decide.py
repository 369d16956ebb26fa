"""Pure: the native admitter (``admission/seam.py``): the cluster as the caches hold it ->
admission Snapshot -> one JobVerdict per job.

Bridges the state machine (reconcile.py) and the admission policy (admission/): which jobs are
waiting, which hold GPUs, what nodes and quotas have free, and what admit() decided for each.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.times import parse_time
from finetune_operator.admission import (
    AdmissionRound,
    ClusterView,
    Impossible,
    JobVerdict,
    Policy,
    Preemption,
    QueuedJob,
    RunningJob,
    Snapshot,
    Toleration,
    Waiting,
    admit,
)
from finetune_operator.admission.snapshot import nodes_from_k8s, quotas_from_k8s
from finetune_operator.jobs.pods import Pod, attempt_of
from finetune_operator.jobs.reconcile import wants_admission
from finetune_operator.settings import OperatorSettings
from finetune_operator.slim import SlimNode, SlimPod, SlimQuota, SlimUsage

HOLDING_PHASES = ("Admitted", "Running", "Preempting")
# the per-job steps of the cycle, as the InvalidData condition and its metric name them
STEPS = {"snapshot": "reading its status for admission",
         "decision": "wording its admission decision",
         "plan": "planning its next step",
         "write": "comparing its status for the write",
         "deadline": "computing its next timer (status.retryAfter, status.admittedAt, "
                     "spec.activeDeadlineSeconds, spec.ttlSecondsAfterFinished)",
         "metrics": "computing its metrics"}


def problem(step: str, e: Exception) -> str:
    """What failed for one job, for its InvalidData condition: the step and the error (which
    names the field where it can). Stable for the same data, so it is written once."""
    return f"{STEPS[step]}: {type(e).__name__}: {str(e)[:200]}"


def _resource(job: FineTuneJob, settings: OperatorSettings) -> str:
    return job.spec.resources.gpu_resource or settings.admission.gpu_resource


def _tolerations(job: FineTuneJob) -> tuple[Toleration, ...]:
    return tuple(Toleration(key=t.key or "", operator=t.operator or "Equal",
                            value=t.value or "", effect=t.effect or "")
                 for t in job.spec.resources.tolerations)


def _created(job: FineTuneJob, now: dt.datetime) -> dt.datetime:
    return parse_time(job.metadata.creation_timestamp) or now


def _active_current(job: FineTuneJob, pods: list[Pod]) -> list[Pod]:
    return [p for p in pods if attempt_of(p) == job.status.attempt
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def holds_gpus(job: FineTuneJob, pods: list[Pod]) -> bool:
    return job.status.phase in HOLDING_PHASES or bool(_active_current(job, pods))


def build_snapshot(jobs: list[FineTuneJob], pods_by_uid: Mapping[str, list[Pod]],
                   classes: Mapping[str, int], settings: OperatorSettings,
                   nodes: Sequence[SlimNode], active_pods: Sequence[SlimPod | SlimUsage],
                   quotas: Sequence[SlimQuota],
                   now: dt.datetime, invalid: dict[str, tuple[str, str]] | None = None,
                   ) -> Snapshot:
    """``invalid`` (when given) collects the jobs whose entry could not be built: each is left
    out of the snapshot (not admitted, no victim), every other job is in it as usual."""
    queued, running = [], []
    for job in jobs:
        try:
            entry = snapshot_entry(job, pods_by_uid.get(job.metadata.uid, []), classes,
                                   settings, now)
        except Exception as e:  # one job's data stays that job's problem
            if invalid is not None:
                invalid[job.metadata.uid] = ("snapshot", problem("snapshot", e))
            continue
        if isinstance(entry, RunningJob):
            running.append(entry)
        elif entry is not None:
            queued.append(entry)
    return Snapshot(queued=queued, running=running, nodes=nodes_from_k8s(nodes, active_pods),
                    quotas=quotas_from_k8s(quotas), policy=Policy.from_settings(settings))


def snapshot_entry(job: FineTuneJob, pods: list[Pod], classes: Mapping[str, int],
                   settings: OperatorSettings, now: dt.datetime,
                   ) -> RunningJob | QueuedJob | None:
    """One job as the admission policy sees it: holding GPUs, waiting, or neither (None)."""
    cls = job.status.effective_priority_class or settings.resolve_priority_class(job)[0]
    if cls is None or cls not in classes:
        return None  # the state machine fails it with the policy error
    spec, st = job.spec, job.status
    common: dict[str, Any] = dict(
        namespace=job.metadata.namespace, name=job.metadata.name, uid=job.metadata.uid,
        priority=classes[cls], priority_class=cls, gpus=spec.resources.gpus,
        nodes=spec.resources.nodes, gpu_resource=_resource(job, settings))
    if holds_gpus(job, pods):
        current = _active_current(job, pods)
        # this attempt's runtime: a resumed job counts from its latest admission (never later
        # than now: a future time would make it look too young to preempt)
        times = [t for t in (parse_time(st.start_time), parse_time(st.admitted_at)) if t]
        started = min(max(times), now) if times else now
        # a checkpoint saved before this attempt started (an earlier attempt's, or a false
        # savedAt) saves none of this attempt's work, and one "saved" in the future saves no
        # more than all of it: lost work counts from within [attempt start, now]
        ckpt = parse_time(st.checkpoint.saved_at) if st.checkpoint else None
        eta = st.progress.eta_seconds if st.progress else None
        end = now + dt.timedelta(seconds=eta) if eta is not None and math.isfinite(eta) \
            and 0 <= eta < 10**8 else None
        return RunningJob(
            **common, started_at=started,
            last_checkpoint_at=min(max(ckpt, started), now) if ckpt else None,
            preempting=st.phase in ("Preempting", "Suspended") or spec.suspend,
            # the nodes its bound pods run on (an unbound pod, nodeName None, holds none)
            placement=tuple(sorted(node for p in current
                                   if (node := p["spec"].get("nodeName")))),
            counted_in_quota=len(current) >= spec.resources.nodes,
            expected_end_at=end)
    if not wants_admission(job, now):
        return None
    created = _created(job, now)
    return QueuedJob(
        **common, created_at=created,
        queued_since=parse_time(st.queued_since) or created,
        first_queued_at=parse_time(st.first_queued_at) or created,
        expected_seconds=_expected_seconds(job),
        node_selector=dict(spec.resources.node_selector),
        tolerations=_tolerations(job))


def _expected_seconds(job: FineTuneJob) -> float | None:
    """An upper bound of the run time once admitted: what is left of activeDeadlineSeconds."""
    deadline = job.spec.active_deadline_seconds
    if not deadline:
        return None
    return max(0.0, deadline - job.status.active_seconds)


def coarse_position(position: int) -> int:
    """1-10 exact, then rounded up to one significant digit (37 -> 40, 123 -> 200): the status
    moves a few times per decade instead of on every admission ahead of it."""
    if position <= 10:
        return position
    magnitude: int = 10 ** (len(str(position)) - 1)
    return -(-position // magnitude) * magnitude


_KEY = re.compile(r"\b([a-z0-9][-a-z0-9]*)/([a-z0-9][-a-z0-9.]*)")


def tenant_words(text: str, namespace: str, keys: set[str]) -> str:
    """A message for a job in ``namespace`` never names a job of another namespace (``keys``:
    every job's namespace/name)."""
    if "/" not in text:
        return text
    return _KEY.sub(lambda m: "a job in another namespace" if m.group(1) != namespace
                    and m.group(0) in keys else m.group(0), text)


def decide(jobs: list[FineTuneJob], pods_by_uid: Mapping[str, list[Pod]],
           classes: Mapping[str, int], settings: OperatorSettings, nodes: Sequence[SlimNode],
           active_pods: Sequence[SlimPod | SlimUsage], quotas: Sequence[SlimQuota],
           now: dt.datetime) -> AdmissionRound:
    out = AdmissionRound()
    snap = build_snapshot(jobs, pods_by_uid, classes, settings, nodes, active_pods, quotas, now,
                          out.invalid)
    d = admit(snap, now)
    keys = {j.key for j in jobs}
    said: dict[tuple[str, str], str] = {}  # many waiting jobs share a reason: rewrite it once

    def words(text: str, ns: str) -> str:
        got = said.get((text, ns))
        if got is None:
            got = said[(text, ns)] = tenant_words(text, ns, keys)
        return got

    def preempt(pr: Preemption) -> JobVerdict:
        ns = pr.victim.namespace
        reason = pr.reason if pr.preemptor.namespace == ns else (
            "preempted by a higher-priority job in another namespace "
            f"({pr.preemptor.priority_class})")
        return JobVerdict(preempt=tenant_words(reason, ns, keys))

    per_ns: dict[str, int] = {}

    def waiting(w: Waiting) -> JobVerdict:
        ns = w.job.namespace
        per_ns[ns] = per_ns.get(ns, 0) + 1
        reason = words(w.reason, ns)
        row = {"name": w.job.name, "position": per_ns[ns], "clusterPosition": w.position,
               "priorityClass": w.job.priority_class, "gpus": w.job.total_gpus,
               "effectivePriority": round(w.effective_priority, 1), "reason": reason,
               "code": str(w.code), "reserved": w.reserved}
        out.queue_view.setdefault(ns, []).append(row)
        return JobVerdict(position=coarse_position(per_ns[ns]), reason=reason, code=w.code)

    def impossible(i: Impossible) -> JobVerdict:
        return JobVerdict(impossible=tenant_words(i.reason, i.job.namespace, keys))

    each: list[tuple[str, Callable[[], JobVerdict]]] = [
        *((a.job.uid, functools.partial(JobVerdict, admit=True, placement=a.placement))
          for a in d.admit),
        *((pr.victim.uid, functools.partial(preempt, pr)) for pr in d.preempt),
        *((w.job.uid, functools.partial(waiting, w)) for w in d.waiting),
        *((i.job.uid, functools.partial(impossible, i)) for i in d.impossible)]
    for uid, make in each:
        try:
            out.by_uid[uid] = make()
        except Exception as e:  # this job is left out; every other one is decided
            out.invalid[uid] = ("decision", problem("decision", e))
    res = settings.admission.gpu_resource
    # the namespace's GPU quota for the dashboard: its unscoped quotas (a scoped one, e.g. per
    # PriorityClass, limits only some jobs); the tightest when there are several
    for q in snap.quotas:
        if q.resource == res and not q.scopes:
            out.quotas[q.namespace] = min(out.quotas.get(q.namespace, q.hard), q.hard)
    return out


def policy_error(job: FineTuneJob, settings: OperatorSettings,
                 classes: Mapping[str, int]) -> tuple[str | None, str | None]:
    """(priority class, error): not allowed for the namespace, or not installed."""
    cls, err = settings.resolve_priority_class(job)
    if err or cls is None:
        return cls, err
    if cls not in classes:
        return cls, (f"PriorityClass {cls} does not exist in the cluster; the platform team "
                     "installs the finetune-* classes with the Helm chart, or pick an existing "
                     "class in spec.priorityClassName")
    return cls, None


class NativeAdmitter:
    """The admitter of ``admission/seam.py`` this operator runs today: its own policy."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings

    def decide(self, view: ClusterView, now: dt.datetime) -> AdmissionRound:
        return decide(list(view.jobs), view.pods_by_uid, view.classes, self.settings,
                      view.nodes, view.active_pods, view.quotas, now)
