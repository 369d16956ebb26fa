"""Admission mode kueue, the thin shell: each cycle, the one write (at most) per job and per
ModelServer that keeps its Workload in step (``kueue/workload.py`` ``plan_writes``): create it,
report its pods ready, clear its reservation after an eviction once every pod stopped, mark it
finished, (de)activate it when the job is suspended or resumed.

Only those whose inputs changed are looked at (the object's, its Workload's resourceVersion and
its pod counts), so an idle operator writes nothing and a cycle costs nothing per unchanged job
or server. Each runs in its own guard: a refused or failed write is logged once per (object,
write, Workload version), retried when something changes or after ``RETRY_SECONDS``, and never
stops another one's sync.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_api.job import FineTuneJob
from finetune_api.server import ModelServer
from finetune_operator import metrics
from finetune_operator.jobs.build.pod import build_pod
from finetune_operator.jobs.pods import Pod, attempt_of
from finetune_operator.jobs.ports import WorkloadKube
from finetune_operator.kube.client import api_message
from finetune_operator.kueue.workload import (
    Admittable,
    Workload,
    WorkloadWrite,
    build_workload,
    kind_of,
    plan_writes,
    queue_name,
    server_workload,
)
from finetune_operator.serving.plan import live_pods, resolve_class
from finetune_operator.settings import OperatorSettings

log = logging.getLogger("finetune_operator")
RETRY_SECONDS = 30.0


def pod_counts(pods: Sequence[Pod], attempt: int) -> tuple[int, int]:
    """(pods holding resources: not finished, pods of ``attempt`` running)."""
    holding = running = 0
    for p in pods:
        phase = p["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            continue
        holding += 1
        if phase == "Running" and not p["metadata"].get("deletionTimestamp") and \
                attempt_of(p) == attempt:
            running += 1
    return holding, running


def server_pod_counts(pods: list[dict[str, Any]]) -> tuple[int, int]:
    """A server's (pods holding resources, pods running): ``serving/plan.py``'s slim pods."""
    live = live_pods(pods)
    return len(live), sum(1 for p in live if p["phase"] == "Running" and not p["deleting"])


class WorkloadSync:
    def __init__(self, kube: WorkloadKube, settings: OperatorSettings,
                 workloads: Callable[[str], Workload | None],
                 monotonic: Callable[[], float]) -> None:
        self.kube, self.settings, self.workloads = kube, settings, workloads
        self.monotonic = monotonic
        self._seen: dict[str, tuple[Any, ...]] = {}  # job/server uid -> inputs last synced
        self._failed: dict[str, tuple[tuple[Any, ...], float]] = {}
        self._servers: set[str] = set()  # the server uids synced last time
        # uid -> until when a Workload just created is awaited from the watch (not created
        # again meanwhile when the object changes before its watch event arrives)
        self._created: dict[str, float] = {}

    def forget(self, uid: str) -> None:
        self._seen.pop(uid, None)
        self._failed.pop(uid, None)
        self._created.pop(uid, None)

    def sync(self, jobs: Sequence[FineTuneJob], pods_by_uid: Mapping[str, list[Pod]],
             classes: Mapping[str, int], now: dt.datetime) -> int:
        """One pass over the jobs; returns the writes made."""
        made = 0
        for job in jobs:
            holding, running = pod_counts(pods_by_uid.get(job.metadata.uid, []),
                                          job.status.attempt)
            made += self._one(job, (job.status.attempt, job.spec.suspend), holding, running,
                              job.spec.resources.nodes, functools.partial(self._body, job, classes),
                              now, reserved_body=False)
        return made

    def sync_servers(self, servers: Sequence[ModelServer],
                     pods_by_server: Mapping[str, list[dict[str, Any]]],
                     classes: Mapping[str, int], now: dt.datetime) -> int:
        """One pass over the ModelServers (one pod each); returns the writes made. A server
        deleted since is forgotten (its Workload goes with it: owner reference)."""
        made = 0
        uids = {s.metadata.uid for s in servers}
        for uid in self._servers - uids:
            self.forget(uid)
        self._servers = uids
        for server in servers:
            holding, running = server_pod_counts(pods_by_server.get(server.metadata.uid, []))
            # its band's class (installed later: it gets its Workload then)
            cls = resolve_class(server, self.settings, classes)[0]
            made += self._one(server, (cls, classes.get(cls or "")), holding, running, 1,
                              functools.partial(server_workload, server, self.settings, classes),
                              now, reserved_body=True)
        return made

    def _one(self, obj: Admittable, facts: tuple[Any, ...], holding: int, running: int,
             want_pods: int, body_of: Callable[[], dict[str, Any] | None],
             now: dt.datetime, reserved_body: bool) -> int:
        """The write (at most) of one job or server: 1 when it was made. ``reserved_body``:
        its Workload is checked against what it asks also while Kueue holds quota for it (a
        server: its pod restarts with a changed spec)."""
        uid = obj.metadata.uid
        wl = self.workloads(uid)
        if wl is not None:
            self._created.pop(uid, None)
        elif self.monotonic() < self._created.get(uid, 0.0):
            return 0  # created a moment ago: its watch event is on the way
        key = (obj.metadata.generation, obj.status.phase, *facts, queue_name(obj),
               wl.rv if wl else None, holding, running)
        if self._seen.get(uid) == key:
            return 0
        failed = self._failed.get(uid)
        if failed and failed[0] == key and self.monotonic() < failed[1]:
            return 0
        made = 0
        try:
            # the body: to create the Workload, or to check a waiting one still matches
            body = body_of() if wl is None or not wl.reserved or reserved_body else None
            write = plan_writes(obj, wl, holding, running, want_pods, body, now)
            if write is not None:
                self._write(obj, wl, write)
                made = 1
                if write.kind == "create":
                    self._created[uid] = self.monotonic() + RETRY_SECONDS
            self._seen[uid] = key
            self._failed.pop(uid, None)
        except Exception as e:  # this one only: logged once per input, retried later
            if failed is None or failed[0] != key:
                text = api_message(e) if isinstance(e, ApiException) else str(e)
                level = logging.INFO if isinstance(e, ApiException) and e.status == 409 \
                    else logging.WARNING
                log.log(level, "%s %s: its Kueue Workload could not be updated (%s: %s); "
                        "retried when it changes or in %.0fs", kind_of(obj), obj.key,
                        type(e).__name__, text, RETRY_SECONDS)
                if level == logging.WARNING:
                    metrics.count_cycle_error("job")
            self._failed[uid] = (key, self.monotonic() + RETRY_SECONDS)
        return made

    def _body(self, job: FineTuneJob, classes: Mapping[str, int]) -> dict[str, Any] | None:
        cls, err = self.settings.resolve_priority_class(job)
        if err:
            return None  # the job controller fails the job with the cause; no Workload
        pod = build_pod(job, self.settings, 1, 0, cls, None)
        return build_workload(job, pod, job.spec.resources.nodes, cls,
                              classes.get(cls, 0) if cls else 0)

    def _write(self, job: Admittable, wl: Workload | None, w: WorkloadWrite) -> None:
        k = self.kube
        if w.kind == "create":
            k.create_workload(w.body)
            log.info("%s %s: created its Kueue Workload %s (%s)", kind_of(job), job.key,
                     w.body["metadata"]["name"], w.why)
            return
        assert wl is not None
        if w.kind == "delete":
            k.delete_workload(wl.namespace, wl.name, wl.uid)
        elif w.kind == "active":
            k.patch_workload(wl.namespace, wl.name, {"spec": {"active": w.active}}, wl.rv)
        else:
            status: dict[str, Any] = {"conditions": list(w.conditions)}
            if w.clear_admission:
                status["admission"] = None
            k.patch_workload(wl.namespace, wl.name, {"status": status}, wl.rv, status=True)
        log.info("%s %s: Kueue Workload %s: %s (%s)", kind_of(job), job.key, wl.name, w.kind,
                 w.why)
