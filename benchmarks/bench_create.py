"""What a FineTuneJob create costs at the API server, against a Job, and where it goes.

    .venv/bin/python benchmarks/bench_create.py                 # print the figures
    .venv/bin/python benchmarks/bench_create.py --markdown      # also write BENCHMARKS.md's
                                                                # "Create cost" section

On a local cluster of its own (``FINETUNE_CLUSTER_DIR``, default /tmp/ft-bench-create, port
offset 700), with no controller running: the same N creates from 16 client threads, alternating
rounds, for
- a suspended ``batch/v1`` Job with one GPU container (what the scale benchmark gives Kueue);
- a FineTuneJob with the CRD as generated (the scale benchmark's FineTuneJob);
- the same schema without its CEL rules (``x-kubernetes-validations``), under another group;
- the same without CEL rules and without defaults.
The differences between the last three say what the CEL rules and the defaulting cost; what is
left is the price of a custom resource (JSON in etcd, unstructured decoding, schema pruning).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from report import write_section  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "finetunejobs.finetune.dev.yaml"
NS = "create-cost"
VARIANTS = {"Job (batch/v1, suspended)": "job",
            "FineTuneJob, CRD as generated": "finetune.dev",
            "FineTuneJob schema, no CEL rules": "nocel.bench.finetune.dev",
            "FineTuneJob schema, no CEL rules, no defaults": "nodefault.bench.finetune.dev"}


def crd_variant(group: str, strip_cel: bool, strip_defaults: bool) -> dict[str, Any]:
    crd = copy.deepcopy(yaml.safe_load(CRD.read_text()))
    crd["metadata"] = {"name": f"finetunejobs.{group}"}
    crd["spec"]["group"] = group

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if strip_cel:
                o.pop("x-kubernetes-validations", None)
            if strip_defaults:
                o.pop("default", None)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(crd["spec"]["versions"])
    return crd


def ftj(name: str, group: str) -> dict[str, Any]:
    """The scale benchmark's FineTuneJob (benchmarks/bench_scale.py ``ftj``)."""
    return {"apiVersion": f"{group}/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
            "spec": {"priorityClassName": "finetune-normal",
                     "model": {"name": "tiny", "source": {"hub": {"repo": "example/tiny"}}},
                     "dataset": {"source": {"configMap": {"name": "data",
                                                          "key": "train.jsonl"}}},
                     "resources": {"gpus": 1, "nodeSelector": {"bench": "create"}},
                     "training": {"maxSteps": 100},
                     "checkpoint": {"storage": {"claimName": "ckpt"}}}}


def job(name: str) -> dict[str, Any]:
    """The scale benchmark's Kueue Job: suspended, one container asking for one GPU."""
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "q"}},
            "spec": {"suspend": True, "template": {"spec": {
                "restartPolicy": "Never", "nodeSelector": {"bench": "create"},
                "containers": [{"name": "c", "image": "example.invalid/x", "resources": {
                    "requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}]}}}}


def established(kubectl: list[str], crd: str, timeout: float = 60) -> None:
    """Poll the CRD's Established condition (`kubectl wait` fails while it has none yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = subprocess.run([*kubectl, "get", "crd", crd, "-o",
                              "jsonpath={.status.conditions[?(@.type=='Established')].status}"],
                             capture_output=True, text=True)
        if got.stdout.strip() == "True":
            return
        time.sleep(0.5)
    raise RuntimeError(f"CRD {crd} was not Established within {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--creates", type=int, default=500, help="objects per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--markdown", action="store_true", help="write BENCHMARKS.md's section")
    ap.add_argument("--keep-cluster", action="store_true")
    args = ap.parse_args()
    env = {**os.environ,
           "FINETUNE_CLUSTER_DIR": os.environ.get("FINETUNE_CLUSTER_DIR", "/tmp/ft-bench-create"),
           "FINETUNE_CLUSTER_PORT_OFFSET": os.environ.get("FINETUNE_CLUSTER_PORT_OFFSET", "700")}
    dc = [sys.executable, "-m", "finetune_dev.devcluster"]
    subprocess.run([*dc, "up", "--nodes", "0"], env=env, check=True, capture_output=True)
    kubeconfig = Path(env["FINETUNE_CLUSTER_DIR"]) / "kubeconfig"
    try:
        return measure(args, kubeconfig)
    finally:
        if not args.keep_cluster:
            subprocess.run([*dc, "down"], env=env, check=False, capture_output=True)


def measure(args: argparse.Namespace, kubeconfig: Path) -> int:
    from kubernetes import client, config

    from finetune_dev.devcluster.build import binary

    kubectl = [str(binary("kubectl")), "--kubeconfig", str(kubeconfig)]
    for group in list(VARIANTS.values())[1:]:
        body = crd_variant(group, strip_cel=group != "finetune.dev",
                           strip_defaults=group.startswith("nodefault"))
        subprocess.run([*kubectl, "apply", "--server-side", "-f", "-"], input=json.dumps(body),
                       text=True, check=True, capture_output=True)
        established(kubectl, f"finetunejobs.{group}")
    subprocess.run([*kubectl, "create", "namespace", NS], check=True, capture_output=True)
    config.load_kube_config(str(kubeconfig))
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = args.threads * 2
    api = client.ApiClient(cfg)
    custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)

    def creator(kind: str) -> Callable[[str], object]:
        if kind == "job":
            return lambda n: batch.create_namespaced_job(NS, job(n))
        return lambda n: custom.create_namespaced_custom_object(
            kind, "v1alpha1", NS, "finetunejobs", ftj(n, kind))

    creator("job")("warm-up")  # discovery, connections, CEL compilation out of the figures
    for kind in list(VARIANTS.values())[1:]:
        creator(kind)(f"warm-up-{kind.split('.')[0]}")
    times: dict[str, list[float]] = {k: [] for k in VARIANTS.values()}
    for rnd in range(args.rounds):
        for kind in VARIANTS.values():  # alternating: drift hits every variant alike
            create = creator(kind)
            names = [f"{kind.split('.')[0]}-{rnd}-{i}" for i in range(args.creates)]
            t = time.monotonic()
            with ThreadPoolExecutor(args.threads) as ex:
                list(ex.map(create, names))
            times[kind].append(time.monotonic() - t)
            print(f"round {rnd + 1}: {kind}: {times[kind][-1]:.2f} s", file=sys.stderr)
    base = statistics.median(times["job"])
    lines = [f"{args.creates} creates per variant and round, {args.threads} client threads, "
             f"{args.rounds} alternating rounds, no controller running (median, range, ratio "
             "to the Job's median)",
             "| object | seconds | creates/s | x Job |", "|---|---|---|---|"]
    for label, kind in VARIANTS.items():
        t = times[kind]
        med = statistics.median(t)
        lines.append(f"| {label} | {med:.2f} ({min(t):.2f}-{max(t):.2f}) | "
                     f"{args.creates / med:.0f} | {med / base:.2f} |")
    print("\n".join(lines))
    if args.markdown:
        write_section("Create cost (FineTuneJob against Job)", "bench_create.py --markdown",
                      lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
