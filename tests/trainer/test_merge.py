"""Where the adapter is merged, and the early memory check that replaces an OOM loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_trainer import merge
from finetune_trainer.config import ConfigError
from finetune_trainer.merge import CPU_OVERHEAD_BYTES, GIB, plan_merge
from tests.builders.trainer import config_dict

pytestmark = pytest.mark.trainer

B7 = 7_000_000_000  # parameters of a 7B model: 14 GB in bf16, 28 GB in fp32


def test_merges_on_the_gpu_when_the_base_fits() -> None:
    plan = plan_merge(B7, "bf16", gpu_free=80 * GIB, gpu_index=3, cpu_available=8 * GIB)
    assert plan.device == "cuda:3" and plan.precision == "bf16"
    assert plan.need_bytes >= B7 * 2


def test_falls_back_to_the_cpu_when_the_gpu_is_too_small() -> None:
    plan = plan_merge(B7, "bf16", gpu_free=10 * GIB, gpu_index=0, cpu_available=64 * GIB)
    assert plan.device == "cpu" and plan.need_bytes == B7 * 2 + CPU_OVERHEAD_BYTES
    assert "GPU 0 has 10.0 GiB free" in plan.why


def test_cpu_only_without_a_known_limit_merges_on_the_cpu() -> None:
    assert plan_merge(B7, "fp32", gpu_free=None, gpu_index=0, cpu_available=None).device == "cpu"


def test_too_little_memory_anywhere_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        plan_merge(B7, "fp32", gpu_free=None, gpu_index=0, cpu_available=8 * GIB)
    msg = str(e.value)
    assert msg.startswith("spec.output.mergeAdapter: merging the adapter needs the 7.00B")
    assert "only 8.0 GiB" in msg and "raise spec.resources.memory by at least 20Gi" in msg
    assert "output.mergeAdapter: false" in msg


def test_the_memory_check_fails_before_training(tiny_model: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod that could never merge stops at once (exit 2 from the entrypoint), not after
    training; the probe of the pod's free memory is the only thing replaced."""
    from finetune_trainer import train
    from finetune_trainer.config import parse_config

    monkeypatch.setattr(merge, "cpu_available_bytes", lambda: 0)
    cfg = parse_config(config_dict(tiny_model, tmp_path / "w",
                                   spec={"output": {"mergeAdapter": True}}))
    with pytest.raises(ConfigError, match=r"^spec\.output\.mergeAdapter: "):
        train.run(cfg)
    assert not list((tmp_path / "w/checkpoints").glob("checkpoint-*")), "no training happened"


def test_count_parameters_skips_lora_weights(tiny_model: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    n = sum(p.numel() for p in base.parameters())
    wrapped = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    assert merge.count_parameters(wrapped) == n


def test_memory_short_at_merge_time_keeps_the_adapter(tiny_model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough memory at the start, not at the end (another tenant on the node): the job is
    Completed with its adapter and says why there is no merged model."""
    from finetune_trainer import train
    from finetune_trainer.config import parse_config

    answers = iter([64 * GIB])
    monkeypatch.setattr(merge, "cpu_available_bytes", lambda: next(answers, 0))
    cfg = parse_config(config_dict(tiny_model, tmp_path / "w", spec={
        "training": {"maxSteps": 3}, "output": {"mergeAdapter": True}}))
    out = train.run(cfg)
    assert out.reason == "Completed" and out.final_step == 3
    assert out.adapter_path == "output/adapter" and out.merged_path == ""
    assert "merge skipped: spec.output.mergeAdapter: " in out.message
    assert (tmp_path / "w/output/adapter/adapter_model.safetensors").is_file()
    assert not (tmp_path / "w/output/merged").exists()
