"""Fake GPUs published through Dynamic Resource Allocation on the local cluster's kwok nodes:
what a GPU DRA driver's kubelet plugin would publish, so the real kube-scheduler allocates
ResourceClaims against them (Kubernetes v1.36: consumable capacity and partitionable devices,
both beta and on by default; nothing to prepare on the node, kwok plays the pods).

- a **shared** node: whole GPUs of ``memory`` each that several claims may share
  (``allowMultipleAllocations``), each claim consuming part of the GPU's ``memory`` capacity;
  device attribute ``sharing: memory``, selected by the DeviceClass :data:`SHARED_CLASS`;
- a **partitioned** node: each GPU a counter set (its memory and 7 compute slices) from which
  MIG-like partitions are drawn (``1g.10gb``, ``3g.40gb``, ``7g.80gb``): one partition per
  claim, never more slices or memory than the GPU has; attribute ``sharing: partition``,
  DeviceClass :data:`PARTITION_CLASS`.

Neither node advertises the ``nvidia.com/gpu`` extended resource: the same GPU is never
offered twice (as a whole device and as a DRA device).
"""

from __future__ import annotations

import json

from finetune_dev.devcluster.cluster import ClusterConfig, apply_gpu_node, kubectl, wait_nodes_ready

DRIVER = "gpu.finetune.dev"
SHARED_CLASS = "gpu-shared.finetune.dev"
PARTITION_CLASS = "gpu-partition.finetune.dev"
GiB = 2**30
# MIG-like profiles of an 80 GiB GPU: (name, compute slices of 7, memory GiB)
PROFILES = (("1g.10gb", 1, 10), ("3g.40gb", 3, 40), ("7g.80gb", 7, 80))


def device_classes() -> list[dict]:
    def cls(name: str, sharing: str) -> dict:
        expr = (f'device.driver == "{DRIVER}" && '
                f'device.attributes["{DRIVER}"].sharing == "{sharing}"')
        return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                "metadata": {"name": name},
                "spec": {"selectors": [{"cel": {"expression": expr}}]}}

    return [cls(SHARED_CLASS, "memory"), cls(PARTITION_CLASS, "partition")]


def shared_slice(node: str, gpus: int, memory_gib: int = 80) -> dict:
    devices = [{
        "name": f"gpu-{i}", "allowMultipleAllocations": True,
        "attributes": {"sharing": {"string": "memory"}, "index": {"int": i}},
        "capacity": {"memory": {"value": f"{memory_gib}Gi", "requestPolicy": {
            "default": f"{memory_gib}Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}}},
    } for i in range(gpus)]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"{node}-gpus"},
            "spec": {"driver": DRIVER, "nodeName": node, "devices": devices,
                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}}}


def partition_slices(node: str, gpus: int) -> list[dict]:
    pool = {"name": f"{node}-partitions", "generation": 1, "resourceSliceCount": 2}
    counters = [{"name": f"gpu-{i}", "counters": {"memory": {"value": "80Gi"},
                                                  "slices": {"value": "7"}}}
                for i in range(gpus)]
    devices = []
    for i in range(gpus):
        for profile, slices, mem in PROFILES:
            for k in range(7 // slices if slices < 7 else 1):
                devices.append({
                    "name": f"gpu-{i}-{profile.replace('.', '-')}-{k}",
                    "attributes": {"sharing": {"string": "partition"},
                                   "profile": {"string": profile}, "index": {"int": i}},
                    "capacity": {"memory": {"value": f"{mem}Gi"}},
                    "consumesCounters": [{"counterSet": f"gpu-{i}", "counters": {
                        "memory": {"value": f"{mem}Gi"}, "slices": {"value": str(slices)}}}]})
    meta = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice"}
    return [
        {**meta, "metadata": {"name": f"{node}-counters"},
         "spec": {"driver": DRIVER, "nodeName": node, "pool": pool, "sharedCounters": counters}},
        {**meta, "metadata": {"name": f"{node}-partitions"},
         "spec": {"driver": DRIVER, "nodeName": node, "pool": pool, "devices": devices}},
    ]


def add_dra_node(cfg: ClusterConfig, name: str, gpus: int, layout: str = "shared",
                 labels: dict[str, str] | None = None, memory_gib: int = 80) -> str:
    """A kwok node whose ``gpus`` GPUs are published as DRA devices (``layout`` shared or
    partitioned), with the DeviceClasses; returns its name."""
    apply_gpu_node(cfg, name, 0, {"finetune.dev/gpu-sharing": layout, **(labels or {})})
    wait_nodes_ready(cfg, [name])
    objs = device_classes() + ([shared_slice(name, gpus, memory_gib)] if layout == "shared"
                               else partition_slices(name, gpus))
    kubectl(cfg, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                       "items": objs}))
    return name


def remove_dra_node(cfg: ClusterConfig, name: str) -> None:
    kubectl(cfg, "delete", "resourceslice", f"{name}-gpus", f"{name}-counters",
            f"{name}-partitions", "--ignore-not-found", "--wait=false")
    kubectl(cfg, "delete", "node", name, "--ignore-not-found", "--wait=false")
