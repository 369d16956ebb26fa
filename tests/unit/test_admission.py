"""admit(): ordering, aging, quota, capacity, gang, namespace limit, impossible jobs, reasons,
determinism (the factories are in tests/builders/admission.py)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

import pytest

from finetune_operator.admission import (
    ImpossibleCode,
    NodeInfo,
    Policy,
    PolicyResult,
    Quota,
    RunningJob,
    Taint,
    Toleration,
    WaitCode,
    admit,
    effective_priority,
    queue_order,
)
from tests.builders.admission import (
    GPU,
    NOW,
    admitted,
    ago,
    make_job,
    make_node,
    make_running,
    snap,
    waiting,
)

pytestmark = pytest.mark.unit


# --- ordering and aging -----------------------------------------------------------------------

def test_order_is_priority_then_creation_then_name() -> None:
    jobs = [make_job("b", priority=100, created=ago(5)), make_job("a", priority=100,
                                                                  created=ago(5)),
            make_job("old", priority=100, created=ago(10)), make_job("high", priority=200)]
    order = [j.name for j in queue_order(jobs, NOW, Policy(aging_rate_per_minute=0))]
    assert order == ["high", "old", "a", "b"]


def test_only_as_many_as_fit_are_admitted_in_order() -> None:
    jobs = [make_job(f"j{i}", gpus=4, priority=100 + i) for i in range(4)]
    d = admit(snap(jobs, nodes=[make_node("n1", 8)]), NOW)
    assert admitted(d) == ["j3", "j2"]
    assert waiting(d)["j1"][:2] == (1, "WaitingForHigherPriority")
    assert waiting(d)["j1"][2] == "waiting behind higher-priority jobs"
    assert waiting(d)["j0"][:2] == (2, "WaitingForHigherPriority")


def test_aging_raises_effective_priority_up_to_the_cap() -> None:
    policy = Policy(aging_rate_per_minute=10, aging_cap=50)
    old = make_job("old", priority=100, created=ago(3))
    assert effective_priority(old, NOW, policy) == pytest.approx(130)
    older = make_job("older", priority=100, created=ago(60))
    assert effective_priority(older, NOW, policy) == 150  # capped
    # a requeued job (preempted, suspended) keeps its age: aging counts from the first queue
    # entry, not from the latest requeue (status.queuedSince)
    requeued = make_job("requeued", priority=100, created=ago(60), queued_since=ago(1))
    assert effective_priority(requeued, NOW, policy) == 150
    late = make_job("late", priority=100, created=ago(60), first_queued_at=ago(2),
                    queued_since=ago(1))
    assert effective_priority(late, NOW, policy) == pytest.approx(120)


def test_aged_job_overtakes_a_fresh_job_within_the_cap_but_not_a_higher_band() -> None:
    policy = Policy(aging_rate_per_minute=10, aging_cap=50)
    old_low = make_job("old-low", priority=100, created=ago(30))  # 150
    fresh_mid = make_job("fresh-mid", priority=140)  # 140
    fresh_high = make_job("fresh-high", priority=1000)  # a higher band: never overtaken
    order = [j.name for j in queue_order([fresh_mid, old_low, fresh_high], NOW, policy)]
    assert order == ["fresh-high", "old-low", "fresh-mid"]
    d = admit(snap([fresh_mid, old_low], nodes=[make_node("n1", 1)], aging_rate_per_minute=10,
                   aging_cap=50), NOW)
    assert admitted(d) == ["old-low"]


# --- quota ------------------------------------------------------------------------------------

def test_quota_blocks_and_names_namespace_and_what_to_do() -> None:
    d = admit(snap([make_job("big", gpus=2)], quotas={"team-a": (4, 3)}), NOW)
    assert admitted(d) == []
    assert waiting(d)["big"] == (1, "QuotaExhausted", "needs 2 nvidia.com/gpu; quota team-a has "
                                 "1 free; lower resources.gpus or wait")


def test_quota_is_per_namespace_and_counts_gang_total() -> None:
    jobs = [make_job("gang", gpus=2, nodes=2, priority=200),
            make_job("b", namespace="team-b", gpus=2)]
    d = admit(snap(jobs, nodes=[make_node("n1"), make_node("n2")],
                   quotas={"team-a": (4, 1), "team-b": (2, 0)}), NOW)
    assert admitted(d) == ["b"]
    assert waiting(d)["gang"][2].startswith("needs 4 nvidia.com/gpu; quota team-a has 3 free")


def test_quota_taken_by_jobs_admitted_earlier_in_the_same_round() -> None:
    jobs = [make_job("a1", gpus=2, priority=200), make_job("a2", gpus=2)]
    d = admit(snap(jobs, quotas={"team-a": (3, 0)}), NOW)
    assert admitted(d) == ["a1"]
    assert waiting(d)["a2"][:2] == (1, "WaitingForHigherPriority")
    assert "quota team-a" in waiting(d)["a2"][2]


def test_several_quotas_in_a_namespace_all_apply() -> None:
    s = snap([make_job("j", gpus=2)])
    s = replace(s, quotas=[Quota(namespace="team-a", resource=GPU, hard=8, used=0),
                           Quota(namespace="team-a", resource=GPU, hard=4, used=3)])
    assert waiting(admit(s, NOW))["j"][1] == "QuotaExhausted"


def test_quota_counts_admitted_jobs_whose_pods_do_not_exist_yet() -> None:
    run = make_running("r", gpus=2, counted_in_quota=False)
    d = admit(snap([make_job("j", gpus=2)], running=[run], quotas={"team-a": (3, 0)}), NOW)
    assert waiting(d)["j"][1] == "QuotaExhausted"


def test_other_resource_quota_does_not_apply() -> None:
    mig = "nvidia.com/mig-1g.10gb"
    s = snap([make_job("j", gpus=1, gpu_resource=mig)],
             nodes=[NodeInfo(name="m", allocatable={mig: 7}, free={mig: 7})],
             quotas={"team-a": (0, 0)})
    d = admit(s, NOW)
    assert admitted(d) == ["j"] and d.admit[0].placement == ("m",)


# --- capacity and placement -------------------------------------------------------------------

def test_needs_gpus_on_one_node() -> None:
    d = admit(snap([make_job("j", gpus=2)], nodes=[make_node("n1", 1), make_node("n2", 1)]),
              NOW)
    assert waiting(d)["j"] == (1, "InsufficientCapacity",
                               "needs 2 nvidia.com/gpu on one node; largest free node has 1")


def test_best_fit_placement_keeps_big_nodes_for_big_jobs() -> None:
    nodes = [make_node("big", 8), make_node("small", 2)]
    d = admit(snap([make_job("small-job", gpus=2, priority=200), make_job("big-job", gpus=8)],
                   nodes=nodes), NOW)
    assert {a.job.name: a.placement for a in d.admit} == {
        "small-job": ("small",), "big-job": ("big",)}


def _busy(node: str, gpus: int, hours: float | None) -> RunningJob:
    return make_running(f"run-{node}", gpus=gpus, on=node, expected_end_at=None
                        if hours is None else NOW + timedelta(hours=hours))


@pytest.mark.parametrize(("expected_h", "placed"), [
    (3.0, "n2"),  # ends before n2's job: keeps n2 busy no longer; n1 would stay busy 2.5 h more
    (None, "n1"),  # no expected run time: plain best fit (the fuller node)
])
def test_a_job_with_an_expected_run_time_goes_where_it_extends_the_busy_time_least(
        expected_h: float | None, placed: str) -> None:
    # n1: 6 GPUs busy for 30 more minutes (2 free); n2: 4 busy for 5 h (4 free)
    job = make_job("j", gpus=2, expected_seconds=None if expected_h is None
                   else expected_h * 3600)
    d = admit(snap([job], running=[_busy("n1", 6, 0.5), _busy("n2", 4, 5)],
                   nodes=[make_node("n1", 2), make_node("n2", 4)]), NOW)
    assert d.admit[0].placement == (placed,)


def test_placement_by_expected_ends_keeps_empty_nodes_last_then_best_fit() -> None:
    # n0 empty; n1 and n2 busy past the job's end: no extension on either, so best fit (n2)
    job = make_job("j", gpus=2, expected_seconds=3600)
    d = admit(snap([job], running=[_busy("n1", 2, 2), _busy("n2", 4, 2)],
                   nodes=[make_node("n0", 8), make_node("n1", 6), make_node("n2", 4)]), NOW)
    assert d.admit[0].placement == ("n2",)
    # the same job runs 3 h: it extends n1 and n2 by 1 h and the empty n0 by 3 h
    d = admit(snap([replace(job, expected_seconds=3 * 3600)],
                   running=[_busy("n1", 2, 2), _busy("n2", 4, 2)],
                   nodes=[make_node("n0", 8), make_node("n1", 6), make_node("n2", 4)]), NOW)
    assert d.admit[0].placement == ("n2",)


def test_gang_placement_by_expected_ends() -> None:
    # a 2-node gang of 4 GPUs for 2 h: n1 (busy 3 h) and n3 (busy 2.5 h) cost nothing; n2's
    # job ends in 10 min and n0 is empty
    job = make_job("g", gpus=4, nodes=2, expected_seconds=2 * 3600)
    running = [_busy("n1", 4, 3), _busy("n2", 4, 1 / 6), _busy("n3", 4, 2.5)]
    nodes = [make_node("n0", 8), make_node("n1", 4), make_node("n2", 4), make_node("n3", 4)]
    d = admit(snap([job], running=running, nodes=nodes), NOW)
    assert d.admit[0].placement == ("n1", "n3")


def test_running_job_without_eta_counts_as_ending_now_for_placement() -> None:
    # n1's job has no ETA (taken as ending now), n2's ends in 5 h: a 1-hour job goes to n2
    job = make_job("j", gpus=2, expected_seconds=3600)
    d = admit(snap([job], running=[_busy("n1", 4, None), _busy("n2", 4, 5)],
                   nodes=[make_node("n1", 4), make_node("n2", 4)]), NOW)
    assert d.admit[0].placement == ("n2",)


def test_backfill_smaller_job_behind_a_blocked_one() -> None:
    jobs = [make_job("big", gpus=4, priority=200), make_job("small", gpus=1)]
    d = admit(snap(jobs, nodes=[make_node("n1", 2)]), NOW)
    assert admitted(d) == ["small"]
    assert waiting(d)["big"][:2] == (1, "InsufficientCapacity")


def test_cordoned_nodes_take_no_pods() -> None:
    d = admit(snap([make_job("j")], nodes=[make_node("n1", unschedulable=True)]), NOW)
    assert waiting(d)["j"][1:] == (
        "NoMatchingNodes", "no schedulable node offers nvidia.com/gpu: the 1 node(s) that offer "
        "it are cordoned (kubectl uncordon); wait for nodes")
    assert not d.impossible


def test_node_selector_and_taints() -> None:
    nodes = [make_node("plain", 8),
             make_node("a100", 8, labels={"gpu": "a100"},
                       taints=(Taint(key="dedicated", value="ml"),)),
             make_node("soft", 8, taints=(Taint(key="x", effect="PreferNoSchedule"),))]
    wants_a100 = make_job("a100-job", priority=300, node_selector={"gpu": "a100"})
    tolerant = make_job("tolerant-a100", priority=200, node_selector={"gpu": "a100"},
                        tolerations=(Toleration(key="dedicated", value="ml"),))
    anywhere = make_job("anywhere", gpus=8, priority=100)
    d = admit(snap([wants_a100, tolerant, anywhere], nodes=nodes), NOW)
    placed = {a.job.name: a.placement for a in d.admit}
    assert placed == {"tolerant-a100": ("a100",), "anywhere": ("plain",)}
    assert waiting(d)["a100-job"][1:] == (
        "NoMatchingNodes", "no schedulable node matching resources.nodeSelector/tolerations "
        "offers nvidia.com/gpu (3 node(s) offer it, with other labels or taints, or cordoned); "
        "change resources.nodeSelector/tolerations or wait for nodes")


def test_exists_toleration_matches_every_taint() -> None:
    node = make_node("t", taints=(Taint(key="a", effect="NoExecute"), Taint(key="b")))
    d = admit(snap([make_job("j", tolerations=(Toleration(operator="Exists"),))],
                   nodes=[node]), NOW)
    assert admitted(d) == ["j"]


def test_unbound_pods_of_admitted_jobs_are_placed_virtually() -> None:
    # r was admitted last round; the scheduler has not bound its pod: n1 still shows 8 free
    run = make_running("r", gpus=6, on=())
    d = admit(snap([make_job("j", gpus=4)], running=[run], nodes=[make_node("n1", 8)]), NOW)
    assert admitted(d) == []
    assert waiting(d)["j"][2] == "needs 4 nvidia.com/gpu on one node; largest free node has 2"


def test_cpu_jobs_need_no_gpu_and_no_node() -> None:
    d = admit(snap([make_job("cpu", gpus=0)], nodes=[], quotas={"team-a": (0, 0)}), NOW)
    assert admitted(d) == ["cpu"] and d.admit[0].placement == ()


# --- gang -------------------------------------------------------------------------------------

def test_gang_is_admitted_whole_on_distinct_nodes() -> None:
    nodes = [make_node(f"n{i}", 4) for i in range(3)]
    d = admit(snap([make_job("gang", gpus=4, nodes=3)], nodes=nodes), NOW)
    assert d.admit[0].placement == ("n0", "n1", "n2")


def test_gang_is_not_admitted_in_part() -> None:
    nodes = [make_node("n0", 4), make_node("n1", 4), make_node("n2", 3)]
    d = admit(snap([make_job("gang", gpus=4, nodes=3), make_job("one", gpus=3)], nodes=nodes),
              NOW)
    assert admitted(d) == ["one"]  # the gang takes nothing, so the small job fits
    assert d.admit[0].placement == ("n2",)
    assert waiting(d)["gang"][1:] == ("InsufficientCapacity",
                                      "needs 3 nodes with 4 nvidia.com/gpu free each; "
                                      "2 node(s) have that")


def test_gang_never_packs_two_pods_on_one_node() -> None:
    d = admit(snap([make_job("gang", gpus=2, nodes=2)], nodes=[make_node("n1", 8)]), NOW)
    assert not d.admit and d.impossible[0].code is ImpossibleCode.NODE_CAPACITY


# --- namespace limit --------------------------------------------------------------------------

def test_max_running_jobs_per_namespace() -> None:
    running = [make_running("r1"), make_running("r2", on="n2")]
    jobs = [make_job("a"), make_job("b", namespace="team-b")]
    d = admit(snap(jobs, running=running, nodes=[make_node("n1"), make_node("n2")],
                   max_running_jobs_per_namespace=2), NOW)
    assert admitted(d) == ["b"]
    assert waiting(d)["a"] == (1, "NamespaceJobLimit", "namespace team-a already runs 2 jobs "
                               "(maxRunningJobsPerNamespace); wait for one to finish")


def test_namespace_limit_counts_admissions_of_this_round_not_stopping_jobs() -> None:
    stopping = make_running("stopping", preempting=True)
    jobs = [make_job("a", priority=200), make_job("b")]
    d = admit(snap(jobs, running=[stopping], max_running_jobs_per_namespace=1), NOW)
    assert admitted(d) == ["a"]
    assert waiting(d)["b"][1] == "NamespaceJobLimit"


# --- impossible -------------------------------------------------------------------------------

def test_impossible_more_gpus_per_pod_than_any_node() -> None:
    d = admit(snap([make_job("huge", gpus=16)], nodes=[make_node("n1", 0, allocatable=8)]), NOW)
    assert not d.waiting
    imp = d.impossible[0]
    assert imp.code is ImpossibleCode.NODE_CAPACITY
    assert imp.reason == ("needs 16 nvidia.com/gpu per pod but the largest node has 8 "
                          "allocatable; lower resources.gpus (and raise resources.nodes)")


def test_impossible_gang_larger_than_the_cluster() -> None:
    nodes = [make_node("n1", 8), make_node("n2", 8), make_node("small", 2, allocatable=2)]
    d = admit(snap([make_job("gang", gpus=4, nodes=3)], nodes=nodes), NOW)
    assert "only 2 node(s) have that many" in d.impossible[0].reason


def test_impossible_more_than_the_quota_hard_limit() -> None:
    d = admit(snap([make_job("j", gpus=4, nodes=2)], nodes=[make_node("a"), make_node("b")],
                   quotas={"team-a": (6, 0)}), NOW)
    assert d.impossible[0].code is ImpossibleCode.QUOTA
    assert d.impossible[0].reason.startswith(
        "needs 8 nvidia.com/gpu in total but quota team-a allows at most 6")


def test_cordoned_big_node_still_makes_the_job_possible() -> None:
    nodes = [make_node("big", 8, unschedulable=True), make_node("small", 2, allocatable=2)]
    d = admit(snap([make_job("j", gpus=8)], nodes=nodes), NOW)
    assert not d.impossible and waiting(d)["j"][1] == "InsufficientCapacity"


def test_unknown_resource_waits_instead_of_failing() -> None:
    d = admit(snap([make_job("j", gpu_resource="amd.com/gpu")]), NOW)
    assert not d.impossible and waiting(d)["j"][1] == "NoMatchingNodes"


def test_no_node_offering_the_resource_names_the_usual_causes_of_a_fresh_install() -> None:
    """No device plugin: no node advertises any GPU resource."""
    d = admit(snap([make_job("j")], nodes=[NodeInfo(name="cpu", allocatable={}, free={})]), NOW)
    code, text = waiting(d)["j"][1:]
    assert code == "NoMatchingNodes"
    assert text.startswith("no node offers nvidia.com/gpu (in its status.allocatable): ")
    assert "GPU device plugin (or the GPU Operator) is usually missing" in text
    assert "resources.gpuResource" in text and "trainer.gpuResource" in text
    assert "policy.gpuResources" in text and "the nodes offer" not in text


def test_no_node_offering_the_resource_names_what_the_nodes_offer_instead() -> None:
    """A resource-name mismatch: the nodes advertise MIG slices, the job asks nvidia.com/gpu."""
    mig = "nvidia.com/mig-1g.10gb"
    nodes = [NodeInfo(name="a", allocatable={mig: 7}, free={mig: 7}),
             NodeInfo(name="b", allocatable={mig: 7, "example.com/fpga": 0}, free={mig: 7})]
    d = admit(snap([make_job("j")], nodes=nodes), NOW)
    text = waiting(d)["j"][2]
    assert "no node offers nvidia.com/gpu (in its status.allocatable); the nodes offer "\
        "nvidia.com/mig-1g.10gb: " in text  # each name once; a resource at 0 is not offered
    assert "set resources.gpuResource" in text


def test_impossible_jobs_take_no_queue_position() -> None:
    jobs = [make_job("huge", gpus=64, priority=300), make_job("a", gpus=8, priority=200),
            make_job("b", gpus=8)]
    d = admit(snap(jobs, nodes=[make_node("n1", 0)]), NOW)
    assert [i.job.name for i in d.impossible] == ["huge"]
    assert [(w.job.name, w.position) for w in d.waiting] == [("a", 1), ("b", 2)]


# --- determinism ------------------------------------------------------------------------------

def test_same_snapshot_in_any_input_order_gives_the_same_decisions() -> None:
    rng = random.Random(7)
    nodes = [make_node(f"n{i}", rng.randint(0, 8)) for i in range(12)]
    jobs = [make_job(f"j{i}", namespace=f"ns{i % 3}", gpus=rng.randint(1, 8),
                     priority=rng.choice([100, 200, 1000]), nodes=rng.choice([1, 1, 2]),
                     created=ago(rng.randint(0, 300)),
                     priority_class=rng.choice(["finetune-critical", "finetune-normal"]))
            for i in range(40)]
    running = [make_running(f"r{i}", namespace=f"ns{i % 3}", gpus=2, priority=100,
                            on=f"n{i}", started=ago(30)) for i in range(8)]
    base = snap(jobs, running=running, nodes=nodes, quotas={"ns0": (20, 4)},
                aging_rate_per_minute=1, aging_cap=50)
    first = admit(base, NOW)
    assert first.admit and first.waiting
    for _ in range(5):
        shuffled = replace(base, queued=rng.sample(jobs, len(jobs)),
                           running=rng.sample(running, len(running)),
                           nodes=rng.sample(nodes, len(nodes)))
        assert admit(shuffled, NOW) == first


def test_every_queued_job_is_accounted_for_once() -> None:
    jobs = [make_job(f"j{i}", gpus=i % 5, priority=100 + i) for i in range(30)]
    d = admit(snap(jobs, nodes=[make_node("n1", 6), make_node("n2", 3, allocatable=3)]), NOW)
    names = admitted(d) + [w.job.name for w in d.waiting] + [i.job.name for i in d.impossible]
    assert sorted(names) == sorted(j.name for j in jobs)
    assert [w.position for w in d.waiting] == list(range(1, len(d.waiting) + 1))


def test_a_queued_job_already_running_is_ignored() -> None:
    run = make_running("j")
    d = admit(snap([make_job("j")], running=[run]), NOW)
    assert d == PolicyResult()


def test_wait_codes_are_condition_reasons() -> None:
    assert WaitCode.QUOTA == "QuotaExhausted"
    assert str(ImpossibleCode.NODE_CAPACITY) == "ExceedsNodeCapacity"
