"""Test-side helpers around the real local cluster (no mocks: everything hits the API server)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

from finetune_dev.devcluster import cluster as dc

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 30.0,
              interval: float = 0.2) -> T:
    """Poll fn until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def short_id() -> str:
    return uuid.uuid4().hex[:6]


@dataclass
class Cluster:
    cfg: dc.ClusterConfig
    _api: client.ApiClient | None = field(default=None, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.cfg.kubeconfig

    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = dc.kubectl(self.cfg, *args, input=input, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip()}")
        return proc

    def apply(self, obj: dict | list[dict], namespace: str | None = None) -> None:
        docs = obj if isinstance(obj, list) else [obj]
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=json.dumps({"apiVersion": "v1",
                                                                "kind": "List", "items": docs}))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        ns = ["-n", namespace] if namespace else []
        p = self.kubectl("get", kind, name, *ns, "-o", "json", check=False)
        return json.loads(p.stdout) if p.returncode == 0 else None

    @property
    def api(self) -> client.ApiClient:
        if self._api is None:
            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def create_namespace(self, name: str) -> str:
        """A namespace enforcing the restricted Pod Security Standard (every test namespace)."""
        from finetune_dev.devcluster.workloads import create_namespace

        create_namespace(self.cfg, name)
        return name

    def gpu_node(self, name: str, gpus: int, labels: dict[str, str] | None = None) -> str:
        dc.apply_gpu_node(self.cfg, name, gpus, labels)
        dc.wait_nodes_ready(self.cfg, [name])
        return name


def restricted(pod: dict) -> dict:
    """The pod, made to meet the restricted Pod Security Standard that every test namespace
    enforces: the trainer pods' own pod securityContext (uid, gid and fsGroup 1000) unless the
    pod has one, and in each container no privilege escalation, no capabilities and the
    runtime's seccomp profile (fields a container already sets are kept)."""
    from finetune_operator.jobs.build.pod import pod_security_context

    spec = pod["spec"]
    spec.setdefault("securityContext", pod_security_context())
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        csc = c.setdefault("securityContext", {})
        csc.setdefault("allowPrivilegeEscalation", False)
        csc.setdefault("capabilities", {"drop": ["ALL"]})
        csc.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    return pod


def gpu_pod(name: str, gpus: int, *, node: str | None = None, priority_class: str | None = None,
            labels: dict[str, str] | None = None) -> dict:
    """A pod (no node runs it: kwok plays it) that the restricted namespaces admit."""
    return restricted(plain_gpu_pod(name, gpus, node=node, priority_class=priority_class,
                                    labels=labels))


def plain_gpu_pod(name: str, gpus: int, *, node: str | None = None,
                  priority_class: str | None = None, labels: dict[str, str] | None = None) -> dict:
    """A pod with no securityContext at all: the restricted namespaces reject it."""
    res = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "example.invalid/fake:1",
                        "resources": {"requests": res, "limits": res}}],
        "terminationGracePeriodSeconds": 5,
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def priority_class(name: str, value: int, policy: str = "PreemptLowerPriority") -> dict:
    return {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "preemptionPolicy": policy,
            "globalDefault": False, "description": "test"}
