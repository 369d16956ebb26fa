"""Helpers for the trainer tests: config factories and real trainer subprocesses."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_dict(model: Path, work: Path, dataset: str = "messages.jsonl",
                **over: Any) -> dict[str, Any]:
    """A valid trainer config (camelCase, as the operator writes it) with overrides merged."""
    fmt = dataset.split(".")[0]
    base: dict[str, Any] = {
        "job": {"namespace": "team-a", "name": "bot", "uid": "uid-1234"},
        "spec": {
            "model": {"name": "tiny", "source": {"pvc": {"claimName": "models", "path": "tiny"}}},
            "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}},
                        "format": fmt, "cutoffLen": 128, "validationSplit": 0.1},
            "method": "lora",
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.1},
            "training": {"maxSteps": 14, "learningRate": 0.02, "batchSize": 4,
                         "lrScheduler": "linear", "warmupRatio": 0.1, "precision": "bf16",
                         "seed": 7},
            "checkpoint": {"intervalSteps": 5, "keep": 2},
            "resources": {"gpus": 0},
        },
        "paths": {"model": str(model), "dataset": str(DATA / dataset), "workDir": str(work)},
        "progress": {"file": str(work.parent / f"{work.name}.progress.json"),
                     "minIntervalSeconds": 0},
        "terminationLog": str(work.parent / f"{work.name}.termination.json"),
    }
    return deep_merge(base, over)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def trainer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra or {})
    return env


def start_trainer(config: Path, log: Path,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - closed with the process by the caller
    return subprocess.Popen([sys.executable, "-m", "finetune_trainer", "--config", str(config)],
                            cwd=ROOT, env=trainer_env(env), stdout=out, stderr=subprocess.STDOUT)


def run_trainer(config: Path, log: Path, env: dict[str, str] | None = None,
                timeout: float = 240) -> int:
    proc = start_trainer(config, log, env)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def wait_until(what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes],
               log: Path, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited ({proc.returncode}) before {what}:\n"
                                 + log.read_text(errors="replace")[-3000:])
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}:\n" + log.read_text()[-3000:])


def progress_step(path: Path) -> int:
    try:
        return int(read_json(path).get("step", 0))
    except (OSError, ValueError):
        return 0


def sigterm_at(config: Path, progress: Path, log: Path, step: int) -> tuple[int, float]:
    """Start a trainer, send a real SIGTERM once it reports ``step``; return its exit code and
    the seconds from the signal to the exit."""
    proc = start_trainer(config, log)
    wait_until(f"step {step}", lambda: progress_step(progress) >= step, proc, log)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(120)
    return rc, time.monotonic() - t0


def start_launcher(config: Path, log: Path, nproc: int = 1,
                   env: dict[str, str] | None = None,
                   node: tuple[int, int, int] | None = None) -> subprocess.Popen[bytes]:
    """The pod's launch path: ``python -m finetune_trainer.launch`` supervising ``nproc``
    trainer processes (gloo on the CPU), as the operator's pods run it. ``node`` = (node rank,
    nodes, rendezvous port) makes it one node of a gang meeting on 127.0.0.1."""
    out = open(log, "ab")  # noqa: SIM115 - closed with the process by the caller
    gang = [] if node is None else [f"--node-rank={node[0]}", f"--nnodes={node[1]}",
                                    "--master-addr=127.0.0.1", f"--master-port={node[2]}"]
    return subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer.launch", f"--nproc-per-node={nproc}", *gang,
         "--", "--config", str(config)],
        cwd=ROOT, env=trainer_env(env), stdout=out, stderr=subprocess.STDOUT)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (the supervisor's training processes), in start order."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return sorted(int(p) for p in text.split())


class Run:
    """One job incarnation on disk: config, work dir, progress, termination log, output."""

    def __init__(self, root: Path, model: Path, spec: dict[str, Any]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.work = root / "work"
        data = config_dict(model, self.work, spec=spec)
        self.config = write_config(root / "config.yaml", data)
        self.progress = Path(data["progress"]["file"])
        self.termination = Path(data["terminationLog"])
        self.log = root / "trainer.log"

    def term(self) -> dict[str, Any]:
        return read_json(self.termination)

    def prog(self) -> dict[str, Any]:
        return read_json(self.progress)

    def run(self, env: dict[str, str] | None = None) -> int:
        return run_trainer(self.config, self.log, env)

    def launch(self, nproc: int = 1, env: dict[str, str] | None = None,
               timeout: float = 300) -> int:
        """One attempt through the pod's launch path (the supervisor and ``nproc`` ranks)."""
        proc = start_launcher(self.config, self.log, nproc, env)
        try:
            return proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def max_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)
