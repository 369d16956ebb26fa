"""admit(): preemption policy (who may preempt, which victims, minimal sets, victims in flight)."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.admission import PolicyResult, QueuedJob, admit
from tests.builders.admission import (
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

CRIT = "finetune-critical"


def urgent(gpus: int = 4, namespace: str = "team-b", **kw: Any) -> QueuedJob:
    return make_job("urgent", namespace=namespace, gpus=gpus, priority=1000,
                    priority_class=CRIT, **kw)


def victims(d: PolicyResult) -> list[str]:
    return [p.victim.name for p in d.preempt]


def test_preempts_the_job_with_least_work_since_its_checkpoint() -> None:
    running = [
        make_running("fresh-ckpt", gpus=4, on="n1", started=ago(120), checkpoint=ago(1)),
        make_running("stale-ckpt", gpus=4, on="n2", started=ago(120), checkpoint=ago(50)),
        make_running("no-ckpt", gpus=4, on="n3", started=ago(30)),
    ]
    nodes = [make_node(n, 0, allocatable=4) for n in ("n1", "n2", "n3")]
    d = admit(snap([urgent()], running=running, nodes=nodes), NOW)
    assert victims(d) == ["fresh-ckpt"]
    p = d.preempt[0]
    assert p.preemptor.name == "urgent"
    assert p.reason == ("preempted to make room for team-b/urgent (finetune-critical, priority "
                        "1000 > 100); 240 GPU-seconds since its last checkpoint")
    assert waiting(d)["urgent"] == (1, "PreemptingLowerPriority",
                                    "preempting 1 lower-priority job(s) to make room: "
                                    "team-a/fresh-ckpt")
    assert d.waiting[0].reserved


def test_work_counts_gpus_times_time() -> None:
    running = [make_running("wide", gpus=4, on="n1", checkpoint=ago(10)),   # 2400 GPU-s
               make_running("narrow", gpus=1, on="n2", checkpoint=ago(30))]  # 1800 GPU-s
    nodes = [make_node("n1", 0, allocatable=4), make_node("n2", 0, allocatable=1)]
    d = admit(snap([urgent(gpus=1)], running=running, nodes=nodes), NOW)
    assert victims(d) == ["narrow"]


def test_then_lower_priority_on_equal_work() -> None:
    running = [make_running("p500", gpus=4, priority=500, on="n1", checkpoint=ago(5)),
               make_running("p100", gpus=4, priority=100, on="n2", checkpoint=ago(5))]
    nodes = [make_node("n1", 0, allocatable=4), make_node("n2", 0, allocatable=4)]
    assert victims(admit(snap([urgent()], running=running, nodes=nodes), NOW)) == ["p100"]


def test_only_strictly_lower_base_priority_is_preempted() -> None:
    running = [make_running("peer", gpus=4, priority=1000, on="n1", checkpoint=ago(1))]
    d = admit(snap([urgent()], running=running, nodes=[make_node("n1", 0, allocatable=4)]), NOW)
    assert d.preempt == ()
    assert waiting(d)["urgent"][1] == "InsufficientCapacity"


def test_aging_does_not_make_a_job_a_victim_or_a_preemptor() -> None:
    # effective priority is for ordering; preemption compares base priorities
    old = make_job("old-normal", gpus=4, priority=100, created=ago(600),
                   priority_class=CRIT)
    running = [make_running("r", gpus=4, priority=100, on="n1")]
    d = admit(snap([old], running=running, nodes=[make_node("n1", 0, allocatable=4)],
                   aging_rate_per_minute=10, aging_cap=999), NOW)
    assert d.preempt == ()


def test_min_runtime_before_preemption_is_respected() -> None:
    running = [make_running("young", gpus=4, on="n1", started=ago(seconds=100)),
               make_running("old", gpus=4, on="n2", started=ago(minutes=30), checkpoint=ago(20))]
    nodes = [make_node("n1", 0, allocatable=4), make_node("n2", 0, allocatable=4)]
    d = admit(snap([urgent()], running=running, nodes=nodes,
                   min_runtime_before_preemption_seconds=300), NOW)
    assert victims(d) == ["old"]  # young has less work but has not run 5 minutes
    d = admit(snap([urgent()], running=running[:1], nodes=nodes[:1],
                   min_runtime_before_preemption_seconds=300), NOW)
    assert d.preempt == ()


def test_no_preemption_for_classes_not_allowed_to() -> None:
    job = make_job("high", gpus=4, priority=1000, priority_class="finetune-high")
    running = [make_running("r", gpus=4, on="n1")]
    d = admit(snap([job], running=running, nodes=[make_node("n1", 0, allocatable=4)]), NOW)
    assert d.preempt == () and waiting(d)["high"][1] == "InsufficientCapacity"
    d = admit(snap([job], running=running, nodes=[make_node("n1", 0, allocatable=4)],
                   preempting_priority_classes=frozenset({"finetune-high"})), NOW)
    assert victims(d) == ["r"]


def test_no_preemption_when_it_fits() -> None:
    running = [make_running("r", gpus=4, on="n1")]
    d = admit(snap([urgent()], running=running, nodes=[make_node("n1", 4)]), NOW)
    assert admitted(d) == ["urgent"] and d.preempt == ()


def test_only_victims_that_make_it_fit_on_one_node() -> None:
    # the cheapest victim is on n1, but freeing n1 gives 2+2=4 < 6; n2 with 8 allocated works
    running = [make_running("cheap", gpus=2, on="n1", checkpoint=ago(1)),
               make_running("a", gpus=4, on="n2", checkpoint=ago(10)),
               make_running("b", gpus=4, on="n2", checkpoint=ago(20))]
    nodes = [make_node("n1", 2, allocatable=4), make_node("n2", 0, allocatable=8)]
    d = admit(snap([urgent(gpus=6)], running=running, nodes=nodes), NOW)
    assert sorted(victims(d)) == ["a", "b"]  # cheap would not help: dropped


def test_no_victim_set_no_preemption() -> None:
    running = [make_running("r", gpus=2, on="n1")]
    nodes = [make_node("n1", 2, allocatable=4), make_node("n2", 2, allocatable=4)]
    nodes.append(make_node("n3", 0, allocatable=4))
    d = admit(snap([urgent(gpus=4, nodes=3)], running=running, nodes=nodes), NOW)
    assert d.preempt == ()  # n3 is full of non-job pods: no victim can free it


def test_gang_preemption_frees_enough_nodes() -> None:
    running = [make_running(f"r{i}", gpus=4, on=f"n{i}", checkpoint=ago(i + 1))
               for i in range(4)]
    nodes = [make_node(f"n{i}", 0, allocatable=4) for i in range(4)]
    d = admit(snap([urgent(gpus=4, nodes=2)], running=running, nodes=nodes), NOW)
    assert victims(d) == ["r0", "r1"]


def test_quota_in_own_namespace_frees_only_with_a_victim_there() -> None:
    running = [make_running("other-ns", namespace="team-c", gpus=2, on="n1", checkpoint=ago(1)),
               make_running("own-ns", namespace="team-b", gpus=2, on="n1", checkpoint=ago(5))]
    d = admit(snap([urgent(gpus=2)], running=running, nodes=[make_node("n1", 4)],
                   quotas={"team-b": (2, 2)}), NOW)
    assert victims(d) == ["own-ns"]


def test_namespace_job_limit_can_be_freed_by_preemption() -> None:
    running = [make_running("mine", namespace="team-b", gpus=1, on="n1")]
    d = admit(snap([urgent(gpus=1)], running=running, nodes=[make_node("n1", 4)],
                   max_running_jobs_per_namespace=1), NOW)
    assert victims(d) == ["mine"]


def test_victims_in_flight_cause_no_more_preemptions() -> None:
    running = [make_running("stopping", gpus=4, on="n1", preempting=True),
               make_running("other", gpus=4, on="n2")]
    nodes = [make_node("n1", 0, allocatable=4), make_node("n2", 0, allocatable=4)]
    d = admit(snap([urgent()], running=running, nodes=nodes), NOW)
    assert d.preempt == ()
    assert waiting(d)["urgent"] == (1, "WaitingForPreemptedJobs",
                                    "waiting for 1 preempted job(s) to stop")


def test_gpus_of_stopping_jobs_are_not_counted_twice() -> None:
    running = [make_running("stopping", gpus=4, on="n1", preempting=True),
               make_running("other", gpus=4, on="n2", checkpoint=ago(1))]
    nodes = [make_node("n1", 0, allocatable=4), make_node("n2", 0, allocatable=4)]
    second = make_job("second", namespace="team-b", gpus=4, priority=1000, priority_class=CRIT,
                      created=NOW)
    first = make_job("first", namespace="team-b", gpus=4, priority=1000, priority_class=CRIT,
                     created=ago(1))
    d = admit(snap([first, second], running=running, nodes=nodes), NOW)
    assert waiting(d)["first"][1] == "WaitingForPreemptedJobs"
    assert victims(d) == ["other"] and d.preempt[0].preemptor.name == "second"


def test_lower_jobs_cannot_take_gpus_claimed_by_a_preemptor() -> None:
    running = [make_running("r", gpus=2, on="n1")]
    small = make_job("small", gpus=2, priority=50)
    d = admit(snap([urgent(gpus=4), small], running=running, nodes=[make_node("n1", 2,
                                                                              allocatable=4)]),
              NOW)
    assert victims(d) == ["r"]
    assert admitted(d) == []  # the 2 free GPUs on n1 are held for urgent
    assert waiting(d)["small"] == (2, "WaitingForHigherPriority",
                                   "waiting behind higher-priority jobs")


def test_a_victim_is_preempted_once_per_round() -> None:
    running = [make_running("r", gpus=8, on="n1")]
    jobs = [make_job(f"u{i}", namespace="team-b", gpus=4, priority=1000, priority_class=CRIT,
                     created=ago(i)) for i in range(3)]
    d = admit(snap(jobs, running=running, nodes=[make_node("n1", 0)]), NOW)
    assert victims(d) == ["r"]
    assert [w.code.value for w in d.waiting] == [
        "PreemptingLowerPriority",  # u2, the oldest: takes 4 of r's 8 GPUs
        "WaitingForPreemptedJobs",  # u1: the other 4, no new victim
        "InsufficientCapacity",  # u0: nothing left to preempt
    ]


def test_gpus_reserved_for_an_aged_job_ahead_are_not_freed_for_a_preemptor_behind() -> None:
    aged = make_job("aged", gpus=4, priority=500, created=ago(600), priority_class="high")
    behind = make_job("behind", gpus=2, priority=400, priority_class=CRIT)
    running = [make_running("r", gpus=2, on="n1"), make_running("s", gpus=2, on="n1")]
    d = admit(snap([aged, behind], running=running, nodes=[make_node("n1", 0, allocatable=4)],
                   aging_rate_per_minute=10, aging_cap=100), NOW)
    # stopping r or s would only refill what is held for `aged`: no pointless preemption
    assert d.preempt == ()
    assert waiting(d)["aged"][1] == "InsufficientCapacity" and d.waiting[0].reserved
    assert waiting(d)["behind"][2].endswith(
        "; preempting lower-priority jobs would not make room")
