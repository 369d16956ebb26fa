"""Model, tokenizer, PEFT and quantization construction; DeepSpeed config generation.

Heavy optional packages (bitsandbytes, deepspeed) are imported only when a job asks for them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune_api.spec import DeepSpeedSpec, LoraSpec, QuantizationSpec
from finetune_api.trainer_config import TrainerConfig
from finetune_trainer.config import ConfigError

log = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"
# Linear layers that are heads or routers, not transformer blocks: never adapted by all-linear.
_EXCLUDED_LEAVES = {"lm_head", "score", "classifier", "router"}


def torch_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def read_hub_token(path: str | None) -> str | None:
    """The hub token from the mounted Secret file (never logged)."""
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"hubTokenFile: cannot read {path} ({e.strerror}); check "
                          "spec.model.source.hub.tokenSecretRef") from None
    return token or None


def model_location(cfg: TrainerConfig) -> tuple[str, dict[str, Any]]:
    """(path or repo id, extra from_pretrained kwargs) for the model source."""
    hub = cfg.spec.model.source.hub
    if hub is not None and not cfg.paths.model.startswith("/"):  # else: pinned local snapshot
        return cfg.paths.model, {
            "revision": hub.revision,
            "token": read_hub_token(cfg.hub_token_file),
            "cache_dir": str(Path(cfg.paths.work_dir) / "hub-cache"),
        }
    p = Path(cfg.paths.model)
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"paths.model: {p} has no config.json; check spec.model.source.pvc "
            "(claimName and path must point at a save_pretrained directory)"
        )
    return str(p), {"local_files_only": True}


def load_tokenizer(cfg: TrainerConfig) -> Any:
    from transformers import AutoTokenizer

    where, kw = model_location(cfg)
    tok = AutoTokenizer.from_pretrained(where, **kw)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ConfigError(f"paths.model: the tokenizer at {where} has neither a pad nor an "
                              "eos token; add one to the tokenizer config")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def bnb_config(q: QuantizationSpec, compute_precision: str) -> Any:
    """BitsAndBytesConfig for QLoRA (4-bit nf4/fp4 with double quantization, or 8-bit)."""
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(compute_precision),
        bnb_4bit_quant_storage=torch_dtype(compute_precision),
    )


def require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "method qlora needs bitsandbytes, which is not installed in this image; "
            "use the trainer image (it installs the gpu extra) or method lora"
        ) from e


def resolve_attention(requested: str, cuda: bool, flash_installed: bool) -> tuple[str, str | None]:
    """The attention kernel to load the model with and, when it differs from the request, a
    log line saying why (flash_attention_2 needs a GPU and the flash-attn package)."""
    if requested != "flash_attention_2":
        return requested, None
    if not cuda:
        return "sdpa", ("spec.training.attnImplementation: flash_attention_2 requested but no "
                        "CUDA GPU is visible; using sdpa")
    if not flash_installed:
        return "sdpa", ("spec.training.attnImplementation: flash_attention_2 requested but the "
                        "flash-attn package is not installed in this image; using sdpa (install "
                        "flash-attn in a custom spec.image to use it)")
    return requested, None


def flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def load_model(cfg: TrainerConfig, precision: str, local_rank: int, cuda: bool,
               deepspeed: bool) -> Any:
    """The base model, in the dtype the method needs (full: fp32 master weights + AMP)."""
    from transformers import AutoModelForCausalLM

    where, kw = model_location(cfg)
    method = cfg.spec.method
    kw["dtype"] = torch_dtype("fp32" if method == "full" else precision)
    attn, note = resolve_attention(cfg.spec.training.attn_implementation, cuda,
                                   flash_attn_installed())
    if note:
        log.warning(note)
    kw["attn_implementation"] = attn
    if method == "qlora":
        assert cfg.spec.quantization is not None
        if not cuda:
            raise RuntimeError("method qlora needs a CUDA GPU (bitsandbytes 4-bit) and none is "
                               "visible in this pod; check resources.gpus and the node's driver")
        require_bitsandbytes()
        kw["quantization_config"] = bnb_config(cfg.spec.quantization, precision)
        if not deepspeed:
            kw["device_map"] = {"": local_rank}
    model = AutoModelForCausalLM.from_pretrained(where, **kw)
    model.config.use_cache = False
    return model


def linear_module_names(model: Any) -> list[str]:
    """Full names of the linear-like layers LoRA can adapt, heads and routers excluded."""
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
        linear_types: tuple[type, ...] = (torch.nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        linear_types = (torch.nn.Linear,)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    moe = any(getattr(model.config, k, None) for k in ("num_experts", "num_local_experts"))
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, linear_types) or mod is out_emb:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _EXCLUDED_LEAVES or (moe and leaf == "gate"):
            continue
        names.append(name)
    return names


def resolve_target_modules(model: Any, targets: list[str]) -> list[str]:
    """Module names for LoRA: ``all-linear`` expands by layer type (works for any naming);
    explicit names must match at least one linear layer (by leaf or dotted suffix)."""
    linear = linear_module_names(model)
    if not linear:
        raise ConfigError("spec.lora.targetModules: the model has no linear layers to adapt")
    chosen: set[str] = set()
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
    for i, t in enumerate(targets):
        if t == ALL_LINEAR:
            chosen.update(linear)
            continue
        hits = [n for n in linear if n == t or n.endswith("." + t)]
        if not hits:
            raise ConfigError(
                f"spec.lora.targetModules[{i}]: {t!r} matches no linear layer of this model; "
                f"its linear layers are named {', '.join(leaves)} (or use all-linear)"
            )
        chosen.update(hits)
    return sorted(chosen)


def lora_config(lora: LoraSpec, target_modules: list[str], fan_in_fan_out: bool = False) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        fan_in_fan_out=fan_in_fan_out,
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # a float alpha is fine (scale)
        lora_dropout=lora.dropout,
        target_modules=target_modules,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )


def apply_method(model: Any, cfg: TrainerConfig) -> Any:
    """Wrap the base model for the method: LoRA/QLoRA adapters, or all weights trainable."""
    spec = cfg.spec
    if spec.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = spec.lora_or_default()
    assert lora is not None
    targets = resolve_target_modules(model, lora.target_modules)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in targets})
    log.info("LoRA r=%d alpha=%s on %d layers (%s)", lora.rank, lora.alpha, len(targets),
             ", ".join(leaves))
    # GPT-2 style Conv1D layers store their weight transposed.
    conv1d = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules() if n in targets)
    return get_peft_model(model, lora_config(lora, targets, fan_in_fan_out=conv1d))


def deepspeed_config(ds: DeepSpeedSpec, precision: str) -> dict[str, Any]:
    """A DeepSpeed config for the HF Trainer ("auto" values are filled from TrainingArguments)."""
    zero: dict[str, Any] = {"stage": ds.stage}
    if ds.stage >= 1:
        zero.update(overlap_comm=True, contiguous_gradients=True,
                    reduce_bucket_size="auto")
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
        if ds.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
