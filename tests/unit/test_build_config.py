"""The trainer ConfigMap: paths from the mount conventions, round trip, no secret values."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from finetune_api.trainer_config import TrainerConfig
from finetune_operator.jobs.build import build_children
from finetune_operator.jobs.build.configmap import build_config_map, trainer_config
from finetune_operator.jobs.build.pod import build_pod
from tests.builders.jobs import make_job, make_settings

pytestmark = pytest.mark.unit

HUB_MODEL = {
    "name": "Qwen/Qwen2.5-0.5B",
    "source": {
        "hub": {"repo": "Qwen/Qwen2.5-0.5B", "tokenSecretRef": {"name": "hf", "key": "tok"}},
    },
}


def _parse(cm: dict[str, Any]) -> TrainerConfig:
    assert list(cm["data"]) == ["config.yaml"]
    return TrainerConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == name)


def _mount(pod: dict[str, Any], name: str) -> dict[str, Any]:
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    return next(m for m in mounts if m["name"] == name)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"method": "qlora", "quantization": {"bits": 4}, "lora": {"rank": 8}},
        {"method": "full", "distributed": {"deepspeed": {"stage": 3, "offloadParams": True}}},
        {"model": HUB_MODEL, "dataset": {"source": {"hub": {"repo": "org/data"}},
                                          "validationSplit": 0.1, "cutoffLen": 512}},
        {"training": {"epochs": 2.5, "maxSteps": 0, "learningRate": 1e-5, "packing": True},
         "output": {"mergeAdapter": True}, "image": "custom:1", "suspend": True},
    ],
)
def test_config_round_trips_with_the_same_spec(overrides: dict[str, Any]) -> None:
    job = make_job(**overrides)
    cm = build_config_map(job)
    parsed = _parse(cm)
    assert parsed == trainer_config(job)
    assert parsed.spec == job.spec
    assert parsed.job.uid == job.metadata.uid
    assert cm["metadata"]["name"] == "bot-config"


def test_paths_follow_the_mount_conventions() -> None:
    job = make_job(name="bot", namespace="team-a")
    cfg = _parse(build_config_map(job))
    assert cfg.paths.model == "/mnt/model/tiny-llama"
    assert cfg.paths.dataset == "/mnt/dataset/train.jsonl"
    assert cfg.paths.work_dir == f"/mnt/checkpoints/finetune/team-a/bot/{job.metadata.uid}"
    assert cfg.hub_token_file is None

    pvc_data = make_job(dataset={"source": {"pvc": {"claimName": "data", "path": "sets/a.jsonl"}}},
                        model={"source": {"pvc": {"claimName": "models", "path": ""}}})
    cfg = trainer_config(pvc_data)
    assert cfg.paths.dataset == "/mnt/dataset/sets/a.jsonl"
    assert cfg.paths.model == "/mnt/model"


def test_configmap_dataset_is_mounted_as_a_file() -> None:
    job = make_job()
    pod = build_pod(job, make_settings(), 1, 0, None, None)
    assert _volume(pod, "dataset")["configMap"] == {
        "name": "support-data", "items": [{"key": "train.jsonl", "path": "train.jsonl"}],
    }
    assert _mount(pod, "dataset") == {"name": "dataset", "mountPath": "/mnt/dataset",
                                      "readOnly": True}


def test_pvc_dataset_and_model_are_mounted_read_only() -> None:
    job = make_job(dataset={"source": {"pvc": {"claimName": "data", "path": "a.jsonl"}}})
    pod = build_pod(job, make_settings(), 1, 0, None, None)
    assert _volume(pod, "dataset")["persistentVolumeClaim"] == {"claimName": "data",
                                                                "readOnly": True}
    assert _mount(pod, "dataset")["readOnly"] is True
    assert _volume(pod, "model")["persistentVolumeClaim"] == {"claimName": "models",
                                                              "readOnly": True}
    assert _mount(pod, "model") == {"name": "model", "mountPath": "/mnt/model", "readOnly": True}
    assert _mount(pod, "config") == {"name": "config", "mountPath": "/etc/finetune",
                                     "readOnly": True}
    assert _volume(pod, "config")["configMap"]["name"] == "bot-config"


def test_hub_token_is_mounted_never_written_into_the_configmap() -> None:
    job = make_job(model=HUB_MODEL)
    children = build_children(job, make_settings(), 1, None, None)
    text = children.config_map["data"]["config.yaml"]
    cfg = _parse(children.config_map)
    assert cfg.paths.model == "Qwen/Qwen2.5-0.5B"
    assert cfg.hub_token_file == "/var/run/secrets/finetune/hub/token"
    # Only the reference (secret name/key) is in the config, no Secret data.
    assert "tokenSecretRef" in text
    pod = children.pods[0]
    assert _volume(pod, "hub-token")["secret"]["secretName"] == "hf"
    assert _volume(pod, "hub-token")["secret"]["items"] == [{"key": "tok", "path": "token"}]
    assert _mount(pod, "hub-token")["mountPath"] == "/var/run/secrets/finetune/hub"
    assert not any(v["name"] == "model" for v in pod["spec"]["volumes"])
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert "HF_HUB_OFFLINE" not in env
    for obj in children.all():
        assert obj["kind"] != "Secret"


def test_offline_unless_a_hub_source_is_used() -> None:
    pod = build_pod(make_job(), make_settings(), 1, 0, None, None)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    data_hub = make_job(dataset={"source": {"hub": {"repo": "org/data"}}})
    pod = build_pod(data_hub, make_settings(), 1, 0, None, None)
    assert "HF_HUB_OFFLINE" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert trainer_config(data_hub).paths.dataset == "org/data"
    assert trainer_config(data_hub).hub_token_file is None
