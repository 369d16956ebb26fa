"""The command line of ``python -m finetune_server`` and its translation to ``vllm serve``
(pure: no torch, no vLLM)."""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from . import fetch

RUNTIMES = ("auto", "vllm", "transformers")
# vLLM refuses runtime LoRA loading unless this is set (its /v1/load_lora_adapter).
VLLM_RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str


@dataclass(frozen=True)
class Config:
    model: str
    served_model_name: str
    adapters: tuple[Adapter, ...] = ()
    host: str = "0.0.0.0"
    port: int = 8000
    max_loras: int = 4
    max_lora_rank: int = 16
    max_model_len: int | None = None
    runtime: str = "auto"
    dtype: str = "auto"
    s3_endpoint: str | None = None
    s3_region: str = fetch.DEFAULT_REGION
    s3_download_dir: str = fetch.DEFAULT_DOWNLOAD_DIR
    extra_vllm_args: tuple[str, ...] = field(default_factory=tuple)


def parse_adapter(text: str) -> Adapter:
    """``NAME=PATH`` (vLLM's ``--lora-modules`` form)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(
            f"--adapter {text!r} is not NAME=PATH: give the adapter's name (the request's "
            "`model` field) and its directory, e.g. --adapter support=/models/support/adapter")
    return Adapter(name.strip(), path.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m finetune_server",
        description="An OpenAI-compatible server for one base model and its LoRA adapters "
                    "(vLLM on GPUs, transformers + peft on the CPU).")
    p.add_argument("--model", required=True,
                   help="the base model: a directory, a Hugging Face Hub repository id, or "
                        "s3://BUCKET/PREFIX (downloaded at start into --s3-download-dir; "
                        "credentials from the environment: FINETUNE_S3_MODEL_AWS_ACCESS_KEY_ID, "
                        "FINETUNE_S3_MODEL_AWS_SECRET_ACCESS_KEY, optionally "
                        "FINETUNE_S3_MODEL_AWS_SESSION_TOKEN; else the standard AWS chain)")
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="with --model s3://...: an S3-compatible store, scheme://host[:port] "
                        "(default: AWS S3)")
    p.add_argument("--s3-region", default=fetch.DEFAULT_REGION,
                   help=f"with --model s3://...: the bucket's region (default "
                        f"{fetch.DEFAULT_REGION})")
    p.add_argument("--s3-download-dir", default=fetch.DEFAULT_DOWNLOAD_DIR, metavar="DIR",
                   help=f"with --model s3://...: where the model is downloaded (default "
                        f"{fetch.DEFAULT_DOWNLOAD_DIR})")
    p.add_argument("--served-model-name", default=None,
                   help="the base model's name in requests and /v1/models (default: --model "
                        "as given, like vLLM)")
    p.add_argument("--adapter", action="append", type=parse_adapter, default=[],
                   metavar="NAME=PATH", help="a LoRA adapter to load at start (repeatable)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-loras", type=int, default=4,
                   help="the most adapters loaded at once (vLLM: per batch)")
    p.add_argument("--max-lora-rank", type=int, default=16,
                   help="the largest LoRA rank an adapter may have")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="prompt + completion tokens at most (default: the model's own limit)")
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="vllm, transformers, or auto: vllm where it is installed")
    p.add_argument("--dtype", default="auto",
                   help="weights' dtype: auto (the model's own; float32 on the CPU), float32, "
                        "bfloat16, float16")
    return p


def parse(argv: list[str] | None = None) -> Config:
    p = parser()
    ns, extra = p.parse_known_args(argv)
    if ns.runtime != "vllm" and extra:
        p.error(f"unrecognized arguments: {' '.join(extra)} (only --runtime vllm passes "
                "further arguments on to vllm serve)")
    names = [a.name for a in ns.adapter]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        p.error(f"--adapter names must be unique; given twice: {', '.join(dup)}")
    if fetch.is_s3(ns.model):
        try:
            fetch.parse_uri(ns.model, ns.s3_endpoint, ns.s3_region)
        except ValueError as e:
            p.error(str(e))
    else:
        given = [f for f, v, default in (
            ("--s3-endpoint", ns.s3_endpoint, None),
            ("--s3-region", ns.s3_region, fetch.DEFAULT_REGION),
            ("--s3-download-dir", ns.s3_download_dir, fetch.DEFAULT_DOWNLOAD_DIR)) if v != default]
        if given:
            p.error(f"{', '.join(given)} only apply to --model s3://BUCKET/PREFIX")
    served = ns.served_model_name or ns.model
    if served in names:
        p.error(f"--adapter {served} has the base model's name: rename the adapter")
    if ns.max_loras < 1:
        p.error("--max-loras must be at least 1")
    if len(names) > ns.max_loras:
        p.error(f"{len(names)} adapters given but --max-loras is {ns.max_loras}: raise it")
    return Config(model=ns.model, served_model_name=served, adapters=tuple(ns.adapter),
                  host=ns.host, port=ns.port, max_loras=ns.max_loras,
                  max_lora_rank=ns.max_lora_rank, max_model_len=ns.max_model_len,
                  runtime=ns.runtime, dtype=ns.dtype, s3_endpoint=ns.s3_endpoint,
                  s3_region=ns.s3_region, s3_download_dir=ns.s3_download_dir,
                  extra_vllm_args=tuple(extra))


def resolve_runtime(cfg: Config) -> str:
    """``auto`` is vllm where the vllm package is installed (the server image), else
    transformers."""
    if cfg.runtime != "auto":
        return cfg.runtime
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def vllm_command(cfg: Config, python: str) -> tuple[list[str], dict[str, str]]:
    """The ``vllm serve`` process for ``cfg``: argv and the environment to add. LoRA is always
    enabled (an adapter may be loaded at run time into a server started with none)."""
    argv = [python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", cfg.model, "--served-model-name", cfg.served_model_name,
            "--host", cfg.host, "--port", str(cfg.port), "--dtype", cfg.dtype,
            "--enable-lora", "--max-loras", str(cfg.max_loras),
            "--max-lora-rank", str(cfg.max_lora_rank)]
    if cfg.max_model_len is not None:
        argv += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.adapters:
        argv += ["--lora-modules", *(f"{a.name}={a.path}" for a in cfg.adapters)]
    argv += list(cfg.extra_vllm_args)
    return argv, {VLLM_RUNTIME_LORA_ENV: "True"}


def adapter_problem(path: str) -> str | None:
    """Why ``path`` is not a PEFT adapter directory (before any weights are read), or None."""
    p = Path(path)
    if not p.exists():
        return f"{path} does not exist"
    if not p.is_dir():
        return f"{path} is not a directory"
    if not (p / "adapter_config.json").is_file():
        return (f"{path} has no adapter_config.json (a PEFT adapter directory is what the "
                "trainer writes to output/adapter)")
    return None
