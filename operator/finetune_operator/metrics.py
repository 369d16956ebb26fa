"""Prometheus metrics of the operator (prefix ``finetune_``), on a dedicated registry.

The job controller (``jobs/executor.py``) calls the small functions below; nothing here talks
to the Kubernetes API. The registry is served over HTTPS, to authorised scrapers only, by
:mod:`finetune_operator.http.metrics`.

- Snapshot gauges (queue depth, GPUs, quota, ``finetune_job_info``, queued-since) are recomputed
  from the latest admission snapshot by :func:`observe_queue` and served atomically by a custom
  collector, so a scrape never sees half an update and a job that left the snapshot leaves the
  exposition with it.
- Per-job progress gauges are set by :func:`set_job_progress` from the trainer's progress object
  (camelCase keys as in docs/contracts.md) and removed by :func:`forget_job`.
- Counters and histograms are incremented by the ``count_*`` / ``observe_*`` functions.

Every metric with a ``job`` or ``namespace`` label carries the FineTuneJob's own values: scrape it
with ``honor_labels: true`` (the chart's ServiceMonitor does) so they are not renamed to
``exported_job`` / ``exported_namespace``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from finetune_api.status import CheckpointStatus, Progress
from finetune_api.times import parse_time
from finetune_operator.reports.model import REJECT_REASONS

REGISTRY: Final = CollectorRegistry(auto_describe=True)

PREEMPTION_REASONS: Final = ("operator", "scheduler", "eviction", "node-lost")
FAILURE_REASONS: Final = ("exit-code", "oom-killed", "node-lost", "deadline", "policy", "error")
PHASES: Final = ("Queued", "Admitted", "Running", "Preempting", "Suspended", "Succeeded", "Failed")
# Phases whose GPUs count as requested (waiting or holding) and as allocated (pods hold them).
REQUESTING_PHASES: Final = frozenset({"Queued", "Admitted", "Running", "Preempting"})
ALLOCATED_PHASES: Final = frozenset({"Admitted", "Running", "Preempting"})

# 1 s .. 1 day, roughly x2-x3 per bucket.
ADMISSION_WAIT_BUCKETS: Final = (
    1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200, 86400,
)
CHECKPOINT_SAVE_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

NS_CLS = ("namespace", "priority_class")
NS_JOB = ("namespace", "job")

ADMISSION_WAIT = Histogram(
    "finetune_admission_wait_seconds",
    "Time a FineTuneJob waited in the queue before it was admitted (per admission).",
    NS_CLS, buckets=ADMISSION_WAIT_BUCKETS, registry=REGISTRY,
)
ADMISSIONS = Counter(
    "finetune_admissions", "FineTuneJobs admitted (including re-admissions after preemption).",
    NS_CLS, registry=REGISTRY,
)
PREEMPTIONS = Counter(
    "finetune_preemptions",
    "FineTuneJobs preempted; reason: operator|scheduler|eviction|node-lost.",
    (*NS_CLS, "reason"), registry=REGISTRY,
)
SUSPENSIONS = Counter(
    "finetune_suspensions", "FineTuneJobs stopped because spec.suspend became true.",
    ("namespace",), registry=REGISTRY,
)
FAILURES = Counter(
    "finetune_failures",
    "Failed FineTuneJob attempts (counted against backoffLimit); "
    "reason: exit-code|oom-killed|node-lost|deadline|policy|error.",
    ("namespace", "reason"), registry=REGISTRY,
)
COMPLETIONS = Counter(
    "finetune_completions", "FineTuneJobs that reached Succeeded.", ("namespace",),
    registry=REGISTRY,
)
LOST_WORK = Counter(
    "finetune_lost_work_gpu_seconds",
    "GPU-seconds of training redone because a preemption lost steps since the last checkpoint.",
    ("namespace",), registry=REGISTRY,
)
LOST_STEPS = Counter(
    "finetune_lost_steps", "Training steps redone because of preemptions.", ("namespace",),
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "finetune_api_requests",
    "Kubernetes API requests the operator made, by verb and resource (writes are budgeted).",
    ("verb", "resource"), registry=REGISTRY,
)
CYCLE_SECONDS = Histogram(
    "finetune_scheduling_cycle_seconds",
    "Duration of one scheduling cycle (snapshot from the cache, admit(), plans, writes).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)
ADMISSION_ROUNDS = Counter(
    "finetune_admission_rounds",
    "Admission rounds of the scheduling cycle: quiet (only the jobs that changed decided) or "
    "full (every job walked), and why a round was full.",
    ("kind", "reason"), registry=REGISTRY,
)
CYCLE_ERRORS = Counter(
    "finetune_scheduling_cycle_errors",
    "Scheduling cycles that raised (the next cycle retries), and per-job planning errors.",
    ("scope",), registry=REGISTRY,
)
INVALID_DATA_STAGES: Final = ("snapshot", "decision", "plan", "write", "deadline", "metrics")
INVALID_DATA = Counter(
    "finetune_invalid_data",
    "FineTuneJobs whose data a per-job step of the cycle could not process (each distinct "
    "problem once); the job is left out of scheduling, every other job goes on; stage: "
    + "|".join(INVALID_DATA_STAGES) + ".",
    ("namespace", "stage"), registry=REGISTRY,
)
CHECKPOINT_SAVE = Histogram(
    "finetune_checkpoint_save_seconds", "Duration of a trainer checkpoint save.",
    ("namespace",), buckets=CHECKPOINT_SAVE_BUCKETS, registry=REGISTRY,
)
# Counted by reports/rejects.py. The only label is the reason (a fixed set), never a tenant's
# namespace/job/pod: a hostile pod can neither grow the cardinality nor leak names through it.
REPORT_REJECTED = Counter(
    "finetune_report_rejected",
    "Reports from trainer pods (progress, termination messages) that were dropped; reason: "
    + "|".join(REJECT_REASONS) + ".",
    ("reason",), registry=REGISTRY,
)
for _reason in REJECT_REASONS:
    REPORT_REJECTED.labels(_reason)  # every series exists from the start (rate() works at once)
JOB_STEP = Gauge(
    "finetune_job_step", "Current optimizer step of a FineTuneJob.", NS_JOB, registry=REGISTRY
)
JOB_TOTAL_STEPS = Gauge(
    "finetune_job_total_steps", "Total optimizer steps of a FineTuneJob.", NS_JOB,
    registry=REGISTRY,
)
JOB_LOSS = Gauge(
    "finetune_job_loss", "Latest training loss of a FineTuneJob.", NS_JOB, registry=REGISTRY
)
JOB_TOKENS_PER_SECOND = Gauge(
    "finetune_job_tokens_per_second", "Training throughput of a FineTuneJob in tokens/s.",
    NS_JOB, registry=REGISTRY,
)
JOB_ETA = Gauge(
    "finetune_job_eta_seconds", "Trainer's estimate of the seconds left for a FineTuneJob.",
    NS_JOB, registry=REGISTRY,
)
JOB_LAST_CHECKPOINT = Gauge(
    "finetune_job_last_checkpoint_timestamp_seconds",
    "Unix time of the newest complete checkpoint of a FineTuneJob (or of its start when it has "
    "none yet); age = time() - value.",
    NS_JOB, registry=REGISTRY,
)
JOB_CHECKPOINT_INTERVAL = Gauge(
    "finetune_job_checkpoint_interval_steps",
    "Checkpoint interval of a FineTuneJob in steps (spec.checkpoint.intervalSteps).",
    NS_JOB, registry=REGISTRY,
)
_PER_JOB_GAUGES: Final = (
    JOB_STEP, JOB_TOTAL_STEPS, JOB_LOSS, JOB_TOKENS_PER_SECOND, JOB_ETA, JOB_LAST_CHECKPOINT,
    JOB_CHECKPOINT_INTERVAL,
)

# The names of status.output.metrics served as finetune_job_eval_metric{metric} (a fixed set: a
# label value is never a string a tenant chose).
EVAL_METRICS: Final = ("testLoss", "testPerplexity", "testRouge1", "testRouge2", "testRougeL",
                       "testBleu4", "testExactMatch", "evalLoss", "trainLoss")


class JobSample(TypedDict, total=False):
    """One FineTuneJob as the admission snapshot sees it (required: namespace, name, phase)."""

    namespace: str
    name: str
    phase: str  # one of PHASES
    priority_class: str  # effective priority class
    gpus: float  # total GPUs of the job: resources.gpus * resources.nodes
    queued_since: float | None  # unix time the job entered its current wait (phase Queued)
    eval: Mapping[str, float]  # status.output.metrics of a finished job (EVAL_METRICS names)


class QueueSnapshot(TypedDict, total=False):
    """What :func:`observe_queue` reads: the jobs and each namespace's GPU quota."""

    jobs: Sequence[JobSample]
    quotas: Mapping[str, float]  # namespace -> ResourceQuota hard requests.<gpuResource>


class _SnapshotCollector(Collector):
    """Serves the gauges derived from the latest snapshot; replaced by reference (atomic)."""

    def __init__(self) -> None:
        self.state: tuple[tuple[JobSample, ...], Mapping[str, float]] = ((), {})

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families((), {}))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        jobs, quotas = self.state  # one reference read: jobs and quotas of the same snapshot
        return list(self._families(jobs, quotas))

    @staticmethod
    def _families(
        jobs: Sequence[JobSample], quotas: Mapping[str, float]
    ) -> Iterator[GaugeMetricFamily]:
        depth: dict[tuple[str, str], float] = {}
        requested: dict[str, float] = dict.fromkeys(quotas, 0.0)
        allocated: dict[str, float] = dict.fromkeys(quotas, 0.0)
        info = GaugeMetricFamily(
            "finetune_job_info", "Always 1; labels give a FineTuneJob's phase and priority class.",
            labels=[*NS_JOB, "phase", "priority_class"],
        )
        queued_since = GaugeMetricFamily(
            "finetune_job_queued_since_timestamp_seconds",
            "Unix time a queued FineTuneJob entered its current wait; absent when not queued.",
            labels=list(NS_JOB),
        )
        evals = GaugeMetricFamily(
            "finetune_job_eval_metric", "Final metric of a finished job (status.output.metrics): "
            "test-set loss, perplexity, ROUGE-1/2/L, BLEU-4 (0-100), exact match (0-100), "
            "validation and training loss", labels=[*NS_JOB, "metric"])
        for j in jobs:
            ns, phase, cls = j["namespace"], j["phase"], j.get("priority_class", "")
            gpus = float(j.get("gpus", 0.0))
            requested.setdefault(ns, 0.0)
            allocated.setdefault(ns, 0.0)
            depth.setdefault((ns, cls), 0.0)
            info.add_metric([ns, j["name"], phase, cls], 1.0)
            for metric, value in sorted((j.get("eval") or {}).items()):
                if metric in EVAL_METRICS:
                    evals.add_metric([ns, j["name"], metric], float(value))
            if phase == "Queued":
                depth[(ns, cls)] += 1
                since = j.get("queued_since")
                if since is not None:
                    queued_since.add_metric([ns, j["name"]], float(since))
            if phase in REQUESTING_PHASES:
                requested[ns] += gpus
            if phase in ALLOCATED_PHASES:
                allocated[ns] += gpus
        queue = GaugeMetricFamily(
            "finetune_queue_depth", "FineTuneJobs waiting in phase Queued.", labels=list(NS_CLS)
        )
        for (ns, cls), n in sorted(depth.items()):
            queue.add_metric([ns, cls], n)
        yield queue
        for name, doc, values in (
            ("finetune_gpus_requested",
             "GPUs of the namespace's queued and running FineTuneJobs.", requested),
            ("finetune_gpus_allocated",
             "GPUs held by the namespace's admitted and running FineTuneJobs.", allocated),
            ("finetune_gpu_quota",
             "The namespace's GPU quota (ResourceQuota requests.<gpuResource>).", quotas),
        ):
            fam = GaugeMetricFamily(name, doc, labels=["namespace"])
            for ns, v in sorted(values.items()):
                fam.add_metric([ns], float(v))
            yield fam
        yield info
        yield queued_since
        yield evals


_SNAPSHOT: Final = _SnapshotCollector()
REGISTRY.register(_SNAPSHOT)

_lock = threading.Lock()
_last_checkpoint_seen: dict[tuple[str, str], tuple[Any, Any]] = {}
_progress_jobs: set[tuple[str, str]] = set()  # jobs with per-job series


def observe_queue(snapshot: QueueSnapshot | Mapping[str, Any]) -> None:
    """Replace the snapshot gauges with this snapshot (call after every admission pass).

    The snapshot holds every job the operator handles: per-job progress series of a job that is
    no longer in it (deleted) are removed, as :func:`forget_job` would. Also creates the
    zero-valued per-namespace counters, so rates and ratios exist from the start.
    """
    jobs: tuple[JobSample, ...] = tuple(snapshot.get("jobs", ()))
    quotas: dict[str, float] = dict(snapshot.get("quotas", {}))
    for j in jobs:
        if j["phase"] not in PHASES:
            raise ValueError(
                f"metrics: job {j['namespace']}/{j['name']} has phase {j['phase']!r}; "
                f"expected one of {', '.join(PHASES)}"
            )
    for ns in {j["namespace"] for j in jobs} | set(quotas):
        COMPLETIONS.labels(ns)
        SUSPENSIONS.labels(ns)
        LOST_WORK.labels(ns)
        LOST_STEPS.labels(ns)
        for reason in FAILURE_REASONS:
            FAILURES.labels(ns, reason)
    _SNAPSHOT.state = (jobs, quotas)
    present = {(j["namespace"], j["name"]) for j in jobs}
    with _lock:
        gone = _progress_jobs - present
    for ns, name in gone:
        forget_job(ns, name)


def count_api_request(verb: str, resource: str) -> None:
    API_REQUESTS.labels(verb, resource).inc()


def observe_cycle(seconds: float) -> None:
    CYCLE_SECONDS.observe(max(0.0, seconds))


def count_admission_round(full: str | None) -> None:
    """One admission round: ``full`` None for a quiet one, else why it walked every job (the
    admitter's reason, a short word from a fixed set)."""
    ADMISSION_ROUNDS.labels("quiet" if full is None else "full", full or "").inc()


def count_cycle_error(scope: str) -> None:
    """scope: cycle (the whole cycle failed) | job (planning one job failed, contained)."""
    CYCLE_ERRORS.labels(scope).inc()


def count_invalid_data(namespace: str, stage: str) -> None:
    """A job's data failed a per-job step of the cycle (a new problem for that job)."""
    _check("invalid-data stage", stage, INVALID_DATA_STAGES)
    INVALID_DATA.labels(namespace, stage).inc()


def observe_admission(namespace: str, priority_class: str, wait_seconds: float) -> None:
    """A job was admitted after waiting ``wait_seconds`` (now - status.queuedSince)."""
    ADMISSIONS.labels(namespace, priority_class).inc()
    ADMISSION_WAIT.labels(namespace, priority_class).observe(max(0.0, wait_seconds))


def count_preemption(namespace: str, priority_class: str, reason: str) -> None:
    _check("preemption", reason, PREEMPTION_REASONS)
    PREEMPTIONS.labels(namespace, priority_class, reason).inc()


def count_suspension(namespace: str) -> None:
    SUSPENSIONS.labels(namespace).inc()


def count_failure(namespace: str, reason: str) -> None:
    _check("failure", reason, FAILURE_REASONS)
    FAILURES.labels(namespace, reason).inc()


def count_completion(namespace: str) -> None:
    COMPLETIONS.labels(namespace).inc()


def count_lost_work(namespace: str, steps: int, gpu_seconds: float) -> None:
    """After a preemption: steps redone and their cost (seconds redone x GPUs of the job)."""
    if steps < 0 or gpu_seconds < 0:
        raise ValueError(
            f"metrics: lost work must be >= 0, got steps={steps}, gpu_seconds={gpu_seconds}"
        )
    LOST_STEPS.labels(namespace).inc(steps)
    LOST_WORK.labels(namespace).inc(gpu_seconds)


def observe_checkpoint_save(namespace: str, seconds: float) -> None:
    CHECKPOINT_SAVE.labels(namespace).observe(max(0.0, seconds))


def set_job_progress(
    namespace: str,
    job: str,
    progress: Progress,
    checkpoint: CheckpointStatus | None = None,
    *,
    checkpoint_interval_steps: int | None = None,
    started_at: float | None = None,
) -> None:
    """Mirror a job's status.progress (and status.checkpoint) into the job gauges.

    ``checkpoint`` (when given) sets the last-checkpoint timestamp from ``saved_at`` and, the
    first time that checkpoint is seen, observes ``save_seconds`` in the save histogram; without a
    checkpoint the timestamp is ``started_at`` (the attempt's start), so a job that never
    checkpoints still ages. Fields that are None leave their gauge unchanged.
    """
    key = (namespace, job)
    values: dict[Gauge, float | None] = {
        JOB_STEP: progress.step,
        JOB_TOTAL_STEPS: progress.total_steps,
        JOB_LOSS: progress.loss,
        JOB_TOKENS_PER_SECOND: progress.tokens_per_second,
        JOB_ETA: progress.eta_seconds,
        JOB_CHECKPOINT_INTERVAL: checkpoint_interval_steps,
    }
    saved_at = _timestamp(checkpoint.saved_at) if checkpoint is not None else None
    values[JOB_LAST_CHECKPOINT] = saved_at if saved_at is not None else started_at
    with _lock:
        _progress_jobs.add(key)
    for gauge, value in values.items():
        if value is not None:
            gauge.labels(*key).set(float(value))
    if checkpoint is not None and saved_at is not None:
        seen = (checkpoint.step, checkpoint.saved_at)
        with _lock:
            new = _last_checkpoint_seen.get(key) != seen
            _last_checkpoint_seen[key] = seen
        if new and checkpoint.save_seconds is not None:
            observe_checkpoint_save(namespace, float(checkpoint.save_seconds))


def forget_job(namespace: str, job: str) -> None:
    """Remove a deleted (or finished) job's per-job series."""
    for gauge in _PER_JOB_GAUGES:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, job)
    with _lock:
        _last_checkpoint_seen.pop((namespace, job), None)
        _progress_jobs.discard((namespace, job))


def _check(kind: str, reason: str, allowed: Sequence[str]) -> None:
    if reason not in allowed:
        raise ValueError(
            f"metrics: unknown {kind} reason {reason!r}; use one of {', '.join(allowed)} "
            "(a fixed set keeps the label's cardinality bounded)"
        )


def _timestamp(value: Any) -> float | None:
    """RFC 3339 string (``...Z``) or number -> unix seconds; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    t = parse_time(value)  # total: a stored string that does not parse is "absent"
    return t.timestamp() if t else None


# ================================================================= sweeps (sweep/runner.py) ====
# Set by sweep.SweepRunner.sync from the cached sweeps (and cleared when the last sweep is gone),
# served atomically by one collector (a deleted sweep leaves the exposition with it).

SWEEP_TRIAL_PHASES: Final = ("Pending", "Queued", "Admitted", "Running", "Preempting",
                             "Suspended", "Succeeded", "Failed", "Stopped")


class _SweepCollector(Collector):
    def __init__(self) -> None:
        self.families: list[GaugeMetricFamily] = _sweep_families([])

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return list(self.families)


def observe_sweeps(sweeps: Sequence[tuple[Any, Any]]) -> None:
    """Per-sweep gauges: trials by phase and the best trial's objective value. ``sweeps`` holds
    (FineTuneSweep, SweepPlan) pairs; an empty list removes every sweep's series."""
    _SWEEPS.families = _sweep_families(sweeps)


def _sweep_families(sweeps: Sequence[tuple[Any, Any]]) -> list[GaugeMetricFamily]:
    trials = GaugeMetricFamily("finetune_sweep_trials", "Trials of a FineTuneSweep by phase",
                               labels=["namespace", "sweep", "phase"])
    best = GaugeMetricFamily("finetune_sweep_best_value",
                             "The objective metric of a FineTuneSweep's best finished trial",
                             labels=["namespace", "sweep", "metric", "trial"])
    for sweep, plan in sweeps:
        ns, name = sweep.metadata.namespace, sweep.metadata.name
        counts = dict.fromkeys(SWEEP_TRIAL_PHASES, 0)
        for t in plan.status.get("trials") or []:
            if t.get("phase") in counts:
                counts[t["phase"]] += 1
        for phase, n in counts.items():
            trials.add_metric([ns, name, phase], float(n))
        if plan.best is not None:
            best.add_metric([ns, name, plan.best.metric, plan.best.name], plan.best.value)
    return [trials, best]


_SWEEPS = _SweepCollector()
REGISTRY.register(_SWEEPS)
