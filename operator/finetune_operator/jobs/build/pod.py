"""Trainer Pods of one attempt: ``<job>-a<attempt>-<rank>``, one per node.

Mounts and env follow docs/contracts.md. Every job shape runs ``python -m
finetune_trainer.launch`` (one training process per GPU, at least one); several nodes use a
static rendezvous on rank 0 of the attempt through the headless Service.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.memory import SHARE_ENV
from finetune_api.trainer_config import (
    CHECKPOINT_MOUNT,
    CONFIG_MOUNT,
    DATASET_MOUNT,
    EVAL_DATASET_MOUNT,
    MODEL_MOUNT,
    REPORT_TOKEN_DIR,
    REPORT_TOKEN_FILE,
    S3_CREDENTIAL_KEYS,
    S3_OPTIONAL_KEYS,
    s3_env_name,
)
from finetune_operator.jobs.build.claim import CLAIM_NAME, claim_template_name
from finetune_operator.jobs.build.configmap import (
    CONFIG_PATH,
    HUB_TOKEN_FILE,
    HUB_TOKEN_MOUNT,
    hub_token_ref,
    s3_credentials,
    uses_hub,
)
from finetune_operator.jobs.build.configmap import work_dir as job_work_dir
from finetune_operator.jobs.build.names import config_map_name, metadata, pod_name, service_name
from finetune_operator.jobs.build.pvc import checkpoint_claim_name
from finetune_operator.jobs.build.service import RENDEZVOUS_PORT
from finetune_operator.settings import OperatorSettings

CONTAINER_NAME = "trainer"
TERMINATION_LOG = "/dev/termination-log"
RUN_AS = 1000
TRAINER_ARGS = ["--config", CONFIG_PATH]  # for every training process
# Lifetime the kubelet is asked for; it rotates the file at 80% of it (the trainer re-reads it).
REPORT_TOKEN_SECONDS = 3600


def grace_period_seconds(settings: OperatorSettings, save_seconds: float | None) -> int:
    """max(configured minimum, ceil(3 * last measured checkpoint save + 30 s)), at most the
    configured maximum: the save time is the trainer's word, and a pod that ignores SIGTERM
    keeps its GPUs through preemption, suspend and drain for its whole grace period.

    ``save_seconds`` is the last measured save (status.checkpoint.saveSeconds); None, negative
    or non-finite values are ignored.
    """
    minimum = settings.trainer.grace_period_seconds
    if save_seconds is None or not math.isfinite(save_seconds) or save_seconds < 0:
        return minimum
    wanted = math.ceil(3 * min(save_seconds, 1e9) + 30)
    return max(minimum, min(wanted, settings.trainer.max_grace_period_seconds))


def gpu_resource(job: FineTuneJob, settings: OperatorSettings) -> str:
    """The extended resource the job's GPUs are requested as."""
    return job.spec.resources.gpu_resource or settings.admission.gpu_resource


def image(job: FineTuneJob, settings: OperatorSettings) -> str:
    return job.spec.image or settings.trainer.trainer_image


def master_addr(job: FineTuneJob, attempt: int) -> str:
    """DNS name of rank 0 of an attempt: ``<pod rank0>.<job>-workers.<ns>.svc``."""
    name = job.metadata.name
    return f"{pod_name(name, attempt, 0)}.{service_name(name)}.{job.metadata.namespace}.svc"


def procs_per_node(job: FineTuneJob) -> int:
    return max(job.spec.resources.gpus, 1)


def trainer_command(job: FineTuneJob, attempt: int, rank: int) -> list[str]:
    """The one launch path of every job shape (docs/contracts.md, "Launch and exit codes"):
    the trainer's supervisor runs ``nproc-per-node`` training processes with the env://
    variables (one process too), forwards SIGTERM and maps their outcome to the exit code.
    Several nodes meet at rank 0 of the attempt through the headless Service."""
    res = job.spec.resources
    cmd = [
        "python", "-m", "finetune_trainer.launch",
        f"--nnodes={res.nodes}",
        f"--node-rank={rank}",
        f"--nproc-per-node={procs_per_node(job)}",
    ]
    if res.nodes > 1:
        cmd += [f"--master-addr={master_addr(job, attempt)}", f"--master-port={RENDEZVOUS_PORT}"]
    return [*cmd, "--", *TRAINER_ARGS]


def trainer_env(job: FineTuneJob, attempt: int, rank: int,
                share: int | None = None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "FINETUNE_CONFIG", "value": CONFIG_PATH},
        {"name": "FINETUNE_JOB_UID", "value": job.metadata.uid},
        {"name": "FINETUNE_ATTEMPT", "value": str(attempt)},
        {"name": "FINETUNE_WORK_DIR", "value": job_work_dir(job)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
    ]
    if not uses_hub(job):
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if share is not None:  # the GPU memory share this attempt holds: the trainer caps at it
        env.append({"name": SHARE_ENV, "value": str(share)})
    for role, secret in s3_credentials(job):  # values stay in the Secret: never in the spec
        env += [{"name": s3_env_name(role, key), "valueFrom": {"secretKeyRef": {
            "name": secret, "key": key, **({"optional": True} if key in S3_OPTIONAL_KEYS else {})}}}
            for key in S3_CREDENTIAL_KEYS]
    res = job.spec.resources
    if res.nodes > 1:
        env += [
            {"name": "MASTER_ADDR", "value": master_addr(job, attempt)},
            {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
            {"name": "NNODES", "value": str(res.nodes)},
            {"name": "NODE_RANK", "value": str(rank)},
            {"name": "NPROC_PER_NODE", "value": str(procs_per_node(job))},
        ]
    return env


def resources(job: FineTuneJob, settings: OperatorSettings,
              shared: bool = False) -> dict[str, Any]:
    """The trainer container's requests and limits; ``shared``: its GPU is a share through a
    DRA claim (``build/claim.py``), not the extended resource."""
    res = job.spec.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if shared:
        return {"requests": requests, "limits": limits, "claims": [{"name": CLAIM_NAME}]}
    if res.gpus > 0:
        gpu = gpu_resource(job, settings)
        requests[gpu] = str(res.gpus)
        limits[gpu] = str(res.gpus)
    return {"requests": requests, "limits": limits}


def tolerations(job: FineTuneJob, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The job's tolerations, plus ``<resource>:NoSchedule`` Exists when it uses GPUs, for the
    cluster's GPU resource (``settings.admission.gpu_resource``: GPU nodes are tainted with its
    name, MIG slices included) and the job's own ``resources.gpuResource``."""
    out = [t.to_wire() for t in job.spec.resources.tolerations]
    if job.spec.resources.gpus > 0:
        for key in dict.fromkeys([settings.admission.gpu_resource, gpu_resource(job, settings)]):
            extra = {"key": key, "operator": "Exists", "effect": "NoSchedule"}
            if extra not in out:
                out.append(extra)
    return out


def volumes_and_mounts(job: FineTuneJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []

    def add(name: str, source: dict[str, Any], path: str, read_only: bool) -> None:
        volumes.append({"name": name, **source})
        mounts.append({"name": name, "mountPath": path, "readOnly": read_only})

    model = job.spec.model.source
    if model.pvc is not None:
        add("model", _pvc(model.pvc.claim_name, True), MODEL_MOUNT, True)
    datasets = [("dataset", job.spec.dataset.source, DATASET_MOUNT)]
    if job.spec.evaluation is not None:
        datasets.append(("eval-dataset", job.spec.evaluation.dataset.source, EVAL_DATASET_MOUNT))
    for name, data, mount in datasets:
        if data.pvc is not None:
            add(name, _pvc(data.pvc.claim_name, True), mount, True)
        elif data.config_map is not None:
            key = data.config_map.key
            source = {"configMap": {"name": data.config_map.name,
                                    "items": [{"key": key, "path": key}]}}
            add(name, source, mount, True)
    add("checkpoints", _pvc(checkpoint_claim_name(job), False), CHECKPOINT_MOUNT, False)
    add("config", {"configMap": {"name": config_map_name(job.metadata.name)}}, CONFIG_MOUNT, True)
    token = hub_token_ref(job)
    if token is not None:
        secret = {
            "secretName": token.name,
            "items": [{"key": token.key, "path": HUB_TOKEN_FILE}],
            "defaultMode": 0o440,
        }
        add("hub-token", {"secret": secret}, HUB_TOKEN_MOUNT, True)
    add("tmp", {"emptyDir": {}}, "/tmp", False)
    # shared memory for the data loader and NCCL, bounded by the job's own memory request
    add("dshm", {"emptyDir": {"medium": "Memory", "sizeLimit": job.spec.resources.memory}},
        "/dev/shm", False)
    return volumes, mounts


def report_token_volume(settings: OperatorSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The projected ServiceAccount token the trainer authenticates its reports with: audience
    the operator (so the API server itself refuses it), bound to the pod by the kubelet, one
    hour, rotated. The pod mounts no API token (``automountServiceAccountToken: false``)."""
    source = {"serviceAccountToken": {
        "audience": settings.reports.report_audience,
        "expirationSeconds": REPORT_TOKEN_SECONDS,
        "path": REPORT_TOKEN_FILE.rsplit("/", 1)[1],
    }}
    volume = {"name": "report-token", "projected": {"sources": [source], "defaultMode": 0o440}}
    return volume, {"name": "report-token", "mountPath": REPORT_TOKEN_DIR, "readOnly": True}


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,  # HOME, caches and scratch live on /tmp (emptyDir)
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_pod(
    job: FineTuneJob,
    settings: OperatorSettings,
    attempt: int,
    rank: int,
    priority_class: str | None,
    save_seconds: float | None,
    node: str | None = None,
    flavor: Flavor | None = None,
    share: int | None = None,
) -> dict[str, Any]:
    """The Pod of one rank of one attempt (attempt is 1-based, rank 0-based). ``node``: where
    the admission policy placed it, as a preference to the kube-scheduler; ``flavor``: the
    node labels and tolerations Kueue's ResourceFlavor adds (admission mode kueue)."""
    name = job.metadata.name
    nodes = job.spec.resources.nodes
    if not 0 <= rank < nodes:
        raise ValueError(f"rank {rank} is outside 0..{nodes - 1} for FineTuneJob {job.key}")
    grace = grace_period_seconds(settings, save_seconds)
    volumes, mounts = volumes_and_mounts(job)
    token_volume, token_mount = report_token_volume(settings)
    volumes, mounts = [*volumes, token_volume], [*mounts, token_mount]
    container = {
        "name": CONTAINER_NAME,
        "image": image(job, settings),
        "command": trainer_command(job, attempt, rank),
        "env": trainer_env(job, attempt, rank, share),
        "resources": resources(job, settings, shared=share is not None),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    if nodes > 1:
        container["ports"] = [
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
        ]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.trainer.trainer_service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if share is not None:
        spec["resourceClaims"] = [{"name": CLAIM_NAME, "resourceClaimTemplateName":
                                   claim_template_name(name, attempt)}]
    if pull_secrets := settings.trainer.trainer_image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
    if priority_class is not None:
        spec["priorityClassName"] = priority_class
    selector, tols = flavored(job.spec.resources.node_selector, tolerations(job, settings),
                              flavor)
    if selector:
        spec["nodeSelector"] = selector
    if tols:
        spec["tolerations"] = tols
    if node:
        spec["affinity"] = preferred_node(node)
    pod_n = pod_name(name, attempt, rank)
    if nodes > 1:
        spec["hostname"] = pod_n
        spec["subdomain"] = service_name(name)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(job, pod_n, attempt=attempt, rank=rank),
        "spec": spec,
    }


def build_pods(
    job: FineTuneJob,
    settings: OperatorSettings,
    attempt: int,
    priority_class: str | None,
    save_seconds: float | None,
    placement: tuple[str, ...] = (),
    flavor: Flavor | None = None,
    share: int | None = None,
) -> list[dict[str, Any]]:
    """Every pod of one attempt, rank 0 first (a multi-node gang is created whole); rank r
    prefers ``placement[r]`` when the placement names a node for every rank."""
    nodes = job.spec.resources.nodes
    where = placement if len(placement) == nodes else (None,) * nodes
    return [
        build_pod(job, settings, attempt, rank, priority_class, save_seconds, where[rank],
                  flavor, share)
        for rank in range(nodes)
    ]


@dataclass(frozen=True)
class Flavor:
    """Scheduling constraints added to every pod of an attempt (Kueue's ResourceFlavor)."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, str]] = ()


def flavored(selector: Mapping[str, str], tols: Sequence[Mapping[str, str]],
             flavor: Flavor | None) -> tuple[dict[str, str], list[dict[str, str]]]:
    """A pod's node selector and tolerations with a Kueue ResourceFlavor's on top (its labels
    win on a key; its tolerations not already there are added), for jobs' and servers' pods."""
    out_selector = {**selector, **(flavor.node_selector if flavor else {})}
    out_tols = [dict(t) for t in tols]
    for extra in flavor.tolerations if flavor else ():
        if extra not in out_tols:
            out_tols.append(dict(extra))
    return out_selector, out_tols


def preferred_node(node: str) -> dict[str, Any]:
    """Prefer (never require) the node the admission policy counted on: the kube-scheduler's
    default scoring spreads pods, which would scatter the free GPUs the policy keeps together
    for big jobs; a preference still lets the scheduler go elsewhere when the node filled up
    meanwhile. By the node's name (metadata.name), not a label that may differ from it."""
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "preference": {"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}}]}}


def _pvc(claim: str, read_only: bool) -> dict[str, Any]:
    return {"persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
