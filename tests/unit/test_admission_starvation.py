"""admit() over time: an old low-priority job runs within its aging bound while higher-priority
jobs keep arriving (reservations stop backfill from starving it), and without reservations it
would not."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from finetune_operator.admission import QueuedJob, RunningJob, admit
from tests.builders.admission import GPU, NOW, make_job, make_node, make_running, snap, waiting

pytestmark = pytest.mark.unit


@dataclass
class Sim:
    """Minute-by-minute: arrivals, admit(), jobs that end after `runtime` minutes."""

    gpus_per_node: int = 4
    quota: dict[str, tuple[int, int]] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    queued: list[QueuedJob] = field(default_factory=list)
    running: dict[str, tuple[RunningJob, int]] = field(default_factory=dict)  # uid -> (job, end)
    admitted_at: dict[str, int] = field(default_factory=dict)
    minute: int = 0

    def step(self, arrivals: list[QueuedJob], runtime: int) -> None:
        now = NOW + timedelta(minutes=self.minute)
        self.running = {u: (j, end) for u, (j, end) in self.running.items() if end > self.minute}
        self.queued += arrivals
        used = sum(j.gpus for j, _ in self.running.values())
        quota = {ns: (hard, sum(j.gpus for j, _ in self.running.values() if j.namespace == ns))
                 for ns, (hard, _) in self.quota.items()}
        s = snap(self.queued, running=[j for j, _ in self.running.values()],
                 nodes=[make_node("n1", self.gpus_per_node - used,
                                  allocatable=self.gpus_per_node)],
                 quotas=quota, **self.policy)
        d = admit(s, now)
        for a in d.admit:
            self.queued.remove(a.job)
            self.admitted_at[a.job.name] = self.minute
            run = make_running(a.job.name, namespace=a.job.namespace, gpus=a.job.gpus,
                               priority=a.job.priority, on="n1", started=now)
            self.running[run.uid] = (run, self.minute + runtime)
        self.last = d
        self.minute += 1


def _high(minute: int, i: int, namespace: str = "team-h", priority: int = 150) -> QueuedJob:
    return make_job(f"h{minute}-{i}", namespace=namespace, gpus=1, priority=priority,
                    created=NOW + timedelta(minutes=minute))


def _run(sim: Sim, minutes: int, per_minute: int = 2, **kw: object) -> None:
    for m in range(minutes):
        arrivals = [_high(m, i, **kw) for i in range(per_minute)]  # type: ignore[arg-type]
        if m == 0:
            arrivals.append(make_job("big-low", gpus=4, priority=100, created=NOW))
        sim.step(arrivals, runtime=3)
        if "big-low" in sim.admitted_at:
            return


POLICY: dict[str, Any] = {"aging_rate_per_minute": 10.0, "aging_cap": 100.0}  # bound: 10 min


def test_old_low_priority_job_runs_within_its_aging_bound() -> None:
    sim = Sim(policy=POLICY)
    _run(sim, 60)
    # aged at minute 10, then it waits only for the 1-GPU jobs already running (3 minutes)
    assert "big-low" in sim.admitted_at
    assert 10 <= sim.admitted_at["big-low"] <= 10 + 3
    # and the higher-priority jobs did run meanwhile (backfill before the bound)
    assert sum(1 for n in sim.admitted_at if n.startswith("h")) >= 10


def test_without_reservations_backfill_starves_it() -> None:
    sim = Sim(policy={**POLICY, "reserve_after_seconds": 10**9})
    _run(sim, 60)
    assert "big-low" not in sim.admitted_at  # every freed GPU went to a 1-GPU job
    assert waiting(sim.last)["big-low"][1] in ("InsufficientCapacity",
                                               "WaitingForHigherPriority")


def test_reservation_is_reported_in_the_reason() -> None:
    sim = Sim(policy=POLICY)
    _run(sim, 11)
    w = sim.last.waiting_for("uid-team-a-big-low")
    assert w is not None and w.reserved
    assert w.reason.endswith("; nvidia.com/gpu held for it (waited past the aging bound)")


def test_a_higher_band_than_the_cap_still_goes_first() -> None:
    # documented limit: aging never lifts a job over a band more than aging_cap above it
    sim = Sim(policy=POLICY)
    _run(sim, 30, priority=10_000)
    assert "big-low" not in sim.admitted_at
    w = sim.last.waiting_for("uid-team-a-big-low")
    assert w is not None and w.position > 1


def test_aged_job_reserves_its_namespace_quota() -> None:
    sim = Sim(gpus_per_node=16, quota={"team-h": (4, 0)}, policy=POLICY)
    for m in range(40):
        arrivals = [_high(m, i) for i in range(2)]
        arrivals.append(_high(m, 9, namespace="team-x"))  # another namespace, unaffected
        if m == 0:
            arrivals.append(make_job("big-h", namespace="team-h", gpus=4, priority=100,
                                     created=NOW))
        sim.step(arrivals, runtime=3)
        if "big-h" in sim.admitted_at:
            break
    assert sim.admitted_at.get("big-h", 99) <= 10 + 3
    assert any(n.endswith("-9") and sim.admitted_at[n] >= 10 for n in sim.admitted_at)


def test_reserved_gpus_stay_usable_by_jobs_ahead() -> None:
    old = make_job("old", gpus=4, priority=100, created=NOW - timedelta(minutes=30))
    urgent = make_job("urgent", gpus=2, priority=10_000, created=NOW)
    later = make_job("later", gpus=2, priority=100, created=NOW)
    d = admit(snap([old, urgent, later], nodes=[make_node("n1", 3, allocatable=4)],
                   aging_rate_per_minute=10.0, aging_cap=100.0), NOW)
    assert [a.job.name for a in d.admit] == ["urgent"]
    w = d.waiting_for("uid-team-a-old")
    assert w is not None and w.position == 1 and w.reserved
    assert waiting(d)["later"][1] == "WaitingForHigherPriority"
    assert GPU in waiting(d)["old"][2]
