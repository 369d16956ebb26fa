"""admit(): a ModelServer (``serving``) shares the pool, the quota and the bands with training,
and a preempting training job never picks it as a victim unless the policy allows it."""

from __future__ import annotations

import pytest

from finetune_operator.admission import PolicyResult, admit
from tests.builders.admission import (
    NOW,
    admitted,
    make_job,
    make_node,
    make_running,
    snap,
    waiting,
)

pytestmark = pytest.mark.unit

CRIT = "finetune-critical"


def victims(d: PolicyResult) -> list[str]:
    return [p.victim.name for p in d.preempt]


def test_training_does_not_preempt_a_server_by_default() -> None:
    server = make_running("chat", gpus=4, on="n1", priority=100, serving=True)
    urgent = make_job("urgent", namespace="team-b", gpus=4, priority=1000, priority_class=CRIT)
    d = admit(snap([urgent], running=[server], nodes=[make_node("n1", 0, allocatable=4)]), NOW)
    assert victims(d) == []
    code, reason = waiting(d)["urgent"][1:]
    assert code == "InsufficientCapacity"
    assert "would not make room" in reason


def test_a_training_job_beside_the_server_is_preempted_instead() -> None:
    server = make_running("chat", gpus=2, on="n1", priority=100, serving=True)
    job = make_running("train", gpus=2, on="n1", priority=100)
    urgent = make_job("urgent", namespace="team-b", gpus=2, priority=1000, priority_class=CRIT)
    d = admit(snap([urgent], running=[server, job],
                   nodes=[make_node("n1", 0, allocatable=4)]), NOW)
    assert victims(d) == ["train"]


def test_the_setting_lets_training_preempt_a_server() -> None:
    server = make_running("chat", gpus=4, on="n1", priority=100, serving=True)
    urgent = make_job("urgent", namespace="team-b", gpus=4, priority=1000, priority_class=CRIT)
    d = admit(snap([urgent], running=[server], nodes=[make_node("n1", 0, allocatable=4)],
                   serving_preemptible=True), NOW)
    assert victims(d) == ["chat"]


def test_a_server_counts_against_the_namespace_quota() -> None:
    # the server holds 2 of team-a's 3 GPUs (not yet in the quota's used: its pod is pending)
    server = make_running("chat", gpus=2, on="n1", serving=True, counted_in_quota=False)
    job = make_job("train", gpus=2)
    d = admit(snap([job], running=[server], quotas={"team-a": (3, 0)}), NOW)
    assert admitted(d) == []
    assert waiting(d)["train"][1] == "QuotaExhausted"


def test_a_queued_server_waits_in_the_same_queue() -> None:
    server = make_job("chat", gpus=4, priority=100, serving=True)
    high = make_job("train", gpus=4, priority=200)
    d = admit(snap([server, high], nodes=[make_node("n1", 4, allocatable=4)]), NOW)
    assert admitted(d) == ["train"]
    assert waiting(d)["chat"][1] == "WaitingForHigherPriority"
