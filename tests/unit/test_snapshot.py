"""snapshot.py: the cluster as listed -> admission Snapshot -> one JobVerdict per job."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from finetune_api.job import FineTuneJob
from finetune_api.times import rfc3339
from finetune_operator.admission import QueuedJob, RunningJob, Snapshot, Toleration, admit
from finetune_operator.jobs.decide import build_snapshot, decide, holds_gpus, policy_error
from finetune_operator.jobs.reconcile import Ctx, JobVerdict, plan
from finetune_operator.settings import OperatorSettings
from tests.builders.jobs import make_job, make_settings
from tests.builders.pods import gang, make_pod
from tests.builders.reconcile import cached

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
GPU = "nvidia.com/gpu"
CLASSES = {"finetune-critical": 100000, "finetune-high": 10000, "finetune-normal": 1000,
           "finetune-low": 100}
SETTINGS = make_settings(aging_rate_per_minute=0, allowed_priority_classes=[
    "finetune-critical", "finetune-high", "finetune-normal", "finetune-low"])


def ago(seconds: float) -> str:
    return rfc3339(NOW - dt.timedelta(seconds=seconds))


def node(name: str, gpus: int = 8, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"pool": "a"}}, "spec": spec,
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi", GPU: str(gpus)}}}


def quota(namespace: str, hard: int, used: int = 0, resource: str = GPU) -> dict[str, Any]:
    key = f"requests.{resource}"
    return {"metadata": {"name": "gpus", "namespace": namespace},
            "spec": {"hard": {key: str(hard)}},
            "status": {"hard": {key: str(hard)}, "used": {key: str(used)}}}


def job(name: str = "bot", status: dict[str, Any] | None = None, **kw: Any) -> FineTuneJob:
    kw.setdefault("gpus", 2)
    kw.setdefault("created", ago(60))
    return make_job(name, status=status or {}, **kw)


def running_status(attempt: int = 1, started: float = 3600, **extra: Any) -> dict[str, Any]:
    return {"phase": "Running", "attempt": attempt, "startTime": ago(started),
            "admittedAt": ago(started + 10), "effectivePriorityClass": "finetune-low", **extra}


def snapshot(jobs: list[FineTuneJob], pods: dict[str, list[dict[str, Any]]] | None = None,
             nodes: list[dict[str, Any]] | None = None, quotas: list[dict[str, Any]] | None = None,
             settings: OperatorSettings = SETTINGS, active: list[dict[str, Any]] | None = None,
             ) -> Snapshot:
    pods = pods or {}
    if active is None:
        active = [p for ps in pods.values() for p in ps
                  if p["status"]["phase"] not in ("Succeeded", "Failed")]
    return build_snapshot(jobs, pods, CLASSES, settings, [node("node-0")] if nodes is None
                          else nodes, active, quotas or [], NOW)


def only_queued(s: Snapshot) -> QueuedJob:
    assert not s.running, s.running
    assert len(s.queued) == 1, s.queued
    return s.queued[0]


def only_running(s: Snapshot) -> RunningJob:
    assert not s.queued, s.queued
    assert len(s.running) == 1, s.running
    return s.running[0]


# ------------------------------------------------------------------ build_snapshot: queued


def test_queued_job_entry() -> None:
    j = job(gpus=2, nodes=2, priority_class="finetune-normal",
            status={"phase": "Queued", "queuedSince": ago(30)},
            resources={"nodeSelector": {"pool": "a"},
                       "tolerations": [{"key": "gpu", "operator": "Exists",
                                        "effect": "NoSchedule"}]})
    q = only_queued(snapshot([j]))
    assert (q.namespace, q.name, q.uid) == ("team-a", "bot", j.metadata.uid)
    assert q.priority == 1000 and q.priority_class == "finetune-normal"
    assert q.gpus == 2 and q.nodes == 2 and q.gpu_resource == GPU
    assert q.created_at == NOW - dt.timedelta(seconds=60)
    assert q.queued_since == NOW - dt.timedelta(seconds=30)
    assert dict(q.node_selector) == {"pool": "a"}
    assert q.tolerations == (Toleration(key="gpu", operator="Exists", effect="NoSchedule"),)


def test_new_job_without_status_is_queued_since_its_creation() -> None:
    q = only_queued(snapshot([job()]))
    assert q.queued_since == q.created_at == NOW - dt.timedelta(seconds=60)


def test_priority_class_defaults_from_settings() -> None:
    q = only_queued(snapshot([job(priority_class=None)]))
    assert q.priority_class == "finetune-normal" and q.priority == 1000


def test_effective_priority_class_in_status_wins() -> None:
    j = job(priority_class="finetune-high", status={"phase": "Queued",
                                                    "effectivePriorityClass": "finetune-low"})
    assert only_queued(snapshot([j])).priority_class == "finetune-low"


def test_gpu_resource_from_job_then_settings() -> None:
    mig = job(resources={"gpuResource": "nvidia.com/mig-1g.10gb"})
    assert only_queued(snapshot([mig])).gpu_resource == "nvidia.com/mig-1g.10gb"
    amd = make_settings(aging_rate_per_minute=0, gpu_resource="amd.com/gpu")
    assert only_queued(snapshot([job()], settings=amd)).gpu_resource == "amd.com/gpu"


@pytest.mark.parametrize("cls", ["system-cluster-critical", "finetune-missing"])
def test_job_with_a_bad_priority_class_is_left_out(cls: str) -> None:
    settings = make_settings(allowed_priority_classes=[*CLASSES, "finetune-missing"])
    s = snapshot([job(priority_class=cls)], settings=settings)
    assert not s.queued and not s.running


def test_job_in_backoff_waits_until_retry_after() -> None:
    status = {"phase": "Queued", "attempt": 1, "failures": 1, "retryAfter": ago(-30)}
    assert not snapshot([job(status=status)]).queued
    status["retryAfter"] = ago(0)
    assert only_queued(snapshot([job(status=status)])).name == "bot"


def test_suspended_jobs_are_not_queued() -> None:
    assert not snapshot([job(suspend=True)]).queued
    assert not snapshot([job(status={"phase": "Suspended"})]).queued
    s = snapshot([job(suspend=True, status={"phase": "Queued"})])
    assert not s.queued and not s.running


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_jobs_are_left_out(phase: str) -> None:
    s = snapshot([job(status={"phase": phase, "attempt": 1})])
    assert not s.queued and not s.running


# ------------------------------------------------------------------ build_snapshot: running


def test_running_job_entry() -> None:
    j = job(gpus=2, nodes=2, status=running_status(checkpoint={
        "step": 10, "path": "checkpoints/checkpoint-10", "savedAt": ago(120)}))
    pods = [make_pod(j, 1, 1, node="node-b"), make_pod(j, 1, 0, node="node-a")]
    r = only_running(snapshot([j], {j.metadata.uid: pods}, nodes=[node("node-a"),
                                                                     node("node-b")]))
    assert (r.name, r.uid, r.priority_class, r.priority) == ("bot", j.metadata.uid,
                                                             "finetune-low", 100)
    assert r.gpus == 2 and r.nodes == 2 and r.gpu_resource == GPU
    assert r.started_at == NOW - dt.timedelta(seconds=3600)
    assert r.last_checkpoint_at == NOW - dt.timedelta(seconds=120)
    assert r.placement == ("node-a", "node-b")
    assert r.counted_in_quota
    assert not r.preempting


@pytest.mark.parametrize(("saved_at", "counted_from"), [
    ("1000-01-01T00:00:00Z", 3600),   # a false savedAt, long before this attempt started
    (ago(7200), 3600),                # an earlier attempt's checkpoint
    (ago(-3600), 0),                  # "saved" in the future: no more than all of it
    (ago(120), 120),                  # this attempt's: as it says
])
def test_lost_work_counts_from_a_checkpoint_within_this_attempt(
        saved_at: str, counted_from: float) -> None:
    """Issue 19 finding 4: a checkpoint savedAt is used only within [attempt start, now]."""
    j = job(status=running_status(started=3600, checkpoint={
        "step": 10, "path": "checkpoints/checkpoint-10", "savedAt": saved_at}))
    r = only_running(snapshot([j], {j.metadata.uid: [make_pod(j, 1, 0)]}))
    assert r.last_checkpoint_at == NOW - dt.timedelta(seconds=counted_from)


def test_a_false_old_checkpoint_does_not_steer_preemption_onto_an_older_job() -> None:
    """Issue 19 finding 4: the younger job claiming a checkpoint from the year 1000 is the
    cheaper victim (less work since its start), not the older honest one."""
    honest = job("honest", gpus=4, priority_class="finetune-low",
                 status=running_status(started=7200))
    liar = job("liar", gpus=4, priority_class="finetune-low", status=running_status(
        started=3600, checkpoint={"step": 1, "path": "checkpoints/checkpoint-1",
                                  "savedAt": "1000-01-01T00:00:00Z"}))
    crit = job("urgent", gpus=4, priority_class="finetune-critical", created=ago(5))
    pods = {j.metadata.uid: [make_pod(j, 1, 0)] for j in (honest, liar)}
    active = [p for ps in pods.values() for p in ps]
    d = decide([honest, liar, crit], pods, CLASSES, SETTINGS, [node("node-0", 8)], active, [],
               NOW)
    assert d.by_uid[liar.metadata.uid].preempt is not None
    assert honest.metadata.uid not in d.by_uid


def test_a_job_whose_entry_fails_is_left_out_and_the_others_decided(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_operator.jobs import decide as module

    bad, good = job("bad", created=ago(120)), job("good", created=ago(60))
    entry = module.snapshot_entry

    def failing(j: FineTuneJob, *args: Any) -> Any:
        if j is bad:
            raise OverflowError("date value out of range")
        return entry(j, *args)

    monkeypatch.setattr(module, "snapshot_entry", failing)
    d = decide([bad, good], {}, CLASSES, SETTINGS, [node("node-0", 8)], [], [], NOW)
    assert d.by_uid[good.metadata.uid].admit
    assert bad.metadata.uid not in d.by_uid
    step, text = d.invalid[bad.metadata.uid]
    assert step == "snapshot" and "OverflowError: date value out of range" in text


def test_admitted_job_without_pods_holds_its_place_but_not_yet_its_quota() -> None:
    j = job(status={"phase": "Admitted", "attempt": 1, "admittedAt": ago(5)})
    r = only_running(snapshot([j]))
    assert r.started_at == NOW - dt.timedelta(seconds=5)
    assert r.placement == ()
    assert not r.counted_in_quota
    assert r.last_checkpoint_at is None


def test_placement_ignores_stale_terminated_and_unbound_pods() -> None:
    j = job(gpus=2, nodes=2, status=running_status(attempt=2))
    pods = [make_pod(j, 1, 0, node="old"),                   # an older attempt
            make_pod(j, 2, 0, node="node-a"),
            make_pod(j, 2, 1, phase="Pending", node=None)]  # not bound yet
    r = only_running(snapshot([j], {j.metadata.uid: pods}))
    assert r.placement == ("node-a",)
    assert r.counted_in_quota  # both pods of the attempt exist: the quota controller counts them


def test_placement_of_cached_pods_skips_a_node_name_of_none() -> None:
    """The cache keeps an unbound pod's spec.nodeName as None (slim_pod): it holds no node."""
    j = job(gpus=2, nodes=2, status=running_status(attempt=2))
    pods = cached([make_pod(j, 2, 0, node="node-a"),
                   make_pod(j, 2, 1, phase="Pending", node=None)])
    assert pods[1]["spec"]["nodeName"] is None
    r = only_running(snapshot([j], {j.metadata.uid: pods}))
    assert r.placement == ("node-a",)


def test_gang_partly_created_is_not_counted_in_quota() -> None:
    j = job(gpus=2, nodes=2, status={"phase": "Admitted", "attempt": 1, "admittedAt": ago(1)})
    r = only_running(snapshot([j], {j.metadata.uid: [make_pod(j, 1, 0)]}))
    assert not r.counted_in_quota


@pytest.mark.parametrize(("status", "suspend"), [
    ({"phase": "Preempting", "attempt": 1, "startTime": ago(60)}, False),
    ({"phase": "Suspended", "attempt": 1, "startTime": ago(60), "stopReason": "suspend"}, True),
    ({"phase": "Running", "attempt": 1, "startTime": ago(60)}, True),  # suspend not seen yet
])
def test_stopping_jobs_are_marked_preempting(status: dict[str, Any], suspend: bool) -> None:
    j = job(status=status, suspend=suspend)
    r = only_running(snapshot([j], {j.metadata.uid: [make_pod(j, 1, 0)]}))
    assert r.preempting


def test_suspended_job_whose_pods_are_gone_holds_nothing() -> None:
    j = job(status={"phase": "Suspended", "attempt": 1, "startTime": ago(60)}, suspend=True)
    s = snapshot([j], {j.metadata.uid: [make_pod(j, 1, 0, exit_code=0)]})
    assert not s.running and not s.queued


def test_queued_job_whose_pods_still_run_holds_their_gpus() -> None:
    """Re-queued (failure/preemption) while a pod of the attempt still runs: its GPUs are taken,
    and it is not offered for admission again until they are free."""
    j = job(status={"phase": "Queued", "attempt": 1, "startTime": ago(60)})
    pods = {j.metadata.uid: [make_pod(j, 1, 0, deleting=True)]}
    assert holds_gpus(j, pods[j.metadata.uid])
    r = only_running(snapshot([j], pods))
    assert r.placement == ("node-0",)
    assert not holds_gpus(j, [make_pod(j, 1, 0, exit_code=1)])


def test_resumed_attempt_counts_its_runtime_from_its_own_admission() -> None:
    """minRuntimeBeforePreemption protects each attempt: a job re-admitted 10 s ago after a
    preemption has run 10 s, not since the first attempt's startTime (else it can be preempted
    again at once, before it makes any progress)."""
    j = job(status={"phase": "Running", "attempt": 2, "startTime": ago(7200),
                    "admittedAt": ago(10), "preemptions": 1,
                    "effectivePriorityClass": "finetune-low"})
    r = only_running(snapshot([j], {j.metadata.uid: [make_pod(j, 2, 0)]}))
    assert r.started_at == NOW - dt.timedelta(seconds=10)


def test_first_attempt_runtime_counts_from_its_start() -> None:
    j = job(status=running_status(started=600))
    r = only_running(snapshot([j], {j.metadata.uid: [make_pod(j, 1, 0)]}))
    assert r.started_at == NOW - dt.timedelta(seconds=600)


def test_nodes_quotas_and_policy_are_parsed() -> None:
    j = job(status=running_status())
    other = {"metadata": {"name": "x"}, "spec": {"nodeName": "node-0", "containers": [
        {"name": "c", "resources": {"requests": {GPU: "3"}}}]}, "status": {"phase": "Running"}}
    settings = make_settings(aging_rate_per_minute=5, aging_cap=100,
                             max_running_jobs_per_namespace=2,
                             preempting_priority_classes=["finetune-high"],
                             min_runtime_before_preemption_seconds=60)
    s = snapshot([j], {j.metadata.uid: [make_pod(j, 1, 0)]},
                 nodes=[node("node-0", 8), node("node-1", 4, unschedulable=True)],
                 quotas=[quota("team-a", 8, 2), quota("team-b", 4)], settings=settings,
                 active=[make_pod(j, 1, 0), other])
    free = {n.name: dict(n.free) for n in s.nodes}
    assert free == {"node-0": {GPU: 3}, "node-1": {GPU: 4}}  # 8 - 2 (the job) - 3 (another pod)
    assert [n.unschedulable for n in s.nodes] == [False, True]
    assert [(q.namespace, q.hard, q.used) for q in s.quotas] == [("team-a", 8, 2),
                                                                 ("team-b", 4, 0)]
    assert s.policy.aging_rate_per_minute == 5 and s.policy.aging_cap == 100
    assert s.policy.max_running_jobs_per_namespace == 2
    assert s.policy.preempting_priority_classes == frozenset({"finetune-high"})
    assert s.policy.min_runtime_before_preemption_seconds == 60


def test_snapshot_is_deterministic() -> None:
    jobs = [job("a"), job("b", status=running_status()), job("c", priority_class="finetune-low")]
    pods = {jobs[1].metadata.uid: [make_pod(jobs[1], 1, 0)]}
    assert snapshot(jobs, pods) == snapshot(jobs, pods)


# ------------------------------------------------------------------ decide


def test_decide_admits_what_fits_and_queues_the_rest() -> None:
    first = job("first", gpus=4, created=ago(120))
    second = job("second", gpus=4, created=ago(60))
    third = job("third", gpus=4, created=ago(30))
    d = decide([third, first, second], {}, CLASSES, SETTINGS, [node("node-0", 8)], [], [], NOW)
    # admitted with the node the policy counted on (the pods prefer it)
    assert d.by_uid[first.metadata.uid] == JobVerdict(admit=True, placement=("node-0",))
    assert d.by_uid[second.metadata.uid] == JobVerdict(admit=True, placement=("node-0",))
    wait = d.by_uid[third.metadata.uid]
    assert not wait.admit and wait.position == 1 and wait.reason
    assert d.get("unknown", JobVerdict(reason="dflt")).reason == "dflt"


def test_decide_does_not_hand_out_gpus_of_an_admitted_job_without_pods() -> None:
    holder = job("holder", gpus=8, status={"phase": "Admitted", "attempt": 1,
                                           "admittedAt": ago(1)})
    waiter = job("waiter", gpus=8)
    d = decide([holder, waiter], {}, CLASSES, SETTINGS, [node("node-0", 8)], [], [], NOW)
    assert not d.get(waiter.metadata.uid, JobVerdict()).admit
    assert holder.metadata.uid not in d.by_uid


def test_decide_reports_impossible_jobs() -> None:
    huge = job("huge", gpus=16)
    d = decide([huge], {}, CLASSES, SETTINGS, [node("node-0", 8)], [], [], NOW)
    dec = d.by_uid[huge.metadata.uid]
    assert dec.impossible is not None and "16" in dec.impossible
    assert not dec.admit


def test_decide_preempts_a_lower_priority_running_job_for_a_critical_one() -> None:
    low = job("low", gpus=8, priority_class="finetune-low", status=running_status())
    crit = job("urgent", gpus=8, priority_class="finetune-critical", created=ago(5))
    pods = {low.metadata.uid: [make_pod(low, 1, 0)]}
    active = pods[low.metadata.uid]
    d = decide([low, crit], pods, CLASSES, SETTINGS, [node("node-0", 8)], active, [], NOW)
    victim = d.by_uid[low.metadata.uid]
    assert victim.preempt is not None and "team-a/urgent" in victim.preempt
    waiting = d.by_uid[crit.metadata.uid]
    assert not waiting.admit and waiting.preempt is None
    assert "preempting" in waiting.reason


def test_decide_respects_min_runtime_before_preemption() -> None:
    low = job("low", gpus=8, priority_class="finetune-low", status=running_status(started=30))
    crit = job("urgent", gpus=8, priority_class="finetune-critical", created=ago(5))
    pods = {low.metadata.uid: [make_pod(low, 1, 0)]}
    d = decide([low, crit], pods, CLASSES, SETTINGS, [node("node-0", 8)],
               pods[low.metadata.uid], [], NOW)
    assert low.metadata.uid not in d.by_uid


def test_decide_quota_blocks_and_reports_quota_hard() -> None:
    j = job(gpus=4)
    d = decide([j], {}, CLASSES, SETTINGS, [node("node-0", 8)], [],
               [quota("team-a", 8, 6), quota("team-a", 6, 0), quota("team-b", 2),
                quota("team-c", 5, resource="amd.com/gpu")], NOW)
    dec = d.by_uid[j.metadata.uid]
    assert not dec.admit and "quota team-a" in dec.reason
    assert d.quotas == {"team-a": 6, "team-b": 2}


def test_decide_then_plan_admits_exactly_one_of_two_competing_jobs() -> None:
    a, b = job("a", gpus=8, created=ago(100)), job("b", gpus=8, created=ago(50))
    d = decide([a, b], {}, CLASSES, SETTINGS, [node("node-0", 8)], [], [], NOW)
    plans = {j.metadata.name: plan(j, [], d.get(j.metadata.uid, JobVerdict()),
                                   Ctx(now=NOW, backoff_seconds=10))
             for j in (a, b)}
    assert plans["a"].status.phase == "Admitted" and plans["a"].create_attempt == 1
    assert plans["b"].status.phase == "Queued" and plans["b"].create_attempt is None
    assert plans["b"].status.queue is not None and plans["b"].status.queue.position == 1


def test_decide_then_plan_preempts_the_victim() -> None:
    low = job("low", gpus=8, priority_class="finetune-low", status=running_status())
    crit = job("urgent", gpus=8, priority_class="finetune-critical", created=ago(5))
    pods = gang(low, 1)
    d = decide([low, crit], {low.metadata.uid: pods}, CLASSES, SETTINGS, [node("node-0", 8)],
               pods, [], NOW)
    p = plan(low, pods, d.get(low.metadata.uid, JobVerdict()), Ctx(now=NOW, backoff_seconds=10))
    assert p.status.phase == "Preempting"
    assert [x["metadata"]["name"] for x in p.delete_pods] == ["low-a1-0"]


def _waiting_case(case: str) -> tuple[list[FineTuneJob], list[dict[str, Any]],
                                      list[dict[str, Any]], FineTuneJob]:
    """(jobs, nodes, quotas, the job that waits) for one wait code of the admission policy."""
    if case == "WaitingForHigherPriority":
        high = job("high", gpus=4, priority_class="finetune-high")
        low = job("low", gpus=4, priority_class="finetune-low")
        return [high, low], [node("node-0", 4)], [quota("team-a", 4)], low
    if case == "NoMatchingNodes":
        j = job("picky", gpus=1, resources={"nodeSelector": {"pool": "b"}})
        return [j], [node("node-0", 8)], [], j
    if case == "QuotaExhausted":
        j = job("big", gpus=4)
        return [j], [node("node-0", 8)], [quota("team-a", 8, 6)], j
    if case == "InsufficientCapacity":
        j = job("wide", gpus=4, nodes=2)
        return [j], [node("node-0", 4), node("node-1", 4, unschedulable=True)], [], j
    raise AssertionError(case)


@pytest.mark.parametrize("code", ["QuotaExhausted", "InsufficientCapacity",
                                  "WaitingForHigherPriority", "NoMatchingNodes"])
def test_admitted_condition_reason_is_the_policys_wait_code(code: str) -> None:
    """WaitCode: 'Why a job waits; usable as the reason of its Admitted=False condition'. The
    condition must say what the policy decided, not a guess from the message's words."""
    jobs, nodes, quotas, waiter = _waiting_case(code)
    snap = build_snapshot(jobs, {}, CLASSES, SETTINGS, nodes, [], quotas, NOW)
    w = admit(snap, NOW).waiting_for(waiter.metadata.uid)
    assert w is not None and w.code.value == code  # the scenario is what it claims
    d = decide(jobs, {}, CLASSES, SETTINGS, nodes, [], quotas, NOW)
    p = plan(waiter, [], d.get(waiter.metadata.uid, JobVerdict()),
             Ctx(now=NOW, backoff_seconds=10))
    cond = next(c for c in p.status.conditions if c.type == "Admitted")
    assert cond.status == "False"
    assert cond.reason == code
    assert cond.message == w.reason


# ------------------------------------------------------------------ policy_error


def test_allowed_installed_class_is_fine() -> None:
    assert policy_error(job(priority_class="finetune-high"), SETTINGS, CLASSES) == (
        "finetune-high", None)


def test_default_class_when_none_is_named() -> None:
    assert policy_error(job(priority_class=None), SETTINGS, CLASSES) == ("finetune-normal", None)


def test_class_not_allowed_in_the_namespace() -> None:
    settings = make_settings(namespace_priority_classes={"team-a": ["finetune-low"]})
    cls, err = policy_error(job(priority_class="finetune-high"), settings, CLASSES)
    assert cls is None
    assert err is not None
    assert "finetune-high" in err and "team-a" in err and "finetune-low" in err


def test_system_class_is_rejected() -> None:
    classes = {**CLASSES, "system-cluster-critical": 2000000000}
    cls, err = policy_error(job(priority_class="system-cluster-critical"), SETTINGS, classes)
    assert cls is None and err is not None and "not allowed" in err


def test_allowed_class_that_is_not_installed() -> None:
    settings = make_settings(allowed_priority_classes=[*CLASSES, "finetune-batch"])
    cls, err = policy_error(job(priority_class="finetune-batch"), settings, CLASSES)
    assert cls == "finetune-batch"
    assert err is not None
    assert "PriorityClass finetune-batch does not exist" in err
    assert "spec.priorityClassName" in err


def test_default_class_not_allowed_in_the_namespace() -> None:
    settings = make_settings(namespace_priority_classes={"team-a": ["finetune-low"]})
    cls, err = policy_error(job(priority_class=None), settings, CLASSES)
    assert cls is None and err is not None and "spec.priorityClassName" in err
