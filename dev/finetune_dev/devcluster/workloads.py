"""Real training workloads on the local cluster, shared by `make demo` and the e2e tests.

A namespace gets a `models` PVC pre-filled with a tiny model built locally (no hub), a `data`
ConfigMap with a small committed dataset, and optionally a GPU ResourceQuota; jobs are pinned
to a local node agent's node so their trainer pods really run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from finetune_dev.devcluster import versions
from finetune_dev.devcluster.cluster import ClusterConfig, ClusterError, kubectl
from finetune_dev.nodeagent import default_root, pvc_dir

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / "finetunejobs.finetune.dev.yaml"
SWEEP_CRD_FILE = ROOT / "crds" / "finetunesweeps.finetune.dev.yaml"
SERVER_CRD_FILE = ROOT / "crds" / "modelservers.finetune.dev.yaml"
CHART = ROOT / "charts" / "finetune-operator"
DATASET = ROOT / "examples" / "data" / "messages.jsonl"
MODEL_PATH = "tiny"
# Pod Security Admission: every namespace made here enforces the strictest profile, so trainer
# pods (build/pod.py) prove on every run that they need no privilege.
RESTRICTED_NAMESPACE = {"pod-security.kubernetes.io/enforce": "restricted"}


def tiny_model() -> Path:
    """The tiny model + tokenizer, built once (deterministic) into the cache."""
    out = versions.cache_root() / "tiny-model-llama-64x2"
    if not (out / "config.json").exists():
        subprocess.run([sys.executable, "-m", "finetune_dev.tiny", str(out)], check=True,
                       capture_output=True)
    return out


def install_api(cfg: ClusterConfig) -> None:
    """The CRDs (generated from the models: jobs, sweeps, model servers) and the chart's
    PriorityClass bands."""
    from finetune_dev.devcluster.build import binary

    for crd in (CRD_FILE, SWEEP_CRD_FILE, SERVER_CRD_FILE):
        kubectl(cfg, "apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kubectl(cfg, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/finetunejobs.finetune.dev", "crd/finetunesweeps.finetune.dev",
            "crd/modelservers.finetune.dev")
    classes = subprocess.run(
        [str(binary("helm")), "template", "ft", str(CHART), "--show-only",
         "templates/priorityclasses.yaml"], capture_output=True, text=True, check=True).stdout
    kubectl(cfg, "apply", "-f", "-", input=classes)


def _wait(what: str, fn: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.3)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")


def create_namespace(cfg: ClusterConfig, ns: str) -> None:
    """A namespace that enforces the `restricted` Pod Security Standard (the kube-apiserver
    rejects any pod of it that is not), once its default ServiceAccount exists."""
    body = {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": RESTRICTED_NAMESPACE}}
    kubectl(cfg, "create", "-f", "-", input=json.dumps(body))
    _wait(f"default ServiceAccount in {ns}", lambda: kubectl(
        cfg, "get", "serviceaccount", "default", "-n", ns, check=False).returncode == 0, 30)


def prepare_namespace(cfg: ClusterConfig, ns: str, gpu_quota: int | None = None,
                      dataset: Path = DATASET, root: Path | None = None) -> None:
    """Namespace + `models` claim holding the tiny model + `data` ConfigMap (+ quota)."""
    root = root or default_root()
    create_namespace(cfg, ns)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
             "spec": {"accessModes": ["ReadOnlyMany", "ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}}
    kubectl(cfg, "apply", "-n", ns, "-f", "-", input=json.dumps(claim))
    target = pvc_dir(root, ns, "models") / MODEL_PATH
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(tiny_model(), target)
    for f in [target, *target.rglob("*")]:  # trainer pods run as uid 1000 (safetensors: 0600)
        f.chmod(0o755 if f.is_dir() else 0o644)
    kubectl(cfg, "create", "configmap", "data", "-n", ns, f"--from-file=train.jsonl={dataset}")
    if gpu_quota is not None:
        kubectl(cfg, "create", "quota", "gpus", "-n", ns,
                f"--hard=requests.nvidia.com/gpu={gpu_quota}")
        _wait("quota status", lambda: json.loads(kubectl(
            cfg, "get", "quota", "gpus", "-n", ns, "-o", "json").stdout).get(
            "status", {}).get("hard"), 30)


def training_job(name: str, *, gpus: int, priority_class: str, node: str, max_steps: int,
                 interval_steps: int = 10, **spec: Any) -> dict:
    """A real LoRA job on the tiny model, pinned to a node agent's node."""
    body: dict[str, Any] = {
        "model": {"name": "tiny-llama", "source": {"pvc": {"claimName": "models",
                                                           "path": MODEL_PATH}}},
        "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}},
                    "format": "messages", "cutoffLen": 128},
        "method": "lora",
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]},
        "training": {"maxSteps": max_steps, "learningRate": 1e-3, "batchSize": 4,
                     "lrScheduler": "linear", "precision": "fp32", "seed": 42},
        "resources": {"gpus": gpus, "cpu": "1", "memory": "2Gi",
                      "nodeSelector": {"kubernetes.io/hostname": node}},
        "priorityClassName": priority_class,
        "checkpoint": {"storage": {"size": "1Gi"}, "intervalSteps": interval_steps, "keep": 2},
    }
    body.update(spec)
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name}, "spec": body}


def host_work_dir(job: dict, root: Path | None = None) -> Path:
    """Where a job's work dir (checkpoints/, output/, logs/) lies on this machine: the node
    agent's directory for its checkpoint claim, plus the path the trainer uses in the pod."""
    from finetune_api import FineTuneJob
    from finetune_api.trainer_config import CHECKPOINT_MOUNT
    from finetune_operator.jobs.build.configmap import work_dir
    from finetune_operator.jobs.build.pvc import checkpoint_claim_name

    parsed = FineTuneJob.from_body(job)
    inside = Path(work_dir(parsed)).relative_to(CHECKPOINT_MOUNT)
    return pvc_dir(root or default_root(), parsed.metadata.namespace,
                   checkpoint_claim_name(parsed)) / inside
