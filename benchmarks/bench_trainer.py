"""Trainer benchmark: a fixed tiny LoRA job through our entrypoint vs a plain HF Trainer + peft
script doing the same work, and the time to save and to resume a checkpoint.

    .venv/bin/python benchmarks/bench_trainer.py            # print the figures
    .venv/bin/python benchmarks/bench_trainer.py --markdown # also write BENCHMARKS.md's
                                                            # "Trainer" section

The job: the tiny Llama of ``finetune_trainer.tiny`` (hidden 64, 2 layers), the 24 records of
``examples/data/messages.jsonl`` (cutoff 128, assistant-only labels), LoRA r=8 alpha=16 dropout
0.1 on all linear layers, 40 steps of batch 4, lr 0.02 linear with 10% warmup, fp32 on the CPU,
a checkpoint every 10 steps (2 kept), the final adapter saved.

- ours: ``python -m finetune_trainer --config FILE`` in a subprocess (wall time of the process,
  imports included): atomic checkpoints, progress file, TensorBoard logs, termination message.
- plain: this file with ``--plain`` in a subprocess: the same tokenization (chat template,
  prompt masked), ``get_peft_model`` + ``Trainer`` with ``save_steps``/``save_total_limit`` and a
  final ``save_model``; nothing else.
- save: the save time each checkpoint records in its COMPLETE marker (median), LoRA and full.
- resume: a real SIGTERM at step 23, then a restart: the time from the signal to the process
  exit (save at the step boundary included), and the time the restart takes to restore weights,
  optimizer and scheduler (logged by the trainer; compared with the same phase of a fresh start).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from report import write_section

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "messages.jsonl"
STEPS, INTERVAL, BATCH, LR, SEED, CUTOFF = 40, 10, 4, 0.02, 7, 128


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
             HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return e


def config(model: Path, work: Path, method: str = "lora") -> Path:
    spec: dict[str, Any] = {
        "model": {"name": "tiny", "source": {"pvc": {"claimName": "models", "path": "tiny"}}},
        "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}},
                    "format": "messages", "cutoffLen": CUTOFF},
        "method": method,
        "training": {"maxSteps": STEPS, "learningRate": LR if method == "lora" else 0.002,
                     "batchSize": BATCH, "lrScheduler": "linear", "warmupRatio": 0.1,
                     "precision": "fp32", "seed": SEED},
        "checkpoint": {"intervalSteps": INTERVAL, "keep": 2},
        "resources": {"gpus": 0},
    }
    if method == "lora":
        spec["lora"] = {"rank": 8, "alpha": 16, "dropout": 0.1, "targetModules": ["all-linear"]}
    data = {"job": {"namespace": "bench", "name": "tiny", "uid": "bench-uid"}, "spec": spec,
            "paths": {"model": str(model), "dataset": str(DATA), "workDir": str(work)},
            "progress": {"file": str(work) + ".progress.json"},
            "terminationLog": str(work) + ".termination.json"}
    path = Path(str(work) + ".yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def timed_run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return wall, p.stderr


def ours(model: Path, work: Path, method: str = "lora") -> tuple[float, str]:
    return timed_run([sys.executable, "-m", "finetune_trainer", "--config",
                      str(config(model, work, method))])


def plain_cmd(model: Path, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--plain", str(model), str(out)]


def plain(model_dir: str, out: str) -> None:
    """The reference: a plain HF Trainer + peft script doing the same work."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(model_dir)
    feats = []
    for line in DATA.read_text().splitlines():
        if not line.strip():
            continue
        msgs = json.loads(line)["messages"]
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs, tokenize=False)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        ids = tok(full, add_special_tokens=False)["input_ids"][:CUTOFF]
        feats.append({"input_ids": ids, "labels": ([-100] * n_prompt + ids[n_prompt:])[:len(ids)]})

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        pad = tok.pad_token_id
        return {
            "input_ids": torch.tensor([b["input_ids"] + [pad] * (n - len(b["input_ids"]))
                                       for b in batch]),
            "labels": torch.tensor([b["labels"] + [-100] * (n - len(b["labels"]))
                                    for b in batch]),
            "attention_mask": torch.tensor([[1] * len(b["input_ids"])
                                            + [0] * (n - len(b["input_ids"])) for b in batch]),
        }

    torch.manual_seed(SEED)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear",
        task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir=out, max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0.1, save_steps=INTERVAL, save_total_limit=2,
        logging_steps=1, report_to="none", seed=SEED, data_seed=SEED, use_cpu=True,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=feats,
                      data_collator=collate)
    trainer.train()
    trainer.save_model(str(Path(out) / "final"))


def marker_save_seconds(work: Path) -> list[float]:
    return [json.loads(m.read_text())["saveSeconds"]
            for m in sorted((work / "checkpoints").glob("checkpoint-*/COMPLETE"))]


def sigterm_cycle(model: Path, work: Path, method: str, at_step: int) -> dict[str, float]:
    """SIGTERM at ``at_step`` then restart: signal->exit time, save time, restore time."""
    cfg = config(model, work, method)
    progress = Path(str(work) + ".progress.json")
    data = yaml.safe_load(cfg.read_text())
    data["progress"]["minIntervalSeconds"] = 0
    cfg.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "finetune_trainer", "--config", str(cfg)]
    log = Path(str(work) + ".log")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))
    while True:
        try:
            if json.loads(progress.read_text()).get("step", 0) >= at_step:
                break
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise SystemExit(f"trainer exited early:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    stop = time.perf_counter() - t0
    term = json.loads(Path(str(work) + ".termination.json").read_text())
    assert proc.returncode == 0 and term["reason"] == "Preempted", log.read_text()[-2000:]
    _, err2 = timed_run(cmd)
    restored = re.search(r"restored in ([0-9.]+)s", err2)
    assert restored, err2[-2000:]
    return {"stop": stop, "save": float(term["checkpoint"]["saveSeconds"]),
            "restore": float(restored.group(1)), "step": float(term["finalStep"])}


def setup_seconds(stderr: str) -> float:
    m = re.search(r"training set up in ([0-9.]+)s", stderr)
    return float(m.group(1)) if m else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--markdown", action="store_true", help="write BENCHMARKS.md's section")
    p.add_argument("--plain", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plain:
        plain(*args.plain)
        return 0

    from finetune_trainer.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp_s:
        tmp = Path(tmp_s)
        model = build_tiny_model(tmp / "model")
        ours_t, plain_t, setups, saves = [], [], [], []
        for i in range(args.repeat):  # alternate, so both see the same machine load
            w, err = ours(model, tmp / f"ours-{i}")
            ours_t.append(w)
            setups.append(setup_seconds(err))
            saves += marker_save_seconds(tmp / f"ours-{i}")
            plain_t.append(timed_run(plain_cmd(model, tmp / f"plain-{i}"))[0])
        _, full_err = ours(model, tmp / "full-0", "full")
        full_saves = marker_save_seconds(tmp / "full-0")
        lora_cycle = sigterm_cycle(model, tmp / "cycle-lora", "lora", 23)
        full_cycle = sigterm_cycle(model, tmp / "cycle-full", "full", 23)

    o, b = statistics.median(ours_t), statistics.median(plain_t)
    lines = [
        f"Fixed tiny LoRA job ({STEPS} steps of batch {BATCH}, tiny Llama hidden 64 / 2 layers, "
        f"{INTERVAL}-step checkpoints, fp32 on the CPU), median of {args.repeat} runs each, "
        "process wall time including imports",
        f"- finetune-trainer: {o:.2f} s (runs: {', '.join(f'{x:.2f}' for x in ours_t)})",
        f"- plain HF Trainer + peft script, same work: {b:.2f} s "
        f"(runs: {', '.join(f'{x:.2f}' for x in plain_t)})",
        f"- ratio finetune-trainer / plain: {o / b:.2f}x",
        f"- checkpoint save (tmp dir, fsync, marker, rename; weights + optimizer + scheduler + "
        f"RNG): LoRA median {statistics.median(saves) * 1000:.0f} ms over {len(saves)} saves, "
        f"full fine-tuning median {statistics.median(full_saves) * 1000:.0f} ms",
        f"- SIGTERM at step {lora_cycle['step']:.0f} to exit 0 with the checkpoint saved: LoRA "
        f"{lora_cycle['stop'] * 1000:.0f} ms (save {lora_cycle['save'] * 1000:.0f} ms), full "
        f"{full_cycle['stop'] * 1000:.0f} ms (save {full_cycle['save'] * 1000:.0f} ms)",
        f"- resume (weights, optimizer, scheduler restored before the first step): LoRA "
        f"{lora_cycle['restore'] * 1000:.0f} ms, full {full_cycle['restore'] * 1000:.0f} ms; "
        f"the same phase of a fresh start: LoRA {statistics.median(setups) * 1000:.0f} ms, "
        f"full {setup_seconds(full_err) * 1000:.0f} ms",
    ]
    print("\n".join(lines))
    if args.markdown:
        write_section("Trainer", "bench_trainer.py", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
