"""The checkpoint PersistentVolumeClaim.

``checkpoint.storage.size`` -> the operator creates ``<job>-checkpoints``, owned by the job (deleted
with it). ``checkpoint.storage.claimName`` -> an existing claim: nothing is created, the pod mounts
the whole claim and the trainer works in the job's own directory under it; the claim is never
owned or deleted by the operator.
"""

from __future__ import annotations

from typing import Any

from ..api.job import FineTuneJob
from .names import metadata, pvc_name


def creates_pvc(job: FineTuneJob) -> bool:
    return job.spec.checkpoint.storage.claim_name is None


def checkpoint_claim_name(job: FineTuneJob) -> str:
    """The claim the pods mount at /mnt/checkpoints (created or existing)."""
    existing = job.spec.checkpoint.storage.claim_name
    return existing if existing is not None else pvc_name(job.metadata.name)


def build_pvc(job: FineTuneJob) -> dict[str, Any] | None:
    """The PVC to create, or None for an existing claim."""
    storage = job.spec.checkpoint.storage
    if storage.size is None:
        return None
    access = "ReadWriteMany" if job.spec.resources.nodes > 1 else "ReadWriteOnce"
    spec: dict[str, Any] = {
        "accessModes": [access],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name is not None:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(job, pvc_name(job.metadata.name)),
        "spec": spec,
    }
