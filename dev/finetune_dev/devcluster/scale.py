"""A separate local control plane for scale benchmarks: its own directory and ports, many nodes.

It never touches the shared cluster the tests use (default directory and ports): the state
lives under ``<cache>/bench-scale-cluster`` (or ``FINETUNE_SCALE_CLUSTER_DIR``) and every port is
shifted by +10000. Differences from the shared cluster, all stated in the benchmark's report:

- kwok runs without the ``pod-complete`` stage, so pods owned by a batch/v1 Job are not
  completed by kwok on their own (the benchmark completes pods itself, for every system alike);
- the controller-manager and the scheduler run without client rate limits (``--kube-api-qps
  5000 --kube-api-burst 10000``, what ``kwokctl --disable-qps-limits`` sets), so neither the
  Job controller's pod creation nor the scheduler's bindings cap a side of the comparison;
- nodes are created in one request per 100 and awaited with one list call per poll.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from finetune_dev.devcluster import cluster as dc
from finetune_dev.devcluster import versions
from finetune_dev.devcluster.stages import STAGES

UNLIMITED = ["--kube-api-qps=5000", "--kube-api-burst=10000"]
PORT_SHIFT = 10000


def scale_dir() -> Path:
    env = os.environ.get("FINETUNE_SCALE_CLUSTER_DIR")
    return Path(env) if env else versions.cache_root() / "bench-scale-cluster"


def scale_config(state_dir: Path | None = None) -> dc.ClusterConfig:
    base = dc.Ports()
    ports = dc.Ports(**{k: v + PORT_SHIFT for k, v in base.all().items()})
    return dc.ClusterConfig(
        state_dir=state_dir or scale_dir(), ports=ports, nodes=0,
        kwok_stages=tuple(s for s in STAGES if not s.endswith("pod-complete.yaml")),
        extra_args={"kube-controller-manager": UNLIMITED, "kube-scheduler": UNLIMITED},
    )


def fresh(cfg: dc.ClusterConfig) -> None:
    """Stop this cluster if it runs, drop its etcd data, start it empty (no nodes)."""
    if any(dc.running(cfg).values()) or dc.read_state(cfg).get("pids"):
        dc.down(cfg)
    shutil.rmtree(cfg.state_dir / "etcd", ignore_errors=True)
    shutil.rmtree(cfg.state_dir / "logs", ignore_errors=True)
    dc.up(cfg)


def add_nodes(cfg: dc.ClusterConfig, prefix: str, count: int, gpus: int,
              labels: dict[str, str] | None = None, pods: int = 110,
              timeout: float = 180) -> list[str]:
    """Create `count` kwok nodes (100 per kubectl apply) and wait until all are Ready."""
    names = [f"{prefix}-{i}" for i in range(count)]
    for start in range(0, count, 100):
        items = []
        for name in names[start:start + 100]:
            node = dc.node_manifest(name, gpus, labels)
            cap = {**node["status"]["capacity"], "pods": str(pods)}
            if not gpus:
                cap.pop(dc.GPU_RESOURCE)
                node["metadata"]["labels"].pop("nvidia.com/gpu.present")
            node["status"] = {"capacity": cap, "allocatable": cap}
            items.append(node)
        dc.kubectl(cfg, "apply", "-f", "-",
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    wait_ready(cfg, set(names), timeout)
    return names


def wait_ready(cfg: dc.ClusterConfig, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while time.monotonic() < deadline:
        code, body = dc.api_get(cfg, "/api/v1/nodes", timeout=30)
        if code == 200:
            for n in json.loads(body)["items"]:
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in n.get("status", {}).get("conditions", [])):
                    pending.discard(n["metadata"]["name"])
        if not pending:
            return
        time.sleep(1)
    raise dc.ClusterError(f"{len(pending)} node(s) not Ready after {timeout:.0f}s (e.g. "
                          f"{sorted(pending)[:3]}); kwok manages them — see "
                          f"{cfg.state_dir}/logs/kwok.log")
