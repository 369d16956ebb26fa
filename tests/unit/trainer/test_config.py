"""Config loading: one schema with the CRD, errors that name the field, runtime decisions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_trainer.config import (
    ConfigError,
    Runtime,
    load_config,
    parse_config,
    resolve_precision,
)
from tests.builders.trainer import ROOT, config_dict, trainer_env, write_config

pytestmark = pytest.mark.unit

CPU = Runtime(cuda=False, bf16_supported=False)


def cfg(tmp_path: Path, **over: Any) -> dict[str, Any]:
    return config_dict(tmp_path / "model", tmp_path / "work", **over)


def test_valid_config_loads_from_file_and_env(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "c.yaml", cfg(tmp_path))
    c = load_config(path)
    assert c.spec.training.learning_rate == 0.02 and c.spec.lora_or_default() is not None
    monkeypatch.setenv("FINETUNE_CONFIG", str(path))
    assert load_config().job.uid == "uid-1234"


@pytest.mark.parametrize(("over", "needle"), [
    ({"spec": {"training": {"learningRate": -1}}},
     "spec.training.learningRate: Input should be greater than 0 (got -1)"),
    ({"spec": {"training": {"batchSize": 0}}}, "spec.training.batchSize: Input should be"),
    ({"spec": {"resources": {"tolerations": [{"operator": "Maybe"}]}}},
     "spec.resources.tolerations[0].operator: Input should be 'Exists' or 'Equal'"),
    ({"spec": {"dataset": {"format": "csv"}}}, "spec.dataset.format: Input should be"),
    ({"spec": {"lora": {"targetModules": []}}}, "spec.lora.targetModules: List should have"),
    ({"spec": {"training": {"learningRate": 0.1, "lernRate": 1}}},
     "spec.training.lernRate: Extra inputs are not permitted"),
    ({"spec": {"method": "qlora"}},
     "spec: quantization is required when method is qlora"),
    ({"paths": {"workDir": None}}, "paths.workDir: Input should be a valid string"),
    ({"spec": {"distributed": {"deepspeed": {"stage": 2, "offloadParams": True}}}},
     "spec.distributed.deepspeed: distributed.deepspeed.offloadParams needs stage 3"),
    ({"spec": {"distributed": {"deepspeed": {"stage": 0, "offloadOptimizer": True}}}},
     "spec.distributed.deepspeed: distributed.deepspeed.offloadOptimizer needs stage >= 1"),
    ({"spec": {"method": "qlora", "resources": {"gpus": 1},
               "quantization": {"bits": 8}, "distributed": {"deepspeed": {"stage": 2}}}},
     "spec.quantization.bits: 8-bit QLoRA with DeepSpeed is not supported"),
])
def test_invalid_config_names_the_field(tmp_path: Path, over: dict[str, Any],
                                        needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(cfg(tmp_path, **over), "cfg.yaml")
    assert needle in str(e.value)


def test_missing_section_is_named(tmp_path: Path) -> None:
    data = cfg(tmp_path)
    del data["spec"]["model"]
    with pytest.raises(ConfigError, match=r"cfg.yaml: spec.model: Field required"):
        parse_config(data, "cfg.yaml")


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the trainer config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no config: pass --config"):
        load_config(None)


def test_job_uid_must_match_the_pod_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_JOB_UID", "another-uid")
    with pytest.raises(ConfigError, match=r"job.uid: the config is for job uid uid-1234"):
        parse_config(cfg(tmp_path))


def test_config_is_the_crd_schema(tmp_path: Path) -> None:
    """The trainer reads the operator's own model: the spec round-trips through the wire form."""
    from finetune_api.spec import FineTuneJobSpec

    c = parse_config(cfg(tmp_path))
    assert isinstance(c.spec, FineTuneJobSpec)
    again = parse_config(json.loads(json.dumps(c.to_wire())))
    assert again == c


@pytest.mark.parametrize(("req", "rt", "got", "noted"), [
    ("bf16", CPU, "fp32", True),
    ("fp16", CPU, "fp32", True),
    ("fp32", CPU, "fp32", False),
    ("bf16", Runtime(cuda=True, bf16_supported=True), "bf16", False),
    ("bf16", Runtime(cuda=True, bf16_supported=False), "fp16", True),
    ("fp16", Runtime(cuda=True, bf16_supported=True), "fp16", False),
])
def test_precision_degrades_with_a_reason(req: str, rt: Runtime, got: str, noted: bool) -> None:
    precision, note = resolve_precision(req, rt)
    assert precision == got and (note is not None) == noted
    if note:
        assert note.startswith("spec.training.precision:")


def test_entrypoint_exits_2_with_the_field_in_the_termination_log(tmp_path: Path) -> None:
    data = cfg(tmp_path, spec={"training": {"learningRate": 0}})
    path = write_config(tmp_path / "c.yaml", data)
    proc = subprocess.run([sys.executable, "-m", "finetune_trainer", "--config", str(path)],
                          cwd=ROOT, env=trainer_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "spec.training.learningRate" in proc.stderr
    # the config was invalid, so its terminationLog is unknown: the default path is used
    data2 = cfg(tmp_path, spec={"dataset": {"cutoffLen": 64}})
    data2["paths"]["model"] = str(tmp_path / "no-model")
    path2 = write_config(tmp_path / "c2.yaml", data2)
    proc2 = subprocess.run([sys.executable, "-m", "finetune_trainer", "--config", str(path2)],
                           cwd=ROOT, env=trainer_env(), capture_output=True, text=True,
                           timeout=120)
    assert proc2.returncode == 2, proc2.stderr
    term = json.loads(Path(data2["terminationLog"]).read_text())
    assert term["reason"] == "Error" and "paths.model" in term["message"]
    assert yaml.safe_load(path2.read_text())["paths"]["model"] in term["message"]
