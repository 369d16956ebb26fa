"""Pure helpers that turn the cache's slim records of Kubernetes objects (``SlimNode``,
``SlimPod``, ``SlimUsage``, ``SlimQuota`` of ``finetune_operator.slim``: the API's own shape,
extended-resource counts already ints) into the admission inputs: nodes with free GPUs, and
namespace GPU quotas. Raw API objects are read the same way (string quantities are parsed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from finetune_api.quantity import count
from finetune_operator.admission.model import NodeInfo, Quota, ScopeRequirement, Taint
from finetune_operator.slim import Counts, SlimNode, SlimPod, SlimQuota, SlimUsage

_DONE = {"Succeeded", "Failed"}


def pod_requests(pod: Mapping[str, Any]) -> Counts:
    """Extended resources a pod requests (containers summed; init containers: their max).
    Limits stand in for requests when only limits are set, as the API server defaults them.
    Reads a raw API pod (the cache's transforms call it) or a slim record."""
    spec = pod.get("spec") or {}

    def of(container: Mapping[str, Any]) -> dict[str, int]:
        res = container.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: count(v) for k, v in merged.items() if "/" in k}

    total: dict[str, int] = defaultdict(int)
    for c in spec.get("containers") or []:
        for k, v in of(c).items():
            total[k] += v
    for c in spec.get("initContainers") or []:
        for k, v in of(c).items():
            total[k] = max(total[k], v)
    return dict(total)


def nodes_from_k8s(nodes: Iterable[SlimNode],
                   pods: Iterable[SlimPod | SlimUsage]) -> list[NodeInfo]:
    """NodeInfo per Node: allocatable extended resources minus what bound, unfinished pods
    request (every pod, not only the operator's)."""
    used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name or (pod.get("status") or {}).get("phase") in _DONE:
            continue
        for k, v in pod_requests(pod).items():
            used[node_name][k] += v
    out = []
    for node in nodes:
        meta, spec = node["metadata"], node.get("spec") or {}
        name = meta["name"]
        allocatable = {k: count(v) for k, v in  # count: ints pass, raw strings are parsed
                       ((node.get("status") or {}).get("allocatable") or {}).items() if "/" in k}
        out.append(NodeInfo(
            name=name,
            allocatable=allocatable,
            free={k: max(0, v - used[name].get(k, 0)) for k, v in allocatable.items()},
            labels=dict(meta.get("labels") or {}),
            taints=tuple(Taint(key=t.get("key") or "", value=t.get("value") or "",
                               effect=t.get("effect") or "NoSchedule")
                         for t in spec.get("taints") or []),
            unschedulable=bool(spec.get("unschedulable")),
        ))
    return sorted(out, key=lambda n: n.name)


def scopes_from_k8s(spec: Mapping[str, Any]) -> tuple[ScopeRequirement, ...]:
    """A ResourceQuota's spec.scopes (each one means operator Exists) and
    spec.scopeSelector.matchExpressions, ANDed as the API server does."""
    out = [ScopeRequirement(scope_name=str(s)) for s in spec.get("scopes") or []]
    for e in (spec.get("scopeSelector") or {}).get("matchExpressions") or []:
        out.append(ScopeRequirement(scope_name=str(e.get("scopeName", "")),
                                    operator=str(e.get("operator", "Exists")),
                                    values=tuple(str(v) for v in e.get("values") or ())))
    return tuple(out)


def quotas_from_k8s(resource_quotas: Iterable[SlimQuota]) -> list[Quota]:
    """Quota per ResourceQuota and extended resource with a `requests.<resource>` hard limit,
    with the quota's scopes (a job is charged only to the quotas whose scopes match it).
    Uses status (what the quota controller enforces); a quota without status yet is skipped."""
    out = []
    for rq in resource_quotas:
        meta = rq["metadata"]
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        scopes = scopes_from_k8s(rq.get("spec") or {})
        status = rq.get("status") or {}
        hard, used = status.get("hard") or {}, status.get("used") or {}
        for key, value in hard.items():
            if key.startswith("requests.") and "/" in key:
                resource = key.removeprefix("requests.")
                out.append(Quota(namespace=ns, resource=resource, hard=count(value),
                                 used=count(used.get(key, 0)), name=name, scopes=scopes))
    return sorted(out, key=lambda q: (q.namespace, q.resource, q.name, q.hard, q.used))
