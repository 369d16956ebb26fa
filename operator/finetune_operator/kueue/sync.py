"""Admission mode kueue, the thin shell: each cycle, the one write (at most) per job that keeps
its Workload in step (``kueue/workload.py`` ``plan_writes``): create it, report its pods ready,
clear its reservation after an eviction once every pod stopped, mark it finished, (de)activate
it when the job is suspended or resumed.

Only jobs whose inputs changed are looked at (the job's, its Workload's resourceVersion and its
pod counts), so an idle operator writes nothing and a cycle costs nothing per unchanged job.
Each job runs in its own guard: a refused or failed write is logged once per (job, write,
Workload version), retried when something changes or after ``RETRY_SECONDS``, and never stops
another job's sync.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_api.job import FineTuneJob
from finetune_operator import metrics
from finetune_operator.jobs.build.pod import build_pod
from finetune_operator.jobs.pods import Pod, attempt_of
from finetune_operator.jobs.ports import WorkloadKube
from finetune_operator.kube.client import api_message
from finetune_operator.kueue.workload import (
    Workload,
    WorkloadWrite,
    build_workload,
    plan_writes,
    queue_name,
)
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


class WorkloadSync:
    def __init__(self, kube: WorkloadKube, settings: OperatorSettings,
                 workloads: Callable[[str], Workload | None],
                 monotonic: Callable[[], float]) -> None:
        self.kube, self.settings, self.workloads = kube, settings, workloads
        self.monotonic = monotonic
        self._seen: dict[str, tuple[Any, ...]] = {}  # job uid -> inputs last synced
        self._failed: dict[str, tuple[tuple[Any, ...], float]] = {}

    def forget(self, uid: str) -> None:
        self._seen.pop(uid, None)
        self._failed.pop(uid, None)

    def sync(self, jobs: Sequence[FineTuneJob], pods_by_uid: Mapping[str, list[Pod]],
             classes: Mapping[str, int], now: dt.datetime) -> int:
        """One pass; returns the writes made."""
        made = 0
        for job in jobs:
            uid = job.metadata.uid
            wl = self.workloads(uid)
            holding, running = pod_counts(pods_by_uid.get(uid, []), job.status.attempt)
            key = (job.metadata.generation, job.status.phase, job.status.attempt,
                   job.spec.suspend, queue_name(job), wl.rv if wl else None, holding, running)
            if self._seen.get(uid) == key:
                continue
            failed = self._failed.get(uid)
            if failed and failed[0] == key and self.monotonic() < failed[1]:
                continue
            try:
                # the body: to create the Workload, or to check a waiting one still matches
                body = self._body(job, classes) if wl is None or not wl.reserved else None
                write = plan_writes(job, wl, holding, running, job.spec.resources.nodes, body,
                                    now)
                if write is not None:
                    self._write(job, wl, write)
                    made += 1
                self._seen[uid] = key
                self._failed.pop(uid, None)
            except Exception as e:  # this job only: logged once per input, retried later
                if failed is None or failed[0] != key:
                    text = api_message(e) if isinstance(e, ApiException) else str(e)
                    level = logging.INFO if isinstance(e, ApiException) and e.status == 409 \
                        else logging.WARNING
                    log.log(level, "FineTuneJob %s: its Kueue Workload could not be updated "
                            "(%s: %s); retried when it changes or in %.0fs", job.key,
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

    def _write(self, job: FineTuneJob, wl: Workload | None, w: WorkloadWrite) -> None:
        k = self.kube
        if w.kind == "create":
            k.create_workload(w.body)
            log.info("FineTuneJob %s: created its Kueue Workload %s (%s)", job.key,
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
        log.info("FineTuneJob %s: Kueue Workload %s: %s (%s)", job.key, wl.name, w.kind, w.why)
