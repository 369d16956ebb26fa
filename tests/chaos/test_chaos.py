"""Chaos: 200 jobs with mixed priorities, preemptions and completions on kwok nodes while the
operator is SIGKILLed every 5-20 s (seeded) and restarted, and kube-apiserver and etcd are each
restarted once. The test plays the kubelet (completes running pods after a seeded run time).

At the end every job Succeeded, and a watch-based audit saw no duplicate pod for any (job,
attempt, rank), never more GPUs bound to a node than it has, no failure, and per job every
attempt but the last counted as a preemption and seen evicted, unless it was preempted before
its pods were created (the operator killed between admission and pod creation).
Seed: FINETUNE_CHAOS_SEED (default 7)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from finetune_dev.devcluster import cluster as dc

from ..kube import Cluster, wait_for
from ..operator_proc import OperatorProcess, finish_pod, ftj
from .audit import SELECTOR, Audit, run_audit

pytestmark = pytest.mark.chaos

SEED = int(os.environ.get("FINETUNE_CHAOS_SEED", "7"))
JOBS = int(os.environ.get("FINETUNE_CHAOS_JOBS", "200"))
NODES, GPUS = 4, 8
BANDS = [("finetune-low", 35), ("finetune-normal", 35), ("finetune-high", 15),
         ("finetune-critical", 15)]


def _statuses(cluster: Cluster, namespaces: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    api = client.CustomObjectsApi(cluster.api)
    for ns in namespaces:
        for j in api.list_namespaced_custom_object("finetune.dev", "v1alpha1", ns,
                                                   "finetunejobs", _request_timeout=10)["items"]:
            out[f"{ns}/{j['metadata']['name']}"] = j.get("status") or {}
    return out


def test_chaos(cluster: Cluster, crd_installed, priority_classes, make_namespace, gpu_nodes,
               tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(SEED)
    sel = gpu_nodes(NODES, GPUS)
    nodes = [n["metadata"]["name"] for n in json.loads(cluster.kubectl(
        "get", "nodes", "-l", ",".join(f"{k}={v}" for k, v in sel.items()), "-o", "json")
        .stdout)["items"]]
    namespaces = [make_namespace() for _ in range(4)]
    stop = threading.Event()
    audit = Audit(set(namespaces), {n: GPUS for n in nodes})
    run_audit(cluster.api, audit, stop)
    op = OperatorProcess(cluster, tmp_path, {"POD_NAME": f"chaos-{SEED}"}).start()

    run_for: dict[str, float] = {}
    jobs: list[tuple[str, dict]] = []
    for i in range(JOBS):
        band = rng.choices([b for b, _ in BANDS], [w for _, w in BANDS])[0]
        gpus = rng.choice([1, 1, 2, 2, 4])
        ns = namespaces[i % len(namespaces)]
        name = f"c{i:03d}"
        run_for[f"{ns}/{name}"] = rng.uniform(1.0, 4.0)
        jobs.append((ns, ftj(name, gpus, band, sel)))

    # the kubelet's part: complete a pod once it ran its seeded time
    running_since: dict[str, float] = {}
    completed = 0

    def kubelet() -> None:
        nonlocal completed
        core = client.CoreV1Api(cluster.api)
        while not stop.is_set():
            try:
                pods = core.list_pod_for_all_namespaces(label_selector=SELECTOR,
                                                        _request_timeout=10).items
            except Exception:
                time.sleep(0.5)
                continue
            now = time.monotonic()
            for p in pods:
                m = p.metadata
                if m.namespace not in audit.namespaces or m.deletion_timestamp \
                        or p.status.phase != "Running":
                    continue
                since = running_since.setdefault(m.uid, now)
                if now - since >= run_for[f"{m.namespace}/{m.labels['finetune.dev/job']}"]:
                    try:
                        finish_pod(cluster, m.namespace, m.name, 0, "Completed",
                                   {"reason": "Completed", "finalStep": 100})
                        completed += 1
                    except AssertionError:
                        pass  # API server restarting or the pod just went: next round
            time.sleep(0.5)

    # chaos: operator SIGKILLs at seeded 5-20 s intervals, one API server and one etcd restart
    kills = 0
    restarted: list[str] = []

    def chaos() -> None:
        nonlocal kills
        start = time.monotonic()
        plan = {"kube-apiserver": 25.0, "etcd": 55.0}
        next_kill = start + rng.uniform(5, 20)
        while not stop.is_set():
            now = time.monotonic()
            for comp, at in list(plan.items()):
                if now - start >= at:
                    del plan[comp]
                    dc.restart_component(cluster.cfg, comp)
                    restarted.append(comp)
            if now >= next_kill:
                op.kill()
                kills += 1
                stop.wait(rng.uniform(0.5, 2.0))
                op.start(leader=False)
                next_kill = time.monotonic() + rng.uniform(5, 20)
            stop.wait(0.2)

    threads = [threading.Thread(target=kubelet, daemon=True),
               threading.Thread(target=chaos, daemon=True)]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        for k in range(0, len(jobs), 20):  # arrivals in waves of 20, every 3 s
            for ns, body in jobs[k:k + 20]:
                wait_for("apply", lambda ns=ns, body=body: cluster.kubectl(
                    "apply", "-n", ns, "-f", "-", input=json.dumps(body), check=False)
                    .returncode == 0, 60, interval=1)
            time.sleep(3)

        def all_done() -> dict[str, dict[str, Any]] | None:
            try:
                st = _statuses(cluster, namespaces)
            except Exception:
                return None
            done = [k for k, s in st.items() if s.get("phase") in ("Succeeded", "Failed")]
            return st if len(done) == JOBS else None

        statuses = wait_for("every job finished", all_done, 900, interval=2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        op.stop()
    wall = time.monotonic() - started
    phases = {s.get("phase") for s in statuses.values()}
    preemptions = sum(int(s.get("preemptions") or 0) for s in statuses.values())
    failures = sum(int(s.get("failures") or 0) for s in statuses.values())
    dups = audit.duplicates()
    print(f"\nchaos (seed {SEED}): {JOBS} jobs in {wall:.0f}s; operator SIGKILLs {kills}; "
          f"restarted {restarted}; pods completed by the test {completed}; audit events "
          f"{audit.events}, relists {audit.relists}; preemptions {preemptions}, evictions "
          f"observed {len(audit.evicted)}; failures {failures}; duplicate pods {len(dups)}; "
          f"max GPUs bound per node {max(audit.max_bound.values() or [0])}/{GPUS}")
    assert restarted == ["kube-apiserver", "etcd"] and kills >= 3
    assert phases == {"Succeeded"}, {k: s.get("phase") for k, s in statuses.items()
                                     if s.get("phase") != "Succeeded"}
    assert dups == {}, dups
    assert audit.overcommit == [], audit.overcommit[:5]
    assert failures == 0
    # every attempt but the last ended in a preemption; one whose pods existed was seen evicted
    # (deleted before finishing); one preempted right after its admission (no pod created yet,
    # e.g. the operator was killed in between) has no pod to evict
    attempts = _attempts(statuses, audit)
    assert [a.problem for a in attempts.values() if a.problem] == []
    unstarted = sum(a.without_pods for a in attempts.values())
    print(f"preempted attempts without a pod: {unstarted}")
    assert preemptions == len(audit.evicted) + unstarted


@dataclass
class JobAttempts:
    preemptions: int
    final: int
    evicted: list[int]
    with_pods: list[int]

    @property
    def without_pods(self) -> int:
        return len(set(range(1, self.final)) - set(self.with_pods))

    @property
    def problem(self) -> str:
        earlier = set(range(1, self.final))
        if self.preemptions != self.final - 1:
            return f"{self.preemptions} preemption(s) counted over {self.final} attempt(s)"
        if not set(self.evicted) <= earlier:
            return f"attempts {self.evicted} evicted, the last ({self.final}) succeeded"
        if (earlier & set(self.with_pods)) - set(self.evicted):
            return f"attempts {self.with_pods} had pods, only {self.evicted} were seen evicted"
        return ""


def _attempts(statuses: dict[str, dict[str, Any]], audit: Audit) -> dict[str, JobAttempts]:
    """Per job: its counts against the attempts the audit saw pods of, and saw evicted."""
    out = {}
    for key, st in statuses.items():
        ns, name = key.split("/")
        out[key] = JobAttempts(
            preemptions=int(st.get("preemptions") or 0), final=int(st.get("attempt") or 0),
            evicted=sorted(int(a) for n, j, a in audit.evicted if (n, j) == (ns, name)),
            with_pods=sorted({int(k[2]) for k in audit.uids if k[:2] == (ns, name)}))
    return out
