"""The agent's Node: registration, Ready status and Lease heartbeats (manifests are pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from finetune_api.labels import AGENT_LABEL, AGENT_ROOT_ANNOTATION
from finetune_dev.devcluster.cluster import GPU_RESOURCE
from finetune_dev.nodeagent.pod_status import ts
from finetune_dev.nodeagent.sources import POD_IP, raw

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: int
    cpu: str = "64"
    memory: str = "512Gi"
    pods: str = "110"
    labels: dict[str, str] = field(default_factory=dict)
    # the agent's --root, annotated on the Node so `kubectl finetune logs` can say where the
    # container logs are (the agent serves no logs API)
    root: str = ""
    # the agent's log endpoint (logserver.py), published as the kubelet port: the API server
    # serves `kubectl logs` from it. 0: none
    log_port: int = 0

    def capacity(self) -> dict[str, str]:
        return {"cpu": self.cpu, "memory": self.memory, "pods": self.pods,
                GPU_RESOURCE: str(self.gpus)}


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": spec.name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", AGENT_LABEL: "true", **spec.labels}
    if spec.gpus:
        labels["nvidia.com/gpu.present"] = "true"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": spec.name, "labels": labels,
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                         AGENT_ROOT_ANNOTATION: spec.root}},
            "spec": {}}


def node_status(spec: NodeSpec, now: datetime, since: datetime, version: str) -> dict[str, Any]:
    """Ready (heartbeat `now`, transition `since`), no pressure, capacity == allocatable."""

    def cond(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return {"type": kind, "status": "True" if ok else "False", "reason": reason,
                "message": message, "lastHeartbeatTime": ts(now), "lastTransitionTime": ts(since)}

    endpoints = {"daemonEndpoints": {"kubeletEndpoint": {"Port": spec.log_port}}} \
        if spec.log_port else {}
    return {"status": {
        **endpoints,
        "capacity": spec.capacity(), "allocatable": spec.capacity(),
        # InternalIP only: the API server dials the first of Hostname, InternalDNS, InternalIP
        # for logs, and the node's name does not resolve ("$patch": the list is replaced, so a
        # Hostname address an older agent wrote goes)
        "addresses": [{"$patch": "replace"}, {"type": "InternalIP", "address": POD_IP}],
        "conditions": [
            cond("Ready", True, "KubeletReady", "finetune node agent is posting ready status"),
            cond("MemoryPressure", False, "KubeletHasSufficientMemory", "not measured"),
            cond("DiskPressure", False, "KubeletHasNoDiskPressure", "not measured"),
            cond("PIDPressure", False, "KubeletHasSufficientPID", "not measured")],
        "nodeInfo": {"kubeletVersion": version, "kubeProxyVersion": "", "operatingSystem": "linux",
                     "architecture": "amd64", "containerRuntimeVersion": "finetune-nodeagent://0",
                     "osImage": "host processes (finetune node agent)", "kernelVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""},
    }}


def lease_manifest(name: str, node_uid: str, now: datetime,
                   seconds: int = LEASE_SECONDS) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": seconds,
                     "renewTime": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}


def register(core: client.CoreV1Api, spec: NodeSpec) -> str:
    """Create (or adopt) the Node; returns its uid. A kwok node is refused. The first
    `heartbeat` then creates the Lease and only after it marks the Node Ready, so a Ready node
    always has its Lease."""
    body = node_manifest(spec)
    try:
        node = raw(core.create_node, body)
    except ApiException as e:
        if e.status != 409:
            raise
        node = raw(core.read_node, spec.name)
        if (node["metadata"].get("annotations") or {}).get(KWOK_ANNOTATION):
            raise RuntimeError(
                f"Node {spec.name} exists and is managed by kwok ({KWOK_ANNOTATION}); pick another "
                f"--node name or delete it (kubectl delete node {spec.name})") from e
        node = raw(core.patch_node, spec.name, {"metadata": body["metadata"]})
    return str(node["metadata"]["uid"])


def heartbeat(core: client.CoreV1Api, coord: client.CoordinationV1Api, spec: NodeSpec,
              node_uid: str, now: datetime, since: datetime, version: str) -> None:
    """Renew the Lease (create it when missing) and refresh the Ready condition's heartbeat."""
    lease = lease_manifest(spec.name, node_uid, now)
    try:
        coord.patch_namespaced_lease(spec.name, LEASE_NAMESPACE, {"spec": lease["spec"]})
    except ApiException as e:
        if e.status != 404:
            raise
        raw(coord.create_namespaced_lease, LEASE_NAMESPACE, lease)
    core.patch_node_status(spec.name, node_status(spec, now, since, version))
