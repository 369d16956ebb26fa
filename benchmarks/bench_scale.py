"""Scale benchmark, side by side in one run: this operator and Kueue v0.17.0 on the same load.

    make bench-scale                                    # 200 nodes x 8 GPUs, 5,000 jobs, 20 ns
    .venv/bin/python benchmarks/bench_scale.py --nodes 200 --jobs 5000 --namespaces 20 \
        --runs 3 --markdown                             # the documented run (median of 3)
    .venv/bin/python benchmarks/bench_scale.py --nodes 20 --jobs 300 --namespaces 4 \
        --cluster-dir /tmp/c-bench --port-offset 400    # reduced, on a cluster of one's own

Each phase runs on a FRESH local control plane of its own (devcluster/scale.py: separate state
directory and ports, so the shared test cluster is never touched), with kwok nodes of 8 GPUs and
one ResourceQuota per namespace (capacity / namespaces GPUs each, so the first `capacity` jobs
fill the cluster exactly). kube-controller-manager runs with `--concurrent-job-syncs`
(--job-syncs, 50: its Job controller creates Kueue's pods) and, like kube-scheduler, without a
client rate limit; the API server writes an audit log of every write (Metadata level), so
writes are attributed per client by User-Agent.

Variants (--variant): `unthrottled` (the headline): Kueue's clientConnection qps 5000 / burst
10000, what kube-controller-manager and kube-scheduler get here, and ours without a client
limit; `qps50`: both at qps 50 / burst 100 (Kueue's shipped default; ours through
FINETUNE_API_QPS / FINETUNE_API_BURST, one token bucket for every call). Kueue logs at
--kueue-log-level (zap; 2 shows client-side throttling past 1 s) and the report counts its
throttling lines. --backlog creates every job with the controller stopped and starts the
clock when it starts. --runs N alternates which side goes first and reports the median and the
range; --markdown refuses to write BENCHMARKS.md from one run unless --allow-single-run.

- ours: the operator process with its default settings; FineTuneJobs of 1 GPU that mount one
  existing checkpoint claim per namespace (`checkpoint.storage.claimName`, so no PVC per job;
  Kueue's Jobs have no storage either);
- kueue: Kueue v0.17.0 built from the Go module proxy (cached), out of cluster, its shipped
  controller concurrency; a ClusterQueue (nominalQuota = the namespace quota) and a LocalQueue
  per namespace; suspended batch/v1 Jobs of one 1-GPU pod with the queue label (no webhook).

Both get the same mixed-priority load (--priority-mix: the chart's non-preempting bands,
alternating within each namespace; Kueue: WorkloadPriorityClasses of the same names and
values). Per job the stage timeline is kept: decision (our `Admitted` condition; Kueue's
Workload `Admitted`), unsuspend (Kueue's Job `suspend=false`), pod created, pod bound, pod
Running. Audited on both sides (scale/audit.py; any count above 0 fails the run with exit code
1 and BENCHMARKS.md is not written): pods per namespace never above its quota (sampled on every
pod event), 0 rejected pod creates (FailedCreate Events, 403s in the controller's log), no
lower-priority job decided while a higher one of its namespace waited, FIFO within a priority,
and both sides decided the same set of jobs.

Per phase: time to fill capacity (first create -> the capacity-th pod Running), apply -> Pod
latency of the jobs admitted while capacity was free (the create call's return -> the pod's
ADDED event on a watch, both on this machine's monotonic clock; creationTimestamps have 1 s
resolution), back-fill (complete N running pods -> N new pods Running), apply -> Pod of
arrivals on free capacity at scale (after the back-fill: 10 more nodes and a namespace with
their GPUs as quota, 80 jobs created one by one at 2/s; the reaction time with every other job
still in the cluster, where the fill's latency is queueing behind a burst), API requests by verb
and resource (the API server's apiserver_request_total, diffed: every client, including kwok,
the scheduler and the controller-manager), the operator's own counter
finetune_api_requests_total where the operator exports it, and the controller's RSS.
Ours alone: writes per job lifecycle (apply -> Succeeded, no preemption; a separate batch of
jobs on the empty cluster before the fill), writes in an idle window, RSS at 10,000 jobs plus
10,000 foreign pods (no GPU requests, on separate non-GPU kwok nodes).

Pods are completed by this script for both systems (kwok's pod-complete stage is not loaded on
the benchmark cluster): a status patch to a terminated container, exit 0, with the trainer's
JSON termination message for ours, as a kubelet would report it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

from report import write_section  # benchmarks/ is on sys.path when run as a script
from scale import audit, kueue, measure
from scale.load import Api, Watch
from scale.track import Decisions, PodTrack

from finetune_dev.devcluster import build
from finetune_dev.devcluster import cluster as dc
from finetune_dev.devcluster import scale as sc

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "finetunejobs.finetune.dev.yaml"
GPU = dc.GPU_RESOURCE
SELECTOR = {"type": "kwok", "nvidia.com/gpu.present": "true"}
OUR_JOB_LABEL = "finetune.dev/job"
KUEUE_JOB_LABEL = "batch.kubernetes.io/job-name"
GROUP_LABEL = "bench.finetune.dev/group"


def log(msg: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, fn: Any, timeout: float, interval: float = 0.5) -> bool:
    """Poll fn until truthy; False (logged, not raised) after timeout: the run reports it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(interval)
    log(f"gave up after {timeout:.0f}s waiting for {what}")
    return False


# ---------------------------------------------------------------- what the watches saw


# ---------------------------------------------------------------- the cluster of a phase

VARIANTS = {  # (Kueue clientConnection qps, burst), (our FINETUNE_API_QPS, _BURST): 0 = none
    "unthrottled": ((5000.0, 10000), (0.0, 0)),
    "qps50": ((50.0, 100), (50.0, 100)),
}


def cluster_config(args: argparse.Namespace) -> dc.ClusterConfig:
    """The benchmark cluster: devcluster/scale.py's, at --cluster-dir / --port-offset when
    given, kube-controller-manager with --concurrent-job-syncs (the Job controller creates
    Kueue's pods) and the API server writing an audit log of every write (who wrote what)."""
    cfg = sc.scale_config(args.cluster_dir)
    if args.port_offset is not None:
        cfg.ports = dc.Ports(**{k: v + args.port_offset for k, v in dc.Ports().all().items()})
    policy = cfg.state_dir / "audit-policy.json"
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    policy.write_text(json.dumps(audit.AUDIT_POLICY))
    extra = dict(cfg.extra_args)
    extra["kube-controller-manager"] = [*extra.get("kube-controller-manager", []),
                                        f"--concurrent-job-syncs={args.job_syncs}"]
    extra["kube-apiserver"] = [*extra.get("kube-apiserver", []),
                               f"--audit-policy-file={policy}",
                               f"--audit-log-path={audit_log_path(cfg)}",
                               "--audit-log-format=json", "--audit-log-maxbackup=0",
                               "--audit-log-maxsize=0"]
    cfg.extra_args = extra
    return cfg


def audit_log_path(cfg: dc.ClusterConfig) -> Path:
    return cfg.state_dir / "audit" / "audit.log"




class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = cluster_config(args)
        self.capacity = args.nodes * args.gpus_per_node
        self.quota = self.capacity // args.namespaces
        self.namespaces = [f"team-{i:02d}" for i in range(args.namespaces)]
        self.api: Api | None = None
        self.results: dict[str, Any] = {}   # the median over runs, per phase
        self.runs: list[dict[str, Any]] = []  # each run's results, per phase
        self.ranges: dict[str, Any] = {}
        self.work = self.cfg.state_dir / "bench"

    def fresh_cluster(self) -> Api:
        log(f"fresh cluster in {self.cfg.state_dir} (apiserver port {self.cfg.ports.apiserver})")
        shutil.rmtree(audit_log_path(self.cfg).parent, ignore_errors=True)
        audit_log_path(self.cfg).parent.mkdir(parents=True)
        sc.fresh(self.cfg)
        self.work.mkdir(parents=True, exist_ok=True)
        api = Api(self.cfg.host, self.cfg.ports.apiserver, self.cfg.state_dir / "pki")
        log(f"creating {self.args.nodes} kwok nodes x {self.args.gpus_per_node} GPUs")
        sc.add_nodes(self.cfg, "gpu", self.args.nodes, self.args.gpus_per_node)
        self.api = api
        return api

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return dc.kubectl(self.cfg, *args, input=input).stdout

    def established(self, crd: str) -> None:
        """Wait for a CRD's Established condition (`kubectl wait` fails when it runs before
        the API server has written any condition)."""
        api = self.api
        assert api
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
        if not wait_until(f"CRD {crd} Established", lambda: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (api.ok("GET", path).get("status") or {}).get("conditions") or []),
                60, 0.5):
            raise RuntimeError(f"CRD {crd} was not Established within 60 s")

    def apiserver_counts(self) -> Counter[tuple[str, str]]:
        assert self.api
        return measure.apiserver_requests(self.api.text("/metrics"))

    def apiserver_writes_to(self, *resources: str) -> int:
        return sum(v for (verb, r), v in self.apiserver_counts().items()
                   if verb in measure.APISERVER_WRITES and r.split("/")[0] in resources)

    def quiet(self, count: Any) -> bool:
        """True when count() did not change over --settle-seconds (longer than the operator's
        60 s coalescing interval, so no deferred status write of earlier changes is pending)."""
        first = count()
        time.sleep(self.args.settle_seconds)
        return bool(count() == first)

    def settle(self, what: str, stable: Any) -> bool:
        return wait_until(what, stable, 3 * self.args.settle_seconds + 60, 0)

    def namespaces_with_quota(self, extra: list[dict] | None = None) -> None:
        assert self.api
        items: list[dict] = []
        for ns in self.namespaces:
            items += [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                {"apiVersion": "v1", "kind": "ResourceQuota",
                 "metadata": {"name": "gpus", "namespace": ns},
                 "spec": {"hard": {f"requests.{GPU}": str(self.quota)}}},
            ]
        self.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": items + (extra or [])}))
        api = self.api
        ok = wait_until("quota status of every namespace", lambda: all(
            (api.ok("GET", f"/api/v1/namespaces/{ns}/resourcequotas/gpus").get("status") or {})
            .get("hard") for ns in self.namespaces), 120, 1)
        if not ok:
            raise RuntimeError("the controller-manager did not fill the ResourceQuota status")

    def create(self, kind_path: str, objs: list[tuple[str, dict]]) -> list[float]:
        """POST objs [(namespace, body)] with the configured concurrency; completion times."""
        assert self.api
        return self.api.many("POST", [(kind_path.format(ns=ns), body) for ns, body in objs],
                             workers=self.args.workers)

    def complete_pods(self, pods: list[str], message: dict | None) -> None:
        """Report each pod's container terminated with exit 0, as the kubelet would."""
        assert self.api
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        msg = json.dumps(message) if message else ""
        body = {"status": {"phase": "Succeeded", "containerStatuses": [{
            "name": "trainer", "image": "example.invalid/trainer:1", "imageID": "",
            "ready": False, "restartCount": 0, "started": False,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": msg,
                                     "startedAt": now, "finishedAt": now}}}]}}
        calls = []
        for key in pods:
            ns, name = key.split("/")
            calls.append((f"/api/v1/namespaces/{ns}/pods/{name}/status", body))
        self.api.many("PATCH", calls, workers=self.args.workers,
                      content_type="application/merge-patch+json")

    # ------------------------------------------------------------ shared measurement steps

    def fill(self, res: dict, track: PodTrack, make: Any, path: str, counters: Any,
             decisions: Decisions, start: Any = None) -> dict[str, float]:
        """Create the jobs round-robin over the namespaces; wait until capacity is Running.

        With --backlog every job is created first and the clock starts when `start()` starts
        the controller (stopped until then); otherwise the controller runs and the clock
        starts at the first create. Per stage (decision, unsuspend, pod created, bound,
        Running) the latency from each job's create (backlog: from the start) is kept."""
        jobs = [(self.namespaces[i % len(self.namespaces)], make(i))
                for i in range(self.args.jobs)]
        with track.lock:
            old = set(track.added)
        before = counters()
        backlog = self.args.backlog and start is not None
        if not backlog and start is not None:
            start()
        t0 = time.monotonic()
        res["fill_wall_start"] = time.time()
        log(f"creating {len(jobs)} jobs" + (" with the controller stopped" if backlog else ""))
        done = self.create(path, jobs)
        created = max(done) - t0
        if backlog:
            log(f"created in {created:.1f}s; starting the controller")
            t0 = time.monotonic()
            start()
        log(f"created in {created:.1f}s; waiting for {self.capacity} pods Running")
        target = min(self.capacity, len(jobs))
        wait_until(f"{target} pods Running", lambda: track.n_running() >= target,
                   self.args.phase_timeout, 1)
        res["fill_wall_end"] = time.time()
        with track.lock:
            times = sorted(t for k, t in track.running_at.items() if k not in old)
            first_pods = dict(track.first_pod_of_job)
            bound, running = dict(track.bound_of_job), dict(track.running_of_job)
        decided, unsuspended = decisions.copy()
        res["fill_seconds"] = (times[target - 1] - t0) if len(times) >= target else math.nan
        res["fill_running"] = len(times)
        res["create_seconds"] = created
        applied = {f"{ns}/{body['metadata']['name']}": t
                   for (ns, body), t in zip(jobs, done, strict=True)}
        # the jobs admitted while capacity was free: the first `target` to get a pod
        firsts = sorted((first_pods[j], t) for j, t in applied.items() if j in first_pods)
        lat = [pod_t - apply_t for pod_t, apply_t in firsts[:target]]
        res["latency"] = {q: measure.percentile(lat, q) for q in (50, 95, 99)}
        res["latency_n"] = len(lat)
        res["fill_counts"] = counters(before)
        # the stage timeline of the jobs that started in the fill (the first `target`)
        started = {j for _, j in sorted((t, j) for j, t in first_pods.items()
                                        if j in applied)[:target]}
        ref = {j: (t0 if backlog else applied[j]) for j in applied}
        stages = {"decided": decided, "unsuspended": unsuspended, "pod_created": first_pods,
                  "pod_bound": bound, "pod_running": running}
        res["stages"] = audit.stage_stats(
            {j: ref[j] for j in started},
            {k: v for k, v in stages.items() if v or k != "unsuspended"}, t0)
        res["decided_capacity_seconds"] = audit.first_n_seconds(
            [t for j, t in decided.items() if j in applied], target, t0)
        res["backlog"] = backlog
        return applied

    def priority(self, name: str) -> str:
        """The priority class of a fill job `j-<index>` (others: the middle class)."""
        mix = self.args.priority_mix.split(",")
        if name.startswith("j-"):
            return audit.priority_of(int(name[2:]), len(self.namespaces), mix)
        return mix[len(mix) // 2]

    def audits(self, res: dict, track: PodTrack, decisions: Decisions,
               applied: dict[str, float], logs: list[Path]) -> None:
        """The correctness audits of a phase (after its fill and back-fill), the same for both
        systems; any count above 0 fails the run (main)."""
        assert self.api
        with track.lock:
            max_live = dict(track.max_live)
        decided, _ = decisions.copy()
        over = {ns: n for ns, n in max_live.items() if ns in self.namespaces and n > self.quota}
        events, _ = self.api.list_all("/api/v1/events?fieldSelector=reason%3DFailedCreate")
        rejected_events = sum(int(e.get("count") or 1) for e in events
                              if e["metadata"]["namespace"] in self.namespaces)
        rejected_log = 0
        for path in logs:
            with suppress(FileNotFoundError):
                rejected_log += sum(1 for line in path.read_text(errors="replace").splitlines()
                                    if "PodCreateFailed" in line
                                    or "exceeded quota" in line
                                    or (" 403" in line and "pod" in line.lower()))
        created_at, decided_at = decisions.server_times(
            from_workload=bool(decisions.workload_created_at)
            and self.args.kueue_order_from == "workload")
        seen = [audit.Seen(j.split("/")[0], j.split("/")[1],
                           audit.PRIORITIES[self.priority(j.split("/")[1])],
                           created_at.get(j, math.inf), decided_at.get(j))
                for j in applied]
        order = audit.order_violations(seen, self.args.audit_grace, self.quota)
        res["timeline"] = {f"{x.ns}/{x.name}": (x.priority, x.applied, x.decided) for x in seen}
        res["audits"] = {
            "over_quota_namespaces": len(over), "max_pods_in_a_namespace": max(
                (n for ns, n in max_live.items() if ns in self.namespaces), default=0),
            "rejected_create_events": rejected_events, "rejected_in_logs": rejected_log,
            "priority_violations": order["priority"], "fifo_violations": order["fifo"],
            "examples": order["examples"] + [f"{ns}: {n} pods > quota {self.quota}"
                                             for ns, n in list(over.items())[:3]]}
        res["decided_set"] = sorted(j for j in applied if j in decided)
        res["decided_by_class"] = dict(Counter(
            f"{j.split('/')[0]} {self.priority(j.split('/')[1])}" for j in res["decided_set"]))

    def agent_writes(self, res: dict) -> None:
        """Writes by client from the API server's audit log: the fill window, and the phase."""
        path = audit_log_path(self.cfg)
        res["agent_counts"] = {
            "fill": audit.audit_writes(path, res.get("fill_wall_start"), res.get("fill_wall_end")),
            "phase": audit.audit_writes(path)}

    def backfill(self, res: dict, track: PodTrack, message: dict | None, counters: Any) -> None:
        n = min(self.args.backfill, track.n_running())
        with track.lock:
            # the oldest running pods, taken round-robin over the namespaces, so each
            # namespace frees about as many GPUs (and has queued jobs to take them)
            per_ns: dict[str, list[str]] = {}
            for k in sorted(track.running, key=lambda k: track.running_at[k]):
                per_ns.setdefault(k.split("/")[0], []).append(k)
            order = [ks[i] for i in range(max(map(len, per_ns.values()), default=0))
                     for ks in per_ns.values() if i < len(ks)]
            victims = order[:n]
            old = set(track.added)
        before = counters()
        t0 = time.monotonic()
        log(f"completing {n} running pods")
        self.complete_pods(victims, message)
        res["backfill_patch_seconds"] = time.monotonic() - t0

        def new_running() -> list[float]:
            with track.lock:
                return sorted(t for k, t in track.running_at.items() if k not in old)

        wait_until(f"{n} new pods Running", lambda: len(new_running()) >= n,
                   self.args.phase_timeout, 1)
        times = new_running()
        res["backfill_seconds"] = (times[n - 1] - t0) if len(times) >= n else math.nan
        res["backfill_new_running"], res["backfill_n"] = len(times), n
        res["backfill_counts"] = counters(before)

    def arrivals(self, res: dict, track: PodTrack, make: Any, path: str,
                 setup: Any) -> None:
        """Apply -> Pod while capacity is free, at scale: after the fill and back-fill (every
        job of the run is in the cluster and capacity is taken), add `arrival_nodes` nodes and a
        namespace with a quota of their GPUs (`setup(ns, gpus)`: the system's own objects for
        it), then create jobs there one at a time at `arrival_rate` per second, each
        measured from its create's return to its first pod. The fill's latency is queueing
        behind a burst of `jobs` creates; this is the controller's reaction time."""
        assert self.api
        a, ns = self.args, "arrivals"
        gpus = a.arrival_nodes * a.gpus_per_node
        n = min(a.arrival_jobs, gpus)
        log(f"arrivals: {a.arrival_nodes} more nodes, {n} jobs at {a.arrival_rate}/s")
        sc.add_nodes(self.cfg, "arrival", a.arrival_nodes, a.gpus_per_node)
        items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                 {"apiVersion": "v1", "kind": "ResourceQuota",
                  "metadata": {"name": "gpus", "namespace": ns},
                  "spec": {"hard": {f"requests.{GPU}": str(gpus)}}}]
        self.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": items}))
        setup(ns, gpus)
        api = self.api
        wait_until("the arrivals quota status", lambda: (
            api.ok("GET", f"/api/v1/namespaces/{ns}/resourcequotas/gpus").get("status") or {})
            .get("hard"), 120, 1)
        applied: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / a.arrival_rate - time.monotonic()))
            body = make(i)
            api.ok("POST", path.format(ns=ns), body)
            applied[f"{ns}/{body['metadata']['name']}"] = time.monotonic()

        def firsts() -> dict[str, float]:
            with track.lock:
                return {j: track.first_pod_of_job[j] for j in applied
                        if j in track.first_pod_of_job}

        wait_until(f"{n} arrivals with a pod", lambda: len(firsts()) >= n, a.phase_timeout, 1)
        got = firsts()
        lat = [got[j] - t for j, t in applied.items() if j in got]
        res["arrival_latency"] = {q: measure.percentile(lat, q) for q in (50, 95, 99)}
        res["arrival_n"], res["arrival_missing"] = len(lat), n - len(lat)

    def idle(self, res: dict, counters: Any, stable: Any) -> None:
        """Wait until nothing the controller writes changes, then count a window."""
        res["idle_settled"] = self.settle("the controller's writes to settle", stable)
        before = counters()
        time.sleep(self.args.idle_seconds)  # the measurement window itself
        res["idle_counts"] = counters(before)


# ---------------------------------------------------------------- ours


def operator_source(ref: str, work: Path) -> tuple[Path, str]:
    """The operator's code, CRD and chart at a git ref (a stable snapshot while others edit the
    working tree), or the working tree itself for ref "worktree"; and the commit it is."""
    if ref == "worktree":
        return ROOT, "the working tree"
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    dest = work / f"src-{sha}"
    if not dest.exists():
        dest.mkdir(parents=True)
        top = set(subprocess.run(["git", "ls-tree", "--name-only", sha], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split())
        # the api distribution has its own folder since the restructure (issue 20)
        paths = [d for d in ("api", "operator", "crds", "charts") if d in top]
        archive = subprocess.run(["git", "archive", sha, *paths],
                                 cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest, f"commit {sha}"


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Operator:
    def __init__(self, cfg: dc.ClusterConfig, log_path: Path, src: Path,
                 settings: dict[str, str] | None = None) -> None:
        self.metrics_port = free_port()
        env = {**os.environ, "POD_NAME": "bench-operator", "POD_NAMESPACE": "default",
               # the api and the operator of that source (older commits have no api/ folder)
               "PYTHONPATH": os.pathsep.join(str(src / d) for d in ("api", "operator")
                                             if (src / d).is_dir())}
        env = {k: v for k, v in env.items() if not k.startswith("FINETUNE_")}
        env.update(settings or {})
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finetune_operator", f"--kubeconfig={cfg.kubeconfig}",
                 f"--metrics-port={self.metrics_port}", f"--health-port={free_port()}"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if not wait_until("the operator to lead", lambda: self.proc.poll() is None and
                          "acquired leadership" in log_path.read_text(errors="replace"), 60):
            self.stop()
            raise RuntimeError(f"the operator did not start; see {log_path}")
        # /metrics wants a token allowed to get /metrics (docs/metrics.md "Scraping")
        for args in (("create", "serviceaccount", "bench-metrics", "-n", "default"),
                     ("create", "clusterrole", "bench-metrics-reader", "--verb=get",
                      "--non-resource-url=/metrics"),
                     ("create", "clusterrolebinding", "bench-metrics-reader",
                      "--clusterrole=bench-metrics-reader",
                      "--serviceaccount=default:bench-metrics")):
            dc.kubectl(cfg, *args, check=False)  # AlreadyExists is fine
        self.token = dc.kubectl(cfg, "create", "token", "bench-metrics", "-n", "default",
                                "--duration=24h").stdout.strip()

    def metrics(self) -> str:
        """HTTPS with the reader's token (the certificate is made at start: not verified);
        plain HTTP for an operator from before /metrics needed both."""
        import ssl
        import urllib.error
        import urllib.request
        req = urllib.request.Request(f"https://127.0.0.1:{self.metrics_port}/metrics",
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10,
                                        context=ssl._create_unverified_context()) as r:
                return str(r.read().decode())
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ssl.SSLError):
                raise
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            return str(r.read().decode())

    def counts(self) -> Counter[tuple[str, str]] | None:
        return measure.operator_requests(self.metrics())

    def rss(self) -> tuple[float, float]:
        return measure.rss_mb(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


def ftj(name: str, group: str, priority: str = "finetune-normal") -> dict:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "labels": {GROUP_LABEL: group}},
            "spec": {
                "priorityClassName": priority,
                "model": {"name": "tiny", "source": {"hub": {"repo": "example/tiny"}}},
                "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}}},
                "resources": {"gpus": 1, "nodeSelector": SELECTOR},
                "training": {"maxSteps": 100},
                "checkpoint": {"storage": {"claimName": "ckpt"}}}}


FTJ_PATH = "/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs"
DONE = {"reason": "Completed", "finalStep": 1}


def job_inputs(ns: str) -> list[dict]:
    """What a benchmark FineTuneJob mounts: its dataset ConfigMap and checkpoint claim."""
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data", "namespace": ns},
         "data": {"train.jsonl": "{}"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "ckpt", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteOnce"],
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]


def wait_bound(b: Bench, namespaces: list[str]) -> None:
    api = b.api
    assert api
    wait_until("the checkpoint claims to bind", lambda: all(
        api.ok("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/ckpt")
        .get("status", {}).get("phase") == "Bound" for ns in namespaces), 120, 1)


def claim_and_data(b: Bench, ns: str) -> None:
    b.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": job_inputs(ns)}))
    wait_bound(b, [ns])


def setup_ours(b: Bench, src: Path) -> Api:
    """A fresh cluster for the operator at ``src``: its CRD and PriorityClasses, the
    namespaces (and "lifecycle") with their quota, dataset ConfigMap and bound claim."""
    api = b.fresh_cluster()
    b.kubectl("apply", "--server-side", "-f", str(src / CRD.relative_to(ROOT)))
    b.established("finetunejobs.finetune.dev")
    pcs = subprocess.run([str(build.binary("helm")), "template", "ft",
                          str(src / "charts" / "finetune-operator"), "--show-only",
                          "templates/priorityclasses.yaml"],
                         capture_output=True, text=True, check=True).stdout
    b.kubectl("apply", "-f", "-", input=pcs)
    extra = [o for ns in [*b.namespaces, "lifecycle"] for o in job_inputs(ns)]
    b.kubectl("create", "namespace", "lifecycle")
    b.namespaces_with_quota(extra)
    wait_bound(b, [*b.namespaces, "lifecycle"])
    return api


def run_ours(b: Bench, res: dict[str, Any]) -> None:
    src, res["source"] = operator_source(b.args.operator_ref, b.work)
    log(f"operator from {res['source']} ({src})")
    api = setup_ours(b, src)

    (_, _), (qps, burst) = VARIANTS[b.args.variant]
    settings = {"FINETUNE_API_QPS": str(qps), "FINETUNE_API_BURST": str(burst)} if qps else {}
    if qps and "api_qps" not in (src / "operator" / "finetune_operator" / "settings.py"
                                 ).read_text():
        raise RuntimeError(f"variant {b.args.variant}: the operator at {res['source']} has no "
                           "api_qps setting; run a newer --operator-ref (or 'worktree')")
    res["api_qps"], res["api_burst"] = qps, burst
    log_path = b.work / "operator.log"
    log_path.unlink(missing_ok=True)
    op = Operator(b.cfg, log_path, src, settings)
    track = PodTrack(OUR_JOB_LABEL)
    decisions = Decisions()
    watch = Watch(api, "/api/v1/pods", track.on_event, selector=OUR_JOB_LABEL).start()
    ftj_watch = Watch(api, FTJ_PATH.replace("namespaces/{ns}/", ""), decisions.on_ftj).start()
    has_counter = op.counts() is not None
    res["operator_counter"] = has_counter

    def op_counts() -> Counter[tuple[str, str]]:
        try:
            return op.counts() or Counter()
        except OSError:  # stopped (the backlog step restarts it)
            return Counter()

    def counters(before: Any = None) -> Any:
        now = {"apiserver": b.apiserver_counts(), "operator": op_counts()}
        if before is None:
            return now
        return {k: measure.diff(now[k], before[k]) for k in now}

    def op_writes() -> int:
        return measure.writes(op_counts(), measure.OPERATOR_WRITES, leases=False)

    def restart() -> None:  # --backlog: the operator starts on the jobs already there
        nonlocal op
        op = Operator(b.cfg, log_path, src, settings)

    def stable() -> bool:
        """No non-Lease operator write in --settle-seconds (its counter; without it, the API
        server's FineTuneJob and Event writes)."""
        return b.quiet(op_writes if has_counter else
                       lambda: b.apiserver_writes_to("finetunejobs", "events"))

    try:
        # --- writes per job lifecycle, on the empty cluster
        n = min(b.args.lifecycle_jobs, b.capacity)
        log(f"lifecycle: {n} jobs apply -> Succeeded")
        before = counters()
        b.create(FTJ_PATH, [("lifecycle", ftj(f"life-{i:04d}", "lifecycle")) for i in range(n)])
        wait_until(f"{n} lifecycle pods Running", lambda: track.n_running() >= n,
                   b.args.phase_timeout, 1)
        with track.lock:
            pods = sorted(k for k in track.running if k.startswith("lifecycle/"))
        b.complete_pods(pods, DONE)

        def succeeded() -> int:
            items, _ = api.list_all(f"{FTJ_PATH.format(ns='lifecycle')}")
            return sum(1 for j in items if (j.get("status") or {}).get("phase") == "Succeeded")

        wait_until(f"{n} lifecycle jobs Succeeded", lambda: succeeded() >= n,
                   b.args.phase_timeout, 2)
        b.settle("the operator to settle", stable)
        res["lifecycle_jobs"] = n
        res["lifecycle_succeeded"] = succeeded()
        res["lifecycle_counts"] = counters(before)

        # --- fill, idle, back-fill
        if b.args.backlog:
            op.stop()
        applied = b.fill(res, track, lambda i: ftj(f"j-{i:05d}", "fill",
                                                   b.priority(f"j-{i:05d}")),
                         FTJ_PATH, counters, decisions, restart if b.args.backlog else None)
        res["rss_after_fill"] = op.rss()
        b.idle(res, counters, stable)
        b.backfill(res, track, DONE, counters)
        res["rss_5000"] = op.rss()
        b.audits(res, track, decisions, applied, [log_path])
        b.agent_writes(res)
        b.settle("the operator to settle after the back-fill", stable)
        rounds = admission_rounds(op.metrics())
        b.arrivals(res, track, lambda i: ftj(f"a-{i:04d}", "arrivals"), FTJ_PATH,
                   lambda ns, _gpus: claim_and_data(b, ns))
        after = admission_rounds(op.metrics())
        res["arrival_rounds"] = {k: v - rounds.get(k, 0) for k, v in after.items()
                                 if v - rounds.get(k, 0) > 0}

        # --- memory at rss_jobs FineTuneJobs plus foreign pods
        if not b.args.skip_rss:
            memory_phase(b, res, op, len(applied) + n + res.get("arrival_n", 0))
    finally:
        with suppress(OSError):  # the cycle histogram, for the notes on back-fill and latency
            text = op.metrics()
            cyc = {n: sum(v for _, v in measure.samples(text, f"finetune_scheduling_cycle_"
                                                         f"seconds_{n}")) for n in ("sum", "count")}
            res["cycle_seconds_mean"] = cyc["sum"] / cyc["count"] if cyc["count"] else None
            res["cycles"] = cyc["count"]
        ftj_watch.stop()
        watch.stop()
        op.stop()


def admission_rounds(metrics_text: str) -> dict[str, float]:
    """The operator's admission rounds so far: "quiet", and "full: <reason>" per reason."""
    out: dict[str, float] = {}
    for labels, value in measure.samples(metrics_text, "finetune_admission_rounds_total"):
        key = "quiet" if labels.get("kind") == "quiet" else f"full: {labels.get('reason')}"
        out[key] = out.get(key, 0.0) + value
    return out


def add_foreign_pods(b: Bench, n: int) -> None:
    """``n`` pods of other workloads (10 namespaces, on CPU-only kwok nodes of 1,000 pods each):
    what a shared cluster has beside the jobs, and what the operator's pod watch must not keep."""
    api = b.api
    assert api
    fnodes = max(1, math.ceil(n / 500))
    log(f"{n} foreign pods on {fnodes} nodes")
    sc.add_nodes(b.cfg, "cpu", fnodes, 0, labels={"type": "kwok-cpu"}, pods=1000)
    foreign_ns = [f"other-{i:02d}" for i in range(10)]
    b.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in foreign_ns]}))
    wait_until("default service accounts", lambda: all(api.request(
        "GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] == 200
        for ns in foreign_ns), 60, 1)
    pods = [(foreign_ns[i % 10], {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"web-{i:05d}", "labels": {"app": "web", "tier": "other"}},
        "spec": {"nodeName": f"cpu-{i % fnodes}", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "web", "image": "example.invalid/web:1",
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
        for i in range(n)]
    b.create("/api/v1/namespaces/{ns}/pods", pods)


def wait_all_phased(b: Bench, res: dict) -> bool:
    """Until every FineTuneJob has a phase (the operator saw it and wrote its first status)."""
    api = b.api
    assert api
    log("waiting until every FineTuneJob has a phase (the operator saw it)")

    def all_phased() -> bool:
        items, _ = api.list_all(FTJ_PATH.replace("namespaces/{ns}/", ""))
        res["rss_jobs_total"] = len(items)
        res["rss_jobs_phased"] = sum(1 for j in items if (j.get("status") or {}).get("phase"))
        return res["rss_jobs_phased"] >= len(items)

    return wait_until("every job phased", all_phased, b.args.phase_timeout, 10)


def memory_phase(b: Bench, res: dict, op: Operator, existing: int) -> None:
    more = max(0, b.args.rss_jobs - existing)
    log(f"memory: {more} more jobs")
    add_foreign_pods(b, b.args.foreign_pods)
    b.create(FTJ_PATH, [(b.namespaces[i % len(b.namespaces)], ftj(f"m-{i:05d}", "memory"))
                        for i in range(more)])
    wait_all_phased(b, res)
    time.sleep(b.args.idle_seconds)  # steady state: RSS after a quiet window, not a spike
    res["rss_10000"] = op.rss()


# ---------------------------------------------------------------- kueue


KUEUE_JOBS_PATH = "/apis/batch/v1/namespaces/{ns}/jobs"


class KueueProc:
    """Kueue v0.17.0 (built from the Go module proxy, cached) on a fresh benchmark cluster,
    configured as ``docs/kueue.md`` argues (the variant's client limit), with a ClusterQueue
    and LocalQueue per namespace and the bands' WorkloadPriorityClasses, every ClusterQueue
    Active."""

    def __init__(self, b: Bench, res: dict[str, Any]) -> None:
        self.b = b
        self.binary, took = kueue.ensure_built()
        res["build_seconds"] = took if took is not None else kueue.recorded_build_seconds()
        res["build_cached"] = took is None
        self.api = api = b.fresh_cluster()
        b.kubectl("apply", "--server-side", "-f", str(kueue.crd_dir()))
        for crd in ("clusterqueues", "localqueues", "workloads", "resourceflavors"):
            b.established(f"{crd}.kueue.x-k8s.io")
        b.kubectl("create", "namespace", "kueue-system")
        b.namespaces_with_quota()
        ports = {"health": free_port(), "metrics": free_port(), "webhook": free_port()}
        (qps, burst), _ = VARIANTS[b.args.variant]
        qps = b.args.kueue_qps if b.args.kueue_qps is not None else qps
        burst = b.args.kueue_burst if b.args.kueue_burst is not None else burst
        self.config = kueue.write_config(b.work, ports, qps, burst)
        res["qps"], res["burst"] = qps, burst
        self.log_path = b.work / "kueue.log"
        self.log_path.unlink(missing_ok=True)
        self.proc = self.start()
        import urllib.request

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kueue exited with {self.proc.returncode}; see "
                                   f"{self.log_path}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports['health']}/readyz",
                                            timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        if not wait_until("kueue /readyz", ready, 120, 1):
            raise RuntimeError(f"kueue did not become ready; see {self.log_path}")
        objs = [kueue.flavor()] + [kueue.cluster_queue(ns, b.quota, GPU) for ns in b.namespaces]
        objs += [kueue.priority_class(n, v) for n, v in audit.PRIORITIES.items()]
        objs += [kueue.local_queue(ns) for ns in b.namespaces]
        b.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                       "items": objs}))
        res["came_up"] = True

        def cq_active() -> bool:
            out = api.ok("GET", "/apis/kueue.x-k8s.io/v1beta2/clusterqueues")
            return all(any(c["type"] == "Active" and c["status"] == "True"
                           for c in (cq.get("status") or {}).get("conditions", []))
                       for cq in out["items"]) and len(out["items"]) == len(b.namespaces)

        wait_until("every ClusterQueue Active", cq_active, 60, 1)

    def start(self) -> subprocess.Popen:
        return kueue.start(self.binary, self.b.cfg.kubeconfig, self.config, self.log_path,
                           self.b.args.kueue_log_level)

    def stop(self) -> None:
        stop_process(self.proc)


def run_kueue(b: Bench, res: dict[str, Any]) -> None:
    kq = KueueProc(b, res)
    api, log_path = kq.api, kq.log_path
    track = PodTrack(KUEUE_JOB_LABEL)
    decisions = Decisions()
    watch = Watch(api, "/api/v1/pods", track.on_event, selector=KUEUE_JOB_LABEL).start()
    wl_watch = Watch(api, "/apis/kueue.x-k8s.io/v1beta2/workloads",
                     decisions.on_workload).start()
    job_watch = Watch(api, "/apis/batch/v1/jobs", decisions.on_job).start()

    stop_kueue = kq.stop

    def restart() -> None:  # --backlog: Kueue starts on the Jobs already there
        kq.proc = kq.start()

    def counters(before: Any = None) -> Any:
        now = {"apiserver": b.apiserver_counts()}
        return now if before is None else {k: measure.diff(now[k], before[k]) for k in now}

    def stable() -> bool:
        return b.quiet(lambda: b.apiserver_writes_to("workloads", "jobs"))

    try:
        if b.args.backlog:
            stop_kueue()
        applied = b.fill(res, track, lambda i: kueue.job(f"j-{i:05d}", 1, GPU, SELECTOR,
                                                         b.priority(f"j-{i:05d}")),
                         KUEUE_JOBS_PATH, counters, decisions,
                         restart if b.args.backlog else None)
        res["admitted_capacity_seconds"] = res["decided_capacity_seconds"]
        res["rss_after_fill"] = measure.rss_mb(kq.proc.pid)
        b.idle(res, counters, stable)
        b.backfill(res, track, None, counters)
        res["rss_5000"] = measure.rss_mb(kq.proc.pid)
        b.audits(res, track, decisions, applied, [log_path])
        b.agent_writes(res)
        res["throttle_lines"] = sum(1 for line in log_path.read_text(errors="replace")
                                    .splitlines() if kueue.THROTTLE_LINE in line)
        b.settle("Kueue's writes to settle after the back-fill", stable)

        def queues(ns: str, gpus: int) -> None:
            b.kubectl("apply", "-f", "-", input=json.dumps({
                "apiVersion": "v1", "kind": "List",
                "items": [kueue.cluster_queue(ns, gpus, GPU), kueue.local_queue(ns)]}))
            wait_until(f"ClusterQueue cq-{ns} Active", lambda: any(
                c["type"] == "Active" and c["status"] == "True" for c in (api.ok(
                    "GET", f"/apis/kueue.x-k8s.io/v1beta2/clusterqueues/cq-{ns}")
                    .get("status") or {}).get("conditions", [])), 60, 1)

        b.arrivals(res, track, lambda i: kueue.job(f"a-{i:04d}", 1, GPU, SELECTOR),
                   KUEUE_JOBS_PATH, queues)
    finally:
        res.setdefault("throttle_lines", sum(
            1 for line in log_path.read_text(errors="replace").splitlines()
            if kueue.THROTTLE_LINE in line) if log_path.exists() else None)
        job_watch.stop()
        wl_watch.stop()
        watch.stop()
        stop_kueue()


# ---------------------------------------------------------------- report


def _writes(c: Counter[tuple[str, str]]) -> int:
    return measure.writes(c, measure.APISERVER_WRITES)


def _fmt(v: float | None, unit: str = "s") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f} {unit}"


def _only_writes(c: Counter[tuple[str, str]], verbs: frozenset[str], leases: bool = True,
                 ) -> Counter[tuple[str, str]]:
    return Counter({k: v for k, v in c.items()
                    if k[0] in verbs and (leases or not measure.is_lease(k[1]))})


def targets(ours: dict, kq: dict, idle_writes: int | None, per_job: float | None) -> str:
    """The scale run's target figures, each met or missed (n/a where not measured)."""
    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    fo, fk = ours.get("fill_seconds"), kq.get("fill_seconds")
    rate = fk / fo if fo and fk and not math.isnan(fo) and not math.isnan(fk) else None
    p99 = (ours.get("arrival_latency") or {}).get(99)
    rss = (ours.get("rss_10000") or (None, None))[1]
    return ("Targets of the scale run: fill rate >= Kueue's (goal 2x): "
            f"{'n/a' if rate is None else f'{rate:.2f}x'} "
            f"{mark(None if rate is None else rate >= 1)}"
            f"; apply -> Pod p99 <= 2 s while capacity is free (arrivals): {_fmt(p99)} "
            f"{mark(None if p99 is None or math.isnan(p99) else p99 <= 2)}"
            f"; idle writes 0: {_num(idle_writes)} "
            f"{mark(None if idle_writes is None else idle_writes == 0)}"
            f"; <= 8 writes per job lifecycle: {'n/a' if per_job is None else f'{per_job:.1f}'} "
            f"{mark(None if per_job is None else per_job <= 8)}"
            f"; RSS <= 250 MB at 10,000 jobs: {_fmt(rss, 'MB')} "
            f"{mark(None if rss is None else rss <= 250)}.")


def _num(v: int | None) -> str:
    return "n/a" if v is None else f"{v:,}"


def _jsonable(o: Any) -> Any:
    if isinstance(o, Counter):
        return {f"{k[0]} {k[1]}": v for k, v in o.items()}
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    return o


def _from_json(o: Any, key: str = "") -> Any:
    """Undo _jsonable: request counts back to Counters keyed (verb, resource)."""
    if isinstance(o, dict) and key.endswith("_counts"):
        return {k: Counter({tuple(vr.split(" ", 1)): n for vr, n in c.items()})
                for k, c in o.items()}
    if isinstance(o, dict) and key in ("latency", "arrival_latency"):
        return {int(k): v for k, v in o.items()}
    if isinstance(o, dict):
        return {k: _from_json(v, k) for k, v in o.items()}
    return o


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.2f}"


def report(b: Bench, command: str) -> list[str]:
    a = b.args
    ours, kq = b.results.get("ours", {}), b.results.get("kueue", {})
    lines = [f"{a.nodes} kwok nodes x {a.gpus_per_node} GPUs ({b.capacity} GPUs), {a.jobs} "
             f"one-GPU jobs round-robin over {a.namespaces} namespaces with a {b.quota}-GPU "
             f"quota each, back-fill of {a.backfill}; a fresh local control plane per phase "
             f"(`{command}`; controller-manager and scheduler without client rate limits, kwok "
             "without its pod-complete stage, pods completed by the benchmark; the API "
             "server's counts include every client: this benchmark's creates and pod "
             "completions, kwok's node heartbeats and pod status, the scheduler's bindings, "
             "the controller-manager's quota status and Job controller). Ratios are "
             "ours / Kueue (below 1 is better for time, requests and memory); ours is the "
             f"operator at {ours.get('source', '?')}"]
    rows = [("time to fill capacity (first create -> last pod Running)", "fill_seconds", "s"),
            (f"apply -> Pod p50, a burst of {a.jobs} (queued behind the burst)",
             ("latency", 50), "s"),
            ("apply -> Pod p95, burst", ("latency", 95), "s"),
            ("apply -> Pod p99, burst", ("latency", 99), "s"),
            (f"apply -> Pod p50, {a.arrival_jobs} arrivals at {a.arrival_rate:g}/s on free "
             f"capacity at scale", ("arrival_latency", 50), "s"),
            ("apply -> Pod p95, arrivals", ("arrival_latency", 95), "s"),
            ("apply -> Pod p99, arrivals", ("arrival_latency", 99), "s"),
            (f"back-fill after completing {ours.get('backfill_n', a.backfill)} running jobs",
             "backfill_seconds", "s")]

    def get(r: dict, key: Any) -> float | None:
        if isinstance(key, tuple):
            return (r.get(key[0]) or {}).get(key[1])
        return r.get(key)

    lines += ["| figure | ours | Kueue v0.17.0 | ours / Kueue |", "|---|---|---|---|"]
    for label, key, unit in rows:
        x, y = get(ours, key), get(kq, key)
        lines.append(f"| {label} | {_fmt(x, unit)} | {_fmt(y, unit)} | {_ratio(x, y)} |")
    for label, key in (("API requests during fill (all clients)", "fill_counts"),
                       ("API writes during fill (all clients)", "fill_counts"),
                       ("API writes during back-fill (all clients)", "backfill_counts"),
                       ("API writes in the idle window (all clients)", "idle_counts")):
        xs = (ours.get(key) or {}).get("apiserver", Counter())
        ys = (kq.get(key) or {}).get("apiserver", Counter())
        f = (lambda c: sum(c.values())) if "requests" in label else _writes
        x = f(xs) if key in ours else None
        y = f(ys) if key in kq else None
        lines.append(f"| {label} | {_num(x)} | {_num(y)} | {_ratio(x, y)} |")
    for label, key in (("the controller's own API requests during fill", "fill_counts"),
                       ("the controller's own API writes during fill", "fill_counts")):
        c = (ours.get(key) or {}).get("operator")
        f = (lambda c: sum(c.values())) if "requests" in label else (
            lambda c: measure.writes(c, measure.OPERATOR_WRITES))
        lines.append(f"| {label} (ours: its finetune_api_requests_total) | "
                     f"{_num(f(c)) if c else 'n/a'} | not measured | n/a |")
    for label, key in (("controller RSS after fill (VmRSS)", "rss_after_fill"),
                       ("controller peak RSS (VmHWM) after back-fill", "rss_5000")):
        i = 0 if "VmHWM" in label else 1
        mx, my = (ours.get(key) or (None, None))[i], (kq.get(key) or (None, None))[i]
        lines.append(f"| {label} | {_fmt(mx, 'MB')} | {_fmt(my, 'MB')} | {_ratio(mx, my)} |")
    for name, r in (("ours", ours), ("Kueue", kq)):
        if "error" in r:
            lines += ["", f"The {name} phase failed: {r['error']} (what it had measured is "
                      "shown; the rest is n/a)."]
    if kq:
        lines.append("")
        lines.append(f"Kueue: came up: {'yes' if kq.get('came_up') else 'NO'}; built in "
                     f"{_fmt(kq.get('build_seconds'))}"
                     f"{' (cached from an earlier run)' if kq.get('build_cached') else ''}; "
                     f"client qps {kq.get('qps')} burst {kq.get('burst')} (variant "
                     f"{a.variant}); all capacity admitted (Workload `Admitted`) after "
                     f"{_fmt(kq.get('admitted_capacity_seconds'))}; the Job controller creates "
                     "the pods.")
    if ours:
        lines.append("")
        n = ours.get("lifecycle_jobs", 0)
        lc = ours.get("lifecycle_counts", {})
        if ours.get("operator_counter"):
            oc = lc.get("operator", Counter())
            w = measure.writes(oc, measure.OPERATOR_WRITES, leases=False)
            lease = measure.writes(oc, measure.OPERATOR_WRITES, leases=True)
            lines.append(f"Ours alone: writes per job lifecycle (apply -> Succeeded, {n} jobs, "
                         f"operator counter): **{w / max(n, 1):.1f}** (+{lease} Lease writes in "
                         f"the window); by call: "
                         f"{measure.table(_only_writes(oc, measure.OPERATOR_WRITES, False))}.")
            ic = ours.get("idle_counts", {}).get("operator", Counter())
            lines.append(f"Idle window ({a.idle_seconds} s, all running, nothing changing in "
                         "the cluster): "
                         f"**{measure.writes(ic, measure.OPERATOR_WRITES, leases=False)}** "
                         f"operator writes besides "
                         f"{measure.writes(ic, measure.OPERATOR_WRITES, leases=True)} Lease "
                         f"writes; by call: "
                         f"{measure.table(_only_writes(ic, measure.OPERATOR_WRITES)) or 'none'}.")
        else:
            ac = lc.get("apiserver", Counter())
            lines.append(f"Ours alone: the operator exports no finetune_api_requests_total yet; "
                         f"API server writes (all clients) per job lifecycle ({n} jobs): "
                         f"{_writes(ac) / max(n, 1):.1f}; by call: "
                         f"{measure.table(_only_writes(ac, measure.APISERVER_WRITES))}.")
            ic = ours.get("idle_counts", {}).get("apiserver", Counter())
            iw = _only_writes(ic, measure.APISERVER_WRITES)
            lines.append(f"Idle window ({a.idle_seconds} s): API server writes, all clients: "
                         f"{measure.table(iw) or 'none'}.")
        oc = lc.get("operator") if ours.get("operator_counter") else None
        ic = ours.get("idle_counts", {}).get("operator") if oc is not None else None
        lines.append(targets(
            ours, kq,
            measure.writes(ic, measure.OPERATOR_WRITES, leases=False) if ic is not None
            else None,
            measure.writes(oc, measure.OPERATOR_WRITES, leases=False) / max(n, 1)
            if oc is not None and n else None))
        if ours.get("cycles"):
            lines.append(f"The operator's scheduling cycle over the phase: {ours['cycles']:.0f} "
                         f"cycles, {ours['cycle_seconds_mean']:.1f} s on average "
                         "(finetune_scheduling_cycle_seconds).")
        if ours.get("arrival_rounds"):
            lines.append("Its admission rounds during the arrivals (finetune_admission_rounds"
                         "_total; quiet: only what changed decided, full: every job walked, and "
                         "why): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                             sorted(ours["arrival_rounds"].items())) + ".")
        if "rss_10000" in ours:
            hwm, rss = ours["rss_10000"]
            lines.append(f"Memory: operator VmRSS **{rss:.0f} MB** (VmHWM {hwm:.0f} MB) with "
                         f"{ours.get('rss_jobs_total', 0):,} FineTuneJobs "
                         f"({ours.get('rss_jobs_phased', 0):,} with a phase) and "
                         f"{a.foreign_pods:,} foreign pods in the cluster.")
    for name, r in (("ours", ours), ("Kueue", kq)):
        if "idle_counts" in r:
            settle = a.settle_seconds
            settled = (f"after its writes had stopped for {settle:g} s" if r.get("idle_settled",
                                                                                True)
                       else f"although its writes had not stopped for {settle:g} s within "
                       f"{3 * settle + 60:g} s of waiting")
            iw = _only_writes(r["idle_counts"]["apiserver"], measure.APISERVER_WRITES)
            lines.append(f"Idle window, {name} ({a.idle_seconds} s with every capacity pod "
                         f"Running, {settled}): API server writes, all clients (kwok's node "
                         f"Leases included): {measure.table(iw, 8) or 'none'}.")
        for key, label in (("fill_counts", "fill"), ("backfill_counts", "back-fill")):
            c = (r.get(key) or {}).get("apiserver")
            if c:
                lines.append(f"API server requests during {label}, {name} (top): "
                             f"{measure.table(c, 10)}.")
    lines += timeline_report(b) + audit_report(b) + writers_report(b) + variance_report(b)
    return lines


def config_line(b: Bench) -> str:
    a = b.args
    (kq, kb), (oq, ob) = VARIANTS[a.variant]
    ours = f"client limit {oq:g} QPS / burst {ob}" if oq else "no client rate limit"
    return (f"Configuration (variant `{a.variant}`): Kueue clientConnection qps "
            f"{a.kueue_qps if a.kueue_qps is not None else kq:g} / burst "
            f"{a.kueue_burst if a.kueue_burst is not None else kb}, controller concurrency "
            f"Workload 10 / LocalQueue 5 / ClusterQueue 5 (what its maintainers ship after "
            f"v0.17.0), log level {a.kueue_log_level}; ours {ours}; kube-controller-manager "
            f"`--concurrent-job-syncs={a.job_syncs}` and, like kube-scheduler, qps 5000 / burst "
            f"10000; priority classes {a.priority_mix} alternating per namespace; "
            + ("backlog: every job created with the controller stopped, the clock starting "
               "when it starts" if a.backlog else "the clock starts at the first create")
            + f"; {len(b.runs) or 1} run(s), alternating which side goes first.")


def timeline_report(b: Bench) -> list[str]:
    ours, kq = b.results.get("ours", {}), b.results.get("kueue", {})
    if not ours.get("stages") and not kq.get("stages"):
        return []
    since = "the controller's start" if b.args.backlog else "each job's create"
    lines = ["", config_line(b), "",
             f"Stage timeline of the jobs that started in the fill (seconds since {since}; "
             "'all' = from the clock's start to the last of them):", "",
             "| stage | ours p50 | ours p99 | ours all | Kueue p50 | Kueue p99 | Kueue all |",
             "|---|---|---|---|---|---|---|"]
    names = {"decided": "decision (ours `Admitted`; Kueue Workload `Admitted`)",
             "unsuspended": "unsuspend (Kueue Job `suspend=false`)",
             "pod_created": "pod created", "pod_bound": "pod bound (nodeName set)",
             "pod_running": "pod Running"}
    for stage in audit.STAGES:
        row = [names[stage]]
        for r in (ours, kq):
            st = (r.get("stages") or {}).get(stage)
            row += [_fmt(st.get(k)) for k in ("p50", "p99", "all")] if st else ["n/a"] * 3
        lines.append("| " + " | ".join(row) + " |")
    cap = min(b.capacity, b.args.jobs)
    do, dk = ours.get("decided_capacity_seconds"), kq.get("decided_capacity_seconds")
    lines.append(f"| all {cap} decided | {_fmt(do)} | | | {_fmt(dk)} | | |")
    lines.append(f"| all {cap} Running | {_fmt(ours.get('fill_seconds'))} | | | "
                 f"{_fmt(kq.get('fill_seconds'))} | | |")
    return lines


AUDITS = (("over_quota_namespaces", "namespaces ever above their quota (pods at once)"),
          ("rejected_create_events", "rejected pod creates (Events reason FailedCreate)"),
          ("rejected_in_logs", "refused pod creates in the controller log (quota, 403)"),
          ("priority_violations", "lower priority decided while a higher one waited"),
          ("fifo_violations", "FIFO broken within a priority"))


def audit_failures(results: dict[str, Any]) -> list[str]:
    """Every audit count above 0 (and admitted sets that differ), as sentences."""
    out = []
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        for key, label in AUDITS:
            n = (r.get("audits") or {}).get(key)
            if n:
                out.append(f"{name}: {label}: {n}")
    diff = results.get("class_count_diff")
    if diff and results.get("backlog"):
        out.append(f"the two systems decided different numbers of jobs per namespace and "
                   f"priority class from the same backlog: {diff} decisions differ")
    return out


def audit_report(b: Bench) -> list[str]:
    ours, kq = b.results.get("ours", {}), b.results.get("kueue", {})
    if "audits" not in ours and "audits" not in kq:
        return []
    lines = ["", f"Correctness audits (every run; a count above 0 fails the run; the order "
             "audits compare the API server's timestamps, 1 s resolution: a job's "
             "creationTimestamp against the decision condition's lastTransitionTime, with a "
             f"grace of {b.args.audit_grace:g} s; Kueue's jobs count from their "
             f"{b.args.kueue_order_from}'s creation):", "",
             "| audit | ours | Kueue |", "|---|---|---|"]
    for key, label in (*AUDITS, ("max_pods_in_a_namespace",
                                 f"most pods at once in one namespace (quota {b.quota})")):
        row = [str((r.get("audits") or {}).get(key, "n/a")) for r in (ours, kq)]
        lines.append(f"| {label} | {row[0]} | {row[1]} |")
    diff, cdiff = b.results.get("same_set_diff"), b.results.get("class_count_diff")
    lines.append(f"| jobs decided by one side only (by name) | "
                 f"{diff if diff is not None else 'n/a'} | |")
    lines.append(f"| decisions differing in count per namespace and class | "
                 f"{cdiff if cdiff is not None else 'n/a'} | |")
    lines.append("(By name the sets can differ at the boundary: within one second of "
                 "creation both order by creation time, which only --backlog makes the same "
                 "for both, and without --backlog decisions race the creates. The per-class "
                 "count fails the run in --backlog mode.)")
    return lines


def writers_report(b: Bench) -> list[str]:
    lines = []
    for name in ("ours", "kueue"):
        c = ((b.results.get(name) or {}).get("agent_counts") or {}).get("fill")
        if not c:
            continue
        agents = audit.by_agent(c)
        leases = sum(audit.by_agent(c, leases=True).values()) - sum(agents.values())
        lines.append(f"API writes during the fill by client, {name} (the API server's audit "
                     f"log; {leases:,} Lease writes left out): " + "; ".join(
                         f"{k}: {v:,}" for k, v in agents.most_common(8)) + ".")
    kq = b.results.get("kueue") or {}
    if kq.get("throttle_lines") is not None:
        lines.append(f"Kueue log lines of client-side throttling ('{kueue.THROTTLE_LINE}', "
                     f"log level {b.args.kueue_log_level}): {kq['throttle_lines']:.0f}.")
    return ["", *lines] if lines else []


def variance_report(b: Bench) -> list[str]:
    if len(b.runs) < 2:
        return []
    lines = ["", f"Over {len(b.runs)} runs (median shown above; min - max here):"]
    for name in ("ours", "kueue"):
        rng = b.ranges.get(name) or {}
        parts = []
        for key, label in (("fill_seconds", "fill"), ("decided_capacity_seconds", "all decided"),
                           ("create_seconds", "creates"), ("backfill_seconds", "back-fill")):
            if key in rng:
                lo, hi = rng[key]
                parts.append(f"{label} {lo:.1f} - {hi:.1f} s")
        lat = rng.get("arrival_latency") or {}
        if 99 in lat or "99" in lat:
            lo, hi = lat.get(99) or lat["99"]
            parts.append(f"arrivals p99 {lo:.2f} - {hi:.2f} s")
        if parts:
            lines.append(f"{name}: " + "; ".join(parts) + ".")
    return lines


def combine(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Median results and ranges over runs; audit counts are summed over runs (any run that
    breaks an audit shows) and the admitted-set difference is per run, summed."""
    med: dict[str, Any] = {}
    rng: dict[str, Any] = {}
    for phase in ("ours", "kueue"):
        per = [r[phase] for r in runs if phase in r]
        if not per:
            continue
        med[phase], rng[phase] = audit.aggregate(per)
        audits = [p["audits"] for p in per if "audits" in p]
        if audits:
            med[phase]["audits"] = {k: (sum(a.get(k, 0) for a in audits) if k != "examples"
                                        else [e for a in audits for e in a.get(k, [])][:5])
                                    for k in audits[0]}
            med[phase]["audits"]["max_pods_in_a_namespace"] = max(
                a.get("max_pods_in_a_namespace", 0) for a in audits)
    both = [(r["ours"], r["kueue"]) for r in runs
            if "decided_set" in r.get("ours", {}) and "decided_set" in r.get("kueue", {})]
    if both:
        med["same_set_diff"] = sum(len(set(o["decided_set"]) ^ set(k["decided_set"]))
                                   for o, k in both)
        med["class_count_diff"] = sum(class_count_diff(o["decided_by_class"],
                                                       k["decided_by_class"]) for o, k in both)
        med["backlog"] = all(r["ours"].get("backlog") for r in runs if "ours" in r)
    return med, rng


def class_count_diff(ours: dict[str, int], kq: dict[str, int]) -> int:
    """Decisions that differ in count per "namespace class" between the two sides."""
    return sum(abs(ours.get(k, 0) - kq.get(k, 0)) for k in set(ours) | set(kq))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--backfill", type=int, default=500)
    ap.add_argument("--lifecycle-jobs", type=int, default=200)
    ap.add_argument("--arrival-nodes", type=int, default=10,
                    help="nodes added after the back-fill for the arrivals step")
    ap.add_argument("--arrival-jobs", type=int, default=80)
    ap.add_argument("--arrival-rate", type=float, default=2.0, help="arrivals per second")
    ap.add_argument("--idle-seconds", type=int, default=30)
    ap.add_argument("--settle-seconds", type=float, default=65,
                    help="no controller write for this long before the idle window (and "
                    "between steps): longer than the operator's 60 s status coalescing")
    ap.add_argument("--rss-jobs", type=int, default=10000)
    ap.add_argument("--foreign-pods", type=int, default=10000)
    ap.add_argument("--skip-rss", action="store_true", help="skip the 10,000-job memory step")
    ap.add_argument("--phases", default="ours,kueue")
    ap.add_argument("--operator-ref", default="HEAD",
                    help="git ref of the operator to run, or 'worktree' (default: HEAD)")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="unthrottled",
                    help="unthrottled: Kueue at qps 5000 / burst 10000 (as the controller-"
                    "manager and scheduler here), ours without a client limit; qps50: both at "
                    "50 / 100 (ours: FINETUNE_API_QPS / FINETUNE_API_BURST)")
    ap.add_argument("--kueue-qps", type=float, default=None, help="override the variant's")
    ap.add_argument("--kueue-burst", type=int, default=None, help="override the variant's")
    ap.add_argument("--kueue-log-level", default="2",
                    help="Kueue's --zap-log-level (2 shows client-side throttling past 1 s)")
    ap.add_argument("--job-syncs", type=int, default=50,
                    help="kube-controller-manager --concurrent-job-syncs")
    ap.add_argument("--backlog", action="store_true",
                    help="create every job with the controller stopped; the clock starts "
                    "when it starts")
    ap.add_argument("--priority-mix", default="finetune-high,finetune-normal,finetune-low",
                    help="priority classes alternating per namespace (Kueue: "
                    "WorkloadPriorityClasses of the same names and values)")
    ap.add_argument("--audit-grace", type=float, default=5.0,
                    help="order audits: seconds allowed between a job's creation and a "
                    "decision that must have seen it (API server timestamps, 1 s resolution)")
    ap.add_argument("--kueue-order-from", choices=("job", "workload"), default="job",
                    help="Kueue's order audits count a job as waiting from its Job's creation "
                    "(what its user did) or from its Workload's (when Kueue could know it)")
    ap.add_argument("--runs", type=int, default=1, help="runs, alternating which side is first")
    ap.add_argument("--allow-single-run", action="store_true",
                    help="let --markdown write BENCHMARKS.md from one run")
    ap.add_argument("--cluster-dir", type=Path, default=None,
                    help="state directory of the benchmark cluster (default: devcluster/scale)")
    ap.add_argument("--port-offset", type=int, default=None,
                    help="shift the cluster's default ports by this (default: devcluster/scale)")
    ap.add_argument("--workers", type=int, default=16, help="concurrent creates/patches")
    ap.add_argument("--phase-timeout", type=float, default=900)
    ap.add_argument("--keep", action="store_true", help="leave the benchmark cluster running")
    ap.add_argument("--markdown", action="store_true", help="write BENCHMARKS.md's Scale section")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--note", action="append", default=[],
                    help="a sentence for the section's Notes (what the run's logs showed)")
    ap.add_argument("--report-only", type=Path, metavar="JSON",
                    help="no run: render the report of a saved --json (pass the run's options)")
    args = ap.parse_args()
    if args.markdown and args.runs < 2 and not args.allow_single_run and not args.report_only:
        ap.error("--markdown writes BENCHMARKS.md from the median of several runs: pass "
                 "--runs 3 (or --allow-single-run to write one run's figures)")
    unknown = set(args.priority_mix.split(",")) - set(audit.PRIORITIES)
    if unknown:
        ap.error(f"--priority-mix: unknown classes {sorted(unknown)}; pick from "
                 f"{sorted(audit.PRIORITIES)}")
    b = Bench(args)
    started = time.monotonic()
    drop = {"--report-only", str(args.report_only), "--note", *args.note}
    argv = " ".join(a for a in sys.argv[1:] if a not in drop)
    command = f".venv/bin/python benchmarks/bench_scale.py {argv}".strip()
    if args.report_only:
        saved = json.loads(args.report_only.read_text())
        b.runs = [_from_json(r) for r in saved["runs"]] if "runs" in saved else [
            _from_json(saved)]
        b.results, b.ranges = combine(b.runs)
        lines = report(b, command)
        lines += ["", "Notes. " + " ".join(args.note)] if args.note else []
        print("\n".join(lines))
        if args.markdown and not audit_failures(b.results):
            if len(b.runs) < 2 and not args.allow_single_run:
                log("not writing BENCHMARKS.md from one run (pass --allow-single-run)")
                return 2
            write_section("Scale", f"bench_scale.py {argv}", lines)
        return 0
    try:
        for i in range(args.runs):
            phases = args.phases.split(",")
            order = phases[::-1] if i % 2 else phases  # alternate who goes first
            run: dict[str, Any] = {}
            b.runs.append(run)
            for phase in order:
                log(f"run {i + 1}/{args.runs}: phase {phase}")
                res = run[phase] = {}
                try:
                    {"ours": run_ours, "kueue": run_kueue}[phase](b, res)
                except Exception as e:  # a phase failing keeps what it measured
                    log(f"phase {phase} failed: {e!r}")
                    res["error"] = repr(e)
                    res.setdefault("came_up", False)
                if args.json:  # after every phase: an interrupted run keeps what it measured
                    _save(args.json, b.runs)
    finally:
        if not args.keep:
            dc.down(b.cfg)
    b.results, b.ranges = combine(b.runs)
    lines = report(b, command)
    lines += ["", "Notes. " + " ".join(args.note)] if args.note else []
    print("\n".join(lines))
    log(f"run took {time.monotonic() - started:.0f}s on {platform.node()}")
    if args.json:
        _save(args.json, b.runs)
    failures = audit_failures(b.results)
    if failures:
        log("AUDIT FAILED: " + "; ".join(failures))
        for name in ("ours", "kueue"):
            for ex in ((b.results.get(name) or {}).get("audits") or {}).get("examples", []):
                log(f"  {name}: {ex}")
        return 1
    if args.markdown:
        write_section("Scale", f"bench_scale.py {argv}", lines)
    return 0

def _save(path: Path, runs: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"runs": [_jsonable(r) for r in runs]}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
