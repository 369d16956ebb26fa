"""Shared fixtures: one real local cluster per test session, a fresh namespace per test."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "finetunejobs.finetune.dev.yaml"


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    """The local control plane: reuse a running one, else start one and stop it at the end."""
    from finetune_operator.devcluster import cluster as dc

    from .kube import Cluster

    cfg = dc.ClusterConfig()
    started_here = not dc.is_up(cfg)
    if started_here:
        dc.up(cfg)
    yield Cluster(cfg)
    if started_here and os.environ.get("FINETUNE_KEEP_CLUSTER") != "1":
        dc.down(cfg)


@pytest.fixture
def namespace(cluster, request) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh namespace (deleted afterwards, without waiting for finalization)."""
    from .kube import short_id, wait_for

    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{short_id()}"
    cluster.kubectl("create", "namespace", name)
    wait_for(f"default ServiceAccount in {name}",
             lambda: cluster.get("serviceaccount", "default", name), 30)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="session")
def crd_installed(cluster) -> Path:  # type: ignore[no-untyped-def]
    """The generated FineTuneJob CRD, applied and Established."""
    assert CRD_FILE.exists(), f"{CRD_FILE} missing: run `make crd`"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunejobs.finetune.dev")
    return CRD_FILE
