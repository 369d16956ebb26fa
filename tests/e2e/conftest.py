"""e2e fixtures: a local node agent whose pods run as real processes, and prepared namespaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from finetune_dev.nodeagent import AgentProcess

from ..kube import Cluster, short_id


@pytest.fixture(scope="module")
def agent(cluster) -> Iterator[object]:  # type: ignore[no-untyped-def]
    from finetune_dev.nodeagent import start_agent

    a = start_agent(f"e2e-{short_id()}", gpus=1, cfg=cluster.cfg)
    yield a
    a.stop()
    cluster.kubectl("delete", "node", a.node, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def agent_b(cluster: Cluster) -> Iterator[AgentProcess]:
    """A second node agent (1 GPU) beside `agent`, for multi-node gangs. Another node, the same
    root: PVC directories are shared storage (the models claim `train_ns` fills, the checkpoint
    directory every rank and every attempt uses) and so is the agents' port registry."""
    from finetune_dev.nodeagent import start_agent

    a = start_agent(f"e2eb-{short_id()}", gpus=1, cfg=cluster.cfg)
    yield a
    a.stop()
    cluster.kubectl("delete", "node", a.node, "--ignore-not-found", "--wait=false")


@pytest.fixture
def train_ns(cluster) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """make(gpu_quota=None) -> a namespace with the tiny model and the dataset."""
    from finetune_dev.devcluster.workloads import prepare_namespace

    made: list[str] = []

    def make(gpu_quota: int | None = None) -> str:
        ns = f"e2e-{short_id()}"
        prepare_namespace(cluster.cfg, ns, gpu_quota)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
