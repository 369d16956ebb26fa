"""Bounded reservations and backfill: an aged job reserves GPUs only on the nodes where it can
start soonest; a smaller job may use reserved GPUs only when it is expected to end before the
reserved job could start (its own expected run time against the running jobs' ETAs), so the
reserved job is never delayed; and reservations beyond the first keep at most a configured
share of the free GPUs idle."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from finetune_operator.admission import QueuedJob, RunningJob, admit, queue_order
from finetune_operator.admission.model import Policy
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

AGING: dict[str, Any] = {"aging_rate_per_minute": 10.0, "aging_cap": 100.0}  # reserve at 10 min


def in_minutes(m: float) -> Any:
    return NOW + timedelta(minutes=m)


def big(name: str = "big", **kw: Any) -> QueuedJob:
    return make_job(name, gpus=8, created=ago(30), **kw)  # aged: reserves


def small(name: str = "small", minutes: float | None = None, **kw: Any) -> QueuedJob:
    return make_job(name, gpus=2, created=NOW,
                    expected_seconds=None if minutes is None else minutes * 60, **kw)


def six_on(node: str, ends_in: float | None, name: str | None = None) -> RunningJob:
    return make_running(name or f"run-{node}", gpus=6, on=node,
                        expected_end_at=None if ends_in is None else in_minutes(ends_in))


def test_backfill_allowed_when_it_ends_before_the_reservation_starts() -> None:
    # n1: 6 GPUs busy until +60 min, 2 free; the aged 8-GPU job holds n1 and starts at +60
    d = admit(snap([big(), small(minutes=30)], running=[six_on("n1", 60)],
                   nodes=[make_node("n1", 2)], **AGING), NOW)
    assert admitted(d) == ["small"]
    w = d.waiting_for("uid-team-a-big")
    assert w is not None and w.reserved and w.position == 1


@pytest.mark.parametrize("minutes", [90, None])
def test_backfill_not_allowed_when_it_would_delay_the_reserved_job(
        minutes: float | None) -> None:
    # 90 min > the reserved job's start at +60; no expected run time: it might run for ever
    d = admit(snap([big(), small(minutes=minutes)], running=[six_on("n1", 60)],
                   nodes=[make_node("n1", 2)], **AGING), NOW)
    assert admitted(d) == []
    assert waiting(d)["small"][1] == "WaitingForHigherPriority"
    assert d.waiting_for("uid-team-a-big").reserved  # type: ignore[union-attr]


def test_no_backfill_when_the_running_jobs_eta_is_unknown() -> None:
    # without an ETA the reserved job may start any moment: conservative, nothing backfills
    d = admit(snap([big(), small(minutes=1)], running=[six_on("n1", None)],
                   nodes=[make_node("n1", 2)], **AGING), NOW)
    assert admitted(d) == []


def test_backfill_ends_exactly_at_the_start_is_allowed() -> None:
    d = admit(snap([big(), small(minutes=60)], running=[six_on("n1", 60)],
                   nodes=[make_node("n1", 2)], **AGING), NOW)
    assert admitted(d) == ["small"]


def test_reservation_holds_only_the_node_where_it_starts_soonest() -> None:
    # n2 frees up first (+10 min): the big job holds n2 only; n1's free GPUs stay usable by a
    # job without any expected run time
    running = [six_on("n1", 120), six_on("n2", 10)]
    nodes = [make_node("n1", 2), make_node("n2", 2)]
    d = admit(snap([big(), small()], running=running, nodes=nodes, **AGING), NOW)
    assert [(a.job.name, a.placement) for a in d.admit] == [("small", ("n1",))]
    # and a job that would outlast the reservation on n2 cannot go there either
    d = admit(snap([big(), small("a"), small("b", minutes=30)], running=running, nodes=nodes,
                   **AGING), NOW)
    assert admitted(d) == ["a"]


@pytest.mark.parametrize(("minutes", "runs"), [(30, True), (90, False)])
def test_backfill_into_reserved_quota(minutes: float, runs: bool) -> None:
    # team-a: quota 16, 6 used by a job on n1 until +60 min. The aged 8-GPU job holds n1 and
    # 8 of the 10 free quota GPUs from +60; a 4-GPU job on n2 (too small for the big one)
    # may use reserved quota only if it ends by then
    running = [six_on("n1", 60)]
    nodes = [make_node("n1", 2), make_node("n2", 4, allocatable=4)]
    job = make_job("four", gpus=4, created=NOW, expected_seconds=minutes * 60)
    d = admit(snap([big(), job], running=running, nodes=nodes, quotas={"team-a": (16, 6)},
                   **AGING), NOW)
    assert (admitted(d) == ["four"]) is runs
    if not runs:
        assert waiting(d)["four"][1] == "WaitingForHigherPriority"


def three_nodes_with_two_free() -> dict[str, Any]:
    return {"running": [six_on(n, None) for n in ("n1", "n2", "n3")],
            "nodes": [make_node(n, 2) for n in ("n1", "n2", "n3")]}


@pytest.mark.parametrize(("share", "reserved", "small_runs"), [
    (None, 3, False),  # unbounded: every aged job holds a node, the small job waits
    (1.0, 3, False),
    (0.5, 1, True),  # budget 3 of the 6 free GPUs: a second hold (2 + 2) would exceed it
    (0.0, 1, True),  # the first reservation is always made: it guarantees progress
])
def test_reservations_are_bounded_by_a_share_of_the_free_gpus(
        share: float | None, reserved: int, small_runs: bool) -> None:
    jobs = [big(f"big{i}") for i in range(3)] + [small()]
    d = admit(snap(jobs, **three_nodes_with_two_free(), **AGING,
                   max_reserved_idle_share=share), NOW)
    assert sum(w.reserved for w in d.waiting) == reserved
    assert (admitted(d) == ["small"]) is small_runs
    assert d.waiting_for("uid-team-a-big0").reserved  # type: ignore[union-attr]


def test_policy_default_bounds_reservations() -> None:
    assert Policy().max_reserved_idle_share == 0.5


def test_requeued_job_keeps_its_place_in_the_queue() -> None:
    # preempted 1 minute ago after waiting since 20 minutes ago: ahead of a job of its band
    # that arrived 5 minutes ago (status.queuedSince would have put it behind)
    requeued = make_job("requeued", created=ago(20), queued_since=ago(1))
    newer = make_job("newer", created=ago(5))
    policy = Policy(aging_rate_per_minute=1.0, aging_cap=100.0)
    assert [j.name for j in queue_order([newer, requeued], NOW, policy)] == ["requeued",
                                                                             "newer"]
    d = admit(snap([newer, requeued], nodes=[make_node("n1", 1)], aging_rate_per_minute=1.0),
              NOW)
    assert admitted(d) == ["requeued"]


def test_no_backfill_on_gpus_a_preemptor_waits_for() -> None:
    # n1: a stopping victim (6 GPUs) and 2 free: the critical job claims all 8; the aged big
    # job can only hold n1 as well. A short job must not take the 2 free GPUs from the
    # preemptor, whatever the aged job's own start is.
    victim = make_running("victim", gpus=6, on="n1", preempting=True)
    crit = make_job("crit", gpus=8, priority=10_000, priority_class="finetune-critical")
    d = admit(snap([crit, big(), small(minutes=1)], running=[victim],
                   nodes=[make_node("n1", 2)], **AGING), NOW)
    assert admitted(d) == []
    assert waiting(d)["crit"][1] == "WaitingForPreemptedJobs"
