"""Deterministic names, labels, selectors and the owner reference of a job's children.

Every child name is a valid DNS-1035 label (lowercase letters, digits and '-', starting with a
letter, at most 63 characters), so it is valid for any kind, as a Pod hostname and as a Service
name. A job name that is too long, contains dots or starts with a digit is shortened/normalised
and gets a hash of the full job name, so distinct jobs never share a child name.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from finetune_api.job import API_VERSION, KIND, FineTuneJob
from finetune_api.labels import (
    ATTEMPT_LABEL,
    INSTANCE_LABEL,
    JOB_LABEL,
    JOB_UID_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    NAME_LABEL,
    PART_OF_LABEL,
    RANK_LABEL,
    TRAINER_APP_NAME,
)

MAX_NAME = 63
HASH_LEN = 8

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def child_name(job_name: str, suffix: str) -> str:
    """``<job>-<suffix>``, shortened with a hash of the job name when it would not be a valid
    DNS-1035 label of at most 63 characters. ``suffix`` must itself be a short DNS label."""
    full = f"{job_name}-{suffix}"
    if len(full) <= MAX_NAME and _DNS1035.match(full):
        return full
    base = job_name.replace(".", "-")
    if not base[:1].isalpha():
        base = "j" + base
    keep = MAX_NAME - len(suffix) - HASH_LEN - 2
    if keep < 1:
        raise ValueError(f"name suffix {suffix!r} is too long to build a child name")
    base = base[:keep].rstrip("-")
    return f"{base}-{_hash(job_name)}-{suffix}"


def config_map_name(job_name: str) -> str:
    return child_name(job_name, "config")


def pvc_name(job_name: str) -> str:
    """The operator-created checkpoint PVC (only when checkpoint.storage.size is set)."""
    return child_name(job_name, "checkpoints")


def service_name(job_name: str) -> str:
    """The headless Service of a multi-node job."""
    return child_name(job_name, "workers")


def pod_name(job_name: str, attempt: int, rank: int) -> str:
    """``<job>-a<attempt>-<rank>``: attempt is 1-based, rank 0-based."""
    if attempt < 1 or rank < 0:
        raise ValueError(f"attempt must be >= 1 and rank >= 0, got attempt={attempt} rank={rank}")
    return child_name(job_name, f"a{attempt}-{rank}")


def pod_names(job_name: str, attempt: int, nodes: int) -> list[str]:
    """Names of every pod of one attempt, rank 0 first."""
    return [pod_name(job_name, attempt, rank) for rank in range(nodes)]


def label_value(job_name: str) -> str:
    """The job name as a label value (at most 63 characters; hashed when longer)."""
    if len(job_name) <= MAX_NAME and _LABEL_VALUE.match(job_name):
        return job_name
    return f"{job_name[: MAX_NAME - HASH_LEN - 1].rstrip('-.')}-{_hash(job_name)}"


def labels(job: FineTuneJob, attempt: int | None = None, rank: int | None = None) -> dict[str, str]:
    """Labels of every child; pods add their attempt and rank."""
    value = label_value(job.metadata.name)
    out = {
        NAME_LABEL: TRAINER_APP_NAME,
        INSTANCE_LABEL: value,
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        PART_OF_LABEL: MANAGED_BY_VALUE,
        JOB_LABEL: value,
    }
    if attempt is not None:
        out[ATTEMPT_LABEL] = str(attempt)
    if rank is not None:
        out[RANK_LABEL] = str(rank)
    return out


def job_selector(job_name: str) -> dict[str, str]:
    """matchLabels of every child (pods of every attempt) of this job."""
    return {MANAGED_BY_LABEL: MANAGED_BY_VALUE, JOB_LABEL: label_value(job_name)}


def attempt_selector(job_name: str, attempt: int) -> dict[str, str]:
    """matchLabels of the pods of one attempt of this job."""
    return {**job_selector(job_name), ATTEMPT_LABEL: str(attempt)}


def selector_string(match_labels: dict[str, str]) -> str:
    """A label selector for list/watch calls: ``k=v,k2=v2`` (sorted, deterministic)."""
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def owner_reference(job: FineTuneJob) -> dict[str, Any]:
    """The controller owner reference every child carries (garbage-collected with the job)."""
    if not job.metadata.uid:
        raise ValueError(
            f"FineTuneJob {job.key} has no metadata.uid; build children only from the object "
            "as read from the API server"
        )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    job: FineTuneJob,
    name: str,
    attempt: int | None = None,
    rank: int | None = None,
    owned: bool = True,
) -> dict[str, Any]:
    """Metadata of a child: name, namespace, labels, the job-uid annotation, owner reference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels(job, attempt, rank),
        "annotations": {JOB_UID_ANNOTATION: job.metadata.uid},
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(job)]
    return meta
