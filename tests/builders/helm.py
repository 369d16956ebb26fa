"""Installing the chart on the local cluster with Helm, its operator running as a process on a
tainted local node agent (tests/cluster/test_helm_install.py, tests/e2e/test_quickstart.py).

    from tests.builders.helm import adopt_crds, helm, operator_node, wait_lease_free

Why each step is as it is: tests/cluster/test_helm_install.py's docstring.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finetune_dev.devcluster import build
from finetune_dev.nodeagent import AgentProcess, start_agent
from tests.kube import Cluster, short_id, wait_for

CHART = Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"
LEASE = "finetune-operator-leader"
CRD_DIR = CHART.parents[1] / "crds"
CRDS = ("finetunejobs.finetune.dev", "finetunesweeps.finetune.dev", "modelservers.finetune.dev")
EXAMPLES = CHART.parents[1] / "examples"
TAINT = "finetune.dev/helm-test"
# an API request of the operator refused, in its log (a whole-word 403: a random port such as
# 40397 in a log line is not one)
REFUSED_BY_API = re.compile(r"Forbidden|\b403\b")


def helm(cluster: Cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(build.binary("helm")), "--kubeconfig", str(cluster.kubeconfig),
                           *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def lease_holder(cluster: Cluster, namespace: str) -> tuple[str | None, bool]:
    """(holder, fresh): who holds the operator Lease there and whether it is still valid."""
    lease = cluster.get("lease", LEASE, namespace)
    if not lease:
        return None, False
    spec = lease.get("spec") or {}
    renew = spec.get("renewTime")
    if not renew:
        return spec.get("holderIdentity"), False
    age = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(renew.replace("Z", "+00:00"))
           ).total_seconds()
    return spec.get("holderIdentity"), age <= float(spec.get("leaseDurationSeconds") or 15)


def wait_lease_free(cluster: Cluster) -> None:
    """No test operator leads in `default` (it would act on the release's jobs too)."""
    seen: list[str | None] = [None]

    def free() -> bool:
        holder, fresh = lease_holder(cluster, "default")
        seen[0] = holder
        return not fresh

    try:
        wait_for("the leader Lease in namespace default to be free", free, 90)
    except AssertionError as e:
        raise AssertionError(f"{e}: another operator ({seen[0]}) leads and would act on this "
                             "test's jobs too; stop it (another test session?) and rerun"
                             ) from None


def adopt_crds(cluster: Cluster, release: str, namespace: str) -> None:
    """Hand the session's CRDs to ``release`` the way Helm adopts resources (deleting them would
    delete every FineTuneJob of other tests); Helm then applies the chart's CRDs over them."""
    for crd in CRDS:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                        str(CRD_DIR / f"{crd}.yaml"))
        cluster.kubectl("label", "--overwrite", "crd", crd, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl("annotate", "--overwrite", "crd", crd,
                        f"meta.helm.sh/release-name={release}",
                        f"meta.helm.sh/release-namespace={namespace}")


@contextmanager
def operator_node(cluster: Cluster, root: Path, name: str = "helm-op") -> Iterator[AgentProcess]:
    """A GPU-less local agent node, tainted so only the chart's operator pod (which tolerates
    it: ``operator_values``) runs there."""
    root.chmod(0o755)  # the operator runs as uid 1000 (the chart's securityContext)
    agent = start_agent(f"{name}-{short_id()}", 0, root=root, cfg=cluster.cfg)
    try:
        cluster.kubectl("taint", "node", agent.node, f"{TAINT}=true:NoSchedule")
        yield agent
    finally:
        agent.stop(60)
        cluster.kubectl("delete", "node", agent.node, "--ignore-not-found", "--wait=false")


def operator_values(node: str, ports: dict[str, int]) -> dict:
    """The values that run the chart's operator on ``node`` (an ``operator_node``): pinned and
    tolerated there, its ports free on this machine (the agent runs pods in the host's network),
    one replica (a second would need the same host ports), HOME=/tmp (uid 1000 cannot enter the
    agent's default HOME), the image irrelevant (the agent runs `finetune-operator` from the
    venv), a 1 s admission interval."""
    return {
        "priorityClasses": {"create": False},
        "image": {"repository": "example.invalid/finetune-operator/operator", "tag": "unused"},
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        "ports": ports,
        "queue": {"admissionIntervalSeconds": 1},
        "extraEnv": [{"name": "HOME", "value": "/tmp"}],
        "replicaCount": 1,
    }
