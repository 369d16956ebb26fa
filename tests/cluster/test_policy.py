"""The chart's apply-time policy on the real API server, attacked by a tenant.

The chart is rendered with `helm template`; its ValidatingAdmissionPolicy, binding, params
ConfigMap and user ClusterRoles are applied (scoped by `watchNamespaces` to this test's
namespaces, so concurrent tests elsewhere are untouched). The operator need not run: everything
here is decided by the API server at `kubectl apply` time. The tenant is `kubectl --as` a user
bound ONLY to the chart's `-edit` role; a few tests add exactly one more grant (get on one
Secret, create pods) to show the policy follows the requester's own rights.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders.invalid_cases import DELETE, patch_spec_in_phase
from tests.builders.policy import (
    JOBS_ONLY,
    POD_CREATOR,
    TENANT,
    VIEWER,
    Policy,
    allowed,
    denied,
    job,
    sweep,
)

pytestmark = pytest.mark.cluster

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
