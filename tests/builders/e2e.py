"""The e2e tier's shared steps (tests/e2e): read a job back, wait for its progress, preempt
it with an urgent job and see it resume, and compare its final adapter with an uninterrupted
run of the same trainer config on the same inputs (one process or two ranks).

    from tests.builders.e2e import RUN, assert_same_weights, get_job

    assert_same_weights(get_job(cluster, ns, "low"), tmp_path)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from finetune_api import FineTuneJob
from finetune_dev.devcluster.workloads import DATASET, host_work_dir, tiny_model, training_job
from finetune_operator.jobs.build.configmap import trainer_config
from tests.kube import Cluster, wait_for
from tests.operator_proc import job_status, wait_phase

RUN = 240  # seconds a training job may take on 2 shared cores


def get_job(cluster: Cluster, ns: str, name: str) -> dict:
    job = cluster.get("finetunejob", name, ns)
    assert job is not None
    return job


def step_at_least(cluster: Cluster, ns: str, name: str, step: int) -> dict:
    return wait_for(f"{ns}/{name} at step >= {step}", lambda: (
        lambda s: s if (s.get("progress") or {}).get("step", 0) >= step else None)(
        job_status(cluster, ns, name)), RUN)


def adapter_weights(work_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted((work_dir / "output" / "adapter").glob("*.safetensors"))
    assert files, f"no adapter under {work_dir}/output/adapter"
    return load_file(str(files[0]))


def reference_config(job: dict, tmp: Path) -> Path:
    """The job's trainer config on the same inputs, writing to ``tmp/reference``."""
    cfg = trainer_config(FineTuneJob.from_body(job))
    cfg.paths.model = str(tiny_model())
    cfg.paths.dataset = str(DATASET)
    cfg.paths.work_dir = str(tmp / "reference")
    cfg.report = None
    cfg.termination_log = str(tmp / "reference-termination.log")
    path = tmp / "reference.yaml"
    path.write_text(yaml.safe_dump(cfg.to_wire()))
    return path


def uninterrupted(job: dict, tmp: Path) -> Path:
    """The same job trained in one go by the trainer itself, on the same inputs."""
    path = reference_config(job, tmp)
    subprocess.run([sys.executable, "-m", "finetune_trainer", "--config", str(path)],
                   check=True, capture_output=True, timeout=RUN)
    return tmp / "reference"


def assert_same_weights(job: dict, tmp: Path,
                         reference: Callable[[dict, Path], Path] | None = None) -> None:
    """The job's final adapter equals the uninterrupted reference run's (by default one
    process) within 1e-6."""
    got = adapter_weights(host_work_dir(job))
    want = adapter_weights((reference or uninterrupted)(job, tmp))
    assert got.keys() == want.keys()
    worst = max(float((got[k] - want[k]).abs().max()) for k in got)
    assert worst <= 1e-6, f"adapter differs from the uninterrupted run by {worst}"


def assert_resumed_cleanly(st: dict, preemptions: int) -> None:
    assert st["phase"] == "Succeeded"
    assert (st["preemptions"], st["failures"], st["lostSteps"]) == (preemptions, 0, 0), st
    assert st["attempt"] == preemptions + 1


def preempted_by_urgent(cluster: Cluster, ns: str, name: str, node: str, gpus: int,
                         steps: int, queue: str | None = None) -> int:
    """A critical job ``urgent`` on ``node`` that needs ``gpus`` preempts ``name`` (of ``steps``
    steps) once; returns the step of its SIGTERM save, which landed mid-run. ``queue``: the
    Kueue LocalQueue ``urgent`` is labelled with (admission mode kueue)."""
    urgent = training_job("urgent", gpus=gpus, priority_class="finetune-critical", node=node,
                          max_steps=5)
    if queue is not None:
        urgent["metadata"].setdefault("labels", {})["kueue.x-k8s.io/queue-name"] = queue
    cluster.apply(urgent, ns)
    st = wait_for(f"{name} preempted", lambda: (
        lambda s: s if s.get("preemptions") == 1 else None)(job_status(cluster, ns, name)),
        RUN)
    saved = int(st["checkpoint"]["step"])
    assert 0 < saved < steps, "the SIGTERM save holds the step the trainer stopped at"
    return saved


def resumed_after_urgent(cluster: Cluster, ns: str, name: str, saved: int) -> dict:
    """``urgent`` and ``name`` both finish; ``name`` resumed once, from ``saved``, losing
    nothing. Returns its status."""
    wait_phase(cluster, ns, "urgent", "Succeeded", 2 * RUN)
    st = wait_phase(cluster, ns, name, "Succeeded", 2 * RUN)
    assert_resumed_cleanly(st, 1)
    assert st["progress"]["resumedFromStep"] == saved
    return st


def uninterrupted_two_ranks(job: dict, tmp: Path) -> Path:
    path = reference_config(job, tmp)
    subprocess.run([sys.executable, "-m", "finetune_trainer.launch", "--nproc-per-node=2", "--",
                    "--config", str(path)], check=True, capture_output=True, timeout=2 * RUN,
                   env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                        "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    return tmp / "reference"
