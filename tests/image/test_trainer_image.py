"""The trainer image, built by `make images`: a real job of the operator runs in it (the node
agent's container runner: podman, the pod's uid/gid/fsGroup, read-only root file system, the
volumes the operator mounts), trains, is suspended (SIGTERM), saves and exits 0; the GPU
packages import and DeepSpeed's prebuilt cpu_adam loads without a compiler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_api.trainer_config import CHECKPOINT_MOUNT, CONFIG_MOUNT
from finetune_dev.devcluster.workloads import host_work_dir, prepare_namespace, training_job
from finetune_dev.nodeagent import find_log
from finetune_dev.nodeagent.container import LABEL

from ..conftest import ROOT
from ..kube import Cluster, short_id, wait_for
from ..operator_proc import OperatorProcess, job_pods, job_status
from .conftest import SIZES, TRAINER_IMAGE, Image, podman

pytestmark = pytest.mark.image
RUN = 300  # seconds: a container start imports torch from the image on 2 shared cores


def _container(node: str) -> dict | None:
    ids = podman("ps", "--quiet", "--filter", f"label={LABEL}={node}").stdout.split()
    return json.loads(podman("inspect", ids[0]).stdout)[0] if ids else None


def test_job_trains_in_the_image_saves_on_sigterm_and_exits_0(
        cluster: Cluster, crd_installed: Path, priority_classes: list[str],
        trainer_image: Image, image_agent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ns = f"img-{short_id()}"
    prepare_namespace(cluster.cfg, ns)
    # an operator of this namespace only (its own lease), handing out the trainer image
    op = OperatorProcess(cluster, tmp_path, env={
        "POD_NAMESPACE": ns, "FINETUNE_NAMESPACES": ns, "FINETUNE_TRAINER_IMAGE": TRAINER_IMAGE})
    # the container shares the host network: the operator's loopback report port
    op.start(FINETUNE_REPORT_URL=f"https://127.0.0.1:{op.report_port}/v1/reports")
    try:
        cluster.apply(training_job("in-image", gpus=1, priority_class="finetune-normal",
                                   node=image_agent.node, max_steps=100000,
                                   interval_steps=100000), ns)
        wait_for("the job to train a few steps in its container", lambda: (
            (job_status(cluster, ns, "in-image").get("progress") or {}).get("step", 0) >= 3),
            RUN)
        c = _container(image_agent.node)
        assert c is not None, "the trainer runs as a process, not in a container"
        assert c["ImageName"] == TRAINER_IMAGE
        assert c["HostConfig"]["ReadonlyRootfs"] is True
        assert c["Config"]["User"] == "1000:1000"
        assert not c["EffectiveCaps"] and {"CAP_CHOWN", "CAP_KILL"} <= set(
            c["HostConfig"]["CapDrop"])  # capabilities: drop: [ALL]
        mounts = {m["Destination"]: m for m in c["Mounts"]}
        assert {CHECKPOINT_MOUNT, CONFIG_MOUNT, "/tmp", "/dev/termination-log"} <= set(mounts)
        assert mounts[CHECKPOINT_MOUNT]["RW"] and not mounts[CONFIG_MOUNT]["RW"]
        pod = job_pods(cluster, ns, "in-image")[0]["metadata"]["name"]
        cluster.kubectl("patch", "finetunejob", "in-image", "-n", ns, "--type=merge",
                        "-p", '{"spec": {"suspend": true}}')
        st = wait_for("suspended with a checkpoint", lambda: (
            lambda s: s if s.get("phase") == "Suspended" and not job_pods(cluster, ns, "in-image")
            else None)(job_status(cluster, ns, "in-image")), RUN)
        assert (st["failures"], st["preemptions"]) == (0, 0)  # exit code 0: not a failure
        # saved on SIGTERM: on the checkpoint claim (host side), and in the job's status
        job = cluster.get("finetunejob", "in-image", ns)
        assert job is not None
        saved = sorted((host_work_dir(job) / "checkpoints").glob("checkpoint-*"))
        assert saved, f"no checkpoint under {host_work_dir(job)}/checkpoints"
        wait_for("the saved checkpoint in the job's status", lambda: (
            job_status(cluster, ns, "in-image").get("checkpoint") or {}).get("step", 0) >= 3, 30)
        log = find_log(image_agent.root, ns, pod, "trainer")
        assert log is not None and "Preempted" in log.read_text(errors="replace")
        wait_for("the container removed", lambda: _container(image_agent.node) is None, 60)
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


# The trainer image carries its product and the api only (issue 20): no operator, no
# Kubernetes client or kopf, no Prometheus client, no dev tooling (tiny model, GPU check).
NOT_CARRIED = {"kopf": "kopf", "kubernetes": "kubernetes",
               "prometheus_client": "prometheus-client",
               "finetune_operator": "finetune-operator", "finetune_dev": "finetune-dev"}
CARRIED = {"finetune_api": "finetune-api", "finetune_trainer": "finetune-trainer",
           "torch": "torch", "peft": "peft"}


def test_carries_the_trainer_and_the_api_only(trainer_image: Image) -> None:
    trainer_image.assert_carries_only(CARRIED, NOT_CARRIED,
                                      "Dockerfile.trainer installs ./api ./trainer[gpu] only")



def test_gpu_check_runs_in_the_image_from_a_mounted_dev_tree(trainer_image: Image) -> None:
    # the image carries no dev package; the GPU check (BENCHMARKS.md) runs in it with the
    # checkout's dev/ mounted read-only, importing only what the image has besides
    out = trainer_image.run("-v", f"{ROOT / 'dev'}:/src/dev:ro", "-e", "PYTHONPATH=/src/dev",
                            "--entrypoint", "python", trainer_image.ref, "-m",
                            "finetune_dev.gpucheck", "--help", check=False)
    assert out.returncode == 0 and "usage: python -m finetune_dev.gpucheck" in out.stdout, (
        out.stdout + out.stderr)


GPU_PACKAGES = """
import torch, bitsandbytes, deepspeed
import deepspeed.git_version_info as v
assert torch.version.cuda, "torch without CUDA: the product image must run on GPUs"
assert v.installed_ops["cpu_adam"] and v.accelerator_name == "cuda", (v.installed_ops,
                                                                       v.accelerator_name)
from deepspeed.ops.adam import DeepSpeedCPUAdam
p = torch.nn.Parameter(torch.ones(8))
opt = DeepSpeedCPUAdam([p], lr=0.1)
p.grad = torch.ones(8)
opt.step()
assert bool((p < 1).all()), p
print("ok torch", torch.__version__, "cuda", torch.version.cuda, "deepspeed", deepspeed.__version__,
      "bitsandbytes", bitsandbytes.__version__)
"""


def test_gpu_packages_import_and_prebuilt_cpu_adam_loads(trainer_image: Image) -> None:
    # DS_ACCELERATOR=cuda: what DeepSpeed detects on a GPU node (this machine has none); a
    # JIT build would fail here (no compiler in the image), so a step proves the prebuilt op
    out = trainer_image.run("-e", "DS_ACCELERATOR=cuda", "--entrypoint", "python",
                            trainer_image.ref, "-c", GPU_PACKAGES, timeout=600)
    assert "ok torch" in out.stdout, out.stdout + out.stderr


def test_supply_chain_basics(trainer_image: Image) -> None:
    info = trainer_image.inspect()
    assert info["Config"]["User"] == "1000:1000"
    assert info["Config"]["Entrypoint"] == ["finetune-trainer"]
    out = trainer_image.run("--entrypoint", "sh", trainer_image.ref, "-c",
                            "for c in gcc g++ cc c++ make nvcc; do command -v $c; done; "
                            "echo ---; cat /opt/venv/pip-freeze.txt").stdout
    tools, freeze = out.split("---", 1)
    assert not tools.strip(), f"build tools in the runtime image: {tools}"
    for pin in ("torch==2.15.0", "deepspeed==0.19.8", "bitsandbytes==0.50.2", "peft==0.21.2"):
        assert pin in freeze.split(), pin
    layers = trainer_image.layers()
    biggest = max(layers, key=lambda h: h["size"])
    SIZES.append(f"{trainer_image.ref}: {info['Size'] / 1e9:.2f} GB; largest layer "
                 f"{biggest['size'] / 1e9:.2f} GB: {' '.join(biggest['CreatedBy'].split())[:90]}")
    assert "/opt/venv" in biggest["CreatedBy"], "the venv (torch + CUDA wheels) dominates"
