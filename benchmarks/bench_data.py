"""Data pipeline benchmark: records/s and peak RSS of reading + tokenizing a generated alpaca
dataset, today's pipeline against the one it replaced (the baseline, ``data.py`` at
BASELINE_COMMIT, loaded from git in the same run).

    .venv/bin/python benchmarks/bench_data.py             # print the figures
    .venv/bin/python benchmarks/bench_data.py --markdown  # also write BENCHMARKS.md's
                                                          # "Trainer data pipeline" section

Every measurement is one fresh subprocess (``--one``) that builds the tiny tokenizer, runs
``build_examples`` on the file and reports its wall time and its own peak RSS (ru_maxrss), so
imports are excluded from the time but not from the RSS. Cases: the 100k-record file as JSONL
and as a JSON array; the baseline is quadratic on JSON arrays, so it runs there on a smaller
file (``--baseline-json-records``); the new pipeline cold (no cache), with the cache being
written, and warm (a later attempt that finds the cache); and parquet.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import write_section

ROOT = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "30a02a7"  # data.py before the streaming/batched/cached pipeline
CUTOFF = 256
_TEXT = ("the model learns a task from a small dataset with adapters on linear layers while a "
         "checkpoint keeps the state of training so a preempted job resumes later on a node "
         "translate summarize explain answer the question about kubernetes pods and quotas")
WORDS = _TEXT.split(" ")


def generate(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def words(a: int, b: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(a, b)))

    return [{"instruction": words(5, 30), "input": words(0, 20) if rng.random() < 0.4 else "",
             "output": words(10, 80)} for _ in range(n)]


def write_files(tmp: Path, n: int) -> dict[str, Path]:
    recs = generate(n)
    jsonl, js = tmp / f"alpaca-{n}.jsonl", tmp / f"alpaca-{n}.json"
    with jsonl.open("w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    js.write_text(json.dumps(recs, indent=1))
    out = {"jsonl": jsonl, "json": js}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(recs), tmp / f"alpaca-{n}.parquet")
        out["parquet"] = tmp / f"alpaca-{n}.parquet"
    except ImportError:
        pass
    return out


def baseline_module() -> Any:
    """``finetune_trainer.data`` as it was at BASELINE_COMMIT (imported from a temp file)."""
    src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:trainer/finetune_trainer/data.py"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-data-")) / "_data_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("finetune_trainer._data_baseline", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def one(impl: str, path: str, cache: str) -> dict[str, float]:
    """Runs in the measuring subprocess."""
    from finetune_dev.tiny import train_tokenizer

    tok: Any = train_tokenizer()
    from finetune_trainer import data

    build: Any = baseline_module().build_examples if impl == "baseline" else data.build_examples
    kw: dict[str, Any] = {"cache_dir": cache} if cache and impl != "baseline" else {}
    t0, c0 = time.perf_counter(), time.process_time()
    train, evals, stats = build(path, "alpaca", tok, CUTOFF, False, 0.01, False, 7, **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sample = train[len(train) // 2]
    return {"wall": wall, "cpu": cpu, "records": stats.records, "train": len(train),
            "eval": len(evals),
            "tokens": stats.train_tokens, "sample": sum(sample.input_ids) % 1_000_003,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(impl: str, path: Path, cache: Path | None = None) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", impl, str(path),
           str(cache or "")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600,
                       env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                            "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--baseline-json-records", type=int, default=10_000)
    p.add_argument("--markdown", action="store_true", help="write BENCHMARKS.md's section")
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp_s:
        tmp = Path(tmp_s)
        big = write_files(tmp, args.records)
        small = write_files(tmp, args.baseline_json_records)
        mb = big["jsonl"].stat().st_size / 2**20
        rows: list[tuple[str, dict[str, float]]] = [
            ("baseline, JSONL", measure("baseline", big["jsonl"])),
            ("new, JSONL, no cache", measure("new", big["jsonl"])),
            ("new, JSONL, cache written (first attempt)", measure("new", big["jsonl"],
                                                                  tmp / "cache")),
            ("new, JSONL, cache found (later attempt)", measure("new", big["jsonl"],
                                                                tmp / "cache")),
            ("new, JSON array, no cache", measure("new", big["json"])),
            (f"baseline, JSON array, {args.baseline_json_records} records",
             measure("baseline", small["json"])),
            (f"new, JSON array, {args.baseline_json_records} records",
             measure("new", small["json"])),
        ]
        if "parquet" in big:
            rows.append(("new, parquet, no cache", measure("new", big["parquet"])))
    same = rows[0][1]["sample"] == rows[1][1]["sample"] and \
        rows[0][1]["tokens"] == rows[1][1]["tokens"]
    lines = [
        f"Generated alpaca dataset, {args.records} records ({mb:.0f} MiB as JSONL), tiny "
        f"byte-level BPE tokenizer, cutoff {CUTOFF}, 1% eval split; `build_examples` in a fresh "
        "process per row; times exclude imports, peak RSS (ru_maxrss) includes them. On a "
        "shared machine wall time swings with the load; CPU time (user + system, the "
        "tokenizer's threads included) is the steadier comparison",
    ]
    for name, r in rows:
        lines.append(f"- {name}: {r['records'] / r['wall']:,.0f} records/s of wall time "
                     f"({r['wall']:.1f} s), {r['records'] / r['cpu']:,.0f} records/s of CPU time "
                     f"({r['cpu']:.1f} s); {r['records']:.0f} records, {r['tokens']:,.0f} train "
                     f"tokens; peak RSS {r['rss_mb']:.0f} MiB")
    lines.append(f"- baseline = `data.py` at {BASELINE_COMMIT}; same examples as the baseline "
                 f"(token count and a sample example): {'yes' if same else 'NO'}")
    print("\n".join(lines))
    if args.markdown:
        write_section("Trainer data pipeline", "bench_data.py", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
