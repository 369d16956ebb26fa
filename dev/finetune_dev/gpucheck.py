"""The GPU paths in one command: ``python -m finetune_dev.gpucheck`` (or
``scripts/gpu-check.sh``), a few minutes on one NVIDIA GPU. Never part of CI.

Each check runs the pod's real launch path (``python -m finetune_trainer.launch``, with no
RANK/WORLD_SIZE/MASTER_* in its environment, as in a pod) on a locally built model of about
100M parameters (no download) and a generated alpaca dataset:

* ``qlora-nf4``: QLoRA nf4, SIGTERM in the middle, resume; the adapter is compared with an
  uninterrupted run (max abs difference; CUDA kernels are not bit-reproducible, so it is
  reported, and must stay small);
* ``zero2`` / ``zero3``: DeepSpeed ZeRO-2 and ZeRO-3 LoRA on one GPU (no MPI, no launcher env);
* ``zero2-offload``: ZeRO-2 with the optimizer offloaded to the CPU (DeepSpeedCPUAdam);
* ``merge``: LoRA + ``output.mergeAdapter``; ``output/merged`` loaded with AutoModelForCausalLM +
  AutoTokenizer, its logits against the base + adapter (PeftModel);
* ``vs-llamafactory``: the same LoRA job (no DeepSpeed) through this trainer and LLaMA-Factory
  0.9.5 from its own venv (``--llamafactory-venv``, default ``$LF_VENV``; see ``lf_peer``), both
  in bf16 on the GPU: non-padding input tokens per second of each training loop, and the ratio;
* tokens/s of every run (the trainer's own progress report).

Prints one table; exit 1 when any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from finetune_dev import lf_peer

STEPS = 40
STOP_AT = 17


@dataclass
class Row:
    check: str
    ok: bool
    seconds: float
    tokens_per_second: float | None
    note: str
    skipped: bool = False


def dataset(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """Alpaca records long enough to keep a GPU busy (words from the tiny corpus)."""
    from finetune_dev.tiny import _CORPUS

    words = _CORPUS.split()
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps({
                "instruction": " ".join(rnd.choices(words, k=rnd.randint(20, 60))),
                "input": "",
                "output": " ".join(rnd.choices(words, k=rnd.randint(60, 200))),
            }) + "\n")
    return path


def config(model: Path, data: Path, work: Path, spec: dict[str, Any]) -> Path:
    base: dict[str, Any] = {
        "job": {"namespace": "gpu-check", "name": work.name, "uid": f"uid-{work.name}"},
        "spec": {
            "model": {"name": "check", "source": {"pvc": {"claimName": "m", "path": "m"}}},
            "dataset": {"source": {"configMap": {"name": "d", "key": "d.jsonl"}},
                        "format": "alpaca", "cutoffLen": 512},
            "method": "lora", "lora": {"rank": 16, "alpha": 32},
            "training": {"maxSteps": STEPS, "batchSize": 8, "learningRate": 2e-4,
                         "precision": "bf16", "seed": 7, "loggingSteps": 10},
            "checkpoint": {"intervalSteps": 10, "keep": 2},
            "resources": {"gpus": 1},
        },
        "paths": {"model": str(model), "dataset": str(data), "workDir": str(work)},
        "progress": {"file": str(work) + ".progress.json", "minIntervalSeconds": 0},
        "terminationLog": str(work) + ".termination.json",
    }
    for k, v in spec.items():
        base["spec"][k] = v
    path = Path(str(work) + ".yaml")
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    drop = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def launch(cfg: Path, log: Path, stop_at: int | None = None,
           timeout: float = 900) -> tuple[int, float]:
    """Run one attempt; with ``stop_at``, SIGTERM once the progress report reaches that step."""
    progress = Path(str(cfg).removesuffix(".yaml") + ".progress.json")
    t0 = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "finetune_trainer.launch", "--",
                                 "--config", str(cfg)], env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            if stop_at is not None:
                while proc.poll() is None and _step(progress) < stop_at:
                    time.sleep(0.05)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
    return rc, time.monotonic() - t0


def _step(progress: Path) -> int:
    try:
        return int(json.loads(progress.read_text()).get("step", 0))
    except (OSError, ValueError):
        return 0


def _json(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _tps(work: Path) -> float | None:
    v = _json(str(work) + ".progress.json").get("tokensPerSecond")
    return float(v) if v is not None else None


def _tail(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][-160:] if lines else ""


def max_adapter_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa = load_file(str(a / "output/adapter/adapter_model.safetensors"))
    wb = load_file(str(b / "output/adapter/adapter_model.safetensors"))
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def run_simple(name: str, root: Path, model: Path, data: Path, spec: dict[str, Any]) -> Row:
    work = root / name
    rc, secs = launch(config(model, data, work, spec), root / f"{name}.log")
    term = _json(str(work) + ".termination.json")
    ok = rc == 0 and term.get("reason") == "Completed"
    why = term.get("message") or _tail(root / f"{name}.log")
    return Row(name, ok, secs, _tps(work), "completed" if ok else f"exit {rc}: {why}")


def run_qlora(root: Path, model: Path, data: Path) -> Row:
    spec = {"method": "qlora", "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True}}
    base = root / "qlora-base"
    rc0, secs = launch(config(model, data, base, spec), root / "qlora-base.log")
    work = root / "qlora-nf4"
    cfg = config(model, data, work, spec)
    rc1, s1 = launch(cfg, root / "qlora-nf4.log", stop_at=STOP_AT)
    t1 = _json(str(work) + ".termination.json")
    rc2, s2 = launch(cfg, root / "qlora-nf4.log")
    t2 = _json(str(work) + ".termination.json")
    resumed = _json(str(work) + ".progress.json").get("resumedFromStep")
    ok = (rc0 == rc1 == rc2 == 0 and t1.get("reason") == "Preempted"
          and t2.get("reason") == "Completed" and resumed == t1.get("finalStep"))
    note = (f"SIGTERM -> exit {rc1} {t1.get('reason')} at step {t1.get('finalStep')}, "
            f"resumed from {resumed}")
    if ok:
        note += f", adapter max diff vs uninterrupted {max_adapter_diff(base, work):.2e}"
    else:
        note += f"; {t2.get('message') or _tail(root / 'qlora-nf4.log')}"
    return Row("qlora-nf4 sigterm+resume", ok, secs + s1 + s2, _tps(base), note)


def run_merge(root: Path, model: Path, data: Path) -> Row:
    row = run_simple("merge", root, model, data, {"output": {"mergeAdapter": True}})
    if not row.ok:
        return row
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = root / "merge/output/merged"
    tok = AutoTokenizer.from_pretrained(merged_dir)
    x = tok("What is the capital of France?", return_tensors="pt").to("cuda")
    merged: Any = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    merged = merged.to("cuda").eval()
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
        str(root / "merge/output/adapter")).to("cuda").eval()
    with torch.no_grad():
        diff = float((merged(**x).logits - peft(**x).logits).abs().max())
    row.ok = diff <= 5e-2  # merged in bf16 on the GPU, compared in fp32
    row.note = f"output/merged loads with its tokenizer; logits max diff vs PeftModel {diff:.2e}"
    return row


def _gpu_used_mib(pids: set[int]) -> dict[int, int]:
    """GPU memory each of ``pids`` holds now (MiB), as nvidia-smi reports it; {} without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    got: dict[int, int] = {}
    for line in out.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() \
                and int(parts[0]) in pids:
            got[int(parts[0])] = int(parts[1])
    return got


def run_gpu_memory(root: Path, model: Path, data: Path) -> Row:
    """Two jobs share the GPU at once, each capped at its resources.gpuMemory: one with a share
    too small for it (2Gi) must end itself with cause GPUMemoryExceeded, its neighbour (24Gi)
    must finish untouched; the neighbour's measured peak (nvidia-smi, whole process incl. the
    CUDA context) against the operator's estimate (its progress report's gpuMemory.perGpu)."""
    jobs = {"share-small": "2Gi", "share-neighbour": "24Gi"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    t0 = time.monotonic()
    for name, share in jobs.items():
        cfg = config(model, data, root / name, {"resources": {"gpus": 1, "gpuMemory": share}})
        with open(root / f"{name}.log", "ab") as out:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "finetune_trainer.launch", "--", "--config", str(cfg)],
                env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    peak: dict[str, int] = dict.fromkeys(jobs, 0)
    deadline = t0 + 900
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        # the launcher's children hold the GPU: every pid of its session counts
        for name, p in procs.items():
            if p.poll() is None:
                pids = {p.pid, *_session_pids(p.pid)}
                peak[name] = max(peak[name], sum(_gpu_used_mib(pids).values()))
        time.sleep(0.5)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
    small = _json(str(root / "share-small") + ".termination.json")
    neighbour = _json(str(root / "share-neighbour") + ".termination.json")
    est = (_json(str(root / "share-neighbour") + ".progress.json").get("gpuMemory") or {}).get(
        "perGpu")
    ok = small.get("cause") == "GPUMemoryExceeded" and neighbour.get("reason") == "Completed"
    note = (f"2Gi share: {small.get('cause') or small.get('reason')}; 24Gi neighbour: "
            f"{neighbour.get('reason')}; neighbour peak {peak['share-neighbour']} MiB measured"
            + (f", estimate {int(est) / 2**20:.0f} MiB per GPU" if est else ", no estimate"))
    return Row("gpu-memory share+neighbour", ok, time.monotonic() - t0,
               _tps(root / "share-neighbour"), note)


def _session_pids(leader: int) -> set[int]:
    """The processes of ``leader``'s session (the launcher and the ranks it starts)."""
    out: set[int] = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == leader:
                    out.add(int(d.name))
            except OSError:
                continue
    return out


def loop_tokens_per_second(work: Path, log: Path) -> float | None:
    """Non-padding input tokens per second of our training loop: the final checkpoint's token
    count over the loop's time (the trainer logs ``training loop: Ns``), as LLaMA-Factory's is
    measured (``lf_peer.tokens_per_second``)."""
    runtimes = re.findall(r"training loop: ([0-9.]+)s", log.read_text(errors="replace"))
    state = _json(work / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json")
    tokens = state.get("num_input_tokens_seen")
    if not runtimes or not isinstance(tokens, int) or float(runtimes[-1]) <= 0:
        return None
    return tokens / float(runtimes[-1])


def run_vs_llamafactory(root: Path, model: Path, data: Path, venv: Path) -> Row:
    name = "vs-llamafactory"
    why = lf_peer.problem(venv)
    if why is not None:
        return Row(name, True, 0.0, None, f"not run: {why}", skipped=True)
    ours = run_simple("lora", root, model, data, {})
    if not ours.ok:
        return ours
    ours_tps = loop_tokens_per_second(root / "lora", root / "lora.log")
    import torch

    out = root / "llamafactory"
    cuda = torch.cuda.is_available()  # always, from main(); without, both train in fp32 on CPU
    job = lf_peer.Job(model=model, data=data, data_format="alpaca", out=out, steps=STEPS,
                      batch=8, learning_rate=2e-4, cutoff=512, lora_rank=16, lora_alpha=32,
                      seed=7, bf16=cuda, use_cpu=not cuda)
    t0 = time.monotonic()
    with open(root / "llamafactory.log", "ab") as log:
        rc = subprocess.run(lf_peer.command(venv, lf_peer.write_job(job)), cwd=root,
                            env={**_env(), **lf_peer.run_env()}, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    secs = time.monotonic() - t0
    lf_tps = lf_peer.tokens_per_second(out)
    if rc != 0 or lf_tps is None or ours_tps is None:
        return Row(name, False, ours.seconds + secs, ours_tps,
                   f"LLaMA-Factory exit {rc}, tokens/s ours {ours_tps} theirs {lf_tps}: "
                   f"{_tail(root / 'llamafactory.log')}")
    return Row(name, True, ours.seconds + secs, ours_tps,
               f"training loop tokens/s: ours {ours_tps:,.0f}, LLaMA-Factory "
               f"{lf_tps:,.0f} ({lf_peer.versions(venv)}): ours/theirs {ours_tps / lf_tps:.2f}x")


def table(rows: list[Row]) -> str:
    head = f"{'check':<26} {'result':<6} {'seconds':>8} {'tokens/s':>10}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        tps = f"{r.tokens_per_second:,.0f}" if r.tokens_per_second else "-"
        result = "skip" if r.skipped else "ok" if r.ok else "FAIL"
        lines.append(f"{r.check:<26} {result:<6} {r.seconds:>8.1f} "
                     f"{tps:>10}  {r.note}")
    return "\n".join(lines)


CHECKS = ["qlora", "zero2", "zero3", "zero2-offload", "merge", "gpu-memory", "vs-llamafactory"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune_dev.gpucheck",
                                description="The trainer's GPU paths on one GPU, as a table.")
    p.add_argument("--only", nargs="*", choices=CHECKS, default=CHECKS)
    p.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    p.add_argument("--hidden-size", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--llamafactory-venv", type=Path, default=lf_peer.default_venv(),
                   help="LLaMA-Factory's venv for vs-llamafactory (default $LF_VENV)")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: skipped: torch sees no CUDA GPU (torch.cuda.is_available() is False)")
        return 0
    from finetune_dev.tiny import build_tiny_model

    root = Path(args.keep or tempfile.mkdtemp(prefix="gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(root / "model", hidden_size=args.hidden_size, layers=args.layers)
    data = dataset(root / "data.jsonl")
    print(f"gpu-check: {torch.cuda.get_device_name(0)}, model {args.hidden_size}x{args.layers}, "
          f"{STEPS} steps per run, logs under {root}", flush=True)
    rows: list[Row] = []
    ds = {"zero2": {"stage": 2}, "zero3": {"stage": 3},
          "zero2-offload": {"stage": 2, "offloadOptimizer": True}}
    for check in args.only:
        if check == "qlora":
            rows.append(run_qlora(root, model, data))
        elif check == "merge":
            rows.append(run_merge(root, model, data))
        elif check == "gpu-memory":
            rows.append(run_gpu_memory(root, model, data))
        elif check == "vs-llamafactory":
            rows.append(run_vs_llamafactory(root, model, data, args.llamafactory_venv))
        else:
            rows.append(run_simple(check, root, model, data,
                                   {"distributed": {"deepspeed": ds[check]}}))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
