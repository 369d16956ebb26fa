"""Trace-driven simulator of the admission policy: the real admit() in simulated time, against
strict FIFO and greedy priority-order first-fit, on the same trace.

    .venv/bin/python benchmarks/simulate.py                      # 3 seeds x loads 0.9 and 1.1
    .venv/bin/python benchmarks/simulate.py --markdown           # also write BENCHMARKS.md's
                                                                 # "Scheduling simulator" section
    .venv/bin/python benchmarks/simulate.py --trace history.jsonl  # replay a real history
    .venv/bin/python benchmarks/simulate.py --write-trace t.jsonl --seed 1 --load 1.0
    .venv/bin/python benchmarks/simulate.py --sharing            # whole GPUs vs memory shares
    .venv/bin/python benchmarks/simulate.py --sharing --markdown  # also write BENCHMARKS.md's
                                                                 # "GPU sharing (simulated)"

The operator's semantics (what the simulated "ours" does, with admit() deciding):
- admit() runs after every event (arrival, job end, end of a preemption's save) and every
  `--tick` seconds while work waits (aging moves on between events);
- an admitted job holds its GPUs from admission: `restart_s` of startup (pod start, model load,
  resume) without progress, then its work; it ends when its work is done;
- a preempted job keeps its GPUs for `save_s` (graceful stop: SIGTERM, save, exit), loses no
  steps (the save works), goes back to the queue keeping its first queue entry (aging is not
  reset), and pays `restart_s` again at its next start; preemption overhead is every GPU-second
  a job holds beyond one uninterrupted run;
- quotas are per-namespace ResourceQuotas on requests.nvidia.com/gpu (used = GPUs of running
  and stopping jobs); gangs take `nodes` distinct nodes at once; min runtime, preempting bands
  and aging come from the Policy (the operator's defaults unless changed);
- running jobs report an ETA once past their startup (a resumed job knows it at once); a queued
  job's expected run time is its `estimate_s` from the trace (e.g. its activeDeadlineSeconds),
  or, once it has run, its remaining work plus restart.

Trace format (JSONL, one object per line; what a cluster's job history exports to):
    {"cluster": {"nodes": 8, "gpus_per_node": 8, "quotas": {"team-0": 32, ...}}}   # optional
    {"name": "j1", "namespace": "team-0", "submit_s": 0, "gpus": 4, "nodes": 1,
     "priority_class": "finetune-normal", "duration_s": 7200, "estimate_s": 9000}
`submit_s`: seconds from the trace's start; `duration_s`: run time on its GPUs without
interruptions (startup excluded); `estimate_s` (optional): an upper bound the job declares;
`gpu_memory` (optional): bytes per GPU the job uses (`--sharing` draws it from `PROFILES` through
finetune_api.memory's estimate when absent); the cluster's `gpu_memory_gib` (default 80): memory
of each GPU.

Sharing (`--sharing`): the same trace twice per policy, with whole GPUs and with every 1-GPU
single-pod job taking a memory share (`resources.gpuMemory: auto`, its estimate) packed by the
operator's sharing core (finetune_operator.admission.sharing: best fit by memory, never over a
device, whole jobs on devices without shares, quota by memory fraction rounded up to 1/100 GPU);
GPU memory utilisation (memory the jobs use / memory of all GPUs) and jobs completed per day
for both. See `SHARING_NOTES` for how the two policies take shares.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from finetune_api import memory
from finetune_api.spec import FineTuneJobSpec
from finetune_operator.admission import (
    NodeInfo,
    Policy,
    QueuedJob,
    Quota,
    RunningJob,
    Snapshot,
    admit,
    queue_order,
)
from finetune_operator.admission import sharing as sh

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GPU = "nvidia.com/gpu"
# the chart's bands (charts/finetune-operator/values.yaml)
BANDS = {"finetune-critical": 10_000, "finetune-high": 7500, "finetune-normal": 5000,
         "finetune-low": 2500}
BAND_ORDER = list(BANDS)
STARVATION_BOUND_S = 24 * 3600.0
GiB = 2**30


@dataclass(frozen=True)
class Cluster:
    nodes: int = 8
    gpus_per_node: int = 8
    quotas: dict[str, int] = field(default_factory=dict)  # namespace -> GPUs (requests)
    gpu_memory_gib: float = 80.0  # memory of each GPU (A100/H100 80GB)

    @property
    def gpu_memory(self) -> int:
        return int(self.gpu_memory_gib * GiB)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class TraceJob:
    name: str
    namespace: str
    submit_s: float
    gpus: int
    nodes: int
    priority_class: str
    duration_s: float
    estimate_s: float | None = None
    gpu_memory: int | None = None  # bytes per GPU the job uses (its estimate)


@dataclass(frozen=True)
class Trace:
    cluster: Cluster
    jobs: tuple[TraceJob, ...]


# --- traces -----------------------------------------------------------------------------------

def generate(seed: int, load: float, jobs: int = 400, cluster: Cluster | None = None,
             namespaces: int = 4, quota: int = 32, median_h: float = 2.0, sigma: float = 1.0,
             sizes: Iterable[tuple[int, float]] = ((1, 0.35), (2, 0.25), (4, 0.2), (8, 0.2)),
             multi_node_share: float = 0.05,
             bands: Iterable[tuple[str, float]] = (("finetune-critical", 0.05),
                                                   ("finetune-high", 0.2),
                                                   ("finetune-normal", 0.45),
                                                   ("finetune-low", 0.3)),
             estimate_share: float = 1.0, estimate_slack: tuple[float, float] = (1.0, 2.0),
             ) -> Trace:
    """Poisson arrivals at `load` x the cluster's GPU-seconds; lognormal run times (median
    `median_h` hours); sizes 1/2/4/8 GPUs; `multi_node_share` of the 8-GPU jobs are gangs of 2
    nodes; `estimate_share` of the jobs declare an upper bound of their run time (slack x)."""
    rng = random.Random(seed)
    base = cluster or Cluster()
    cl = Cluster(base.nodes, base.gpus_per_node,
                 base.quotas or {f"team-{i}": quota for i in range(namespaces)})
    size_v, size_w = zip(*sizes, strict=True)
    band_v, band_w = zip(*bands, strict=True)
    shapes = []
    for _ in range(jobs):
        gpus = rng.choices(size_v, size_w)[0]
        nodes = 2 if gpus == cl.gpus_per_node and rng.random() < multi_node_share else 1
        dur = min(48 * 3600.0, max(300.0, median_h * 3600 * math.exp(rng.gauss(0, sigma))))
        shapes.append((gpus, nodes, dur))
    mean_gpu_s = statistics.fmean(g * n * d for g, n, d in shapes)
    rate = load * cl.gpus / mean_gpu_s  # arrivals per second
    t, out = 0.0, []
    for i, (gpus, nodes, dur) in enumerate(shapes):
        t += rng.expovariate(rate)
        # every draw is made whatever the options, so traces differ only where options do
        declares, slack = rng.random() < estimate_share, rng.uniform(*estimate_slack)
        est = dur * slack if declares else None
        out.append(TraceJob(name=f"job-{i:04d}", namespace=rng.choice(sorted(cl.quotas)),
                            submit_s=round(t, 1), gpus=gpus, nodes=nodes,
                            priority_class=rng.choices(band_v, band_w)[0],
                            duration_s=round(dur, 1),
                            estimate_s=None if est is None else round(est, 1)))
    return Trace(cl, tuple(out))


def write_trace(trace: Trace, path: Path) -> None:
    with path.open("w") as f:
        f.write(json.dumps({"cluster": asdict(trace.cluster)}) + "\n")
        for j in trace.jobs:
            f.write(json.dumps({k: v for k, v in asdict(j).items() if v is not None}) + "\n")


def read_trace(path: Path) -> Trace:
    cluster, jobs = Cluster(), []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if "cluster" in obj:
            cluster = Cluster(**obj["cluster"])
            continue
        try:
            jobs.append(TraceJob(**obj))
        except TypeError as e:
            raise SystemExit(f"{path}:{n}: not a trace job ({e}); see the format in "
                             f"benchmarks/simulate.py") from e
    return Trace(cluster, tuple(sorted(jobs, key=lambda j: (j.submit_s, j.name))))


# --- GPU memory of the jobs (for --sharing) ---------------------------------------------------

# Published config.json values (model cards) of the models the profiles use.
_LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
              "intermediate_size": 11008, "vocab_size": 32000, "num_attention_heads": 32,
              "num_key_value_heads": 32}
MODELS: dict[str, dict[str, object]] = {
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
                     "intermediate_size": 4864, "vocab_size": 151936, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "tie_word_embeddings": True},
    "llama-2-7b": _LLAMA2_7B,
    "llama-3-8b": {**_LLAMA2_7B, "intermediate_size": 14336, "vocab_size": 128256,
                   "num_key_value_heads": 8},
    "llama-2-13b": {**_LLAMA2_7B, "hidden_size": 5120, "num_hidden_layers": 40,
                    "intermediate_size": 13824, "num_attention_heads": 40,
                    "num_key_value_heads": 40},
    "llama-2-70b": {**_LLAMA2_7B, "hidden_size": 8192, "num_hidden_layers": 80,
                    "intermediate_size": 28672, "num_attention_heads": 64,
                    "num_key_value_heads": 8},
}


@dataclass(frozen=True)
class Profile:
    """What a job trains, enough for finetune_api.memory's estimate (bf16, sdpa attention,
    LoRA r 16 on all linear layers; QLoRA 4-bit nf4)."""

    model: str
    method: str  # lora | qlora | full
    batch: int = 1
    cutoff: int = 512
    checkpointing: bool = False
    zero: int = 0  # DeepSpeed ZeRO stage; 0: none

    def spec(self, gpus: int, nodes: int) -> FineTuneJobSpec:
        hub = {"hub": {"repo": f"org/{self.model}"}}
        d: dict[str, object] = {
            "model": {"name": self.model, "source": hub}, "method": self.method,
            "dataset": {"source": hub, "cutoffLen": self.cutoff},
            "training": {"batchSize": self.batch,
                         "gradientCheckpointing": self.checkpointing},
            "resources": {"gpus": gpus, "nodes": nodes}}
        if self.method == "qlora":
            d["quantization"] = {"bits": 4}
        if self.zero:
            d["distributed"] = {"deepspeed": {"stage": self.zero}}
        return FineTuneJobSpec.model_validate(d)

    def memory(self, gpus: int, nodes: int) -> int:
        """Bytes per GPU: the operator's estimate for this job."""
        return memory.estimate_from_config(self.spec(gpus, nodes), MODELS[self.model]).total


# Per GPUs per pod, the jobs drawn (uniformly) for a trace job of that size. 1 GPU: the small
# LoRA/QLoRA fine-tunes of the seeds' "dynamic sharding" (4-46 GiB); several GPUs: data-parallel
# LoRA and ZeRO full fine-tunes sized to their GPUs (22-48 GiB per GPU).
PROFILES: dict[int, tuple[Profile, ...]] = {
    1: (Profile("qwen2.5-0.5b", "lora"),
        Profile("llama-2-7b", "qlora"),
        Profile("llama-2-7b", "qlora", 4, 2048, True),
        Profile("llama-2-13b", "qlora"),
        Profile("llama-2-7b", "lora"),
        Profile("llama-3-8b", "lora", 2, 1024, True),
        Profile("llama-2-7b", "lora", 4, 2048, True),
        Profile("llama-3-8b", "qlora", 4, 2048, True),
        Profile("llama-2-13b", "lora"),
        Profile("llama-2-70b", "qlora", 1, 512, True)),
    2: (Profile("llama-2-7b", "lora", 8, 2048, True),
        Profile("llama-2-13b", "lora", 4, 2048, True),
        Profile("llama-3-8b", "lora", 4, 2048, True)),
    4: (Profile("llama-2-13b", "lora", 8, 2048, True),
        Profile("llama-2-7b", "full", 4, 2048, True, zero=2),
        Profile("llama-2-7b", "full", 4, 2048, True, zero=3)),
    8: (Profile("llama-2-7b", "full", 8, 2048, True, zero=3),
        Profile("llama-2-13b", "full", 4, 2048, True, zero=3),
        Profile("llama-2-70b", "lora", 4, 2048, True, zero=3)),
}


def with_memory(trace: Trace, seed: int) -> Trace:
    """The trace with `gpu_memory` filled in where a job has none: a profile of its size drawn
    from its own seeded stream (the trace's other draws are untouched), estimated by
    finetune_api.memory. A size without profiles takes the nearest smaller one's."""
    rng = random.Random(seed * 1_000_003 + 17)
    cache: dict[tuple[Profile, int, int], int] = {}
    sizes = sorted(PROFILES)
    out = []
    for j in trace.jobs:
        size = max((s for s in sizes if s <= j.gpus), default=sizes[0])
        prof = rng.choice(PROFILES[size])  # drawn for every job, so draws stay aligned
        if j.gpu_memory is None:
            key = (prof, j.gpus, j.nodes)
            if key not in cache:
                cache[key] = prof.memory(j.gpus, j.nodes)
            j = TraceJob(**{**asdict(j), "gpu_memory": cache[key]})
        out.append(j)
    return Trace(trace.cluster, tuple(out))


# --- the simulated cluster --------------------------------------------------------------------

@dataclass
class Costs:
    save_s: float = 60.0  # graceful stop: finish the step, save, exit
    restart_s: float = 120.0  # pod start, model load, resume (paid by every start)
    tick_s: float = 300.0  # the operator's periodic pass while work waits
    # --sharing: a shared job's run time x this (compute contention with its neighbours;
    # 1.0: none, the upper bound of what sharing gains)
    share_slowdown: float = 1.0


@dataclass
class Job:
    t: TraceJob
    uid: str
    remaining: float  # seconds of work left
    first_queued: float
    queued_at: float | None = None
    waited: float = 0.0
    held: float = 0.0  # GPU-seconds held in all attempts
    started: float | None = None  # this attempt's admission
    placement: tuple[str, ...] = ()
    stopping_until: float | None = None
    attempts: int = 0
    preemptions: int = 0
    end: float | None = None
    impossible: bool = False
    shared: bool = False  # takes a memory share of one device (--sharing)
    device: int | None = None  # the device index of its share while it runs
    rate: float = 1.0  # work per second of this attempt (1 / share_slowdown when shared)

    @property
    def total_gpus(self) -> int:
        return self.t.gpus * self.t.nodes


class Scheduler:
    """One policy deciding over the simulated cluster (subclasses: FIFO, greedy, admit())."""

    name = ""
    sharing = False  # 1-GPU single-pod jobs take memory shares (admission.sharing)

    def decide(self, sim: Sim, now: float) -> tuple[list[tuple[Job, tuple[str, ...]]],
                                                    list[Job], list[Job]]:
        """(admissions with placement, victims, impossible jobs)."""
        raise NotImplementedError


def _first_fit(free: dict[str, int], gpus: int, nodes: int) -> tuple[str, ...] | None:
    picked = tuple(n for n in free if free[n] >= gpus)[:nodes]
    return picked if len(picked) == nodes else None


class _Baseline(Scheduler):
    strict = False

    def order(self, jobs: list[Job]) -> list[Job]:
        raise NotImplementedError

    def decide(self, sim: Sim, now: float) -> tuple[list[tuple[Job, tuple[str, ...]]],
                                                    list[Job], list[Job]]:
        free = sim.free_by_node()
        quota = sim.quota_free()
        out: list[tuple[Job, tuple[str, ...]]] = []
        impossible = [j for j in sim.queue if sim.never_fits(j)]
        for job in self.order([j for j in sim.queue if j not in impossible]):
            ns = job.t.namespace
            place = _first_fit(free, job.t.gpus, job.t.nodes)
            if place is not None and quota.get(ns, 1 << 30) >= job.total_gpus:
                for n in place:
                    free[n] -= job.t.gpus
                if ns in quota:
                    quota[ns] -= job.total_gpus
                out.append((job, place))
            elif self.strict:
                break
        return out, [], impossible


class Fifo(_Baseline):
    name = "FIFO"
    strict = True  # head-of-line blocking

    def order(self, jobs: list[Job]) -> list[Job]:
        return sorted(jobs, key=lambda j: (j.first_queued, j.t.name))


class Greedy(_Baseline):
    name = "greedy"

    def order(self, jobs: list[Job]) -> list[Job]:
        return sorted(jobs, key=lambda j: (-BANDS[j.t.priority_class], j.first_queued,
                                           j.t.name))


class Ours(Scheduler):
    """The operator: admit() over a Snapshot built as the operator's shell builds it."""

    def __init__(self, name: str = "ours", policy: Policy | None = None,
                 reset_age_on_requeue: bool = False, use_eta: bool = True) -> None:
        self.name = name
        self.policy = policy or Policy()
        self.reset_age = reset_age_on_requeue  # the behaviour before aging survived requeues
        self.use_eta = use_eta
        self.calls = 0
        self.seconds = 0.0

    def decide(self, sim: Sim, now: float) -> tuple[list[tuple[Job, tuple[str, ...]]],
                                                    list[Job], list[Job]]:
        at = T0 + timedelta(seconds=now)
        queued = [self._queued(j, sim.costs) for j in sim.queue]
        running = [self._running(j, now, sim.costs) for j in sim.running.values()]
        snap = Snapshot(queued=queued, running=running, nodes=sim.node_infos(),
                        quotas=sim.quotas(), policy=self.policy)
        t = time.perf_counter()
        d = admit(snap, at)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        jobs = {j.uid: j for j in sim.queue} | sim.running
        return ([(jobs[a.job.uid], a.placement) for a in d.admit],
                [jobs[p.victim.uid] for p in d.preempt],
                [jobs[i.job.uid] for i in d.impossible])

    def _queued(self, j: Job, costs: Costs) -> QueuedJob:
        tj = j.t
        first = j.queued_at if self.reset_age and j.queued_at is not None else j.first_queued
        expected: float | None = tj.estimate_s
        if j.attempts and self.use_eta:  # a previous attempt's progress tells its ETA
            expected = j.remaining + costs.restart_s
        return QueuedJob(namespace=tj.namespace, name=tj.name, uid=j.uid,
                         priority=BANDS[tj.priority_class], priority_class=tj.priority_class,
                         gpus=tj.gpus, nodes=tj.nodes, gpu_resource=GPU,
                         created_at=T0 + timedelta(seconds=tj.submit_s),
                         first_queued_at=T0 + timedelta(seconds=first),
                         queued_since=T0 + timedelta(seconds=j.queued_at or first),
                         expected_seconds=expected if self.use_eta else None)

    def _running(self, j: Job, now: float, costs: Costs) -> RunningJob:
        tj = j.t
        assert j.started is not None
        run_from = j.started + costs.restart_s
        ckpt = None
        if now > run_from:  # periodic checkpoints every 30 min of progress
            ckpt = run_from + (now - run_from) // 1800 * 1800
        eta = None
        if self.use_eta and j.stopping_until is None and (now >= run_from or j.attempts > 1):
            eta = T0 + timedelta(seconds=max(now, run_from) + j.remaining
                                 - max(0.0, now - run_from))
        return RunningJob(namespace=tj.namespace, name=tj.name, uid=j.uid,
                          priority=BANDS[tj.priority_class], priority_class=tj.priority_class,
                          gpus=tj.gpus, nodes=tj.nodes, gpu_resource=GPU,
                          started_at=T0 + timedelta(seconds=j.started),
                          last_checkpoint_at=None if ckpt is None else T0 + timedelta(seconds=ckpt),
                          preempting=j.stopping_until is not None, placement=j.placement,
                          expected_end_at=eta)


def _take_share(sim: Sim, job: Job, devices: list[sh.Device],
                units: dict[str, int]) -> tuple[list[sh.Device], dict[str, int], str | None]:
    """Pack one shared job with the sharing core: the devices and quota after it, and the node
    it took (None: it waits)."""
    got = sh.pack(devices, [sim.shared_job(job)], units)
    if not got.placed:
        return devices, units, None
    p = got.placed[0]
    sim.assign[job.uid] = p.index
    assert got.quota_free is not None
    return list(got.devices), dict(got.quota_free), p.node


class SharingGreedy(Greedy):
    """The priority queue (greedy) with memory sharing, in one walk: a shared job is packed
    by memory (best fit), a whole job takes whole devices (first fit) that carry no share;
    quota in hundredths of a GPU."""

    name = "greedy + sharing"
    sharing = True

    def decide(self, sim: Sim, now: float) -> tuple[list[tuple[Job, tuple[str, ...]]],
                                                    list[Job], list[Job]]:
        devices = sim.devices()
        units = sim.quota_units_free()
        out: list[tuple[Job, tuple[str, ...]]] = []
        impossible = [j for j in sim.queue if sim.never_fits(j)]
        for job in self.order([j for j in sim.queue if j not in impossible]):
            ns = job.t.namespace
            if job.shared:
                devices, units, node = _take_share(sim, job, devices, units)
                if node is not None:
                    out.append((job, (node,)))
                continue
            place = _first_fit(sh.whole_free(devices), job.t.gpus, job.t.nodes)
            need = sh.to_units(job.total_gpus)
            if place is not None and units.get(ns, 1 << 40) >= need:
                for n in place:
                    devices = list(sh.take_whole(devices, n, job.t.gpus))
                if ns in units:
                    units[ns] -= need
                out.append((job, place))
        return out, [], impossible


class SharingOurs(Ours):
    """admit() with memory sharing, as far as the simulator can without changing admit():
    admit() decides the whole jobs over the devices that carry no share (shared jobs' devices
    count as taken, shares as their rounded-up quota); then the shared jobs, in admit()'s queue
    order, are packed by memory on what is left. Shares are never preempted (admit() does not
    see them as running jobs)."""

    sharing = True

    def __init__(self, name: str = "ours + sharing", policy: Policy | None = None) -> None:
        super().__init__(name, policy)

    def decide(self, sim: Sim, now: float) -> tuple[list[tuple[Job, tuple[str, ...]]],
                                                    list[Job], list[Job]]:
        at = T0 + timedelta(seconds=now)
        whole = [j for j in sim.queue if not j.shared]
        shared = [j for j in sim.queue if j.shared]
        running = [self._running(j, now, sim.costs) for j in sim.running.values()
                   if not j.shared]
        snap = Snapshot(queued=[self._queued(j, sim.costs) for j in whole], running=running,
                        nodes=sim.node_infos(), quotas=sim.quotas(), policy=self.policy)
        t = time.perf_counter()
        d = admit(snap, at)
        jobs = {j.uid: j for j in sim.queue} | sim.running
        out = [(jobs[a.job.uid], a.placement) for a in d.admit]
        devices, units = sim.devices(), sim.quota_units_free()
        for job, place in out:
            for n in place:
                devices = list(sh.take_whole(devices, n, job.t.gpus))
            if job.t.namespace in units:
                units[job.t.namespace] -= sh.to_units(job.total_gpus)
        by_uid = {j.uid: j for j in shared}
        for q in queue_order([self._queued(j, sim.costs) for j in shared], at, self.policy):
            job = by_uid[q.uid]
            devices, units, node = _take_share(sim, job, devices, units)
            if node is not None:
                out.append((job, (node,)))
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return (out, [jobs[p.victim.uid] for p in d.preempt],
                [jobs[i.job.uid] for i in d.impossible])


class Sim:
    def __init__(self, trace: Trace, scheduler: Scheduler, costs: Costs) -> None:
        self.trace, self.sched, self.costs = trace, scheduler, costs
        self.cluster = trace.cluster
        self.node_names = [f"node-{i:02d}" for i in range(self.cluster.nodes)]
        self.queue: list[Job] = []
        self.running: dict[str, Job] = {}
        self.jobs = [Job(t=t, uid=f"u{i}", remaining=t.duration_s, first_queued=t.submit_s)
                     for i, t in enumerate(trace.jobs)]
        self.events: list[tuple[float, int, str, str]] = []
        self.seq = 0
        # integrals
        self.alloc_s = 0.0
        self.wait_time = 0.0
        self.alloc_wait_s = 0.0
        self.quota_wait_time = 0.0  # while a waiting job has room in its namespace's quota
        # idle GPU-seconds while work waits, by cause: no waiting job fits the free GPUs
        # (sizes/fragmentation), the ones that fit are over quota, or one fits and waits (held)
        self.idle_by_cause: dict[str, float] = defaultdict(float)
        self.alloc_quota_wait_s = 0.0
        self.last_t = 0.0
        # sharing: which jobs take a memory share, the device index the scheduler gave each
        # admitted one, and GPU memory used (bytes x seconds) in all and while work waits
        self.sharing = scheduler.sharing
        self.capacity = self.cluster.gpu_memory
        for j in self.jobs:
            j.shared = self.sharing and sh.is_shared(j.t.gpus, j.t.nodes, j.t.gpu_memory) \
                and (j.t.gpu_memory or 0) <= self.capacity
        self.assign: dict[str, int] = {}
        self.mem_s = 0.0
        self.mem_wait_s = 0.0
        self.peak_shares = 0  # most shares one device held at once (checked at admissions)

    # --- views for the schedulers --------------------------------------------------------------

    def free_by_node(self) -> dict[str, int]:
        """GPUs a whole job may take per node (with sharing: devices without a share)."""
        if self.sharing:
            return sh.whole_free(self.devices())
        free = {n: self.cluster.gpus_per_node for n in self.node_names}
        for j in self.running.values():
            for n in j.placement:
                free[n] -= j.t.gpus
        return free

    def memory_of(self, j: Job) -> int:
        """Bytes one of the job's GPUs holds (its estimate; a whole GPU when unknown)."""
        return min(self.capacity, j.t.gpu_memory or self.capacity)

    def shared_job(self, j: Job) -> sh.SharedJob:
        assert j.shared and j.t.gpu_memory is not None
        return sh.SharedJob(key=f"{j.t.namespace}/{j.t.name}", memory=j.t.gpu_memory,
                            namespace=j.t.namespace)

    def devices(self) -> list[sh.Device]:
        """Every GPU as the sharing core sees it: the shares of running shared jobs on their
        devices, whole jobs holding the lowest other indices of their nodes (whole GPUs are
        interchangeable, so only their count per node matters)."""
        shares: dict[tuple[str, int], list[sh.Share]] = defaultdict(list)
        whole: dict[str, int] = defaultdict(int)
        for j in self.running.values():
            if j.shared:
                assert j.device is not None
                shares[(j.placement[0], j.device)].append(sh.Share(
                    job=j.uid, memory=self.memory_of(j), namespace=j.t.namespace))
            else:
                for n in j.placement:
                    whole[n] += j.t.gpus
        out = []
        for n in self.node_names:
            held = whole[n]
            for i in range(self.cluster.gpus_per_node):
                got = tuple(shares.get((n, i), ()))
                take = not got and held > 0
                held -= take
                out.append(sh.Device(node=n, index=i, capacity=self.capacity, shares=got,
                                     held=take))
            if held > 0:
                raise AssertionError(f"node {n}: whole jobs hold {held} GPU(s) more than the "
                                     "devices without a share")
        return out

    def quota_units_free(self) -> dict[str, int]:
        """Quota left per namespace in hundredths of a GPU: a whole GPU counts 100, a share
        its memory fraction of the device rounded up (sharing.quota_charge)."""
        used: dict[str, int] = defaultdict(int)
        for j in self.running.values():
            used[j.t.namespace] += (sh.quota_charge(self.memory_of(j), self.capacity) if j.shared
                                    else sh.to_units(j.total_gpus))
        return {ns: sh.to_units(hard) - used[ns] for ns, hard in self.cluster.quotas.items()}

    def gpus_in_use(self) -> int:
        """GPUs allocated: whole jobs' GPUs plus the devices that carry a share."""
        whole = sum(j.total_gpus for j in self.running.values() if not j.shared)
        return whole + len({(j.placement[0], j.device) for j in self.running.values()
                            if j.shared})

    def node_infos(self) -> list[NodeInfo]:
        return [NodeInfo(name=n, allocatable={GPU: self.cluster.gpus_per_node}, free={GPU: f})
                for n, f in self.free_by_node().items()]

    def quota_free(self) -> dict[str, int]:
        """Whole GPUs of quota left per namespace (with sharing: what shares leave, rounded
        down)."""
        if self.sharing:
            return {ns: u // sh.QUOTA_UNITS for ns, u in self.quota_units_free().items()}
        used: dict[str, int] = defaultdict(int)
        for j in self.running.values():
            used[j.t.namespace] += j.total_gpus
        return {ns: hard - used[ns] for ns, hard in self.cluster.quotas.items()}

    def quotas(self) -> list[Quota]:
        if self.sharing:  # shares count their rounded-up fraction, in whole GPUs for admit()
            return [Quota(namespace=ns, resource=GPU, hard=h, used=h - free, name="gpu")
                    for (ns, h), free in zip(self.cluster.quotas.items(),
                                             self.quota_free().values(), strict=True)]
        used: dict[str, int] = defaultdict(int)
        for j in self.running.values():
            used[j.t.namespace] += j.total_gpus
        return [Quota(namespace=ns, resource=GPU, hard=h, used=used[ns], name="gpu")
                for ns, h in self.cluster.quotas.items()]

    def never_fits(self, j: Job) -> bool:
        return (j.t.gpus > self.cluster.gpus_per_node or j.t.nodes > self.cluster.nodes
                or j.total_gpus > self.cluster.quotas.get(j.t.namespace, 1 << 30))

    # --- the event loop ------------------------------------------------------------------------

    def _push(self, t: float, kind: str, uid: str) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, uid))

    def _advance(self, t: float) -> None:
        dt = t - self.last_t
        alloc = (self.gpus_in_use() if self.sharing
                 else sum(j.total_gpus for j in self.running.values()))
        self.alloc_s += alloc * dt
        mem = sum(self.memory_of(j) * j.total_gpus for j in self.running.values())
        self.mem_s += mem * dt
        if self.queue:
            self.mem_wait_s += mem * dt
            self.wait_time += dt
            self.alloc_wait_s += alloc * dt
            room = self.quota_free()
            if any(room.get(j.t.namespace, 1 << 30) >= j.total_gpus for j in self.queue):
                self.quota_wait_time += dt
                self.alloc_quota_wait_s += alloc * dt
            free = self.free_by_node()
            largest_share = max((d.free for d in self.devices()), default=0) \
                if self.sharing else 0
            fit = [j for j in self.queue if (self.memory_of(j) <= largest_share if j.shared
                   else _first_fit(free, j.t.gpus, j.t.nodes) is not None)]
            cause = ("fragmentation" if not fit else "held" if any(
                room.get(j.t.namespace, 1 << 30) >= j.total_gpus for j in fit) else "quota")
            self.idle_by_cause[cause] += (self.cluster.gpus - alloc) * dt
        for j in self.queue:
            j.waited += dt
        for j in self.running.values():
            if not j.shared:  # shares are never preempted: no overhead to count
                j.held += j.total_gpus * dt
        self.last_t = t

    def run(self) -> Sim:
        by_uid = {j.uid: j for j in self.jobs}
        for j in self.jobs:
            self._push(j.t.submit_s, "arrive", j.uid)
        now = 0.0
        while self.events or self.queue:
            next_event = self.events[0][0] if self.events else math.inf
            t = min(next_event, now + self.costs.tick_s) if self.queue else next_event
            if math.isinf(t):
                break
            self._advance(t)
            now = t
            while self.events and self.events[0][0] <= now:
                _, _, kind, uid = heapq.heappop(self.events)
                self._event(kind, by_uid[uid], now)
            self._decide(now)
        self.makespan = max((j.end for j in self.jobs if j.end is not None), default=0.0)
        return self

    def _event(self, kind: str, j: Job, now: float) -> None:
        if kind == "arrive":
            j.queued_at = now
            self.queue.append(j)
        elif kind == "end" and j.uid in self.running and j.stopping_until is None:
            if j.end is None and abs(self._end_at(j) - now) < 1e-6:
                del self.running[j.uid]
                j.remaining, j.end = 0.0, now
        elif kind == "stopped" and j.stopping_until is not None and j.stopping_until <= now:
            del self.running[j.uid]
            j.stopping_until, j.started, j.placement, j.device = None, None, (), None
            j.queued_at = now
            self.queue.append(j)

    def _end_at(self, j: Job) -> float:
        assert j.started is not None
        return j.started + self.costs.restart_s + j.remaining / j.rate

    def _decide(self, now: float) -> None:
        if not self.queue:
            return
        admits, victims, impossible = self.sched.decide(self, now)
        for j in impossible:
            j.impossible = True
            self.queue.remove(j)
        for v in victims:
            assert v.started is not None and v.stopping_until is None
            # no lost steps
            v.remaining -= max(0.0, now - (v.started + self.costs.restart_s)) * v.rate
            v.remaining = max(0.0, v.remaining)
            v.preemptions += 1
            v.stopping_until = now + self.costs.save_s
            self._push(v.stopping_until, "stopped", v.uid)
        for j, placement in admits:
            self.queue.remove(j)
            j.started, j.placement, j.attempts = now, placement, j.attempts + 1
            if j.shared:
                j.device = self.assign.pop(j.uid)
                j.rate = 1.0 / self.costs.share_slowdown
            self.running[j.uid] = j
            self._push(self._end_at(j), "end", j.uid)
        if admits:
            self.check(now)

    def check(self, now: float) -> None:
        """No node gives more GPUs than it has, no quota more than its hard limit, gangs on
        distinct nodes: a scheduler that breaks these is wrong, not fast. With sharing also: no
        device's shares sum over its memory, no share on a device a whole job holds (devices()
        raises), no quota over in hundredths."""
        over = {n: f for n, f in self.free_by_node().items() if f < 0}
        quota = {ns: f for ns, f in self.quota_free().items() if f < 0}
        split = [j.t.name for j in self.running.values() if len(set(j.placement)) != j.t.nodes]
        if self.sharing:
            self.peak_shares = max([self.peak_shares,
                                    *(len(d.shares) for d in self.devices())])
            over |= {f"{d.node}/{d.index}": d.capacity - d.used for d in self.devices()
                     if d.used > d.capacity}
            quota |= {ns: u for ns, u in self.quota_units_free().items() if u < 0}
        if over or quota or split:
            raise AssertionError(f"{self.sched.name} at t={now:.0f} s: nodes over capacity "
                                 f"{over}, quotas over {quota}, gangs not on distinct nodes "
                                 f"{split}")


# --- figures ----------------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass
class Result:
    policy: str
    alloc_while_waiting: float
    alloc_while_quota_allows: float  # while a waiting job has room in its namespace quota
    alloc: float
    makespan_h: float
    waits: dict[str, tuple[float, float, float]]  # band -> (p50, p95, max) minutes
    idle: dict[str, float]  # share of GPU-time while work waits, by cause
    preemptions: int
    overhead_gpu_h: float
    starved: int
    impossible: int
    sim_seconds: float
    # GPU memory the jobs use (their estimates) / memory of every GPU: over the makespan, and
    # while work waits; jobs completed per day while jobs arrive; jobs that took a share;
    # mean total queued time of all jobs (minutes)
    memory: float = 0.0
    memory_while_waiting: float = 0.0
    memory_of_allocated: float = 0.0  # memory used / memory of the GPUs allocated
    jobs_per_day: float = 0.0
    shared: int = 0
    mean_wait_min: float = 0.0


def _per_day(done: list[Job], trace: Trace) -> float:
    """Jobs completed per day while jobs keep arriving (first to last submission): what the
    cluster gets through under its offered load; the tail after the last arrival (the last long
    jobs draining) is left out, it measures the trace's end rather than the policy."""
    first, last = min(j.submit_s for j in trace.jobs), max(j.submit_s for j in trace.jobs)
    if last <= first:
        return 0.0
    return sum(1 for j in done if j.end is not None and j.end <= last) / ((last - first) / 86400)


def measure(trace: Trace, sched: Scheduler, costs: Costs) -> Result:
    t = time.perf_counter()
    sim = Sim(trace, sched, costs).run()
    elapsed = time.perf_counter() - t
    done = [j for j in sim.jobs if j.end is not None]
    waits: dict[str, tuple[float, float, float]] = {}
    for band in BAND_ORDER:
        w = [j.waited / 60 for j in done if j.t.priority_class == band]
        waits[band] = (_pct(w, 0.5), _pct(w, 0.95), max(w, default=0.0))
    overhead = sum(j.held - j.total_gpus * (j.t.duration_s + costs.restart_s) for j in done
                   if not j.shared)
    span = sim.makespan - min(j.submit_s for j in trace.jobs)
    memory_total = trace.cluster.gpus * sim.capacity
    return Result(
        policy=sched.name,
        alloc_while_waiting=sim.alloc_wait_s / (trace.cluster.gpus * sim.wait_time)
        if sim.wait_time else 1.0,
        alloc_while_quota_allows=sim.alloc_quota_wait_s
        / (trace.cluster.gpus * sim.quota_wait_time) if sim.quota_wait_time else 1.0,
        alloc=sim.alloc_s / (trace.cluster.gpus * span) if span else 0.0,
        makespan_h=span / 3600,
        waits=waits,
        idle={k: v / (trace.cluster.gpus * sim.wait_time) if sim.wait_time else 0.0
              for k, v in sim.idle_by_cause.items()},
        preemptions=sum(j.preemptions for j in sim.jobs),
        overhead_gpu_h=max(0.0, overhead) / 3600,
        starved=sum(1 for j in done if j.waited > STARVATION_BOUND_S),
        impossible=sum(1 for j in sim.jobs if j.impossible),
        sim_seconds=elapsed,
        memory=sim.mem_s / (memory_total * span) if span else 0.0,
        memory_of_allocated=sim.mem_s / (sim.alloc_s * sim.capacity) if sim.alloc_s else 0.0,
        memory_while_waiting=sim.mem_wait_s / (memory_total * sim.wait_time)
        if sim.wait_time else 0.0,
        jobs_per_day=_per_day(done, trace),
        shared=sum(1 for j in sim.jobs if j.shared),
        mean_wait_min=statistics.fmean(j.waited / 60 for j in done) if done else 0.0)


OURS_POLICY = Policy()  # main() may change it (--share, --reserve-after)

SCHEDULERS: dict[str, Callable[[], Scheduler]] = {
    "ours": lambda: Ours("ours", OURS_POLICY),
    "ours-unbounded": lambda: Ours("ours, before (unbounded reservations, no ETA, age reset)",
                                   Policy(max_reserved_idle_share=None),
                                   reset_age_on_requeue=True, use_eta=False),
    "greedy": Greedy,
    "fifo": Fifo,
}


# --sharing: per policy, (whole GPUs, memory shares) on the same trace
SHARING: dict[str, tuple[Callable[[], Scheduler], Callable[[], Scheduler]]] = {
    "greedy": (Greedy, SharingGreedy),
    "ours": (lambda: Ours("ours", OURS_POLICY),
             lambda: SharingOurs("ours + sharing", OURS_POLICY)),
}
# The figures of the platform this project replaces ("the seeds", issue 24), for a shared
# 80 GB GPU pool: GPU memory utilisation and jobs completed per day, priority queue on whole
# cards -> "dynamic sharding" (several small LoRA/QLoRA jobs per GPU).
SEEDS_MEMORY = (0.82, 0.91)
SEEDS_JOBS_PER_DAY = (15.0, 18.0)


def sharing_table(rows: list[tuple[int, float, Result, Result]]) -> list[str]:
    """One row per (seed, load, policy): whole GPUs -> memory shares."""
    out = ["| seed | load | policy | jobs sharing | GPU memory used of the GPUs in use, whole "
           "-> shared | ... of all GPUs while work waits | GPUs allocated while work waits | "
           "jobs per day | makespan h | mean wait min | waited > 24 h |",
           "|" + "---|" * 11]
    for seed, load, whole, shared in rows:
        out.append(
            f"| {seed} | {load} | {whole.policy} | {shared.shared} | "
            f"{whole.memory_of_allocated:.1%} -> {shared.memory_of_allocated:.1%} | "
            f"{whole.memory_while_waiting:.1%} -> {shared.memory_while_waiting:.1%} | "
            f"{whole.alloc_while_waiting:.1%} -> {shared.alloc_while_waiting:.1%} | "
            f"{whole.jobs_per_day:.1f} -> {shared.jobs_per_day:.1f} "
            f"({shared.jobs_per_day / whole.jobs_per_day - 1:+.1%}) | "
            f"{whole.makespan_h:.1f} -> {shared.makespan_h:.1f} | "
            f"{whole.mean_wait_min:.0f} -> {shared.mean_wait_min:.0f} | "
            f"{whole.starved} -> {shared.starved} |")
    return out


def sharing_summary(rows: list[tuple[int, float, Result, Result]]) -> list[str]:
    """Per policy, the means over the runs, next to the seeds' figures."""
    lines = []
    for policy in dict.fromkeys(w.policy for _, _, w, _ in rows):
        mine = [(w, s) for _, _, w, s in rows if w.policy == policy]
        used, mem, jpd = (
            (statistics.fmean(getattr(w, f) for w, _ in mine),
             statistics.fmean(getattr(s, f) for _, s in mine))
            for f in ("memory_of_allocated", "memory_while_waiting", "jobs_per_day"))
        lines.append(
            f"- {policy}, mean of {len(mine)} runs: GPU memory used of the GPUs in use "
            f"{used[0]:.1%} -> {used[1]:.1%} ({(used[1] - used[0]) * 100:+.1f} points), of "
            f"all GPUs while work waits {mem[0]:.1%} -> {mem[1]:.1%} "
            f"({(mem[1] - mem[0]) * 100:+.1f} points); jobs per "
            f"day {jpd[0]:.1f} -> {jpd[1]:.1f} ({jpd[1] / jpd[0] - 1:+.1%}). The seeds: "
            f"{SEEDS_MEMORY[0]:.0%} -> {SEEDS_MEMORY[1]:.0%} "
            f"({(SEEDS_MEMORY[1] - SEEDS_MEMORY[0]) * 100:+.0f} points), "
            f"{SEEDS_JOBS_PER_DAY[0]:.0f} -> {SEEDS_JOBS_PER_DAY[1]:.0f} jobs per day "
            f"({SEEDS_JOBS_PER_DAY[1] / SEEDS_JOBS_PER_DAY[0] - 1:+.0%}).")
    return lines


def table(rows: list[tuple[int, float, Result]]) -> list[str]:
    head = ("| seed | load | policy | alloc while waiting | ... quota allows | alloc | "
            "makespan h | "
            + " | ".join(f"{b.removeprefix('finetune-')} wait p50/p95/max min"
                         for b in BAND_ORDER)
            + " | idle while waiting: sizes/quota/held | preemptions | overhead GPU-h | "
            "waited > 24 h |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for seed, load, r in rows:
        waits = " | ".join("{:.0f}/{:.0f}/{:.0f}".format(*r.waits[b]) for b in BAND_ORDER)
        idle = "/".join(f"{r.idle.get(k, 0.0):.1%}" for k in ("fragmentation", "quota", "held"))
        out.append(f"| {seed} | {load} | {r.policy} | {r.alloc_while_waiting:.1%} | "
                   f"{r.alloc_while_quota_allows:.1%} | {r.alloc:.1%} | {r.makespan_h:.1f} | "
                   f"{waits} | {idle} | {r.preemptions} | {r.overhead_gpu_h:.1f} | "
                   f"{r.starved} |")
    return out


def targets(rows: list[tuple[int, float, Result]]) -> list[str]:
    """The simulator's targets for "ours", checked per (seed, load)."""
    lines = []
    by_run: dict[tuple[int, float], dict[str, Result]] = defaultdict(dict)
    for seed, load, r in rows:
        by_run[(seed, load)][r.policy] = r
    for (seed, load), rs in sorted(by_run.items()):
        ours, greedy = rs.get("ours"), rs.get("greedy")
        if ours is None or greedy is None:
            continue
        worse = [b.removeprefix("finetune-") for b in BAND_ORDER
                 if ours.waits[b][1] > greedy.waits[b][1] + 1e-9]
        checks = [
            ("alloc while waiting >= 95%", ours.alloc_while_waiting >= 0.95),
            ("alloc while waiting >= greedy's",
             ours.alloc_while_waiting >= greedy.alloc_while_waiting),
            ("critical p95 wait <= 5 min", ours.waits["finetune-critical"][1] <= 5),
            ("every band's p95 wait <= greedy's" + (f" (not: {', '.join(worse)})"
                                                     if worse else ""), not worse),
            ("no job waited > 24 h", ours.starved == 0),
        ]
        lines.append(f"- seed {seed}, load {load}: " + "; ".join(
            f"{name} {'yes' if ok else 'NO'}" for name, ok in checks))
    return lines


NOTES = [
    "Notes. Placement: a job with an expected run time goes to the nodes whose expected busy "
    "time it extends least, then best fit (so nodes empty out whole for 8-GPU jobs); on seeds "
    "1-40 x both loads (80 runs) this raised ours' allocation while work waits from 90.4% to "
    "91.2% on average (above greedy's on 76 runs, was 71), every band's p95 <= greedy's on 31 "
    "runs (was 27), and cut jobs waiting over 24 h from 629 to 554 (greedy 761). The "
    "simulation binds pods where admit() placed them; the operator leaves binding to the "
    "kube-scheduler. Allocation while work waits stays below 95%; the idle column says where "
    "the rest goes, as shares of GPU-time while work waits: no waiting job fits the free GPUs "
    "(8-GPU and 2x8 jobs waiting while fewer GPUs are free in total, or while the free ones are "
    "spread over nodes; only preempting or migrating running work could use them), the jobs "
    "that fit are over their quota, and a job fits but is held back by the policy "
    "(reservations that backfill cannot fill without delaying them). On seed 2 at 0.9, of "
    "12.2% idle, 2.2 points are times when fewer GPUs are free in total than any waiting job "
    "needs and 6.0 times when enough are free but on no single node, so packing alone could "
    "reach about 93.8% there. Running jobs' ETAs are exact in the simulation (progress-based ETAs "
    "of fixed-step training are close). The p95 waits of the lower bands pay for critical "
    "preemptions and aged reservations, so on some seeds they exceed greedy's. Over load (1.1) "
    "the backlog grows for the whole trace and some jobs wait more than 24 h under every "
    "priority policy; only FIFO bounds the wait, by making every band wait. Default share 0.5: "
    "on seeds 1-6 x loads 0.9 and 1.1 with no job declaring its run time (`--seeds 1 2 3 4 5 6 "
    "--estimate-share 0`), unbounded reservations (`--share -1`) let 33 more jobs wait over "
    "24 h than greedy at load 1.1, the bound 24 fewer; with run times declared, the unbounded "
    "variant allocates about half a point more. \"ours, before\" approximates the policy "
    "before the reservation changes (same code, every aged job reserves, no ETAs, so best-fit "
    "placement, age reset by a requeue).",
]


def _size(text: str) -> tuple[int, float]:
    gpus, _, weight = text.partition(":")
    try:
        return int(gpus), float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give GPUS:WEIGHT, e.g. 1:0.7") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--loads", type=float, nargs="+", default=[0.9, 1.1])
    p.add_argument("--jobs", type=int, default=400)
    p.add_argument("--policies", nargs="+", default=list(SCHEDULERS), choices=list(SCHEDULERS))
    p.add_argument("--trace", type=Path, help="replay this JSONL trace instead of generating")
    p.add_argument("--write-trace", type=Path, help="write the generated trace (first seed "
                   "and load) as JSONL and exit")
    p.add_argument("--estimate-share", type=float, default=1.0,
                   help="share of generated jobs that declare an upper bound of their run time")
    p.add_argument("--save-s", type=float, default=Costs.save_s)
    p.add_argument("--restart-s", type=float, default=Costs.restart_s)
    p.add_argument("--tick-s", type=float, default=Costs.tick_s)
    p.add_argument("--share", type=float, default=Policy.max_reserved_idle_share,
                   help="ours: Policy.max_reserved_idle_share (negative: unbounded)")
    p.add_argument("--reserve-after", type=float, default=None,
                   help="ours: Policy.reserve_after_seconds (default: the aging bound)")
    p.add_argument("--sharing", action="store_true",
                   help="compare whole GPUs with memory shares (greedy and ours) on each trace")
    p.add_argument("--share-slowdown", type=float, default=Costs.share_slowdown,
                   help="--sharing: a shared job's run time x this (compute contention)")
    p.add_argument("--sizes", nargs="+", type=_size, default=None, metavar="GPUS:WEIGHT",
                   help="generated jobs' GPUs per pod and their weights (default "
                   "1:0.35 2:0.25 4:0.2 8:0.2)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    global OURS_POLICY
    OURS_POLICY = Policy(max_reserved_idle_share=None if args.share < 0 else args.share,
                         reserve_after_seconds=args.reserve_after)
    costs = Costs(save_s=args.save_s, restart_s=args.restart_s, tick_s=args.tick_s,
                  share_slowdown=args.share_slowdown)
    extra = {} if args.sizes is None else {"sizes": args.sizes}
    if args.write_trace:
        write_trace(generate(args.seeds[0], args.loads[0], args.jobs,
                             estimate_share=args.estimate_share, **extra), args.write_trace)
        return 0
    runs: list[tuple[int, float, Trace]] = []
    if args.trace:
        runs.append((0, 0.0, read_trace(args.trace)))
    else:
        runs = [(s, load, generate(s, load, args.jobs, estimate_share=args.estimate_share,
                                   **extra))
                for load in args.loads for s in args.seeds]
    if args.sharing:
        return run_sharing(runs, [k for k in args.policies if k in SHARING], costs,
                           args.markdown)
    rows: list[tuple[int, float, Result]] = []
    started = time.perf_counter()
    for seed, load, trace in runs:
        for key in args.policies:
            r = measure(trace, SCHEDULERS[key](), costs)
            rows.append((seed, load, r))
            print(f"seed {seed} load {load} {r.policy}: {r.sim_seconds:.1f} s", file=sys.stderr)
    wall = time.perf_counter() - started
    lines = table(rows)
    checks = targets(rows)
    print("\n".join(lines))
    print("\n".join(checks))
    print(f"{len(rows)} simulations in {wall:.1f} s", file=sys.stderr)
    if args.markdown:
        from report import write_section  # benchmarks/ is on sys.path when run as a script
        c = runs[0][2].cluster
        lead = (f"{len(runs[0][2].jobs)} jobs per trace on {c.nodes} nodes x "
                f"{c.gpus_per_node} GPUs, {len(c.quotas)} namespaces with "
                f"{', '.join(sorted({str(v) for v in c.quotas.values()}))}-GPU quotas; sizes "
                "1/2/4/8 GPUs (5% of 8-GPU jobs are 2-node gangs), lognormal run times "
                "(median 2 h, sigma 1), bands critical/high/normal/low 5/20/45/30%; save "
                f"{costs.save_s:.0f} s, restart {costs.restart_s:.0f} s; "
                f"{len(rows)} simulations in {wall:.0f} s. Waits are the total time queued "
                "(all attempts), in minutes")
        write_section("Scheduling simulator", "simulate.py --markdown",
                      [lead, *lines, "", "The simulator's targets for ours:", "", *checks, "",
                       *NOTES])
    return 0


def run_sharing(runs: list[tuple[int, float, Trace]], policies: list[str], costs: Costs,
                markdown: bool) -> int:
    rows: list[tuple[int, float, Result, Result]] = []
    started = time.perf_counter()
    for seed, load, trace in runs:
        trace = with_memory(trace, seed)
        for key in policies:
            whole, shared = (measure(trace, make(), costs) for make in SHARING[key])
            rows.append((seed, load, whole, shared))
            print(f"seed {seed} load {load} {key}: {whole.sim_seconds + shared.sim_seconds:.1f} s",
                  file=sys.stderr)
    wall = time.perf_counter() - started
    lines, summary = sharing_table(rows), sharing_summary(rows)
    print("\n".join(lines))
    print("\n".join(summary))
    print(f"{2 * len(rows)} simulations in {wall:.1f} s", file=sys.stderr)
    if markdown:
        from report import write_section  # benchmarks/ is on sys.path when run as a script
        c = runs[0][2].cluster
        lead = (f"The Scheduling simulator's traces ({len(runs[0][2].jobs)} jobs each, "
                f"{c.nodes} nodes x {c.gpus_per_node} GPUs of {c.gpu_memory_gib:.0f} GiB), each "
                "job's GPU memory the operator's estimate (finetune_api.memory) of a profile drawn "
                "for its size (`PROFILES`); every 1-GPU job takes a memory share "
                "(`gpuMemory: auto`), packed by finetune_operator.admission.sharing; shared "
                f"jobs' run time x {costs.share_slowdown:g}; {2 * len(rows)} simulations in "
                f"{wall:.0f} s. GPU memory used = the running jobs' estimates / memory of all "
                "GPUs; jobs per day = jobs completed between the first and the last "
                "submission, per day of that window")
        write_section("GPU sharing (simulated)", "simulate.py --sharing --markdown",
                      [lead, *lines, "", *summary, "", *SHARING_NOTES])
    return 0


SHARING_NOTES = [
    "Where ours differs from the seeds' 82% -> 91% and 15 -> 18 jobs a day, and why:",
    "",
    "- **The whole-GPU baseline uses 45% of its cards' memory, not 82%.** Our figure counts "
    "each job's estimate (finetune_api.memory: the peak plus 10% margin) for the profiles in "
    "`PROFILES`: 4-46 GiB for 1-GPU LoRA/QLoRA jobs, 22-48 GiB per GPU for data-parallel LoRA "
    "and ZeRO full fine-tunes, on 80 GiB cards. The seeds do not say how they measured theirs; "
    "memory as nvidia-smi shows it includes what PyTorch's caching allocator keeps reserved, "
    "which grows towards the card, or their jobs were tuned to fill their cards.",
    "- **The gain is about +3 points, not +9,** because only 1-GPU jobs share: they are 35% of "
    "the jobs but 11-13% of the GPU-time in these traces (sizes 1/2/4/8 at "
    "35/25/20/20%). With small jobs dominating (`--sizes 1:0.7 2:0.15 4:0.1 8:0.05`, another "
    "trace) memory used of the GPUs in use goes 40% -> 53% (+13 points).",
    "- **Jobs per day change little at loads 0.9 and 1.1** (+1.5% ours, +2.3% greedy on "
    "average; -0.6% to +6.8% per run): below or near saturation jobs complete about as they "
    "arrive either way, and sharing shows as shorter waits (mean wait 84 -> 32 min on seed 1 at "
    "0.9) and fewer jobs waiting over 24 h. Saturated (`--loads 2.0`) sharing completes +8.9% "
    "(ours) and +8.2% (greedy) more jobs a day; with small jobs dominating and saturated "
    "(`--loads 2.0 --sizes 1:0.7 2:0.15 4:0.1 8:0.05`) +37.5% and +23.0%, where the seeds' "
    "+20% lies. The absolute figures are for 64 GPUs; the seeds' pool size is not known, so "
    "compare the ratios.",
    "- **Shared jobs run at full speed here** (`--share-slowdown 1`), the upper bound: "
    "co-located jobs contend for compute. With each shared job 25% slower "
    "(`--share-slowdown 1.25 --loads 2.0`) the saturated gain is +8.6% (ours) and +6.1% "
    "(greedy), +31.7% and +17.9% with small jobs dominating.",
    "- **greedy + sharing** is the seeds' comparison: the same priority queue, shared jobs "
    "packed by the sharing core and whole jobs on devices without shares in one walk. **ours + "
    "sharing** approximates the policy without changing admit(): admit() decides the whole "
    "jobs over devices without shares, then the shared jobs are packed in its queue order on "
    "what is left; admit()'s reservations for aged large jobs are not visible to the packing, "
    "and shares are never preempted. On seed 2 at 1.1 that costs ours one more job over 24 h "
    "(13 -> 14) and 0.6% jobs per day; taking shares in admit()'s own walk, with its "
    "reservations, is the fix. GPUs allocated while work waits can fall with sharing: small "
    "jobs pack onto fewer devices while the waiting ones need whole devices that are not free.",
    "",
    "The figures quoted above without a table come from the summary lines of "
    "`python benchmarks/simulate.py --sharing` with `--loads 2.0`; `--loads 2.0 --sizes 1:0.7 "
    "2:0.15 4:0.1 8:0.05`; `--sizes 1:0.7 2:0.15 4:0.1 8:0.05`; and `--share-slowdown 1.25` "
    "added to the first two.",
]


if __name__ == "__main__":
    raise SystemExit(main())
