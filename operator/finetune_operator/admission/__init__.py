"""Admission: a pure queue/quota/gang/preemption policy over a snapshot (no kopf, no API calls),
and the seam the job controller calls it through (``seam.py``: ``Admitter``).

    from finetune_operator.admission import Snapshot, admit
    decisions = admit(snapshot, now)
"""

from finetune_operator.admission.model import (
    DEFAULT_GPU_RESOURCE,
    Admission,
    Impossible,
    ImpossibleCode,
    NodeInfo,
    Policy,
    PolicyResult,
    Preemption,
    QueuedJob,
    Quota,
    RunningJob,
    ScopeRequirement,
    Snapshot,
    Taint,
    Toleration,
    WaitCode,
    Waiting,
)
from finetune_operator.admission.policy import (
    Walk,
    admit,
    admit_kept,
    effective_priority,
    next_reorder,
    queue_order,
    work_since_checkpoint,
)
from finetune_operator.admission.seam import AdmissionRound, Admitter, ClusterView, JobVerdict

__all__ = [
    "DEFAULT_GPU_RESOURCE",
    "Admission",
    "AdmissionRound",
    "Admitter",
    "ClusterView",
    "Impossible",
    "ImpossibleCode",
    "JobVerdict",
    "NodeInfo",
    "Policy",
    "PolicyResult",
    "Preemption",
    "QueuedJob",
    "Quota",
    "RunningJob",
    "ScopeRequirement",
    "Snapshot",
    "Taint",
    "Toleration",
    "WaitCode",
    "Waiting",
    "Walk",
    "admit",
    "admit_kept",
    "effective_priority",
    "next_reorder",
    "queue_order",
    "work_since_checkpoint",
]
