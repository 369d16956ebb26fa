"""The headless Service of a multi-node job: stable DNS names for the torchrun rendezvous
(``<pod>.<job>-workers.<namespace>.svc``). Its selector names the current attempt, so the
operator replaces ``spec.selector`` at every attempt."""

from __future__ import annotations

from typing import Any

from finetune_api.job import FineTuneJob
from finetune_operator.jobs.build.names import attempt_selector, metadata, service_name

RENDEZVOUS_PORT = 29500


def build_service(job: FineTuneJob, attempt: int) -> dict[str, Any] | None:
    """The Service for a multi-node job, None for a single-node one."""
    if job.spec.resources.nodes <= 1:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(job, service_name(job.metadata.name)),
        "spec": {
            "clusterIP": "None",
            "selector": attempt_selector(job.metadata.name, attempt),
            "publishNotReadyAddresses": True,
            "ports": [
                {
                    "name": "rendezvous",
                    "port": RENDEZVOUS_PORT,
                    "targetPort": RENDEZVOUS_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }
