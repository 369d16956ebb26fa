"""The admission seam's Kueue implementation (``admission_mode: kueue``): Kueue decides, this
admitter reads its decisions off the cached Workloads (``kueue/workload.py``) and answers the
job controller with the same :class:`JobVerdict` the native policy gives, so the state machine
(pods, graceful stop, resume, conditions, metrics) is shared by both modes.

Pure: the view carries the Workloads and ResourceFlavors the watch caches hold.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from finetune_operator.admission.seam import AdmissionRound, ClusterView
from finetune_operator.jobs.decide import coarse_position, problem
from finetune_operator.kueue.workload import Workload, positions, queue_name, verdict
from finetune_operator.settings import OperatorSettings

FINISHED = ("Succeeded", "Failed")


class KueueAdmitter:
    """One :class:`JobVerdict` per unfinished job from its Workload (``ClusterView.workloads``,
    by job uid) and the flavors Kueue assigned (``ClusterView.flavors``)."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings

    def decide(self, view: ClusterView, now: dt.datetime) -> AdmissionRound:
        out = AdmissionRound()
        workloads: list[Workload] = [w for w in view.workloads.values()
                                     if isinstance(w, Workload)]
        order = positions(workloads)
        rows: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for job in view.jobs:
            uid = job.metadata.uid
            if job.status.phase in FINISHED:
                continue
            try:
                wl = view.workloads.get(uid)
                pos = order.get(uid)
                got = verdict(job, wl if isinstance(wl, Workload) else None, view.flavors,
                              coarse_position(pos) if pos else None)
                out.by_uid[uid] = got
                if not got.admit and not got.preempt and queue_name(job) is not None:
                    w = wl if isinstance(wl, Workload) else None
                    rows.append(((w is None, -(w.priority if w else 0), w.created if w else "",
                                  job.metadata.namespace, job.metadata.name), {
                        "namespace": job.metadata.namespace,
                        "name": job.metadata.name, "position": pos,
                        "priorityClass": job.status.effective_priority_class,
                        "gpus": job.spec.resources.total_gpus, "reason": got.reason,
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
