"""Kueue admission mode (``admission_mode: kueue``), the pure part: the Workload a FineTuneJob
or a ModelServer (``Admittable``: "the thing admitted") stands for in Kueue, what a Workload
Kueue wrote means for it (a :class:`JobVerdict` of the admission seam), and which writes keep
the two in step. A server is admitted like a job: its Workload is one pod set ``server`` of one
pod (the pod ``serving/build.py`` makes), its pod is created once the Workload is admitted, an
eviction stops it and clears the reservation, and a server whose runtime failed for good is
``Finished`` (a new Workload once its spec is fixed).

In this mode Kueue decides who runs (ClusterQueues, cohorts, borrowing, its preemption); the
operator keeps everything after the decision: pods, the graceful stop on SIGTERM with a
checkpoint, exact resume, preemptions never counted as failures, progress and ETA.

The contract with Kueue is the one its own job integrations follow (Kueue's
``jobframework`` reconciler), done by the operator for a kind Kueue does not know
(``integrations.externalFrameworks`` names it):

- a FineTuneJob labelled ``kueue.x-k8s.io/queue-name`` gets one Workload it owns (controller
  reference; deleting the job deletes it): one pod set ``trainer`` with a pod per node (a
  gang is admitted whole), the requests and scheduling constraints its pods will have, the
  job's band as priority (a ``WorkloadPriorityClass`` of the band's name, value = the band's
  PriorityClass value);
- pods are created only once the Workload is ``Admitted`` and not ``Evicted``, with the node
  labels and tolerations of the ResourceFlavor Kueue assigned;
- ``Evicted=True`` (preemption, pods-ready timeout, quota reclaim, deactivation) stops the
  attempt gracefully like a native preemption (SIGTERM, save, exit 0; not a failure); once no
  pod holds GPUs the operator clears the reservation (``status.admission`` removed,
  ``QuotaReserved=False``, ``Admitted=False``, ``Requeued``) so Kueue may admit it again;
- ``PodsReady=True`` once every pod runs (Kueue's ``waitForPodsReady`` reads it);
- ``Finished=True`` when the job succeeds or fails (Kueue frees its quota);
- a suspended job's Workload is ``spec.active=false`` (Kueue evicts it, ``Deactivated``).

Everything here is pure: the cycle reads the Workloads and flavors from the watch caches and
the shell (``kueue/sync.py``) makes the writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune_api import GROUP, VERSION
from finetune_api.job import FineTuneJob
from finetune_api.labels import JOB_UID_LABEL as LABEL_JOB_UID
from finetune_api.server import SERVER_KIND, ModelServer
from finetune_api.times import rfc3339
from finetune_operator.admission.model import WaitCode
from finetune_operator.admission.seam import JobVerdict
from finetune_operator.serving import build as server_build
from finetune_operator.serving.plan import resolve_class
from finetune_operator.settings import OperatorSettings

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
API_VERSION = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_KIND = "FineTuneJob"
POD_SET = "trainer"
# the pod set of each kind admitted (one pod set: the job's pods, or the server's one pod)
POD_SETS = {JOB_KIND: POD_SET, SERVER_KIND: "server"}
# the one label the operator puts on its Workloads: which job or server (uid) it stands for
JOB_UID_LABEL = LABEL_JOB_UID
# Kueue's name for the kinds in integrations.externalFrameworks: Kind.version.group
EXTERNAL_FRAMEWORKS = tuple(f"{kind}.{VERSION}.{GROUP}" for kind in POD_SETS)
MAX_MESSAGE = 1024  # of Kueue's texts copied into the job's status
# a digest of the Workload's spec as the operator built it: a queued job whose spec changed
# (resources, band, queue) gets a new Workload (Kueue's podSets do not follow the job)
SPEC_ANNOTATION = f"{GROUP}/workload-spec"
FINISHED = ("Succeeded", "Failed")

# "the thing admitted": a FineTuneJob, or a ModelServer (``serving/``)
Admittable = FineTuneJob | ModelServer


def kind_of(obj: Admittable) -> str:
    return SERVER_KIND if isinstance(obj, ModelServer) else JOB_KIND


def _noun(obj: Admittable) -> str:
    return "server" if isinstance(obj, ModelServer) else "job"


def suspended(obj: Admittable) -> bool:
    """A suspended job's Workload is inactive; a server has no suspend."""
    return isinstance(obj, FineTuneJob) and obj.spec.suspend


def finished(obj: Admittable) -> str | None:
    """The phase that ends it (``Succeeded``/``Failed``; a server's ``Failed``: its runtime
    exited for good or its spec cannot run), else None."""
    phase = obj.status.phase
    return phase if phase in FINISHED else None


@dataclass(frozen=True)
class ResourceFlavor:
    """What a ResourceFlavor puts on the pods it admits (``spec.nodeLabels`` and
    ``spec.tolerations``)."""

    node_labels: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[tuple[tuple[str, str], ...], ...] = ()


@dataclass(frozen=True)
class Workload:
    """What the operator reads of one Workload it owns (parsed once per resourceVersion)."""

    namespace: str
    name: str
    uid: str
    rv: str
    job_uid: str  # the uid of the job or server it stands for
    active: bool
    conditions: tuple[tuple[str, str, str, str], ...]  # (type, status, reason, message)
    raw_conditions: tuple[Mapping[str, Any], ...] = ()  # as stored (for the status patch)
    flavors: tuple[str, ...] = ()  # the flavors status.admission assigned (pod set trainer)
    cluster_queue: str = ""
    queue_name: str = ""
    priority: int = 0
    created: str = ""
    spec_digest: str = ""
    owner_kind: str = JOB_KIND

    def cond(self, type_: str) -> tuple[str, str, str] | None:
        """(status, reason, message) of the condition ``type_``, if present."""
        for t, status, reason, message in self.conditions:
            if t == type_:
                return status, reason, message
        return None

    def is_(self, type_: str) -> bool:
        c = self.cond(type_)
        return c is not None and c[0] == "True"

    @property
    def reserved(self) -> bool:
        """Kueue holds quota for it (``QuotaReserved`` and an admission)."""
        return self.is_("QuotaReserved")

    @property
    def admitted(self) -> bool:
        return self.is_("Admitted") and self.reserved and not self.is_("Evicted")

    @property
    def evicted(self) -> tuple[str, str] | None:
        c = self.cond("Evicted")
        return (c[1], c[2]) if c is not None and c[0] == "True" else None


def _text(value: Any, limit: int = MAX_MESSAGE) -> str:
    return value[:limit] if isinstance(value, str) else ""


def slim_workload(obj: Mapping[str, Any]) -> Workload | None:
    """The cache's record of a Workload, or None for one that is not the operator's (no
    job-uid label or no FineTuneJob / ModelServer controller reference of that uid)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    job_uid = labels.get(JOB_UID_LABEL)
    owners = [r for r in meta.get("ownerReferences") or []
              if isinstance(r, Mapping) and r.get("kind") in POD_SETS
              and r.get("controller") and r.get("uid") == job_uid]
    if not isinstance(job_uid, str) or not owners:
        return None
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    raw = tuple(c for c in status.get("conditions") or [] if isinstance(c, Mapping))
    conds = tuple((_text(c.get("type"), 64), _text(c.get("status"), 8), _text(c.get("reason"), 128),
                   _text(c.get("message"))) for c in raw)
    adm = status.get("admission") or {}
    flavors: list[str] = []
    for a in adm.get("podSetAssignments") or []:
        if isinstance(a, Mapping) and a.get("name") == POD_SETS[owners[0]["kind"]]:
            flavors += [f for f in (a.get("flavors") or {}).values() if isinstance(f, str)]
    prio = spec.get("priority")
    return Workload(
        namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""), rv=str(meta.get("resourceVersion") or ""),
        job_uid=job_uid, active=spec.get("active") is not False, conditions=conds,
        raw_conditions=raw, flavors=tuple(dict.fromkeys(flavors)),
        cluster_queue=_text(adm.get("clusterQueue"), 253),
        queue_name=_text(spec.get("queueName"), 253),
        priority=prio if isinstance(prio, int) and not isinstance(prio, bool) else 0,
        created=_text(meta.get("creationTimestamp"), 64),
        spec_digest=_text((meta.get("annotations") or {}).get(SPEC_ANNOTATION), 64),
        owner_kind=str(owners[0]["kind"]))


def workload_key(obj: Mapping[str, Any]) -> str:
    """The cache's key of a Workload: the uid of the job or server it stands for (its label),
    so the controllers find its Workload without an index."""
    meta = obj.get("metadata") or {}
    return str((meta.get("labels") or {}).get(JOB_UID_LABEL) or meta.get("uid") or "")


def slim_flavor(obj: Mapping[str, Any]) -> ResourceFlavor:
    spec = obj.get("spec") or {}
    labels = spec.get("nodeLabels") or {}
    tols = []
    for t in spec.get("tolerations") or []:
        if isinstance(t, Mapping):
            tols.append(tuple(sorted((str(k), str(v)) for k, v in t.items()
                                     if isinstance(v, str | int))))
    return ResourceFlavor(node_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                  tolerations=tuple(tols))


def queue_name(obj: Admittable) -> str | None:
    name = (obj.metadata.labels or {}).get(QUEUE_LABEL)
    return name or None


def workload_name(obj: Admittable) -> str:
    """``<kind>-<name>-<hash of uid>`` (``finetunejob-…``, ``modelserver-…``), within 253
    characters (a DNS subdomain): the name alone could be reused by a later one of the same
    name."""
    digest = hashlib.sha256(obj.metadata.uid.encode()).hexdigest()[:8]
    return f"{kind_of(obj).lower()}-{obj.metadata.name[:200]}-{digest}"


def build_workload(job: Admittable, pod: Mapping[str, Any], pods: int,
                   priority_class: str | None, priority: int) -> dict[str, Any]:
    """The Workload of ``job`` (a FineTuneJob or a ModelServer): one pod set of ``pods``
    copies of ``pod`` (the rank-0 pod, or the server's pod, the operator would create, reduced
    to what Kueue reads for flavors and quota)."""
    spec = pod.get("spec") or {}
    template_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": c.get("name"), "image": c.get("image"),
                        "resources": c.get("resources") or {}} for c in spec.get("containers", [])],
    }
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if spec.get(key):
            template_spec[key] = spec[key]
    kind = kind_of(job)
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
             "name": job.metadata.name, "uid": job.metadata.uid, "controller": True,
             "blockOwnerDeletion": True}
    wl_spec: dict[str, Any] = {
        "queueName": queue_name(job) or "",
        "podSets": [{"name": POD_SETS[kind], "count": pods,
                     "template": {"spec": template_spec}}],
        "active": not suspended(job),
        "priority": priority,
    }
    if priority_class:
        wl_spec["priorityClassRef"] = {"group": KUEUE_GROUP, "kind": "WorkloadPriorityClass",
                                       "name": priority_class}
    return {"apiVersion": API_VERSION, "kind": "Workload",
            "metadata": {"name": workload_name(job), "namespace": job.metadata.namespace,
                         "labels": {JOB_UID_LABEL: job.metadata.uid},
                         "annotations": {SPEC_ANNOTATION: spec_digest(wl_spec)},
                         "ownerReferences": [owner]},
            "spec": wl_spec}


def server_workload(server: ModelServer, settings: OperatorSettings,
                    classes: Mapping[str, int]) -> dict[str, Any] | None:
    """The Workload of a ModelServer: one pod set of its one pod as ``serving/build.py`` makes
    it (adapter claims only add volumes, which Kueue does not read), in its band; None while
    its band is not allowed or not installed (its status says why)."""
    cls, problem = resolve_class(server, settings, classes)
    if cls is None or problem is not None:
        return None
    pod = server_build.build_pod(server, settings, (), cls, None)
    return build_workload(server, pod, 1, cls, classes.get(cls, 0))


def digest_of(body: Mapping[str, Any]) -> str:
    """The spec digest :func:`build_workload` put on a Workload it built."""
    return str(body["metadata"]["annotations"][SPEC_ANNOTATION])


def spec_digest(spec: Mapping[str, Any]) -> str:
    """What a Workload's spec asks, as a short digest (``active`` left out: it toggles)."""
    asked = {k: v for k, v in spec.items() if k != "active"}
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- what a Workload means


def verdict(job: Admittable, wl: Workload | None, flavors: Mapping[str, ResourceFlavor],
            position: int | None = None, digest: str | None = None) -> JobVerdict:
    """The admission seam's answer for ``job`` (a FineTuneJob or a ModelServer) from its
    Workload. ``digest``: what its Workload should ask now (a server's: its pod restarts with
    a changed spec, so a reservation for the old one is given back and asked anew)."""
    if queue_name(job) is None:
        return JobVerdict(
            code=WaitCode.KUEUE, reason=(
                f"the operator runs in Kueue admission mode and this {_noun(job)} has no "
                f"{QUEUE_LABEL} label: Kueue cannot queue it; add the label naming a LocalQueue "
                f"of namespace {job.metadata.namespace} (kubectl label {kind_of(job).lower()} "
                f"{job.metadata.name} {QUEUE_LABEL}=<queue>)"))
    if wl is None:
        return JobVerdict(code=WaitCode.KUEUE, reason="creating its Kueue Workload")
    if wl.is_("Finished"):  # a server whose spec was fixed after it failed: replaced
        return JobVerdict(code=WaitCode.KUEUE, reason="its Kueue Workload is Finished; "
                          "replacing it with a new one")
    if (ev := wl.evicted) is not None:
        reason, message = ev
        return JobVerdict(preempt=f"evicted by Kueue ({reason}): {message}", code=WaitCode.KUEUE,
                          reason=f"evicted by Kueue ({reason}): {message}; waiting for Kueue to "
                          "admit it again")
    if digest is not None and wl.reserved and wl.spec_digest and wl.spec_digest != digest:
        why = (f"its spec changed (resources, band or image): Kueue reserved quota for the old "
               f"one; its Workload {wl.name} is replaced and Kueue admits the new one")
        return JobVerdict(preempt=why, code=WaitCode.KUEUE, reason=why)
    if wl.admitted:
        labels: dict[str, str] = {}
        tols: list[dict[str, str]] = []
        for name in wl.flavors:
            f = flavors.get(name)
            if f is None:
                return JobVerdict(code=WaitCode.KUEUE, reason=(
                    f"Kueue admitted it with ResourceFlavor {name}, which the operator has not "
                    "seen yet; it starts once the flavor is read"))
            labels.update(f.node_labels)
            tols += [dict(t) for t in f.tolerations]
        return JobVerdict(admit=True, node_selector=labels, tolerations=tols)
    if not wl.active:
        return JobVerdict(code=WaitCode.KUEUE, reason="its Kueue Workload is deactivated")
    c = wl.cond("QuotaReserved")
    why = (c[2] if c and c[2] else "") or "waiting for Kueue to reserve quota"
    if wl.reserved:
        why = "Kueue reserved quota; waiting for its admission checks"
    return JobVerdict(position=position, code=WaitCode.KUEUE,
                      reason=f"queued in Kueue LocalQueue {wl.queue_name}: {why}")


def positions(workloads: Sequence[Workload]) -> dict[str, int]:
    """1-based positions of the pending Workloads in each LocalQueue, in the order Kueue's
    BestEffortFIFO / StrictFIFO queues take them (priority, then creation time); keyed by job
    (or server) uid. Among this operator's Workloads only: Kueue's own visibility API knows the
    others."""
    by_queue: dict[tuple[str, str], list[Workload]] = {}
    for wl in workloads:
        if not wl.reserved and wl.active and wl.evicted is None and not wl.is_("Finished"):
            by_queue.setdefault((wl.namespace, wl.queue_name), []).append(wl)
    out: dict[str, int] = {}
    for queue in by_queue.values():
        queue.sort(key=lambda w: (-w.priority, w.created, w.name))
        for i, wl in enumerate(queue, 1):
            out[wl.job_uid] = i
    return out


# ---------------------------------------------------------------- the writes


@dataclass(frozen=True)
class WorkloadWrite:
    """One write to a job's or server's Workload: create it, patch its status (conditions and, when
    ``clear_admission``, remove ``status.admission``), or set ``spec.active``."""

    kind: str  # "create" | "status" | "active" | "delete"
    body: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[dict[str, Any], ...] = ()
    clear_admission: bool = False
    active: bool = True
    why: str = ""


def _set(conds: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
         now: dt.datetime) -> bool:
    value = "True" if status else "False"
    for c in conds:
        if c.get("type") == type_:
            if (c.get("status"), c.get("reason"), c.get("message")) == (value, reason, message):
                return False
            if c.get("status") != value:
                c["lastTransitionTime"] = rfc3339(now)
            c.update(status=value, reason=reason, message=message)
            return True
    conds.append({"type": type_, "status": value, "reason": reason, "message": message,
                  "lastTransitionTime": rfc3339(now)})
    return True


def plan_writes(job: Admittable, wl: Workload | None, pods_holding: int, pods_running: int,
                want_pods: int, body: dict[str, Any] | None, now: dt.datetime,
                ) -> WorkloadWrite | None:
    """The one write (at most) that brings the Workload of ``job`` (a FineTuneJob or a
    ModelServer) in step with it this cycle: ``pods_holding`` of its pods hold GPUs (not
    finished), ``pods_running`` of them run; ``body`` is :func:`build_workload`'s object (to
    create it, and to see whether a waiting one's Workload still asks what it does)."""
    phase, noun = finished(job), _noun(job)
    if wl is None:
        if phase or queue_name(job) is None or body is None:
            return None
        return WorkloadWrite("create", body=body, why=f"the {noun} waits for Kueue")
    if wl.is_("Finished"):
        if phase is None and pods_holding == 0:  # a server that failed runs again
            return WorkloadWrite("delete", why=f"the {noun} runs again after it finished")
        return None
    if body is not None and not phase and wl.evicted is None and \
            (not wl.reserved or pods_holding == 0) and wl.spec_digest != digest_of(body):
        # it changed while it waits (resources, band, queue), or a server's pod stopped for
        # a changed spec: Kueue's podSets do not follow, so its Workload is replaced (nothing
        # runs on its quota)
        return WorkloadWrite("delete", why=f"the {noun}'s spec changed")
    conds = [dict(c) for c in wl.raw_conditions]
    if phase:
        _set(conds, "Finished", True, phase, f"{kind_of(job)} {phase}", now)
        return WorkloadWrite("status", conditions=tuple(conds), why=f"the {noun} {phase}")
    if wl.active == suspended(job):
        return WorkloadWrite("active", active=not suspended(job),
                             why=f"the {noun} was " + ("suspended" if suspended(job)
                                                        else "resumed"))
    if (ev := wl.evicted) is not None and wl.reserved and pods_holding == 0:
        reason, message = ev
        requeued = reason in ("Preempted", "NodeFailures")
        _set(conds, "Requeued", requeued, reason, message, now)
        _set(conds, "QuotaReserved", False, "Pending", message, now)
        _set(conds, "Admitted", False, "NoReservation", "The workload has no reservation", now)
        return WorkloadWrite("status", conditions=tuple(conds), clear_admission=True,
                             why=f"evicted ({reason}) and every pod stopped")
    ready = wl.admitted and want_pods > 0 and pods_running >= want_pods
    c = wl.cond("PodsReady")
    if wl.admitted and (c is None or (c[0] == "True") != ready):
        if ready:
            _set(conds, "PodsReady", True, "PodsReady", "All pods reached readiness", now)
        else:
            _set(conds, "PodsReady", False, "WaitForStart",
                 "Not all pods are ready or succeeded", now)
        return WorkloadWrite("status", conditions=tuple(conds), why="pods ready changed")
    return None
