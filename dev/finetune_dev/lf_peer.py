"""LLaMA-Factory as a peer, for side-by-side figures: the trainer benchmark (CPU) and the GPU
check (``gpucheck``). Not used by training.

LLaMA-Factory runs from its own venv (``$LF_VENV``, default
``~/.cache/finetune-operator/llamafactory-0.9.5``: ``python3 -m venv DIR && DIR/bin/pip install
llamafactory==0.9.5``), driven by its own CLI and YAML (``llamafactory-cli train job.yaml``); it
resolves its own transformers, peft and torch. The job is written from the same settings our
trainer gets: the model directory, the data file (registered in a local ``dataset_info.json``),
LoRA rank/alpha/dropout on all linear layers, cutoff, steps, batch, learning rate, scheduler,
warm-up, seed, precision.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VERSION = "0.9.5"
_PROBE = ("import llamafactory, transformers, peft, torch; print("
          "f'llamafactory {llamafactory.__version__}, transformers {transformers.__version__}, "
          "peft {peft.__version__}, torch {torch.__version__}')")


def default_venv() -> Path:
    return Path(os.environ.get(
        "LF_VENV", Path.home() / ".cache" / "finetune-operator" / f"llamafactory-{VERSION}"))


def cli(venv: Path) -> Path:
    return venv / "bin" / "llamafactory-cli"


@functools.cache
def _probe(venv: Path) -> subprocess.CompletedProcess[str]:
    """Import LLaMA-Factory and its stack in the venv once (seconds: torch) and keep the answer."""
    return subprocess.run([str(venv / "bin" / "python"), "-c", _PROBE], capture_output=True,
                          text=True)


def problem(venv: Path) -> str | None:
    """Why LLaMA-Factory cannot run from ``venv``, or None."""
    if not cli(venv).exists():
        return (f"no LLaMA-Factory venv at {venv} (create it: python3 -m venv {venv} && "
                f"{venv}/bin/pip install llamafactory=={VERSION})")
    p = _probe(venv)
    if p.returncode != 0:
        return f"LLaMA-Factory does not import: {p.stderr.strip().splitlines()[-1:]}"
    return None


def versions(venv: Path) -> str:
    """``llamafactory X, transformers Y, peft Z, torch W`` of the venv (after ``problem``)."""
    return _probe(venv).stdout.strip()


@dataclass
class Job:
    """One LoRA SFT job, in the terms both trainers share."""

    model: Path
    data: Path
    data_format: str  # "messages" (sharegpt-style role/content) or "alpaca"
    out: Path
    steps: int
    batch: int
    learning_rate: float
    cutoff: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float = 0.0
    seed: int = 7
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    logging_steps: int = 10
    save_steps: int = 10
    save_total_limit: int = 2
    bf16: bool = False
    use_cpu: bool = False
    template: str = "chatml"


_COLUMNS: dict[str, dict[str, Any]] = {
    "messages": {
        "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"}},
    "alpaca": {"columns": {"prompt": "instruction", "query": "input", "response": "output"}},
}


def write_job(job: Job) -> Path:
    """The job as LLaMA-Factory YAML (beside ``job.out``), its data registered next to it."""
    data_dir = job.out.with_name(job.out.name + "-data")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / job.data.name).write_bytes(job.data.read_bytes())
    (data_dir / "dataset_info.json").write_text(json.dumps(
        {"job": {"file_name": job.data.name, **_COLUMNS[job.data_format]}}))
    spec = {
        "model_name_or_path": str(job.model), "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_rank": job.lora_rank, "lora_alpha": job.lora_alpha,
        "lora_dropout": job.lora_dropout, "lora_target": "all", "dataset": "job",
        "dataset_dir": str(data_dir), "template": job.template, "cutoff_len": job.cutoff,
        "overwrite_cache": True, "dataloader_num_workers": 0, "output_dir": str(job.out),
        "logging_steps": job.logging_steps, "save_steps": job.save_steps,
        "save_total_limit": job.save_total_limit, "plot_loss": False,
        "overwrite_output_dir": True, "report_to": "none",
        "per_device_train_batch_size": job.batch, "gradient_accumulation_steps": 1,
        "learning_rate": job.learning_rate, "max_steps": job.steps,
        "lr_scheduler_type": job.scheduler, "warmup_ratio": job.warmup_ratio, "seed": job.seed,
        "data_seed": job.seed, "bf16": job.bf16, "fp16": False, "use_cpu": job.use_cpu,
        "disable_tqdm": True, "include_num_input_tokens_seen": "non_padding",
    }
    path = Path(str(job.out) + ".yaml")
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def command(venv: Path, job_yaml: Path) -> list[str]:
    return [str(cli(venv)), "train", str(job_yaml)]


def run_env() -> dict[str, str]:
    """What its CLI needs beside the caller's environment: no version check, quiet logs."""
    return {"DISABLE_VERSION_CHECK": "1", "LLAMAFACTORY_VERBOSITY": "WARN"}


def tokens_per_second(out: Path) -> float | None:
    """Non-padding input tokens per second of its training loop (its trainer_state.json and
    train_results.json), the measure our progress report's tokensPerSecond uses."""
    try:
        runtime = float(json.loads((out / "train_results.json").read_text())["train_runtime"])
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    seen = [h["num_input_tokens_seen"] for h in history if "num_input_tokens_seen" in h]
    return seen[-1] / runtime if seen and runtime > 0 else None
