"""The incremental native admitter (jobs/decide.py ``NativeAdmitter``): each job's snapshot
entry is kept while its object and its pods are unchanged, and every verdict equals a full
rebuild's (a fresh admitter) over the same view and ``now``."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from finetune_operator.admission import AdmissionRound
from finetune_operator.admission.capacity import Pool
from finetune_operator.jobs.decide import NativeAdmitter, build_snapshot, decide, holds_gpus
from finetune_operator.jobs.reconcile import wants_admission
from tests.builders.jobs import make_job
from tests.builders.pods import make_pod
from tests.builders.world import SETTINGS, World, node

pytestmark = pytest.mark.unit

def facts(r: AdmissionRound) -> tuple[Any, ...]:
    return r.by_uid, r.queue_view, r.quotas, r.invalid


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_incremental_verdicts_equal_a_full_rebuild_after_every_event(seed: int) -> None:
    w = World(random.Random(seed))
    w.nodes = [node(f"node-{i}", 8, "ab"[i % 2]) for i in range(4)]
    w.hard = {"team-a": 16}
    for _ in range(6):
        w.add()
    inc = NativeAdmitter(SETTINGS)
    kinds: dict[str, int] = {}
    outcomes = {"admit": 0, "wait": 0, "preempt": 0, "impossible": 0}
    for _ in range(120):
        kind = w.step()
        kinds[kind] = kinds.get(kind, 0) + 1
        view = w.view()
        got = inc.decide(view, w.now)
        fresh = NativeAdmitter(SETTINGS).decide(view, w.now)
        assert facts(got) == facts(fresh), (seed, kind, w.now)
        full = decide(list(view.jobs), view.pods_by_uid, view.classes, SETTINGS, view.nodes,
                      view.active_pods, view.quotas, w.now)
        assert facts(got) == facts(full), (seed, kind, w.now)
        for v in got.by_uid.values():
            outcomes["admit" if v.admit else "preempt" if v.preempt else
                     "impossible" if v.impossible else "wait"] += 1
    # the sequence exercised what it is meant to: every kind of event, every outcome, and
    # entries both reused and rebuilt
    assert set(kinds) == {"add", "delete", "edit", "start", "pod", "node", "quota", "class",
                          "time"}, kinds
    assert outcomes["admit"] and outcomes["wait"] and outcomes["impossible"], outcomes
    assert inc.reused > inc.built > 0, (inc.reused, inc.built)


def test_preemption_verdicts_equal_a_full_rebuild() -> None:
    """A critical job arriving in a full cluster: the victims chosen incrementally are the
    ones a full rebuild chooses, also as time moves their runtime past the minimum."""
    w = World(random.Random(7))
    w.nodes = [node("node-0", 8)]
    for i in range(4):
        job = make_job(f"run-{i}", "team-b", gpus=2, priority_class="finetune-low",
                       uid=f"r{i}", created=w.ago(4000),
                       status={"phase": "Running", "attempt": 1, "admittedAt": w.ago(100),
                               "startTime": w.ago(100 - i * 30),
                               "effectivePriorityClass": "finetune-low"})
        w.jobs[job.metadata.uid] = job
        w.pods[job.metadata.uid] = [make_pod(job, 1, 0, node="node-0")]
    crit = make_job("urgent", "team-a", gpus=4, priority_class="finetune-critical", uid="c",
                    created=w.ago(10), status={"phase": "Queued",
                                               "effectivePriorityClass": "finetune-critical"})
    w.jobs["c"] = crit
    inc = NativeAdmitter(SETTINGS)
    preempted = []
    for _ in range(6):
        view = w.view()
        got = inc.decide(view, w.now)
        assert facts(got) == facts(NativeAdmitter(SETTINGS).decide(view, w.now))
        preempted.append(sorted(u for u, v in got.by_uid.items() if v.preempt))
        w.now += dt.timedelta(seconds=20)
    assert preempted[0] == [] and preempted[-1], preempted  # too young first, then victims


def test_an_unchanged_job_keeps_its_entry() -> None:
    w = World(random.Random(11))
    w.nodes = [node("node-0", 8)]
    for _ in range(10):
        w.add()
    w.start()
    inc = NativeAdmitter(SETTINGS)
    inc.decide(w.view(), w.now)
    assert (inc.built, inc.reused) == (10, 0)

    w.now += dt.timedelta(minutes=5)  # time alone: every entry reused
    inc.decide(w.view(), w.now)
    assert (inc.built, inc.reused) == (10, 10)

    w.add()  # one arrival: only its entry is built
    inc.decide(w.view(), w.now)
    assert (inc.built, inc.reused) == (11, 20)

    uid = next(iter(w.pods))  # one job's pods changed: only its entry is built again
    w.pods[uid] = [{**p, "status": {**p["status"], "phase": "Succeeded"}} for p in w.pods[uid]]
    inc.decide(w.view(), w.now)
    assert (inc.built, inc.reused) == (12, 30)

    queued = next(u for u, j in w.jobs.items() if u not in w.pods)
    w.edit(queued, retryAfter=w.ago(-60))  # a new object (resourceVersion): built again
    inc.decide(w.view(), w.now)
    assert (inc.built, inc.reused) == (13, 40)

    w.classes["finetune-low"] = 101  # another PriorityClass value: every entry built again
    inc.decide(w.view(), w.now)
    assert (inc.built, inc.reused) == (24, 40)


def test_the_cache_drops_deleted_jobs() -> None:
    w = World(random.Random(5))
    w.nodes = [node("node-0", 8)]
    for _ in range(8):
        w.add()
    inc = NativeAdmitter(SETTINGS)
    inc.decide(w.view(), w.now)
    assert inc.cached_uids() == set(w.jobs)
    gone = sorted(w.jobs)[:5]
    for uid in gone:
        del w.jobs[uid]
    inc.decide(w.view(), w.now)
    assert inc.cached_uids() == set(w.jobs) and len(inc.cached_uids()) == 3
    assert not inc.cached_uids() & set(gone)
    w.jobs.clear()
    inc.decide(w.view(), w.now)
    assert inc.cached_uids() == set()


def test_a_job_whose_entry_fails_is_left_out_and_not_kept() -> None:
    w = World(random.Random(9))
    w.nodes = [node("node-0", 8)]
    w.add()
    w.add()
    bad = sorted(w.jobs)[0]
    w.pods[bad] = [{"metadata": {"labels": {}}, "status": {"phase": "Running"}}]  # no spec
    w.edit(bad, phase="Running", attempt=0)
    inc = NativeAdmitter(SETTINGS)
    view = w.view()
    got = inc.decide(view, w.now)
    assert facts(got) == facts(NativeAdmitter(SETTINGS).decide(view, w.now))
    assert set(got.invalid) == {bad} and got.invalid[bad][0] == "snapshot", got.invalid
    assert inc.cached_uids() == set(w.jobs) - {bad}


@pytest.mark.parametrize("seed", [21, 22])
def test_the_walks_placement_memo_changes_no_decision(seed: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """admit() keeps its slower placements per shape while the pool's GPUs are unchanged
    (capacity.py ``Pool._memoized``); without the memo every decision is the same."""
    w = World(random.Random(seed))
    w.nodes = [node(f"node-{i}", 8, "ab"[i % 2], taint=i == 3) for i in range(6)]
    w.hard = {"team-b": 24}
    for _ in range(30):
        w.add()
    for _ in range(8):  # running jobs, some of them stopping (their GPUs pending)
        w.start()
    for uid in sorted(w.pods)[:4]:
        w.edit(uid, phase="Preempting")
    rounds = []
    for _ in range(60):
        w.step()
        view = w.view()
        rounds.append((view, w.now, facts(NativeAdmitter(SETTINGS).decide(view, w.now))))
    hits = []
    real = Pool._memoized

    def counting(self: Pool, key: tuple[object, ...], compute: Any) -> Any:
        got = self._memo.get(key)
        hits.append(got is not None and got[0] == self.version)
        return real(self, key, compute)

    monkeypatch.setattr(Pool, "_memoized", counting)
    for view, now, _ in rounds:
        NativeAdmitter(SETTINGS).decide(view, now)
    assert any(hits), "the memo was never used: the test checks nothing"
    monkeypatch.setattr(Pool, "_memoized", lambda self, key, compute: compute())
    for view, now, want in rounds:
        assert facts(NativeAdmitter(SETTINGS).decide(view, now)) == want, now


def test_the_queued_entries_are_the_jobs_that_want_admission() -> None:
    """entry_recipe splits reconcile.wants_admission into its parts with and without the time:
    together they pick the same jobs."""
    w = World(random.Random(31))
    w.nodes = [node("node-0", 8)]
    for _ in range(40):
        w.add()
    for _ in range(5):
        w.start()
    checked = 0
    for _ in range(4):
        view = w.view()
        snap = build_snapshot(list(view.jobs), view.pods_by_uid, view.classes, SETTINGS,
                              view.nodes, view.active_pods, view.quotas, w.now)
        want = {u for u, j in w.jobs.items()
                if wants_admission(j, w.now) and not holds_gpus(j, w.pods.get(u, []))}
        assert {q.uid for q in snap.queued} == want
        checked += len(want)
        w.now += dt.timedelta(seconds=200)  # some retry delays run out
    assert checked and len(want) < len(w.jobs), (checked, len(want))
