"""`make demo`: the whole product on this machine, for real.

Brings up the local control plane (building it if needed), installs the CRDs and the priority
bands, starts a local node agent with 2 GPUs (its pods run as real processes) and the operator,
builds a tiny model, and applies three FineTuneJobs in two namespaces that together need more
GPUs than the node has. It prints the queue, admission, a graceful preemption, the resume and
completion as they happen, serves the trained adapter and asks it in one command
(`kubectl finetune serve JOB -m ...`), runs a two-trial sweep, then prints each job's output and
counters, and stops what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from finetune_dev.devcluster import cluster as dc
from finetune_dev.devcluster.workloads import (
    MODEL_PATH,
    host_work_dir,
    install_api,
    prepare_namespace,
    training_job,
)
from finetune_dev.nodeagent import AgentProcess, start_agent
from finetune_dev.nodeagent.sources import routable_ip

NODE = "demo-gpu-node"
TRAINER_IMAGE = "localhost/finetune-operator/trainer:0.1.0"  # `make images` (IMAGES=1)
JOBS = (  # namespace, name, priority class, steps, checkpoint interval, submitted when
    ("team-a", "summarizer", "finetune-low", 400, 25, "start"),
    ("team-b", "support-bot", "finetune-normal", 300, 1000, "start"),
    ("team-a", "hotfix", "finetune-critical", 150, 1000, "later"),
)
DEMO_JOBS = {(ns, name) for ns, name, *_ in JOBS}
# after the three jobs: two trials of a learning-rate sweep, to compare on the console's Sweeps
# page (its trials are lr-t0 and lr-t1)
SWEEP = ("team-b", "lr", (1.0e-4, 3.0e-3), 30)
# after the jobs: the summarizer's adapter served (on the CPU: the transformers runtime, no GPU)
SERVE = ("team-a", "summarizer", "chat", "Summarize: the meeting moved to Friday at noon.")


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def _jobs(cfg: dc.ClusterConfig) -> dict[tuple[str, str], dict]:
    out = dc.kubectl(cfg, "get", "finetunejobs", "-A", "-o", "json", check=False)
    items = json.loads(out.stdout or '{"items": []}')["items"] if out.returncode == 0 else []
    return {(j["metadata"]["namespace"], j["metadata"]["name"]): j for j in items
            if j["metadata"]["namespace"] in ("team-a", "team-b")}


def _row(j: dict) -> str:
    st, sp = j.get("status") or {}, j["spec"]
    prog = st.get("progress") or {}
    q = st.get("queue") or {}
    where = (f"queue #{q.get('position')}: {q.get('reason', '')}" if st.get("phase") == "Queued"
             and q else "")
    loss = f"{prog['loss']:.3f}" if isinstance(prog.get("loss"), float) else "-"
    return (f"  {j['metadata']['namespace']}/{j['metadata']['name']:<12} "
            f"{st.get('phase', '-'):<10} {sp.get('priorityClassName', ''):<18} "
            f"gpus={sp['resources']['gpus']} attempt={st.get('attempt', 0)} "
            f"step={prog.get('summary', '-'):<8} loss={loss:<6} "
            f"ckpt={(st.get('checkpoint') or {}).get('step', '-')} "
            f"preempted={st.get('preemptions', 0)} {where}")


def _events(cfg: dc.ClusterConfig, seen: set[str]) -> list[str]:
    lines = []
    for ns in ("team-a", "team-b"):
        out = dc.kubectl(cfg, "get", "events", "-n", ns, "--field-selector",
                         "involvedObject.kind=FineTuneJob", "-o", "json", check=False)
        if out.returncode:
            continue
        for e in sorted(json.loads(out.stdout)["items"],
                        key=lambda e: e.get("lastTimestamp") or ""):
            uid = e["metadata"]["uid"]
            if uid not in seen:
                seen.add(uid)
                lines.append(f"  [{e['type']}] {ns}/{e['involvedObject']['name']}: "
                             f"{e['reason']}: {e['message']}")
    return lines


def _start_operator(cfg: dc.ClusterConfig) -> subprocess.Popen[bytes]:
    log = cfg.state_dir / "logs" / "operator-demo.log"
    env = {**os.environ, "FINETUNE_ADMISSION_INTERVAL_SECONDS": "1",
           # the demo's jobs last a minute or two: status.progress (what the console's loss
           # curves are drawn from without a Prometheus) at most every second, not every 30 s
           "FINETUNE_PROGRESS_WRITE_INTERVAL_SECONDS": "1",
           "FINETUNE_MIN_RUNTIME_BEFORE_PREEMPTION_SECONDS": "5", "POD_NAME": "demo-operator",
           # ModelServers (kubectl finetune serve): off by default, on for the demo
           "FINETUNE_SERVING": "true",
           # team-a may use the preempting band (the default grants it to no namespace)
           "FINETUNE_NAMESPACE_PRIORITY_CLASSES": '{"team-a": ["finetune-critical", '
           '"finetune-high", "finetune-normal", "finetune-low"]}'}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "finetune_operator",
                                 f"--kubeconfig={cfg.kubeconfig}", "--metrics-port=18080",
                                 "--health-port=18081"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    dc.register_extra(cfg, "operator-demo", proc.pid)
    print(f"  operator pid {proc.pid}; log {log}; metrics https://127.0.0.1:18080/metrics "
          "(a bearer token allowed to get /metrics: docs/metrics.md)")
    return proc


def _start_console(cfg: dc.ClusterConfig) -> tuple[subprocess.Popen[bytes], str]:
    """`kubectl finetune console` for team-a and team-b (the demo's kubeconfig user); prints its
    URL (docs/console.md) and what to type in its New job form."""
    log = cfg.state_dir / "logs" / "console-demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "finetune_operator.cli", "console",
                                 f"--kubeconfig={cfg.kubeconfig}", "-n", "team-a",
                                 "--watch-namespace", "team-b", "--no-browser", "--port", "0"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    dc.register_extra(cfg, "console-demo", proc.pid)
    deadline = time.monotonic() + 60
    url = ""
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"http://\S+", log.read_text(errors="replace"))
        if found:
            url = found.group(0)
            print(f"  web console: {url} (log {log})\n"
                  f"    New job: model volume path models:{MODEL_PATH}, dataset ConfigMap "
                  "data:train.jsonl, LoRA, 1 GPU, max steps 60; Job pages show the loss "
                  "curves (the preemption of team-a/summarizer on its own); Sweeps compares "
                  f"the trials of {SWEEP[0]}/{SWEEP[1]} at the end", flush=True)
            break
        time.sleep(0.2)
    else:
        print(f"  the web console did not start; see {log}", flush=True)
    return proc, url


def run(args: argparse.Namespace) -> int:
    cfg = dc.ClusterConfig(nodes=0)
    started = time.monotonic()
    fresh = not dc.is_up(cfg)
    say("1/7 local Kubernetes control plane (etcd, kube-apiserver, controller-manager, "
        "scheduler, kwok), built from the Go module proxy on first use")
    dc.up(cfg)
    install_api(cfg)
    for ns in ("team-a", "team-b"):
        dc.kubectl(cfg, "delete", "namespace", ns, "--ignore-not-found", "--wait=true",
                   "--timeout=120s")
    say(f"2/7 node agent {NODE} with 2 nvidia.com/gpu (its pods run as local processes), "
        "and the operator")
    if args.images:  # inherited by the agent and the operator: trainer pods run from the image
        from finetune_dev.nodeagent.container import SWITCH

        os.environ.update({SWITCH: "1", "FINETUNE_TRAINER_IMAGE": TRAINER_IMAGE})
        print(f"  IMAGES=1: trainer pods run in {TRAINER_IMAGE} under podman")
    ip = routable_ip()
    agent: AgentProcess = start_agent(NODE, 2, cfg=cfg,
                                      extra_args=["--pod-ip", ip] if ip else None)
    op = _start_operator(cfg)
    console, url = _start_console(cfg)
    try:
        say("3/7 namespaces team-a and team-b (GPU quota 2 each), a tiny model built locally, "
            "a small chat dataset")
        for ns in ("team-a", "team-b"):
            prepare_namespace(cfg, ns, gpu_quota=2)
        return _scenario(cfg, args, started)
    finally:
        if not args.keep:
            say("cleaning up")
            os.killpg(op.pid, signal.SIGTERM)
            op.wait(30)
            dc.unregister_extra(cfg, "operator-demo")
            os.killpg(console.pid, signal.SIGTERM)
            console.wait(30)
            dc.unregister_extra(cfg, "console-demo")
            agent.stop()
            dc.kubectl(cfg, "delete", "node", NODE, "--ignore-not-found", check=False)
            for ns in ("team-a", "team-b"):
                dc.kubectl(cfg, "delete", "namespace", ns, "--wait=false", check=False)
            if fresh:
                dc.down(cfg)
        else:
            print(f"\nleft running (--keep): export KUBECONFIG={cfg.kubeconfig}; "
                  "stop with `make down`" + (f"\nweb console: {url}" if url else ""))


def _apply(cfg: dc.ClusterConfig, ns: str, name: str, cls: str, steps: int, every: int) -> None:
    job = training_job(name, gpus=1, priority_class=cls, node=NODE, max_steps=steps,
                       interval_steps=every)
    dc.kubectl(cfg, "apply", "-n", ns, "-f", "-", input=json.dumps(job))
    print(f"  applied {ns}/{name} ({cls}, 1 GPU, {steps} steps)")


def _scenario(cfg: dc.ClusterConfig, args: argparse.Namespace, started: float) -> int:
    say("4/7 two jobs fill the node's 2 GPUs; when the low-priority one has made progress, a "
        "critical job arrives and needs a GPU")
    for ns, name, cls, steps, every, when in JOBS:
        if when == "start":
            _apply(cfg, ns, name, cls, steps, every)
    seen: set[str] = set()
    last = ""
    late_sent = False
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        jobs = _jobs(cfg)
        low = (jobs.get(("team-a", "summarizer")) or {}).get("status") or {}
        if not late_sent and (low.get("progress") or {}).get("step", 0) >= 40:
            for ns, name, cls, steps, every, when in JOBS:
                if when == "later":
                    _apply(cfg, ns, name, cls, steps, every)
            late_sent = True
        view = "\n".join(_row(j) for _, j in sorted(jobs.items()))
        if view != last:
            print(f"--- {time.strftime('%H:%M:%S')}\n{view}", flush=True)
            last = view
        for line in _events(cfg, seen):
            print(line, flush=True)
        # the demo's own jobs (one submitted from the console's form runs on, unwaited)
        phases = [(j.get("status") or {}).get("phase") for k, j in jobs.items()
                  if k in DEMO_JOBS]
        if len(phases) == len(JOBS) and all(p in ("Succeeded", "Failed") for p in phases):
            break
        time.sleep(2)
    served = _serve(cfg)
    _sweep(cfg, deadline + 300)
    return _summary(cfg, started) or (0 if served else 1)


def _plugin(cfg: dc.ClusterConfig, *args: str) -> tuple[int, str]:
    """`kubectl finetune ARGS` (the plugin, in this process) with the demo's kubeconfig."""
    import io

    from finetune_operator.cli import main as plugin

    out, err = io.StringIO(), io.StringIO()
    rc = plugin(["--kubeconfig", str(cfg.kubeconfig), *args], out, err)
    return rc, out.getvalue() + err.getvalue()


def _serve(cfg: dc.ClusterConfig) -> bool:
    """One more command from a trained job to an answer: `kubectl finetune serve JOB -m ...`
    creates the ModelServer, waits until it is Ready with the job's adapter and asks it, through
    the API server's service proxy (`kubectl finetune chat` continues the conversation)."""
    ns, job, server, prompt = SERVE
    command = ["serve", job, "--server", server, "--runtime", "transformers", "--gpus", "0",
               "-n", ns, "-m", prompt, "--max-tokens", "24", "--timeout", "300"]
    say(f"5/7 serve what was trained, and ask it, in one command: kubectl finetune "
        f"{' '.join(shlex.quote(a) for a in command)}")
    # the demo's one node: the server's pod runs beside the trainers (node agent)
    rc, said = _plugin(cfg, *command, "--node-selector", f"kubernetes.io/hostname={NODE}")
    print("  " + said.strip().replace("\n", "\n  "), flush=True)
    if rc == 0:
        print(f"  (more: kubectl finetune chat {server} --adapter {job} -n {ns})", flush=True)
    return rc == 0


def _sweep(cfg: dc.ClusterConfig, until: float) -> None:
    """Two trials of a learning-rate sweep, side by side: the console's Sweeps page compares
    them (docs/console.md)."""
    ns, name, rates, steps = SWEEP
    say(f"6/7 a sweep of two trials ({ns}/{name}: learning rate {rates[0]:g} and {rates[1]:g}, "
        f"{steps} steps each) to compare on the console's Sweeps page")
    template = training_job("x", gpus=1, priority_class="finetune-normal", node=NODE,
                            max_steps=steps, interval_steps=steps)["spec"]
    sweep = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
             "metadata": {"name": name},
             "spec": {"template": template, "maxParallel": 2,
                      "parameters": [{"path": "training.learningRate", "values": list(rates)}],
                      "search": {"strategy": "grid"}, "objective": {"metric": "trainLoss"}}}
    dc.kubectl(cfg, "apply", "-n", ns, "-f", "-", input=json.dumps(sweep))
    shown = ""
    while time.monotonic() < until:
        out = dc.kubectl(cfg, "get", "finetunesweep", name, "-n", ns, "-o", "json", check=False)
        st = (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}
        line = "  " + "  ".join(f"{t.get('name')}={t.get('phase')}"
                                for t in st.get("trials") or [])
        if line != shown:
            print(f"--- {time.strftime('%H:%M:%S')}\n{line}", flush=True)
            shown = line
        if st.get("phase") in ("Succeeded", "Failed"):
            best = (st.get("best") or {}).get("name")
            print(f"  sweep {st['phase']}; best trial {best}", flush=True)
            return
        time.sleep(2)
    print("  the sweep did not finish in time", file=sys.stderr)


def _summary(cfg: dc.ClusterConfig, started: float) -> int:
    say("7/7 results")
    ok, preemptions = True, 0
    for (ns, name), j in sorted(_jobs(cfg).items()):
        if (ns, name) not in DEMO_JOBS:  # a sweep trial, a job submitted from the console
            st = j.get("status") or {}
            print(f"  {ns}/{name}: {st.get('phase')}  (not one of the demo's three)")
            continue
        st = j.get("status") or {}
        out = st.get("output") or {}
        rel = out.get("adapterPath") or out.get("mergedPath") or ""
        path = host_work_dir(j) / rel if rel else Path("-")
        preemptions += st.get("preemptions", 0)
        ok &= st.get("phase") == "Succeeded" and st.get("lostSteps", 0) == 0
        print(f"  {ns}/{name}: {st.get('phase')}  attempts={st.get('attempt')} "
              f"preemptions={st.get('preemptions')} failures={st.get('failures')} "
              f"lostSteps={st.get('lostSteps')} evalLoss/trainLoss={out.get('metrics')}\n"
              f"      output: {path}")
    print(f"\n  wall time {time.monotonic() - started:.0f}s")
    if not ok or preemptions == 0:
        print("  the demo did not go as designed (see above and the operator log)",
              file=sys.stderr)
        return 1
    print("  every job finished; the preempted one resumed from its checkpoint and lost no "
          "steps")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune_dev.demo", description=__doc__)
    ap.add_argument("--keep", action="store_true", help="leave the cluster and jobs running")
    ap.add_argument("--timeout", type=float, default=480, help="seconds for the scenario")
    ap.add_argument("--images", action="store_true",
                    help="run the trainer pods from the trainer image under podman "
                         "(`make demo IMAGES=1` builds it first)")
    try:
        return run(ap.parse_args(argv))
    except (dc.ClusterError, subprocess.CalledProcessError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
