"""Pure: what a ModelServer needs this cycle, from its object, its pods, the jobs of its namespace
and the admission verdict; and its status from what the runtime answered.

A server is admitted like a FineTuneJob (``snapshot_entry``: waiting, or holding GPUs while its
pod lives, flagged ``serving`` so that training does not preempt it unless the operator allows
it). In admission mode kueue the verdict comes from the server's own Kueue Workload
(``kueue/workload.py``): its pod gets the node labels and tolerations of the ResourceFlavor Kueue
assigned (``with_flavor``) and it waits with Kueue's message. Once admitted the shell creates
its pod and Service; while the pod runs, the shell asks
the runtime which adapters it holds and loads or unloads the difference (``Desired``). Every
status is derived from those facts only, so the same facts give the same status and an idle
server costs no write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.labels import SERVER_LABEL
from finetune_api.server import ModelServer
from finetune_api.status import position_words
from finetune_api.times import parse_time, rfc3339
from finetune_operator.admission import JobVerdict, QueuedJob, RunningJob
from finetune_operator.admission.model import WaitCode
from finetune_operator.jobs.build.pod import Flavor, flavored
from finetune_operator.serving.build import (
    SPEC_HASH_LABEL,
    Located,
    build_pod,
    build_service,
    gpu_resource,
    job_adapter,
    spec_hash,
    url,
)
from finetune_operator.settings import OperatorSettings

# a runtime that exits this many times for one generation of the spec is not restarted again
MAX_RESTARTS = 3
TERMINAL = ("Succeeded", "Failed")
# condition types of a server
READY, ADAPTERS_READY, ADMITTED = "Ready", "AdaptersReady", "Admitted"


def slim_server_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """What the serving controller keeps of a server's pod (``Store`` transform)."""
    meta, spec, st = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    message = ""
    for c in st.get("containerStatuses") or []:
        term = (c.get("state") or {}).get("terminated")
        if isinstance(term, dict):
            message = str(term.get("message") or term.get("reason") or
                          f"exit code {term.get('exitCode')}")[:300]
    return {"name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "server": labels.get(SERVER_LABEL, ""), "hash": labels.get(SPEC_HASH_LABEL, ""),
            "owner": next((r.get("uid") for r in meta.get("ownerReferences") or []
                           if r.get("controller")), None),
            "created": meta.get("creationTimestamp"),
            "deleting": bool(meta.get("deletionTimestamp")), "node": spec.get("nodeName"),
            "phase": st.get("phase") or "Pending", "ip": st.get("podIP"), "message": message}


@dataclass(frozen=True)
class Desired:
    """One listed adapter: where it lies (None while it cannot be served yet) and why not."""

    name: str
    located: Located | None
    waiting: str = ""


def desired_adapters(server: ModelServer, jobs: Mapping[str, FineTuneJob]) -> list[Desired]:
    """The listed adapters, each located once its source can be served: a job's once it
    Succeeded with an adapter (LoRA/QLoRA), a path's at once."""
    out = []
    for a in server.spec.adapters:
        if a.path is not None:
            out.append(Desired(a.name, Located(a.path.claim_name, a.path.path.strip("/"))))
            continue
        job = jobs.get(a.job or "")
        if job is None:
            out.append(Desired(a.name, None, f"FineTuneJob {a.job} does not exist in namespace "
                               f"{server.metadata.namespace}; create it or fix adapters[].job"))
        elif job.spec.method == "full":
            out.append(Desired(a.name, None, f"FineTuneJob {a.job} is full fine-tuning: it has "
                               "no adapter to serve (serve its merged model as the base)"))
        elif job.status.phase != "Succeeded":
            out.append(Desired(a.name, None, f"waiting for FineTuneJob {a.job} to succeed "
                               f"(now {job.status.phase or 'Queued'})"))
        else:
            out.append(Desired(a.name, job_adapter(job)))
    return out


def claims_of(desired: list[Desired]) -> tuple[str, ...]:
    return tuple(sorted({d.located.claim for d in desired if d.located is not None}))


def restarts(server: ModelServer) -> int:
    """Exits of the runtime counted for the current generation of the spec."""
    st = server.status
    if st.observed_generation != server.metadata.generation:
        return 0
    return next((int(c.reason.removeprefix("Exited")) for c in st.conditions
                 if c.type == READY and c.reason.startswith("Exited")
                 and c.reason.removeprefix("Exited").isdigit()), 0)


def live_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if p["phase"] not in TERMINAL]


def snapshot_entry(server: ModelServer, pods: list[dict[str, Any]], priority: int,
                   priority_class: str, settings: OperatorSettings,
                   now: dt.datetime) -> QueuedJob | RunningJob | None:
    """The server as the admission policy sees it: holding GPUs while a pod of it lives,
    waiting while it has none (and its runtime did not fail for good), else nothing."""
    common: dict[str, Any] = dict(
        namespace=server.metadata.namespace, name=server.metadata.name, uid=server.metadata.uid,
        priority=priority, priority_class=priority_class, gpus=server.spec.resources.gpus,
        gpu_resource=gpu_resource(server, settings), serving=True)
    live = live_pods(pods)
    if live:
        pod = live[0]
        started = parse_time(pod.get("created")) or now
        return RunningJob(**common, started_at=min(started, now),
                          preempting=any(p["deleting"] for p in live),
                          placement=tuple(p["node"] for p in live if p.get("node")))
    if server.metadata.deletion_timestamp or restarts(server) >= MAX_RESTARTS:
        return None
    created = parse_time(server.metadata.creation_timestamp) or now
    return QueuedJob(**common, created_at=created,
                     node_selector=dict(server.spec.resources.node_selector))


def resolve_class(server: ModelServer, settings: OperatorSettings,
                  classes: Mapping[str, int]) -> tuple[str | None, str | None]:
    """(priority class, problem): the class must be allowed in the namespace and installed."""
    ns = server.metadata.namespace
    allowed = settings.allowed_classes(ns)
    wanted = server.spec.priority_class_name or settings.admission.default_priority_class
    if wanted not in allowed:
        return None, (f"priorityClassName {wanted} is not allowed in namespace {ns}; allowed: "
                      f"{', '.join(allowed)}; set spec.priorityClassName to one of these")
    if wanted not in classes:
        return None, (f"PriorityClass {wanted} does not exist in the cluster; the platform team "
                      "installs the finetune-* classes with the Helm chart")
    return wanted, None


@dataclass
class ServerPlan:
    """What the shell does for one server this cycle, and the status parts known before the
    runtime is asked."""

    desired: list[Desired]
    create_pod: dict[str, Any] | None = None
    create_service: dict[str, Any] | None = None
    delete_pods: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)
    endpoint: str | None = None  # the runtime to ask (its pod runs)
    phase: str = "Queued"
    reason: str = ""
    admitted: bool = False
    exits: int = 0
    pod: str = ""


def plan_server(server: ModelServer, pods: list[dict[str, Any]],
                jobs: Mapping[str, FineTuneJob], verdict: JobVerdict | None,
                priority_class: str | None, class_problem: str | None,
                settings: OperatorSettings) -> ServerPlan:
    desired = desired_adapters(server, jobs)
    claims = claims_of(desired)
    image = server.spec.image or settings.cycle.server_image
    digest = spec_hash(server, claims, image)
    out = ServerPlan(desired=desired, exits=restarts(server))
    live = live_pods(pods)
    ended = [p for p in pods if p["phase"] in TERMINAL and not p["deleting"]]
    if server.metadata.deletion_timestamp:
        out.reason = "being deleted"
        return out
    if verdict is not None and verdict.preempt:
        out.delete_pods = [(p["name"], p["uid"]) for p in live if not p["deleting"]]
        out.reason = f"preempted: {verdict.preempt}"
        return out
    if live:
        pod = live[0]
        out.admitted, out.pod = True, pod["name"]
        stale = [p for p in live if p["hash"] != digest and not p["deleting"]]
        if stale:
            out.delete_pods = [(p["name"], p["uid"]) for p in stale]
            out.phase, out.reason = "Starting", (
                "restarting: the spec changed (model, runtime, resources, limits, port, image) "
                "or an adapter needs a claim the running pod does not mount")
        elif pod["deleting"]:
            out.phase, out.reason = "Starting", f"pod {pod['name']} is stopping"
        elif pod["phase"] != "Running" or not pod.get("ip"):
            out.phase, out.reason = "Starting", f"pod {pod['name']} is {pod['phase']}"
        else:
            out.phase = "Starting"
            out.reason = f"waiting for the runtime in pod {pod['name']} to answer"
            out.endpoint = f"http://{pod['ip']}:{server.spec.port}"
        return out
    if ended:  # the runtime exited: counted, restarted up to MAX_RESTARTS times
        pod = ended[0]
        out.exits += 1
        out.delete_pods = [(p["name"], p["uid"]) for p in ended]
        if out.exits >= MAX_RESTARTS:
            out.phase = "Failed"
            out.reason = (f"the runtime exited {out.exits} times (last: {pod['message']}); "
                          "fix the spec (kubectl logs the pod) and apply it again")
        else:
            out.phase = "Starting"
            out.reason = f"the runtime exited ({pod['message']}); restarting"
        return out
    if out.exits >= MAX_RESTARTS:
        out.phase = "Failed"
        out.reason = server.status.reason or f"the runtime exited {out.exits} times"
        return out
    if class_problem is not None:
        out.reason = class_problem
        return out
    if verdict is None:
        out.reason = "waiting for admission"
        return out
    if verdict.impossible:
        out.phase, out.reason = "Failed", verdict.impossible
        return out
    if not verdict.admit:
        where = f" (position {position_words(verdict.position)})" if verdict.position else ""
        what = "Kueue" if verdict.code == WaitCode.KUEUE else "GPUs"
        out.reason = f"waiting for {what}{where}: {verdict.reason}"
        return out
    node = verdict.placement[0] if verdict.placement else None
    out.create_pod = with_flavor(build_pod(server, settings, claims, priority_class, node),
                                 verdict)
    out.create_service = build_service(server)
    out.admitted, out.pod = True, out.create_pod["metadata"]["name"]
    out.phase, out.reason = "Starting", f"admitted; starting pod {out.pod}"
    return out


def with_flavor(pod: dict[str, Any], verdict: JobVerdict) -> dict[str, Any]:
    """``pod`` with the node labels and tolerations of the ResourceFlavor Kueue assigned
    (admission mode kueue) on top of the server's own; unchanged in native mode."""
    spec = pod["spec"]
    selector, tols = flavored(spec.get("nodeSelector", {}), spec.get("tolerations", []),
                              Flavor(verdict.node_selector, verdict.tolerations))
    if selector:
        spec["nodeSelector"] = selector
    if tols:
        spec["tolerations"] = tols
    return pod


@dataclass(frozen=True)
class RuntimeState:
    """What the runtime answered this cycle: the adapters it serves (``/v1/models``), or why it
    did not answer."""

    loaded: frozenset[str] = frozenset()
    error: str | None = None


def _condition(old: list[Any], kind: str, ok: bool, reason: str, message: str,
               now: dt.datetime, generation: int) -> dict[str, Any]:
    prev = next((c for c in old if c.type == kind), None)
    status = "True" if ok else "False"
    since = prev.last_transition_time if prev is not None and prev.status == status else None
    return {"type": kind, "status": status, "reason": reason, "message": message[:1024],
            "lastTransitionTime": since or rfc3339(now), "observedGeneration": generation}


def status_of(server: ModelServer, plan: ServerPlan, runtime: RuntimeState | None,
              results: Mapping[str, str | None], now: dt.datetime) -> dict[str, Any]:
    """The server's status (wire form). ``runtime``: what it answered after this cycle's loads
    and unloads (None: not asked); ``results``: adapter name -> load error (None: loaded)."""
    st, gen = server.status, server.metadata.generation
    phase, reason = plan.phase, plan.reason
    ready = runtime is not None and runtime.error is None
    loaded = sorted(runtime.loaded) if ready and runtime is not None else []
    if ready:
        phase, reason = "Ready", ""
    elif runtime is not None and runtime.error:
        reason = f"{reason}: {runtime.error}"
    before = {a.name: a for a in st.adapters}
    adapters: list[dict[str, Any]] = []
    for d in plan.desired:
        path = d.located.in_pod if d.located else ""
        if d.located is None:
            row = {"name": d.name, "state": "Waiting", "message": d.waiting}
        elif d.name in loaded:
            row = {"name": d.name, "state": "Loaded", "path": path}
        elif (err := results.get(d.name)) is not None:
            row = {"name": d.name, "state": "Failed", "path": path, "message": err}
        elif (old := before.get(d.name)) is not None and old.state == "Failed" \
                and old.path == path and st.pod == plan.pod:
            row = old.to_wire()  # a failure is not retried until its path or the pod changes
        else:
            row = {"name": d.name, "state": "Waiting", "path": path,
                   "message": "loaded once the runtime answers"}
        adapters.append(row)
    failed = [a for a in adapters if a["state"] == "Failed"]
    waiting = [a for a in adapters if a["state"] == "Waiting"]
    conds = [
        _condition(st.conditions, ADMITTED, plan.admitted,
                   "Admitted" if plan.admitted else "Waiting", "" if plan.admitted else reason,
                   now, gen),
        _condition(st.conditions, READY, phase == "Ready",
                   "Ready" if phase == "Ready" else
                   (f"Exited{plan.exits}" if plan.exits else phase),
                   reason, now, gen),
        _condition(st.conditions, ADAPTERS_READY, not failed and not waiting,
                   "AdapterLoadFailed" if failed else ("Waiting" if waiting else "Loaded"),
                   "; ".join(f"adapter {a['name']}: {a['message']}" for a in failed + waiting),
                   now, gen),
    ]
    out: dict[str, Any] = {
        "phase": phase, "url": url(server) if plan.admitted else "",
        "loadedAdapters": loaded, "adapters": adapters, "reason": reason,
        "gpus": server.spec.resources.gpus if plan.admitted else 0, "pod": plan.pod,
        "conditions": conds, "observedGeneration": gen}
    return out


def wants_runtime_call(server: ModelServer, plan: ServerPlan) -> bool:
    """Whether the runtime must be asked this cycle: its pod runs and the stored status is not
    already Ready with every located adapter loaded (or failed at the same path) and nothing
    else loaded. An idle, ready server is never called."""
    if plan.endpoint is None:
        return False
    st = server.status
    if st.phase != "Ready" or st.pod != plan.pod:
        return True
    state = {a.name: a for a in st.adapters}
    want = {d.name for d in plan.desired if d.located is not None}
    for d in plan.desired:
        if d.located is None:
            continue
        a = state.get(d.name)
        if a is None or a.path != d.located.in_pod or a.state not in ("Loaded", "Failed"):
            return True
    return set(st.loaded_adapters) != {n for n in want if state[n].state == "Loaded"}
