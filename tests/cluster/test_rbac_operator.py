"""The chart's operator RBAC on the real API server: the operator's ServiceAccount may make every
call its code makes (derived from k8s.py, as in the unit test) where it works, and nothing the
code does not need (no Secrets, no job spec writes, no deletes of children, nothing outside its
watched namespaces). Asked with `kubectl auth can-i --as system:serviceaccount:...`, so the
rules are checked as the API server's authorizer reads them, aggregation and bindings included.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_dev.devcluster import build
from tests.builders.chart import CLUSTER_SCOPED, needed_grants

from ..kube import Cluster, short_id, wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@pytest.fixture
def installed_rbac(cluster: Cluster, make_namespace: Callable[..., str]
                   ) -> Iterator[tuple[str, str, str, str]]:
    """(service account user, release namespace, watched namespace, another namespace)."""
    sid = short_id()
    release, release_ns = f"rbac-{sid}", f"ft-rbac-{sid}"
    watched, other = make_namespace(), make_namespace()
    cluster.create_namespace(release_ns)
    proc = subprocess.run(
        [str(build.binary("helm")), "template", release, str(CHART), "--namespace", release_ns,
         "--values", "-"], capture_output=True, text=True, timeout=120,
        input=yaml.safe_dump({"crds": {"install": False}, "priorityClasses": {"create": False},
                              "policy": {"enabled": False}, "watchNamespaces": [watched]}))
    assert proc.returncode == 0, proc.stderr
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(proc.stdout)
                                  if d and d["kind"] in RBAC_KINDS]
    sa = f"system:serviceaccount:{release_ns}:{release}-finetune-operator"
    try:
        cluster.apply(docs)
        wait_for("the bindings to reach the authorizer", lambda: can(
            cluster, sa, "list", "nodes", None), 30)
        yield sa, release_ns, watched, other
    finally:
        for d in docs:
            if "namespace" not in d["metadata"]:
                cluster.kubectl("delete", d["kind"], d["metadata"]["name"], "--ignore-not-found")
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", "--ignore-not-found")


def can(cluster: Cluster, user: str, verb: str, resource: str, namespace: str | None,
        name: str | None = None) -> bool:
    """`kubectl auth can-i`; resource as `plural[.group][/subresource]`."""
    res, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, res + (f"/{name}" if name else ""), "--as", user]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    return cluster.kubectl(*args, check=False).stdout.strip() == "yes"


def test_operator_may_make_exactly_its_calls(
        cluster: Cluster, installed_rbac: tuple[str, str, str, str]) -> None:
    sa, release_ns, watched, other = installed_rbac
    denied_calls: list[str] = []
    for (group, resource), verbs in sorted(needed_grants().items()):
        full = f"{resource.split('/')[0]}.{group}" if group else resource.split("/")[0]
        full += f"/{resource.split('/')[1]}" if "/" in resource else ""
        for verb in sorted(verbs):
            if resource == "leases":
                ok = can(cluster, sa, verb, full, release_ns,
                         None if verb == "create" else "finetune-operator-leader")
            elif resource in CLUSTER_SCOPED:
                ok = can(cluster, sa, verb, full, None)
            else:
                ok = can(cluster, sa, verb, full, watched)
            if not ok:
                denied_calls.append(f"{verb} {full}")
    assert not denied_calls, f"the chart's RBAC refuses calls the operator makes: {denied_calls}"

    # least privilege: what the code never does is refused
    refused = [
        ("get", "secrets", watched), ("list", "secrets", None),
        ("update", "finetunejobs.finetune.dev", watched),
        ("create", "finetunesweeps.finetune.dev", watched),
        ("delete", "configmaps", watched), ("delete", "persistentvolumeclaims", watched),
        ("patch", "pods", watched), ("create", "pods/exec", watched),
        ("create", "roles.rbac.authorization.k8s.io", watched),
        ("create", "rolebindings.rbac.authorization.k8s.io", watched),
        ("create", "serviceaccounts", watched), ("create", "serviceaccounts/token", watched),
        ("create", "pods", other), ("delete", "pods", other),            # not watched
        ("patch", "finetunejobs.finetune.dev/status", other),
        ("update", "leases.coordination.k8s.io", release_ns),            # another lease
        ("delete", "nodes", None), ("impersonate", "users", None),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ]
    allowed = [f"{v} {r} in {ns or 'cluster'}" for v, r, ns in refused
               if can(cluster, sa, v, r, ns)]
    assert not allowed, f"the operator may do what its code never does: {allowed}"
