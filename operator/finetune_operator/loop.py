"""The reconcile loop: snapshot -> admit() -> plan() per job -> execute. The thin shell.

One pass lists what it needs (jobs, managed pods, active pods, quotas, nodes, priority classes),
asks the pure admission policy for decisions, asks the pure state machine for a Plan per job,
and executes the plans through k8s.py: status patch first, then creations, then deletions.
It runs on the leader only (a coordination Lease), every `admissionIntervalSeconds` or sooner
when a watch event wakes it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from . import metrics
from .api.job import FineTuneJob
from .api.status import FineTuneJobStatus
from .build import build_children
from .k8s import Kube
from .reconcile import Ctx, JobDecision, Plan, plan, wants_admission
from .settings import OperatorSettings
from .snapshot import decide, policy_error
from .status import attempt_of, iso, owner_uid, parse_time, read_progress

log = logging.getLogger("finetune_operator")
LEASE_NAME = "finetune-operator-leader"
LEASE_SECONDS = 15


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class Controller:
    def __init__(self, kube: Kube, settings: OperatorSettings, namespace: str | None = None,
                 identity: str | None = None) -> None:
        self.kube, self.settings = kube, settings
        self.lease_namespace = namespace or os.environ.get("POD_NAMESPACE", "default")
        # stable across restarts of the same pod, so a restarted leader re-acquires at once
        self.identity = identity or os.environ.get("POD_NAME") or socket.gethostname()
        self.leader = False
        self.last_tick: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        # job uid -> (attempt, newest progress report) from the pod watch
        self.watched_progress: dict[str, tuple[int, dict[str, Any]]] = {}
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self.leader:  # hand over at once instead of letting the lease expire (upgrades)
            try:
                self.kube.release_lease(self.lease_namespace, LEASE_NAME, self.identity)
                log.warning("released leadership (%s/%s)", self.lease_namespace, LEASE_NAME)
            except ApiException as e:
                log.warning("could not release the leader lease: %s", e.reason)
            self.leader = False

    def wake(self) -> None:
        self._wake.set()

    def remember_progress(self, pod: dict) -> None:
        """Keep the newest progress report per job from pod watch events (see Ctx)."""
        report, uid = read_progress([pod]), owner_uid(pod)
        if report is None or uid is None:
            return
        attempt = attempt_of(pod)
        old = self.watched_progress.get(uid)
        if old is None or old[0] < attempt or (
                old[0] == attempt and report.get("step", 0) >= old[1].get("step", 0)):
            self.watched_progress[uid] = (attempt, report)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._hold_lease():
                    self.tick(_now())
                self.last_tick = time.monotonic()
            except Exception:  # one bad pass must not kill the loop; the next one retries
                log.exception("reconcile pass failed; retrying in %.0fs",
                              self.settings.admission_interval_seconds)
            self._wake.wait(self.settings.admission_interval_seconds)
            self._wake.clear()

    def _hold_lease(self) -> bool:
        held = self.kube.hold_lease(self.lease_namespace, LEASE_NAME, self.identity,
                                    LEASE_SECONDS, _now())
        if held != self.leader:
            log.warning("%s leadership (%s/%s as %s)", "acquired" if held else "lost",
                        self.lease_namespace, LEASE_NAME, self.identity)
        self.leader = held
        return held

    # ------------------------------------------------------------------ one pass

    def tick(self, now: dt.datetime) -> None:
        k, s = self.kube, self.settings
        raw_jobs = k.list_jobs(s.namespaces)
        pods = k.list_managed_pods(s.namespaces)
        jobs: list[FineTuneJob] = []
        for body in raw_jobs:
            try:
                jobs.append(FineTuneJob.from_body(body))
            except ValidationError as e:
                self._reject(body, parse_error(e), now)
        by_uid: dict[str, list[dict]] = {}
        for p in pods:
            if (uid := owner_uid(p)) is not None:
                by_uid.setdefault(uid, []).append(p)
        classes = k.list_priority_classes()
        decisions = decide(jobs, by_uid, classes, s, k.list_nodes(), k.list_active_pods(),
                           k.list_quotas(), now)
        samples = []
        for job in jobs:
            cls, err = policy_error(job, s, classes)
            check = wants_admission(job, now) or job.status.phase is None
            seen = self.watched_progress.get(job.metadata.uid)
            ctx = Ctx(now=now, backoff_seconds=s.backoff_seconds(job.status.failures + 1),
                      priority_class=cls, policy_error=err if check else None,
                      watched_report=seen[1] if seen and seen[0] == job.status.attempt
                      else None)
            pl = plan(job, by_uid.get(job.metadata.uid, []),
                      decisions.get(job.metadata.uid, JobDecision()), ctx)
            samples.append(_sample(job, pl.status))  # the state this pass leaves behind
            try:
                self.execute(job, pl, now)
            except ApiException as e:  # one job's trouble must not stall the others
                log.warning("FineTuneJob %s: %s %s: %s; retrying next pass", job.key, e.status,
                            e.reason, _api_message(e))
        metrics.observe_queue({"jobs": samples, "quotas": decisions.quotas})
        live = {j.metadata.uid for j in jobs}
        for uid in [u for u in self.watched_progress if u not in live]:
            del self.watched_progress[uid]

    def _reject(self, body: dict, message: str, now: dt.datetime) -> None:
        meta = body.get("metadata", {})
        status = body.get("status") or {}
        if status.get("phase") == "Failed":
            return
        msg = f"FineTuneJob {meta.get('namespace')}/{meta.get('name')}: invalid spec: {message}"
        log.error(msg)
        self.kube.patch_job_status(meta["namespace"], meta["name"], {
            "phase": "Failed", "conditions": [{
                "type": "Failed", "status": "True", "reason": "InvalidSpec", "message": msg,
                "lastTransitionTime": iso(now)}]})
        self.kube.event(body, "Warning", "InvalidSpec", msg, now)

    # ------------------------------------------------------------------ execute a plan

    def execute(self, job: FineTuneJob, pl: Plan, now: dt.datetime) -> None:
        k, ns, name = self.kube, job.metadata.namespace, job.metadata.name
        new = pl.status.to_wire()
        old = job.status.to_wire()
        body = {"metadata": {"name": name, "namespace": ns, "uid": job.metadata.uid}}
        if new != old:
            # a merge patch cannot drop keys by omission: send explicit nulls for removed ones
            patch: dict[str, Any] = dict(new)
            for key in old:
                patch.setdefault(key, None)
            k.patch_job_status(ns, name, patch)
            failpoint("after-status-patch", pl.status.phase)
        if pl.create_attempt is not None:
            ck = pl.status.checkpoint
            children = build_children(job, self.settings, pl.create_attempt,
                                      pl.status.effective_priority_class,
                                      ck.save_seconds if ck else None)
            for obj in children.all():
                if obj["kind"] in ("Role", "Service"):
                    k.create_or_patch(obj)
                else:
                    k.create_or_get(obj)
        for pod in pl.delete_pods:
            k.delete_pod(ns, pod["metadata"]["name"], pod["metadata"].get("uid"))
        for type_, reason, message in pl.events:
            k.event(body, type_, reason, message, now)
        self._metrics(job, pl)

    def _metrics(self, job: FineTuneJob, pl: Plan) -> None:
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


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message", ""))[:300]
    except (ValueError, AttributeError):
        return str(e.body)[:300]


def failpoint(where: str, phase: str | None) -> None:
    """Crash-test hook: FINETUNE_FAILPOINT=after-status-patch:Admitted makes the process die
    right after patching a status into that phase (before creating/deleting children), so the
    restart-safety tests can stop the operator at exactly that instant. Unset in production."""
    spec = os.environ.get("FINETUNE_FAILPOINT")
    if spec and spec == f"{where}:{phase}":
        log.error("failpoint %s reached: exiting", spec)
        os._exit(137)


def _sample(job: FineTuneJob, st: FineTuneJobStatus) -> dict[str, Any]:
    phase = st.phase or "Queued"
    since = parse_time(st.queued_since) if phase == "Queued" else None
    return {"namespace": job.metadata.namespace, "name": job.metadata.name, "phase": phase,
            "priority_class": st.effective_priority_class or "",
            "gpus": job.spec.resources.total_gpus,
            "queued_since": since.timestamp() if since else None}
