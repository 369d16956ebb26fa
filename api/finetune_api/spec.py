"""FineTuneJob spec: the user-facing contract of ../shared/design/api.md (field names fixed).

These models are the single source of the CRD (crds/ is generated from them) and of the
trainer's config. Validation that the API server can do is expressed as schema constraints or
CEL rules (``x-kubernetes-validations``) so bad manifests are rejected at ``kubectl apply``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from finetune_api.base import ApiModel, cel

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
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                      description="a Secret in the job's namespace")
    key: str = Field(min_length=1, max_length=253,
                     description="the key of that Secret that holds the token")


class PvcSource(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(_REL_PATH_RULE))
    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                            description="a PersistentVolumeClaim in the job's namespace, "
                            "mounted read-only")
    path: str = Field(default="", max_length=1024,
                      description="relative to the claim's root, no '..': the model directory "
                      "or the data file (default: the root)")

    @model_validator(mode="after")
    def _relative(self) -> PvcSource:
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError("path must be relative to the volume and must not contain '..'")
        return self


class ConfigMapSource(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                      description="a ConfigMap in the job's namespace (1 MiB at most: small "
                      "datasets only)")
    key: str = Field(min_length=1, max_length=253,
                     description="the key that holds the data file, e.g. train.jsonl")


# Object storage (S3 or an S3-compatible store). Bucket names follow the S3 naming rules:
# 3-63 characters of lower-case letters, digits, dots and hyphens, starting and ending with a
# letter or a digit. Keys: no leading '/', no '..' segment, no control characters.
S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
S3_ENDPOINT = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$"
S3_REGION = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
S3_KEY = r"^[^/\x00-\x1f\x7f]([^\x00-\x1f\x7f]*)$"
S3_VERSION_ID = r"^[A-Za-z0-9._+/=:-]+$"
_S3_KEY_RULE = (
    "!self.{f}.matches('(^|/)[.][.]?(/|$)')",
    "{f} must not contain '.' or '..' segments",
    ".{f}",
)


def _s3_key_rule(f: str) -> tuple[str, str, str]:
    rule, msg, path = _S3_KEY_RULE
    return rule.format(f=f), msg.format(f=f), path.format(f=f)


def _check_key(value: str, what: str) -> None:
    if any(seg in (".", "..") for seg in value.split("/")):
        raise ValueError(f"{what} must not contain '.' or '..' segments")


class S3Location(ApiModel):
    """Where a bucket is and how to reach it (shared by S3 sources and the S3 output)."""

    bucket: str = Field(min_length=3, max_length=63, pattern=S3_BUCKET,
                        description="bucket name (S3 rules: 3-63 lower-case letters, digits, "
                        "dots and hyphens)")
    endpoint: str | None = Field(
        default=None, max_length=2048, pattern=S3_ENDPOINT,
        description="scheme, host and port of an S3-compatible store, e.g. "
        "https://s3.example.com:9000 (path-style requests, no path); default: AWS S3 for the "
        "region")
    region: str = Field(default="us-east-1", min_length=1, max_length=64, pattern=S3_REGION,
                        description="region of the bucket (default us-east-1)")
    credentials_secret: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
        description="a Secret in the job's namespace with the keys AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN), passed to the trainer as "
        "environment variables; default: the pod's own credentials (e.g. a workload identity)")


class ModelS3Source(S3Location):
    model_config = ConfigDict(json_schema_extra=cel(_s3_key_rule("prefix")))
    prefix: str = Field(min_length=1, max_length=1024, pattern=S3_KEY,
                        description="the key prefix of the model directory (save_pretrained "
                        "layout), e.g. base/qwen2.5-0.5b/: every object under it is downloaded")

    @model_validator(mode="after")
    def _key(self) -> ModelS3Source:
        _check_key(self.prefix, "prefix")
        return self


class DatasetS3Source(S3Location):
    model_config = ConfigDict(json_schema_extra=cel(_s3_key_rule("key")))
    key: str = Field(min_length=1, max_length=1024, pattern=S3_KEY,
                     description="the object holding the data file, e.g. data/train.jsonl "
                     "(.jsonl, .json or .parquet)")
    version_id: str | None = Field(
        default=None, min_length=1, max_length=1024, pattern=S3_VERSION_ID,
        description="an object version to read (versioned buckets); default: the current "
        "version, pinned by the first attempt for every later one")

    @model_validator(mode="after")
    def _key(self) -> DatasetS3Source:
        _check_key(self.key, "key")
        return self


class OutputS3(S3Location):
    model_config = ConfigDict(json_schema_extra=cel(_s3_key_rule("prefix")))
    prefix: str = Field(min_length=1, max_length=1024, pattern=S3_KEY,
                        description="key prefix the result is uploaded under: <prefix>/adapter/ "
                        "and <prefix>/merged/, each with a SHA256SUMS manifest")
    merged: bool = Field(
        default=False, description="also upload the merged model (needs output.mergeAdapter "
        "with lora and qlora; method full always uploads its model)")

    @model_validator(mode="after")
    def _key(self) -> OutputS3:
        _check_key(self.prefix, "prefix")
        return self


_HUB_IDS = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "dataset": "yahma/alpaca-cleaned"}


def _hub_repo(what: str) -> Any:
    return Field(min_length=1, max_length=256,
                 description=f"{what} repository id on the Hugging Face Hub, e.g. {_HUB_IDS[what]} "
                 "(the pods download it: they need network access)")


def _hub_token(what: str) -> Any:
    return Field(default=None, description="Secret key holding a Hub access token, for gated or "
                 f"private {what}s (default: anonymous)")


class ModelHubSource(ApiModel):
    repo: str = _hub_repo("model")
    revision: str = Field(default="main", min_length=1, max_length=256,
                          description="branch, tag or commit to download (default main); the "
                          "first attempt pins it to a commit hash for every later one")
    token_secret_ref: SecretKeyRef | None = _hub_token("model")


class DatasetHubSource(ApiModel):
    repo: str = _hub_repo("dataset")
    revision: str = Field(default="main", min_length=1, max_length=256,
                          description="branch, tag or commit to download (default main); the "
                          "first attempt pins it to a commit hash for every later one")
    split: str = Field(default="train", min_length=1, max_length=256,
                       description="the split to read (default train)")
    token_secret_ref: SecretKeyRef | None = _hub_token("dataset")


def _exactly_one(names: list[str], where: str) -> tuple[str, str]:
    rule = " + ".join(f"(has(self.{n}) ? 1 : 0)" for n in names) + " == 1"
    return (rule, f"{where}: exactly one of {', '.join(names)} must be set")


class ModelSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(_exactly_one(["pvc", "hub", "s3"], "model.source")))
    pvc: PvcSource | None = Field(
        default=None, description="a model directory (save_pretrained layout) on a claim")
    hub: ModelHubSource | None = Field(
        default=None, description="a model downloaded from the Hugging Face Hub")
    s3: ModelS3Source | None = Field(
        default=None, description="a model directory in object storage (S3 or compatible), "
        "downloaded once into the job's volume")

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        if sum(x is not None for x in (self.pvc, self.hub, self.s3)) != 1:
            raise ValueError("model.source: exactly one of pvc, hub, s3 must be set")
        return self


class DatasetSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            _exactly_one(["pvc", "configMap", "hub", "s3"], "dataset.source"))
    )
    pvc: PvcSource | None = Field(default=None, description="a data file on a claim")
    config_map: ConfigMapSource | None = Field(
        default=None, description="a data file in a ConfigMap key (1 MiB at most)")
    hub: DatasetHubSource | None = Field(
        default=None, description="a dataset downloaded from the Hugging Face Hub")
    s3: DatasetS3Source | None = Field(
        default=None, description="a data file in object storage (S3 or compatible), "
        "downloaded once into the job's volume")

    @model_validator(mode="after")
    def _one(self) -> DatasetSource:
        if sum(x is not None for x in (self.pvc, self.config_map, self.hub, self.s3)) != 1:
            raise ValueError("dataset.source: exactly one of pvc, configMap, hub, s3 must be set")
        return self


class ModelConfigSummary(ApiModel):
    """The few values of the model's config.json the GPU memory estimate needs (the operator
    cannot read a model on a claim or the Hub; the trainer reads config.json itself)."""

    model_config = ConfigDict(json_schema_extra=cel(
        ("!has(self.numKeyValueHeads) || self.numKeyValueHeads <= self.numAttentionHeads",
         "model.config: numKeyValueHeads must not exceed numAttentionHeads",
         ".numKeyValueHeads"),
        ("self.hiddenSize % self.numAttentionHeads == 0",
         "model.config: hiddenSize must be a multiple of numAttentionHeads", ".hiddenSize"),
    ))
    hidden_size: int = Field(ge=1, le=65536, description="config.json hidden_size")
    num_hidden_layers: int = Field(ge=1, le=1024, description="config.json num_hidden_layers")
    num_attention_heads: int = Field(ge=1, le=1024,
                                     description="config.json num_attention_heads")
    vocab_size: int = Field(ge=1, le=4194304, description="config.json vocab_size")
    intermediate_size: int | None = Field(
        default=None, ge=1, le=1048576,
        description="config.json intermediate_size (default 4 x hiddenSize)")
    num_key_value_heads: int | None = Field(
        default=None, ge=1, le=1024,
        description="config.json num_key_value_heads (default numAttentionHeads)")
    tie_word_embeddings: bool = Field(default=False,
                                      description="config.json tie_word_embeddings")
    gated_mlp: bool = Field(
        default=True, description="the MLP has gate, up and down projections (Llama, Qwen, "
        "Mistral, Gemma: default true); false for two-matrix MLPs (GPT-2, Falcon, Phi)")
    parameters: int | None = Field(
        default=None, ge=1, le=10**13,
        description="total parameter count, when the layers alone undercount it (mixture of "
        "experts); default: computed from the shape")

    @model_validator(mode="after")
    def _heads(self) -> ModelConfigSummary:
        if self.num_key_value_heads is not None and \
                self.num_key_value_heads > self.num_attention_heads:
            raise ValueError("model.config: numKeyValueHeads must not exceed numAttentionHeads")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("model.config: hiddenSize must be a multiple of numAttentionHeads")
        return self


class ModelSpec(ApiModel):
    name: str = Field(min_length=1, max_length=256,
                      description="the base model's name: a Hub id or a label of your own")
    source: ModelSource = Field(
        description="where the weights come from: exactly one of pvc, hub or s3")
    config: ModelConfigSummary | None = Field(
        default=None, description="a summary of the model's config.json: lets the operator "
        "estimate the job's GPU memory before it runs (status.gpuMemory); default: the trainer "
        "estimates it from config.json when it starts")


DatasetFormat = Literal["alpaca", "sharegpt", "messages", "text"]


class DatasetSpec(ApiModel):
    source: DatasetSource = Field(
        description="where the training data comes from: exactly one of pvc, configMap, hub or "
        "s3")
    format: DatasetFormat = Field(
        default="messages", description="record layout of the JSON lines: alpaca "
        "(instruction/input/output), sharegpt (conversations), messages (role/content chat) or "
        "text (plain text); default messages")
    validation_split: float = Field(
        default=0.0, ge=0.0, lt=0.5, description="fraction of the records held out to report "
        "evalLoss, 0 <= x < 0.5 (default 0: none)")
    cutoff_len: int = Field(
        default=2048, ge=8, le=1048576,
        description="maximum tokens per example, 8-1048576 (default 2048); longer ones are "
        "truncated")
    train_on_prompt: bool = Field(
        default=False,
        description="chat formats: also compute the loss on system/user tokens "
        "(default: assistant tokens only)",
    )


Method = Literal["lora", "qlora", "full"]


class LoraSpec(ApiModel):
    rank: int = Field(default=16, ge=1, le=1024,
                      description="rank r of the low-rank update, 1-1024 (default 16)")
    alpha: float = Field(default=32.0, gt=0, le=4096,
                         description="scaling: the update is multiplied by alpha/rank, "
                         "0 < x <= 4096 (default 32)")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0,
                           description="dropout on the adapter's input, 0 <= x < 1 (default 0.05)")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: ["all-linear"], min_length=1, max_length=64,
        description="module names to adapt, e.g. [q_proj, v_proj]; all-linear (default) "
        "adapts every linear layer of the transformer blocks, not the output head",
    )


class QuantizationSpec(ApiModel):
    bits: Literal[4, 8] = Field(
        default=4, description="bits per weight of the frozen base model, 4 or 8 (default 4)")
    type: Literal["nf4", "fp4"] = Field(
        default="nf4", description="4-bit data type: nf4 (default) or fp4")
    double_quant: bool = Field(
        default=True, description="also quantize the quantization constants: a little less "
        "memory (default true)")


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
    epochs: float = Field(default=3.0, ge=0, le=1000,
                          description="passes over the training data, may be fractional, "
                          "0-1000 (default 3); maxSteps > 0 overrides it")
    max_steps: int = Field(default=0, ge=0, le=100_000_000,
                           description="stop after this many optimizer steps (default 0: "
                           "train for epochs)")
    learning_rate: float = Field(default=2.0e-4, gt=0, le=1.0,
                                 description="peak learning rate, 0 < x <= 1 (default 2e-4; "
                                 "full fine-tunes usually want about 1e-5)")
    batch_size: int = Field(default=4, ge=1, le=4096,
                            description="examples per GPU (per process) per micro-batch "
                            "(default 4); the effective batch is batchSize x "
                            "gradientAccumulationSteps x GPUs")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="micro-batches per optimizer step (default 1)")
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
        "constant_with_warmup", "inverse_sqrt",
    ] = Field(default="cosine", description="learning-rate schedule after warmup "
              "(default cosine)")
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0,
                                description="fraction of the total steps spent ramping the "
                                "learning rate up from 0, 0 <= x < 1 (default 0)")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0,
                                description="AdamW weight decay, 0-1 (default 0)")
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1e6,
                                 description="clip gradients to this global L2 norm "
                                 "(default 1.0; 0 = no clipping)")
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        default="bf16", description="compute precision: bf16 (default; GPUs since Ampere, and "
        "CPUs), fp16 (GPUs only) or fp32")
    gradient_checkpointing: bool = Field(
        default=False, description="recompute activations in the backward pass: less GPU "
        "memory, slower steps (default false)")
    packing: bool = Field(
        default=False, description="pack several examples into each cutoffLen-token sequence: "
        "less padding, faster epochs (default false)")
    seed: int = Field(default=42, ge=0, le=2**31 - 1,
                      description="random seed of data order, the validation split and adapter "
                      "initialisation (default 42)")
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
    stage: int = Field(default=2, ge=0, le=3,
                       description="ZeRO stage: 0 off, 1 partitions optimizer states across "
                       "GPUs, 2 also gradients (default), 3 also parameters")
    offload_optimizer: bool = Field(
        default=False, description="keep optimizer states in CPU memory (stage >= 1; default "
        "false)")
    offload_params: bool = Field(
        default=False, description="keep parameters in CPU memory (stage 3 only; default false)")

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
    deepspeed: DeepSpeedSpec | None = Field(
        default=None, description="train with DeepSpeed ZeRO (needs resources.gpus >= 1); "
        "without it several GPUs train with plain data parallelism")


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
    key: str | None = Field(default=None, max_length=317,
                            description="taint key to tolerate; empty only with operator "
                            "Exists (tolerates every taint)")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Equal (default): the taint's value must equal value; "
        "Exists: any value")
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE,
                              description="taint value to match (operator Equal)")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="taint effect to match (default: every effect)")
    toleration_seconds: int | None = Field(
        default=None, ge=0, le=10**9, description="effect NoExecute only: seconds the pod "
        "stays after the taint appears (default: for ever)")

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("toleration value must be empty when operator is Exists")
        if not self.key and self.operator != "Exists":
            raise ValueError("toleration key may be empty only with operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("toleration tolerationSeconds only applies to effect NoExecute")
        return self


# The GPU resource a job that names no resources.gpuResource requests, unless the operator is set
# otherwise (FINETUNE_GPU_RESOURCE, chart value trainer.gpuResource): the one definition of it.
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


# resources.gpuMemory: a memory quantity (Mi/Gi/Ti, M/G/T) or auto; the range is checked below.
GPU_MEMORY = r"^(auto|[0-9]{1,7}(\.[0-9]{1,3})?([MGT]i?))$"
GPU_MEMORY_MIN = 2 * 2**30  # 2 GiB: the CUDA context alone takes about 1
GPU_MEMORY_MAX = 2**40  # 1 TiB: more than any GPU


class ResourcesSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=cel(
        ("!has(self.gpuMemory) || !has(self.gpus) || self.gpus > 0",
         "resources.gpuMemory needs resources.gpus >= 1", ".gpuMemory"),
        ("!has(self.gpuMemory) || self.gpuMemory == 'auto' || "
         "(quantity(self.gpuMemory).compareTo(quantity('2Gi')) >= 0 && "
         "quantity(self.gpuMemory).compareTo(quantity('1Ti')) <= 0)",
         "resources.gpuMemory must be 2Gi-1Ti (the memory one GPU's share must hold) or auto",
         ".gpuMemory"),
    ))
    gpus: int = Field(default=1, ge=0, le=64,
                      description="GPUs per node (per pod), 0-64 (default 1; 0 = a CPU job)")
    nodes: int = Field(default=1, ge=1, le=256,
                       description="pods, one per node, admitted and started together as a "
                       "gang, 1-256 (default 1); more than 1 needs ReadWriteMany checkpoint "
                       "storage")
    gpu_resource: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9._]*[a-z0-9])?$",
        description="extended resource name of the GPU; default from the operator config",
    )
    gpu_memory: str | None = Field(
        default=None, max_length=16, pattern=GPU_MEMORY,
        description="GPU memory this job may use on each of its GPUs, a quantity such as 20Gi "
        "(2Gi-1Ti), or auto: the estimate (status.gpuMemory). The trainer caps its CUDA memory "
        "there and a job that needs more fails with cause GPUMemoryExceeded; default: none, "
        "the job has whole GPUs")
    cpu: str = Field(default="2", max_length=QUANTITY_MAX, pattern=QUANTITY,
                     description="CPU request of each pod, a quantity such as 8 or 500m "
                     "(default 2)")
    memory: str = Field(default="8Gi", max_length=QUANTITY_MAX, pattern=QUANTITY,
                        description="memory request and limit of each pod, a quantity such as "
                        "64Gi (default 8Gi); also the /dev/shm size limit")
    node_selector: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] = Field(
        default_factory=dict, max_length=64,
        description="node labels the pods must match (the chart's policy may restrict the keys)",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64,
        description="taints the pods tolerate; one for the GPU resource is added when gpus > 0")

    @model_validator(mode="after")
    def _gpu_memory(self) -> ResourcesSpec:
        if self.gpu_memory is None:
            return self
        if self.gpus == 0:
            raise ValueError("resources.gpuMemory needs resources.gpus >= 1")
        if self.gpu_memory != "auto":
            from finetune_api.quantity import quantity

            if not GPU_MEMORY_MIN <= quantity(self.gpu_memory) <= GPU_MEMORY_MAX:
                raise ValueError(f"resources.gpuMemory: {self.gpu_memory} is outside 2Gi-1Ti; "
                                 "give the memory one GPU's share must hold, or auto")
        return self

    @property
    def total_gpus(self) -> int:
        """GPUs of the whole job: per node x nodes."""
        return self.gpus * self.nodes


# What happens to the operator-created checkpoint claim (which holds the output) when its job is
# deleted; the names follow a StatefulSet's persistentVolumeClaimRetentionPolicy.whenDeleted.
ClaimRetention = Literal["Retain", "Delete"]


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
            (
                "!has(self.claimName) || !has(self.whenDeleted) || self.whenDeleted == 'Retain'",
                "checkpoint.storage: whenDeleted Delete only applies with size (the operator "
                "never deletes an existing claim)",
            ),
        )
    )
    size: str | None = Field(default=None, max_length=QUANTITY_MAX, pattern=QUANTITY,
                             description="size of a claim the operator creates for the job, "
                             "a quantity such as 20Gi")
    storage_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="storage class of that claim (default: the cluster's default class); "
        "multi-node jobs need one that offers ReadWriteMany")
    claim_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN,
                                   description="an existing claim instead; the job writes "
                                   "under a sub-path of its own")
    when_deleted: ClaimRetention = Field(
        default="Retain",
        description="what happens to the claim the operator created (size) when the job is "
        "deleted (kubectl delete, ttlSecondsAfterFinished, its sweep deleted): Retain (default) "
        "keeps it, with the trained model and checkpoints, until you delete it; Delete removes "
        "it with the job. An existing claim (claimName) is never deleted")

    @model_validator(mode="after")
    def _one(self) -> StorageSpec:
        if (self.size is None) == (self.claim_name is None):
            raise ValueError("checkpoint.storage: set exactly one of size or claimName")
        if self.claim_name is not None and self.storage_class_name is not None:
            raise ValueError("checkpoint.storage: storageClassName only applies with size")
        if self.claim_name is not None and self.when_deleted == "Delete":
            raise ValueError("checkpoint.storage: whenDeleted Delete only applies with size "
                             "(the operator never deletes an existing claim)")
        return self


class CheckpointSpec(ApiModel):
    storage: StorageSpec = Field(
        default_factory=lambda: StorageSpec(size="20Gi"),
        description="where checkpoints and the trained output are written: exactly one of size "
        "or claimName (default size 20Gi)")
    interval_steps: int = Field(default=200, ge=1, le=10_000_000,
                                description="save a checkpoint every N optimizer steps "
                                "(default 200); suspend and preemption also save one")
    keep: int = Field(default=2, ge=1, le=100,
                      description="complete checkpoints kept, 1-100 (default 2); the newest is "
                      "never deleted")


class OutputSpec(ApiModel):
    merge_adapter: bool = Field(
        default=False, description="lora and qlora: also write the base model with the adapter "
        "merged in, output/merged (default false)")
    s3: OutputS3 | None = Field(
        default=None, description="also upload the result to object storage after a successful "
        "run (status.output names the URIs); default: the checkpoint volume only")


class EvalDatasetSpec(ApiModel):
    source: DatasetSource = Field(
        description="where the test data comes from: exactly one of pvc, configMap, hub or s3")
    format: DatasetFormat | None = Field(
        default=None, description="default: the training dataset's format")


class GenerationSpec(ApiModel):
    max_new_tokens: int = Field(default=128, ge=1, le=8192,
                                description="longest generated answer in tokens, 1-8192 "
                                "(default 128)")
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="0 = greedy decoding (deterministic)")


class EvaluationSpec(ApiModel):
    """A held-out test set scored after training (loss and perplexity always; ROUGE-1/2/L,
    BLEU-4 and exact match from generated answers for chat formats)."""

    dataset: EvalDatasetSpec = Field(description="the held-out test set")
    generate: bool = Field(
        default=True, description="also generate answers and score ROUGE/BLEU-4/exact match "
        "(chat formats only; text datasets get loss and perplexity)")
    generation: GenerationSpec = Field(default_factory=GenerationSpec,
                                       description="decoding of the generated answers")
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
    ("!has(self.output) || !has(self.output.s3) || !self.output.s3.merged "
     "|| self.method == 'full' || (has(self.output.mergeAdapter) && self.output.mergeAdapter)",
     "output.s3.merged needs output.mergeAdapter (lora and qlora write no merged model "
     "without it)", ".output.s3.merged"),
)


class FineTuneJobSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=_METHOD_RULES)

    model: ModelSpec = Field(description="the base model to fine-tune")
    dataset: DatasetSpec = Field(description="the training data")
    method: Method = Field(
        default="lora", description="lora (default): train low-rank adapters on a frozen model; "
        "qlora: LoRA on a 4- or 8-bit quantized model (GPUs only); full: update every weight")
    lora: LoraSpec | None = Field(
        default=None, description="adapter settings for lora and qlora (defaults when "
        "omitted); not allowed with method full")
    quantization: QuantizationSpec | None = Field(
        default=None, description="required with method qlora, not allowed otherwise")
    training: TrainingSpec = Field(default_factory=TrainingSpec,
                                   description="hyper-parameters of the training loop")
    distributed: DistributedSpec | None = Field(
        default=None, description="how several GPUs share the model (default: plain data "
        "parallelism)")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec,
                                     description="what each pod requests and where it may run")
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="must be allowed by the operator; default from the operator config",
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec,
                                       description="checkpoint storage and cadence")
    suspend: bool = Field(
        default=False, description="true: save a checkpoint, stop the pods and keep the job; "
        "false again: queue it and resume from the checkpoint (default false)")
    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="failed attempts allowed before the job fails, "
        "0-100 (default 3); preemptions and suspends do not count")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=MAX_SECONDS,
        description="fail the job once it has been admitted this many seconds in all, up to a "
        "year (default: no limit); time queued or suspended does not count")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=MAX_SECONDS,
        description="delete the job (and its pods and ConfigMap) this many seconds after it "
        "finished, 0 = at once (the same meaning as the operator setting); unset = the operator "
        "setting, which keeps finished jobs unless the platform set a time. The output claim "
        "stays unless checkpoint.storage.whenDeleted is Delete")
    image: str | None = Field(
        default=None, max_length=1024, pattern=IMAGE_REFERENCE,
        description="trainer image, a reference like registry.example.com/team/trainer:1.2 "
        "(default from the operator config)")
    output: OutputSpec = Field(default_factory=OutputSpec,
                               description="what the trained result includes")
    evaluation: EvaluationSpec | None = Field(
        default=None, description="a held-out test set scored after training (default: none)")

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
        s3 = self.output.s3
        if s3 is not None and s3.merged and self.method != "full" and not self.output.merge_adapter:
            raise ValueError("output.s3.merged needs output.mergeAdapter (lora and qlora write "
                             "no merged model without it)")
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
