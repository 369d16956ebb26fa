"""Trainer pods as the API server returns them, for unit tests of the pure core.

    from tests.builders.pods import make_pod, gang

    pod = make_pod(job, 1, 0)                                   # attempt 1, rank 0, Running
    done = make_pod(job, 1, 0, exit_code=0, message={"reason": "Completed", "finalStep": 20})
    oom = make_pod(job, 1, 0, exit_code=137, reason="OOMKilled")
    hit = make_pod(job, 1, 0, disruption="PreemptionByScheduler", deleting=True)

The object starts from the real builder (``build_pod``), so names, labels, the owner reference
and the container are exactly what the operator creates; the factory adds what the API server
and the kubelet add: uid, creationTimestamp, nodeName, status (phase, conditions,
containerStatuses with the termination message), deletionTimestamp, the progress annotation.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_operator.jobs.build.pod import CONTAINER_NAME, build_pod
from tests.builders.jobs import make_settings

POD_CREATED = "2026-01-01T00:00:10Z"
STARTED = "2026-01-01T00:00:20Z"
FINISHED = "2026-01-01T00:10:00Z"
DELETED = "2026-01-01T00:10:00Z"
_UNSET: Any = object()


# Test-only key: the report the pod's trainer pushed (the report channel is not part of the pod;
# tests.unit.test_reconcile.Sim hands it to plan() as the channel would).
REPORTED = "_reported"


def make_pod(
    job: FineTuneJob,
    attempt: int = 1,
    rank: int = 0,
    *,
    phase: str | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
    message: dict[str, Any] | str | None = None,
    deleting: bool = False,
    disruption: str | None = None,
    progress: dict[str, Any] | str | None = None,
    node: str | None = _UNSET,
    pod_reason: str | None = None,
) -> dict[str, Any]:
    """One pod of ``job``'s ``attempt`` (1-based) and ``rank`` (0-based).

    ``phase`` defaults to Running, or to Succeeded / Failed when ``exit_code`` is given (the
    trainer container terminated with it; ``reason`` is the container's terminated reason,
    default Completed for 0 and Error otherwise, and ``message`` its termination message, a dict
    written as JSON). ``deleting`` sets deletionTimestamp; ``disruption`` adds the
    ``DisruptionTarget`` condition with that reason; ``progress`` is the trainer's progress
    annotation (a dict written as JSON, or raw text); ``node`` is spec.nodeName (default
    ``node-<rank>``; None for an unbound pod); ``pod_reason`` is status.reason (e.g. Evicted).
    """
    pod = build_pod(job, make_settings(), attempt, rank, "finetune-high", None)
    meta = pod["metadata"]
    meta["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pod/{job.metadata.uid}/{meta['name']}"))
    meta["creationTimestamp"] = POD_CREATED
    meta["resourceVersion"] = "1"
    if deleting:
        meta["deletionTimestamp"] = DELETED
        meta["deletionGracePeriodSeconds"] = pod["spec"]["terminationGracePeriodSeconds"]
    if progress is not None:  # what this pod's trainer reported over the report channel
        pod[REPORTED] = progress
    node_name = f"node-{rank}" if node is _UNSET else node
    if node_name:
        pod["spec"]["nodeName"] = node_name

    if phase is None:
        phase = "Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed")
    status: dict[str, Any] = {"phase": phase, "conditions": _conditions(phase, node_name)}
    if pod_reason:
        status["reason"] = pod_reason
    if disruption:
        status["conditions"].append({
            "type": "DisruptionTarget", "status": "True", "reason": disruption,
            "message": f"{disruption}: test", "lastTransitionTime": DELETED,
        })
    state = _state(phase, exit_code, reason, message)
    if state is not None:
        status["containerStatuses"] = [{
            "name": CONTAINER_NAME, "image": pod["spec"]["containers"][0]["image"],
            "ready": "running" in state, "restartCount": 0, "started": "running" in state,
            "state": state,
        }]
    pod["status"] = status
    return pod


def gang(job: FineTuneJob, attempt: int = 1, **kwargs: Any) -> list[dict[str, Any]]:
    """Every pod of one attempt (``spec.resources.nodes`` of them), same keyword arguments."""
    return [make_pod(job, attempt, r, **kwargs) for r in range(job.spec.resources.nodes)]


def _conditions(phase: str, node: str | None) -> list[dict[str, Any]]:
    out = [{"type": "PodScheduled", "status": "True" if node else "False",
            "lastTransitionTime": POD_CREATED}]
    if node:
        ready = "True" if phase == "Running" else "False"
        out += [{"type": "Initialized", "status": "True", "lastTransitionTime": STARTED},
                {"type": "Ready", "status": ready, "lastTransitionTime": STARTED}]
    return out


def _state(phase: str, exit_code: int | None, reason: str | None,
           message: dict[str, Any] | str | None) -> dict[str, Any] | None:
    if exit_code is not None:
        term: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": STARTED, "finishedAt": FINISHED, "containerID": "containerd://t",
        }
        if message is not None:
            term["message"] = message if isinstance(message, str) else json.dumps(message)
        return {"terminated": term}
    if phase == "Running":
        return {"running": {"startedAt": STARTED}}
    if phase == "Pending":
        return {"waiting": {"reason": reason or "ContainerCreating"}}
    return None
