"""Pure: the native admitter (``admission/seam.py``): the cluster as the caches hold it ->
admission Snapshot -> one JobVerdict per job.

Bridges the state machine (reconcile.py) and the admission policy (admission/): which jobs are
waiting, which hold GPUs, what nodes and quotas have free, and what admit() decided for each.

Incremental across cycles (``NativeAdmitter``): a job's entry is parsed once per job object and
pods state (``entry_recipe``) and finished at each cycle's ``now`` (``Recipe.at``); the full
rebuild (``decide()``, ``build_snapshot``) runs the same two steps, so both give the same
verdicts by construction.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.memory import requested_share
from finetune_api.status import shown_position
from finetune_api.times import parse_time
from finetune_operator.admission import (
    AdmissionRound,
    ClusterView,
    Impossible,
    JobVerdict,
    Policy,
    PolicyResult,
    Preemption,
    QueuedJob,
    Quota,
    RunningJob,
    Snapshot,
    Toleration,
    Waiting,
    Walk,
    admit,
    admit_kept,
    next_reorder,
    queue_order,
)
from finetune_operator.admission.devices import (
    SharedQueued,
    SharedRunning,
    admit_shared,
    devices_now,
    with_shares_used,
)
from finetune_operator.admission.sharing import QUOTA_UNITS, is_shared, quota_used
from finetune_operator.admission.snapshot import nodes_from_k8s, quotas_from_k8s
from finetune_operator.jobs.pods import Pod, attempt_of
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
    return _snapshot(queued, running, settings, nodes, active_pods, quotas)


def _snapshot(queued: list[QueuedJob], running: list[RunningJob], settings: OperatorSettings,
              nodes: Sequence[SlimNode], active_pods: Sequence[SlimPod | SlimUsage],
              quotas: Sequence[SlimQuota]) -> Snapshot:
    return Snapshot(queued=queued, running=running, nodes=nodes_from_k8s(nodes, active_pods),
                    quotas=quotas_from_k8s(quotas), policy=Policy.from_settings(settings))


def snapshot_entry(job: FineTuneJob, pods: list[Pod], classes: Mapping[str, int],
                   settings: OperatorSettings, now: dt.datetime,
                   ) -> RunningJob | QueuedJob | None:
    """One job as the admission policy sees it: holding GPUs, waiting, or neither (None)."""
    return entry_recipe(job, pods, classes, settings).at(now)


class Recipe:
    """A job's snapshot entry without ``now``: what its object and its pods say, parsed once
    (``entry_recipe``); ``at(now)`` finishes the entry (the parts that depend on the time).
    The base: the job is in no snapshot (no class, or neither waiting nor holding GPUs)."""

    __slots__ = ()

    def at(self, now: dt.datetime) -> RunningJob | QueuedJob | None:
        return None


NOTHING = Recipe()


class _Running(Recipe):
    __slots__ = ("ckpt", "common", "counted", "end_in", "last", "latest", "placement",
                 "preempting")

    def __init__(self, common: dict[str, Any], latest: dt.datetime | None,
                 ckpt: dt.datetime | None, eta: float | None, preempting: bool,
                 placement: tuple[str, ...], counted: bool) -> None:
        self.common, self.latest, self.ckpt = common, latest, ckpt
        self.end_in = dt.timedelta(seconds=eta) if eta is not None else None
        self.preempting, self.placement, self.counted = preempting, placement, counted
        self.last: RunningJob | None = None  # the entry of the latest at(): reused when equal

    def at(self, now: dt.datetime) -> RunningJob:
        # this attempt's runtime: a resumed job counts from its latest admission (never later
        # than now: a future time would make it look too young to preempt)
        started = min(self.latest, now) if self.latest else now
        # a checkpoint saved before this attempt started (an earlier attempt's, or a false
        # savedAt) saves none of this attempt's work, and one "saved" in the future saves no
        # more than all of it: lost work counts from within [attempt start, now]
        ckpt = min(max(self.ckpt, started), now) if self.ckpt else None
        end = now + self.end_in if self.end_in is not None else None
        last = self.last
        if last is not None and (last.started_at, last.last_checkpoint_at,
                                 last.expected_end_at) == (started, ckpt, end):
            return last
        self.last = RunningJob(
            **self.common, started_at=started, last_checkpoint_at=ckpt,
            preempting=self.preempting, placement=self.placement,
            counted_in_quota=self.counted, expected_end_at=end)
        return self.last


class _Queued(Recipe):
    __slots__ = ("entry", "retry")

    def __init__(self, entry: QueuedJob, retry: dt.datetime | None) -> None:
        self.entry, self.retry = entry, retry

    def at(self, now: dt.datetime) -> QueuedJob | None:
        # wants_admission's time part: past its retry delay
        return self.entry if self.retry is None or self.retry <= now else None


class _QueuedNow(Recipe):
    """A waiting job without a creation time: its entry counts from ``now`` (rare)."""

    __slots__ = ("job", "retry")

    def __init__(self, job: Callable[[dt.datetime], QueuedJob], retry: dt.datetime | None,
                 ) -> None:
        self.job, self.retry = job, retry

    def at(self, now: dt.datetime) -> QueuedJob | None:
        return self.job(now) if self.retry is None or self.retry <= now else None


def entry_recipe(job: FineTuneJob, pods: list[Pod], classes: Mapping[str, int],
                 settings: OperatorSettings) -> Recipe:
    """What ``snapshot_entry`` reads of a job and its pods, parsed (it raises on data it cannot
    process, as snapshot_entry does)."""
    cls = job.status.effective_priority_class or settings.resolve_priority_class(job)[0]
    if cls is None or cls not in classes:
        return NOTHING  # the state machine fails it with the policy error
    spec, st = job.spec, job.status
    common: dict[str, Any] = dict(
        namespace=job.metadata.namespace, name=job.metadata.name, uid=job.metadata.uid,
        priority=classes[cls], priority_class=cls, gpus=spec.resources.gpus,
        nodes=spec.resources.nodes, gpu_resource=_resource(job, settings))
    if holds_gpus(job, pods):
        current = _active_current(job, pods)
        times = [t for t in (parse_time(st.start_time), parse_time(st.admitted_at)) if t]
        eta = st.progress.eta_seconds if st.progress else None
        return _Running(
            common, max(times) if times else None,
            parse_time(st.checkpoint.saved_at) if st.checkpoint else None,
            eta if eta is not None and math.isfinite(eta) and 0 <= eta < 10**8 else None,
            preempting=st.phase in ("Preempting", "Suspended") or spec.suspend,
            # the nodes its bound pods run on (an unbound pod, nodeName None, holds none)
            placement=tuple(sorted(node for p in current
                                   if (node := p["spec"].get("nodeName")))),
            counted=len(current) >= spec.resources.nodes)
    # wants_admission (reconcile.py) without its time part, which at() checks
    if (st.phase or "Queued") != "Queued" or spec.suspend:
        return NOTHING
    retry = parse_time(st.retry_after)
    queued_since, first = parse_time(st.queued_since), parse_time(st.first_queued_at)
    selector, tolerations = dict(spec.resources.node_selector), _tolerations(job)
    expected = _expected_seconds(job)

    def queued(created: dt.datetime) -> QueuedJob:
        return QueuedJob(**common, created_at=created, queued_since=queued_since or created,
                         first_queued_at=first or created, expected_seconds=expected,
                         node_selector=selector, tolerations=tolerations)

    created = parse_time(job.metadata.creation_timestamp)
    if created is None:
        return _QueuedNow(queued, retry)
    return _Queued(queued(created), retry)


def shared_memory(job: FineTuneJob) -> int | None:
    """The share (bytes of one GPU) a job takes when GPU sharing is on: the current attempt's
    while it holds one, else what its next attempt asks; None: it takes whole GPUs."""
    res, gm = job.spec.resources, job.status.gpu_memory
    if gm is not None and gm.attempt_share and job.status.phase not in (None, "Queued"):
        return gm.attempt_share
    want = requested_share(job.spec, gm)
    return want if is_shared(res.gpus, res.nodes, want) else None


def _with_sharing(snap: Snapshot, view: ClusterView, now: dt.datetime, keys: set[str],
                  settings: OperatorSettings, out: AdmissionRound) -> AdmissionRound:
    """admit() over the whole-GPU jobs, then the shared jobs packed by memory on the shared
    GPUs (admission/devices.py), in queue order, within what quota is left."""
    res = settings.admission.gpu_resource
    shared: dict[str, int] = {}
    for job in view.jobs:
        if (mem := shared_memory(job)) is not None:
            shared[job.metadata.uid] = mem
    if not shared:
        return verdicts(snap, now, keys, settings, out)
    s_running = [SharedRunning(uid=r.uid, key=f"{r.namespace}/{r.name}", namespace=r.namespace,
                               memory=shared[r.uid],
                               # bound: its node; not yet: best fit anywhere (a preference)
                               node=r.placement[0] if r.placement else None)
                 for r in snap.running if r.uid in shared]
    devices, _ = devices_now(view.shared_gpus, view.claim_uses, s_running)
    units = quota_used(devices)
    whole = replace(snap, running=[r for r in snap.running if r.uid not in shared],
                    queued=[q for q in snap.queued if q.uid not in shared],
                    quotas=with_shares_used(snap.quotas, units, res))
    verdicts(whole, now, keys, settings, out)
    # quota left for shares, in hundredths: hard - whole GPUs used (counted, pending and just
    # admitted) - the shares
    new_whole: dict[str, int] = {}
    for r in whole.running:
        if not r.counted_in_quota:
            new_whole[r.namespace] = new_whole.get(r.namespace, 0) + r.total_gpus
    for q in whole.queued:
        if out.by_uid.get(q.uid, JobVerdict()).admit:
            new_whole[q.namespace] = new_whole.get(q.namespace, 0) + q.total_gpus
    free: dict[str, int] = {}
    for quota in snap.quotas:
        if quota.resource != res or quota.scopes:
            continue
        left = (quota.hard - quota.used - new_whole.get(quota.namespace, 0)) * QUOTA_UNITS \
            - units.get(quota.namespace, 0)
        free[quota.namespace] = min(free.get(quota.namespace, left), max(0, left))
    eligible = _eligible_nodes(view, {d.node for d in devices})
    waiting = sorted((q for q in snap.queued if q.uid in shared),
                     key=lambda q: (-q.priority, q.first_queued_at or q.created_at, q.name))
    got = admit_shared(devices, [
        SharedQueued(uid=q.uid, key=f"{q.namespace}/{q.name}", namespace=q.namespace,
                     memory=shared[q.uid], nodes=eligible(q.node_selector))
        for q in waiting], free)
    per_ns: dict[str, int] = {}
    for q in waiting:
        if (placed := got.admit.get(q.uid)) is not None:
            out.by_uid[q.uid] = JobVerdict(admit=True, placement=(placed[0],),
                                           share=shared[q.uid])
            continue
        w = got.wait[q.uid]
        if w.never:
            out.by_uid[q.uid] = JobVerdict(impossible=w.reason)
            continue
        per_ns[q.namespace] = per_ns.get(q.namespace, 0) + 1
        out.by_uid[q.uid] = JobVerdict(position=shown_position(per_ns[q.namespace]),
                                       reason=f"waiting for a GPU share: {w.reason}",
                                       code=w.code)
    return out


def _eligible_nodes(view: ClusterView, with_gpus: set[str],
                    ) -> Callable[[Mapping[str, str]], frozenset[str]]:
    labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in view.nodes
              if n["metadata"]["name"] in with_gpus}

    def nodes(selector: Mapping[str, str]) -> frozenset[str]:
        return frozenset(name for name, lab in labels.items()
                         if all(lab.get(k) == v for k, v in selector.items()))

    return nodes


def _expected_seconds(job: FineTuneJob) -> float | None:
    """An upper bound of the run time once admitted: what is left of activeDeadlineSeconds."""
    deadline = job.spec.active_deadline_seconds
    if not deadline:
        return None
    return max(0.0, deadline - job.status.active_seconds)


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
    return verdicts(snap, now, {j.key for j in jobs}, settings, out)


def verdicts(snap: Snapshot, now: dt.datetime, keys: set[str],
             settings: OperatorSettings, out: AdmissionRound,
             result: PolicyResult | None = None) -> AdmissionRound:
    """admit() over the snapshot (or its ``result``, already computed), worded as one
    JobVerdict per job (``keys``: every job's namespace/name, which messages to a tenant never
    name)."""
    d = result if result is not None else admit(snap, now)
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
        return JobVerdict(position=shown_position(per_ns[ns]), reason=reason, code=w.code)

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


class _Kept:
    """One job's cached entry: its recipe, valid while the job object (the feeds parse one per
    resourceVersion) and what its pods say (attempt, phase, node of each) are the same."""

    __slots__ = ("job", "key", "pods", "recipe")

    def __init__(self, job: FineTuneJob, pods: tuple[tuple[int, Any, Any], ...],
                 recipe: Recipe) -> None:
        self.job, self.pods, self.recipe, self.key = job, pods, recipe, job.key


def _pods_key(pods: list[Pod]) -> tuple[tuple[int, Any, Any], ...]:
    """All a snapshot entry reads of a job's pods."""
    return tuple((attempt_of(p), (p.get("status") or {}).get("phase"),
                  (p.get("spec") or {}).get("nodeName")) for p in pods)


# at least this often a full round: what a quiet round does not follow (running jobs' expected
# ends, which place a job with a deadline; the visibility endpoint's effective priorities)
QUIET_MAX_SECONDS = 120.0
# why a round was a full one (the metric's reason label; jobs/decide.py NativeAdmitter)
FULL_ROUND = ("off", "not-quiet", "unknown", "capacity", "time", "job-left", "job-data",
              "job-stopped", "retry", "job-changed", "placement", "quota", "arrival-queue",
              "arrival-waits")


class _Quiet:
    """What a quiet round needs of the last full round (``NativeAdmitter``): the walk's state,
    the verdicts, and per job its kind in the snapshot (queued / running / none)."""

    def __init__(self, walk: Walk, out: AdmissionRound, now: dt.datetime,
                 until: dt.datetime) -> None:
        self.walk, self.out, self.at, self.until = walk, out, now, until
        self.kinds: dict[str, str | None] = {}        # uid -> "queued" | "running" | None
        self.queued: dict[str, QueuedJob] = {}
        self.shape: dict[str, tuple[object, ...]] = {}  # running: what the walk charged
        # GPUs the walk charged to quotas that their usage may not show yet (admitted, or
        # running with pods the quota does not count yet): uid -> (quota indices, GPUs)
        self.charged: dict[str, tuple[tuple[int, ...], int]] = {}
        self.waiting_ns = walk.waiting_namespaces()
        self.quotas = _quota_terms(walk.quotas)


def _quota_terms(quotas: Sequence[Quota]) -> list[tuple[object, ...]]:
    """A quota as the walk reads it, its usage aside (a change of these: decide afresh)."""
    return [(q.namespace, q.name, q.resource, q.hard, q.scopes) for q in quotas]


def _shape(r: RunningJob) -> tuple[object, ...]:
    return (r.namespace, r.gpu_resource, r.gpus, r.nodes, r.priority, r.priority_class)


class NativeAdmitter:
    """The admitter of ``admission/seam.py`` this operator runs today: its own policy.

    Incremental: each job's snapshot entry is parsed once per job object (the feeds parse one
    per resourceVersion, ``jobs/feeds.py``) and pods state, and only its time-dependent parts
    (retry delay, runtime, expected end) are finished at each cycle's ``now``; aging, capacity,
    quotas and the walk of admit() are computed afresh every cycle, so every verdict is the one
    a full rebuild (``decide()``) gives. The cache holds the jobs of the latest view only, and
    is dropped when the PriorityClasses change. ``built`` / ``reused`` count entries parsed /
    taken from the cache (tests and benchmarks read them).

    Quiet rounds: when the last full round left every waiting job held by its own namespace
    (its quota or job limit: ``Walk.quiet``) and since then only new jobs arrived in other
    namespaces and running jobs moved on without changing what they hold (their status, their
    pods created, bound where the walk counted them, running), a round considers only the new
    jobs, after the walk, on the state the walk left, and keeps every other verdict: the
    verdicts a full round would give (each new job's nodes aside: the walk counts a running
    job's unbound pods where it admitted them, a full round where they fit best now). Anything
    else (a job finishing, a node or another pod changing, a quota's terms or a usage the walk
    did not expect, a new job that does not fit at once, ``QUIET_MAX_SECONDS``, a waiting job
    reaching the aging bound or a retry time) makes the round a full one. ``quiet_rounds``
    counts them."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self._kept: dict[str, _Kept] = {}
        self._classes: dict[str, int] = {}
        self._quiet: _Quiet | None = None
        self.built = 0
        self.reused = 0
        self.quiet_rounds = 0

    def cached_uids(self) -> set[str]:
        """The jobs whose entries the cache holds (those of the latest view)."""
        return set(self._kept)

    def decide(self, view: ClusterView, now: dt.datetime) -> AdmissionRound:
        settings, out = self.settings, AdmissionRound()
        classes = dict(view.classes)
        if classes != self._classes:  # every entry's priority may differ
            self._kept, self._classes, self._quiet = {}, classes, None
        quiet, self._quiet = self._quiet, None
        why = (self._quiet_round(quiet, view, now) if quiet is not None
               else "not-quiet" if settings.cycle.quiet_rounds else "off")
        if isinstance(why, AdmissionRound):
            self._quiet = quiet
            self.quiet_rounds += 1
            why.full = None
            return why
        out.full = why
        kept, fresh = self._kept, {}
        queued: list[QueuedJob] = []
        running: list[RunningJob] = []
        idle: list[tuple[str, Recipe]] = []
        keys: set[str] = set()
        for job in view.jobs:
            uid = job.metadata.uid
            pods = view.pods_by_uid.get(uid, [])
            try:
                have = self._entry(kept.get(uid), job, pods)
                fresh[uid] = have
                keys.add(have.key)
                entry = have.recipe.at(now)
            except Exception as e:  # one job's data stays that job's problem
                fresh.pop(uid, None)
                keys.add(job.key)
                out.invalid[uid] = ("snapshot", problem("snapshot", e))
                continue
            if isinstance(entry, RunningJob):
                running.append(entry)
            elif entry is not None:
                queued.append(entry)
            else:
                idle.append((uid, have.recipe))
        self._kept = fresh  # bounded by the live jobs: deleted ones are gone
        for server in view.servers:  # ModelServers: the same pool, quotas and bands
            keys.add(server.key)
            (running if isinstance(server, RunningJob) else queued).append(server)
        snap = _snapshot(queued, running, settings, view.nodes, view.active_pods, view.quotas)
        if settings.admission.shared_gpu_device_class and view.shared_gpus:
            return _with_sharing(snap, view, now, keys, settings, out)
        result, walk = admit_kept(snap, now)
        verdicts(snap, now, keys, settings, out, result)
        if settings.cycle.quiet_rounds and not view.servers and not out.invalid \
                and walk.quiet():
            self._quiet = self._remember(walk, out, snap, idle, now)
        return out

    def _entry(self, have: _Kept | None, job: FineTuneJob, pods: list[Pod]) -> _Kept:
        pods_key = _pods_key(pods) if pods else ()
        if have is not None and have.job is job and have.pods == pods_key:
            self.reused += 1
            return have
        self.built += 1
        return _Kept(job, pods_key, entry_recipe(job, pods, self._classes, self.settings))

    def _remember(self, walk: Walk, out: AdmissionRound, snap: Snapshot,
                  idle: list[tuple[str, Recipe]], now: dt.datetime) -> _Quiet:
        until = now + dt.timedelta(seconds=QUIET_MAX_SECONDS)
        bound = snap.policy.reserve_threshold_seconds
        waiting = [w for w in snap.queued if (v := out.by_uid.get(w.uid)) is not None
                   and not v.admit and v.impossible is None]
        for w in waiting:  # a waiting job reaching the aging bound may reserve
            if bound is not None and (t := w.waiting_since + dt.timedelta(seconds=bound)) > now:
                until = min(until, t)
        if (swap := next_reorder(waiting, now, snap.policy)) is not None:  # positions move
            until = min(until, now + dt.timedelta(seconds=swap + 0.001))
        for _, recipe in idle:  # a job past its retry delay joins the queue
            retry = getattr(recipe, "retry", None)
            if retry is not None and retry > now:
                until = min(until, retry)
        q = _Quiet(walk, out, now, until)
        for uid, _ in idle:
            q.kinds[uid] = None
        for j in snap.queued:
            q.kinds[j.uid], q.queued[j.uid] = "queued", j
            if out.by_uid.get(j.uid, JobVerdict()).admit:
                q.charged[j.uid] = (walk.quota_ids(j), j.total_gpus)
        for r in snap.running:
            q.kinds[r.uid], q.shape[r.uid] = "running", _shape(r)
            if not r.counted_in_quota:
                q.charged[r.uid] = (walk.quota_ids(r), r.total_gpus)
        return q

    def _quiet_round(self, q: _Quiet, view: ClusterView, now: dt.datetime,
                     ) -> AdmissionRound | str:
        """The round as a quiet one (``NativeAdmitter``), or why not (a ``FULL_ROUND``
        reason): decide afresh."""
        if view.changed is None:
            return "unknown"
        if view.capacity_changed or view.servers or view.shared_gpus:
            return "capacity"
        if not q.at <= now < q.until:
            return "time"
        job_of = view.job_by_uid if view.job_by_uid is not None else (
            {j.metadata.uid: j for j in view.jobs} if view.changed else {}).get
        arrivals: list[QueuedJob] = []
        started: list[str] = []  # admitted by an earlier round, now holding GPUs
        # updated in place: when the round turns out not quiet, a full round replaces q (and
        # every cached entry stays valid for it)
        kept, kinds, shape, charged = self._kept, q.kinds, q.shape, q.charged
        for uid in view.changed:
            old = kinds.get(uid, "new")
            job = job_of(uid)
            if job is None:  # deleted, or left out of the view
                if old is not None and old != "new":
                    return "job-left"
                kinds.pop(uid, None)
                kept.pop(uid, None)
                continue
            try:
                have = kept[uid] = self._entry(kept.get(uid), job, view.pods_by_uid.get(uid, []))
                entry = have.recipe.at(now)
            except Exception:  # its problem is worded by a full round
                return "job-data"
            if entry is None:
                if old not in (None, "new"):
                    return "job-stopped"
                if (retry := getattr(have.recipe, "retry", None)) is not None and retry > now:
                    return "retry"  # joins the queue at its retry time: a full round sees it
                kinds[uid] = None
            elif isinstance(entry, QueuedJob):
                if old in (None, "new"):
                    arrivals.append(entry)
                elif old != "queued" or q.queued.get(uid) != entry:
                    return "job-changed"
            else:
                was = q.out.by_uid.get(uid)
                admitted = old == "queued" and was is not None and was.admit
                if not (old == "running" or admitted) or entry.preempting or (
                        old == "running" and shape.get(uid) != _shape(entry)):
                    return "job-changed"
                placed = q.walk.placement(uid)
                if placed is None or not set(entry.placement) <= set(placed):
                    return "placement"
                if admitted:
                    started.append(uid)
                kinds[uid], shape[uid] = "running", _shape(entry)
                if entry.counted_in_quota:
                    charged.pop(uid, None)
                else:
                    charged[uid] = (q.walk.quota_ids(entry), entry.total_gpus)
        if view.quotas_changed and not _quotas_as_expected(q, view):
            return "quota"
        out = AdmissionRound(by_uid=dict(q.out.by_uid), quotas=q.out.quotas,
                             queue_view=q.out.queue_view)
        for uid in started:
            out.by_uid.pop(uid, None)  # running: a full round has no verdict for it
        for a in queue_order(arrivals, now, q.walk.policy):
            if a.namespace in q.waiting_ns:  # its place among them: a full round
                return "arrival-queue"
            got = q.walk.consider(a)
            if got is None:  # waits, or needs a preemption: a full round words it
                return "arrival-waits"
            out.by_uid[a.uid] = JobVerdict(admit=True, placement=got.placement)
            kinds[a.uid], q.queued[a.uid] = "queued", a
            charged[a.uid] = (q.walk.quota_ids(a), a.total_gpus)
        q.out = out
        return out


def _quotas_as_expected(q: _Quiet, view: ClusterView) -> bool:
    """The quotas' terms are the walk's, and each, less what the walk charged that its usage
    does not show yet, has the room the walk left (more only where nothing waits: the quota
    controller has not caught up with a job that finished there)."""
    quotas = quotas_from_k8s(view.quotas)
    if _quota_terms(quotas) != q.quotas:
        return False
    free = [quota.free for quota in quotas]
    for ids, gpus in q.charged.values():
        for i in ids:
            free[i] -= gpus
    left = q.walk.quota_free()
    return all(f >= w and (f == w or quotas[i].namespace not in q.waiting_ns)
               for i, (f, w) in enumerate(zip(free, left, strict=True)))
