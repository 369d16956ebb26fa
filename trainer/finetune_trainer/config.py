"""Load and validate the trainer config the operator writes (one schema with the CRD).

The schema is ``finetune_api.trainer_config.TrainerConfig``; this module only reads the
YAML, turns pydantic errors into messages naming the field path (``spec.training.learningRate:
...``) and adds the checks that only the trainer can make (environment, local paths).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_api.trainer_config import TrainerConfig

CONFIG_ENV = "FINETUNE_CONFIG"


class ConfigError(Exception):
    """Invalid config or data: not worth retrying (exit code 2). The message names the field."""


def _loc(loc: tuple[int | str, ...]) -> str:
    """The field path as the user wrote it (the wire names are camelCase)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<root>"


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``<source>: spec.training.learningRate: Input should be ...``."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        where = _loc(tuple(e["loc"]))
        got = ""
        if e["type"] not in ("missing", "model_type") and not isinstance(e.get("input"), dict):
            got = f" (got {e.get('input')!r})"
        lines.append(f"{source}: {where}: {msg}{got}")
    return "invalid trainer config:\n  " + "\n  ".join(lines) + (
        "\nfix the FineTuneJob spec (or the config file) and submit it again"
    )


def parse_config(data: Any, source: str = "config") -> TrainerConfig:
    """Validate a mapping into a TrainerConfig; raises ConfigError naming the field paths."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        cfg = TrainerConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    check_trainer_rules(cfg)
    return cfg


def check_trainer_rules(cfg: TrainerConfig) -> None:
    """Rules the CRD cannot express but the trainer needs (each names its field)."""
    ds = cfg.spec.distributed.deepspeed if cfg.spec.distributed else None
    if cfg.spec.quantization is not None and cfg.spec.quantization.bits == 8 and ds is not None:
        raise ConfigError(
            "spec.quantization.bits: 8-bit QLoRA with DeepSpeed is not supported; use bits: 4"
        )
    env_uid = os.environ.get("FINETUNE_JOB_UID")
    if env_uid and cfg.job.uid and env_uid != cfg.job.uid:
        raise ConfigError(
            f"job.uid: the config is for job uid {cfg.job.uid} but FINETUNE_JOB_UID is {env_uid}; "
            "the ConfigMap belongs to another incarnation of the job - recreate the pod"
        )


def load_config(path: str | os.PathLike[str] | None = None) -> TrainerConfig:
    """Read the YAML config from ``path`` or ``$FINETUNE_CONFIG``; raises ConfigError."""
    if path is None:
        path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"no config: pass --config FILE or set {CONFIG_ENV}")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the trainer config ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_config(data, str(p))


@dataclass(frozen=True)
class Runtime:
    """Facts about the process the config is applied to (passed in, so decisions stay pure)."""

    cuda: bool
    bf16_supported: bool
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0


def detect_runtime() -> Runtime:
    import torch

    cuda = torch.cuda.is_available()
    return Runtime(
        cuda=cuda,
        bf16_supported=bool(cuda and torch.cuda.is_bf16_supported()),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def resolve_precision(requested: str, rt: Runtime) -> tuple[str, str | None]:
    """The precision to train in and, when it differs from the request, a log line saying why."""
    if requested == "fp32":
        return "fp32", None
    if not rt.cuda:
        return "fp32", (
            f"spec.training.precision: {requested} requested but no CUDA GPU is visible; "
            "training in fp32 on the CPU"
        )
    if requested == "bf16" and not rt.bf16_supported:
        return "fp16", (
            "spec.training.precision: bf16 requested but this GPU does not support it; using fp16"
        )
    return requested, None
