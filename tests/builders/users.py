"""A tenant of the local cluster: a ServiceAccount bound only to the chart's user role, with its
own token in its own kubeconfig (so RBAC decides), running `kubectl finetune` in this process
(tests/cluster/test_user_role.py, test_output_kept.py, test_helm_install.py).

    from tests.builders.users import allowed, user_kubeconfig, user_role  # user_role: a fixture

    me = user_kubeconfig(cluster, ns, "alice", tmp_path / "alice.yaml")
    out = allowed(me, "list")  # asserts it was not refused and exited 0
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from finetune_operator.cli import main
from tests.builders.chart import RELEASE, one, render
from tests.kube import Cluster, short_id

# A refusal in the plugin's words (RBAC, a policy, or an operator that may not be reached).
REFUSED = re.compile(r"\b403\b|forbidden|not allowed to|may not (get|list|watch|create|"
                     r"update|patch|delete)\b|unavailable", re.I)
MakeNamespace = Callable[..., str]  # conftest.make_namespace(gpu_quota=None)
GpuNodes = Callable[[int, int], dict[str, str]]  # conftest.gpu_nodes(count, gpus)


@pytest.fixture
def user_role(cluster: Cluster) -> Iterator[str]:
    """The chart's -edit ClusterRole, exactly as rendered, under a unique name."""
    role = one(render(), "ClusterRole", f"{RELEASE}-edit")
    role["metadata"] = {"name": f"ft-user-{short_id()}"}  # no aggregation labels: bound only
    cluster.apply(role)
    yield role["metadata"]["name"]
    cluster.kubectl("delete", "clusterrole", role["metadata"]["name"], "--ignore-not-found")


def user_kubeconfig(cluster: Cluster, ns: str, sa: str, path: Path) -> Path:
    """A kubeconfig with the cluster's server and CA and ServiceAccount ns/sa's token only."""
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": sa, "namespace": ns}})
    token = cluster.kubectl("create", "token", sa, "-n", ns).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": sa,
        "clusters": [server],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": ctx["cluster"], "user": sa,
                                              "namespace": ns}}]}))
    return path


def as_user(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    """`kubectl finetune ARGS` with the user's kubeconfig (the admin's is not consulted)."""
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--kubeconfig", str(kubeconfig), *args], out, err)
    return rc, out.getvalue(), err.getvalue()


def allowed(kubeconfig: Path, *args: str, rc: int = 0) -> str:
    """The command's stdout; fails the test when it was refused or exited other than ``rc``."""
    code, out, err = as_user(kubeconfig, *args)
    text = out + err
    assert not REFUSED.search(text), f"kubectl finetune {' '.join(args)} was refused:\n{text}"
    assert code == rc, f"kubectl finetune {' '.join(args)} exited {code}:\n{text}"
    return out
