"""Driving reconcile.plan() pass by pass (``Sim``), and the jobs at the usual points of their
life (``queued``, ``admitted``, ``running``).

Each pass feeds the previous plan's status back (through the wire format, as the operator
re-reads it), like the cycle does. Pods are whatever the cluster shows at that pass; the newest
report a rank-0 pod of the current attempt carries (``tests/builders/pods.py`` REPORTED) is the
report channel's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.status import Condition, FineTuneJobStatus
from finetune_operator.admission import JobVerdict
from finetune_operator.jobs.reconcile import Ctx, Plan, plan
from finetune_operator.kube.cache import slim_pod
from finetune_operator.reports.model import ProgressReport
from finetune_operator.slim import SlimPod
from tests.builders.jobs import make_job
from tests.builders.pods import REPORTED, gang
from tests.builders.reports import report

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
ADMIT = JobVerdict(admit=True)
WAIT = JobVerdict()
DONE = {"reason": "Completed", "message": "training finished", "finalStep": 20,
        "adapterPath": "output/adapter", "mergedPath": "output/merged",
        "metrics": {"evalLoss": 0.91, "trainLoss": 0.8}}
PREEMPTED = {"reason": "Preempted", "message": "SIGTERM: saved checkpoint-12", "finalStep": 12}
SCHED = "PreemptionByScheduler"
VICTIM = "preempted to make room for team-b/urgent (finetune-critical, priority 1000 > 100)"


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def with_status(job: FineTuneJob, status: FineTuneJobStatus) -> FineTuneJob:
    """The job as the operator re-reads it after patching ``status`` (wire round trip)."""
    wire = FineTuneJobStatus.model_validate(status.to_wire())
    return job.model_copy(update={"status": wire})


def with_spec(job: FineTuneJob, **changes: Any) -> FineTuneJob:
    """A spec edit by the user: new generation, status kept."""
    meta = job.metadata.model_copy(update={"generation": job.metadata.generation + 1})
    return job.model_copy(update={"spec": job.spec.model_copy(update=changes), "metadata": meta})


def cond(st: FineTuneJobStatus, type_: str) -> Condition:
    found = [c for c in st.conditions if c.type == type_]
    assert len(found) == 1, f"expected one {type_} condition in {st.conditions}"
    return found[0]


def reasons(p: Plan) -> list[str]:
    return [e[1] for e in p.events]


def names(pods: Sequence[dict[str, Any]]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


def cached(pods: Sequence[Any]) -> list[SlimPod]:
    """Pods as the operator's cache keeps them (``kube/cache.py`` ``slim_pod``: termination
    message parsed), whether given as the API server returns them or already cached."""
    return [slim_pod(p) if "resourceVersion" in p["metadata"] else p for p in pods]


def metric_kinds(p: Plan) -> list[str]:
    return [o.kind for o in p.outcomes]


class Sim:
    """Drives one job through passes: each pass is plan() on the last status."""

    def __init__(self, job: FineTuneJob, now: dt.datetime = NOW) -> None:
        self.job, self.now = job, now
        self.ctx_extra: dict[str, Any] = {}
        self.report: ProgressReport | None = None

    def step(self, pods: Sequence[dict[str, Any]] = (), decision: JobVerdict = WAIT,
             backoff: float = 10.0, policy_error: str | None = None) -> Plan:
        # the newest report a pod of the current attempt pushed (the report channel's role)
        reported = [x[REPORTED] for x in sorted(pods, key=lambda x: x["metadata"]["name"])
                    if REPORTED in x and isinstance(x[REPORTED], dict)
                    and x["metadata"]["labels"].get("finetune.dev/attempt")
                    == str(max(self.st.attempt, 1)) and x["metadata"]["name"].endswith("-0")]
        if reported:
            self.report = report(reported[0])
        ctx = Ctx(now=self.now, backoff_seconds=backoff, priority_class="finetune-high",
                  policy_error=policy_error, watched_report=self.report, **self.ctx_extra)
        p = plan(self.job, cached(pods), decision, ctx)
        self.job = with_status(self.job, p.status)
        return p

    def tick(self, seconds: float) -> Sim:
        self.now += dt.timedelta(seconds=seconds)
        return self

    @property
    def st(self) -> FineTuneJobStatus:
        return self.job.status

    def edit(self, **changes: Any) -> None:
        self.job = with_spec(self.job, **changes)


def queued(job: FineTuneJob | None = None) -> Sim:
    sim = Sim(job or make_job(gpus=1))
    sim.step()
    assert sim.st.phase == "Queued"
    return sim


def admitted(job: FineTuneJob | None = None) -> Sim:
    sim = queued(job)
    sim.tick(30).step(decision=ADMIT)
    assert sim.st.phase == "Admitted"
    return sim


def running(job: FineTuneJob | None = None) -> Sim:
    sim = admitted(job)
    sim.tick(10).step(gang(sim.job, sim.st.attempt))
    assert sim.st.phase == "Running"
    return sim
