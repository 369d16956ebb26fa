"""The checkpoint PersistentVolumeClaim, which also holds the job's output.

``checkpoint.storage.size`` -> the operator creates ``<job>-checkpoints``. With
``whenDeleted: Retain`` (the default) it carries no owner reference, so the trained model outlives
the job (kubectl delete, ttlSecondsAfterFinished, its sweep deleted); a later job of the same name
mounts the same retained claim and works in its own directory on it (keyed by uid). With
``whenDeleted: Delete`` it is owned by the job and garbage-collected with it.
``checkpoint.storage.claimName`` -> an existing claim: nothing is created, the pod mounts the whole
claim and the trainer works in the job's own directory under it; the claim is never owned or
deleted by the operator.
"""

from __future__ import annotations

from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.labels import JOB_LABEL, JOB_UID_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from finetune_operator.jobs.build.names import label_value, metadata, pvc_name


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
        "metadata": metadata(job, pvc_name(job.metadata.name),
                             owned=storage.when_deleted == "Delete"),
        "spec": spec,
    }


def is_own_claim(claim: dict[str, Any], job: FineTuneJob) -> bool:
    """Whether an existing claim named ``pvc_name(job)`` may be mounted by ``job``: owned by it
    (whenDeleted Delete), created for it (the job-uid annotation), or retained from an earlier
    job of the same name in the namespace (no owner, the operator's labels for this name).
    A claim owned by anything else (e.g. an earlier job being garbage-collected) is not."""
    meta = claim.get("metadata") or {}
    owners = {r.get("uid") for r in meta.get("ownerReferences") or []}
    if owners:
        return job.metadata.uid in owners
    if (meta.get("annotations") or {}).get(JOB_UID_ANNOTATION) == job.metadata.uid:
        return True
    labels = meta.get("labels") or {}
    return (labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
            and labels.get(JOB_LABEL) == label_value(job.metadata.name))
