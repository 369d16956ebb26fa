"""Cluster-tier fixtures shared by several modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.builders import kueue as kq
from tests.builders.policy import Policy, installed_policy
from tests.kube import Cluster


@pytest.fixture
def policy(cluster: Cluster, crd_installed: Path, priority_classes: list[str],
           make_namespace: Callable[..., str], request: pytest.FixtureRequest
           ) -> Iterator[Policy]:
    """The chart's policy; indirect parametrization deep-merges more chart values."""
    with installed_policy(cluster, make_namespace, getattr(request, "param", {})) as p:
        yield p


@pytest.fixture
def queues(cluster: Cluster, make_namespace: Callable[..., str],
           gpu_nodes: Callable[[int, int], dict[str, str]],
           ) -> Iterator[Callable[..., tuple[str, str]]]:
    """make(gpus, cohort=None, nodes=1, per_node=4, flavor=None) -> (namespace, flavor): a
    fresh namespace with LocalQueue ``lq`` and its ClusterQueue of ``gpus`` nominal GPUs, on
    ``flavor`` or a new flavor of fresh kwok nodes (queues that borrow from each other in a
    cohort share a flavor: Kueue lends quota per flavor)."""
    made: list[tuple[str, str]] = []

    def make(gpus: int, cohort: str | None = None, nodes: int = 1, per_node: int = 4,
             flavor: str | None = None) -> tuple[str, str]:
        ns = make_namespace()
        fl, cq = flavor or kq.unique("fl"), kq.unique("cq")
        if flavor is None:
            cluster.apply(kq.flavor(fl, gpu_nodes(nodes, per_node)))
            made.append(("resourceflavor", fl))
        cluster.apply(kq.cluster_queue(cq, ns, fl, gpus, cohort))
        cluster.apply(kq.local_queue(ns, "lq", cq))
        made.insert(0, ("clusterqueue", cq))
        return ns, fl

    yield make
    for kind, name in made:
        cluster.kubectl("delete", f"{kind}.kueue.x-k8s.io", name, "--wait=false",
                        "--ignore-not-found")
