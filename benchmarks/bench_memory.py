"""Controller memory with many objects in the cluster, side by side in one run: this operator's
resident set with N FineTuneJobs (and foreign pods it must not keep), at each of several sizes,
against Kueue v0.17.0's with N queued Jobs (N Workloads).

    .venv/bin/python benchmarks/bench_memory.py                       # 10,000 and 50,000 ours,
                                                                       # 10,000 Kueue
    .venv/bin/python benchmarks/bench_memory.py --sizes 300 --kueue-sizes 300   # a smoke run
    .venv/bin/python benchmarks/bench_memory.py --markdown            # also BENCHMARKS.md's
                                                                       # "Memory at scale"

Each side gets a fresh local control plane (benchmarks/bench_scale.py's cluster: kwok GPU
nodes, the namespaces with a GPU quota each) and its controller started before the objects are
created. Ours: the FineTuneJobs are created size by size (round-robin over the namespaces,
one GPU each; the quotas admit a few hundred, the rest wait in the queue), then, once every job
has a phase (the operator saw it and wrote its first status) and a quiet window passed, VmRSS
and VmHWM of the operator's process. Kueue: suspended one-pod Jobs with the queue label (what
its webhook would leave), measured once Kueue made a Workload for each. The objects stay; each
size adds to the previous one. Memory, not time: the figures do not depend on the machine's
other load, but nothing else should run (a slow API server stretches the run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench_scale import (  # benchmarks/ is on sys.path when run as a script
    FTJ_PATH,
    GPU,
    KUEUE_JOBS_PATH,
    SELECTOR,
    Bench,
    KueueProc,
    Operator,
    add_foreign_pods,
    ftj,
    log,
    measure,
    operator_source,
    setup_ours,
    wait_all_phased,
    wait_until,
)
from report import write_section
from scale import kueue

from finetune_dev.devcluster import cluster as dc


def ours(b: Bench, sizes: list[int], foreign_pods: int) -> dict[str, Any]:
    res: dict[str, Any] = {"sizes": {}}
    src, res["source"] = operator_source(b.args.operator_ref, b.work)
    setup_ours(b, src)
    add_foreign_pods(b, foreign_pods)
    log_path = b.work / "operator.log"
    log_path.unlink(missing_ok=True)
    op = Operator(b.cfg, log_path, src)
    try:
        made = 0
        for size in sizes:
            log(f"ours: {size - made} more FineTuneJobs (to {size:,})")
            b.create(FTJ_PATH, [(b.namespaces[i % len(b.namespaces)], ftj(f"m-{i:06d}", "memory"))
                                for i in range(made, size)])
            made = size
            row: dict[str, Any] = {}
            if not wait_all_phased(b, row):
                row["incomplete"] = True
            time.sleep(b.args.idle_seconds)  # steady state, not a spike
            row["hwm"], row["rss"] = op.rss()
            log(f"ours at {size:,}: VmRSS {row['rss']:.0f} MB, VmHWM {row['hwm']:.0f} MB")
            res["sizes"][size] = row
    finally:
        op.stop()
    return res


def kueue_side(b: Bench, sizes: list[int]) -> dict[str, Any]:
    res: dict[str, Any] = {"sizes": {}}
    kq = KueueProc(b, res)
    api = kq.api
    try:
        made = 0
        for size in sizes:
            log(f"kueue: {size - made} more Jobs (to {size:,})")
            b.create(KUEUE_JOBS_PATH, [
                (b.namespaces[i % len(b.namespaces)], kueue.job(f"m-{i:06d}", 1, GPU, SELECTOR))
                for i in range(made, size)])
            made = size
            row: dict[str, Any] = {}

            def all_workloads(row: dict[str, Any] = row, size: int = size) -> bool:
                items, _ = api.list_all("/apis/kueue.x-k8s.io/v1beta2/workloads")
                row["workloads"] = len(items)
                return len(items) >= size

            if not wait_until(f"{size:,} Workloads", all_workloads, b.args.phase_timeout, 10):
                row["incomplete"] = True
            time.sleep(b.args.idle_seconds)
            row["hwm"], row["rss"] = measure.rss_mb(kq.proc.pid)
            log(f"kueue at {size:,}: VmRSS {row['rss']:.0f} MB, VmHWM {row['hwm']:.0f} MB")
            res["sizes"][size] = row
    finally:
        kq.stop()
    return res


def report(args: argparse.Namespace, got: dict[str, Any], command: str) -> list[str]:
    """The section's lines: the lead (write_section adds the machine line and a colon), then
    the table and the notes."""

    def cell(side: str, size: int) -> str:
        row = (got.get(side) or {}).get("sizes", {}).get(size)
        if row is None:
            return "not measured"
        text = f"{row['rss']:.0f} MB (peak {row['hwm']:.0f} MB)"
        return text + (" (incomplete: not every object was seen in time)"
                       if row.get("incomplete") else "")

    sizes = sorted(set(args.sizes) | set(args.kueue_sizes))
    lines = [f"Controller resident memory (VmRSS; VmHWM the peak so far) once every object is "
             f"seen and {args.idle_seconds} s passed; {args.nodes} kwok nodes x "
             f"{args.gpus_per_node} GPUs, {args.namespaces} namespaces with a GPU quota each; "
             f"ours with {args.foreign_pods:,} foreign pods in the cluster too",
             "| objects | ours (FineTuneJobs) | Kueue v0.17.0 (Jobs, one Workload each) |",
             "|---|---|---|",
             *(f"| {n:,} | {cell('ours', n)} | {cell('kueue', n)} |" for n in sizes), ""]
    for side in ("ours", "kueue"):
        if err := (got.get(side) or {}).get("error"):
            lines.append(f"- {side}: the step failed: {err}")
    src = (got.get("ours") or {}).get("source")
    lines.append(f"- operator from {src}; Kueue client limit "
                 f"{(got.get('kueue') or {}).get('qps')} QPS (variant {args.variant}).")
    lines.append(f"- command: `{command}`")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    p.add_argument("--kueue-sizes", type=int, nargs="*", default=[10_000])
    p.add_argument("--foreign-pods", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--idle-seconds", type=int, default=30)
    p.add_argument("--phase-timeout", type=float, default=3600)
    p.add_argument("--operator-ref", default="HEAD")
    p.add_argument("--variant", default="unthrottled")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--cluster-dir", type=Path, default=None)
    p.add_argument("--port-offset", type=int, default=None)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    # what bench_scale's Bench and Kueue setup read of their own arguments
    args.job_syncs, args.kueue_qps, args.kueue_burst, args.kueue_log_level = 50, None, None, "2"
    args.settle_seconds = 0.0
    command = "python benchmarks/bench_memory.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv)
    b = Bench(args)
    got: dict[str, Any] = {}
    try:
        for side, run in (("ours", lambda: ours(b, sorted(args.sizes), args.foreign_pods)),
                          ("kueue", lambda: kueue_side(b, sorted(args.kueue_sizes)))):
            if side == "kueue" and not args.kueue_sizes:
                continue
            try:
                got[side] = run()
            except Exception as e:  # a side failing keeps what the other measured
                log(f"{side} failed: {e!r}")
                got[side] = {"error": repr(e), "sizes": {}}
    finally:
        dc.down(b.cfg)
    lines = report(args, got, command.strip())
    print("\n".join(lines))
    if args.markdown:
        write_section("Memory at scale", "bench_memory.py", lines)
    return 0 if all("error" not in v for v in got.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
