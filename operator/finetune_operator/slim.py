"""The typed slim records the watch-fed cache (``kube/cache.py``) keeps of core Kubernetes
objects: what the operator reads of a Pod, of another workload's pod (its usage), of a Node and
of a ResourceQuota, and nothing else.

They are ``TypedDict``s: at run time plain dicts in the API's own shape (``metadata``, ``spec``,
``status``), so code that reads API objects reads them unchanged, while mypy checks every key.
Extended-resource counts (``nvidia.com/gpu``, ...) are parsed once, when the cache stores the
object, and kept as ``int`` (:data:`Counts`); nothing downstream parses them again.

Pure (types only): the admission policy and the job controller's pure cores import these
without importing the API client.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from finetune_operator.reports.model import RejectReason, TerminationMessage

Counts = dict[str, int]  # extended resource name -> whole count


# ---------------------------------------------------------------- the operator's own pods

class SlimResources(TypedDict):
    requests: Counts  # extended resources only


class SlimContainer(TypedDict):
    resources: SlimResources


class SlimOwnerReference(TypedDict):
    kind: str | None
    uid: str | None
    controller: bool | None


class SlimPodMeta(TypedDict):
    name: str
    namespace: str | None
    uid: str | None
    labels: dict[str, str]  # the attempt, rank and job labels only
    ownerReferences: list[SlimOwnerReference]
    deletionTimestamp: NotRequired[str]
    deletionGracePeriodSeconds: NotRequired[int | None]
    creationTimestamp: NotRequired[str]


class SlimPodSpec(TypedDict):
    nodeName: str | None
    # what the pod takes from its node, summed into one container; absent when it requests no
    # extended resource
    containers: NotRequired[list[SlimContainer]]


class SlimCondition(TypedDict):
    type: str | None
    status: str | None
    reason: str | None
    message: str | None


class SlimContainerStatus(TypedDict):
    name: str | None
    state: dict[str, Any]
    restartCount: int


class SlimTermination(TypedDict):
    """The terminated container's termination message, parsed once, when the cache stores the
    pod (``kube/cache.py`` ``slim_pod``): the raw text is not kept."""

    parsed: TerminationMessage | None  # the trainer's JSON summary (docs/contracts.md)
    logTail: str  # plain text instead (a crashed trainer's log tail): its last 512 characters
    rejected: tuple[RejectReason, str] | None  # JSON breaking the model: (reason, detail)


class SlimPodStatus(TypedDict):
    phase: str | None
    conditions: list[SlimCondition]  # DisruptionTarget, PodScheduled and Ready only
    # the terminated state keeps exitCode and reason; its message is in ``termination``
    containerStatuses: list[SlimContainerStatus]
    reason: NotRequired[str]
    message: NotRequired[str]  # at most 512 characters
    termination: NotRequired[SlimTermination]  # present when a container left a message


class SlimPod(TypedDict):
    """One of the operator's own pods, as the state machine reads it (``jobs/pods.py``)."""

    metadata: SlimPodMeta
    spec: SlimPodSpec
    status: SlimPodStatus


# ---------------------------------------------------------------- other workloads' pods

class SlimUsageSpec(TypedDict):
    nodeName: str
    containers: list[SlimContainer]


class SlimUsageStatus(TypedDict):
    phase: str


class SlimUsage(TypedDict):
    """A pod of another workload as what it takes from a node (bound or nominated, not
    finished, requesting some extended resource)."""

    spec: SlimUsageSpec
    status: SlimUsageStatus


# ---------------------------------------------------------------- nodes and quotas

class SlimNodeMeta(TypedDict):
    name: str
    labels: dict[str, str]


class SlimTaint(TypedDict):
    key: str | None
    value: str | None
    effect: str | None


class SlimNodeSpec(TypedDict):
    taints: list[SlimTaint]
    unschedulable: bool


class SlimNodeStatus(TypedDict):
    allocatable: Counts  # extended resources only
    ready: str  # the Ready condition's status: "True", "False" or "Unknown"


class SlimNode(TypedDict):
    metadata: SlimNodeMeta
    spec: SlimNodeSpec
    status: SlimNodeStatus


class SlimQuotaMeta(TypedDict):
    name: str
    namespace: str | None


class SlimQuotaSpec(TypedDict, total=False):
    scopes: list[str]
    scopeSelector: dict[str, Any]


class SlimQuotaStatus(TypedDict):
    hard: Counts  # the hard limits on extended resources (keys with a "/")
    used: Counts  # what is used of those


class SlimQuota(TypedDict):
    metadata: SlimQuotaMeta
    spec: SlimQuotaSpec
    status: SlimQuotaStatus


__all__ = [
    "Counts", "SlimCondition", "SlimContainer", "SlimContainerStatus", "SlimNode",
    "SlimNodeMeta", "SlimNodeSpec", "SlimNodeStatus", "SlimOwnerReference", "SlimPod",
    "SlimPodMeta", "SlimPodSpec", "SlimPodStatus", "SlimQuota", "SlimQuotaMeta", "SlimQuotaSpec",
    "SlimQuotaStatus", "SlimResources", "SlimTaint", "SlimTermination", "SlimUsage",
    "SlimUsageSpec", "SlimUsageStatus",
]
