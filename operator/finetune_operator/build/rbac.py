"""The trainer's identity: ServiceAccount ``<job>-trainer`` and a Role that lets it only get and
patch its own pods (the progress channel, docs/contracts.md). The Role names the pods of the
current attempt, so the operator replaces its rules at every attempt."""

from __future__ import annotations

from typing import Any

from ..api.job import FineTuneJob
from .names import (
    metadata,
    pod_names,
    role_binding_name,
    role_name,
    service_account_name,
)

RBAC_API = "rbac.authorization.k8s.io/v1"


def build_service_account(job: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(job, service_account_name(job.metadata.name)),
    }


def role_rules(job: FineTuneJob, attempt: int) -> list[dict[str, Any]]:
    """The Role's rules for one attempt (what the operator patches in at each attempt)."""
    return [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["get", "patch"],
            "resourceNames": pod_names(job.metadata.name, attempt, job.spec.resources.nodes),
        }
    ]


def build_role(job: FineTuneJob, attempt: int) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API,
        "kind": "Role",
        "metadata": metadata(job, role_name(job.metadata.name)),
        "rules": role_rules(job, attempt),
    }


def build_role_binding(job: FineTuneJob) -> dict[str, Any]:
    name = job.metadata.name
    return {
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": metadata(job, role_binding_name(name)),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name(name),
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": service_account_name(name),
                "namespace": job.metadata.namespace,
            }
        ],
    }
