"""Pod status patches, as a kubelet would write them (pure: time is passed in).

Every patch carries the full containerStatuses list (that list has no merge key, so it is
replaced whole); conditions merge by type, so the scheduler's DisruptionTarget stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from finetune_dev.nodeagent.sources import POD_IP, pod_ip

SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."
UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"


@dataclass(frozen=True)
class Started:
    at: datetime
    pid: int


@dataclass(frozen=True)
class Exit:
    code: int  # as a container runtime reports it: 128 + signal number for a signal
    at: datetime
    message: str
    start_error: bool = False


def exit_code(returncode: int) -> int:
    """Popen.returncode -> container exit code (-9 -> 137, -15 -> 143)."""
    return 128 - returncode if returncode < 0 else returncode


def ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conds(pod: dict[str, Any], now: datetime,
           *specs: tuple[str, bool, str | None, str | None]) -> list[dict[str, Any]]:
    """Conditions (type, ok, reason, message); lastTransitionTime kept while status is unchanged."""
    old = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
    out = []
    for kind, ok, reason, message in specs:
        c = _cond(kind, ok, now, reason, message)
        prev = old.get(kind)
        if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            c["lastTransitionTime"] = prev["lastTransitionTime"]
        out.append(c)
    return out


def _cond(kind: str, ok: bool, now: datetime, reason: str | None = None,
          message: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"type": kind, "status": "True" if ok else "False",
                         "lastTransitionTime": ts(now), "lastProbeTime": None}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _base(pod: dict[str, Any], now: datetime, phase: str) -> dict[str, Any]:
    ip = pod_ip()
    status: dict[str, Any] = {"phase": phase, "hostIP": POD_IP, "hostIPs": [{"ip": POD_IP}],
                              "podIP": ip, "podIPs": [{"ip": ip}]}
    if not (pod.get("status") or {}).get("startTime"):
        status["startTime"] = ts(now)
    return status


def _container(c: dict[str, Any], state: dict[str, Any], ready: bool,
               pid: int | None) -> dict[str, Any]:
    out = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready,
           "restartCount": 0, "started": "running" in state, "state": state}
    if pid is not None:
        out["containerID"] = f"nodeagent://{pid}"
    return out


def pending_patch(pod: dict[str, Any], now: datetime, reason: str,
                  message: str = "") -> dict[str, Any]:
    """Pending, every container waiting (ContainerCreating, CreateContainerConfigError, ...)."""
    status = _base(pod, now, "Pending")
    waiting = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
    status["containerStatuses"] = [_container(c, waiting, False, None)
                                   for c in pod["spec"]["containers"]]
    status["conditions"] = _conds(
        pod, now, ("PodReadyToStartContainers", True, None, None),
        ("Initialized", True, None, None),
        ("ContainersReady", False, "ContainersNotReady", message or reason),
        ("Ready", False, "ContainersNotReady", message or reason))
    return {"status": status}


def observed_patch(pod: dict[str, Any], now: datetime, started: dict[str, Started],
                   exits: dict[str, Exit], shutdown: bool = False) -> dict[str, Any]:
    """Running while any container runs; then Succeeded (all exited 0) or Failed. A pod stopped
    because its node agent shut down is Failed with reason Terminated and DisruptionTarget."""
    containers = pod["spec"]["containers"]
    done = all(c["name"] in exits for c in containers)
    ok = all(e.code == 0 for e in exits.values())
    phase = "Running" if not done else ("Succeeded" if ok and not shutdown else "Failed")
    status = _base(pod, now, phase)
    statuses = []
    for c in containers:
        s, e = started[c["name"]], exits.get(c["name"])
        if e is None:
            state: dict[str, Any] = {"running": {"startedAt": ts(s.at)}}
        else:
            reason = "StartError" if e.start_error else ("Completed" if e.code == 0 else "Error")
            state = {"terminated": {"exitCode": e.code, "reason": reason, "startedAt": ts(s.at),
                                    "finishedAt": ts(e.at), "containerID": f"nodeagent://{s.pid}",
                                    **({"message": e.message} if e.message else {})}}
        statuses.append(_container(c, state, e is None, s.pid))
    status["containerStatuses"] = statuses
    ready = not exits
    why = None if ready else ("PodCompleted" if done else "ContainersNotReady")
    status["conditions"] = _conds(
        pod, now, ("PodReadyToStartContainers", not done, None, None),
        ("Initialized", True, None, None), ("ContainersReady", ready, why, None),
        ("Ready", ready, why, None))
    if shutdown and done:
        status |= {"reason": "Terminated", "message": SHUTDOWN_MESSAGE}
        status["conditions"].append(_cond("DisruptionTarget", True, now, "TerminationByKubelet",
                                          SHUTDOWN_MESSAGE))
    return {"status": status}


def failed_patch(pod: dict[str, Any], now: datetime, reason: str, message: str,
                 container_reason: str = "ContainerStatusUnknown",
                 exit_code: int = 137) -> dict[str, Any]:
    """Failed without a process to report on: the agent lost it (restart) or never started it
    (unsupported pod). Containers are terminated with `container_reason`."""
    status = _base(pod, now, "Failed") | {"reason": reason, "message": message}
    previous = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}
    statuses = []
    for c in pod["spec"]["containers"]:
        started_at = ((previous.get(c["name"]) or {}).get("state") or {}).get("running", {}).get(
            "startedAt")
        term = {"exitCode": exit_code, "reason": container_reason, "finishedAt": ts(now),
                "message": UNKNOWN_MESSAGE if container_reason == "ContainerStatusUnknown"
                else message}
        if started_at:
            term["startedAt"] = started_at
        statuses.append(_container(c, {"terminated": term}, False, None))
    status["containerStatuses"] = statuses
    status["conditions"] = _conds(
        pod, now, ("PodReadyToStartContainers", False, None, None),
        ("Initialized", True, None, None), ("ContainersReady", False, "PodFailed", None),
        ("Ready", False, "PodFailed", None))
    return {"status": status}
