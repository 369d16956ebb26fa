"""Pure builders of a job's children (plain dict manifests; no API calls).

``build_children`` is the one call a handler needs; the modules below expose the pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.trainer_config import ReportConfig
from finetune_operator.jobs.build.claim import build_claim_template
from finetune_operator.jobs.build.configmap import build_config_map, trainer_config
from finetune_operator.jobs.build.names import (
    attempt_selector,
    job_selector,
    labels,
    owner_reference,
    pod_name,
    pod_names,
    selector_string,
)
from finetune_operator.jobs.build.pod import (
    Flavor,
    build_pod,
    build_pods,
    grace_period_seconds,
)
from finetune_operator.jobs.build.pvc import build_pvc, checkpoint_claim_name, creates_pvc
from finetune_operator.jobs.build.service import build_service
from finetune_operator.settings import OperatorSettings

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Children:
    """Everything one attempt of a job needs, in the order to create it (see ``all``)."""

    config_map: Manifest
    pvc: Manifest | None
    service: Manifest | None
    claim_template: Manifest | None = None  # a shared GPU's DRA claim template (build/claim.py)
    pods: list[Manifest] = field(default_factory=list)

    def all(self) -> list[Manifest]:
        """Creation order: PVC, ConfigMap, Service, claim template, Pods."""
        head = [self.pvc, self.config_map, self.service, self.claim_template]
        return [m for m in head if m is not None] + list(self.pods)


def build_children(
    job: FineTuneJob,
    settings: OperatorSettings,
    attempt: int,
    priority_class: str | None,
    save_seconds: float | None,
    report: ReportConfig | None = None,
    placement: tuple[str, ...] = (),
    flavor: Flavor | None = None,
    share: int | None = None,
) -> Children:
    """Children of ``job`` for ``attempt`` (1-based). ``priority_class`` comes from
    ``settings.resolve_priority_class(job)``; ``save_seconds`` is the last measured checkpoint
    save (``status.checkpoint.saveSeconds``) or None; ``report`` is the running report endpoint
    (URL + CA) written into the trainer config, or None (the trainer then pushes nothing).
    Trainer pods need no ServiceAccount, Role or RoleBinding of their own: their only
    credential is a projected token for the report channel (build/pod.py). ``placement`` is
    the node the admission policy counted on for each pod (rank order), or () when unknown."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (1-based), got {attempt} for {job.key}")
    return Children(
        config_map=build_config_map(job, report),
        pvc=build_pvc(job),
        service=build_service(job, attempt),
        claim_template=build_claim_template(job, attempt, share,
                                            settings.admission.shared_gpu_device_class)
        if share is not None else None,
        pods=build_pods(job, settings, attempt, priority_class, save_seconds, placement,
                        flavor, share),
    )


__all__ = [
    "Children",
    "Manifest",
    "attempt_selector",
    "build_children",
    "build_config_map",
    "build_pod",
    "build_pods",
    "build_pvc",
    "build_service",
    "checkpoint_claim_name",
    "creates_pvc",
    "grace_period_seconds",
    "job_selector",
    "labels",
    "owner_reference",
    "pod_name",
    "pod_names",
    "selector_string",
    "trainer_config",
]
