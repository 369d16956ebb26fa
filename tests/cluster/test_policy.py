"""The chart's apply-time policy on the real API server, attacked by a tenant.

The chart is rendered with `helm template`; its ValidatingAdmissionPolicy, binding, params
ConfigMap and user ClusterRoles are applied (scoped by `watchNamespaces` to this test's
namespaces, so concurrent tests elsewhere are untouched). The operator need not run: everything
here is decided by the API server at `kubectl apply` time. The tenant is `kubectl --as` a user
bound ONLY to the chart's `-edit` role; a few tests add exactly one more grant (get on one
Secret, create pods) to show the policy follows the requester's own rights.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_dev.devcluster import build
from tests.builders.invalid_cases import DELETE, patch_spec_in_phase, patched

from ..kube import Cluster, short_id, wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"
TENANT = "tenant-alice"          # bound to <release>-edit only
POD_CREATOR = "tenant-bob"       # -edit plus create pods
VIEWER = "tenant-victor"         # -view only
JOBS_ONLY = "tenant-jordan"      # a Role on finetunejobs only (tests of reference checks)
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def render_chart(release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(build.binary("helm")), "template", release, str(CHART), "--namespace", namespace,
         "--values", "-"], input=yaml.safe_dump(values), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


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


@pytest.fixture
def policy(cluster: Cluster, crd_installed: Path, priority_classes: list[str],
           make_namespace: Callable[..., str], request: pytest.FixtureRequest
           ) -> Iterator[Policy]:
    """The chart's policy; indirect parametrization deep-merges more chart values."""
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
    }, getattr(request, "param", {})))
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


# ---- what each role may do ---------------------------------------------------------------------

def test_editor_role_is_jobs_only_viewer_reads(policy: Policy) -> None:
    def can_i(user: str, verb: str, res: str) -> str:
        resource, _, sub = res.partition("/")
        extra = [f"--subresource={sub}"] if sub else []
        return policy.kubectl_as(user, "auth", "can-i", verb, resource, *extra, "-n",
                                 policy.ns).stdout.strip()

    can = {(u, verb, res): can_i(u, verb, res)
           for u in (TENANT, VIEWER)
           for verb, res in (("create", "finetunejobs.finetune.dev"),
                             ("delete", "finetunejobs.finetune.dev"),
                             ("get", "finetunejobs.finetune.dev"),
                             ("patch", "finetunejobs.finetune.dev/status"),
                             ("create", "pods"), ("get", "secrets"), ("get", "configmaps"),
                             ("get", "persistentvolumeclaims"))}
    # writes: FineTuneJobs only; reads: what the CLI shows (ConfigMaps for list --queue, claims
    # for `output`), never Secrets; mounting a claim read-write needs `update`, not granted
    assert {k for k, v in can.items() if v == "yes"} == {
        (TENANT, "create", "finetunejobs.finetune.dev"),
        (TENANT, "delete", "finetunejobs.finetune.dev"),
        (TENANT, "get", "finetunejobs.finetune.dev"),
        (TENANT, "get", "configmaps"), (TENANT, "get", "persistentvolumeclaims"),
        (VIEWER, "get", "finetunejobs.finetune.dev"), (VIEWER, "get", "configmaps")}
    allowed(policy.apply_as(TENANT, job("plain")))
    denied(policy.apply_as(VIEWER, job("viewer-job")), "forbidden")
    # the tenant cannot write a status (e.g. fake "Queued" to unlock a running job's spec)
    denied(policy.kubectl_as(TENANT, "patch", "finetunejob", "plain", "-n", policy.ns,
                             "--subresource=status", "--type=merge", "-p",
                             '{"status": {"phase": "Succeeded"}}'), "forbidden")
    # nor touch the policy
    vap = f"{policy.release}-finetune-operator-jobs"
    for kind in ("validatingadmissionpolicy", "validatingadmissionpolicybinding"):
        denied(policy.kubectl_as(TENANT, "delete", kind, vap), "forbidden")
    denied(policy.kubectl_as(TENANT, "patch", "validatingadmissionpolicy", vap, "--type=json",
                             "-p", '[{"op": "remove", "path": "/spec/validations/1"}]'),
           "forbidden")


# ---- priority classes --------------------------------------------------------------------------

def test_preempting_band_only_where_granted(policy: Policy) -> None:
    err = denied(policy.apply_as(TENANT, job("crit", priorityClassName="finetune-critical")),
                 "spec.priorityClassName: finetune-critical is not allowed in namespace "
                 f"{policy.ns}", "finetune-high, finetune-normal, finetune-low",
                 "namespacePriorityClasses")
    assert "finetune-critical," not in err.split("allowed:")[1]
    denied(policy.apply_as(TENANT, job("sys", priorityClassName="system-cluster-critical")),
           "system-cluster-critical is not allowed")
    allowed(policy.apply_as(TENANT, job("crit", priorityClassName="finetune-critical"),
                            namespace=policy.granted_ns))
    allowed(policy.apply_as(TENANT, job("high", priorityClassName="finetune-high")))
    # no class: the operator's default applies (allowed by construction)
    no_class = job("default-class")
    del no_class["spec"]["priorityClassName"]
    allowed(policy.apply_as(TENANT, no_class))
    # sneaking it in by an edit of a queued job
    denied(policy.apply_as(TENANT, job("high", priorityClassName="finetune-critical")),
           "finetune-critical is not allowed")


# ---- images ------------------------------------------------------------------------------------

def test_image_only_from_prefixes_or_for_pod_creators(policy: Policy) -> None:
    allowed(policy.apply_as(TENANT, job("ok", image="registry.example/ml/trainer:2")))
    allowed(policy.apply_as(TENANT, job("default-repo",
                                        image="localhost/finetune-operator/trainer:9")))
    for bad in ("evil.example/miner:1", "registry.example/ml-evil/trainer:1",
                "registry.example/ml", "localhost/finetune-operator/trainer-evil:1"):
        denied(policy.apply_as(TENANT, job("bad", image=bad)), f"spec.image: {bad} does not",
               f"you may not create pods in namespace {policy.ns}", "policy.imagePrefixes")
    # who may create pods could run the image anyway
    denied(policy.apply_as(POD_CREATOR, job("bob", image="evil.example/miner:1")), "spec.image")
    policy.grant(POD_CREATOR, "bob-pods", "create", "pods")
    allowed(policy.apply_as(POD_CREATOR, job("bob", image="evil.example/miner:1")))
    # the tenant may edit that job's other fields while queued (the image is not re-checked:
    # it did not change), but not swap the image
    allowed(policy.apply_as(TENANT, job("bob", image="evil.example/miner:1", backoffLimit=5)))
    denied(policy.apply_as(TENANT, job("bob", image="evil.example/miner:2")), "spec.image")


# ---- objects the trainer would read for the requester ----------------------------------------

def test_secret_reference_needs_the_requesters_own_get(policy: Policy) -> None:
    c, ns = policy.cluster, policy.ns
    c.kubectl("create", "secret", "generic", "hf", "-n", ns, "--from-literal=token=x")
    c.kubectl("create", "secret", "generic", "other", "-n", ns, "--from-literal=token=y")
    ref = {"model": {"name": "m", "source": {"hub": {"repo": "org/m",
                                                     "tokenSecretRef": {"name": "hf",
                                                                        "key": "token"}}}}}
    denied(policy.apply_as(TENANT, job("tok", **ref)),
           "spec.model.source.hub.tokenSecretRef.name names Secret hf",
           f"you may not get it in namespace {ns}")
    data_ref = {"dataset": {"source": {"hub": {"repo": "org/d", "tokenSecretRef": {
        "name": "other", "key": "token"}}}}}
    denied(policy.apply_as(TENANT, job("tok2", **data_ref)),
           "spec.dataset.source.hub.tokenSecretRef.name names Secret other")
    policy.grant(TENANT, "alice-hf", "get", "secrets", "hf")
    allowed(policy.apply_as(TENANT, job("tok", **ref)))
    denied(policy.apply_as(TENANT, job("tok2", **data_ref)), "names Secret other")  # still not


def test_existing_claim_and_configmap_need_the_requesters_own_get(policy: Policy) -> None:
    # a user who may write FineTuneJobs and read nothing else (the chart's -edit role reads
    # ConfigMaps and claims): what it is refused here, the policy refuses, not RBAC
    for verb in ("create", "get", "patch"):
        policy.grant(JOBS_ONLY, f"jobs-only-{verb}", verb, "finetunejobs.finetune.dev")
    ckpt = {"checkpoint": {"storage": {"claimName": "shared-ckpt", "size": DELETE}}}
    # the -edit role reads claims but may not update one: no read-write mount either
    denied(policy.apply_as(TENANT, job("claim-rw", **ckpt)), "PersistentVolumeClaim shared-ckpt")
    denied(policy.apply_as(JOBS_ONLY, job("claim", **ckpt)),
           "spec.checkpoint.storage.claimName names PersistentVolumeClaim shared-ckpt")
    model_pvc = {"model": {"name": "m", "source": {"pvc": {"claimName": "models"},
                                                   "hub": DELETE}}}
    denied(policy.apply_as(JOBS_ONLY, job("mpvc", **model_pvc)),
           "spec.model.source.pvc.claimName names PersistentVolumeClaim models")
    data_pvc = {"dataset": {"source": {"pvc": {"claimName": "data"}, "hub": DELETE}}}
    denied(policy.apply_as(JOBS_ONLY, job("dpvc", **data_pvc)),
           "spec.dataset.source.pvc.claimName names PersistentVolumeClaim data")
    cm = {"dataset": {"source": {"configMap": {"name": "corpus", "key": "train.jsonl"},
                                 "hub": DELETE}}}
    denied(policy.apply_as(JOBS_ONLY, job("cm", **cm)),
           "spec.dataset.source.configMap.name names ConfigMap corpus")
    policy.grant(JOBS_ONLY, "alice-claims", "get", "persistentvolumeclaims", "shared-ckpt")
    # mounted read-write: update too (tests/cluster/test_attack_editor.py)
    policy.grant(JOBS_ONLY, "alice-claims-rw", "update", "persistentvolumeclaims", "shared-ckpt")
    allowed(policy.apply_as(JOBS_ONLY, job("claim", **ckpt)))
    denied(policy.apply_as(JOBS_ONLY, job("mpvc", **model_pvc)), "PersistentVolumeClaim models")


# ---- placement -------------------------------------------------------------------------------

def test_tolerations_and_node_selector_keys_are_limited(policy: Policy) -> None:
    def res(**kw: Any) -> dict[str, Any]:
        return {"resources": {"gpus": 1, **kw}}

    allowed(policy.apply_as(TENANT, job("gpu-tol", **res(
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        nodeSelector={"pool": "a100"}))))
    denied(policy.apply_as(TENANT, job("any-taint", **res(
        tolerations=[{"operator": "Exists"}]))),
        "spec.resources.tolerations: key (empty: every taint) is not allowed",
        "policy.tolerationKeys")
    denied(policy.apply_as(TENANT, job("cp", **res(tolerations=[
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]))),
        "key node-role.kubernetes.io/control-plane is not allowed")
    denied(policy.apply_as(TENANT, job("pin", **res(
        nodeSelector={"kubernetes.io/hostname": "gpu-node-7"}))),
        "spec.resources.nodeSelector: key kubernetes.io/hostname is not allowed",
        "policy.nodeSelectorKeys")


# ---- an admitted job keeps its class and size ------------------------------------------------

def test_admitted_job_keeps_priority_and_resources(policy: Policy) -> None:
    c, ns = policy.cluster, policy.ns
    allowed(policy.apply_as(TENANT, job("run", resources={"gpus": 2})))
    # the operator admits it (a status write, which the tenant cannot make); the tenant's edits
    proc, _, _ = patch_spec_in_phase(c, ns, "run", "Running", {"resources": {"gpus": 0}},
                                     as_user=TENANT)
    denied(proc, "spec.resources cannot change while the job is Running", "spec.suspend")
    proc, _, _ = patch_spec_in_phase(c, ns, "run", "Running",
                                     {"priorityClassName": "finetune-low"}, as_user=TENANT)
    denied(proc, "spec.priorityClassName cannot change while the job is Running")
    proc, _, after = patch_spec_in_phase(c, ns, "run", "Running", {"suspend": True},
                                         as_user=TENANT)
    allowed(proc)
    assert after["spec"]["resources"]["gpus"] == 2 and after["spec"]["suspend"] is True
    assert after["spec"]["priorityClassName"] == "finetune-normal"


# ---- a FineTuneSweep is a way to create jobs: its template and parameters are checked ---------

def sweep(name: str, parameters: list[dict[str, Any]] | None = None, **template: Any
          ) -> dict[str, Any]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
            "metadata": {"name": name},
            "spec": {"template": job("t", **template)["spec"],
                     "parameters": parameters or [{"path": "training.learningRate",
                                                   "values": [0.0001, 0.0002]}]}}


def test_sweep_template_and_parameters_are_checked(policy: Policy) -> None:
    allowed(policy.apply_as(TENANT, sweep("plain")))
    denied(policy.apply_as(TENANT, sweep("img", image="evil.example/miner:1")),
           "spec.template.image: evil.example/miner:1 does not start with an allowed prefix")
    denied(policy.apply_as(TENANT, sweep("crit", priorityClassName="finetune-critical")),
           "spec.template.priorityClassName: finetune-critical is not allowed")
    secret: dict[str, Any] = {"model": {"name": "m", "source": {"hub": {
        "repo": "org/m", "tokenSecretRef": {"name": "hf", "key": "token"}}}}}
    denied(policy.apply_as(TENANT, sweep("tok", **secret)),
           "spec.template.model.source.hub.tokenSecretRef.name names Secret hf")
    # varying a checked field per trial would escape the check on the template
    for path, values in (("image", ["finetune-operator/trainer:1", "evil.example/miner:1"]),
                         ("priorityClassName", ["finetune-low", "finetune-critical"]),
                         ("checkpoint.storage.claimName", ["a", "b"])):
        denied(policy.apply_as(TENANT, sweep("vary", [{"path": path, "values": values}])),
               f"spec.parameters: {path} may not be swept")
