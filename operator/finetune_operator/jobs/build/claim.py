"""The ResourceClaimTemplate of a job attempt that shares a GPU: one device of the shared
DeviceClass (settings ``shared_gpu_device_class``), of which it consumes ``share`` bytes of
memory (DRA consumable capacity). The pod names it; kube-controller-manager makes the pod's
ResourceClaim from it and deletes that with the pod; the kube-scheduler allocates it. Per
attempt: a raised share (after GPUMemoryExceeded) is a new template."""

from __future__ import annotations

from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.labels import JOB_UID_LABEL
from finetune_operator.jobs.build.names import metadata

CLAIM_NAME = "gpu"  # the pod's and the container's name for the claim


def claim_template_name(job_name: str, attempt: int) -> str:
    return f"{job_name[:230]}-gpu-a{attempt}"


def build_claim_template(job: FineTuneJob, attempt: int, share: int,
                         device_class: str) -> dict[str, Any]:
    mib = -(-share // 2**20)  # whole MiB, rounded up (the device's request policy steps)
    meta = metadata(job, claim_template_name(job.metadata.name, attempt), attempt=attempt)
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": meta,
        "spec": {
            # the claims made from it carry the job's uid: the admission policy counts them
            "metadata": {"labels": {JOB_UID_LABEL: job.metadata.uid}},
            "spec": {"devices": {"requests": [{"name": CLAIM_NAME, "exactly": {
                "deviceClassName": device_class,
                "capacity": {"requests": {"memory": f"{mib}Mi"}}}}]}},
        },
    }
