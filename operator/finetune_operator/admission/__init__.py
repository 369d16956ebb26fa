"""Admission: a pure queue/quota/gang/preemption policy over a snapshot (no kopf, no API calls).

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

__all__ = [
    "DEFAULT_GPU_RESOURCE", "Admission", "Decisions", "Impossible", "ImpossibleCode", "NodeInfo",
    "Policy", "Preemption", "QueuedJob", "Quota", "RunningJob", "ScopeRequirement", "Snapshot",
    "Taint", "Toleration", "WaitCode", "Waiting", "admit", "effective_priority", "queue_order",
    "work_since_checkpoint",
]
