"""Trainer benchmark: one fixed tiny LoRA job through our entrypoint, a plain HF Trainer + peft
script and LLaMA-Factory 0.9.5, side by side in one run; plus the time to save and to resume.

    .venv/bin/python benchmarks/bench_trainer.py            # print the figures
    .venv/bin/python benchmarks/bench_trainer.py --markdown # also write BENCHMARKS.md's
                                                            # "Trainer" section

The job: the tiny Llama of ``finetune_dev.tiny`` (hidden 64, 2 layers, ChatML template),
saved to a directory every runner loads by path; the 24 records of
``examples/data/messages.jsonl`` (cutoff 128, assistant-only labels); LoRA r=8 alpha=16 dropout
0.1 on all linear layers; 40 steps of batch 4, lr 0.02 linear with 10% warmup, seed 7, fp32 on
the CPU; loss logged every 10 steps; a checkpoint every 10 steps (2 kept); the final adapter.

- ours: ``python -m finetune_trainer.launch -- --config FILE`` in a subprocess, the command every
  trainer pod runs (the supervisor and its one worker; wall time of both processes, imports
  included): atomic checkpoints, progress file, TensorBoard logs, termination message.
- plain: this file with ``--plain`` in a subprocess: the same tokenization (chat template,
  prompt masked), ``get_peft_model`` + ``Trainer`` with ``save_steps``/``save_total_limit`` and a
  final ``save_model``; nothing else.
- LLaMA-Factory: ``llamafactory-cli train job.yaml`` from its own venv (``LF_VENV``, created with
  ``python -m venv`` and ``pip install llamafactory==0.9.5``; skipped with the reason when
  absent), template ``chatml`` (the tiny tokenizer's), the data registered in a local
  ``dataset_info.json`` as sharegpt-style ``messages``. Its venv resolves its own transformers
  and peft versions (printed with the figures).
- Peak RSS: ``ru_maxrss`` of each process (``os.wait4``), children included.
- Training loop: the HF Trainer's ``train_runtime`` (first step to the end of the last one,
  checkpoints included), which ours and plain log; it leaves out what differs around the loop
  (start-up, and the interpreter's teardown, which the trainer skips once its result is written
  and a plain script pays), so it is the per-step comparison.
- save: the save time each checkpoint records in its COMPLETE marker (median), LoRA and full.
- resume: a real SIGTERM at step 23, then a restart: the time from the signal to the process
  exit (save at the step boundary included), and the time the restart takes to restore weights,
  optimizer and scheduler (logged by the trainer; compared with the same phase of a fresh start).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from report import write_section

from finetune_dev import lf_peer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "messages.jsonl"
STEPS, INTERVAL, BATCH, LR, SEED, CUTOFF, LOG_STEPS = 40, 10, 4, 0.02, 7, 128, 10
LF_VERSION = lf_peer.VERSION
LF_VENV = lf_peer.default_venv()


def steps() -> int:
    """The job's steps: STEPS, or BENCH_TRAINER_STEPS for the long variant (the plain script
    runs in a subprocess and reads it from its environment)."""
    return int(os.environ.get("BENCH_TRAINER_STEPS", STEPS))


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
        "training": {"maxSteps": steps(), "learningRate": LR if method == "lora" else 0.002,
                     "batchSize": BATCH, "lrScheduler": "linear", "warmupRatio": 0.1,
                     "precision": "fp32", "seed": SEED, "loggingSteps": LOG_STEPS},
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


@dataclass
class Run:
    wall: float
    cpu: float  # user + system seconds of the process and its children
    rss_mb: float
    stderr: str

    @property
    def loop(self) -> float:
        """The training loop's seconds (train_runtime), as ours and plain log it."""
        m = re.search(r"training loop: ([0-9.]+)s", self.stderr)
        return float(m.group(1)) if m else float("nan")


def timed_run(cmd: list[str], extra_env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> Run:
    """Run to completion; wall time and the process's own peak RSS (children included)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env={**env(), **(extra_env or {})},
                             stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{text[-3000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text)


def ours(model: Path, work: Path, method: str = "lora") -> Run:
    return timed_run(launch_cmd(config(model, work, method)))


def launch_cmd(cfg: Path) -> list[str]:
    """What a trainer pod runs: the supervisor, which starts the one worker."""
    return [sys.executable, "-m", "finetune_trainer.launch", "--", "--config", str(cfg)]


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
        output_dir=out, max_steps=steps(), per_device_train_batch_size=BATCH, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0.1, save_steps=INTERVAL, save_total_limit=2,
        logging_steps=LOG_STEPS, report_to="none", seed=SEED, data_seed=SEED, use_cpu=True,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=feats,
                      data_collator=collate)
    metrics = trainer.train().metrics
    print(f"training loop: {metrics['train_runtime']:.3f}s", file=sys.stderr)
    trainer.save_model(str(Path(out) / "final"))


def llamafactory(model: Path, out: Path) -> Run:
    job = lf_peer.Job(model=model, data=DATA, data_format="messages", out=out, steps=STEPS,
                      batch=BATCH, learning_rate=LR, cutoff=CUTOFF, lora_rank=8, lora_alpha=16,
                      lora_dropout=0.1, seed=SEED, warmup_ratio=0.1, logging_steps=LOG_STEPS,
                      save_steps=INTERVAL, use_cpu=True)
    return timed_run(lf_peer.command(LF_VENV, lf_peer.write_job(job)), lf_peer.run_env(),
                     cwd=out.parent)


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
    cmd = launch_cmd(cfg)
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
    err2 = timed_run(cmd).stderr
    restored = re.search(r"restored in ([0-9.]+)s", err2)
    assert restored, err2[-2000:]
    return {"stop": stop, "save": float(term["checkpoint"]["saveSeconds"]),
            "restore": float(restored.group(1)), "step": float(term["finalStep"])}


def setup_seconds(stderr: str) -> float:
    m = re.search(r"training set up in ([0-9.]+)s", stderr)
    return float(m.group(1)) if m else float("nan")


def _runs(xs: list[Run]) -> str:
    return ", ".join(f"{r.wall:.2f}" for r in xs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--long-steps", type=int, default=400,
                   help="also run ours and plain at this many steps (0: skip)")
    p.add_argument("--markdown", action="store_true", help="write BENCHMARKS.md's section")
    p.add_argument("--plain", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plain:
        plain(*args.plain)
        return 0

    from finetune_dev.tiny import build_tiny_model

    lf_skip = lf_peer.problem(LF_VENV)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp_s:
        tmp = Path(tmp_s)
        model = build_tiny_model(tmp / "model")
        ours_r: list[Run] = []
        plain_r: list[Run] = []
        lf_r: list[Run] = []
        setups: list[float] = []
        saves: list[float] = []
        for i in range(args.repeat):  # interleaved, so all see the same machine load
            r = ours(model, tmp / f"ours-{i}")
            ours_r.append(r)
            setups.append(setup_seconds(r.stderr))
            saves += marker_save_seconds(tmp / f"ours-{i}")
            plain_r.append(timed_run(plain_cmd(model, tmp / f"plain-{i}")))
            if lf_skip is None:
                lf_r.append(llamafactory(model, tmp / f"lf-{i}"))
        long_ours: list[Run] = []
        long_plain: list[Run] = []
        if args.long_steps:
            os.environ["BENCH_TRAINER_STEPS"] = str(args.long_steps)
            try:
                for i in range(args.repeat):
                    long_ours.append(ours(model, tmp / f"long-ours-{i}"))
                    long_plain.append(timed_run(plain_cmd(model, tmp / f"long-plain-{i}")))
            finally:
                del os.environ["BENCH_TRAINER_STEPS"]
        full = ours(model, tmp / "full-0", "full")
        full_saves = marker_save_seconds(tmp / "full-0")
        lora_cycle = sigterm_cycle(model, tmp / "cycle-lora", "lora", 23)
        full_cycle = sigterm_cycle(model, tmp / "cycle-full", "full", 23)

    def med(xs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in xs)

    def figures(xs: list[Run]) -> str:
        loop = med(xs, "loop")
        return (f"wall {med(xs, 'wall'):.2f} s (runs: {_runs(xs)}), CPU {med(xs, 'cpu'):.2f} s, "
                f"peak RSS {med(xs, 'rss_mb'):.0f} MiB"
                + ("" if math.isnan(loop) else f", training loop {loop:.2f} s"))

    def ratios(xs: list[Run], ys: list[Run]) -> str:
        return ", ".join(f"{name} {med(xs, attr) / med(ys, attr):.2f}x" for name, attr in
                         (("wall", "wall"), ("CPU", "cpu"), ("peak RSS", "rss_mb"),
                          ("training loop", "loop"))
                         if not math.isnan(med(xs, attr) / med(ys, attr)))

    lines = [
        f"Fixed tiny LoRA job ({STEPS} steps of batch {BATCH}, tiny Llama hidden 64 / 2 layers, "
        f"loss logged every {LOG_STEPS} steps, {INTERVAL}-step checkpoints, fp32 on the CPU), "
        f"the same job through three trainers in one run, interleaved, median of {args.repeat} "
        "runs each; wall time of the process including imports, CPU time (user + system) and "
        "peak RSS (ru_maxrss) of the process and its children. Ours runs as every trainer pod "
        "does, `python -m finetune_trainer.launch` (the supervisor and its worker), which "
        "leaves without the interpreter's teardown once the result is written; the plain "
        "script and LLaMA-Factory pay it (about 1 s here). The training loop (HF's "
        "train_runtime: first step to last, checkpoints included) is the comparison without "
        "start-up and exit. On a shared machine the wall times swing with the load; CPU time "
        "is the steadier comparison",
        f"- finetune-trainer: {figures(ours_r)}",
        f"- plain HF Trainer + peft script, same work: {figures(plain_r)}",
    ]
    if lf_r:
        lines += [
            f"- LLaMA-Factory {LF_VERSION} (`llamafactory-cli train`, its own venv: "
            f"{lf_peer.versions(LF_VENV)}): {figures(lf_r)}",
            f"- finetune-trainer / plain: {ratios(ours_r, plain_r)} (target <= 1.02x)",
            f"- finetune-trainer / LLaMA-Factory: {ratios(ours_r, lf_r)} (target <= 1.0x)",
        ]
    else:
        lines += [f"- LLaMA-Factory {LF_VERSION}: not run: {lf_skip}",
                  f"- finetune-trainer / plain: {ratios(ours_r, plain_r)} (target <= 1.02x)"]
    if long_ours:
        lines += [
            f"- the same job at {args.long_steps} steps (start-up amortized as in a real job; "
            f"ours / plain only): finetune-trainer {figures(long_ours)}; plain "
            f"{figures(long_plain)}; finetune-trainer / plain: {ratios(long_ours, long_plain)}"]
    lines += [
        f"- checkpoint save (weights + optimizer + scheduler + RNG into the tmp dir, then the "
        f"fsync of its files; the marker's saveSeconds): LoRA median "
        f"{statistics.median(saves) * 1000:.0f} ms over {len(saves)} saves, "
        f"full fine-tuning median {statistics.median(full_saves) * 1000:.0f} ms",
        f"- SIGTERM at step {lora_cycle['step']:.0f} to exit 0 with the checkpoint saved: LoRA "
        f"{lora_cycle['stop'] * 1000:.0f} ms (save {lora_cycle['save'] * 1000:.0f} ms), full "
        f"{full_cycle['stop'] * 1000:.0f} ms (save {full_cycle['save'] * 1000:.0f} ms)",
        f"- resume (weights, optimizer, scheduler restored before the first step): LoRA "
        f"{lora_cycle['restore'] * 1000:.0f} ms, full {full_cycle['restore'] * 1000:.0f} ms; "
        f"the same phase of a fresh start: LoRA {statistics.median(setups) * 1000:.0f} ms, "
        f"full {setup_seconds(full.stderr) * 1000:.0f} ms",
    ]
    print("\n".join(lines))
    if args.markdown:
        write_section("Trainer", "bench_trainer.py", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
