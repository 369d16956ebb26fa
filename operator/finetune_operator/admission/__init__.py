"""Admission: a pure queue/quota/gang/preemption policy over a snapshot (no kopf, no API calls),
and the seam the job controller calls it through (``seam.py``: ``Admitter``).

    from finetune_operator.admission import Snapshot, admit
    decisions = admit(snapshot, now)
"""

from finetune_operator.admission.model import (
    DEFAULT_GPU_RESOURCE,
    Admission,
    Decisions,
    Impossible,
    ImpossibleCode,
    NodeInfo,
    Policy,
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
    admit,
    effective_priority,
    queue_order,
    work_since_checkpoint,
)
from finetune_operator.admission.seam import Admitter, ClusterView, DecisionSet, JobDecision

__all__ = [
    "DEFAULT_GPU_RESOURCE", "Admission", "Admitter", "ClusterView", "DecisionSet", "Decisions",
    "Impossible", "ImpossibleCode", "JobDecision", "NodeInfo", "Policy", "Preemption",
    "QueuedJob", "Quota", "RunningJob", "ScopeRequirement", "Snapshot", "Taint", "Toleration",
    "WaitCode", "Waiting", "admit", "effective_priority", "queue_order", "work_since_checkpoint",
]
