"""Model construction: LoRA targets, QLoRA and DeepSpeed configs (CPU), lazy heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_api.spec import DeepSpeedSpec, QuantizationSpec
from finetune_trainer.config import ConfigError, Runtime, parse_config
from finetune_trainer.model import (
    apply_method,
    bnb_config,
    deepspeed_config,
    linear_module_names,
    load_model,
    resolve_attention,
    resolve_target_modules,
)
from finetune_trainer.train import training_kwargs
from tests.builders.trainer import ROOT, config_dict, trainer_env

pytestmark = pytest.mark.trainer


def tiny(arch: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    if arch == "gpt2":  # fused attention in Conv1D layers named c_attn/c_proj/c_fc
        cfg: Any = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    else:
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    return AutoModelForCausalLM.from_config(cfg)


def leaves(names: list[str]) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n in names}


@pytest.mark.parametrize(("arch", "expect"), [
    ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("qwen2", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("gpt2", {"c_attn", "c_proj", "c_fc"}),
])
def test_all_linear_targets_every_block_layer_but_not_the_head(arch: str,
                                                               expect: set[str]) -> None:
    model = tiny(arch)
    names = resolve_target_modules(model, ["all-linear"])
    assert leaves(names) == expect
    assert "lm_head" not in leaves(linear_module_names(model))


def test_explicit_targets_and_unknown_names(tmp_path: Path) -> None:
    model = tiny("llama")
    assert leaves(resolve_target_modules(model, ["q_proj", "v_proj"])) == {"q_proj", "v_proj"}
    assert resolve_target_modules(model, ["layers.0.self_attn.q_proj"]) == [
        "model.layers.0.self_attn.q_proj"]
    with pytest.raises(ConfigError) as e:
        resolve_target_modules(model, ["q_proj", "query_key_value"])
    msg = str(e.value)
    assert msg.startswith("spec.lora.targetModules[1]: 'query_key_value' matches no linear layer")
    assert "down_proj" in msg


def test_lora_wraps_gpt2_style_layers(tmp_path: Path) -> None:
    cfg = parse_config(config_dict(tmp_path, tmp_path / "w"))
    peft_model = apply_method(tiny("gpt2"), cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("c_attn.lora_A" in n for n in trainable)


def test_full_fine_tuning_trains_every_weight(tmp_path: Path) -> None:
    cfg = parse_config(config_dict(tmp_path, tmp_path / "w", spec={"method": "full",
                                                                   "lora": None}))
    model = tiny("llama")
    for p in model.parameters():
        p.requires_grad_(False)
    assert all(p.requires_grad for p in apply_method(model, cfg).parameters())


@pytest.mark.parametrize(("q", "kind", "double"), [
    (QuantizationSpec(bits=4, type="nf4", double_quant=True), "nf4", True),
    (QuantizationSpec(bits=4, type="fp4", double_quant=False), "fp4", False),
])
def test_qlora_bitsandbytes_config(q: QuantizationSpec, kind: str, double: bool) -> None:
    import torch

    c = bnb_config(q, "bf16")
    assert c.load_in_4bit and not c.load_in_8bit
    assert c.bnb_4bit_quant_type == kind and c.bnb_4bit_use_double_quant is double
    assert c.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config(QuantizationSpec(bits=8), "bf16").load_in_8bit


def test_qlora_on_a_machine_without_gpu_fails_clearly(tmp_path: Path) -> None:
    cfg = parse_config(config_dict(tmp_path, tmp_path / "w", spec={
        "method": "qlora", "quantization": {"bits": 4}, "resources": {"gpus": 1}}))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="method qlora needs a CUDA GPU"):
        load_model(cfg, "bf16", 0, cuda=False, deepspeed=False)


@pytest.mark.parametrize(("spec", "zero"), [
    (DeepSpeedSpec(stage=2), {"stage": 2, "overlap_comm": True}),
    (DeepSpeedSpec(stage=2, offload_optimizer=True),
     {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}),
    (DeepSpeedSpec(stage=3, offload_params=True),
     {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True},
      "stage3_gather_16bit_weights_on_model_save": True}),
    (DeepSpeedSpec(stage=0), {"stage": 0}),
])
def test_deepspeed_config_from_spec(spec: DeepSpeedSpec, zero: dict[str, Any]) -> None:
    ds = deepspeed_config(spec, "bf16")
    for k, v in zero.items():
        assert ds["zero_optimization"][k] == v
    if spec.stage < 3:
        assert "offload_param" not in ds["zero_optimization"]
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    # batch sizes, accumulation and clipping come from TrainingArguments (one source)
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    assert ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"


def test_training_arguments_follow_the_spec(tmp_path: Path) -> None:
    cfg = parse_config(config_dict(tmp_path, tmp_path / "w", spec={
        "training": {"gradientAccumulationSteps": 4, "gradientCheckpointing": True,
                     "maxSteps": 0, "epochs": 2},
        "distributed": {"deepspeed": {"stage": 2}}, "resources": {"gpus": 1}}))
    ds = deepspeed_config(DeepSpeedSpec(stage=2), "bf16")
    kw = training_kwargs(cfg, "bf16", Runtime(cuda=True, bf16_supported=True), tmp_path, True, ds)
    assert kw["bf16"] and not kw["fp16"] and kw["deepspeed"] is ds
    assert kw["gradient_accumulation_steps"] == 4 and kw["activation_checkpointing"]
    assert kw["max_steps"] == -1 and kw["num_train_epochs"] == 2
    assert kw["save_steps"] == 5 and kw["save_total_limit"] is None
    assert kw["eval_strategy"] == "steps" and kw["dataloader_num_workers"] == 0
    assert kw["seed"] == kw["data_seed"] == 7 and not kw["use_cpu"]
    # the real dataclass accepts them on the CPU (without deepspeed)
    from transformers import TrainingArguments

    kw_cpu = training_kwargs(cfg, "fp32", Runtime(cuda=False, bf16_supported=False), tmp_path,
                             False, None)
    args = TrainingArguments(**kw_cpu)
    assert args.gradient_accumulation_steps == 4 and args.use_cpu


def test_heavy_optional_imports_are_lazy() -> None:
    code = ("import sys, finetune_trainer.__main__, finetune_trainer.train, "
            "finetune_trainer.model; "
            "print(sorted(m for m in ('bitsandbytes', 'deepspeed', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=trainer_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    assert "bitsandbytes" not in out.stdout and "deepspeed" not in out.stdout


@pytest.mark.parametrize(("requested", "cuda", "installed", "want", "why"), [
    ("sdpa", False, False, "sdpa", None),
    ("eager", True, True, "eager", None),
    ("flash_attention_2", True, True, "flash_attention_2", None),
    ("flash_attention_2", True, False, "sdpa", "flash-attn package is not installed"),
    ("flash_attention_2", False, True, "sdpa", "no CUDA GPU is visible"),
])
def test_attention_implementation(requested: str, cuda: bool, installed: bool, want: str,
                                  why: str | None) -> None:
    got, note = resolve_attention(requested, cuda, installed)
    assert got == want
    if why is None:
        assert note is None
    else:
        assert note is not None and why in note
        assert note.startswith("spec.training.attnImplementation: ")


def test_attention_option_reaches_the_model(tiny_model: Path, tmp_path: Path) -> None:
    for requested in ("sdpa", "eager"):
        cfg = parse_config(config_dict(tiny_model, tmp_path / "w", spec={
            "training": {"attnImplementation": requested}}))
        model = load_model(cfg, "fp32", 0, cuda=False, deepspeed=False)
        assert model.config._attn_implementation == requested
    assert parse_config(config_dict(tiny_model, tmp_path / "w")).spec.training \
        .attn_implementation == "sdpa", "the default"
    with pytest.raises(ConfigError, match=r"flash_attention_2 needs resources\.gpus >= 1"):
        parse_config(config_dict(tiny_model, tmp_path / "w", spec={
            "training": {"attnImplementation": "flash_attention_2"}}))


def test_logging_steps_default_is_not_every_step(tmp_path: Path) -> None:
    cfg = parse_config(config_dict(tmp_path, tmp_path / "w"))
    assert cfg.spec.training.logging_steps == 10


def test_the_launcher_does_not_import_torch() -> None:
    code = ("import sys, finetune_trainer.launch; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=trainer_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]
