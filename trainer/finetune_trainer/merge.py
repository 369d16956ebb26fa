"""Merge the trained adapter into its base model so that ``output/merged`` can be served as is.

Where: on the GPU when one is visible and the base model fits in its free memory, else on the
CPU. The CPU merge needs the whole base model in memory, so ``check_merge_memory`` runs right
after the model is loaded, before any training: a pod whose memory limit cannot hold the merge
fails at once with exit 2 and a message naming ``spec.resources.memory`` (instead of training
for hours and then being OOM-killed and retried in a loop).

The merged directory holds the model (safetensors), its generation config and the tokenizer the
job trained with, so ``AutoModelForCausalLM.from_pretrained`` + ``AutoTokenizer.from_pretrained``
load it without the base model or the adapter.

Only rank 0 merges; the other ranks are done once the adapter is written and exit.
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.trainer_config import TrainerConfig
from finetune_trainer.config import ConfigError

log = logging.getLogger(__name__)

GIB = 1024**3
# Beyond the weights: the interpreter, torch, the adapter and allocator slack.
CPU_OVERHEAD_BYTES = int(1.5 * GIB)
GPU_OVERHEAD_FRACTION = 0.10
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class MergePlan:
    device: str  # "cuda:<n>" or "cpu"
    precision: str
    need_bytes: int
    why: str


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def plan_merge(params: int, precision: str, gpu_free: int | None, gpu_index: int,
               cpu_available: int | None) -> MergePlan:
    """Pure: where to merge a base of ``params`` parameters in ``precision``.

    ``gpu_free`` is the free memory of this rank's GPU at merge time (None without a GPU);
    ``cpu_available`` what the pod may still allocate (None when unknown). Raises ConfigError
    when neither can hold the base model.
    """
    weights = params * DTYPE_BYTES[precision]
    gpu_need = math.ceil(weights * (1 + GPU_OVERHEAD_FRACTION))
    if gpu_free is not None and gpu_free >= gpu_need:
        return MergePlan(f"cuda:{gpu_index}", precision, gpu_need,
                         f"on GPU {gpu_index} ({gib(gpu_need)} of {gib(gpu_free)} free)")
    cpu_need = weights + CPU_OVERHEAD_BYTES
    if cpu_available is None or cpu_available >= cpu_need:
        where = "" if gpu_free is None else f" (GPU {gpu_index} has {gib(gpu_free)} free)"
        return MergePlan("cpu", precision, cpu_need, f"on the CPU{where}")
    gpu_part = "" if gpu_free is None else (
        f" and GPU {gpu_index} has {gib(gpu_free)} free, less than the {gib(gpu_need)} needed")
    short_gi = math.ceil((cpu_need - cpu_available) / GIB)
    raise ConfigError(
        f"spec.output.mergeAdapter: merging the adapter needs the {params / 1e9:.2f}B-parameter "
        f"base model in {precision} ({gib(weights)}) plus {gib(CPU_OVERHEAD_BYTES)} of working "
        f"memory on the CPU, but this pod can allocate only {gib(cpu_available)}{gpu_part}; "
        f"raise spec.resources.memory by at least {short_gi}Gi, or "
        "set output.mergeAdapter: false and merge the adapter (output/adapter) elsewhere")


def count_parameters(model: Any) -> int:
    """Parameters of the unquantized base (4-bit packed and ZeRO-3 partitioned ones counted
    at their full size; LoRA weights excluded)."""
    total = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        qs = getattr(p, "quant_state", None)
        if getattr(p, "ds_numel", None):
            total += int(p.ds_numel)
        elif qs is not None and getattr(qs, "shape", None) is not None:
            total += math.prod(qs.shape)
        else:
            total += p.numel()
    return total


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cpu_available_bytes() -> int | None:
    """What this pod may still allocate: the cgroup limit minus its usage, or MemAvailable."""
    limit = _read_int("/sys/fs/cgroup/memory.max") or _read_int(
        "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    used = _read_int("/sys/fs/cgroup/memory.current") or _read_int(
        "/sys/fs/cgroup/memory/memory.usage_in_bytes")
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if limit is not None and used is not None and limit < (1 << 60):
        cg = max(0, limit - used)
        return min(cg, avail) if avail is not None else cg
    return avail


def gpu_free_bytes(index: int) -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(index)
    return int(free)


def merge_precision(training_precision: str, cuda: bool) -> str:
    """The dtype of the merged model: the training precision on GPUs, fp32 on the CPU."""
    return training_precision if cuda else "fp32"


def check_merge_memory(cfg: TrainerConfig, model: Any, precision: str, cuda: bool,
                       local_rank: int, training_bytes_on_cpu: int = 0) -> MergePlan | None:
    """Fail before training when the merge could not fit anywhere (ConfigError, exit 2).

    At merge time the training model is gone: on a GPU job the merge gets the whole GPU (its
    total memory counts), on a CPU job the memory the training model holds now
    (``training_bytes_on_cpu``) is freed first.
    """
    if not cfg.spec.output.merge_adapter or cfg.spec.method == "full":
        return None
    gpu_total = None
    if cuda:
        import torch

        gpu_total = int(torch.cuda.get_device_properties(local_rank).total_memory)
    avail = cpu_available_bytes()
    if avail is not None:
        avail += training_bytes_on_cpu
    plan = plan_merge(count_parameters(model), precision, gpu_total, local_rank, avail)
    log.info("merge plan: %s, %s needed", plan.why, gib(plan.need_bytes))
    return plan


def free_accelerator_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def merge_and_save(cfg: TrainerConfig, adapter_dir: Path, out_dir: Path, precision: str,
                   local_rank: int, tokenizer: Any) -> MergePlan:
    """Load the unquantized base where it fits, merge the adapter, save model + tokenizer +
    generation config into ``out_dir`` (the caller seals it)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune_trainer.model import model_location, torch_dtype

    free_accelerator_memory()
    where, kw = model_location(cfg)
    params = _base_parameters(where, kw)
    plan = plan_merge(params, precision, gpu_free_bytes(local_rank), local_rank,
                      cpu_available_bytes())
    log.info("merging the adapter %s (%s)", plan.why, precision)
    kw["dtype"] = torch_dtype(precision)
    kw["device_map"] = {"": plan.device}
    base = AutoModelForCausalLM.from_pretrained(where, **kw)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    if merged.generation_config is not None and not (out_dir / "generation_config.json").exists():
        merged.generation_config.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    del merged, base
    free_accelerator_memory()
    return plan


def _base_parameters(where: str, kw: dict[str, Any]) -> int:
    """Parameter count of the base from its config, without loading weights (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_kw = {k: v for k, v in kw.items() if k in ("revision", "token", "cache_dir",
                                                   "local_files_only")}
    config = AutoConfig.from_pretrained(where, **cfg_kw)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in m.parameters())
    del m
    return int(n)
