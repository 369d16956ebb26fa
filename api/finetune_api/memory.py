"""GPU memory estimate of a FineTuneJob: the peak bytes one GPU holds while it trains.

Pure: the job's spec and the model's shape (its ``config.json``, or the bounded summary
``spec.model.config``) in, a breakdown in bytes out. The operator (status, ``kubectl finetune
describe``), the plugin and the trainer (its own memory cap, ``resources.gpuMemory: auto``) use
the same function, so they always agree. docs/scheduling.md states the formula and compares it
with published figures.

The formula, per GPU (N = GPUs of the whole job; ZeRO shards over N):

* weights: parameters x bytes each. lora: the frozen base in the compute precision
  (bf16/fp16 2 B, fp32 4 B); qlora: 4-bit ~0.52 B (nf4/fp4 with double quantization; 0.56 B
  without) or 8-bit ~1.03 B for the transformer blocks' linear layers, while embeddings, the
  output head and norms are cast to fp32 by PEFT's k-bit preparation; full: fp32 master weights
  (4 B; the trainer loads full fine-tunes in fp32) plus, under bf16/fp16 autocast, the 16-bit
  copies autocast keeps for the backward pass (2 B). ZeRO-3 divides by N (plus two gathered
  layers); offloaded parameters leave only those gathered layers.
* trainable: the LoRA adapters (fp32, r x (d_in + d_out) per adapted linear layer), or every
  parameter (full).
* gradients: trainable x 4 B (2 B for 16-bit DeepSpeed); / N from ZeRO-2; plain multi-GPU
  data parallelism adds DDP's bucket copy (x2).
* optimizer: AdamW, two fp32 states per trainable parameter (8 B), plus the fp32 master copy
  DeepSpeed keeps for 16-bit training (4 B); / N from ZeRO-1; 0 when offloaded to the CPU.
* activations: per layer and token, the tensors autograd saves (inputs of the norms, q/k/v,
  attention output, the MLP's gate/up/act outputs, LoRA's dropout copies) in the compute dtype,
  plus the attention matrix a x s x s for eager attention; gradient checkpointing keeps only each
  layer's input plus one layer recomputed; plus the logits (compute dtype + fp32 upcast + fp32
  gradient) of the batch. x batchSize x cutoffLen.
* overhead: the CUDA context and kernels (1 GiB) plus 5 % allocator fragmentation.
* margin: 10 % of everything above.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import GpuMemoryStatus

GiB: Final = 2**30
# The exit cause of a trainer that ran out of CUDA memory within resources.gpuMemory (its
# termination message's "cause"; docs/contracts.md).
GPU_MEMORY_EXCEEDED: Final = "GPUMemoryExceeded"
CUDA_CONTEXT_BYTES: Final = 1 * GiB
FRAGMENTATION: Final = 0.05
SAFETY_MARGIN: Final = 0.10
# A single GPU holds at most this; an estimate above it means the spec or config is absurd.
MAX_ESTIMATE_BYTES: Final = 2**50  # 1 PiB

# Bounds of every config value (the largest published models are well inside them).
MAX_HIDDEN: Final = 65536
MAX_LAYERS: Final = 1024
MAX_INTERMEDIATE: Final = 1_048_576
MAX_VOCAB: Final = 4_194_304
MAX_HEADS: Final = 1024
MAX_PARAMETERS: Final = 10**13  # 10 T

# Architectures whose MLP has two matrices (up, down) instead of three (gate, up, down).
_TWO_MATRIX_MLP: Final = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "falcon", "phi", "bloom",
                                    "gpt_bigcode", "starcoder2", "mpt"})
# Config keys by role: the usual name first, then other architectures' names.
_KEYS: Final = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"),
    "vocab_size": ("vocab_size",),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads"),
    "num_key_value_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv",
                            "multi_query_group_num"),
}


class EstimateError(ValueError):
    """The spec or the model config cannot be estimated (missing or absurd values)."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model's config (every value bounded)."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False
    gated_mlp: bool = True
    parameters: int | None = None  # explicit total (e.g. mixture of experts); else computed

    @property
    def kv_dim(self) -> int:
        return self.hidden_size * self.num_key_value_heads // self.num_attention_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer of one transformer block, by its usual name."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        out = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
               "up_proj": (h, i), "down_proj": (i, h)}
        if self.gated_mlp:
            out["gate_proj"] = (h, i)
        return out

    def block_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden_size

    def embedding_parameters(self) -> int:
        """Input embeddings plus the output head (once when tied) and the final norm."""
        emb = self.vocab_size * self.hidden_size
        return emb * (1 if self.tie_word_embeddings else 2) + self.hidden_size

    def total_parameters(self) -> int:
        if self.parameters is not None:
            return self.parameters
        return self.num_hidden_layers * self.block_parameters() + self.embedding_parameters()


def _bounded_int(value: Any, what: str, high: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EstimateError(f"model config: {what} must be a whole number, got "
                            f"{type(value).__name__}")
    if not low <= value <= high:
        raise EstimateError(f"model config: {what}={value} is outside {low}..{high}; check the "
                            "model's config.json (or spec.model.config)")
    return value


def _pick(cfg: Mapping[str, Any], role: str) -> Any:
    for key in _KEYS[role]:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def shape_from_config(cfg: Mapping[str, Any]) -> ModelShape:
    """A model's shape from its ``config.json`` (Hugging Face names, snake_case) or from
    ``spec.model.config`` (the same names in camelCase). Raises :class:`EstimateError` naming
    the missing or out-of-range key."""
    flat = {_snake(k): v for k, v in cfg.items()}
    text = flat.get("text_config")  # multimodal configs keep the language model's here
    if isinstance(text, Mapping) and _pick(flat, "hidden_size") is None:
        flat = {**{_snake(k): v for k, v in text.items()},
                "tie_word_embeddings": flat.get("tie_word_embeddings")}
    values: dict[str, int] = {}
    highs = {"hidden_size": MAX_HIDDEN, "num_hidden_layers": MAX_LAYERS,
             "intermediate_size": MAX_INTERMEDIATE, "vocab_size": MAX_VOCAB,
             "num_attention_heads": MAX_HEADS}
    for role, high in highs.items():
        raw = _pick(flat, role)
        if raw is None and role == "intermediate_size" and _pick(flat, "hidden_size") is not None:
            raw = 4 * _bounded_int(_pick(flat, "hidden_size"), "hidden_size", MAX_HIDDEN)
        if raw is None:
            raise EstimateError(f"model config: {role} is missing (looked for "
                                f"{', '.join(_KEYS[role])}); give spec.model.config")
        values[role] = _bounded_int(raw, role, high)
    kv_raw = _pick(flat, "num_key_value_heads")
    kv = values["num_attention_heads"] if kv_raw is None else _bounded_int(
        kv_raw, "num_key_value_heads", values["num_attention_heads"])
    if values["hidden_size"] % values["num_attention_heads"]:
        raise EstimateError(f"model config: hidden_size={values['hidden_size']} is not a multiple "
                            f"of num_attention_heads={values['num_attention_heads']}")
    params_raw = flat.get("parameters")
    params = None if params_raw is None else _bounded_int(params_raw, "parameters",
                                                          MAX_PARAMETERS)
    tie = flat.get("tie_word_embeddings")
    model_type = flat.get("model_type")
    gated = flat.get("gated_mlp")
    if not isinstance(gated, bool):
        gated = not (isinstance(model_type, str) and model_type in _TWO_MATRIX_MLP)
    return ModelShape(num_key_value_heads=kv, tie_word_embeddings=tie is True, gated_mlp=gated,
                      parameters=params, **values)


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


@dataclass(frozen=True)
class Estimate:
    """Peak bytes per GPU, by part. ``total`` is what a memory share must hold."""

    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    margin: int
    gpus: int
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.activations
                + self.overhead + self.margin)

    def breakdown(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations,
                "overhead": self.overhead, "margin": self.margin, "total": self.total}


def lora_trainable(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """Adapter parameters: r x (d_in + d_out) for each adapted linear layer of each block.
    ``all-linear`` adapts every one; a name this estimate does not know (another architecture's
    naming) is counted as the largest layer of a block, so the estimate errs high."""
    shapes = shape.linear_shapes()
    largest = max(shapes.values(), key=lambda s: s[0] + s[1])
    chosen: dict[str, tuple[int, int]] = {}
    for t in targets:
        if t == "all-linear":
            chosen.update(shapes)
        else:
            leaf = t.rsplit(".", 1)[-1]
            chosen[leaf] = shapes.get(leaf, largest)
    per_block = sum(rank * (a + b) for a, b in chosen.values())
    return per_block * shape.num_hidden_layers


def _adapted_inputs(shape: ModelShape, targets: list[str]) -> int:
    """Sum of d_in over the adapted layers of one block (LoRA dropout saves a copy of each)."""
    shapes = shape.linear_shapes()
    largest = max(a for a, _ in shapes.values())
    names: set[str] = set()
    extra = 0
    for t in targets:
        if t == "all-linear":
            names.update(shapes)
        else:
            leaf = t.rsplit(".", 1)[-1]
            if leaf in shapes:
                names.add(leaf)
            else:
                extra += largest
    return sum(shapes[n][0] for n in names) + extra


def estimate(spec: FineTuneJobSpec, shape: ModelShape) -> Estimate:
    """The peak GPU memory of one of the job's GPUs (see the module doc for the formula).

    Raises :class:`EstimateError` for a CPU job or an estimate beyond any GPU (1 PiB)."""
    res = spec.resources
    if res.gpus == 0:
        raise EstimateError("resources.gpus is 0: a CPU job uses no GPU memory")
    t, n = spec.training, res.total_gpus
    method = spec.method
    ds = spec.distributed.deepspeed if spec.distributed else None
    stage = ds.stage if ds else 0
    e = 4 if t.precision == "fp32" else 2  # compute dtype bytes
    h, layers = shape.hidden_size, shape.num_hidden_layers
    params = shape.total_parameters()
    notes: list[str] = []

    # ---- weights and what trains
    lora = spec.lora_or_default()
    if method == "full":
        trainable = params
        # DeepSpeed keeps 16-bit (or fp32) parameters on the GPU; else fp32 weights plus the
        # 16-bit copies autocast keeps for the backward pass
        weights_b = e * params if ds is not None else 4 * params + (4 - e) * params
    else:
        assert lora is not None
        trainable = lora_trainable(shape, lora.rank, lora.target_modules)
        if method == "qlora":
            q = spec.quantization
            assert q is not None
            emb = shape.embedding_parameters() if shape.parameters is None else min(
                params, shape.embedding_parameters())
            body = max(0, params - emb)
            per = 1.03 if q.bits == 8 else (0.516 if q.double_quant else 0.5625)
            weights_b = int(body * per) + 4 * emb  # k-bit preparation casts the rest to fp32
        else:
            weights_b = e * params
        weights_b += 4 * trainable  # the adapters train in fp32
    if stage == 3:
        gathered = 2 * (params // max(1, layers)) * e  # two layers gathered at a time
        weights_b = (0 if ds and ds.offload_params else weights_b // n) + gathered
        if ds and ds.offload_params:
            notes.append("parameters offloaded to CPU memory")

    # ---- gradients and optimizer
    grad_bytes = 2 if (ds is not None and method == "full" and e == 2) else 4
    grads = trainable * grad_bytes
    if stage >= 2:
        grads //= n
    elif ds is None and n > 1:
        grads *= 2  # DDP's gradient buckets are a second copy
        notes.append("data parallelism without ZeRO: each GPU holds every gradient twice")
    master = 4 if (ds is not None and method == "full" and e == 2) else 0
    optim = trainable * (8 + master)
    if stage >= 1:
        optim //= n
    if ds is not None and ds.offload_optimizer:
        optim = 0
        notes.append("optimizer states offloaded to CPU memory")

    # ---- activations
    b, s = t.batch_size, spec.dataset.cutoff_len
    tokens = b * s
    kv = shape.kv_dim
    i_size = shape.intermediate_size
    mlp = (3 if shape.gated_mlp else 2) * i_size
    per_layer_tok = e * (5 * h + 2 * kv + mlp)  # norms x2, q/k/v, attn out, MLP, residuals
    if method != "full" and lora is not None and lora.dropout > 0:
        per_layer_tok += (e + 1) * _adapted_inputs(shape, lora.target_modules)
    eager = t.attn_implementation == "eager"
    attn_matrix = (e + 1) * shape.num_attention_heads * s * s * b if eager else 0
    if t.gradient_checkpointing:
        acts = layers * e * h * tokens + per_layer_tok * tokens + attn_matrix
    else:
        acts = layers * (per_layer_tok * tokens + attn_matrix)
    acts += tokens * shape.vocab_size * (e + 8)  # logits, fp32 upcast, its gradient

    subtotal = weights_b + grads + optim + acts
    overhead = CUDA_CONTEXT_BYTES + int(subtotal * FRAGMENTATION)
    margin = int((subtotal + overhead) * SAFETY_MARGIN)
    out = Estimate(parameters=params, trainable=trainable, weights=int(weights_b),
                   gradients=int(grads), optimizer=int(optim), activations=int(acts),
                   overhead=overhead, margin=margin, gpus=n, notes=tuple(notes))
    if out.total > MAX_ESTIMATE_BYTES:
        raise EstimateError(
            f"the estimate is {out.total / 2**40:.0f} TiB per GPU, beyond any GPU: lower "
            "training.batchSize or dataset.cutoffLen, enable training.gradientCheckpointing, or "
            "check spec.model.config")
    return out


def estimate_from_config(spec: FineTuneJobSpec, cfg: Mapping[str, Any]) -> Estimate:
    return estimate(spec, shape_from_config(cfg))


def spec_shape(spec: FineTuneJobSpec) -> ModelShape | None:
    """The shape ``spec.model.config`` gives, or None when the spec has none."""
    summary = spec.model.config
    if summary is None:
        return None
    return shape_from_config(summary.model_dump(exclude_none=True))


def share_bytes(spec: FineTuneJobSpec, est: Estimate | None) -> int | None:
    """The job's GPU memory share per GPU: ``resources.gpuMemory`` in bytes, the estimate for
    ``auto`` (None when there is none yet), None when the job takes whole GPUs."""
    raw = spec.resources.gpu_memory
    if raw is None:
        return None
    if raw == "auto":
        return None if est is None else est.total
    from finetune_api.quantity import quantity

    return int(quantity(raw))


# the trainer's environment variable with the bytes of the GPU share its attempt holds (set by
# the operator when the share differs from the spec's, e.g. raised after GPUMemoryExceeded)
SHARE_ENV = "FINETUNE_GPU_MEMORY_SHARE"
MAX_RAISES = 3  # a share raised after GPUMemoryExceeded at most this often, x1.5 each time


def requested_share(spec: FineTuneJobSpec, status: GpuMemoryStatus | None) -> int | None:
    """The GPU memory share (bytes) the job's next attempt asks: the raised request after an
    attempt ran out of memory, else ``resources.gpuMemory`` (the estimate for ``auto``); None
    when the job takes whole GPUs (no gpuMemory, or auto with no estimate yet)."""
    if spec.resources.gpu_memory is None:
        return None
    if status is not None and status.request:
        return status.request
    if spec.resources.gpu_memory == "auto":
        return status.per_gpu if status is not None and status.per_gpu > 0 else None
    return share_bytes(spec, None)


def raised_share(share: int, raises: int) -> int | None:
    """The next share after an attempt ran out of memory within ``share``: x1.5, rounded up
    to a whole GiB; None once it was raised ``MAX_RAISES`` times (then it is a failure)."""
    if raises >= MAX_RAISES:
        return None
    return -(-(share * 3) // (2 * GiB)) * GiB


def gib(n: int) -> str:
    """Bytes as GiB with one decimal, for messages and tables."""
    return f"{n / GiB:.1f} GiB"


def status_of(est: Estimate, source: Literal["spec", "trainer"],
              share: int | None = None) -> GpuMemoryStatus:
    """The estimate as ``status.gpuMemory``."""
    return GpuMemoryStatus(
        per_gpu=est.total, weights=est.weights, gradients=est.gradients,
        optimizer=est.optimizer, activations=est.activations, overhead=est.overhead,
        margin=est.margin, parameters=est.parameters, trainable=est.trainable, share=share,
        source=source)


def spec_status(spec: FineTuneJobSpec) -> GpuMemoryStatus | None:
    """``status.gpuMemory`` from the spec alone: None for a CPU job or without
    ``spec.model.config`` (the trainer reports it then); a message when it cannot estimate."""
    if spec.resources.gpus == 0:
        return None
    try:
        shape = spec_shape(spec)
        if shape is None:
            return None
        est = estimate(spec, shape)
        return status_of(est, "spec", share_bytes(spec, est))
    except EstimateError as e:
        return GpuMemoryStatus(message=str(e)[:512])
