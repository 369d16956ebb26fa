"""Cost of one admission cycle (``NativeAdmitter.decide()``): a full rebuild against the
incremental admitter, at 1k, 5k and 20k queued jobs.

    .venv/bin/python benchmarks/bench_decide.py             # print the figures
    .venv/bin/python benchmarks/bench_decide.py --markdown  # also write BENCHMARKS.md's
                                                            # "Admission cycle cost (incremental
                                                            # decide)" section
    .venv/bin/python benchmarks/bench_decide.py --profile 5000  # cProfile one full decide()

The cluster as the watch caches hold it (parsed FineTuneJobs, slim pods, nodes, quotas): N
queued jobs over 100 namespaces (three priority bands, 1-8 GPUs, some gangs, some with a node
selector or a deadline, younger than the aging bound), the GPUs of N/20 nodes (200 to 1,000
nodes of 8 GPUs) about 95% held by running jobs with bound pods, a GPU quota per namespace.
Per size, three timings, each the median (and range) of several repetitions, each decide() one
cycle later (``now`` advances 1 s), in CPU seconds of this process (the machine is shared:
wall time would count other work):

- (a) full: ``decide()`` over the whole view (today's cycle: every entry rebuilt, admit() run);
- (b) incremental after one new arrival (a job created since the previous cycle);
- (c) incremental after one pod change (a running job's pod finished).
- (d) a quiet round after one arrival: the same cluster but every namespace's quota used up
  by its running jobs (every queued job waits for its own quota) and the arrival in a
  namespace with room, the cycle's hint of what changed given (``ClusterView.changed``).

Every incremental round is checked against the full rebuild of the same view and ``now``
(verdicts, queue view, quotas, invalid): equal, or the script fails.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from report import write_section  # benchmarks/ is on sys.path when run as a script

from finetune_api.job import API_VERSION, KIND, FineTuneJob
from finetune_api.labels import ATTEMPT_LABEL, RANK_LABEL
from finetune_api.times import rfc3339
from finetune_operator.admission import AdmissionRound, ClusterView
from finetune_operator.jobs.decide import NativeAdmitter, build_snapshot
from finetune_operator.settings import OperatorSettings
from finetune_operator.slim import SlimNode, SlimPod, SlimQuota

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
GPU = "nvidia.com/gpu"
CLASSES = {"finetune-low": 100, "finetune-normal": 1000, "finetune-high": 10_000,
           "finetune-critical": 100_000}
BANDS = list(CLASSES)
SETTINGS = OperatorSettings(allowed_priority_classes=BANDS)
SIZES = (1_000, 5_000, 20_000)


def job_body(name: str, ns: str, uid: str, cls: str, gpus: int, nodes: int, created: dt.datetime,
             status: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    resources: dict[str, Any] = {"gpus": gpus, "nodes": nodes, "cpu": "4", "memory": "16Gi"}
    if rng.random() < 0.1:
        resources["nodeSelector"] = {"pool": rng.choice(["a", "b"])}
    spec: dict[str, Any] = {
        "model": {"name": "tiny-llama",
                  "source": {"pvc": {"claimName": "models", "path": "tiny-llama"}}},
        "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}},
                    "format": "messages"},
        "method": "lora", "training": {"maxSteps": 20, "epochs": 1}, "resources": resources,
        "checkpoint": {"intervalSteps": 10, "keep": 2, "storage": {"size": "20Gi"}},
        "priorityClassName": cls}
    if rng.random() < 0.3:
        spec["activeDeadlineSeconds"] = rng.choice([1800, 3600, 7200])
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": ns, "uid": uid, "generation": 1,
                         "creationTimestamp": rfc3339(created)},
            "spec": spec, "status": status}


@dataclass
class Cluster:
    """The caches' view, editable between cycles (new objects for changed jobs and pods, as
    the watch caches make them)."""

    jobs: dict[str, FineTuneJob] = field(default_factory=dict)
    pods: dict[str, list[SlimPod]] = field(default_factory=dict)
    nodes: list[SlimNode] = field(default_factory=list)
    quotas: list[SlimQuota] = field(default_factory=list)
    made: int = 0

    def view(self) -> ClusterView:
        ours = [p for ps in self.pods.values() for p in ps]
        return ClusterView(jobs=list(self.jobs.values()), pods_by_uid=dict(self.pods),
                           classes=CLASSES, nodes=self.nodes, active_pods=ours,
                           quotas=self.quotas)


def pod(job: FineTuneJob, rank: int, node: str, phase: str = "Running") -> SlimPod:
    m = job.metadata
    return {"metadata": {"name": f"{m.name}-{rank}", "namespace": m.namespace,
                         "uid": f"{m.uid}-p{rank}",
                         "labels": {ATTEMPT_LABEL: "1", RANK_LABEL: str(rank)},
                         "ownerReferences": [{"kind": KIND, "uid": m.uid, "controller": True}]},
            "spec": {"nodeName": node,
                     "containers": [{"resources": {"requests": {GPU: job.spec.resources.gpus}}}]},
            "status": {"phase": phase, "conditions": [], "containerStatuses": []}}


def queued_job(c: Cluster, rng: random.Random, namespaces: int, now: dt.datetime,
               ns: str | None = None, gpus: int | None = None) -> FineTuneJob:
    i = c.made
    c.made += 1
    cls = rng.choices(BANDS[:3], weights=[40, 40, 20])[0]  # a critical backlog would preempt
    gang = rng.random() < 0.05
    created = now - dt.timedelta(seconds=rng.randint(0, 90 * 60))
    status = {"phase": "Queued", "effectivePriorityClass": cls,
              "queuedSince": rfc3339(created), "firstQueuedAt": rfc3339(created)}
    return FineTuneJob.from_body(job_body(
        f"job-{i:05d}", ns or f"team-{rng.randrange(namespaces):03d}", f"q{i}", cls,
        gpus or rng.choice([1, 1, 2, 4, 8]), rng.choice([2, 4]) if gang and not gpus else 1,
        created, status, rng))


def scenario(queued: int, namespaces: int = 100, seed: int = 1,
             quota_bound: bool = False) -> Cluster:
    """``quota_bound``: every namespace's GPU quota is what its running jobs use (so every
    queued job waits for its quota), and one more namespace, ``open``, has room."""
    rng = random.Random(seed)
    n_nodes = min(1000, max(200, queued // 20))
    c = Cluster()
    free = {}
    for i in range(n_nodes):
        name = f"node-{i:04d}"
        free[name] = 8
        c.nodes.append({"metadata": {"name": name, "labels": {"pool": "ab"[i % 2]}},
                        "spec": {"taints": [], "unschedulable": False},
                        "status": {"allocatable": {GPU: 8}, "ready": "True"}})
    names = sorted(free)
    target, used = int(0.95 * 8 * n_nodes), 0
    used_by_ns: dict[str, int] = {}
    while used < target:  # running jobs, one pod each, bound
        gpus = rng.choice([1, 2, 2, 4, 4, 8])
        fits = [n for n in rng.sample(names, 20) if free[n] >= gpus]
        if not fits:
            continue
        free[fits[0]] -= gpus
        used += gpus
        i = c.made
        c.made += 1
        cls = rng.choice(BANDS[:3])
        ns = f"team-{rng.randrange(namespaces):03d}"
        started = NOW - dt.timedelta(minutes=rng.randint(1, 600))
        status = {"phase": "Running", "attempt": 1, "effectivePriorityClass": cls,
                  "startTime": rfc3339(started), "admittedAt": rfc3339(started),
                  "checkpoint": {"step": 10, "savedAt": rfc3339(started + dt.timedelta(
                      minutes=rng.randint(0, 30)))}}
        job = FineTuneJob.from_body(job_body(f"run-{i:05d}", ns, f"r{i}", cls, gpus, 1,
                                             started, status, rng))
        c.jobs[job.metadata.uid] = job
        c.pods[job.metadata.uid] = [pod(job, 0, fits[0])]
        used_by_ns[ns] = used_by_ns.get(ns, 0) + gpus
    for _ in range(queued):
        job = queued_job(c, rng, namespaces, NOW)
        c.jobs[job.metadata.uid] = job
    key = f"requests.{GPU}"
    for ns in [f"team-{n:03d}" for n in range(namespaces)] + ["open"]:
        hard = used_by_ns.get(ns, 0) if quota_bound and ns != "open" else 200
        c.quotas.append({"metadata": {"name": "gpus", "namespace": ns},
                         "spec": {"hard": {key: hard}},
                         "status": {"hard": {key: hard}, "used": {key: used_by_ns.get(ns, 0)}}})
    return c


def measure_quiet(size: int, repeat: int) -> dict[str, list[float]]:
    """(d): the quota-bound cluster, one arrival per cycle in the namespace with room, the
    cycle's hint of what changed given (a quiet round), the previous arrival's admission landed
    meanwhile (its status Admitted, its pod bound where admitted); each checked against a full
    rebuild (the queue view's effective priorities aside: a quiet round keeps the last full
    round's)."""
    c = scenario(size, quota_bound=True)
    rng = random.Random(size + 1)
    inc = NativeAdmitter(OperatorSettings(allowed_priority_classes=BANDS, quiet_rounds=True))
    now = NOW
    inc.decide(c.view(), now)  # the full round a quiet one builds on
    out: dict[str, list[float]] = {"quiet": []}
    landed: set[str] = set()
    for _ in range(repeat):
        now += dt.timedelta(seconds=1)
        job = queued_job(c, rng, 1, now, ns="open", gpus=1)
        c.jobs[job.metadata.uid] = job
        view = replace(c.view(), changed=frozenset({job.metadata.uid, *landed}),
                       capacity_changed=False, quotas_changed=False)
        rounds = inc.quiet_rounds
        t0 = time.process_time()
        got = inc.decide(view, now)
        out["quiet"].append(time.process_time() - t0)
        verdict = got.by_uid.get(job.metadata.uid)
        if inc.quiet_rounds != rounds + 1 or verdict is None or not verdict.admit:
            raise SystemExit(f"the arrival at {size} jobs was not decided in a quiet round")
        if not same(got, Full().decide(view, now), aged=False):
            raise SystemExit(f"a quiet round differs from the full rebuild at {size} jobs")
        landed = {admitted(c, job, verdict.placement[0], now)}
    return out


def admitted(c: Cluster, job: FineTuneJob, node: str, now: dt.datetime) -> str:
    """The admission written back (status Admitted, attempt 1) and its pod bound on ``node``
    (new objects, as the caches make them)."""
    body = job.model_dump(by_alias=True, exclude_none=True)
    body["status"] = {**body["status"], "phase": "Admitted", "attempt": 1,
                      "admittedAt": rfc3339(now)}
    landed = FineTuneJob.from_body(body)
    c.jobs[landed.metadata.uid] = landed
    c.pods[landed.metadata.uid] = [pod(landed, 0, node, phase="Pending")]
    return landed.metadata.uid


def same(a: AdmissionRound, b: AdmissionRound, aged: bool = True) -> bool:
    def rows(r: AdmissionRound) -> Any:
        return r.queue_view if aged else {
            ns: [{k: v for k, v in row.items() if k != "effectivePriority"} for row in rows]
            for ns, rows in r.queue_view.items()}

    return (a.by_uid, rows(a), a.quotas, a.invalid) == (b.by_uid, rows(b), b.quotas, b.invalid)


def finish_one(c: Cluster, rng: random.Random) -> None:
    """A running job's pod finished (a new pod object, as the cache stores it)."""
    uid = rng.choice(sorted(u for u, ps in c.pods.items()
                            if ps and ps[0]["status"]["phase"] == "Running"))
    old = c.pods[uid][0]
    c.pods[uid] = [{**old, "status": {**old["status"], "phase": "Succeeded"}}]


def spread(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return f"{statistics.median(ms):.1f} ms ({ms[0]:.1f}-{ms[-1]:.1f})"


class Full:
    """Today's cycle: every decide() a full rebuild (a fresh admitter holds no entries)."""

    def decide(self, view: ClusterView, now: dt.datetime) -> AdmissionRound:
        return NativeAdmitter(SETTINGS).decide(view, now)


def measure(size: int, repeat: int) -> dict[str, list[float]]:
    c = scenario(size)
    rng = random.Random(size)
    full = Full()
    inc = NativeAdmitter(SETTINGS)
    now = NOW
    out: dict[str, list[float]] = {"full": [], "arrival": [], "pod": [], "entries": []}
    inc.decide(c.view(), now)  # warm: the first cycle builds every entry
    events: dict[str, Callable[[], None]] = {
        "full": lambda: None,
        "arrival": lambda: c.jobs.__setitem__(*(lambda j: (j.metadata.uid, j))(
            queued_job(c, rng, 100, now))),
        "pod": lambda: finish_one(c, rng)}
    for _ in range(repeat):
        for kind, event in events.items():
            now += dt.timedelta(seconds=1)
            event()
            view = c.view()
            if kind == "full":
                t0 = time.process_time()
                full.decide(view, now)
                out[kind].append(time.process_time() - t0)
                t0 = time.process_time()  # of which: every job's snapshot entry
                build_snapshot(list(view.jobs), view.pods_by_uid, view.classes, SETTINGS,
                               view.nodes, view.active_pods, view.quotas, now)
                out["entries"].append(time.process_time() - t0)
                inc.decide(view, now)  # keeps the incremental admitter one cycle behind
                continue
            t0 = time.process_time()
            got = inc.decide(view, now)
            out[kind].append(time.process_time() - t0)
            if not same(got, full.decide(view, now)):
                raise SystemExit(f"incremental decide() differs from the full rebuild at "
                                 f"{size} jobs after {kind}")
    return out


def profile(size: int) -> None:
    c = scenario(size)
    view = c.view()
    full = Full()
    prof = cProfile.Profile()
    prof.enable()
    full.decide(view, NOW + dt.timedelta(seconds=1))
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    p.add_argument("--markdown", action="store_true", help="write BENCHMARKS.md's section")
    p.add_argument("--profile", type=int, metavar="JOBS", help="cProfile one full decide()")
    args = p.parse_args(argv)
    if args.profile:
        profile(args.profile)
        return 0
    rows, medians, quiet_m = [], {}, {}
    for size in args.sizes:
        got = measure(size, args.repeat)
        full_m = statistics.median(got["full"])
        arr_m, pod_m = statistics.median(got["arrival"]), statistics.median(got["pod"])
        medians[size] = arr_m
        share = statistics.median(got["entries"]) / full_m
        quiet = measure_quiet(size, args.repeat)["quiet"]
        quiet_m[size] = statistics.median(quiet)
        rows.append(f"| {size:,} | {spread(got['full'])} | {share:.0%} | "
                    f"{spread(got['arrival'])} | "
                    f"{full_m / arr_m:.1f}x | {spread(got['pod'])} | {full_m / pod_m:.1f}x | "
                    f"{spread(quiet)} | {full_m / quiet_m[size]:.0f}x |")
        print(rows[-1], file=sys.stderr)
    sizes = sorted(medians)
    growth = ""
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        ratio = medians[hi] / medians[lo]
        verdict = "sub-linear" if ratio < hi / lo else "not sub-linear"
        growth = (f"- (b) grows {ratio:.1f}x from {lo:,} to {hi:,} queued jobs ({hi / lo:.0f}x "
                  f"the jobs, 5x the nodes): {verdict}. Each job's entry is reused while its "
                  "object and pods are unchanged, but admit() still walks every waiting job "
                  "each cycle (aging moves effective priorities with the time) and one verdict "
                  f"is worded per job: about {medians[hi] / hi * 1e6:.0f} us per queued job at "
                  f"{hi:,}.")
        q_ratio = quiet_m[hi] / quiet_m[lo]
        growth += (f"\n- (d) grows {q_ratio:.1f}x over the same range: "
                   f"{'sub-linear' if q_ratio < hi / lo else 'not sub-linear'}. A quiet round "
                   "(jobs/decide.py ``NativeAdmitter``) considers only the jobs that changed, on "
                   "the state the last full walk left, while every waiting job is held by its "
                   "own namespace's quota; what is left per job is a lookup of the previous "
                   "verdicts. Every quiet round was checked equal to a full rebuild (the queue "
                   "view's effective priorities aside, which a quiet round keeps from the last "
                   "full round, at most 120 s old).")
    lines = [
        f"One decide() over the cached view: queued jobs in 100 namespaces, 200-1,000 nodes of "
        f"8 GPUs about 95% held by running jobs; CPU time, median (min-max) of "
        f"{args.repeat} cycles, each incremental one checked equal to the full rebuild",
        "| queued jobs | (a) full rebuild | of which snapshot entries | (b) incremental, one "
        "arrival | (a)/(b) | (c) incremental, one pod finished | (a)/(c) | (d) quiet round, "
        "one arrival, every waiting job held by its quota | (a)/(d) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *([growth] if growth else []),
        f"- command: `.venv/bin/python benchmarks/bench_decide.py --repeat {args.repeat}"
        + (f" --sizes {' '.join(map(str, args.sizes))}" if tuple(args.sizes) != SIZES else "")
        + " --markdown`",
    ]
    print("\n".join(lines))
    if args.markdown:
        write_section("Admission cycle cost (incremental decide)", "bench_decide.py", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
