"""ResourceQuota scopes: a job is charged to (and must fit) every quota that matches it, as the
API server charges its pods; quotas whose scopes do not match it are ignored. The standard
per-PriorityClass pattern (one quota per band) must not fail every GPU job."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from finetune_operator.admission import (
    ImpossibleCode,
    Policy,
    QueuedJob,
    Quota,
    ScopeRequirement,
    Snapshot,
    WaitCode,
    admit,
)
from finetune_operator.admission.snapshot import quotas_from_k8s
from tests.builders.admission import (
    GPU,
    NOW,
    admitted,
    make_job,
    make_node,
    make_running,
    snap,
    waiting,
)

pytestmark = pytest.mark.unit


def band_quota(cls: str, hard: int, used: int = 0, op: str = "In") -> Quota:
    return Quota(namespace="team-a", resource=GPU, hard=hard, used=used, name=f"gpu-{cls}",
                 scopes=(ScopeRequirement(scope_name="PriorityClass", operator=op,
                                          values=(cls,)),))


def job(name: str, cls: str, gpus: int, **kw: Any) -> QueuedJob:
    return make_job(name, gpus=gpus, priority=5000 if cls == "high" else 100,
                    priority_class=cls, **kw)


def scoped_snap(queued: list[QueuedJob], quotas: list[Quota], free: int = 16,
                **kw: Any) -> Snapshot:
    return Snapshot(queued=queued, nodes=[make_node("n1", free, allocatable=16)],
                    quotas=quotas, policy=Policy(aging_rate_per_minute=0.0), **kw)


def test_per_priority_class_quotas_each_charge_only_their_band() -> None:
    quotas = [band_quota("high", 8), band_quota("low", 2)]
    d = admit(scoped_snap([job("big-high", "high", 8), job("small-low", "low", 2),
                           job("big-low", "low", 4)], quotas), NOW)
    # the minimum over both quotas (2) would have made big-high impossible
    assert admitted(d) == ["big-high", "small-low"]
    [imp] = d.impossible
    assert imp.job.name == "big-low" and imp.code == ImpossibleCode.QUOTA
    assert "at most 2 (ResourceQuota gpu-low requests.nvidia.com/gpu)" in imp.reason


def test_a_full_band_quota_blocks_only_its_band() -> None:
    quotas = [band_quota("high", 8, used=8), band_quota("low", 4)]
    d = admit(scoped_snap([job("high", "high", 1), job("low", "low", 4)], quotas), NOW)
    assert admitted(d) == ["low"]
    code, reason = waiting(d)["high"][1:]
    assert code == WaitCode.QUOTA
    assert "quota team-a has 0 free (ResourceQuota gpu-high)" in reason


def test_job_must_fit_every_matching_quota() -> None:
    total = Quota(namespace="team-a", resource=GPU, hard=6, used=4, name="gpu-total")
    quotas = [total, band_quota("high", 8)]
    d = admit(scoped_snap([job("three", "high", 3), job("two", "high", 2)], quotas), NOW)
    assert admitted(d) == ["two"]  # gpu-high has room for both; gpu-total only for 2
    assert "ResourceQuota gpu-total" in waiting(d)["three"][2]


def test_quota_of_another_namespace_or_resource_is_ignored() -> None:
    other = [Quota(namespace="team-b", resource=GPU, hard=0, used=0),
             Quota(namespace="team-a", resource="amd.com/gpu", hard=0, used=0)]
    assert admitted(admit(scoped_snap([job("j", "high", 4)], other), NOW)) == ["j"]


@pytest.mark.parametrize(("scope", "terminating", "best_effort", "charged"), [
    ("NotTerminating", False, False, True),  # trainer pods: no activeDeadlineSeconds
    ("Terminating", False, False, False),
    ("Terminating", True, False, True),
    ("NotBestEffort", False, False, True),  # trainer pods request GPUs: never BestEffort
    ("BestEffort", False, False, False),
    ("CrossNamespacePodAffinity", False, False, False),
])
def test_plain_scopes(scope: str, terminating: bool, best_effort: bool, charged: bool) -> None:
    q = Quota(namespace="team-a", resource=GPU, hard=0, used=0, name="q",
              scopes=(ScopeRequirement(scope_name=scope),))
    j = job("j", "high", 1, terminating=terminating, best_effort=best_effort)
    d = admit(scoped_snap([j], [q]), NOW)
    assert (admitted(d) == []) is charged


@pytest.mark.parametrize(("op", "values", "charged"), [
    ("In", ("high", "critical"), True),
    ("In", ("low",), False),
    ("NotIn", ("low",), True),
    ("NotIn", ("high",), False),
    ("Exists", (), True),
    ("DoesNotExist", (), False),
])
def test_priority_class_selector(op: str, values: tuple[str, ...], charged: bool) -> None:
    q = Quota(namespace="team-a", resource=GPU, hard=0, used=0, name="q",
              scopes=(ScopeRequirement(scope_name="PriorityClass", operator=op,
                                       values=values),))
    d = admit(scoped_snap([job("j", "high", 1)], [q]), NOW)
    assert (admitted(d) == []) is charged


def test_scopes_are_anded() -> None:
    q = Quota(namespace="team-a", resource=GPU, hard=0, used=0, name="q", scopes=(
        ScopeRequirement(scope_name="NotTerminating"),
        ScopeRequirement(scope_name="PriorityClass", operator="In", values=("low",))))
    d = admit(scoped_snap([job("high", "high", 1), job("low", "low", 1)], [q]), NOW)
    assert admitted(d) == ["high"]


def test_no_preemption_for_a_quota_that_does_not_charge_the_preemptor() -> None:
    # team-a's low band is at its quota; a critical job is not charged to it and fits the node
    running = [replace(make_running("low-run", gpus=8, priority=100, on="n1"),
                       priority_class="low")]
    crit = make_job("crit", gpus=4, priority=10_000, priority_class="finetune-critical")
    s = Snapshot(queued=[crit], running=running, nodes=[make_node("n1", 8, allocatable=16)],
                 quotas=[band_quota("low", 8, used=8)], policy=Policy(aging_rate_per_minute=0))
    d = admit(s, NOW)
    assert admitted(d) == ["crit"] and d.preempt == ()


def test_preemption_frees_the_quota_that_charges_both() -> None:
    # an unscoped quota charges both: the low job is the victim that makes room in it
    running = [make_running("low-run", gpus=8, priority=100, on="n1")]
    crit = make_job("crit", gpus=4, priority=10_000, priority_class="finetune-critical")
    total = Quota(namespace="team-a", resource=GPU, hard=8, used=8, name="gpu-total")
    s = Snapshot(queued=[crit], running=running, nodes=[make_node("n1", 8, allocatable=16)],
                 quotas=[total, band_quota("finetune-critical", 8)],
                 policy=Policy(aging_rate_per_minute=0))
    d = admit(s, NOW)
    assert d.preempted_uids() == ["uid-team-a-low-run"]
    assert waiting(d)["crit"][1] == WaitCode.PREEMPTING


def test_quotas_from_k8s_carries_scopes() -> None:
    rqs = [
        {"metadata": {"namespace": "team-a", "name": "gpu-high"},
         "spec": {"hard": {"requests.nvidia.com/gpu": "8"},
                  "scopes": ["NotTerminating"],
                  "scopeSelector": {"matchExpressions": [
                      {"scopeName": "PriorityClass", "operator": "In",
                       "values": ["finetune-high"]}]}},
         "status": {"hard": {"requests.nvidia.com/gpu": "8"},
                    "used": {"requests.nvidia.com/gpu": "2"}}},
    ]
    [q] = quotas_from_k8s(rqs)
    assert q.name == "gpu-high" and (q.hard, q.used) == (8, 2)
    assert q.scopes == (ScopeRequirement(scope_name="NotTerminating"),
                        ScopeRequirement(scope_name="PriorityClass", operator="In",
                                         values=("finetune-high",)))
    assert q.matches(make_job(priority_class="finetune-high"))
    assert not q.matches(make_job(priority_class="finetune-low"))


def test_a_quota_whose_used_lags_its_pods_is_not_overfilled() -> None:
    """The quota controller can write a ``used`` below the pods that exist (its informer had
    not seen the newest ones yet), and the API server then admits a pod past ``hard``: a
    5,000-job benchmark ended with 81 pods under a quota of 80. The policy counts at least
    the GPUs of the jobs whose pods exist."""
    running = [make_running(f"r{i}", gpus=1, on=f"n{i % 2}") for i in range(4)]
    nodes = [make_node("n0", free=6), make_node("n1", free=6), make_node("n2", free=8)]
    stale = snap([make_job("next", gpus=1)], running, nodes, quotas={"team-a": (4, 3)})
    d = admit(stale, NOW)
    assert admitted(d) == [] and waiting(d)["next"][1] == "QuotaExhausted"
    # the same with the quota right, and with room: admitted (the bound only raises usage)
    assert admitted(admit(snap([make_job("next", gpus=1)], running, nodes,
                               quotas={"team-a": (5, 4)}), NOW)) == ["next"]
    pending = [make_running(f"r{i}", gpus=1, on=f"n{i % 2}", counted_in_quota=i < 3)
               for i in range(4)]  # r3's pod not created yet: charged once, not twice
    assert admitted(admit(snap([make_job("next", gpus=1)], pending, nodes,
                               quotas={"team-a": (5, 3)}), NOW)) == ["next"]
