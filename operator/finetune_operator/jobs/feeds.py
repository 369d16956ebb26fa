"""The controller's inputs: the watch-fed caches (``kube/cache.py`` Stores and Reflectors), the
index of our pods by job, which jobs changed since the last cycle (dirty tracking), whether
capacity changed, and the progress reports the report channel hands in.

A change the operator reads marks the jobs it concerns dirty and wakes the cycle; a change
of nodes, quotas, priority classes or GPU usage marks capacity changed instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from finetune_api.job import FineTuneJob
from finetune_api.labels import JOB_UID_LABEL, MANAGED_BY_SELECTOR, SERVER_LABEL
from finetune_operator import metrics
from finetune_operator.admission import devices
from finetune_operator.jobs import ownership
from finetune_operator.jobs.pods import Pod, attempt_of, owner_uid, rank_of, termination
from finetune_operator.jobs.ports import JobKube
from finetune_operator.kube import cache
from finetune_operator.kube import client as k8s
from finetune_operator.kube.intern import intern
from finetune_operator.kueue import workload as kueue
from finetune_operator.reports.model import BadReport, ProgressReport
from finetune_operator.serving.plan import slim_server_pod
from finetune_operator.settings import OperatorSettings
from finetune_operator.sweep.plan import TrialJob

log = logging.getLogger("finetune_operator")

# told about a termination message the cache could not parse (``kube/cache.py`` parses each
# once): the report channel's rejections, counted and logged once per pod (``namespace/pod``)
OnTermination = Callable[[str, BadReport], object]


def parse_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True, eq=False)
class JobEntry:
    """A cached FineTuneJob: parsed once per resourceVersion (or the parse error)."""

    uid: str
    rv: str
    job: FineTuneJob | None
    error: str | None = None
    raw_meta: dict[str, Any] | None = None
    failed: bool = False
    trial: TrialJob | None = None  # a sweep's trial: what the sweep planner reads of it

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobEntry) and (self.uid, self.rv) == (other.uid, other.rv)

    def __hash__(self) -> int:
        return hash((self.uid, self.rv))


def job_entry(obj: dict[str, Any]) -> JobEntry:
    meta = obj.get("metadata") or {}
    uid, rv = str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")
    swept = any(r.get("kind") == "FineTuneSweep" for r in meta.get("ownerReferences") or [])
    try:
        job = FineTuneJob.from_body(obj)
        job = job.model_copy(update={"spec": intern(job.spec)})  # shared between equal specs
        return JobEntry(uid, rv, job, trial=TrialJob.of(obj, job) if swept else None)
    except (ValidationError, KeyError, TypeError) as e:
        msg = parse_error(e) if isinstance(e, ValidationError) else f"malformed object: {e}"
        small = {k: meta.get(k) for k in ("name", "namespace", "uid")}
        phase = (obj.get("status") or {}).get("phase")
        return JobEntry(uid, rv, None, msg, small, phase == "Failed",
                        trial=TrialJob.of(obj, None) if swept else None)


def uid_key(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or cache.object_key(obj))


@dataclass(frozen=True)
class Inputs:
    """What one cycle reads of the feeds, taken together under the lock."""

    dirty: set[str]
    capacity_changed: bool   # nodes, other pods, classes, ... (not jobs, our pods or quotas)
    pods_by_uid: dict[str, list[Pod]]
    # job uid -> (attempt, newest progress report of that attempt)
    reports: dict[str, tuple[int, ProgressReport]]
    gone: set[str] = field(default_factory=set)  # jobs deleted since: forget what is kept
    quotas_changed: bool = True  # a ResourceQuota (its status too)
    written: set[str] = field(default_factory=set)  # jobs whose status the operator wrote


class Feeds:
    """The Stores and their Reflectors, the pod index, dirty tracking and report intake.
    ``wake`` wakes the cycle; ``on_termination`` checks a pod's new termination message;
    ``on_impostor`` is told, once per pod and only while ``may_write`` (the leader), about a
    pod naming a job it was not created for."""

    def __init__(self, kube: JobKube, settings: OperatorSettings, wake: Callable[[], None],
                 on_termination: OnTermination,
                 on_impostor: Callable[[Pod], None] = lambda pod: None,
                 may_write: Callable[[], bool] = lambda: True) -> None:
        self.kube, self.settings = kube, settings
        self.wake, self.on_termination, self.on_impostor = wake, on_termination, on_impostor
        self.may_write = may_write
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._dirty: set[str] = set()
        self._gone: set[str] = set()
        self._capacity_changed = True
        self._quotas_changed = True
        self._written: set[str] = set()
        self._arrived = False  # a job was created since the last take_arrived()
        self._sweeps_dirty = True
        self._pods_by_job: dict[str, dict[str, Pod]] = {}
        # pods naming a job uid not (yet) in the jobs cache: checked when the job arrives
        self._pods_waiting: dict[str, dict[str, Pod]] = {}
        self._warned_pods: set[str] = set()  # impostor pods already told about
        # job uid -> (attempt, newest progress report): the trainer's last report (right
        # after its SIGTERM save) may land just before its pod disappears
        self._reports: dict[str, tuple[int, ProgressReport]] = {}
        self.jobs = cache.Store("jobs", self._changed)
        self.pods = cache.Store("pods", self._changed)
        self.nodes = cache.Store("nodes", self._changed)
        self.quotas = cache.Store("quotas", self._changed)
        self.classes = cache.Store("priorityclasses", self._changed)
        self.usage = cache.Store("usage", self._changed)
        self.sweeps = cache.Store("sweeps", self._changed)
        # admission mode kueue: the jobs' Workloads (by job uid) and Kueue's ResourceFlavors
        self.workloads = cache.Store("workloads", self._changed)
        self.flavors = cache.Store("resourceflavors", self._changed)
        # GPU sharing: the shareable GPUs per ResourceSlice, what allocated claims hold
        self.shared_gpus = cache.Store("resourceslices", self._changed)
        self.claims = cache.Store("resourceclaims", self._changed)
        # serving: the ModelServers and their pods (serving/plan.py slim_server_pod)
        self.servers = cache.Store("servers", self._changed)
        self.server_pods = cache.Store("serverpods", self._changed)
        self.reflectors: list[cache.Reflector] = []

    # ------------------------------------------------------------------ watches

    def start(self) -> None:
        """One Reflector per watched collection (threads; ``stop_event`` ends them)."""
        s = self.settings
        nss: list[str | None] = list(s.admission.namespaces) or [None]
        running = "status.phase!=Succeeded,status.phase!=Failed"
        # (store, path, label selector, field selector, transform, key, part): one part per
        # watched namespace, so one namespace's relist never drops another's entries
        feeds: list[tuple[cache.Store, str, str | None, str | None, Any,
                          Callable[[dict[str, Any]], str], str]] = []
        for ns in nss:
            part = self.part(ns)
            feeds += [(self.jobs, k8s.collection_path(k8s.JOBS_PATH, ns), None, None,
                       job_entry, uid_key, part),
                      (self.pods, k8s.collection_path(k8s.PODS_PATH, ns), MANAGED_BY_SELECTOR, None,
                       cache.slim_pod, uid_key, part),
                      (self.quotas, k8s.collection_path(k8s.QUOTAS_PATH, ns), None, None,
                       cache.slim_quota, cache.object_key, part)]
            if s.cycle.sweeps:
                feeds.append((self.sweeps, k8s.collection_path(k8s.SWEEPS_PATH, ns), None, None,
                              cache.slim_object, uid_key, part))
            if s.cycle.serving:
                feeds += [(self.servers, k8s.collection_path(k8s.SERVERS_PATH, ns), None, None,
                           cache.slim_object, uid_key, part),
                          (self.server_pods, k8s.collection_path(k8s.PODS_PATH, ns),
                           SERVER_LABEL, None, slim_server_pod, uid_key, part)]
            if s.admission.admission_mode == "kueue":
                feeds.append((self.workloads, k8s.collection_path(k8s.WORKLOADS_PATH, ns),
                              kueue.JOB_UID_LABEL, None, kueue.slim_workload, kueue.workload_key,
                              part))
        if s.admission.admission_mode == "kueue":
            feeds.append((self.flavors, k8s.FLAVORS_PATH, None, None, kueue.slim_flavor,
                          cache.object_key, ""))
        if s.admission.shared_gpu_device_class:
            driver = s.admission.shared_gpu_driver
            feeds += [
                (self.shared_gpus, k8s.SLICES_PATH, None, f"spec.driver={driver}",
                 lambda o: devices.slim_slice(o, driver) or None, cache.object_key, ""),
                # every claim, ours or not: what it holds of a shared GPU is taken
                (self.claims, k8s.CLAIMS_PATH, None, None,
                 lambda o: devices.slim_claim(o, driver, JOB_UID_LABEL) or None, uid_key, "")]
        feeds += [(self.nodes, k8s.NODES_PATH, None, None, cache.slim_node, cache.object_key, ""),
                  (self.classes, k8s.CLASSES_PATH, None, None, cache.priority_value,
                   cache.object_key, ""),
                  # every running pod's GPU use, ours or not, kept as (node, requests) only
                  (self.usage, k8s.PODS_PATH, None, running, cache.slim_usage, uid_key, "")]
        for store, path, labels, fields, transform, key, part in feeds:
            r = cache.Reflector(self.kube, cache.Source(path, labels, fields), store, transform,
                                self.stop_event, key=key, part=part)
            self.reflectors.append(r)
            r.start()

    def part(self, namespace: str | None) -> str:
        """The store part a namespaced object belongs to: its namespace when the operator
        watches a list of namespaces (one reflector each), else "" (one reflector for all)."""
        return (namespace or "") if self.settings.admission.namespaces else ""

    def scheduling_stores(self) -> list[cache.Store]:
        return [self.jobs, self.pods, self.nodes, self.quotas, self.classes, self.usage]

    def synced(self) -> bool:
        """Every watch cache is filled (after its first list)."""
        return bool(self.reflectors) and all(r.store.synced.is_set() for r in self.reflectors)

    # ------------------------------------------------------------------ cache -> dirty

    def _changed(self, kind: str, key: str, old: Any, new: Any) -> None:
        impostors: list[Pod] = []
        with self.lock:
            if kind == "sweeps" or getattr(new or old, "trial", None) is not None:
                self._sweeps_dirty = True
            if kind == "workloads":  # keyed by its job's uid: Kueue decided or evicted
                self._dirty.add(key)
            elif kind == "jobs":
                self._dirty.add(key)
                if old is None and new is not None:
                    self._arrived = True
                if new is None:
                    self._forget(key, old)
                elif new.job is not None:  # the pods that named it before it was cached
                    for pod_key, pod in self._pods_waiting.pop(key, {}).items():
                        impostors += self._index_pod(pod_key, None, pod)
            elif kind == "pods":
                impostors = self._index_pod(key, old, new)
            elif kind == "quotas":
                self._quotas_changed = True
            else:
                self._capacity_changed = True
        self.wake()
        for pod in impostors:
            self._warn_impostor(pod)

    def _index_pod(self, key: str, old: Pod | None, new: Pod | None) -> list[Pod]:
        """(Under the lock.) A pod counts for the job its owner reference names only when the
        operator created it for that job (ownership.py); else it is an impostor: not indexed,
        never deleted, no job dirty. Returns the impostor to warn about, if any."""
        uids = {u for p in (old, new) if p is not None and (u := owner_uid(p)) is not None}
        counted = False  # whether a job's view of its pods changes
        for u in uids:
            for index in (self._pods_by_job, self._pods_waiting):
                pods = index.get(u)
                if pods is not None and pods.pop(key, None) is not None:
                    counted = counted or index is self._pods_by_job
                    if not pods:
                        del index[u]
        uid = owner_uid(new) if new is not None else None
        entry = self.jobs.get(uid) if uid is not None else None
        impostors: list[Pod] = []
        if new is None or uid is None:
            self._warned_pods.discard(key)
        elif entry is None or entry.job is None:
            self._pods_waiting.setdefault(uid, {})[key] = new  # decided once the job is cached
        elif ownership.belongs(new, entry.job):
            self._pods_by_job.setdefault(uid, {})[key] = new
            counted = True
            term = termination(new)
            if term is not None and term["rejected"] is not None and \
                    (old is None or termination(old) != term):
                self.on_termination(f"{new['metadata'].get('namespace')}/"
                                    f"{new['metadata']['name']}", BadReport(*term["rejected"]))
        else:
            impostors.append(new)
        if counted:
            self._dirty.update(uids)
        return impostors

    def _warn_impostor(self, pod: Pod) -> None:
        """Once per pod: the pod names a job it was not created for."""
        uid = str(pod["metadata"].get("uid"))
        with self.lock:
            if uid in self._warned_pods:
                return
            if not self.may_write():
                return
            self._warned_pods.add(uid)
        self.on_impostor(pod)

    def _forget(self, uid: str, old: Any) -> None:
        """(Under the lock.) A deleted job: its report and series go; the cycle forgets the
        rest when it next runs (``Inputs.gone``)."""
        self._reports.pop(uid, None)
        self._gone.add(uid)
        job = getattr(old, "job", None)
        if job is not None:
            metrics.forget_job(job.metadata.namespace, job.metadata.name)

    # ------------------------------------------------------------------ report intake

    def on_report(self, who: Any, report: ProgressReport) -> None:
        """The report channel's callback (reports/channel.py; server threads): a report from
        an authenticated pod, already parsed strictly. Only the rank-0 trainer of the current
        attempt of a job this operator manages is heard; anyone else gets 403 (counted)."""
        pod = self.pods.get(who.uid)
        uid = owner_uid(pod) if pod is not None else None
        entry = self.jobs.get(uid) if uid else None
        if pod is None or uid is None or rank_of(pod) != 0 or entry is None \
                or entry.job is None or not ownership.speaks_for(pod, entry.job):
            raise BadReport("unknown-pod", f"{who.key} is not the rank-0 trainer of the current "
                            "attempt of a managed job")
        self.accept_report(uid, attempt_of(pod), report)

    def accept_report(self, uid: str, attempt: int, report: ProgressReport) -> None:
        """A progress report from the report channel (already parsed and authenticated): kept
        when it is the newest of the newest attempt."""
        with self.lock:
            old = self._reports.get(uid)
            if old is None or old[0] < attempt or (
                    old[0] == attempt and report.step >= old[1].step):
                self._reports[uid] = (attempt, report)
                self._dirty.add(uid)
        self.wake()

    # ------------------------------------------------------------------ the cycle's view

    def take(self, inflight: set[str]) -> Inputs:
        """The cycle's inputs; the dirty jobs with a write in flight stay dirty."""
        with self.lock:
            dirty, self._dirty = self._dirty - inflight, self._dirty & inflight
            capacity, self._capacity_changed = self._capacity_changed, False
            quotas, self._quotas_changed = self._quotas_changed, False
            gone, self._gone = self._gone, set()
            written, self._written = self._written, set()
            return Inputs(dirty=dirty, capacity_changed=capacity, quotas_changed=quotas,
                          written=written,
                          pods_by_uid={uid: list(p.values())
                                       for uid, p in self._pods_by_job.items()},
                          reports=dict(self._reports), gone=gone)

    def take_arrived(self) -> bool:
        """Whether a job was created (first seen) since the last call."""
        with self.lock:
            arrived, self._arrived = self._arrived, False
            return arrived

    def wrote(self, uid: str) -> None:
        """The operator stored its own write of this job's status (no replan, no wake): the
        next cycle's view of the job differs from the last one's all the same."""
        with self.lock:
            self._written.add(uid)

    def created_pod(self, pod: dict[str, Any]) -> None:
        """A pod this operator just created, as the API server returned it: cached before its
        watch event arrives."""
        self.pods.add(uid_key(pod), cache.slim_pod(pod),
                      part=self.part((pod.get("metadata") or {}).get("namespace")))

    def created_server_pod(self, pod: dict[str, Any]) -> None:
        """A server pod this operator just created: cached before its watch event arrives."""
        self.server_pods.add(uid_key(pod), slim_server_pod(pod),
                             part=self.part((pod.get("metadata") or {}).get("namespace")))

    def pods_by_server(self) -> dict[str, list[dict[str, Any]]]:
        """The server pods by the uid of the ModelServer that owns them."""
        out: dict[str, list[dict[str, Any]]] = {}
        for pod in self.server_pods.values():
            if pod.get("owner"):
                out.setdefault(pod["owner"], []).append(pod)
        return out

    def mark_dirty(self, uid: str) -> None:
        with self.lock:
            self._dirty.add(uid)

    def is_dirty(self, uid: str) -> bool:
        with self.lock:
            return uid in self._dirty

    @property
    def pending(self) -> bool:
        """Some job changed and is not planned yet."""
        with self.lock:
            return bool(self._dirty)

    def mark_capacity_changed(self) -> None:
        with self.lock:
            self._capacity_changed = True

    def mark_sweeps_dirty(self) -> None:
        with self.lock:
            self._sweeps_dirty = True

    def take_sweeps_dirty(self) -> bool:
        with self.lock:
            dirty, self._sweeps_dirty = self._sweeps_dirty, False
            return dirty

    def node_ready(self, name: str) -> bool | None:
        """None: the node is gone."""
        node = self.nodes.get(name)
        if node is None:
            return None
        return bool(node["status"].get("ready") == "True")
