"""Inputs and outputs of ``admit()``: plain frozen dataclasses, no Kubernetes client types.

The operator builds a ``Snapshot`` from what it reads (jobs, ResourceQuotas, Nodes and bound
Pods; see ``admission/snapshot.py`` for the Node/ResourceQuota parsing) and applies the
``PolicyResult``.
Times are timezone-aware datetimes; ``now`` is passed to ``admit()`` explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

# SnapshotJob's default; the operator passes its settings.admission.gpu_resource instead.
from finetune_api.spec import DEFAULT_GPU_RESOURCE as DEFAULT_GPU_RESOURCE

if TYPE_CHECKING:  # typed, without importing the settings module at run time
    from finetune_operator.settings import OperatorSettings


@dataclass(frozen=True, kw_only=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"  # NoSchedule | PreferNoSchedule | NoExecute


@dataclass(frozen=True, kw_only=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"  # Equal | Exists
    value: str = ""
    effect: str = ""  # empty: every effect

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True, kw_only=True)
class SnapshotJob:
    """What every job in a snapshot has: identity, priority and size (the base of QueuedJob
    and RunningJob)."""

    namespace: str
    name: str
    uid: str
    priority: int  # value of its PriorityClass
    priority_class: str
    gpus: int  # per pod (= per node); 0 = CPU job
    nodes: int = 1  # gang size: pods, one per node, admitted together or not at all
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    # ResourceQuota scopes the job's pods fall in (see Quota.matches): pods with
    # activeDeadlineSeconds are Terminating; pods without requests/limits are BestEffort.
    # Trainer pods have neither, so the defaults fit them.
    terminating: bool = False
    best_effort: bool = False
    # a ModelServer (serving/), not a training job: same pool, quota and bands, but a
    # preempting job never picks it as a victim unless Policy.serving_preemptible
    serving: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.nodes


@dataclass(frozen=True, kw_only=True)
class QueuedJob(SnapshotJob):
    """A job waiting for admission (phase Queued)."""

    created_at: datetime
    # start of the current wait (informational: status.queuedSince; reset by every requeue)
    queued_since: datetime | None = None
    # when the job first entered the queue, kept across requeues (preempted, suspended, pods
    # failed): aging and reservations count from here, so a requeued job keeps its place.
    # Default created_at.
    first_queued_at: datetime | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict, hash=False)
    tolerations: tuple[Toleration, ...] = ()
    # Expected run time once admitted, in seconds (an upper bound is best: the remaining
    # activeDeadlineSeconds, or a previous attempt's etaSeconds plus its restart time). Only a
    # job with one may backfill GPUs reserved for another job; None: never backfills them.
    expected_seconds: float | None = None

    @property
    def waiting_since(self) -> datetime:
        """Where aging counts from: the first queue entry, not the latest requeue."""
        return self.first_queued_at or self.created_at


@dataclass(frozen=True, kw_only=True)
class RunningJob(SnapshotJob):
    """A job holding GPUs: admitted (pods created or about to be), running, or stopping."""

    started_at: datetime  # admitted/started: min runtime before preemption counts from here
    last_checkpoint_at: datetime | None = None
    preempting: bool = False  # a graceful stop is in flight (phase Preempting or Suspended)
    # node of each *bound* pod; pods not yet bound are placed virtually by admit() so that
    # their GPUs are not handed out twice between admission and binding
    placement: tuple[str, ...] = ()
    # False while its pods do not exist yet (ResourceQuota.status.used does not count them)
    counted_in_quota: bool = True
    # When it is expected to release its GPUs: now + status.progress.etaSeconds, or
    # maxSteps x observed step time. None (unknown): taken as "any moment now", the
    # conservative guess for a job waiting on its GPUs, so nothing backfills in front of it.
    expected_end_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    name: str
    allocatable: Mapping[str, int] = field(hash=False)  # per resource name
    free: Mapping[str, int] = field(hash=False)  # allocatable minus requests of bound pods
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False  # cordoned: no new pods, but counts for "impossible" checks


@dataclass(frozen=True, kw_only=True)
class ScopeRequirement:
    """One entry of a ResourceQuota's spec.scopeSelector.matchExpressions (a plain entry of
    spec.scopes is the same with operator Exists)."""

    scope_name: str  # PriorityClass | Terminating | NotTerminating | BestEffort | ...
    operator: str = "Exists"  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, job: SnapshotJob) -> bool:
        """As the API server's quota evaluator decides for the job's pods."""
        scope = self.scope_name
        if scope == "Terminating":
            return job.terminating
        if scope == "NotTerminating":
            return not job.terminating
        if scope == "BestEffort":
            return job.best_effort
        if scope == "NotBestEffort":
            return not job.best_effort
        if scope == "PriorityClass":
            cls = job.priority_class
            if self.operator == "Exists":
                return bool(cls)
            if self.operator == "In":
                return cls in self.values
            if self.operator == "NotIn":
                return cls not in self.values
            # DoesNotExist: the evaluator's label set always has the key, so it never matches
            # a pod; it would only match one without a class, and jobs always have one
            return self.operator == "DoesNotExist" and not cls
        return False  # CrossNamespacePodAffinity (trainer pods have none) and unknown scopes


@dataclass(frozen=True, kw_only=True)
class Quota:
    """One ResourceQuota's `requests.<resource>` in a namespace. A job must fit every quota that
    matches it (its namespace and resource, and all the quota's scopes); the others ignore it."""

    namespace: str
    resource: str
    hard: int
    used: int
    name: str = ""  # the ResourceQuota's name (for messages)
    scopes: tuple[ScopeRequirement, ...] = ()  # spec.scopes and spec.scopeSelector, ANDed

    @property
    def free(self) -> int:
        return max(0, self.hard - self.used)

    def matches(self, job: SnapshotJob) -> bool:
        return (job.namespace == self.namespace and job.gpu_resource == self.resource
                and all(s.matches(job) for s in self.scopes))


@dataclass(frozen=True, kw_only=True)
class Policy:
    aging_rate_per_minute: float = 10.0
    aging_cap: float = 999.0
    max_running_jobs_per_namespace: int = 0  # 0 = unlimited
    preempting_priority_classes: frozenset[str] = frozenset({"finetune-critical"})
    min_runtime_before_preemption_seconds: float = 300.0
    # A blocked job that has waited this long reserves the GPUs (and quota) it needs, so smaller
    # lower-ordered jobs cannot keep taking them. None: when its aging reaches the cap
    # (aging_cap / aging_rate_per_minute minutes); never when aging is off (rate 0).
    reserve_after_seconds: float | None = None
    # Bounded reservations: beyond the first reservation in a GPU pool (the one that guarantees
    # progress), further aged jobs reserve only while all reservations together keep at most
    # this share of the pool's free GPUs idle. None: unbounded (every aged job reserves).
    max_reserved_idle_share: float | None = 0.5
    # a preempting job may also preempt ModelServers (SnapshotJob.serving); off: servers are
    # never victims of training
    serving_preemptible: bool = False

    @property
    def reserve_threshold_seconds(self) -> float | None:
        if self.reserve_after_seconds is not None:
            return self.reserve_after_seconds
        if self.aging_rate_per_minute <= 0:
            return None
        return self.aging_cap / self.aging_rate_per_minute * 60.0

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> Policy:
        """From the operator settings' admission section."""
        return cls(
            aging_rate_per_minute=float(settings.admission.aging_rate_per_minute),
            aging_cap=float(settings.admission.aging_cap),
            max_running_jobs_per_namespace=int(settings.admission.max_running_jobs_per_namespace),
            preempting_priority_classes=frozenset(settings.admission.preempting_priority_classes),
            min_runtime_before_preemption_seconds=float(
                settings.admission.min_runtime_before_preemption_seconds
            ),
            max_reserved_idle_share=_share(settings.admission.max_reserved_idle_share),
            serving_preemptible=bool(settings.admission.serving_preemptible),
        )


def _share(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    queued: Sequence[QueuedJob]
    running: Sequence[RunningJob] = ()
    nodes: Sequence[NodeInfo] = ()
    quotas: Sequence[Quota] = ()  # no entry for (namespace, resource) = unlimited
    policy: Policy = field(default_factory=Policy)


class WaitCode(StrEnum):
    """Why a job waits; usable as the `reason` of its Admitted=False condition."""

    NAMESPACE_LIMIT = "NamespaceJobLimit"
    QUOTA = "QuotaExhausted"
    CAPACITY = "InsufficientCapacity"
    NO_NODES = "NoMatchingNodes"
    PRIORITY = "WaitingForHigherPriority"
    PREEMPTING = "PreemptingLowerPriority"
    AWAITING_PREEMPTED = "WaitingForPreemptedJobs"
    KUEUE = "WaitingForKueue"  # admission mode kueue: Kueue decides (kueue/workload.py)


class ImpossibleCode(StrEnum):
    """Why a job can never be admitted as it stands (end it with this reason)."""

    NODE_CAPACITY = "ExceedsNodeCapacity"
    QUOTA = "ExceedsQuota"


@dataclass(frozen=True, kw_only=True)
class Admission:
    job: QueuedJob
    # node per pod (rank order): the pods prefer it (build/pod.py preferred_node; the
    # kube-scheduler binds); () for CPU jobs
    placement: tuple[str, ...]
    effective_priority: float


@dataclass(frozen=True, kw_only=True)
class Preemption:
    victim: RunningJob
    preemptor: QueuedJob
    reason: str  # for the victim's condition/event


@dataclass(frozen=True, kw_only=True)
class Waiting:
    job: QueuedJob
    position: int  # 1-based, global queue order among waiting jobs
    code: WaitCode
    reason: str
    effective_priority: float
    reserved: bool = False  # GPUs/quota are held back for it (waited past the aging bound)


@dataclass(frozen=True, kw_only=True)
class Impossible:
    job: QueuedJob
    code: ImpossibleCode
    reason: str


@dataclass(frozen=True, kw_only=True)
class PolicyResult:
    """What ``admit()`` decides over one Snapshot, by outcome (the native admitter turns it into
    an ``AdmissionRound`` of one ``JobVerdict`` per job: ``admission/seam.py``)."""

    admit: tuple[Admission, ...] = ()
    preempt: tuple[Preemption, ...] = ()
    waiting: tuple[Waiting, ...] = ()  # in queue order
    impossible: tuple[Impossible, ...] = ()

    def waiting_for(self, uid: str) -> Waiting | None:
        return next((w for w in self.waiting if w.job.uid == uid), None)

    def admitted_uids(self) -> list[str]:
        return [a.job.uid for a in self.admit]

    def preempted_uids(self) -> list[str]:
        return [p.victim.uid for p in self.preempt]
