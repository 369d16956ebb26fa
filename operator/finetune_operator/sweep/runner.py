"""Thin executor of the sweep plans: parse at the edge, plan (pure), write only what changed.

The operator's scheduling cycle calls ``SweepRunner(kube).sync(sweeps, jobs, now)`` with the
FineTuneSweep bodies of its watch-fed cache and the trials its job cache already parsed
(``TrialJob``: each FineTuneJob is parsed once per resourceVersion, not once per sync). Per
sweep: creations first (the trials go through the same queue, quotas and priorities as any
FineTuneJob), then early stops, then one status patch, only when the status differs from what
is stored. A sweep that needs nothing costs no API call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from finetune_api.labels import EARLY_STOP_ANNOTATION
from finetune_api.sweep import FineTuneSweep
from finetune_operator import metrics
from finetune_operator.sweep.plan import (
    Jobs,
    SweepPlan,
    TrialJob,
    invalid_status,
    owned_by,
    plan_sweep,
    trial_jobs,
)

log = logging.getLogger(__name__)

class SweepKube(Protocol):
    """What the runner calls (kube.client.Kube; its API surface is kube.client.SWEEP_SURFACE)."""

    def create_trial(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]: ...
    def patch_sweep_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool: ...
    def stop_trial(self, namespace: str, name: str, uid: str,
                   annotations: dict[str, Any]) -> bool: ...


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    status_patched: list[str] = field(default_factory=list)
    plans: dict[str, SweepPlan] = field(default_factory=dict[str, Any])


def _format_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts) + "; fix the FineTuneSweep and apply it again"


class SweepRunner:
    def __init__(self, kube: SweepKube) -> None:
        self.kube = kube

    def sync(self, sweep_bodies: list[dict[str, Any]], job_bodies: Jobs,
             now: datetime) -> SyncResult:
        out = SyncResult()
        by_ns: dict[str, list[TrialJob]] = {}
        for tj in trial_jobs(job_bodies):
            by_ns.setdefault(tj.namespace, []).append(tj)
        seen: list[FineTuneSweep] = []
        for body in sweep_bodies:
            meta = body.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            try:
                sweep = FineTuneSweep.from_body(body)
            except (ValidationError, KeyError, TypeError) as e:
                msg = _format_error(e) if isinstance(e, ValidationError) else str(e)
                st = invalid_status(body, f"FineTuneSweep {key}: {msg}", now)
                if st != body.get("status"):
                    self.kube.patch_sweep_status(meta["namespace"], meta["name"], st)
                    out.status_patched.append(key)
                continue
            jobs = by_ns.get(sweep.metadata.namespace, [])
            plan = plan_sweep(sweep, jobs, now)
            seen.append(sweep)
            out.plans[key] = self._execute(sweep, plan, jobs, now, out)
        metrics.observe_sweeps([(s, out.plans[s.key]) for s in seen])
        return out

    def _execute(self, sweep: FineTuneSweep, plan: SweepPlan, jobs: list[TrialJob],
                 now: datetime, out: SyncResult) -> SweepPlan:
        ns = sweep.metadata.namespace
        seen: dict[str, dict[str, Any]] = {}
        for body in plan.creates:
            obj, created = self.kube.create_trial(body)
            name = body["metadata"]["name"]
            seen[name] = obj
            if created:
                out.created.append(f"{ns}/{name}")
            elif not owned_by(obj, sweep.metadata.uid):
                log.warning("FineTuneSweep %s: FineTuneJob %s/%s exists and is not its trial; "
                            "not adopting it (delete or rename that job)", sweep.key, ns, name)
        if seen:
            # The view may have been stale (a restart, a lagging watch): the status tells what
            # the creations found (a foreign job is a conflict, not a queued trial); any further
            # creation waits for the next cycle.
            known: list[TrialJob | dict[str, Any]] = [j for j in jobs if j.name not in seen]
            status = plan_sweep(sweep, known + list(seen.values()), now, create=False).status
            plan.status, plan.status_changed = status, status != sweep.status.to_wire()
        for name, uid, why in plan.stops:
            log.info("FineTuneSweep %s: early-stopping trial %s: %s", sweep.key, name, why)
            if self.kube.stop_trial(ns, name, uid, {EARLY_STOP_ANNOTATION: why[:512]}):
                out.stopped.append(f"{ns}/{name}")
        if plan.status_changed:
            self.kube.patch_sweep_status(ns, sweep.metadata.name, plan.status)
            out.status_patched.append(sweep.key)
        return plan

