"""Micro benchmark of admit(): 15,000 queued jobs, 50 namespaces, 500 nodes.

    .venv/bin/python benchmarks/bench_admission.py            # print the figures
    .venv/bin/python benchmarks/bench_admission.py --markdown # also write BENCHMARKS.md's
                                                              # "Admission" section

Three timings on the same snapshot:
- admit() with the full policy (aging, aged reservations, preemption by a critical band);
- admit() with a simple policy (no reservations, no preemption);
- a naive baseline with the simple policy's semantics: re-sorts the remaining queue after every
  admission and scans every node for every job. Its admissions must equal admit()'s (checked),
  so the ratio compares equal work.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from report import write_section  # benchmarks/ is on sys.path when run as a script

from finetune_operator.admission import (
    NodeInfo,
    Policy,
    QueuedJob,
    Quota,
    RunningJob,
    Snapshot,
    admit,
    effective_priority,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
GPU = "nvidia.com/gpu"

T = TypeVar("T")
BANDS = [(100, "finetune-low"), (1000, "finetune-normal"), (10_000, "finetune-high"),
         (100_000, "finetune-critical")]


def scenario(queued: int = 15_000, namespaces: int = 50, nodes: int = 500, seed: int = 1,
             ) -> Snapshot:
    rng = random.Random(seed)
    node_free = {f"node-{i:03d}": 8 for i in range(nodes)}
    names = sorted(node_free)
    running: list[RunningJob] = []
    # fill ~95% of the GPUs with running jobs of 1-8 GPUs
    target = int(0.95 * 8 * nodes)
    used = 0
    while used < target:
        gpus = rng.choice([1, 2, 2, 4, 4, 8])
        fits = [n for n in rng.sample(names, 20) if node_free[n] >= gpus]
        if not fits:
            continue
        node = fits[0]
        node_free[node] -= gpus
        used += gpus
        prio, cls = rng.choice(BANDS[:3])
        started = NOW - timedelta(minutes=rng.randint(1, 600))
        running.append(RunningJob(
            namespace=f"team-{rng.randrange(namespaces):02d}", name=f"run-{len(running)}",
            uid=f"r{len(running)}", priority=prio, priority_class=cls, gpus=gpus,
            started_at=started, placement=(node,),
            last_checkpoint_at=started + timedelta(minutes=rng.randint(0, 30))))
    jobs = []
    for i in range(queued):
        prio, cls = rng.choices(BANDS, weights=[40, 40, 19, 1])[0]
        gang = rng.random() < 0.05
        jobs.append(QueuedJob(
            namespace=f"team-{rng.randrange(namespaces):02d}", name=f"job-{i:05d}", uid=f"q{i}",
            priority=prio, priority_class=cls, gpus=rng.choice([1, 1, 2, 4, 8]),
            nodes=rng.choice([2, 4]) if gang else 1,
            created_at=NOW - timedelta(seconds=rng.randint(0, 4 * 3600))))
    used_by_ns: dict[str, int] = {}
    for r in running:
        used_by_ns[r.namespace] = used_by_ns.get(r.namespace, 0) + r.total_gpus
    quotas = [Quota(namespace=f"team-{n:02d}", resource=GPU, hard=120,
                    used=used_by_ns.get(f"team-{n:02d}", 0)) for n in range(namespaces)]
    return Snapshot(
        queued=jobs, running=running, quotas=quotas,
        nodes=[NodeInfo(name=n, allocatable={GPU: 8}, free={GPU: node_free[n]}) for n in names],
        policy=Policy(aging_rate_per_minute=10, aging_cap=999, max_running_jobs_per_namespace=0,
                      preempting_priority_classes=frozenset({"finetune-critical"}),
                      min_runtime_before_preemption_seconds=300),
    )


def simple(snapshot: Snapshot) -> Snapshot:
    policy = replace(snapshot.policy, preempting_priority_classes=frozenset(),
                     reserve_after_seconds=float("inf"))
    return replace(snapshot, policy=policy)


def naive_admit(snapshot: Snapshot, now: datetime) -> list[tuple[str, tuple[str, ...]]]:
    """The simple policy done the obvious way: re-sort after each admission, scan all nodes."""
    policy = snapshot.policy
    free = {n.name: n.free.get(GPU, 0) for n in snapshot.nodes}
    quota = {q.namespace: q.free for q in snapshot.quotas}
    count: dict[str, int] = {}
    for r in snapshot.running:
        count[r.namespace] = count.get(r.namespace, 0) + 1

    def key(j: QueuedJob) -> tuple[object, ...]:
        return (-effective_priority(j, now, policy), j.created_at, j.name, j.namespace, j.uid)

    remaining = sorted(snapshot.queued, key=key)
    out = []
    i = 0
    while i < len(remaining):
        job = remaining[i]
        limit = policy.max_running_jobs_per_namespace
        ok = not limit or count.get(job.namespace, 0) < limit
        ok = ok and quota.get(job.namespace, 1 << 60) >= job.total_gpus
        candidates = sorted((f, n) for n, f in free.items() if f >= job.gpus)
        if ok and len(candidates) >= job.nodes:
            placement = tuple(n for _, n in candidates[:job.nodes])
            for n in placement:
                free[n] -= job.gpus
            quota[job.namespace] = quota.get(job.namespace, 1 << 60) - job.total_gpus
            count[job.namespace] = count.get(job.namespace, 0) + 1
            out.append((job.name, placement))
            del remaining[i]
            remaining[i:] = sorted(remaining[i:], key=key)  # re-sort what is left
        else:
            i += 1
    return out


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--markdown", action="store_true", help="write BENCHMARKS.md's section")
    args = p.parse_args(argv)

    snap = scenario()
    n = len(snap.queued)
    free = sum(node.free[GPU] for node in snap.nodes)
    full_t, full = timed(lambda: admit(snap, NOW), args.repeat)
    simple_snap = simple(snap)
    simple_t, simple_d = timed(lambda: admit(simple_snap, NOW), args.repeat)
    naive_t, naive = timed(lambda: naive_admit(simple_snap, NOW), 1)
    fast = [(a.job.name, a.placement) for a in simple_d.admit]
    same = fast == naive
    lines = [
        f"admit() on {n} queued jobs, {len(snap.quotas)} namespaces, {len(snap.nodes)} nodes "
        f"({8 * len(snap.nodes)} GPUs, {free} free), {len(snap.running)} running jobs",
        f"- full policy (aging, reservations, preemption): {full_t * 1000:.0f} ms median of "
        f"{args.repeat} = {n / full_t:,.0f} jobs/s; admitted {len(full.admit)}, "
        f"preempted {len(full.preempt)}, impossible {len(full.impossible)}",
        f"- simple policy (no reservations, no preemption): {simple_t * 1000:.0f} ms = "
        f"{n / simple_t:,.0f} jobs/s; admitted {len(fast)}",
        f"- naive baseline, same semantics as the simple policy (re-sort after each admission, "
        f"scan every node per job): {naive_t * 1000:.0f} ms = {n / naive_t:,.0f} jobs/s",
        f"- speedup over the naive baseline: {naive_t / simple_t:.1f}x; same admissions and "
        f"placements: {'yes' if same else 'NO'}",
    ]
    print("\n".join(lines))
    if args.markdown:
        write_section("Admission", "bench_admission.py", lines)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
