"""A ``gpus: 2`` job through the operator and a local node agent: the pod runs the trainer's
launch path with two training processes (the agent's GPUs are not real, so the ranks train on
the CPU with gloo), is preempted whole, saves, resumes, and ends equal to an uninterrupted
two-process run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_dev.devcluster.workloads import training_job
from finetune_dev.nodeagent import find_log
from tests.builders.e2e import (
    assert_same_weights,
    get_job,
    preempted_by_urgent,
    resumed_after_urgent,
    step_at_least,
    uninterrupted_two_ranks,
)

from ..kube import Cluster, short_id
from ..operator_proc import OperatorProcess, job_pods

pytestmark = pytest.mark.e2e
STEPS = 1200  # the preemption lands near step 300 here (2 gloo ranks, ~55 steps/s): 4x margin


@pytest.fixture(scope="module")
def agent2(cluster) -> Iterator[object]:
    from finetune_dev.nodeagent import start_agent

    a = start_agent(f"e2e2-{short_id()}", gpus=2, cfg=cluster.cfg)
    yield a
    a.stop()
    cluster.kubectl("delete", "node", a.node, "--ignore-not-found", "--wait=false")


def test_two_process_job_is_preempted_whole_and_resumes_exact(
        cluster: Cluster, operator: OperatorProcess, agent2, train_ns, tmp_path: Path) -> None:
    ns = train_ns()
    cluster.apply(training_job("pair", gpus=2, priority_class="finetune-low", node=agent2.node,
                               max_steps=STEPS, interval_steps=10 * STEPS), ns)
    step_at_least(cluster, ns, "pair", 8)
    pod = job_pods(cluster, ns, "pair")[0]
    assert pod["spec"]["containers"][0]["command"][:3] == [
        "python", "-m", "finetune_trainer.launch"]
    saved = preempted_by_urgent(cluster, ns, "pair", agent2.node, 2, STEPS)
    log = find_log(agent2.root, ns, pod["metadata"]["name"], "trainer")
    assert log is not None
    text = log.read_text(errors="replace")
    assert "ranks 0-1 of 2" in text and "(Preempted)" in text
    assert text.count("finetune_trainer.stop: SIGTERM received") == 2, "every rank stopped"
    resumed_after_urgent(cluster, ns, "pair", saved)
    assert_same_weights(get_job(cluster, ns, "pair"), tmp_path, uninterrupted_two_ranks)
