"""Shared fixtures: one real local cluster per test session, a fresh namespace per test."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "finetunejobs.finetune.dev.yaml"
SWEEP_CRD_FILE = ROOT / "crds" / "finetunesweeps.finetune.dev.yaml"


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    """The local control plane: reuse a running one, else start one and stop it at the end."""
    from finetune_dev.devcluster import cluster as dc

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
    """A fresh namespace enforcing the restricted Pod Security Standard (deleted afterwards,
    without waiting for finalization)."""
    from .kube import short_id

    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = cluster.create_namespace(f"t-{base}-{short_id()}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="session")
def crd_installed(cluster) -> Path:  # type: ignore[no-untyped-def]
    """The generated CRDs (FineTuneJob and FineTuneSweep: a test may create either, in any
    order), applied and Established; returns the FineTuneJob one."""
    from .kube import wait_for

    for crd in (CRD_FILE, SWEEP_CRD_FILE):
        assert crd.exists(), f"{crd} missing: run `make crd`"
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    for name in ("finetunejobs.finetune.dev", "finetunesweeps.finetune.dev"):
        # polled: `kubectl wait` fails at once while a new CRD has no conditions yet
        wait_for(f"CRD {name} Established", lambda name=name: any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in ((cluster.get("crd", name) or {}).get("status") or {}).get(
                "conditions") or []), 60)
    return CRD_FILE


@pytest.fixture(scope="session")
def priority_classes(cluster) -> list[str]:  # type: ignore[no-untyped-def]
    """The chart's PriorityClass bands, rendered by helm from the chart (one source)."""
    import subprocess

    from finetune_dev.devcluster import build

    out = subprocess.run(
        [str(build.binary("helm")), "template", "ft", str(ROOT / "charts" / "finetune-operator"),
         "--show-only", "templates/priorityclasses.yaml"],
        capture_output=True, text=True, check=True).stdout
    cluster.kubectl("apply", "-f", "-", input=out)
    return re.findall(r"^  name: (\S+)$", out, re.M)


@pytest.fixture(scope="module")
def operator(cluster, crd_installed, priority_classes, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The real operator process (module-scoped); tests may kill and restart it."""
    from .operator_proc import OperatorProcess

    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


@pytest.fixture
def gpu_nodes(cluster):  # type: ignore[no-untyped-def]
    """make(count, gpus) -> nodeSelector of fresh fake GPU nodes only this test uses."""
    from .kube import short_id

    made: list[str] = []

    def make(count: int, gpus: int) -> dict[str, str]:
        sid = short_id()
        for i in range(count):
            made.append(cluster.gpu_node(f"t-{sid}-{i}", gpus, {"finetune.dev/test": sid}))
        return {"finetune.dev/test": sid}

    yield make
    if made:
        cluster.kubectl("delete", "node", *made, "--ignore-not-found", "--wait=false")


@pytest.fixture
def make_namespace(cluster, request):  # type: ignore[no-untyped-def]
    """make(gpu_quota=None) -> a fresh namespace enforcing the restricted Pod Security Standard
    (with a GPU ResourceQuota when asked)."""
    from .kube import short_id, wait_for

    made: list[str] = []

    def make(gpu_quota: int | None = None) -> str:
        name = f"t-{short_id()}"
        made.append(name)
        cluster.create_namespace(name)
        cluster.kubectl("create", "configmap", "data", "-n", name,
                        "--from-literal=train.jsonl={}")
        if gpu_quota is not None:
            cluster.kubectl("create", "quota", "gpus", "-n", name,
                            f"--hard=requests.nvidia.com/gpu={gpu_quota}")
            wait_for("quota status", lambda: (cluster.get("resourcequota", "gpus", name) or {})
                     .get("status", {}).get("hard"), 30)
        return name

    yield make
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
