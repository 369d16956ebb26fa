"""The admission seam's Kueue implementation (``admission_mode: kueue``): Kueue decides, this
admitter reads its decisions off the cached Workloads (``kueue/workload.py``) and answers the
job controller with the same :class:`JobVerdict` the native policy gives, so the state machine
(pods, graceful stop, resume, conditions, metrics) is shared by both modes.

ModelServers are admitted the same way: in this mode ``ClusterView.servers`` carries the
valid ``ModelServer`` objects (``serving/runner.py`` ``subjects()``), each answered from its own
Workload like a job (by the server's uid).

Pure: the view carries the Workloads and ResourceFlavors the watch caches hold.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.server import ModelServer
from finetune_api.status import shown_position
from finetune_operator.admission.seam import AdmissionRound, ClusterView
from finetune_operator.jobs.decide import problem
from finetune_operator.kueue.workload import (
    Admittable,
    Workload,
    digest_of,
    finished,
    positions,
    queue_name,
    server_workload,
    verdict,
)
from finetune_operator.settings import OperatorSettings


class KueueAdmitter:
    """One :class:`JobVerdict` per unfinished job and per ModelServer from its Workload
    (``ClusterView.workloads``, by job or server uid) and the flavors Kueue assigned
    (``ClusterView.flavors``)."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings

    def decide(self, view: ClusterView, now: dt.datetime) -> AdmissionRound:
        out = AdmissionRound()
        workloads: list[Workload] = [w for w in view.workloads.values()
                                     if isinstance(w, Workload)]
        order = positions(workloads)
        rows: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        servers = [s for s in view.servers if isinstance(s, ModelServer)]
        subjects: list[Admittable] = [*view.jobs, *servers]
        for job in subjects:
            uid = job.metadata.uid
            # a failed server is still decided: its spec may have been fixed
            if isinstance(job, FineTuneJob) and finished(job):
                continue
            try:
                wl = view.workloads.get(uid)
                pos = order.get(uid)
                got = verdict(job, wl if isinstance(wl, Workload) else None, view.flavors,
                              shown_position(pos) if pos else None,
                              self._digest(job, view.classes))
                out.by_uid[uid] = got
                if not got.admit and not got.preempt and queue_name(job) is not None and \
                        not finished(job):
                    w = wl if isinstance(wl, Workload) else None
                    rows.append(((w is None, -(w.priority if w else 0), w.created if w else "",
                                  job.metadata.namespace, job.metadata.name), {
                        "namespace": job.metadata.namespace,
                        "name": job.metadata.name, "position": pos,
                        **row_facts(job), "reason": got.reason,
                        "code": str(got.code), "queue": queue_name(job)}))
            except Exception as e:  # this job is left out; every other one is decided
                out.invalid[uid] = ("decision", problem("decision", e))
        # the visibility endpoint's rows: per namespace by position; clusterPosition in Kueue's
        # order across queues (priority, then creation), for the cluster-wide view
        rows.sort(key=lambda r: r[0])
        for i, (_, row) in enumerate(rows, 1):
            row["clusterPosition"] = i
            out.queue_view.setdefault(row.pop("namespace"), []).append(row)
        for ns_rows in out.queue_view.values():
            ns_rows.sort(key=lambda r: (r["position"] is None, r["position"] or 0, r["name"]))
        return out

    def _digest(self, obj: Admittable, classes: Mapping[str, int]) -> str | None:
        """What a server's Workload should ask now (None for a job: its Workload is checked
        while it waits only, ``plan_writes``)."""
        if not isinstance(obj, ModelServer):
            return None
        body = server_workload(obj, self.settings, classes)
        return digest_of(body) if body is not None else None


def row_facts(obj: Admittable) -> dict[str, Any]:
    """The band and GPUs of a waiting job's or server's row of the queue view."""
    if isinstance(obj, ModelServer):
        return {"priorityClass": obj.spec.priority_class_name or "",
                "gpus": obj.spec.resources.gpus}
    return {"priorityClass": obj.status.effective_priority_class,
            "gpus": obj.spec.resources.total_gpus}
