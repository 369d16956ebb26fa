"""Trainer Pods: resources, scheduling, security, grace period, env, command."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.jobs.build.pod import build_pod, build_pods, grace_period_seconds
from tests.builders.jobs import make_job, make_settings

pytestmark = pytest.mark.unit


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(pod)["env"]}


def test_gpu_requests_equal_limits_on_the_gpu_resource() -> None:
    pod = build_pod(make_job(gpus=2), make_settings(), 1, 0, "finetune-high", None)
    res = _container(pod)["resources"]
    assert res["requests"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert res["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}


def test_gpu_resource_from_job_then_settings() -> None:
    mig = make_job(gpus=1, resources={"gpuResource": "nvidia.com/mig-1g.10gb"})
    res = _container(build_pod(mig, make_settings(), 1, 0, None, None))["resources"]
    assert res["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert "nvidia.com/gpu" not in res["limits"]
    amd = make_settings(gpu_resource="amd.com/gpu")
    res = _container(build_pod(make_job(gpus=1), amd, 1, 0, None, None))["resources"]
    assert res["requests"]["amd.com/gpu"] == res["limits"]["amd.com/gpu"] == "1"


def test_cpu_job_has_no_gpu_resources_or_gpu_toleration() -> None:
    pod = build_pod(make_job(gpus=0), make_settings(), 1, 0, None, None)
    res = _container(pod)["resources"]
    assert res == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    assert "tolerations" not in pod["spec"]
    assert _container(pod)["command"] == [
        "python", "-m", "finetune_trainer.launch", "--nnodes=1", "--node-rank=0",
        "--nproc-per-node=1", "--", "--config", "/etc/finetune/config.yaml",
    ]


def test_tolerations_node_selector_priority_and_image() -> None:
    job = make_job(
        gpus=1,
        resources={
            "gpuResource": "nvidia.com/mig-1g.10gb",
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                             "effect": "NoSchedule"},
                            {"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}],
        },
    )
    pod = build_pod(job, make_settings(trainer_image="reg/trainer:9"), 1, 0, "finetune-high", None)
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"pool": "a100"}
    assert spec["priorityClassName"] == "finetune-high"
    assert spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "nvidia.com/mig-1g.10gb", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert _container(pod)["image"] == "reg/trainer:9"
    own = build_pod(make_job(image="mine:2"), make_settings(), 1, 0, None, None)
    assert _container(own)["image"] == "mine:2"
    assert "priorityClassName" not in own["spec"]


def test_restricted_security_context_and_pod_basics() -> None:
    job = make_job()
    pod = build_pod(job, make_settings(), 1, 0, None, None)
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["fsGroup"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = _container(pod)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True  # writes go to /tmp and the volumes
    assert "imagePullSecrets" not in spec
    pulled = build_pod(job, make_settings(trainer_image_pull_secrets=["regcred"]), 1, 0, None,
                       None)
    assert pulled["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == "default"
    assert spec["automountServiceAccountToken"] is False  # its only token: the report one
    c = _container(pod)
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["tmp"] == {"name": "tmp", "emptyDir": {}}
    # shared memory bounded by the job's memory request (issue 11: /dev/shm has a size limit)
    assert vols["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory",
                                                    "sizeLimit": job.spec.resources.memory}}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["tmp"] == "/tmp" and mounts["dshm"] == "/dev/shm"
    assert mounts["checkpoints"] == "/mnt/checkpoints"
    assert pod["metadata"]["name"] == "bot-a1-0"
    assert pod["metadata"]["labels"]["finetune.dev/attempt"] == "1"
    assert pod["metadata"]["labels"]["finetune.dev/rank"] == "0"
    assert "hostname" not in spec and "subdomain" not in spec


@pytest.mark.parametrize(
    ("minimum", "save", "expected"),
    [
        (120, None, 120),
        (120, 10.0, 120),      # 3*10+30 = 60 < 120
        (120, 30.0, 120),      # exactly 120
        (120, 30.1, 121),      # ceil(120.3)
        (120, 100.0, 330),
        (30, 0.0, 30),
        (120, -5.0, 120),
        (120, float("nan"), 120),
        (120, float("inf"), 120),
    ],
)
def test_grace_period_sizing(minimum: int, save: float | None, expected: int) -> None:
    settings = make_settings(grace_period_seconds=minimum)
    assert grace_period_seconds(settings, save) == expected
    pod = build_pod(make_job(), settings, 1, 0, None, save)
    assert pod["spec"]["terminationGracePeriodSeconds"] == expected


def test_single_node_env() -> None:
    job = make_job()
    env = _env(build_pod(job, make_settings(), 4, 0, None, None))
    assert env["FINETUNE_CONFIG"] == "/etc/finetune/config.yaml"
    assert env["FINETUNE_JOB_UID"] == job.metadata.uid
    assert env["FINETUNE_ATTEMPT"] == "4"
    assert env["FINETUNE_WORK_DIR"] == f"/mnt/checkpoints/finetune/team-a/bot/{job.metadata.uid}"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["HF_HUB_OFFLINE"] == "1"
    assert not {"MASTER_ADDR", "NNODES", "NODE_RANK"} & set(env)
    assert all(isinstance(v, (str, dict)) for v in env.values())


@pytest.mark.parametrize("gpus,nproc", [(0, 1), (1, 1), (4, 4)])
def test_one_launch_path_for_every_single_node_shape(gpus: int, nproc: int) -> None:
    """One process, one GPU (DeepSpeed included) and N GPUs all run the trainer's supervisor;
    it sets the env:// variables itself (127.0.0.1, a free port), so the pod sets none."""
    pod = build_pod(make_job(gpus=gpus), make_settings(), 1, 0, None, 50.0)
    cmd = _container(pod)["command"]
    assert cmd == ["python", "-m", "finetune_trainer.launch", "--nnodes=1", "--node-rank=0",
                   f"--nproc-per-node={nproc}", "--", "--config", "/etc/finetune/config.yaml"]
    env = _env(pod)
    assert not {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"} & set(env)
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in env  # no torchrun agent to configure
    assert "ports" not in _container(pod)


def test_multi_node_pods_env_and_dns() -> None:
    job = make_job(gpus=8, nodes=3)
    pods = build_pods(job, make_settings(), 2, "finetune-high", None)
    assert [p["metadata"]["name"] for p in pods] == ["bot-a2-0", "bot-a2-1", "bot-a2-2"]
    for rank, pod in enumerate(pods):
        env = _env(pod)
        assert env["MASTER_ADDR"] == "bot-a2-0.bot-workers.team-a.svc"
        assert env["MASTER_PORT"] == "29500"
        assert env["NNODES"] == "3"
        assert env["NODE_RANK"] == str(rank)
        assert env["NPROC_PER_NODE"] == "8"
        assert pod["spec"]["hostname"] == pod["metadata"]["name"]
        assert pod["spec"]["subdomain"] == "bot-workers"
        assert pod["metadata"]["labels"]["finetune.dev/rank"] == str(rank)
        cmd = _container(pod)["command"]
        assert cmd == ["python", "-m", "finetune_trainer.launch", "--nnodes=3",
                       f"--node-rank={rank}", "--nproc-per-node=8",
                       "--master-addr=bot-a2-0.bot-workers.team-a.svc", "--master-port=29500",
                       "--", "--config", "/etc/finetune/config.yaml"]
        assert _container(pod)["ports"][0]["containerPort"] == 29500
    cpu_gang = build_pods(make_job(gpus=0, nodes=2), make_settings(), 1, None, None)
    assert _env(cpu_gang[0])["NPROC_PER_NODE"] == "1"


def test_each_rank_prefers_the_node_the_policy_placed_it_on() -> None:
    pods = build_pods(make_job(gpus=8, nodes=2), make_settings(), 1, None, None, ("n7", "n3"))
    for pod, node in zip(pods, ("n7", "n3"), strict=True):
        prefs = pod["spec"]["affinity"]["nodeAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"]
        assert prefs == [{"weight": 100, "preference": {"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}}]
        assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["spec"][
            "affinity"]["nodeAffinity"]  # a preference: the scheduler may still go elsewhere
    # no placement, or one that does not name a node per rank: no preference at all
    for placement in ((), ("n1",)):
        assert all("affinity" not in p["spec"] for p in build_pods(
            make_job(gpus=8, nodes=2), make_settings(), 1, None, None, placement))


def test_rank_outside_the_gang_is_rejected() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        build_pod(make_job(nodes=2), make_settings(), 1, 2, None, None)
