"""The admission seam: how the job controller asks who runs.

Every cycle (``jobs/cycle.py``) hands an :class:`Admitter` the cluster as the watch caches hold
it (:class:`ClusterView`) and gets one :class:`JobVerdict` per job back (a
:class:`AdmissionRound`): admit (on which nodes), preempt (why), wait (position, reason, code) or
impossible (why). The job state machine (``jobs/reconcile.py``) acts on those decisions; it
never asks how they were made.

Two implementations: the native policy, ``jobs/decide.py`` ``NativeAdmitter``: the
pure queue/quota/gang/preemption policy of this package (``admit()``) over a ``Snapshot`` built
from the view; and the Kueue-driven admitter (``kueue/admitter.py``, ``admission_mode:
kueue``), which reads the Workloads Kueue admitted for the same jobs and answers with the
same decisions, so the state machine, the writes and the tests of the paths after admission
stay as they are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from finetune_api.job import FineTuneJob
from finetune_operator.admission.model import WaitCode
from finetune_operator.slim import SlimNode, SlimPod, SlimQuota, SlimUsage


@dataclass
class JobVerdict:
    """What the admitter says about one job this cycle (one entry of an ``AdmissionRound``)."""

    admit: bool = False
    preempt: str | None = None      # reason, when a running job must make room
    position: int | None = None
    reason: str = ""
    code: WaitCode | None = None    # why it waits: the reason of its Admitted=False condition
    impossible: str | None = None   # can never be admitted as configured
    placement: tuple[str, ...] = ()  # admitted: the node of each pod (rank order) it counted on
    # admitted by Kueue: the assigned ResourceFlavor's node labels and tolerations, which the
    # pods get on top of the job's own (kueue/workload.py)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    # admitted to a share of a GPU (DRA consumable capacity): the bytes its claim asks
    share: int | None = None


@dataclass
class AdmissionRound:
    """What an ``Admitter`` answers for one cycle: a ``JobVerdict`` per job (the native one
    derives them from the policy's ``PolicyResult``), and what the dashboards and the
    visibility endpoint show."""

    by_uid: dict[str, JobVerdict] = field(default_factory=dict)
    quotas: dict[str, float] = field(default_factory=dict)  # namespace -> hard GPUs (metrics)
    # the visibility endpoint's data: namespace -> waiting jobs in queue order
    queue_view: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # jobs left out of this decision because their data could not be processed:
    # uid -> (step, problem)
    invalid: dict[str, tuple[str, str]] = field(default_factory=dict)
    # an admitter that keeps state across cycles: None when this round decided only what
    # changed, else why it walked every job (a label of finetune_admission_rounds_total)
    full: str | None = "full"

    def get(self, uid: str, default: JobVerdict) -> JobVerdict:
        return self.by_uid.get(uid, default)


@dataclass(frozen=True)
class ClusterView:
    """The cluster as the watch caches hold it at the start of a cycle (no API reads)."""

    jobs: Sequence[FineTuneJob]
    pods_by_uid: Mapping[str, list[SlimPod]]          # our pods, by the uid of their job
    classes: Mapping[str, int]                        # PriorityClass name -> value
    nodes: Sequence[SlimNode]
    active_pods: Sequence[SlimPod | SlimUsage]        # every pod holding GPUs, ours or not
    quotas: Sequence[SlimQuota]
    # admission mode kueue: the Workloads the operator owns, by the uid of their job, and the
    # ResourceFlavors by name (kueue/workload.py records; empty in native mode)
    workloads: Mapping[str, Any] = field(default_factory=dict)
    flavors: Mapping[str, Any] = field(default_factory=dict)
    # GPU sharing (settings shared_gpu_device_class): the shareable GPUs the DRA driver's
    # ResourceSlices publish and what allocated ResourceClaims hold of them (admission/devices.py)
    shared_gpus: Sequence[Any] = ()
    claim_uses: Sequence[Any] = ()
    # ModelServers (serving/plan.py snapshot_entry): QueuedJob/RunningJob entries flagged
    # ``serving``, decided in the same round as the jobs (verdicts by the server's uid); in
    # admission mode kueue the ModelServer objects themselves (kueue/admitter.py)
    servers: Sequence[Any] = ()
    # what changed since the previous view (the cycle's dirty tracking), for an admitter that
    # keeps state across cycles: the uids of the jobs whose object or pods changed or that left
    # the view (None: unknown, decide afresh); whether anything but jobs, their pods and the
    # ResourceQuotas changed (nodes, other pods, PriorityClasses, ...); whether the quotas did
    changed: frozenset[str] | None = None
    capacity_changed: bool = True
    quotas_changed: bool = True
    # the job of ``jobs`` with this uid, or None (a lookup the caller holds already, so that
    # a round that looks at a few jobs does not index all of them; None: index ``jobs``)
    job_by_uid: Callable[[str], FineTuneJob | None] | None = None


class Admitter(Protocol):
    """Decides admission for one cycle. Must not raise for one job's bad data: such a job goes
    to ``AdmissionRound.invalid`` and every other job is decided."""

    def decide(self, view: ClusterView, now: dt.datetime) -> AdmissionRound: ...
