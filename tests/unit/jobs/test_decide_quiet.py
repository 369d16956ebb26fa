"""Quiet rounds of the native admitter (jobs/decide.py ``NativeAdmitter``): while every waiting
job is held by its own namespace's quota, a round with only new jobs in other namespaces and
running jobs moving on considers just the new jobs; its verdicts are a full rebuild's, and
anything else makes the round a full one."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from typing import Any

import pytest

from finetune_operator.admission import AdmissionRound, ClusterView, Policy, QueuedJob, next_reorder
from finetune_operator.jobs.decide import FULL_ROUND, QUIET_MAX_SECONDS, NativeAdmitter
from tests.builders.jobs import make_job, make_settings
from tests.builders.pods import make_pod
from tests.builders.world import BANDS, NOW, World, node

pytestmark = pytest.mark.unit

SETTINGS = make_settings(allowed_priority_classes=BANDS, max_running_jobs_per_namespace=3,
                         min_runtime_before_preemption_seconds=120, quiet_rounds=True)

FULL = ["team-a", "team-b"]  # quota used up, jobs waiting
OPEN = "team-c"              # room: where the arrivals go


class Quiet(World):
    """The caches' view plus what the cycle tells the admitter: which jobs changed since the
    last view and whether nodes or quotas did."""

    def __init__(self, seed: int) -> None:
        super().__init__(random.Random(seed))
        self.changed: set[str] = set()
        self.capacity = self.quotas_moved = True
        self.last_used: dict[Any, Any] = {}
        self.nodes = [node(f"node-{i}", 8) for i in range(4)]
        self.hard = {"team-a": 4, "team-b": 4, OPEN: 64}
        for ns in FULL:  # a running job holding the namespace's quota, two waiting
            self.job(ns, 4, running_on="node-0" if ns == "team-a" else "node-1")
            for _ in range(2):
                self.job(ns, self.rng.choice([1, 2]))

    def job(self, ns: str, gpus: int, running_on: str | None = None) -> str:
        i = self.made
        self.made += 1
        status: dict[str, Any] = {"phase": "Queued", "effectivePriorityClass": "finetune-normal",
                                  "queuedSince": self.ago(30)}
        if running_on:
            status.update(phase="Running", attempt=1, admittedAt=self.ago(60),
                          startTime=self.ago(50))
        job = make_job(f"job-{i}", ns, gpus=gpus, priority_class="finetune-normal",
                       uid=f"u{i}", created=self.ago(30 if running_on else 0), status=status)
        self.jobs[job.metadata.uid] = job
        if running_on:
            self.pods[job.metadata.uid] = [make_pod(job, 1, 0, node=running_on)]
        self.changed.add(job.metadata.uid)
        return job.metadata.uid

    def view(self) -> ClusterView:
        v = super().view()
        used = {q["metadata"]["namespace"]: q["status"]["used"] for q in v.quotas}
        moved = used != self.last_used
        self.last_used = used
        out = dataclasses.replace(v, changed=frozenset(self.changed),
                                  capacity_changed=self.capacity,
                                  quotas_changed=self.quotas_moved or moved)
        self.changed, self.capacity, self.quotas_moved = set(), False, False
        return out

    def begin(self, uid: str, placement: tuple[str, ...], bind: bool) -> None:
        """An admitted job's status written back, its pod created (bound where admitted)."""
        self.edit(uid, phase="Admitted", attempt=1, admittedAt=self.ago(0))
        self.pods[uid] = [make_pod(self.jobs[uid], 1, 0, node=placement[0] if bind else None)]
        self.changed.add(uid)


def facts(r: AdmissionRound) -> tuple[Any, ...]:
    # the queue view's effective priorities are a full round's (they age with the time)
    view = {ns: [{k: v for k, v in row.items() if k != "effectivePriority"} for row in rows]
            for ns, rows in r.queue_view.items()}
    return r.by_uid, view, r.quotas, r.invalid


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_quiet_rounds_give_a_full_rebuilds_verdicts(seed: int) -> None:
    w = Quiet(seed)
    inc = NativeAdmitter(SETTINGS)
    kinds: dict[str, int] = {}
    quiet_kinds: dict[str, int] = {}
    for _ in range(150):
        before = inc.quiet_rounds
        kind = w.rng.choices(["arrive", "start", "echo", "finish", "time", "node", "crowd"],
                             weights=[30, 30, 15, 5, 15, 2, 3])[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        last = inc.decide(w.view(), w.now) if not kinds.get("_warm") else None
        kinds["_warm"] = 1
        if kind == "arrive":
            w.job(OPEN, w.rng.choice([1, 2, 4]))
        elif kind == "start" and last is not None:
            admitted = [(u, v) for u, v in last.by_uid.items() if v.admit]
            if admitted:
                uid, v = w.rng.choice(admitted)
                w.begin(uid, v.placement, bind=w.rng.random() < 0.7)
        elif kind == "echo":  # a waiting job's own status write comes back: same entry
            waiting = sorted(u for u, j in w.jobs.items() if j.status.phase == "Queued")
            uid = w.rng.choice(waiting)
            w.edit(uid, queue={"position": 1, "reason": "waiting"})
            w.changed.add(uid)
        elif kind == "finish":  # frees GPUs: a full round
            running = sorted(u for u, j in w.jobs.items()
                             if j.status.phase == "Admitted" and u in w.pods)
            if running:
                uid = w.rng.choice(running)
                w.edit(uid, phase="Succeeded")
                w.pods[uid] = [make_pod(w.jobs[uid], 1, 0, phase="Succeeded", node="node-3")]
                w.changed.add(uid)
        elif kind == "time":
            w.now += dt.timedelta(seconds=w.rng.choice([1, 5, QUIET_MAX_SECONDS]))
        elif kind == "node":
            w.nodes.append(node(f"node-{len(w.nodes)}", 8))
            w.capacity = True
        elif kind == "crowd":  # more than the free GPUs: jobs wait for capacity, not quiet
            for _ in range(4):
                w.job(OPEN, 8)
        view = w.view()
        got = inc.decide(view, w.now)
        fresh = NativeAdmitter(SETTINGS).decide(view, w.now)
        assert facts(got) == facts(fresh), (seed, kind, w.now)
        if inc.quiet_rounds > before:
            quiet_kinds[kind] = quiet_kinds.get(kind, 0) + 1
    # quiet rounds did happen, for arrivals, starts and echoes, and full ones too
    assert {"arrive", "start", "echo"} <= set(quiet_kinds), quiet_kinds
    assert inc.quiet_rounds < 150 and "node" not in quiet_kinds, (inc.quiet_rounds, quiet_kinds)


def _settled(w: Quiet, inc: NativeAdmitter) -> AdmissionRound:
    got = inc.decide(w.view(), w.now)
    got = inc.decide(w.view(), w.now)  # the second round is quiet
    return got


def test_an_arrival_with_room_is_admitted_in_a_quiet_round() -> None:
    w = Quiet(7)
    inc = NativeAdmitter(SETTINGS)
    _settled(w, inc)
    assert inc.quiet_rounds == 1
    uid = w.job(OPEN, 2)
    got = inc.decide(w.view(), w.now)
    assert inc.quiet_rounds == 2 and got.by_uid[uid].admit, got.by_uid.get(uid)
    built = inc.built
    inc.decide(w.view(), w.now)  # nothing changed: no entry built
    assert inc.quiet_rounds == 3 and inc.built == built


@pytest.mark.parametrize(("event", "why"), [
    ("full namespace", "arrival-queue"), ("no room", "arrival-waits"), ("node", "capacity"),
    ("retry", "retry"), ("bound", "placement"), ("finished", "job-stopped"), ("quota", "quota"),
    ("deleted", "job-left"), ("aged", "time")])
def test_what_makes_a_round_full(event: str, why: str) -> None:
    w = Quiet(8)
    inc = NativeAdmitter(SETTINGS)
    _settled(w, inc)
    quiet = inc.quiet_rounds
    running = next(u for u, j in w.jobs.items() if j.status.phase == "Running")
    waiting = next(u for u, j in w.jobs.items() if j.status.phase == "Queued")
    if event == "full namespace":  # its place among that namespace's waiting jobs
        w.job("team-a", 1)
    elif event == "no room":  # larger than any node
        w.job(OPEN, 9)
    elif event == "node":
        w.nodes.pop()
        w.capacity = True
    elif event == "retry":  # a job that will join the queue at its retry time
        uid = w.job(OPEN, 1)
        w.edit(uid, retryAfter=w.ago(-5))
    elif event == "bound":  # its pod bound elsewhere than the walk counted it
        w.pods[running] = [make_pod(w.jobs[running], 1, 0, node="node-3")]
        w.changed.add(running)
    elif event == "finished":
        w.edit(running, phase="Succeeded")
        w.pods[running] = [make_pod(w.jobs[running], 1, 0, phase="Succeeded", node="node-0")]
        w.changed.add(running)
    elif event == "quota":  # the terms of a quota where jobs wait
        w.hard["team-a"] = 6
        w.quotas_moved = True
    elif event == "deleted":
        del w.jobs[waiting]
        w.changed.add(waiting)
    elif event == "aged":
        w.now += dt.timedelta(seconds=QUIET_MAX_SECONDS)
    view = w.view()
    got = inc.decide(view, w.now)
    assert inc.quiet_rounds == quiet and got.full == why, (event, got.full)
    assert why in FULL_ROUND
    assert facts(got) == facts(NativeAdmitter(SETTINGS).decide(view, w.now))


def test_without_the_cycles_hint_or_the_setting_every_round_is_full() -> None:
    """Without the cycle's hint (``changed`` None), or with quiet rounds off (the default),
    every round is a full one."""
    w = Quiet(9)
    inc = NativeAdmitter(SETTINGS)
    for _ in range(3):
        inc.decide(dataclasses.replace(w.view(), changed=None), w.now)
    assert inc.quiet_rounds == 0
    off = NativeAdmitter(make_settings(allowed_priority_classes=BANDS, quiet_rounds=False))
    for _ in range(3):
        got = off.decide(w.view(), w.now)
    assert off.quiet_rounds == 0 and got.full == "off"
    inc.decide(w.view(), w.now)
    inc.decide(w.view(), w.now)
    assert inc.quiet_rounds > 0  # the same kind of views, the setting on


def test_a_round_is_full_when_aging_swaps_two_waiting_jobs() -> None:
    """Behind their namespace's job limit (a capped job waiting for its quota would hold it,
    and not be quiet): a capped low-priority job (100 + the aging cap 999) and a normal one 10
    points below it, still aging at 10 points a minute, swap 60 s later; until then rounds are
    quiet."""
    w = Quiet(10)
    for name, cls, waited in (("old-low", "finetune-low", 7000), ("young", "finetune-normal", 534)):
        job = make_job(name, "team-a", gpus=1, priority_class=cls, uid=name,
                       created=w.ago(waited), status={"phase": "Queued",
                                                      "effectivePriorityClass": cls,
                                                      "queuedSince": w.ago(waited)})
        w.jobs[name] = job
        w.changed.add(name)
    inc = NativeAdmitter(make_settings(allowed_priority_classes=BANDS,
                                       max_running_jobs_per_namespace=1, quiet_rounds=True))

    def order() -> list[str]:
        got = inc.decide(w.view(), w.now)
        return [r["name"] for r in got.queue_view["team-a"] if r["name"] in ("old-low", "young")]

    assert order() == ["old-low", "young"]
    w.now += dt.timedelta(seconds=1)
    assert order() == ["old-low", "young"]
    quiet = inc.quiet_rounds
    assert quiet == 1
    w.now += dt.timedelta(seconds=58)
    assert order() == ["old-low", "young"] and inc.quiet_rounds == quiet + 1
    w.now += dt.timedelta(seconds=2)  # past the swap: a full round, in the new order
    assert order() == ["young", "old-low"] and inc.quiet_rounds == quiet + 1
    assert next_reorder([], w.now, Policy()) is None


def test_next_reorder() -> None:
    def queued(name: str, priority: int, waited: float) -> QueuedJob:
        return QueuedJob(namespace="a", name=name, uid=name, priority=priority, gpus=1,
                         priority_class="finetune-normal",
                         created_at=NOW - dt.timedelta(seconds=waited),
                         queued_since=NOW - dt.timedelta(seconds=waited))

    policy = Policy()  # 10 points a minute, capped at 999
    capped, young = queued("capped", 100, 7000), queued("young", 1000, 534)
    assert next_reorder([capped, young], NOW, policy) == pytest.approx(60.0)
    # no capped job: the soonest cap (999 points at 10 a minute: 5994 s after waiting began)
    assert next_reorder([young], NOW, policy) == pytest.approx(5994 - 534)
    assert next_reorder([capped], NOW, policy) is None  # alone and capped: nothing moves
    assert next_reorder([capped, young], NOW, Policy(aging_rate_per_minute=0)) is None
