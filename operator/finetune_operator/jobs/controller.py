"""The scheduling cycle: the thin shell around the pure cores.

Watches (``cache.py``) keep an in-memory view of jobs, our pods, nodes, quotas, priority
classes and per-node GPU usage; a change the operator reads marks the jobs it concerns dirty and
wakes the cycle. One cycle (leader only, debounced by ``min_cycle_interval_seconds``):

1. ``decide()`` runs the pure admission policy over the cached view (no API reads);
2. ``plan()`` (the pure state machine) runs for the jobs that are dirty, whose decision changed,
   or whose timer is due (retry, pods-ready timeout, deadline, a coalesced write);
3. the plans' writes run concurrently, at most ``max_concurrent_writes`` in flight, each job's
   own writes in order (status first, then children, deletions, events). A status is written
   only when ``writes.classify`` says a user-visible field changed; progress and queue text
   are coalesced. Writes carry the job's resourceVersion, and a leader whose Lease is about to
   lapse stops writing before another can start (fencing).

The Lease is renewed on its own timer, never per cycle.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from finetune_api.job import FineTuneJob
from finetune_api.status import FineTuneJobStatus
from finetune_api.times import parse_time, rfc3339
from finetune_operator import metrics
from finetune_operator.jobs import ownership
from finetune_operator.jobs.build import build_children
from finetune_operator.jobs.build.pvc import is_own_claim
from finetune_operator.jobs.decide import decide, policy_error, problem
from finetune_operator.jobs.pods import (
    INVALID_DATA,
    attempt_of,
    owner_uid,
    rank_of,
    set_invalid_data,
    terminated_message,
)
from finetune_operator.jobs.reconcile import Ctx, JobDecision, Plan, due_at, plan, wants_admission
from finetune_operator.jobs.writes import Change, classify, merge_patch
from finetune_operator.kube import cache
from finetune_operator.kube import client as k8s
from finetune_operator.kube.client import Kube
from finetune_operator.kube.intern import intern
from finetune_operator.settings import OperatorSettings
from finetune_operator.sweep.runner import SweepRunner

log = logging.getLogger("finetune_operator")
LEASE_NAME = "finetune-operator-leader"
FENCE_MARGIN_SECONDS = 2.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    raw_meta: dict | None = None
    failed: bool = False
    sweep_body: dict | None = None  # a sweep's trial: the body the sweep planner reads

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobEntry) and (self.uid, self.rv) == (other.uid, other.rv)

    def __hash__(self) -> int:
        return hash((self.uid, self.rv))


def job_entry(obj: dict) -> JobEntry:
    meta = obj.get("metadata") or {}
    uid, rv = str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")
    sweep = None
    if any(r.get("kind") == "FineTuneSweep" for r in meta.get("ownerReferences") or []):
        sweep = {"metadata": {k: v for k, v in meta.items() if k != "managedFields"},
                 "spec": obj.get("spec") or {}, "status": obj.get("status") or {}}
    try:
        job = FineTuneJob.from_body(obj)
        job = job.model_copy(update={"spec": intern(job.spec)})  # shared between equal specs
        return JobEntry(uid, rv, job, sweep_body=sweep)
    except (ValidationError, KeyError, TypeError) as e:
        msg = parse_error(e) if isinstance(e, ValidationError) else f"malformed object: {e}"
        small = {k: meta.get(k) for k in ("name", "namespace", "uid")}
        phase = (obj.get("status") or {}).get("phase")
        return JobEntry(uid, rv, None, msg, small, phase == "Failed")


def _uid_key(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("uid") or cache.object_key(obj))


class Controller:
    def __init__(self, kube: Kube, settings: OperatorSettings, namespace: str | None = None,
                 identity: str | None = None) -> None:
        self.kube, self.settings = kube, settings
        kube.fence = self.may_write  # every write is checked right before it is sent
        self.lease_namespace = namespace or os.environ.get("POD_NAMESPACE", "default")
        # stable across restarts of the same pod, so a restarted leader re-acquires at once
        self.identity = identity or os.environ.get("POD_NAME") or socket.gethostname()
        self.leader = False
        self.lease_valid_until = 0.0          # monotonic; writes stop before this
        self.last_cycle: float | None = None  # monotonic end of the last completed cycle
        self.cycles = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._capacity_changed = True
        self._pods_by_job: dict[str, dict[str, dict]] = {}
        # pods naming a job uid not (yet) in the jobs cache: checked when the job arrives
        self._pods_waiting: dict[str, dict[str, dict]] = {}
        self._warned_pods: set[str] = set()  # impostor pods already given their Event
        # job uid -> (attempt, newest progress report): the trainer's last report (right
        # after its SIGTERM save) may land just before its pod disappears
        self.reports: dict[str, tuple[int, dict[str, Any]]] = {}
        self._last_decision: dict[str, JobDecision] = {}
        self._due: dict[str, float] = {}            # job uid -> epoch seconds
        self._last_write: dict[tuple[str, Change], float] = {}
        self._create_errors: dict[str, tuple[int, str]] = {}
        self._failures: dict[str, int] = {}          # consecutive execution errors per job
        self._sweep_retry_at = 0.0
        # jobs whose data a per-job step could not process: uid -> (step, problem); after a
        # step of the plan, the job sits out of the admission policy until it plans again
        self._invalid: dict[str, tuple[str, str]] = {}
        self._metric_errors: dict[str, str] = {}  # recording a job's metrics failed: logged once
        self.queue_view: dict[str, list[dict[str, Any]]] = {}
        self.jobs = cache.Store("jobs", self._changed)
        self.pods = cache.Store("pods", self._changed)
        self.nodes = cache.Store("nodes", self._changed)
        self.quotas = cache.Store("quotas", self._changed)
        self.classes = cache.Store("priorityclasses", self._changed)
        self.usage = cache.Store("usage", self._changed)
        self.sweeps = cache.Store("sweeps", self._changed)
        self._sweeps_dirty = True
        self._sweep_runner = SweepRunner(kube)
        self._threads: list[threading.Thread] = []
        # set by __main__ once the report channel runs: the trainer config's `report` section,
        # and the strict termination-message check that counts/logs a bad one once per pod
        self.report_config: Any = None
        self.on_termination: Any = lambda pod_key, raw: None
        self.reflectors: list[cache.Reflector] = []
        self._pool = ThreadPoolExecutor(settings.max_concurrent_writes,
                                        thread_name_prefix="write")
        self._background = ThreadPoolExecutor(max(1, settings.max_concurrent_writes // 2),
                                              thread_name_prefix="write-status")
        self._inflight: set[str] = set()  # jobs with a write in flight
        # queue-text writes of all waiting jobs together (a token bucket, 10 s of burst)
        self._queue_tokens = settings.queue_status_writes_per_second * 10
        self._queue_tokens_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        s = self.settings
        nss: list[str | None] = list(s.namespaces) or [None]
        running = "status.phase!=Succeeded,status.phase!=Failed"
        feeds: list[tuple[cache.Store, str, str | None, str | None, Any, Any]] = []
        for ns in nss:
            feeds += [(self.jobs, k8s.collection_path(k8s.JOBS_PATH, ns), None, None,
                       job_entry, _uid_key),
                      (self.pods, k8s.collection_path(k8s.PODS_PATH, ns), k8s.MANAGED_BY, None,
                       cache.slim_pod, _uid_key),
                      (self.quotas, k8s.collection_path(k8s.QUOTAS_PATH, ns), None, None,
                       cache.slim_quota, cache.object_key)]
        feeds += [(self.nodes, k8s.NODES_PATH, None, None, cache.slim_node, cache.object_key),
                  (self.classes, k8s.CLASSES_PATH, None, None, cache.priority_value,
                   cache.object_key),
                  # every running pod's GPU use, ours or not, kept as (node, requests) only
                  (self.usage, k8s.PODS_PATH, None, running, cache.slim_usage, _uid_key)]
        if s.sweeps:
            feeds += [(self.sweeps, k8s.collection_path(k8s.SWEEPS_PATH, ns), None, None,
                       cache.slim_object, _uid_key) for ns in nss]
        for store, path, labels, fields, transform, key in feeds:
            r = cache.Reflector(self.kube, cache.Source(path, labels, fields), store, transform,
                                self._stop, key=key)
            self.reflectors.append(r)
            r.start()
        for target, name in ((self._lease_loop, "lease"), (self._run, "cycle")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._background.shutdown(wait=True, cancel_futures=True)
        if self.leader:  # hand over at once instead of letting the lease expire (upgrades)
            try:
                self.kube.release_lease(self.lease_namespace, LEASE_NAME, self.identity)
                log.warning("released leadership (%s/%s)", self.lease_namespace, LEASE_NAME)
            except (ApiException, OSError) as e:
                log.warning("could not release the leader lease: %s", e)
            self.leader = False

    def wake(self) -> None:
        self._wake.set()

    def healthy(self) -> bool:
        """False when this leader has completed no cycle for ``health_stale_cycles`` periods."""
        if not self.leader:
            return True
        last = self.last_cycle
        limit = self.settings.health_stale_cycles * self.settings.admission_interval_seconds
        started = self._started_leading or time.monotonic()
        return time.monotonic() - (last or started) < limit + 30.0

    _started_leading: float | None = None

    def ready(self) -> bool:
        """The watch caches are filled (a standby is ready too: it can take over at once)."""
        return all(r.store.synced.is_set() for r in self.reflectors) and bool(self.reflectors)

    # ------------------------------------------------------------------ cache -> dirty

    def _changed(self, kind: str, key: str, old: Any, new: Any) -> None:
        impostors: list[dict] = []
        with self._lock:
            if kind == "sweeps" or getattr(new or old, "sweep_body", None) is not None:
                self._sweeps_dirty = True
            if kind == "jobs":
                self._dirty.add(key)
                if new is None:
                    self._forget(key, old)
                elif new.job is not None:  # the pods that named it before it was cached
                    for pod_key, pod in self._pods_waiting.pop(key, {}).items():
                        impostors += self._index_pod(pod_key, None, pod)
            elif kind == "pods":
                impostors = self._index_pod(key, old, new)
            else:
                self._capacity_changed = True
        self._wake.set()
        for pod in impostors:
            self._warn_impostor(pod)

    def _index_pod(self, key: str, old: dict | None, new: dict | None) -> list[dict]:
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
        impostors: list[dict] = []
        if new is None or uid is None:
            self._warned_pods.discard(key)
        elif entry is None or entry.job is None:
            self._pods_waiting.setdefault(uid, {})[key] = new  # decided once the job is cached
        elif ownership.belongs(new, entry.job):
            self._pods_by_job.setdefault(uid, {})[key] = new
            counted = True
            raw = terminated_message(new)
            if raw and raw != terminated_message(old or {"status": {}}):
                self.on_termination(f"{new['metadata'].get('namespace')}/"
                                    f"{new['metadata']['name']}", raw)
        else:
            impostors.append(new)
        if counted:
            self._dirty.update(uids)
        return impostors

    def _warn_impostor(self, pod: dict) -> None:
        """A Warning Event on the impostor in its own namespace, once per pod (leader only),
        naming no job: the job it names may be another tenant's."""
        meta = pod["metadata"]
        with self._lock:
            if not self.may_write() or meta.get("uid") in self._warned_pods:
                return
            self._warned_pods.add(meta.get("uid"))
        log.warning("pod %s/%s is not a trainer pod this operator created for the job its "
                    "owner reference names; ignored", meta.get("namespace"), meta["name"])
        self._background.submit(self.kube.event, pod, "Warning", ownership.IMPOSTOR_REASON,
                                ownership.IMPOSTOR_MESSAGE, _now(), kind="Pod")

    def on_report(self, who: Any, report: Any) -> None:
        """The report channel's callback (reports/channel.py; server threads): a report from
        an authenticated pod, already parsed strictly. Only the rank-0 trainer of the current
        attempt of a job this operator manages is heard; anyone else gets 403 (counted)."""
        from finetune_operator.reports.model import BadReport

        pod = self.pods.get(who.uid)
        uid = owner_uid(pod) if pod is not None else None
        entry = self.jobs.get(uid) if uid else None
        if pod is None or uid is None or rank_of(pod) != 0 or entry is None \
                or entry.job is None or not ownership.speaks_for(pod, entry.job):
            raise BadReport("unknown-pod", f"{who.key} is not the rank-0 trainer of the current "
                            "attempt of a managed job")
        self.accept_report(uid, attempt_of(pod), report.to_wire())

    def accept_report(self, uid: str, attempt: int, report: dict[str, Any]) -> None:
        """A progress report from the report channel (already parsed and authenticated)."""
        with self._lock:
            old = self.reports.get(uid)
            if old is None or old[0] < attempt or (
                    old[0] == attempt and report.get("step", 0) >= old[1].get("step", 0)):
                self.reports[uid] = (attempt, report)
                self._dirty.add(uid)
        self._wake.set()

    def _forget(self, uid: str, old: Any) -> None:
        self.reports.pop(uid, None)
        self._last_decision.pop(uid, None)
        self._due.pop(uid, None)
        self._create_errors.pop(uid, None)
        self._invalid.pop(uid, None)
        self._metric_errors.pop(uid, None)
        self._failures.pop(uid, None)
        for ch in Change:
            self._last_write.pop((uid, ch), None)
        job = getattr(old, "job", None)
        if job is not None:
            metrics.forget_job(job.metadata.namespace, job.metadata.name)

    # ------------------------------------------------------------------ lease (own timer)

    def _lease_loop(self) -> None:
        s, lease = self.settings, None
        while not self._stop.is_set():
            t = time.monotonic()
            # a Lease that lapsed by our own clock (this process was paused, a renewal timed
            # out) is read again before any write: another replica may hold it by now
            known = lease if self.leader and t < self.lease_valid_until else None
            try:
                held, lease = self.kube.hold_lease(
                    self.lease_namespace, LEASE_NAME, self.identity, s.lease_duration_seconds,
                    _now(), known=known)
                if held:
                    self.lease_valid_until = t + s.lease_duration_seconds
            except Exception as e:  # timeout, API error: the thread lives on, the Lease decides
                log.warning("leader lease: %s: %s; retrying", type(e).__name__, e)
                # a failed renewal: still ours until the Lease runs out (may_write stops before)
                held, lease = self.leader and time.monotonic() < self.lease_valid_until, None
            if held != self.leader:
                log.warning("%s leadership (%s/%s as %s)", "acquired" if held else "lost",
                            self.lease_namespace, LEASE_NAME, self.identity)
                self._started_leading = time.monotonic() if held else None
                with self._lock:
                    self._capacity_changed = True
                self._wake.set()
            self.leader = held
            self._stop.wait(s.lease_renew_seconds if held else s.lease_retry_seconds)

    def may_write(self) -> bool:
        """Fencing: only while the Lease we last renewed cannot have lapsed."""
        return self.leader and time.monotonic() < self.lease_valid_until - FENCE_MARGIN_SECONDS

    # ------------------------------------------------------------------ the cycle

    def _run(self) -> None:
        s = self.settings
        stores = [self.jobs, self.pods, self.nodes, self.quotas, self.classes, self.usage]
        while not self._stop.is_set():
            if cache.wait_synced(stores, 1.0):
                break
        last_start = 0.0
        while not self._stop.is_set():
            timeout = s.admission_interval_seconds
            with self._lock:
                first_due = min(self._due.values(), default=None)
            if first_due is not None:
                timeout = max(0.0, min(timeout, first_due - time.time()))
            self._wake.wait(timeout)
            self._wake.clear()
            pause = last_start + s.min_cycle_interval_seconds - time.monotonic()
            if pause > 0:  # debounce: a burst of watch events makes one cycle
                self._stop.wait(pause)
            if self._stop.is_set() or not self.may_write():
                continue
            last_start = time.monotonic()
            try:
                self.cycle(_now())
                self.last_cycle = time.monotonic()
                self.cycles += 1
            except Exception:  # one bad cycle must not kill the loop; the next one retries
                metrics.count_cycle_error("cycle")
                log.exception("scheduling cycle failed; retrying")
            metrics.observe_cycle(time.monotonic() - last_start)

    def cycle(self, now: dt.datetime) -> None:
        s = self.settings
        with self._lock:
            inflight = set(self._inflight)
            dirty, self._dirty = self._dirty - inflight, self._dirty & inflight
            capacity, self._capacity_changed = self._capacity_changed, False
            pods_by_uid = {uid: list(p.values()) for uid, p in self._pods_by_job.items()}
            reports = dict(self.reports)
        entries = self.jobs.values()
        with self._lock:  # a job whose plan failed holds no decision that others wait on
            invalid = dict(self._invalid)
        held = {uid for uid, (step, _) in invalid.items() if step in HELD_STEPS}
        jobs = [e.job for e in entries if e.job is not None and e.uid not in held]
        classes = dict(self.classes.items())
        ours = [p for ps in pods_by_uid.values() for p in ps]
        decisions = decide(jobs, pods_by_uid, classes, s, self.nodes.values(),
                           self.usage.values() + ours, self.quotas.values(), now)
        epoch = now.timestamp()
        todo = set(dirty)
        for uid, d in decisions.by_uid.items():
            if self._last_decision.get(uid) != d:
                todo.add(uid)
        with self._lock:
            for uid in [u for u, t in self._due.items() if t <= epoch and u not in inflight]:
                todo.add(uid)
                del self._due[uid]
        todo -= inflight  # planned again once its write landed (it stays dirty until then)
        if capacity and self.cycles == 0:
            todo |= {e.uid for e in entries}
        work: list[tuple[FineTuneJob, Plan, Change]] = []
        samples: list[dict[str, Any]] = []
        for e in entries:
            if e.job is None:
                if e.uid in todo and not e.failed and self.may_write():
                    self._pool.submit(self._reject, e, now)
                continue
            job, uid = e.job, e.uid
            try:  # every per-job step: a job whose data fails one is left out of this cycle
                if (bad := decisions.invalid.get(uid)) is not None:
                    raise JobDataError(*bad)
                pl, change, sample = self._job_steps(
                    job, decisions.get(uid, JobDecision()) if uid in todo else None,
                    pods_by_uid.get(uid, []), reports.get(uid), classes, now)
            except JobDataError as bad:
                if (left := self._left_out(job, bad, now)) is not None:
                    work.append(left)
                continue
            if pl is not None:
                work.append((job, pl, change))
            if uid in invalid and (pl is not None or uid not in held):  # processed again
                with self._lock:
                    self._invalid.pop(uid, None)
                    if pl is None:  # planned next cycle: its InvalidData condition clears
                        self._dirty.add(uid)
                        self._wake.set()
            samples.append(sample)
        metrics.observe_queue({"jobs": samples, "quotas": decisions.quotas})
        self.queue_view = decisions.queue_view
        self._execute_all(work, now)
        self._sync_sweeps(self.jobs.values(), now)  # after this cycle's writes landed

    def _sync_sweeps(self, entries: list[JobEntry], now: dt.datetime) -> None:
        """Sweeps create their trials as ordinary FineTuneJobs (sweep/): only when a sweep or
        one of its trials changed."""
        if time.monotonic() < self._sweep_retry_at:
            return
        with self._lock:
            dirty, self._sweeps_dirty = self._sweeps_dirty, False
        sweeps = self.sweeps.values()
        if not dirty:
            return
        if not sweeps:  # the last sweep is gone: so are its series
            metrics.observe_sweeps([])
            return
        trials = [e.sweep_body for e in entries if e.sweep_body is not None]
        try:
            self._sweep_runner.sync(sweeps, trials, now)
        except (ApiException, OSError) as e:
            text = _api_message(e) if isinstance(e, ApiException) else str(e)
            log.warning("sweeps: %s; retrying in 10s", text or e)
            self._sweep_retry_at = time.monotonic() + 10.0
            with self._lock:
                self._sweeps_dirty = True

    def _timing(self) -> dict[str, float]:
        s = self.settings
        out = {"pods_ready_timeout": s.pods_ready_timeout_seconds,
               "force_delete_margin": s.force_delete_margin_seconds,
               "unschedulable_grace": s.unschedulable_grace_seconds}
        if s.ttl_seconds_after_finished is not None:  # absent: finished jobs are kept
            out["ttl"] = float(s.ttl_seconds_after_finished)
        return out

    def _schedule(self, uid: str, at: float) -> None:
        with self._lock:
            cur = self._due.get(uid)
            if cur is None or at < cur:
                self._due[uid] = at

    def _retry_later(self, uid: str) -> None:
        """After an API error or an exception for one job: plan it again with backoff
        (0.5 s doubling to 60 s), not every cycle; others are not affected."""
        n = self._failures.get(uid, 0)
        self._failures[uid] = n + 1
        self._schedule(uid, time.time() + min(60.0, 0.5 * 2 ** n))
        self._wake.set()

    def _job_steps(self, job: FineTuneJob, decision: JobDecision | None, pods: list[dict],
                   seen: tuple[int, dict[str, Any]] | None, classes: dict[str, int],
                   now: dt.datetime) -> tuple[Plan | None, Change, dict[str, Any]]:
        """One job's part of the cycle (a plan only when ``decision`` is given: the job is
        due): its plan, which write it needs, its next timer, its metrics sample. Raises
        JobDataError naming the step that failed; nothing of the job is kept then."""
        step, pl, change, due, status = "plan", None, Change.NONE, None, job.status
        try:
            if decision is not None:
                self._last_decision[job.metadata.uid] = decision
                pl = self._plan(job, pods, decision, seen, classes, now)
                set_invalid_data(pl.status, None, now, job.metadata.generation)
                step = "write"
                change = self._write_kind(job, pl, now.timestamp())
                step = "deadline"
                due = due_at(job, pl.status, pods, self._timing(), now)
                status = pl.status
            step = "metrics"
            sample = _sample(job, status)
        except Exception as e:
            raise JobDataError(step, problem(step, e)) from e
        if due is not None:
            self._schedule(job.metadata.uid, due.timestamp())
        return pl, change, sample

    def _left_out(self, job: FineTuneJob, bad: JobDataError, now: dt.datetime,
                  ) -> tuple[FineTuneJob, Plan, Change] | None:
        """A job whose data a step could not process: counted and logged once per problem,
        and its InvalidData condition with a Warning Event (written only when the stored
        condition differs: once per problem, also across restarts)."""
        uid, step, text = job.metadata.uid, bad.step, bad.problem
        with self._lock:
            new = self._invalid.get(uid) != (step, text)
            self._invalid[uid] = (step, text)
            self._last_decision.pop(uid, None)  # decided afresh once it can be
        if new:
            metrics.count_invalid_data(job.metadata.namespace, step)
            metrics.count_cycle_error("job")
            log.error("FineTuneJob %s: %s; left out of scheduling until it changes, every "
                      "other job goes on", job.key, text, exc_info=bad.__cause__)
        try:
            st = job.status.model_copy(deep=True)
            set_invalid_data(st, text, now, job.metadata.generation)
            said = next(c.message for c in st.conditions if c.type == INVALID_DATA)
            change = classify(job.status.to_wire(), st.to_wire())
        except Exception:  # not even the condition can be written: the log says it
            if new:
                log.exception("FineTuneJob %s: could not write its InvalidData condition",
                              job.key)
            return None
        if not change:
            return None
        return job, Plan(status=st, events=[("Warning", INVALID_DATA, said)]), change

    def _plan(self, job: FineTuneJob, pods: list[dict], decision: JobDecision,
              seen: tuple[int, dict[str, Any]] | None, classes: dict[str, int],
              now: dt.datetime) -> Plan:
        s, uid = self.settings, job.metadata.uid
        cls, err = policy_error(job, s, classes)
        check = wants_admission(job, now) or job.status.phase is None
        create_error = self._create_errors.get(uid)
        ctx = Ctx(now=now, backoff_seconds=s.backoff_seconds(job.status.failures + 1),
                  priority_class=cls, policy_error=err if check else None,
                  watched_report=seen[1] if seen and seen[0] == job.status.attempt else None,
                  create_error=create_error[1] if create_error
                  and create_error[0] == job.status.attempt else None,
                  node_ready=self._node_ready,
                  pods_ready_timeout_seconds=s.pods_ready_timeout_seconds,
                  max_start_requeues=s.max_pods_ready_requeues,
                  force_delete_margin_seconds=s.force_delete_margin_seconds,
                  unschedulable_grace_seconds=s.unschedulable_grace_seconds,
                  max_gpus_per_node=s.max_gpus_per_node,
                  ttl_seconds_after_finished=s.ttl_seconds_after_finished)
        return plan(job, pods, decision, ctx)

    def _node_ready(self, name: str) -> bool | None:
        node = self.nodes.get(name)
        if node is None:
            return None  # gone
        return bool(node["status"].get("ready") == "True")

    def _write_kind(self, job: FineTuneJob, pl: Plan, epoch: float) -> Change:
        """MATERIAL/NONE pass through; coalesced kinds wait for their interval (a timer)."""
        s, uid = self.settings, job.metadata.uid
        change = classify(job.status.to_wire(), pl.status.to_wire())
        if change in (Change.NONE, Change.MATERIAL):
            return change
        interval = (s.progress_write_interval_seconds if change == Change.PROGRESS
                    else s.queue_status_interval_seconds)
        last = self._last_write.get((uid, change))
        if last is not None and epoch - last < interval:
            self._schedule(uid, last + interval)
            return Change.NONE
        if change == Change.QUEUE:  # and all waiting jobs together: a token bucket
            rate = s.queue_status_writes_per_second
            self._queue_tokens = min(rate * 10, self._queue_tokens
                                     + (epoch - self._queue_tokens_at) * rate)
            self._queue_tokens_at = epoch
            if self._queue_tokens < 1:
                self._schedule(uid, epoch + max(1.0, 1 / rate) + (hash(uid) % 100) / 100)
                return Change.NONE
            self._queue_tokens -= 1
        return change

    # ------------------------------------------------------------------ execute

    def _execute_all(self, work: list[tuple[FineTuneJob, Plan, Change]],
                     now: dt.datetime) -> None:
        """Writes that change who holds GPUs (admissions, stops, deletions, phase changes of
        running jobs) run now, and the cycle waits for them: the next cycle decides on their
        result. Status-only writes of waiting jobs (their first Queued status, a new wait
        reason) go to a background pool and do not hold the next cycle back; a job with a
        write in flight is not planned again until it lands."""
        futures = []
        for job, pl, change in work:
            if not (change or pl.create_attempt or pl.delete_pods or pl.force_delete_pods
                    or pl.delete_job):
                self._metrics(job, pl)
                continue
            uid = job.metadata.uid
            background = (pl.status.phase == "Queued" and not pl.create_attempt
                          and not pl.delete_pods and not pl.force_delete_pods)
            with self._lock:
                self._inflight.add(uid)
            pool = self._background if background else self._pool
            fut = pool.submit(self._execute_guarded, job, pl, change, now)
            fut.add_done_callback(functools.partial(self._landed, uid))
            if not background:
                futures.append(fut)
        for f in futures:
            f.result()

    def _landed(self, uid: str, _done: object = None) -> None:
        with self._lock:
            self._inflight.discard(uid)
            again = uid in self._dirty
        if again:
            self._wake.set()

    def _execute_guarded(self, job: FineTuneJob, pl: Plan, change: Change,
                         now: dt.datetime) -> None:
        if not self.may_write():
            with self._lock:
                self._dirty.add(job.metadata.uid)
            return
        uid = job.metadata.uid
        try:
            self.execute(job, pl, change, now)
            self._failures.pop(uid, None)
        except ApiException as e:  # one job's trouble must not stall the others
            if e.status == 409:  # a newer object is on its way through the watch
                with self._lock:
                    self._dirty.add(uid)
                return
            self._retry_later(uid)
            log.warning("FineTuneJob %s: %s %s; retrying with backoff", job.key, e.status,
                        _api_message(e) or e.reason)
        except k8s.Fenced:  # the Lease lapsed mid-plan: whoever leads next plans it again
            with self._lock:
                self._dirty.add(uid)
        except OSError as e:
            self._retry_later(uid)
            log.warning("FineTuneJob %s: %s; retrying with backoff", job.key, e)
        except Exception:
            metrics.count_cycle_error("job")
            self._retry_later(uid)
            if self._failures.get(uid) == 1:
                log.exception("FineTuneJob %s: executing the plan failed; retrying with "
                              "backoff", job.key)

    def execute(self, job: FineTuneJob, pl: Plan, change: Change, now: dt.datetime) -> None:
        k, ns, name, uid = self.kube, job.metadata.namespace, job.metadata.name, job.metadata.uid
        body = {"metadata": {"name": name, "namespace": ns, "uid": uid}}
        if change:
            old, new = job.status.to_wire(), pl.status.to_wire()
            entry = self.jobs.get(uid)
            res = k.patch_job_status(ns, name, merge_patch(old, new),
                                     entry.rv if entry is not None else None)
            if res is None:
                return  # deleted meanwhile
            written = job_entry(res)  # see our own write before the watch does; no replan:
            self.jobs.put(uid, written, notify=False)  # this status is what was planned
            if written.sweep_body is not None:
                with self._lock:
                    self._sweeps_dirty = True
            self._last_write[(uid, change)] = now.timestamp()
            if change == Change.MATERIAL:  # a material write carries progress and queue too
                self._last_write[(uid, Change.PROGRESS)] = now.timestamp()
                self._last_write[(uid, Change.QUEUE)] = now.timestamp()
            failpoint("after-status-patch", pl.status.phase)
        if pl.create_attempt is not None:
            self._create_children(job, pl, body, now)
        for pod in pl.delete_pods:
            k.delete_pod(ns, pod["metadata"]["name"], pod["metadata"].get("uid"))
        for pod in pl.force_delete_pods:
            log.warning("FineTuneJob %s: force-deleting pod %s stuck terminating on a lost "
                        "node", job.key, pod["metadata"]["name"])
            k.delete_pod(ns, pod["metadata"]["name"], pod["metadata"].get("uid"), 0)
        if pl.delete_job:
            k.delete_job(ns, name, uid)
        for type_, reason, message in pl.events:
            k.event(body, type_, reason, message, now)
        self._metrics(job, pl)

    def _create_children(self, job: FineTuneJob, pl: Plan, body: dict,
                         now: dt.datetime) -> None:
        k, uid, attempt = self.kube, job.metadata.uid, pl.create_attempt
        assert attempt is not None
        ck = pl.status.checkpoint
        children = build_children(job, self.settings, attempt,
                                  pl.status.effective_priority_class,
                                  ck.save_seconds if ck else None, report=self.report_config,
                                  placement=pl.placement)
        for obj in children.all():
            try:
                got = (k.create_or_patch(obj) if obj["kind"] == "Service"
                       else k.create_or_get(obj))
            except ApiException as e:
                if e.status in (403, 400, 422, 404):  # quota, webhook, policy: tell the user
                    msg = (f"could not create {obj['kind']} {obj['metadata']['name']}: "
                           f"{_api_message(e) or e.reason}")
                    self._child_problem(job, attempt, "PodCreateFailed", msg, body, now)
                    return
                raise
            owners = {r.get("uid") for r in
                      (got.get("metadata") or {}).get("ownerReferences") or []}
            ours = (is_own_claim(got, job) if obj["kind"] == "PersistentVolumeClaim"
                    else uid in owners)  # a retained claim (whenDeleted Retain) has no owner
            if not ours:  # never adopt: someone else's object has this name
                msg = (f"{obj['kind']} {obj['metadata']['name']} already exists and is not "
                       "owned by this job; it is left untouched: delete or rename it, or "
                       "rename the job")
                self._child_problem(job, attempt, "ChildConflict", msg, body, now)
                return
            if obj["kind"] == "Pod":
                self.pods.put(_uid_key(got), cache.slim_pod(got))
        with self._lock:
            self._create_errors.pop(uid, None)

    def _child_problem(self, job: FineTuneJob, attempt: int, reason: str, msg: str,
                       body: dict, now: dt.datetime) -> None:
        uid = job.metadata.uid
        with self._lock:
            first = self._create_errors.get(uid) != (attempt, f"{reason}: {msg}")
            self._create_errors[uid] = (attempt, f"{reason}: {msg}")
            self._dirty.add(uid)
        if first:
            log.warning("FineTuneJob %s: %s: %s", job.key, reason, msg)
        self._wake.set()

    def _reject(self, e: JobEntry, now: dt.datetime) -> None:
        """An object the models cannot read fails once, naming the fields."""
        meta = e.raw_meta or {}
        msg = f"FineTuneJob {meta.get('namespace')}/{meta.get('name')}: invalid spec: {e.error}"
        log.error(msg)
        try:
            self.kube.patch_job_status(str(meta.get("namespace")), str(meta.get("name")), {
                "phase": "Failed", "conditions": [{
                    "type": "Failed", "status": "True", "reason": "InvalidSpec",
                    "message": msg, "lastTransitionTime": rfc3339(now)}]})
            self.kube.event({"metadata": meta}, "Warning", "InvalidSpec", msg, now)
        except (ApiException, OSError) as ex:
            log.warning("could not mark %s Failed: %s", meta.get("name"), ex)

    def _metrics(self, job: FineTuneJob, pl: Plan) -> None:
        """Recorded after the job's writes (and for the no-write plans, in the cycle): a job
        whose metrics cannot be recorded is counted and logged once; its writes stand."""
        try:
            self._record_metrics(job, pl)
        except Exception as e:
            text, uid = problem("metrics", e), job.metadata.uid
            with self._lock:
                new = self._metric_errors.get(uid) != text
                self._metric_errors[uid] = text
            if new:
                metrics.count_invalid_data(job.metadata.namespace, "metrics")
                log.error("FineTuneJob %s: %s; its other metrics and writes go on", job.key,
                          text)

    def _record_metrics(self, job: FineTuneJob, pl: Plan) -> None:
        ns, st = job.metadata.namespace, pl.status
        cls = st.effective_priority_class or ""
        for kind, data in pl.metrics:
            if kind == "admission":
                metrics.observe_admission(ns, cls, data["wait"])
            elif kind == "preemption":
                metrics.count_preemption(ns, cls, data["reason"])
            elif kind == "failure":
                metrics.count_failure(ns, data["reason"])
            elif kind == "completion":
                metrics.count_completion(ns)
            elif kind == "lost":
                prog = st.progress
                left = (prog.total_steps or 0) - prog.step if prog else 0
                per_step = prog.eta_seconds / left if prog and prog.eta_seconds and left > 0 \
                    else 0.0
                metrics.count_lost_work(ns, data["steps"], data["steps"] * per_step
                                        * job.spec.resources.total_gpus)
        if st.progress is not None and st.phase in ("Running", "Admitted", "Preempting"):
            report = st.progress.to_wire()
            if st.checkpoint:
                report["checkpoint"] = st.checkpoint.to_wire()
            started = parse_time(st.start_time or st.admitted_at)
            metrics.set_job_progress(ns, job.metadata.name, report,
                                     checkpoint_interval_steps=job.spec.checkpoint.interval_steps,
                                     started_at=started.timestamp() if started else None)
        elif st.phase in ("Succeeded", "Failed"):
            metrics.forget_job(ns, job.metadata.name)


class JobDataError(Exception):
    """A per-job step of the cycle could not process this job's data."""

    def __init__(self, step: str, problem: str) -> None:
        super().__init__(problem)
        self.step, self.problem = step, problem


# steps after the admission policy: a job failing one sits out of it until it plans again
# (the policy and the metrics sample see every job every cycle: their problems clear there)
HELD_STEPS = frozenset({"plan", "write", "deadline"})


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message", ""))[:300]
    except (ValueError, AttributeError, TypeError):
        return str(e.body)[:300]


def failpoint(where: str, phase: str | None) -> None:
    """Crash-test hook: FINETUNE_FAILPOINT=after-status-patch:Admitted makes the process die
    right after patching a status into that phase (before creating/deleting children), so the
    restart-safety tests can stop the operator at exactly that instant. With a ``:stop`` suffix
    the process SIGSTOPs itself there instead, once (the fencing test SIGCONTs it after another
    replica took over). Unset in production."""
    spec = os.environ.get("FINETUNE_FAILPOINT")
    if spec and spec == f"{where}:{phase}":
        log.error("failpoint %s reached: exiting", spec)
        os._exit(137)
    if spec and spec == f"{where}:{phase}:stop":
        log.error("failpoint %s reached: stopping (SIGSTOP)", spec)
        del os.environ["FINETUNE_FAILPOINT"]
        os.kill(os.getpid(), signal.SIGSTOP)


def _sample(job: FineTuneJob, st: FineTuneJobStatus) -> dict[str, Any]:
    phase = st.phase or "Queued"
    since = parse_time(st.queued_since) if phase == "Queued" else None
    return {"namespace": job.metadata.namespace, "name": job.metadata.name, "phase": phase,
            "priority_class": st.effective_priority_class or "",
            "gpus": job.spec.resources.total_gpus,
            "queued_since": since.timestamp() if since else None,
            "eval": {k: v for k, v in st.output.metrics.items() if k in metrics.EVAL_METRICS}
            if st.output else {}}
