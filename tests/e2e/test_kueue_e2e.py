"""Admission mode kueue, the whole loop for real: Kueue v0.17.0 decides, the operator runs the
real trainer on the local node agent; when Kueue preempts the job for a higher-priority one, the
trainer saves on SIGTERM, the job requeues, Kueue admits it again and it resumes with nothing
lost: its final adapter equals an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_dev.devcluster.workloads import training_job
from tests.builders import kueue as kq
from tests.builders.e2e import (
    assert_same_weights,
    get_job,
    preempted_by_urgent,
    resumed_after_urgent,
    step_at_least,
)

from ..kube import Cluster
from ..operator_proc import OperatorProcess, job_status

pytestmark = pytest.mark.e2e
LONG = 1000  # steps: ~30 s here, far more than the eviction + stop round trip (~1-2 s)


def test_kueue_preemption_saves_requeues_and_resumes_exactly(
        cluster: Cluster, kueue_operator: OperatorProcess, agent, train_ns,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    ns = train_ns()
    fl, cq = kq.unique("fl"), kq.unique("cq")
    cluster.apply(kq.flavor(fl, {"kubernetes.io/hostname": agent.node}))
    cluster.apply(kq.cluster_queue(cq, ns, fl, 1))
    cluster.apply(kq.local_queue(ns, "lq", cq))
    try:
        # no periodic save before the end: a checkpoint mid-run is the SIGTERM one
        cluster.apply(kq.queued(training_job(
            "low", gpus=1, priority_class="finetune-low", node=agent.node, max_steps=LONG,
            interval_steps=10 * LONG), "lq"), ns)
        step_at_least(cluster, ns, "low", 8)
        # Kueue (withinClusterQueue: LowerPriority) evicts `low` for a higher band
        saved = preempted_by_urgent(cluster, ns, "low", agent.node, 1, LONG, queue="lq")
        st = job_status(cluster, ns, "low")
        conds = {c["type"]: c for c in st.get("conditions") or []}
        assert "evicted by Kueue (Preempted)" in conds["Preempted"]["message"], conds
        st = resumed_after_urgent(cluster, ns, "low", saved)
        assert st["progress"]["step"] == LONG
        assert_same_weights(get_job(cluster, ns, "low"), tmp_path)
        for name in ("low", "urgent"):
            assert kq.condition(kq.workload_of(cluster, ns, name), "Finished").get(
                "status") == "True", name
    finally:
        cluster.kubectl("delete", "clusterqueue.kueue.x-k8s.io", cq, "--wait=false",
                        "--ignore-not-found")
        cluster.kubectl("delete", "resourceflavor.kueue.x-k8s.io", fl, "--wait=false",
                        "--ignore-not-found")
