"""`make demo-sweep`: examples/sweep.yaml on this machine, for real, then the comparison table.

Brings up the local control plane (building it if needed), installs both CRDs and the priority
bands, starts a local node agent with 2 GPUs and the operator, prepares the namespace `sweeps`
(the tiny model, the chat dataset, a GPU quota of 2), applies examples/sweep.yaml (a 2x2 grid,
maxParallel 2, each trial evaluated on a held-out test set), shows the trials as they run, and
prints `kubectl finetune sweep compare lr-rank -n sweeps`. Stops what it started unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from finetune_dev.demo import _start_operator, say
from finetune_dev.devcluster import cluster as dc
from finetune_dev.devcluster.workloads import install_api, prepare_namespace
from finetune_dev.nodeagent import start_agent

NODE = "demo-sweep-node"
NAMESPACE = "sweeps"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sweep.yaml"
SWEEP = "lr-rank"
TIMEOUT = 1800.0  # four tiny trainings, two at a time, on 2 shared cores


def _get(cfg: dc.ClusterConfig, *args: str) -> dict:
    out = dc.kubectl(cfg, "get", *args, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}


def _watch(cfg: dc.ClusterConfig) -> bool:
    """Print each change of the trials' phases; True once every trial finished."""
    shown = ""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        sweep = _get(cfg, "finetunesweep", SWEEP)
        st = sweep.get("status") or {}
        trials = st.get("trials") or []
        jobs = {j["metadata"]["name"]: j for j in
                _get(cfg, "finetunejobs", "-l", f"finetune.dev/sweep={SWEEP}").get("items", [])}
        phases = {n: (j.get("status") or {}).get("phase") for n, j in jobs.items()}
        line = "  " + "  ".join(f"{t['name']}={phases.get(t['name']) or t['phase']}"
                                for t in trials)
        if line != shown and trials:
            print(f"{time.strftime('%H:%M:%S')}{line}", flush=True)
            shown = line
        done = [j for j in jobs.values() if (j.get("status") or {}).get("phase") in (
            "Succeeded", "Failed")]
        if trials and (st.get("phase") == "Succeeded" or len(done) == len(trials)):
            return True
        if st.get("phase") == "Failed":
            print(f"  the sweep failed: {st.get('conditions')}")
            return False
        time.sleep(2)
    print(f"  timed out after {TIMEOUT:.0f}s")
    return False


def run(args: argparse.Namespace) -> int:
    from finetune_operator.cli import main as cli_main

    cfg = dc.ClusterConfig(nodes=0)
    fresh = not dc.is_up(cfg)
    say("1/4 local Kubernetes control plane and the FineTuneJob + FineTuneSweep CRDs")
    dc.up(cfg)
    install_api(cfg)
    dc.kubectl(cfg, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
               "--timeout=120s")
    say(f"2/4 node agent {NODE} with 2 nvidia.com/gpu, and the operator")
    agent = start_agent(NODE, 2, cfg=cfg)
    op = _start_operator(cfg)
    try:
        say(f"3/4 namespace {NAMESPACE} (GPU quota 2, tiny model, chat dataset); "
            f"kubectl apply -f {EXAMPLE.relative_to(EXAMPLE.parents[1])}")
        prepare_namespace(cfg, NAMESPACE, gpu_quota=2)
        dc.kubectl(cfg, "apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
        ok = _watch(cfg)
        say(f"4/4 kubectl finetune sweep describe {SWEEP} -n {NAMESPACE} (the table alone: "
            "sweep compare)")
        cli_main(["sweep", "describe", SWEEP, "-n", NAMESPACE, "--kubeconfig",
                  str(cfg.kubeconfig)])
        return 0 if ok else 1
    finally:
        if not args.keep:
            say("cleaning up")
            os.killpg(op.pid, signal.SIGTERM)
            op.wait(30)
            dc.unregister_extra(cfg, "operator-demo")
            agent.stop()
            dc.kubectl(cfg, "delete", "node", NODE, "--ignore-not-found", check=False)
            dc.kubectl(cfg, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
            if fresh:
                dc.down(cfg)
        else:
            print(f"\nleft running (--keep): export KUBECONFIG={cfg.kubeconfig}; "
                  "stop with `make down`")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune_dev.demo_sweep",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="leave the cluster and the sweep running")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
