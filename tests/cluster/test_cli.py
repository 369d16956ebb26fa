"""kubectl finetune against the real control plane and the real operator: submit from flags,
list (queue position, reason, progress), top (GPUs vs quota), suspend/resume, describe
(counters, events), logs (what it says when the cluster cannot serve them), -o json/yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from finetune_dev.devcluster import build
from finetune_dev.nodeagent import start_agent
from tests.builders.cli import SWEEP_CRD, cli, ok, table

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import OperatorProcess, complete, job_pods, report_progress

pytestmark = pytest.mark.cluster

MakeNamespace = Callable[..., str]  # conftest.make_namespace(gpu_quota=None)
GpuNodes = Callable[[int, int], dict[str, str]]  # conftest.gpu_nodes(count, gpus)


def row_of(cluster: Cluster, ns: str, name: str) -> dict[str, str] | None:
    return next((r for r in table(ok(cluster, "list", "-n", ns)) if r["NAME"] == name), None)


def wait_row(cluster: Cluster, ns: str, name: str, phase: str, timeout: float = 30,
             **cells: str) -> dict[str, str]:
    """Wait until `kubectl finetune list` shows the job in `phase` (with these cells)."""
    seen: list[dict[str, str] | None] = [None]

    def check() -> dict[str, str] | None:
        r = seen[0] = row_of(cluster, ns, name)
        want = {"PHASE": phase, **cells}
        return r if r and all(r.get(k) == v for k, v in want.items()) else None

    try:
        return wait_for(f"`kubectl finetune list` to show {name} {phase} {cells}", check,
                        timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; last row: {seen[0]}") from None


def submit(cluster: Cluster, ns: str, name: str, gpus: int, selector: dict[str, str]) -> str:
    (key, value), = selector.items()
    return ok(cluster, "submit", "-n", ns, "--name", name, "--model-hub", "example/tiny",
              "--dataset-configmap", "data:train.jsonl", "--gpus", str(gpus),
              "--priority", "finetune-normal", "--max-steps", "100", "--lora-rank", "8",
              "--node-selector", f"{key}={value}", "--checkpoint-interval", "20")


def test_submit_list_top_suspend_resume_describe(
        cluster: Cluster, operator: OperatorProcess, make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes) -> None:
    sel = gpu_nodes(1, 4)
    ns = make_namespace(gpu_quota=4)
    out = submit(cluster, ns, "cli-job", 2, sel)
    assert f"finetunejob.finetune.dev/cli-job created in namespace {ns}" in out
    spec = cluster.get("finetunejob", "cli-job", ns)["spec"]  # type: ignore[index]
    assert spec["lora"] == {"rank": 8, "alpha": 32, "dropout": 0.05,
                            "targetModules": ["all-linear"]}  # server defaults filled in
    assert spec["resources"]["nodeSelector"] == sel and spec["training"]["maxSteps"] == 100

    row = wait_row(cluster, ns, "cli-job", "Running")
    assert (row["PRIORITY"], row["GPUS"], row["QUEUE"], row["PREEMPTIONS"]) == \
        ("finetune-normal", "2", "-", "0")

    # progress reported by the trainer shows up as PROGRESS / LOSS / ETA
    pod = job_pods(cluster, ns, "cli-job")[0]["metadata"]["name"]
    report_progress(cluster, ns, pod, {"step": 40, "totalSteps": 100, "loss": 0.75,
                                       "tokensPerSecond": 1234.0, "etaSeconds": 150,
                                       "state": "training"})
    row = wait_row(cluster, ns, "cli-job", "Running", PROGRESS="40/100 (40%)")
    assert (row["LOSS"], row["ETA"]) == ("0.75", "2m30s")

    # a job that does not fit the quota waits with a position and a reason
    submit(cluster, ns, "cli-wait", 4, sel)
    row = wait_for("a queue position and reason", lambda: (
        lambda r: r if r and r["PHASE"] == "Queued" and r["QUEUE"].isdigit()
        and r["REASON"] != "-" else None)(row_of(cluster, ns, "cli-wait")), 30)
    # the position is cluster-wide (other namespaces' jobs may be ahead); the reason names
    # what it waits for
    assert int(row["QUEUE"]) >= 1
    assert f"needs 4 nvidia.com/gpu; quota {ns} has" in row["REASON"], row

    items = json.loads(ok(cluster, "list", "-n", ns, "-o", "json"))["items"]
    assert {i["metadata"]["name"]: i["status"]["phase"] for i in items} == \
        {"cli-job": "Running", "cli-wait": "Queued"}
    assert yaml.safe_load(ok(cluster, "list", "-n", ns, "-o", "yaml"))["kind"] == "List"
    everywhere = table(ok(cluster, "list", "-A"))
    assert {"NAMESPACE": ns, "NAME": "cli-wait"}.items() <= next(
        r for r in everywhere if r["NAME"] == "cli-wait" and r["NAMESPACE"] == ns).items()

    # top: 2 of 4 quota GPUs held by FineTuneJobs, one job (4 GPUs) queued
    top = table(ok(cluster, "top", "-n", ns))
    assert len(top) == 1
    assert {k: top[0][k] for k in ("NAMESPACE", "RESOURCE", "ALLOCATED", "QUOTA", "RUNNING",
                                   "QUEUED", "QUEUED GPUS", "NEXT")} == {
        "NAMESPACE": ns, "RESOURCE": "nvidia.com/gpu", "ALLOCATED": "2", "QUOTA": "4",
        "RUNNING": "1", "QUEUED": "1", "QUEUED GPUS": "4", "NEXT": "cli-wait"}
    data = json.loads(ok(cluster, "top", "-n", ns, "-o", "json"))
    assert (data[0]["allocated"], data[0]["quotaHard"], data[0]["queue"][0]["name"]) == \
        (2, 4.0, "cli-wait")
    assert any(r["NAMESPACE"] == ns for r in table(ok(cluster, "top", "-A")))

    # suspend -> Suspended (pods gone), resume -> Running again as attempt 2
    cluster.kubectl("delete", "finetunejob", "cli-wait", "-n", ns)
    out = ok(cluster, "suspend", "cli-job", "-n", ns)
    assert "suspended: the trainer saves a checkpoint" in out
    assert f"kubectl finetune resume cli-job -n {ns}" in out
    wait_row(cluster, ns, "cli-job", "Suspended")
    wait_for("the suspended job's pods to go", lambda: not job_pods(cluster, ns, "cli-job"), 30)
    assert "already suspended" in ok(cluster, "suspend", "cli-job", "-n", ns)
    assert "resumed: back in the queue" in ok(cluster, "resume", "cli-job", "-n", ns)
    wait_row(cluster, ns, "cli-job", "Running")

    seen = [""]

    def described() -> str | None:
        seen[0] = ok(cluster, "describe", "cli-job", "-n", ns)
        return seen[0] if "attempt 2 running" in seen[0] else None

    try:
        text = wait_for("describe to show the resumed attempt's Running event", described, 30)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{seen[0]}") from None
    assert "preemptions 0, failures 0/3, attempt 2, lostSteps 0" in text
    assert "example/tiny from hub example/tiny" in text and "lora (rank 8, alpha 32)" in text
    assert "Checkpoints:    every 20 steps" in text
    # admitted at first sight: no Queued event (the write budget); Running only on a resume
    for reason in ("Admitted", "Suspending", "Suspended", "Resumed", "Running"):
        assert f"   {reason}   " in text, f"event {reason} missing from:\n{text}"
    assert "Scheduled" in text  # events of the current attempt's pod are shown too
    desc = json.loads(ok(cluster, "describe", "cli-job", "-n", ns, "-o", "json"))
    assert desc["job"]["status"]["attempt"] == 2
    assert {"Suspended", "Resumed"} <= {e["reason"] for e in desc["events"]}

    # logs: kwok nodes serve none, and the plugin says so (and which pod it tried)
    rc, _, err = cli(cluster, "logs", "cli-job", "-n", ns)
    assert rc == 1
    assert f"cannot serve the logs of pod {ns}/cli-job-a2-0" in err
    assert "fake kwok nodes have no logs" in err

    complete(cluster, ns, "cli-job")
    wait_row(cluster, ns, "cli-job", "Succeeded")
    rc, _, err = cli(cluster, "suspend", "cli-job", "-n", ns)
    assert rc == 1 and "already Succeeded; there is nothing to suspend" in err


def test_errors_say_what_to_do(cluster: Cluster, crd_installed: Path,
                               make_namespace: MakeNamespace) -> None:
    ns = make_namespace()
    rc, _, err = cli(cluster, "describe", "missing", "-n", ns)
    assert rc == 1
    assert err.strip() == (f"error: FineTuneJob missing not found in namespace {ns}; list them "
                           f"with kubectl finetune list -n {ns}")
    rc, _, err = cli(cluster, "logs", "missing", "-n", ns)
    assert rc == 1 and "not found in namespace" in err
    rc, out, _ = cli(cluster, "list", "-n", ns)
    assert rc == 0 and f"No FineTuneJobs in namespace {ns}" in out
    args = ["submit", "-n", ns, "--name", "dup", "--model-hub", "m", "--dataset-hub", "d"]
    assert cli(cluster, *args)[0] == 0
    rc, _, err = cli(cluster, *args)
    assert rc == 1 and "already exists" in err and "pick another --name" in err
    # the API server's own validation (CEL) answers --dry-run=server
    rc, out, err = cli(cluster, "submit", "-n", ns, "--name", "srv", "--model-hub", "m",
                       "--dataset-hub", "d", "--dry-run=server")
    assert rc == 0, err
    assert yaml.safe_load(out)["spec"]["method"] == "lora"  # defaulted by the server
    assert cluster.get("finetunejob", "srv", ns) is None  # nothing was created


def test_kubectl_finds_the_plugin(cluster: Cluster, crd_installed: Path,
                                  make_namespace: MakeNamespace) -> None:
    """`kubectl finetune` runs the console script kubectl-finetune from PATH."""
    ns = make_namespace()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert (Path(sys.executable).parent / "kubectl-finetune").exists(), \
        "kubectl-finetune missing: pip install -e '.[operator]' creates it"
    kubectl = str(build.binary("kubectl"))
    plugins = subprocess.run([kubectl, "plugin", "list"], env=env, capture_output=True,
                             text=True, timeout=30)
    assert "kubectl-finetune" in plugins.stdout, plugins.stdout + plugins.stderr
    ok_ = subprocess.run([kubectl, "finetune", "submit", "-n", ns, "--name", "via-kubectl",
                          "--model-hub", "m", "--dataset-hub", "d"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert ok_.returncode == 0, ok_.stderr
    listed = subprocess.run([kubectl, "finetune", "list", "-n", ns], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [r["NAME"] for r in table(listed.stdout)] == ["via-kubectl"]


def test_logs_on_a_local_agent_node_come_through_the_api_server(
        cluster: Cluster, operator: OperatorProcess, make_namespace: MakeNamespace) -> None:
    """The node agent runs the trainer for real and serves its log at the kubelet port it
    publishes on its Node: `kubectl finetune logs` (and plain `kubectl logs`) read it through the
    API server, byte for byte the file the agent wrote; paths it does not serve say why."""
    ns = make_namespace()
    agent = start_agent(f"cli-na-{short_id()}", 0, cfg=cluster.cfg)
    try:
        node = cluster.get("node", agent.node)
        assert node is not None and node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        ok(cluster, "submit", "-n", ns, "--name", "on-agent", "--model-hub", "example/none",
           "--dataset-configmap", "data:train.jsonl", "--gpus", "0", "--precision", "fp32",
           "--max-steps", "1", "--node-selector", f"kubernetes.io/hostname={agent.node}")
        # attempt 1's pod (the job may be retrying by the time the logs are read: the commands
        # below name the attempt, so they read this pod's log, not a newer attempt's)
        pod = wait_for("attempt 1's trainer pod on the agent to have finished", lambda: next((
            p for p in job_pods(cluster, ns, "on-agent")
            if p["metadata"]["name"] == "on-agent-a1-0"
            and p["status"].get("phase") in ("Succeeded", "Failed")), None), 120)
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        path = agent.root / "pods" / f"{ns}_{name}_{uid}" / "trainer.log"
        written = path.read_text()
        assert written.strip(), f"the trainer wrote no log at {path}"
        rc, out, err = cli(cluster, "logs", "on-agent", "-n", ns, "--attempt", "1")
        assert rc == 0, err
        assert out == written
        rc, out, err = cli(cluster, "logs", "on-agent", "-n", ns, "--attempt", "1",
                           "-f")  # ends: it exited
        assert rc == 0 and out == written, err
        tail = cluster.kubectl("logs", name, "-n", ns, "-c", "trainer", "--tail=2").stdout
        assert tail == "".join(written.splitlines(keepends=True)[-2:])
        refused = cluster.kubectl("logs", name, "-n", ns, "-c", "trainer", "--previous",
                                  check=False)
        assert refused.returncode != 0
        assert "does not serve previous (its containers never restart" in refused.stderr
    finally:  # no graceful stop: the trainer (importing torch) would take its grace period
        cluster.kubectl("delete", "finetunejob", "on-agent", "-n", ns, "--ignore-not-found")
        cluster.kubectl("delete", "pods", "-n", ns, "-l", "finetune.dev/job=on-agent",
                        "--grace-period=0", "--force", "--ignore-not-found")
        agent.stop(60)
        cluster.kubectl("delete", "node", agent.node, "--ignore-not-found", "--wait=false")


# ---- sweeps and compare (issue 13) -------------------------------------------------------------

def test_sweep_list_describe_compare_and_compare_jobs(cluster: Cluster, crd_installed: Path,
                                                      make_namespace: MakeNamespace) -> None:
    from datetime import UTC, datetime

    from finetune_operator.kube.client import Kube
    from finetune_operator.sweep import SweepRunner

    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SWEEP_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunesweeps.finetune.dev")
    ns = make_namespace()
    template = {"model": {"name": "tiny", "source": {"pvc": {"claimName": "m", "path": "t"}}},
                "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}}},
                "training": {"maxSteps": 10}, "resources": {"gpus": 0},
                "suspend": True}  # parked: nothing here should run
    sweep = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
             "metadata": {"name": "cmp"},
             "spec": {"template": template, "maxParallel": 2,
                      "parameters": [{"path": "lora.rank", "values": [4, 8]}],
                      "objective": {"metric": "evalLoss"}}}
    cluster.apply(sweep, ns)
    body = cluster.get("finetunesweep", "cmp", ns)
    assert body is not None
    SweepRunner(Kube(cluster.api)).sync([body], [], datetime.now(UTC))
    # play the operator's part: both trials finished with their metrics
    for name, loss in (("cmp-t0", 0.8), ("cmp-t1", 0.6)):
        status = {"phase": "Succeeded", "startTime": "2026-01-01T10:00:00Z",
                  "completionTime": "2026-01-01T11:00:00Z", "preemptions": 1,
                  "output": {"adapterPath": "output/adapter",
                             "metrics": {"evalLoss": loss, "trainLoss": loss + 0.1}}}
        cluster.kubectl("patch", "finetunejob", name, "-n", ns, "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": status}))

    rows = table(ok(cluster, "sweep", "compare", "cmp", "-n", ns))
    assert [(r["RANK"], r["NAME"], r["LORA.RANK"], r["EVALLOSS"]) for r in rows] == [
        ("1", "cmp-t1", "8", "0.6"), ("2", "cmp-t0", "4", "0.8")]
    assert rows[0]["PHASE"] == "Succeeded" and rows[0]["PREEMPTIONS"] == "1"
    assert rows[0]["GPU-HOURS"] == "0.00"  # a CPU job (0 GPUs) holds no GPU-hours
    data = json.loads(ok(cluster, "sweep", "compare", "cmp", "-n", ns, "-o", "json"))
    assert [t["name"] for t in data["trials"]] == ["cmp-t1", "cmp-t0"]
    assert data["trials"][0]["parameters"] == {"lora.rank": 8}
    assert yaml.safe_load(ok(cluster, "sweep", "compare", "cmp", "-n", ns, "-o", "yaml"))[
        "metric"] == "evalLoss"
    listed = table(ok(cluster, "sweep", "list", "-n", ns))
    assert [r["NAME"] for r in listed] == ["cmp"]
    described = ok(cluster, "sweep", "describe", "cmp", "-n", ns)
    assert "minimize evalLoss" in described and "lora.rank" in described
    assert described.index("cmp-t1") < described.index("cmp-t0")
    rows = table(ok(cluster, "compare", "cmp-t0", "cmp-t1", "-n", ns, "--metric", "trainLoss",
                    "--direction", "maximize"))
    assert [r["NAME"] for r in rows] == ["cmp-t0", "cmp-t1"]
    rc, _, err = cli(cluster, "sweep", "compare", "nope", "-n", ns)
    assert rc == 1 and "FineTuneSweep nope not found" in err and "sweep list" in err
