"""Correctness audits, stage timelines, write attribution and run statistics of the scale
benchmark: pure functions over what the watches and the API server's audit log recorded, the
same for both systems (benchmarks/bench_scale.py runs them; tests/unit/test_scale_audit.py
checks them on hand-made timelines)."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scale import measure

# the chart's non-preempting bands (charts/finetune-operator/values.yaml), the same names and
# values as Kueue WorkloadPriorityClasses on the Kueue side
PRIORITIES = {"finetune-high": 7500, "finetune-normal": 5000, "finetune-low": 2500}
STAGES = ("decided", "unsuspended", "pod_created", "pod_bound", "pod_running")

# the API server's audit policy of the benchmark cluster: writes only, metadata only
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata",
               "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
              {"level": "None"}]}


def priority_of(index: int, namespaces: int, mix: list[str]) -> str:
    """The class of the index-th job created (round-robin over namespaces): within each
    namespace the classes alternate in creation order (high, normal, low, high, ...)."""
    return mix[(index // namespaces) % len(mix)]


@dataclass
class Seen:
    """One job as the benchmark saw it: its create's return and its decision (monotonic)."""

    ns: str
    name: str
    priority: int
    applied: float
    decided: float | None


def order_violations(jobs: Iterable[Seen], grace: float,
                     quota: int | None = None, resolution: float = 1.0) -> dict[str, Any]:
    """Jobs decided while another job of the same namespace that should go first waited.

    A job J decided at d is a priority violation when a job K of the same namespace with a
    higher priority existed `grace` seconds before d and was still undecided `grace` seconds
    after max(d, F), F being when the namespace's `quota`-th decision came (its quota full;
    without a quota F = d): before the quota is full every job that exists fits, so K losing
    no place to J is no violation, however the decisions' writes interleave. A FIFO violation
    is the same with K of the same priority created more than `resolution` seconds before J
    (creationTimestamps, which both systems order by, have 1 s resolution: within a second
    the API server's order need not be the order the creates returned). (All jobs ask 1 GPU:
    when J fits, K fits. The grace absorbs watch lag; it is stated next to the figure.)"""
    by_ns: dict[str, list[Seen]] = defaultdict(list)
    for j in jobs:
        by_ns[j.ns].append(j)
    prio = fifo = 0
    examples: list[str] = []
    for ns, items in by_ns.items():
        times = sorted(j.decided for j in items if j.decided is not None)
        full = times[quota - 1] if quota and len(times) >= quota else math.inf
        for j in items:
            if j.decided is None:
                continue
            waited_until = max(j.decided, full if quota else j.decided) + grace
            for k in items:
                if k is j or k.applied + grace > j.decided:
                    continue
                if k.decided is not None and k.decided <= waited_until:
                    continue
                if k.priority > j.priority:
                    prio += 1
                elif k.priority == j.priority and k.applied + resolution < j.applied:
                    fifo += 1
                else:
                    continue
                if len(examples) < 5:
                    kd = "never" if k.decided is None else f"at {k.decided - k.applied:.1f} s"
                    examples.append(
                        f"{ns}/{j.name} (prio {j.priority}, created {j.applied - k.applied:.1f} "
                        f"s after) decided {j.decided - k.applied:.1f} s after {ns}/{k.name} "
                        f"(prio {k.priority}) was created, which was decided {kd}")
    return {"priority": prio, "fifo": fifo, "examples": examples}


def stage_stats(applied: dict[str, float], stages: dict[str, dict[str, float]],
                t0: float) -> dict[str, Any]:
    """Per stage: p50/p99 of (stage time - create's return) over the jobs that reached it,
    their count, and the time from t0 to the last of them."""
    out: dict[str, Any] = {}
    for stage, times in stages.items():
        lat = [times[j] - a for j, a in applied.items() if j in times]
        reached = [times[j] for j in applied if j in times]
        out[stage] = {"n": len(lat), "p50": measure.percentile(lat, 50),
                      "p99": measure.percentile(lat, 99),
                      "all": (max(reached) - t0) if reached else math.nan}
    return out


def first_n_seconds(times: Iterable[float], n: int, t0: float) -> float:
    """Seconds from t0 to the n-th earliest time (nan when fewer than n)."""
    s = sorted(times)
    return (s[n - 1] - t0) if n and len(s) >= n else math.nan


# ---------------------------------------------------------------- writes by client


def agent_of(user_agent: str) -> str:
    """A client's name from its User-Agent: `kube-controller-manager/v1.x (..) kubernetes/
    abc/job-controller` -> `kube-controller-manager/job-controller`; `kueue/v0.17.0 ..` ->
    `kueue`; the operator's Python client -> `finetune-operator`."""
    if not user_agent:
        return "unknown"
    head = user_agent.split("/", 1)[0]
    if head == "OpenAPI-Generator":
        return "finetune-operator"
    if head == "kube-controller-manager":
        tail = user_agent.rsplit("/", 1)[-1]
        return f"{head}/{tail.rsplit(':', 1)[-1]}" if " " not in tail else head
    return head


def audit_writes(path: Path, since: float | None = None, until: float | None = None,
                 ) -> Counter[tuple[str, str]]:
    """Writes in the API server's audit log by (client, resource[/subresource]), between two
    wall-clock times (time.time()); requests the API server answered with an error included
    (they cost it the same)."""
    out: Counter[tuple[str, str]] = Counter()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("stage") != "ResponseComplete":
            continue
        ts = ev.get("stageTimestamp") or ""
        if since is not None or until is not None:
            t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
            if (since is not None and t < since) or (until is not None and t > until):
                continue
        ref = ev.get("objectRef") or {}
        res = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource")
                                         else "")
        out[(agent_of(ev.get("userAgent", "")), res)] += 1
    return out


def by_agent(c: Counter[tuple[str, str]], leases: bool = False) -> Counter[str]:
    """Writes per client; Lease writes (kwok's node heartbeats, leader Leases) left out unless
    leases is True."""
    out: Counter[str] = Counter()
    for (agent, res), n in c.items():
        if leases or not measure.is_lease(res):
            out[agent] += n
    return out


# ---------------------------------------------------------------- repeated runs


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not (
        isinstance(v, float) and math.isnan(v))


def aggregate(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(medians, ranges) over runs of one phase's results: numbers (also inside nested dicts
    such as latency percentiles) become their median and (min, max); anything else is the
    first run's."""
    if not runs:
        return {}, {}
    med: dict[str, Any] = {}
    rng: dict[str, Any] = {}
    for key in runs[0]:
        vals: list[Any] = [r[key] for r in runs if key in r]
        nums: list[float] = [v for v in vals if _num(v)]
        if nums and len(nums) == len(vals):
            med[key] = statistics.median(nums)
            rng[key] = (min(nums), max(nums))
        elif vals and all(isinstance(v, dict) and not isinstance(v, Counter) for v in vals) \
                and not key.endswith("_counts"):
            med[key], rng[key] = aggregate(vals)
        else:
            med[key] = vals[0]
    return med, rng
