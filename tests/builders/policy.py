"""The chart's apply-time policy (ValidatingAdmissionPolicy, binding, user ClusterRoles) on
the real API server, and the tenants who try it: shared by tests/cluster/test_policy.py and
test_attack_editor.py (the `policy` fixture in tests/cluster/conftest.py wraps
``installed_policy``).

    allowed(policy.apply_as(TENANT, job("plain")))
    denied(policy.apply_as(TENANT, job("crit", priorityClassName="finetune-critical")),
           "spec.priorityClassName: finetune-critical is not allowed")
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.builders.chart import POLICY_KINDS, render_chart
from tests.builders.invalid_cases import patched
from tests.kube import Cluster, short_id, wait_for

TENANT = "tenant-alice"          # bound to <release>-edit only
POD_CREATOR = "tenant-bob"       # -edit plus create pods
VIEWER = "tenant-victor"         # -view only
JOBS_ONLY = "tenant-jordan"      # a Role on finetunejobs only (tests of reference checks)


@dataclass
class Policy:
    cluster: Cluster
    release: str
    release_ns: str    # the release namespace (rendered into the chart)
    ns: str            # the tenant's namespace: default classes only
    granted_ns: str    # the platform team granted finetune-critical here

    @property
    def edit_role(self) -> str:
        return f"{self.release}-finetune-operator-edit"

    def apply_as(self, user: str, manifest: dict[str, Any], namespace: str | None = None,
                 dry_run: bool = False) -> subprocess.CompletedProcess[str]:
        args = ["apply", "--as", user, "-n", namespace or self.ns, "-f", "-"]
        if dry_run:
            args.append("--dry-run=server")
        return self.cluster.kubectl(*args, input=json.dumps(manifest), check=False)

    def kubectl_as(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("--as", user, *args, check=False)

    def bind(self, user: str, cluster_role: str, namespace: str | None = None) -> None:
        ns = namespace or self.ns
        self.cluster.kubectl("create", "rolebinding", f"{user}-{cluster_role}"[:63], "-n", ns,
                             f"--clusterrole={cluster_role}", f"--user={user}")

    def grant(self, user: str, name: str, verb: str, resource: str,
              resource_name: str | None = None) -> None:
        extra = [f"--resource-name={resource_name}"] if resource_name else []
        self.cluster.kubectl("create", "role", name, "-n", self.ns, f"--verb={verb}",
                             f"--resource={resource}", *extra)
        self.cluster.kubectl("create", "rolebinding", name, "-n", self.ns, f"--role={name}",
                             f"--user={user}")
        wait_for(f"{user} to be allowed {verb} {resource}", lambda: self.kubectl_as(
            user, "auth", "can-i", verb, resource + (f"/{resource_name}" if resource_name
                                                     else ""), "-n", self.ns
        ).stdout.strip() == "yes", 30)


def job(name: str, **spec: Any) -> dict[str, Any]:
    """A job that references nothing in the namespace (hub sources without tokens, a PVC the
    operator creates): the editor role alone may create it."""
    base = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny", "source": {"hub": {"repo": "org/tiny"}}},
            "dataset": {"source": {"hub": {"repo": "org/data"}}},
            "training": {"maxSteps": 10},
            "resources": {"gpus": 1},
            "priorityClassName": "finetune-normal",
            "checkpoint": {"storage": {"size": "1Gi"}},
        },
    }
    return patched(base, {"spec": spec})


def denied(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, f"accepted:\n{proc.stdout}"
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in the error:\n{proc.stderr}"
    return proc.stderr


def allowed(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr


def sweep(name: str, parameters: list[dict[str, Any]] | None = None, **template: Any
          ) -> dict[str, Any]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
            "metadata": {"name": name},
            "spec": {"template": job("t", **template)["spec"],
                     "parameters": parameters or [{"path": "training.learningRate",
                                                   "values": [0.0001, 0.0002]}]}}


@contextmanager
def installed_policy(cluster: Cluster, make_namespace: Callable[..., str],
                     values: dict[str, Any]) -> Iterator[Policy]:
    """The chart's policy, binding and user roles for two fresh namespaces (the tenant's, and
    one where the platform team granted every band), ``values`` deep-merged into the chart's;
    removed afterwards. Needs the CRDs and PriorityClasses installed."""
    sid = short_id()
    release, release_ns = f"pol-{sid}", f"ft-pol-{sid}"
    # no GPU quota: an operator running on the shared cluster keeps these jobs Queued
    ns, granted_ns = make_namespace(gpu_quota=0), make_namespace(gpu_quota=0)
    cluster.create_namespace(release_ns)
    docs = render_chart(release, release_ns, patched({
        "crds": {"install": False},
        "priorityClasses": {"create": False},
        "watchNamespaces": [ns, granted_ns],
        "namespacePriorityClasses": {granted_ns: ["finetune-critical", "finetune-high",
                                                  "finetune-normal", "finetune-low"]},
        "policy": {"enabled": True, "imagePrefixes": ["registry.example/ml/"],
                   "imageFromPodCreators": True, "tolerationKeys": ["nvidia.com/gpu"],
                   "nodeSelectorKeys": ["pool"]},
    }, values))
    wanted = [d for d in docs if d["kind"] in POLICY_KINDS
              or (d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(("-edit",
                                                                                 "-view")))]
    assert sorted(d["kind"] for d in wanted) == sorted(["ClusterRole", "ClusterRole",
                                                         *POLICY_KINDS])
    p = Policy(cluster, release, release_ns, ns, granted_ns)
    try:
        cluster.apply(wanted)
        p.bind(TENANT, p.edit_role)
        p.bind(TENANT, p.edit_role, granted_ns)
        p.bind(POD_CREATOR, p.edit_role)
        p.bind(VIEWER, f"{release}-finetune-operator-view")
        vap_name = f"{release}-finetune-operator-jobs"

        def type_checked() -> dict[str, Any] | None:
            vap = cluster.get("validatingadmissionpolicy", vap_name) or {}
            st = vap.get("status") or {}
            if st.get("observedGeneration") != vap.get("metadata", {}).get("generation"):
                return None
            return st or {"typeChecking": {}}

        status = wait_for("the policy to be type-checked", type_checked, 60)
        assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status
        # informer-fed: live once it refuses a known-bad request with its own message
        wait_for("the policy to refuse a preempting band with its own message",
                 lambda: "spec.priorityClassName: finetune-critical is not allowed" in p.apply_as(
                     TENANT, job("probe", priorityClassName="finetune-critical"),
                     dry_run=True).stderr, 60)
        yield p
    finally:
        for d in wanted:
            cluster.kubectl("delete", d["kind"], d["metadata"]["name"], "--ignore-not-found")
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", "--ignore-not-found")
