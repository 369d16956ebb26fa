"""The agent's writes to pods: status patches (uid-guarded) and the final deletion."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from finetune_dev.nodeagent.pod_status import pending_patch

log = logging.getLogger("nodeagent")


def patch_status(core: client.CoreV1Api, pod: dict[str, Any], body: dict[str, Any]) -> bool:
    """Patch the status subresource with the pod's uid in the body, so it can never land on a
    same-named newer pod. True when done, or moot (pod gone or replaced)."""
    meta = pod["metadata"]
    body = {"metadata": {"uid": meta["uid"]}, **body}
    try:
        core.patch_namespaced_pod_status(meta["name"], meta["namespace"], body)
        return True
    except ApiException as e:
        if e.status in (404, 409, 422):  # gone, replaced (uid), or invalid (logged)
            log.warning("%s/%s: status patch refused (%s): %s", meta["namespace"],
                        meta["name"], e.status, (e.body or "")[:300])
            return e.status != 422
        log.warning("%s/%s: status patch failed: %s", meta["namespace"], meta["name"], e)
        return False


def patch_waiting(core: client.CoreV1Api, pod: dict[str, Any], reason: str,
                  message: str) -> None:
    """Pending with every container waiting for `reason`; skipped when already reported, so a
    retry on every resync does not generate a stream of identical updates."""
    current = [s.get("state", {}).get("waiting") or {}
               for s in (pod.get("status") or {}).get("containerStatuses") or []]
    if current and all(w.get("reason") == reason and w.get("message") == message
                       for w in current):
        return
    log.info("%s/%s: waiting: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], message)
    patch_status(core, pod, pending_patch(pod, datetime.now(UTC), reason, message))


def finalize(core: client.CoreV1Api, pod: dict[str, Any]) -> None:
    """What a kubelet does once the containers are gone: delete with grace 0 and the pod's uid
    as precondition, so the object goes away (and never a newer pod of the same name)."""
    meta = pod["metadata"]
    opts = client.V1DeleteOptions(grace_period_seconds=0,
                                  preconditions=client.V1Preconditions(uid=meta["uid"]))
    try:
        core.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0,
                                   body=opts)
        log.info("%s/%s: deletion finalized", meta["namespace"], meta["name"])
    except ApiException as e:
        if e.status not in (404, 409):
            raise
