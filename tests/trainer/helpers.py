"""Real trainer subprocesses for the trainer tests (their configs come from
tests/builders/trainer.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.builders.trainer import ROOT, config_dict, read_json, trainer_env, write_config


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
