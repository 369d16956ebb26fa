"""The model card (README.md) of an exported adapter or model, and the attempt history.

The card says what a user handing the output on needs to know: the base model and its exact
revision, the data sources and theirs, the hyper-parameters, the steps trained, the final and
evaluation metrics, and how many attempts (and preemptions) it took. It is written next to the
weights and the tokenizer after a successful run, so an uploaded directory is self-describing.

Each attempt that ends appends one line to ``<workDir>/attempts.jsonl`` (the card counts them).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_api.trainer_config import TrainerConfig
from finetune_trainer.checkpoint import write_atomic
from finetune_trainer.sources import Resolved

log = logging.getLogger(__name__)

CARD = "README.md"
ATTEMPTS_FILE = "attempts.jsonl"


def record_attempt(work_dir: Path, attempt: str, reason: str, step: int) -> None:
    """Append this attempt's end (best effort: the history only feeds the card)."""
    line = json.dumps({"attempt": attempt, "reason": reason, "step": step,
                       "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    try:
        with open(work_dir / ATTEMPTS_FILE, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        log.warning("attempt history %s: cannot write (%s)", work_dir / ATTEMPTS_FILE, e)


def attempts(work_dir: Path) -> list[dict[str, Any]]:
    try:
        text = (work_dir / ATTEMPTS_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(d, dict):
            out.append(d)
    return out


def hyperparameters(cfg: TrainerConfig) -> dict[str, Any]:
    spec = cfg.spec
    t = spec.training
    hp: dict[str, Any] = {"method": spec.method}
    lora = spec.lora_or_default()
    if lora is not None:
        hp.update({"lora.rank": lora.rank, "lora.alpha": lora.alpha,
                   "lora.dropout": lora.dropout,
                   "lora.targetModules": ", ".join(lora.target_modules)})
    if spec.quantization is not None:
        hp.update({"quantization.bits": spec.quantization.bits,
                   "quantization.type": spec.quantization.type})
    hp.update({"epochs": t.epochs, "maxSteps": t.max_steps, "learningRate": t.learning_rate,
               "lrScheduler": t.lr_scheduler, "warmupRatio": t.warmup_ratio,
               "batchSize": t.batch_size,
               "gradientAccumulationSteps": t.gradient_accumulation_steps,
               "weightDecay": t.weight_decay, "maxGradNorm": t.max_grad_norm,
               "precision": t.precision, "packing": t.packing, "seed": t.seed,
               "dataset.format": spec.dataset.format, "dataset.cutoffLen": spec.dataset.cutoff_len,
               "dataset.validationSplit": spec.dataset.validation_split,
               "dataset.trainOnPrompt": spec.dataset.train_on_prompt,
               "gpus": spec.resources.total_gpus, "nodes": spec.resources.nodes})
    return hp


def _rev(r: Resolved) -> str:
    if not r.revision:
        return "(a volume: no revision)"
    return r.revision + (f" (version {r.version_id})" if r.version_id else "")


def render(cfg: TrainerConfig, kind: str, sources: list[Resolved], step: int,
           metrics: dict[str, float], history: list[dict[str, Any]]) -> str:
    """The card's Markdown (YAML front matter as the Hub reads it). ``kind``: adapter|merged."""
    spec = cfg.spec
    base = next((r for r in sources if r.role == "model"), None)
    preemptions = sum(1 for a in history if a.get("reason") == "Preempted")
    front = ["---", f"base_model: {json.dumps(spec.model.name)}",
             f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
             "tags:", "- finetune-operator", f"- {spec.method}", "---", ""]
    title = "LoRA adapter" if kind == "adapter" else "Fine-tuned model"
    lines = [f"# {title} of {spec.model.name}", "",
             f"Trained by finetune-operator: job `{cfg.job.namespace}/{cfg.job.name}` "
             f"(uid `{cfg.job.uid}`).", "",
             "## Base model", "", "| name | source | revision |", "| --- | --- | --- |",
             f"| {spec.model.name} | {base.uri if base else ''} | "
             f"{_rev(base) if base else ''} |", "",
             "## Data", "", "| role | source | revision |", "| --- | --- | --- |"]
    lines += [f"| {r.role} | {r.uri} | {_rev(r)} |" for r in sources if r.role != "model"]
    lines += ["", "## Hyper-parameters", "", "| name | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in hyperparameters(cfg).items()]
    lines += ["", "## Results", "", f"Optimizer steps: {step}", "",
              "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())] or ["| (none) | |"]
    lines += ["", "## Attempts", "",
              f"Attempts: {len(history)}; preemptions: {preemptions}; failures and retries "
              "are in the job's status.", ""]
    lines += ["| attempt | ended | at step |", "| --- | --- | --- |"]
    lines += [f"| {a.get('attempt', '')} | {a.get('reason', '')} | {a.get('step', '')} |"
              for a in history]
    if kind == "adapter":
        lines += ["", "## Use", "", "```python",
                  "from peft import AutoPeftModelForCausalLM",
                  "from transformers import AutoTokenizer",
                  "model = AutoPeftModelForCausalLM.from_pretrained(DIR)",
                  "tokenizer = AutoTokenizer.from_pretrained(DIR)", "```"]
    else:
        lines += ["", "## Use", "", "```python",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(DIR)",
                  "tokenizer = AutoTokenizer.from_pretrained(DIR)", "```"]
    return "\n".join(front + lines) + "\n"


def write(out_dir: Path, cfg: TrainerConfig, kind: str, sources: list[Resolved], step: int,
          metrics: dict[str, float], attempt: str, tokenizer_dir: str | None = None) -> None:
    """README.md into ``out_dir``, and the tokenizer when the export has none. ``attempt``
    (this one, completing) follows the earlier attempts of the history file."""
    if tokenizer_dir and not (out_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(str(out_dir))
    history = [*attempts(Path(cfg.paths.work_dir)),
               {"attempt": attempt, "reason": "Completed", "step": step}]
    write_atomic(out_dir / CARD, render(cfg, kind, sources, step, metrics, history))
