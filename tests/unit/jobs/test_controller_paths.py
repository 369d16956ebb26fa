"""The job controller end to end without a cluster: a Controller on a recording fake of its
JobKube (tests/builders/jobkube.py) and a fake clock, its cycle driven by hand (no threads
but the write pools, drained after each cycle). Each test follows one path of a job's life
through the real feeds, admitter, state machine and executor, and asserts the API writes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from finetune_operator import metrics
from finetune_operator.jobs.controller import Controller, debounce
from finetune_operator.jobs.cycle import sample
from finetune_operator.jobs.decide import NativeAdmitter
from tests.builders.jobkube import FakeClock, RecordingJobKube, Write, gpu_node, load, sync
from tests.builders.jobs import job_body, make_settings

pytestmark = pytest.mark.unit

CLASSES = ["finetune-critical", "finetune-high", "finetune-normal", "finetune-low"]


class World:
    def __init__(self, bodies: list[dict[str, Any]], gpus: int = 8, **settings: Any) -> None:
        self.kube = RecordingJobKube(bodies)
        self.clock = FakeClock()
        self.settings = make_settings(allowed_priority_classes=CLASSES,
                                      min_runtime_before_preemption_seconds=60, **settings)
        self.nodes = [gpu_node("node-0", gpus)]
        self.rejected: list[tuple[str, str]] = []  # (namespace/pod, reason) of bad messages
        self.ctrl = self.controller()

    def controller(self) -> Controller:
        """A Controller (a new one: an operator restart) on caches filled from the fake."""
        ctrl = Controller(self.kube, self.settings, namespace="ops", identity="test",
                          clock=self.clock, on_termination=lambda pod, bad: self.rejected.append(
                              (pod, bad.reason)))
        ctrl.lease.grant(10**6)
        load(ctrl, self.kube, self.nodes)
        return ctrl

    def cycle(self, seconds: float = 1.0) -> None:
        """Time passes, the watches deliver what changed, one cycle runs and its writes land."""
        self.clock.advance(seconds)
        sync(self.ctrl, self.kube)
        self.ctrl.run_cycle(self.clock.now())
        self.ctrl.executor.drain()
        sync(self.ctrl, self.kube)

    def status(self, name: str, ns: str = "team-a") -> dict[str, Any]:
        return dict(self.kube.jobs[(ns, name)].get("status") or {})

    def pod(self, name: str, ns: str = "team-a") -> dict[str, Any]:
        return self.kube.objects[("Pod", ns, name)]

    def run_pod(self, name: str, ns: str = "team-a") -> None:
        pod = self.pod(name, ns)
        pod.setdefault("spec", {})["nodeName"] = "node-0"
        pod["status"] = {"phase": "Running", "containerStatuses": [
            {"name": "trainer", "state": {"running": {}}}]}

    def complete_pod(self, name: str, ns: str = "team-a") -> None:
        self.pod(name, ns)["status"] = {"phase": "Succeeded", "containerStatuses": [
            {"name": "trainer", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}

    def fail_pod(self, name: str, exit_code: int = 1, message: str | None = None) -> None:
        term: dict[str, Any] = {"exitCode": exit_code, "reason": "Error"}
        if message is not None:
            term["message"] = message
        self.pod(name)["status"] = {"phase": "Failed", "containerStatuses": [
            {"name": "trainer", "state": {"terminated": term}}]}

    def gone(self, name: str) -> None:
        """The pod finished terminating (after the delete the operator sent)."""
        self.kube.objects.pop(("Pod", "team-a", name), None)

    def new_writes(self, since: int) -> list[Write]:
        return self.kube.writes()[since:]

    def edit_spec(self, name: str, **spec: Any) -> None:
        body = self.kube.jobs[("team-a", name)]
        body["spec"].update(spec)
        body["metadata"]["generation"] += 1
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)


@pytest.fixture
def worlds() -> Iterator[list[World]]:
    made: list[World] = []
    yield made
    for w in made:
        w.ctrl.stop()


def running_world(worlds: list[World], *bodies: dict[str, Any], **settings: Any) -> World:
    """``bodies[0]`` admitted and Running on node-0 (the others only in the fake)."""
    w = World([bodies[0]], **settings)
    worlds.append(w)
    name = bodies[0]["metadata"]["name"]
    w.cycle()
    w.run_pod(f"{name}-a1-0")
    w.cycle()
    assert w.status(name)["phase"] == "Running"
    for b in bodies[1:]:
        w.kube.jobs[(b["metadata"]["namespace"], b["metadata"]["name"])] = b
    return w


def test_a_queued_job_that_fits_is_admitted_and_its_pods_created(worlds: list[World]) -> None:
    w = World([job_body("bot", gpus=2)])
    worlds.append(w)
    w.cycle()
    st = w.status("bot")
    assert st["phase"] == "Admitted" and st["attempt"] == 1
    writes = w.kube.writes("team-a/bot-a1-0")
    assert writes == [("create", "Pod", "team-a/bot-a1-0")]
    assert w.kube.writes("team-a/bot")[0] == ("patch", "FineTuneJob", "team-a/bot")
    assert [e[1] for e in w.kube.events] == ["Admitted"]
    # the pod runs: the job is Running, with one status write
    w.run_pod("bot-a1-0")
    before = len(w.kube.writes())
    w.cycle()
    assert w.status("bot")["phase"] == "Running"
    assert w.new_writes(before) == [("patch", "FineTuneJob", "team-a/bot")]


def test_a_burst_of_admissions_records_every_decision_before_creating_children(
        worlds: list[World]) -> None:
    """More admissions in one cycle than write threads: every job's Admitted status lands
    before the first child is created (the decisions at the rate of status patches), each
    job still has its status before its pod, and the Events come after (in the background)."""
    n = 40  # > max_concurrent_writes (16)
    w = World([job_body(f"j-{i:02d}", gpus=1) for i in range(n)], gpus=n)
    worlds.append(w)
    w.cycle()
    assert all(w.status(f"j-{i:02d}")["phase"] == "Admitted" for i in range(n))
    writes = w.kube.writes()
    patches = [i for i, c in enumerate(writes) if c[:2] == ("patch", "FineTuneJob")]
    creates = [i for i, c in enumerate(writes) if c[0] == "create" and c[1] != "Event"]
    assert len(patches) == n and len(creates) >= n  # a pod each (and its ConfigMap)
    assert max(patches) < min(creates), writes[:n + 4]
    assert sorted(e[1] for e in w.kube.events) == ["Admitted"] * n


def test_a_job_the_policy_admits_overtakes_its_own_queued_status_write(
        worlds: list[World]) -> None:
    """A waiting job whose Queued status write has not started yet (the background pool busy
    with other waiting jobs' writes) is admitted in the cycle that frees its GPUs: its queued
    write is cancelled, not waited for, so the GPUs are never idle behind the queue texts."""
    w = running_world(worlds, job_body("run", gpus=8, priority_class="finetune-normal"),
                      job_body("blocker", gpus=8, priority_class="finetune-low"),
                      max_concurrent_writes=2)  # one background writer
    gate, patch = threading.Event(), w.kube.patch_job_status

    def held(ns: str, name: str, status: dict[str, Any], rv: str | None = None) -> Any:
        if name == "blocker":
            assert gate.wait(10)
        return patch(ns, name, status, rv)

    w.kube.patch_job_status = held  # type: ignore[method-assign]

    def cycle() -> None:  # no drain: the blocker's write is held
        w.clock.advance(1)
        sync(w.ctrl, w.kube)
        w.ctrl.run_cycle(w.clock.now())
        sync(w.ctrl, w.kube)

    cycle()  # the blocker's first status: the one background writer holds it
    w.kube.jobs[("team-a", "high")] = job_body("high", gpus=8, priority_class="finetune-normal")
    cycle()  # high's first status: queued behind it
    assert w.kube.jobs[("team-a", "high")]["metadata"]["uid"] in w.ctrl.executor.inflight()
    w.complete_pod("run-a1-0")
    for _ in range(3):
        cycle()
        if w.status("high").get("phase") == "Admitted":
            break
    assert w.status("high").get("phase") == "Admitted"  # while the blocker's write waits
    assert ("create", "Pod", "team-a/high-a1-0") in w.kube.writes()
    gate.set()
    w.ctrl.executor.drain()
    assert w.status("high")["phase"] == "Admitted"  # its cancelled Queued write never lands
    assert w.status("blocker")["phase"] == "Queued"


def test_a_higher_priority_job_preempts_when_the_gpus_are_full(worlds: list[World]) -> None:
    low = job_body("low", gpus=8, priority_class="finetune-low")
    urgent = job_body("urgent", gpus=8, priority_class="finetune-critical",
                      created="2026-01-02T12:00:00Z")
    w = running_world(worlds, low, urgent)
    w.clock.advance(120)  # past min_runtime_before_preemption_seconds
    w.cycle()
    st = w.status("low")
    assert st["phase"] == "Preempting", st
    # deleted gracefully: the pod's own grace period (the trainer saves a checkpoint)
    assert ("delete", "Pod", "team-a/low-a1-0") in w.kube.writes()
    assert w.kube.graces["team-a/low-a1-0"] is None
    assert w.status("urgent")["phase"] == "Queued"
    assert w.kube.writes().count(("create", "Pod", "team-a/low-a1-0")) == 1  # not recreated
    # the victim's pod is gone: it is back in the queue, the preemption counted; the
    # preemptor is admitted onto the GPUs it freed
    w.gone("low-a1-0")
    w.cycle()
    st = w.status("low")
    assert st["phase"] == "Queued" and st["preemptions"] == 1 and st.get("failures", 0) == 0
    assert "Preempted" in [e[1] for e in w.kube.events if e[0] == "team-a/low"]
    w.cycle()
    assert w.status("urgent")["phase"] == "Admitted"
    assert ("create", "Pod", "team-a/urgent-a1-0") in w.kube.writes()


def test_suspend_stops_the_pods_and_parks_the_job(worlds: list[World]) -> None:
    w = running_world(worlds, job_body("bot", gpus=2))
    w.edit_spec("bot", suspend=True)
    w.cycle()
    assert w.status("bot")["phase"] == "Suspended"
    assert ("delete", "Pod", "team-a/bot-a1-0") in w.kube.writes()
    assert w.kube.graces["team-a/bot-a1-0"] is None  # graceful: a checkpoint is saved
    w.gone("bot-a1-0")
    w.cycle()
    st = w.status("bot")
    assert st["phase"] == "Suspended"
    assert st.get("failures", 0) == 0 and st.get("preemptions", 0) == 0
    cond = next(c for c in st["conditions"] if c["type"] == "Suspended")
    assert cond["status"] == "True" and cond["reason"] == "Suspended"
    # parked: nothing more is written
    before = len(w.kube.writes())
    w.cycle(30)
    assert w.new_writes(before) == []


def test_a_failed_pod_retries_with_backoff_then_fails_the_job(worlds: list[World]) -> None:
    w = running_world(worlds, job_body("bot", gpus=2, backoffLimit=1))
    w.fail_pod("bot-a1-0")
    w.cycle()
    st = w.status("bot")
    assert st["phase"] == "Queued" and st["failures"] == 1 and st.get("retryAfter")
    assert "AttemptFailed" in [e[1] for e in w.kube.events]
    # waits out its backoff: not admitted before retryAfter
    w.cycle()
    assert w.status("bot")["phase"] == "Queued"
    assert ("create", "Pod", "team-a/bot-a2-0") not in w.kube.writes()
    w.cycle(w.settings.backoff_seconds(1) + 1)
    assert w.status("bot")["phase"] == "Admitted" and w.status("bot")["attempt"] == 2
    assert ("create", "Pod", "team-a/bot-a2-0") in w.kube.writes()
    w.run_pod("bot-a2-0")
    w.cycle()
    w.fail_pod("bot-a2-0")
    w.cycle()
    st = w.status("bot")
    assert st["phase"] == "Failed" and st["failures"] == 2
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"


def test_a_bad_termination_message_is_rejected_once_and_never_reaches_the_status(
        worlds: list[World]) -> None:
    w = running_world(worlds, job_body("bot"))
    w.fail_pod("bot-a1-0", message='{"reason": "Nope", "message": "tenant text"}')
    w.cycle()
    assert w.rejected == [("team-a/bot-a1-0", "invalid")]
    conds = w.status("bot").get("conditions") or []
    assert not any("tenant text" in str(c.get("message")) for c in conds)
    # the pod changes again (being deleted), its message does not: not counted again
    w.pod("bot-a1-0")["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    w.cycle()
    assert w.rejected == [("team-a/bot-a1-0", "invalid")]


def test_a_restarted_operator_with_running_jobs_writes_nothing(worlds: list[World]) -> None:
    w = running_world(worlds, job_body("one", gpus=2))
    w.kube.jobs[("team-a", "two")] = job_body("two", gpus=2, created="2026-01-02T11:00:00Z")
    w.cycle()
    w.run_pod("two-a1-0")
    w.cycle()
    assert [w.status(n)["phase"] for n in ("one", "two")] == ["Running", "Running"]
    w.ctrl.stop()
    w.ctrl = w.controller()  # a new process: caches filled by the watches' first lists
    before = len(w.kube.writes())
    for _ in range(5):
        w.cycle(10)
    assert w.new_writes(before) == []


def test_arrivals_in_a_steady_cluster_are_decided_in_quiet_rounds(worlds: list[World]) -> None:
    """A new job with room, its admission written back, its pod created and running: each
    cycle a quiet round of the admitter (jobs/decide.py), with the same writes as ever; the
    job finishing frees GPUs, and that cycle is a full round."""
    w = running_world(worlds, job_body("one", gpus=2), quiet_rounds=True)
    adm = w.ctrl.cycle.admitter
    assert isinstance(adm, NativeAdmitter)
    w.cycle()
    quiet = adm.quiet_rounds
    w.kube.jobs[("team-b", "two")] = job_body("two", "team-b", gpus=2,
                                              created="2026-01-02T11:00:00Z")
    w.cycle()
    assert w.status("two", "team-b")["phase"] == "Admitted"
    assert ("create", "Pod", "team-b/two-a1-0") in w.kube.writes()
    w.run_pod("two-a1-0", "team-b")
    w.cycle()
    assert w.status("two", "team-b")["phase"] == "Running"
    assert adm.quiet_rounds >= quiet + 2, (quiet, adm.quiet_rounds)
    quiet = adm.quiet_rounds
    w.complete_pod("two-a1-0", "team-b")
    w.cycle()
    w.cycle()
    assert w.status("two", "team-b")["phase"] == "Succeeded"
    assert adm.quiet_rounds <= quiet + 1, (quiet, adm.quiet_rounds)


def test_a_cycle_visits_only_the_jobs_that_may_have_changed(worlds: list[World]) -> None:
    """Per-job steps run for the jobs that are dirty, written, due or whose verdict changed;
    every other job keeps its metrics row. An idle cycle visits none, a new job itself and the
    job it is compared with nothing else, and the rows stay those a fresh sample gives."""
    bodies = [job_body(f"j{i:02d}", gpus=2, created=f"2026-01-02T10:{i:02d}:00Z")
              for i in range(12)]
    w = World(bodies)
    worlds.append(w)
    for _ in range(4):  # 4 admitted (8 GPUs), 8 wait; the writes land and echo back
        w.cycle()
    for i in range(4):
        w.run_pod(f"j{i:02d}-a1-0")
    for _ in range(3):
        w.cycle()
    assert [w.status(f"j{i:02d}")["phase"] for i in range(5)] == ["Running"] * 4 + ["Queued"]
    calls = len(w.kube.writes())
    w.cycle()
    assert w.ctrl.cycle.visited == 0 and len(w.kube.writes()) == calls  # idle: nothing
    w.kube.jobs[("team-a", "late")] = job_body("late", gpus=2, priority_class="finetune-low",
                                               created="2026-01-02T11:00:00Z")
    w.cycle()
    assert w.ctrl.cycle.visited == 1  # the new job only (last in the queue: nobody moves)
    assert w.status("late")["phase"] == "Queued"
    w.cycle()
    assert w.ctrl.cycle.visited == 1  # its status write echoed back
    w.cycle()
    assert w.ctrl.cycle.visited == 0
    rows = {(r["namespace"], r["name"]): r for r in metrics._SNAPSHOT.state[0]}
    fresh = {(b["metadata"]["namespace"], b["metadata"]["name"]): sample(e.job, e.job.status)
             for b in w.kube.jobs.values()
             if (e := w.ctrl.feeds.jobs.get(b["metadata"]["uid"])) and e.job is not None}
    assert rows == fresh and len(rows) == 13


def test_a_burst_ahead_of_a_long_queue_rewrites_only_the_places_that_were_exact(
        worlds: list[World]) -> None:
    """40 low-priority jobs wait behind a full node, then 30 high-priority ones arrive ahead
    of them. A status states the place exactly only among the first 10 (further back:
    ``positionAtLeast: 11``), so once the queue text has caught up, only the 10 low jobs that
    had an exact place were rewritten: the other 30, which moved from 11-40 to 41-70, were
    not (a coarse position would have rewritten most of them), and then nothing is written."""
    lows = [job_body(f"low-{i:02d}", gpus=1, priority_class="finetune-low",
                     created=f"2026-01-02T10:{i:02d}:00Z") for i in range(40)]
    w = World([job_body("holder", gpus=8, created="2026-01-02T09:00:00Z"), *lows])
    worlds.append(w)
    for _ in range(3):
        w.cycle()
    assert w.status("holder")["phase"] == "Admitted"
    assert [w.status(f"low-{i:02d}")["queue"].get("position") for i in range(12)] == \
        [*range(1, 11), None, None]
    assert w.status("low-39")["queue"]["positionAtLeast"] == 11
    before = len(w.kube.writes())
    for i in range(30):
        w.kube.jobs[("team-a", f"high-{i:02d}")] = job_body(
            f"high-{i:02d}", gpus=1, priority_class="finetune-high",
            created=f"2026-01-02T11:{i:02d}:00Z")
    for _ in range(180):  # 3 minutes: past the 60 s per-job interval of queue text
        w.cycle()
    after = w.kube.writes()[before:]
    lows_written = {k for verb, kind, k in after if kind == "FineTuneJob" and "/low-" in k}
    assert lows_written == {f"team-a/low-{i:02d}" for i in range(10)}
    assert all(w.status(f"low-{i:02d}")["queue"] == {
        "positionAtLeast": 11, "reason": w.status("low-00")["queue"]["reason"]}
        for i in range(40))
    assert [w.status(f"high-{i:02d}")["queue"].get("position") for i in range(12)] == \
        [*range(1, 11), None, None]
    calls = len(w.kube.writes())
    w.cycle(60)
    w.cycle()
    assert len(w.kube.writes()) == calls  # settled: nothing more to write


def test_cycles_are_debounced_but_a_new_job_is_decided_at_once() -> None:
    assert debounce(10.0, 10.05, 0.2, arrived=False) == pytest.approx(0.15)
    assert debounce(10.0, 10.05, 0.2, arrived=True) == 0.0   # an arrival: no wait
    assert debounce(10.0, 10.5, 0.2, arrived=False) == 0.0   # the interval has passed
    assert debounce(10.0, 10.05, 0.0, arrived=False) == 0.0  # debounce off
