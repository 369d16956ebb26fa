"""The quick start (docs/quickstart.md, steps 4 and 8-11, on the local cluster as
docs/local-cluster.md describes it), walked as a team member would: a fresh `helm install` of
the chart (its operator running as a process on a local agent node), then a user bound only to
the chart's user role (`<release>-finetune-operator-edit`, as docs/install.md binds teams)
submits a real LoRA job on the tiny model, watches it, describes it, reads its trainer's log
through the API server, suspends and resumes it, creates and inspects a sweep, and copies the
trained adapter out, and no step is refused.

Where the local cluster differs from a real one (docs/local-cluster.md): its pods all have the
IP 127.0.0.1, which no Service endpoint may name, so `list --queue` reaches the API server's
service proxy and falls back to the coarse positions; and its node agent serves no `exec`, so the
copy-out reads the claim's directory on this machine instead of `kubectl cp` (the commands
`kubectl finetune output` prints are checked, and where they point is what is copied)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from finetune_dev.devcluster import build
from finetune_dev.devcluster.workloads import training_job
from finetune_dev.nodeagent import AgentProcess, default_root, pvc_dir
from tests.builders.cli import table
from tests.builders.e2e import RUN
from tests.builders.helm import (
    CHART,
    REFUSED_BY_API,
    adopt_crds,
    helm,
    operator_node,
    operator_values,
    wait_lease_free,
)
from tests.builders.users import REFUSED, allowed, as_user, user_kubeconfig

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import free_port

pytestmark = pytest.mark.e2e


def kubectl_as(me: Path, *args: str, input: str | None = None) -> str:
    """Plain kubectl with the user's kubeconfig; fails the test when refused."""
    done = subprocess.run([str(build.binary("kubectl")), "--kubeconfig", str(me), *args],
                          input=input, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not REFUSED.search(done.stderr), \
        f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_the_quick_start_as_a_team_member(
        cluster: Cluster, crd_installed: Path, priority_classes: list[str],
        agent: AgentProcess, train_ns: Callable[..., str], tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    wait_lease_free(cluster)
    team = train_ns(gpu_quota=1)  # the tiny model on claim `models`, the `data` ConfigMap
    release, system = f"qs-{short_id()}", f"qs-system-{short_id()}"
    cluster.create_namespace(system)
    op_root = tmp_path_factory.mktemp("qs-operator")
    with operator_node(cluster, op_root, "qs-op") as op_node:
        values = {
            **operator_values(op_node.node, {"metrics": free_port(), "health": free_port(),
                                             "reports": free_port()}),
            "watchNamespaces": [team],
            "policy": {"nodeSelectorKeys": ["kubernetes.io/hostname"]},
            "rbac": {"queueProxy": {"subjects": [
                {"kind": "ServiceAccount", "name": "alice", "namespace": team}]}},
        }
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        adopt_crds(cluster, release, system)
        helm(cluster, "install", release, str(CHART), "--namespace", system, "--values",
             str(tmp_path / "values.yaml"), "--wait", "--timeout", "150s")
        try:
            walk(cluster, team, release, agent, tmp_path)
            output = next((op_root / "pods").glob(f"{system}_*/operator.log")).read_text()
            assert "acquired leadership" in output
            assert not REFUSED_BY_API.search(output), output[-4000:]
        finally:
            helm(cluster, "uninstall", release, "--namespace", system, "--wait", "--timeout",
                 "120s")
            cluster.kubectl("delete", "namespace", system, "--wait=false", "--ignore-not-found")


def walk(cluster: Cluster, ns: str, release: str, agent: AgentProcess, tmp: Path) -> None:
    # docs/install.md: the team is bound to the chart's user role, nothing else
    cluster.kubectl("create", "rolebinding", "team", "-n", ns,
                    f"--clusterrole={release}-finetune-operator-edit",
                    f"--serviceaccount={ns}:alice")
    me = user_kubeconfig(cluster, ns, "alice", tmp / "alice.yaml")
    wait_for("RBAC to grant alice the role", lambda: cluster.kubectl(
        "auth", "can-i", "create", "finetunejobs.finetune.dev", "-n", ns,
        f"--as=system:serviceaccount:{ns}:alice", check=False).stdout.strip() == "yes", 30)

    # 8. submit: a server-side dry run, then the job
    job = training_job("support-bot", gpus=1, priority_class="finetune-normal",
                       node=agent.node, max_steps=40, interval_steps=5)
    manifest = json.dumps(job)
    assert "created (server dry run)" in kubectl_as(me, "apply", "-n", ns, "-f", "-",
                                                    "--dry-run=server", input=manifest)
    assert "created" in kubectl_as(me, "apply", "-n", ns, "-f", "-", input=manifest)

    # 9. watch it
    def row() -> dict[str, str]:
        return next(r for r in table(allowed(me, "list")) if r["NAME"] == "support-bot")

    wait_for("support-bot Running in kubectl finetune list",
             lambda: row()["PHASE"] == "Running", RUN)
    code, queued, err = as_user(me, "list", "--queue")  # through the API server's proxy
    assert code == 0 and "403" not in queued + err and "may not" not in queued, queued + err
    assert "no endpoints available" in queued, queued  # the local cluster's limit, not RBAC
    described = allowed(me, "describe", "support-bot")
    assert "Admitted" in described and "Events" in described, described
    top = table(allowed(me, "top"))
    assert [r["NAMESPACE"] for r in top] == [ns], top
    log = wait_for("the trainer's log through the API server", lambda: (
        lambda o: o if o.strip() else None)(allowed(me, "logs", "support-bot")), RUN)
    assert "Traceback" not in log, log

    # suspend and resume (the trainer saves first)
    assert "suspended" in allowed(me, "suspend", "support-bot")
    wait_for("support-bot Suspended", lambda: row()["PHASE"] == "Suspended", RUN)
    assert "resumed" in allowed(me, "resume", "support-bot")
    wait_for("support-bot Succeeded", lambda: row()["PHASE"] == "Succeeded", 2 * RUN)
    st = next(j for j in json.loads(allowed(me, "list", "-o", "json"))["items"]
              if j["metadata"]["name"] == "support-bot")["status"]
    assert (st["attempt"], st["failures"]) == (2, 0), st

    # sweeps: create one (its trials parked: suspended), list, describe, compare
    sweep = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
             "metadata": {"name": "grid", "namespace": ns},
             "spec": {"template": {**job["spec"], "suspend": True}, "maxParallel": 1,
                      "parameters": [{"path": "lora.rank", "values": [4, 8]}],
                      "objective": {"metric": "evalLoss"}}}
    kubectl_as(me, "apply", "-f", "-", input=json.dumps(sweep))
    wait_for("the sweep's two trials, parked", lambda: sorted(
        r["PHASE"] for r in table(allowed(me, "list")) if r["NAME"] != "support-bot") ==
        ["Suspended", "Suspended"], 60)
    allowed(me, "sweep", "describe", "grid")
    assert "grid" in allowed(me, "sweep", "list")
    allowed(me, "sweep", "compare", "grid")

    # 11. the model, and copying it out
    where = json.loads(allowed(me, "output", "support-bot", "-o", "json"))
    assert where["phase"] == "Succeeded" and where["kept"] is True, where
    assert where["claim"] == "support-bot-checkpoints", where
    assert any(" cp " in c for c in where["commands"]), where["commands"]
    assert "output on PersistentVolumeClaim support-bot-checkpoints" in allowed(
        me, "describe", "support-bot")
    # the local cluster's equivalent of the printed `kubectl cp` (its agent serves no exec):
    # the claim is a directory on this machine (docs/local-cluster.md)
    claim_dir = pvc_dir(default_root(), ns, where["claim"])
    out = tmp / "support-bot-output"
    for path in where["outputs"]:
        shutil.copytree(claim_dir / path, out / Path(path).name)
    configs = list(out.rglob("adapter_config.json"))
    assert len(configs) == 1, sorted(out.rglob("*"))
    adapter = configs[0].parent
    from safetensors.torch import load_file

    weights = load_file(str(next(adapter.glob("*.safetensors"))))
    assert any("lora_A" in k for k in weights), list(weights)[:5]
