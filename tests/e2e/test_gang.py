"""A 2-node gang (``resources: {gpus: 1, nodes: 2}``) through the operator on two local node
agents: one trainer pod per node, the two ranks meet at rank 0 of the attempt through the
job's headless Service (the agents resolve its names to 127.0.0.1 and give the gang a host port
of its own), train together with gloo on the CPU, are preempted whole by a more urgent job,
resume whole, and end equal to an uninterrupted two-process run."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from finetune_dev.devcluster.workloads import training_job
from finetune_dev.nodeagent import AgentProcess, find_log
from finetune_operator.jobs.build.names import pod_name, service_name
from finetune_operator.jobs.build.service import RENDEZVOUS_PORT
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
# A 2-rank step over the two pods takes 0.1-0.5 s on 2 loaded cores; the SIGTERM landed 5-43
# steps after the step-8 report that triggers it (measured): mid-run with a wide margin.
STEPS = 300
GANG_LABEL = "finetune.dev/gang-test"
RENDEZVOUS = re.compile(r"ranks (\d+)-(\d+) of 2, node (\d) of 2, rendezvous (\S+):(\d+)")


def _log(root: Path, ns: str, pod: str) -> str:
    log = find_log(root, ns, pod, "trainer")
    assert log is not None, f"no trainer log of {ns}/{pod}"
    return log.read_text(errors="replace")


def _rendezvous(text: str) -> tuple[int, int, str, int]:
    m = RENDEZVOUS.search(text)
    assert m, "the launch line naming the ranks and the rendezvous is missing"
    assert m.group(1) == m.group(2), "one process per pod"
    return int(m.group(1)), int(m.group(3)), m.group(4), int(m.group(5))


def test_two_node_gang_is_preempted_whole_and_resumes_exact(
        cluster: Cluster, operator: OperatorProcess, agent: AgentProcess, agent_b: AgentProcess,
        train_ns: Callable[[], str], tmp_path: Path) -> None:
    sid = short_id()
    for a in (agent, agent_b):
        cluster.kubectl("label", "node", a.node, f"{GANG_LABEL}={sid}", "--overwrite")
    ns = train_ns()
    gang = training_job("gang", gpus=1, priority_class="finetune-low", node=agent.node,
                        max_steps=STEPS, interval_steps=10 * STEPS)
    gang["spec"]["resources"] |= {"nodes": 2, "nodeSelector": {GANG_LABEL: sid}}
    cluster.apply(gang, ns)
    step_at_least(cluster, ns, "gang", 8)  # a step needs both ranks (DDP all-reduce)
    pods = sorted(job_pods(cluster, ns, "gang"), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["name"] for p in pods] == [pod_name("gang", 1, r) for r in (0, 1)]
    assert {p["spec"]["nodeName"] for p in pods} == {agent.node, agent_b.node}
    assert agent.root == agent_b.root  # one root: every pod's log, one checkpoint directory

    def logs(attempt: int) -> list[str]:
        return [_log(agent.root, ns, pod_name("gang", attempt, r)) for r in (0, 1)]

    # the rendezvous is rank 0's name under the headless Service, on the gang's own host port
    master = f"{pod_name('gang', 1, 0)}.{service_name('gang')}.{ns}.svc"
    seen = [_rendezvous(t) for t in logs(1)]
    assert [(r, n, addr) for r, n, addr, _ in seen] == [(0, 0, master), (1, 1, master)]
    assert seen[0][3] == seen[1][3] != RENDEZVOUS_PORT

    # a critical job needs agent's only GPU: the gang is preempted whole (both pods stopped)
    saved = preempted_by_urgent(cluster, ns, "gang", agent.node, 1, STEPS)
    for text in logs(1):
        assert "(Preempted)" in text
        assert text.count("finetune_trainer.stop: SIGTERM received") == 1, "every rank stopped"

    st = resumed_after_urgent(cluster, ns, "gang", saved)
    assert st["progress"]["step"] == STEPS
    # attempt 2 ran whole too, with a port of its own (a new selector: a new allocation)
    master2 = f"{pod_name('gang', 2, 0)}.{service_name('gang')}.{ns}.svc"
    again = [_rendezvous(t) for t in logs(2)]
    assert [(r, addr) for r, _, addr, _ in again] == [(0, master2), (1, master2)]
    assert again[0][3] == again[1][3] != RENDEZVOUS_PORT
    for text in logs(2):
        assert f"resuming from checkpoint-{saved}" in text  # every rank resumes

    assert_same_weights(get_job(cluster, ns, "gang"), tmp_path, uninterrupted_two_ranks)
