"""The scale benchmark's audits on hand-made timelines (benchmarks/scale/audit.py): each
audit must catch the violation it is named for, and pass a clean run."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from scale import audit

H, N, L = 7500, 5000, 2500


def test_clean_order_has_no_violations() -> None:
    jobs = [audit.Seen("a", "j1", H, 0.0, 10.0), audit.Seen("a", "j2", N, 1.0, 11.0),
            audit.Seen("a", "j3", L, 2.0, 12.0), audit.Seen("b", "j4", L, 0.0, 1.0)]
    assert audit.order_violations(jobs, grace=2) == {"priority": 0, "fifo": 0, "examples": []}


def test_lower_priority_decided_while_a_higher_waits_is_counted() -> None:
    jobs = [audit.Seen("a", "high", H, 0.0, None), audit.Seen("a", "low", L, 1.0, 10.0),
            audit.Seen("b", "other-ns-high", H, 0.0, None)]
    out = audit.order_violations(jobs, grace=2)
    assert out["priority"] == 1 and out["fifo"] == 0
    assert "a/low" in out["examples"][0] and "a/high" in out["examples"][0]


def test_fifo_within_a_priority_and_the_grace() -> None:
    jobs = [audit.Seen("a", "first", N, 0.0, 30.0), audit.Seen("a", "second", N, 1.5, 10.0)]
    assert audit.order_violations(jobs, grace=2)["fifo"] == 1
    # decided within the grace of each other (one cycle's writes): not a violation
    jobs = [audit.Seen("a", "first", N, 0.0, 10.5), audit.Seen("a", "second", N, 1.0, 10.0)]
    assert audit.order_violations(jobs, grace=2)["fifo"] == 0
    # created less than the grace before the decision: the controller may not have seen it
    jobs = [audit.Seen("a", "late", H, 9.5, None), audit.Seen("a", "low", L, 0.0, 10.0)]
    assert audit.order_violations(jobs, grace=2)["priority"] == 0


def test_priorities_alternate_within_each_namespace() -> None:
    mix = ["finetune-high", "finetune-normal", "finetune-low"]
    per_ns = [audit.priority_of(i, 4, mix) for i in range(0, 24, 4)]  # namespace 0
    assert per_ns == mix * 2


def test_stage_stats_and_first_n() -> None:
    applied = {"a/1": 0.0, "a/2": 1.0, "a/3": 2.0}
    st = audit.stage_stats(applied, {"decided": {"a/1": 1.0, "a/2": 3.0}}, t0=0.0)
    assert st["decided"]["n"] == 2 and st["decided"]["p50"] == 1.0
    assert st["decided"]["p99"] == 2.0 and st["decided"]["all"] == 3.0
    assert audit.first_n_seconds([5.0, 1.0, 3.0], 2, 0.0) == 3.0


def test_audit_log_writes_by_client(tmp_path: Path) -> None:
    def ev(ua: str, res: str, sub: str = "", stage: str = "ResponseComplete") -> str:
        ref = {"resource": res, **({"subresource": sub} if sub else {})}
        return json.dumps({"stage": stage, "userAgent": ua, "objectRef": ref,
                           "stageTimestamp": "2026-01-01T00:00:00.5Z"})
    log = tmp_path / "audit.log"
    log.write_text("\n".join([
        ev("kube-controller-manager/v1.33.0 (linux/amd64) kubernetes/abc/job-controller", "pods"),
        ev("kueue/v0.17.0 (linux/amd64) kubernetes/$Format", "workloads", "status"),
        ev("kueue/v0.17.0", "workloads", "status", stage="RequestReceived"),
        ev("kwok/v0.7.0", "leases"), ev("OpenAPI-Generator/31.0.0/python", "pods"),
        "not json"]))
    c = audit.audit_writes(log)
    assert c == Counter({("kube-controller-manager/job-controller", "pods"): 1,
                         ("kueue", "workloads/status"): 1, ("kwok", "leases"): 1,
                         ("finetune-operator", "pods"): 1})
    assert "kwok" not in audit.by_agent(c) and audit.by_agent(c, leases=True)["kwok"] == 1
    assert audit.audit_writes(log, since=1893456001.0) == Counter()


def test_aggregate_median_and_range() -> None:
    runs = [{"fill": 10.0, "lat": {99: 1.0}, "src": "x"}, {"fill": 30.0, "lat": {99: 3.0}},
            {"fill": 20.0, "lat": {99: 2.0}}]
    med, rng = audit.aggregate(runs)
    assert med["fill"] == 20.0 and rng["fill"] == (10.0, 30.0)
    assert med["lat"][99] == 2.0 and rng["lat"][99] == (1.0, 3.0)
    assert med["src"] == "x"


def test_before_the_quota_is_full_interleaved_writes_are_no_violation() -> None:
    # quota 2: low decided at 5, high at 9 (one cycle's writes landing apart); the quota fills
    # at 9 and high got its place: nothing waited
    jobs = [audit.Seen("a", "high", H, 0.0, 9.0), audit.Seen("a", "low", L, 1.0, 5.0),
            audit.Seen("a", "late", N, 6.0, None)]
    assert audit.order_violations(jobs, grace=2, quota=2)["priority"] == 0
    # quota 1: low took the only place while high waited (decided after a completion)
    jobs = [audit.Seen("a", "high", H, 0.0, 30.0), audit.Seen("a", "low", L, 1.0, 5.0)]
    assert audit.order_violations(jobs, grace=2, quota=1)["priority"] == 1


def test_fifo_within_the_timestamp_resolution_is_no_violation() -> None:
    # created 0.3 s apart: the API server may have stamped them in either order
    jobs = [audit.Seen("a", "first", N, 0.0, None), audit.Seen("a", "second", N, 0.3, 10.0)]
    assert audit.order_violations(jobs, grace=2, resolution=1.0)["fifo"] == 0
    assert audit.order_violations(jobs, grace=2, resolution=0.0)["fifo"] == 1
