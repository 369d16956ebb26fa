"""FineTuneJob spec: the user-facing contract of ../shared/design/api.md (field names fixed).

These models are the single source of the CRD (crds/ is generated from them) and of the
trainer's config. Validation that the API server can do is expressed as schema constraints or
CEL rules (``x-kubernetes-validations``) so bad manifests are rejected at ``kubectl apply``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import ApiModel, cel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
QUANTITY = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A container image reference as the container runtime parses it (distribution/reference):
# [registry[:port]/]path[:tag][@digest], path components lower case.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_COMPONENT = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
IMAGE_REFERENCE = (
    rf"^(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?$"
)
# Upper bound of every duration field of the spec: arithmetic on it cannot overflow.
MAX_SECONDS = 31536000  # one year
# Every string and list of the spec is bounded (maxLength/maxItems): the API server estimates
# the cost of CEL rules from these bounds and rejects a CRD whose rules could cost too much.
QUANTITY_MAX = 64
_REL_PATH_RULE = (
    "!self.path.startsWith('/') && !self.path.matches('(^|/)[.][.](/|$)')",
    "path must be relative to the volume and must not contain '..'",
    ".path",
)


class SecretKeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253)


class PvcSource(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(_REL_PATH_RULE))
    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    path: str = Field(default="", max_length=1024)

    @model_validator(mode="after")
    def _relative(self) -> PvcSource:
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError("path must be relative to the volume and must not contain '..'")
        return self


class ConfigMapSource(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253)


class ModelHubSource(ApiModel):
    repo: str = Field(min_length=1, max_length=256)
    revision: str = Field(default="main", min_length=1, max_length=256)
    token_secret_ref: SecretKeyRef | None = None


class DatasetHubSource(ApiModel):
    repo: str = Field(min_length=1, max_length=256)
    split: str = Field(default="train", min_length=1, max_length=256)
    token_secret_ref: SecretKeyRef | None = None


def _exactly_one(names: list[str], where: str) -> tuple[str, str]:
    rule = " + ".join(f"(has(self.{n}) ? 1 : 0)" for n in names) + " == 1"
    return (rule, f"{where}: exactly one of {', '.join(names)} must be set")


class ModelSource(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(_exactly_one(["pvc", "hub"], "model.source")))
    pvc: PvcSource | None = None
    hub: ModelHubSource | None = None

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        if (self.pvc is None) == (self.hub is None):
            raise ValueError("model.source: exactly one of pvc, hub must be set")
        return self


class DatasetSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(_exactly_one(["pvc", "configMap", "hub"], "dataset.source"))
    )
    pvc: PvcSource | None = None
    config_map: ConfigMapSource | None = None
    hub: DatasetHubSource | None = None

    @model_validator(mode="after")
    def _one(self) -> DatasetSource:
        if sum(x is not None for x in (self.pvc, self.config_map, self.hub)) != 1:
            raise ValueError("dataset.source: exactly one of pvc, configMap, hub must be set")
        return self


class ModelSpec(ApiModel):
    name: str = Field(min_length=1, max_length=256)
    source: ModelSource


DatasetFormat = Literal["alpaca", "sharegpt", "messages", "text"]


class DatasetSpec(ApiModel):
    source: DatasetSource
    format: DatasetFormat = "messages"
    validation_split: float = Field(default=0.0, ge=0.0, lt=0.5)
    cutoff_len: int = Field(default=2048, ge=8, le=1048576)
    train_on_prompt: bool = Field(
        default=False,
        description="chat formats: also compute the loss on system/user tokens "
        "(default: assistant tokens only)",
    )


Method = Literal["lora", "qlora", "full"]


class LoraSpec(ApiModel):
    rank: int = Field(default=16, ge=1, le=1024)
    alpha: float = Field(default=32.0, gt=0, le=4096)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: ["all-linear"], min_length=1, max_length=64
    )


class QuantizationSpec(ApiModel):
    bits: Literal[4, 8] = 4
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class TrainingSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "(has(self.epochs) && self.epochs > 0) "
                "|| (has(self.maxSteps) && self.maxSteps > 0)",
                "training: set epochs > 0 or maxSteps > 0",
            )
        )
    )
    epochs: float = Field(default=3.0, ge=0, le=1000)
    max_steps: int = Field(default=0, ge=0, le=100_000_000)
    learning_rate: float = Field(default=2.0e-4, gt=0, le=1.0)
    batch_size: int = Field(default=4, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt",
    ] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1e6)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    gradient_checkpointing: bool = False
    packing: bool = False
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    logging_steps: int = Field(
        default=10, ge=1, le=100000,
        description="log loss and learning rate every N optimizer steps (each costs a sync)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa",
        description="attention kernel; flash_attention_2 needs GPUs and the flash-attn package "
        "in the trainer image (without it the trainer logs a warning and uses sdpa)")

    @model_validator(mode="after")
    def _length(self) -> TrainingSpec:
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("training: set epochs > 0 or maxSteps > 0")
        return self


class DeepSpeedSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("!self.offloadParams || self.stage == 3",
             "distributed.deepspeed.offloadParams needs stage 3 (ZeRO-3 partitions parameters)",
             ".offloadParams"),
            ("!self.offloadOptimizer || self.stage >= 1",
             "distributed.deepspeed.offloadOptimizer needs stage >= 1", ".offloadOptimizer"),
        )
    )
    stage: int = Field(default=2, ge=0, le=3)
    offload_optimizer: bool = False
    offload_params: bool = False

    @model_validator(mode="after")
    def _offload(self) -> DeepSpeedSpec:
        if self.offload_params and self.stage != 3:
            raise ValueError(
                "distributed.deepspeed.offloadParams needs stage 3 (ZeRO-3 partitions parameters)"
            )
        if self.offload_optimizer and self.stage < 1:
            raise ValueError("distributed.deepspeed.offloadOptimizer needs stage >= 1")
        return self


class DistributedSpec(ApiModel):
    deepspeed: DeepSpeedSpec | None = None


class Toleration(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("!has(self.operator) || self.operator != 'Exists' || !has(self.value) "
             "|| self.value == ''",
             "toleration value must be empty when operator is Exists", ".value"),
            ("has(self.key) && self.key != '' || has(self.operator) && self.operator == 'Exists'",
             "toleration key may be empty only with operator Exists", ".key"),
            ("!has(self.tolerationSeconds) || has(self.effect) && self.effect == 'NoExecute'",
             "toleration tolerationSeconds only applies to effect NoExecute",
             ".tolerationSeconds"),
        )
    )
    key: str | None = Field(default=None, max_length=317)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=10**9)

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("toleration value must be empty when operator is Exists")
        if not self.key and self.operator != "Exists":
            raise ValueError("toleration key may be empty only with operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration tolerationSeconds only applies to effect NoExecute")
        return self


class ResourcesSpec(ApiModel):
    gpus: int = Field(default=1, ge=0, le=64)
    nodes: int = Field(default=1, ge=1, le=256)
    gpu_resource: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9._]*[a-z0-9])?$",
        description="extended resource name of the GPU; default from the operator config",
    )
    cpu: str = Field(default="2", max_length=QUANTITY_MAX, pattern=QUANTITY)
    memory: str = Field(default="8Gi", max_length=QUANTITY_MAX, pattern=QUANTITY)
    node_selector: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] = Field(
        default_factory=dict, max_length=64
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)

    @property
    def total_gpus(self) -> int:
        """GPUs of the whole job: per node x nodes."""
        return self.gpus * self.nodes


class StorageSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.size) != has(self.claimName)",
                "checkpoint.storage: set exactly one of size (the operator creates a PVC) "
                "or claimName (an existing claim)",
            ),
            (
                "!has(self.claimName) || !has(self.storageClassName)",
                "checkpoint.storage: storageClassName only applies with size",
            ),
        )
    )
    size: str | None = Field(default=None, max_length=QUANTITY_MAX, pattern=QUANTITY)
    storage_class_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    claim_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)

    @model_validator(mode="after")
    def _one(self) -> StorageSpec:
        if (self.size is None) == (self.claim_name is None):
            raise ValueError("checkpoint.storage: set exactly one of size or claimName")
        if self.claim_name is not None and self.storage_class_name is not None:
            raise ValueError("checkpoint.storage: storageClassName only applies with size")
        return self


class CheckpointSpec(ApiModel):
    storage: StorageSpec = Field(default_factory=lambda: StorageSpec(size="20Gi"))
    interval_steps: int = Field(default=200, ge=1, le=10_000_000)
    keep: int = Field(default=2, ge=1, le=100)


class OutputSpec(ApiModel):
    merge_adapter: bool = False


class EvalDatasetSpec(ApiModel):
    source: DatasetSource
    format: DatasetFormat | None = Field(
        default=None, description="default: the training dataset's format")


class GenerationSpec(ApiModel):
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="0 = greedy decoding (deterministic)")


class EvaluationSpec(ApiModel):
    """A held-out test set scored after training (loss and perplexity always; ROUGE-1/2/L,
    BLEU-4 and exact match from generated answers for chat formats)."""

    dataset: EvalDatasetSpec
    generate: bool = Field(
        default=True, description="also generate answers and score ROUGE/BLEU-4/exact match "
        "(chat formats only; text datasets get loss and perplexity)")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    max_examples: int = Field(default=200, ge=1, le=100000,
                              description="score at most this many test records (the first N)")


# `resources` and `training` are defaulted by the API server before validation; the has()
# guards keep the rules total anyway (a missing field must not make a rule error out).
_GPUS = "(!has(self.resources) || !has(self.resources.gpus) || self.resources.gpus > 0)"
_METHOD_RULES = cel(
    ("self.method != 'full' || !has(self.lora)", "lora must not be set when method is full",
     ".lora"),
    ("self.method == 'qlora' ? has(self.quantization) : !has(self.quantization)",
     "quantization is required when method is qlora and not allowed otherwise",
     ".quantization"),
    (f"self.method != 'qlora' || {_GPUS}",
     "method qlora needs resources.gpus >= 1 (bitsandbytes 4-bit runs on GPUs)",
     ".resources.gpus"),
    (f"!has(self.distributed) || !has(self.distributed.deepspeed) || {_GPUS}",
     "distributed.deepspeed needs resources.gpus >= 1", ".distributed.deepspeed"),
    ("!has(self.training) || !has(self.training.precision) || self.training.precision != 'fp16'"
     f" || {_GPUS}",
     "training.precision fp16 needs resources.gpus >= 1 (use bf16 or fp32 on CPU)",
     ".training.precision"),
    ("!has(self.training) || !has(self.training.attnImplementation)"
     f" || self.training.attnImplementation != 'flash_attention_2' || {_GPUS}",
     "training.attnImplementation flash_attention_2 needs resources.gpus >= 1 (use sdpa on CPU)",
     ".training.attnImplementation"),
    ("!has(self.output) || !self.output.mergeAdapter || self.method != 'full'",
     "output.mergeAdapter only applies to lora and qlora", ".output.mergeAdapter"),
)


class FineTuneJobSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=_METHOD_RULES)

    model: ModelSpec
    dataset: DatasetSpec
    method: Method = "lora"
    lora: LoraSpec | None = None
    quantization: QuantizationSpec | None = None
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    distributed: DistributedSpec | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="must be allowed by the operator; default from the operator config",
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    suspend: bool = False
    backoff_limit: int = Field(default=3, ge=0, le=100)
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_SECONDS)
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=MAX_SECONDS,
        description="delete the job (and its children) this long after it finished; "
        "default from the operator setting (0 = at once)")
    image: str | None = Field(
        default=None, max_length=1024, pattern=IMAGE_REFERENCE,
        description="trainer image, a reference like registry.example.com/team/trainer:1.2 "
        "(default from the operator config)")
    output: OutputSpec = Field(default_factory=OutputSpec)
    evaluation: EvaluationSpec | None = None

    @model_validator(mode="after")
    def _method(self) -> FineTuneJobSpec:
        if self.method == "full" and self.lora is not None:
            raise ValueError("lora must not be set when method is full")
        if (self.method == "qlora") != (self.quantization is not None):
            raise ValueError(
                "quantization is required when method is qlora and not allowed otherwise"
            )
        if self.resources.gpus == 0:
            if self.method == "qlora":
                raise ValueError(
                    "method qlora needs resources.gpus >= 1 (bitsandbytes 4-bit runs on GPUs)"
                )
            if self.distributed is not None and self.distributed.deepspeed is not None:
                raise ValueError("distributed.deepspeed needs resources.gpus >= 1")
            if self.training.precision == "fp16":
                raise ValueError(
                    "training.precision fp16 needs resources.gpus >= 1 (use bf16 or fp32 on CPU)"
                )
            if self.training.attn_implementation == "flash_attention_2":
                raise ValueError("training.attnImplementation flash_attention_2 needs "
                                 "resources.gpus >= 1 (use sdpa on CPU)")
        if self.output.merge_adapter and self.method == "full":
            raise ValueError("output.mergeAdapter only applies to lora and qlora")
        return self

    def lora_or_default(self) -> LoraSpec | None:
        """The LoRA settings the trainer uses (defaults when lora/qlora has no block)."""
        if self.method == "full":
            return None
        return self.lora or LoraSpec()


# Spec fields a user may change once the job is admitted (status.phase other than Queued or
# Suspended): everything else is frozen by CEL transition rules on the CRD (crd.py), because the
# operator has already planned, or the trainer is already running, on it. suspend is the way to
# stop; activeDeadlineSeconds and backoffLimit are limits the operator compares with status at
# every pass, so a new value only moves the limit; ttlSecondsAfterFinished only matters once the
# job has finished. A new spec field is frozen unless added here.
MUTABLE_AFTER_ADMISSION: tuple[str, ...] = (
    "suspend", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished",
)
# Phases in which the whole spec may still change (no pod exists, nothing was planned on it).
EDITABLE_PHASES: tuple[str, ...] = ("Queued", "Suspended")
