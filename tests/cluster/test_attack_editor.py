"""The editor role grants nothing RBAC denies (issue 19, finding 7), on the real API server.

Each attack is made by a user bound ONLY to the chart's `-edit` role (plus, where said, exactly
one more grant), against the chart's ValidatingAdmissionPolicy installed as in test_policy.py.
Each bypass is refused with a message naming the field; the normal case next to it is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.builders.chart import CHART
from tests.builders.invalid_cases import DELETE
from tests.builders.policy import TENANT, Policy, allowed, denied, job, sweep

from ..kube import Cluster

pytestmark = pytest.mark.cluster

MALLORY = "tenant-mallory"  # a second editor in the same namespace: -edit only
DIGEST = "@sha256:" + "0" * 64


@pytest.fixture(scope="module")
def sweep_crd(cluster: Cluster) -> Path:
    """The FineTuneSweep CRD (a sweep creates jobs), before the policy is type-checked."""
    crd = CHART.parents[1] / "crds" / "finetunesweeps.finetune.dev.yaml"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunesweeps.finetune.dev")
    return crd


def res(**kw: Any) -> dict[str, Any]:
    return {"resources": {"gpus": 1, **kw}}


# ---- resources.gpuResource: the pod requests it AND tolerates the taint of that name ----------

def test_gpu_resource_only_from_the_allow_list(sweep_crd: Path, policy: Policy) -> None:
    for bad in ("node-role.kubernetes.io/control-plane", "example.com/fpga"):
        denied(policy.apply_as(TENANT, job("gpu", **res(gpuResource=bad))),
               f"spec.resources.gpuResource: {bad} is not an allowed GPU resource",
               "nvidia.com/gpu, nvidia.com/mig-*", "policy.gpuResources")
    # the default list: the whole GPU and every MIG profile
    allowed(policy.apply_as(TENANT, job("gpu", **res(gpuResource="nvidia.com/gpu"))))
    allowed(policy.apply_as(TENANT, job("mig", **res(gpuResource="nvidia.com/mig-1g.10gb"))))
    # nor by an edit of the queued job, nor through a sweep
    denied(policy.apply_as(TENANT, job("mig", **res(gpuResource="example.com/fpga"))),
           "spec.resources.gpuResource: example.com/fpga")
    denied(policy.apply_as(TENANT, sweep("sw", **res(gpuResource="example.com/fpga"))),
           "spec.template.resources.gpuResource: example.com/fpga is not an allowed")
    denied(policy.apply_as(TENANT, sweep("sw", [{"path": "resources.gpuResource",
                                                 "values": ["nvidia.com/gpu", "x.io/y"]}])),
           "spec.parameters: resources.gpuResource may not be swept")


# ---- an existing checkpoint claim is mounted read-write ---------------------------------------

def test_checkpoint_claim_needs_update_not_only_get(policy: Policy) -> None:
    ckpt = {"checkpoint": {"storage": {"claimName": "team-ckpt", "size": DELETE}}}
    policy.grant(TENANT, "alice-ckpt-get", "get", "persistentvolumeclaims", "team-ckpt")
    denied(policy.apply_as(TENANT, job("claim", **ckpt)),
           "spec.checkpoint.storage.claimName names PersistentVolumeClaim team-ckpt",
           "you may not get and update it", "would mount it read-write for you",
           "ask the namespace admin for get and update on it")
    # a read-only mount (a model on a claim) needs get only
    model_pvc = {"model": {"name": "m", "source": {"pvc": {"claimName": "team-ckpt"},
                                                   "hub": DELETE}}}
    allowed(policy.apply_as(TENANT, job("model-on-claim", **model_pvc)))
    policy.grant(TENANT, "alice-ckpt-update", "update", "persistentvolumeclaims", "team-ckpt")
    allowed(policy.apply_as(TENANT, job("claim", **ckpt)))


# ---- a second editor steering a job that uses the first one's Secret --------------------------

def test_an_edit_rechecks_references_for_the_editor(policy: Policy) -> None:
    c, ns = policy.cluster, policy.ns
    policy.bind(MALLORY, policy.edit_role)
    c.kubectl("create", "secret", "generic", "alice-hf", "-n", ns, "--from-literal=token=x")
    policy.grant(TENANT, "alice-hf", "get", "secrets", "alice-hf")

    def model(repo: str) -> dict[str, Any]:
        return {"model": {"name": "m", "source": {"hub": {
            "repo": repo, "tokenSecretRef": {"name": "alice-hf", "key": "token"}}}}}

    allowed(policy.apply_as(TENANT, job("alices", **model("alice/private"))))
    # Mallory may not read alice-hf; pointing the job (and its token) at her own repo, or
    # changing anything else in its spec, is an act on that Secret
    for edit in (model("mallory/exfil"), {**model("alice/private"), "backoffLimit": 9}):
        denied(policy.apply_as(MALLORY, job("alices", **edit)),
               "spec.model.source.hub.tokenSecretRef.name names Secret alice-hf",
               f"you may not get it in namespace {ns}", "re-checks what it references")
    stored = c.get("finetunejob", "alices", ns) or {}
    assert stored["spec"]["model"]["source"]["hub"]["repo"] == "alice/private"
    assert stored["spec"].get("backoffLimit") != 9
    # metadata is not the spec: labels stay Mallory's to set
    allowed(policy.kubectl_as(MALLORY, "label", "finetunejob", "alices", "-n", ns, "team=ml"))
    # the author, who may read the Secret, edits as before
    allowed(policy.apply_as(TENANT, job("alices", **model("alice/private-v2"))))
    # a job with no references stays editable by every editor
    allowed(policy.apply_as(TENANT, job("plain")))
    allowed(policy.apply_as(MALLORY, job("plain", backoffLimit=9)))


# ---- the PVC the operator creates: size and class ----------------------------------------------

BOUNDED = {"policy": {"maxCheckpointStorageSize": "100Gi",
                      "checkpointStorageClasses": ["fast-ssd"]}}


@pytest.mark.parametrize("policy", [BOUNDED], indirect=True, ids=["bounded"])
def test_checkpoint_size_and_class_are_bounded(sweep_crd: Path, policy: Policy) -> None:
    def storage(**kw: Any) -> dict[str, Any]:
        return {"checkpoint": {"storage": {"size": "100Gi", **kw}}}

    for size in ("101Gi", "0.5Ti"):  # compared as quantities, not as text
        denied(policy.apply_as(TENANT, job("big", **storage(size=size))),
               f"spec.checkpoint.storage.size: {size} is more than the largest allowed (100Gi)",
               "policy.maxCheckpointStorageSize")
    allowed(policy.apply_as(TENANT, job("big", **storage())))
    allowed(policy.apply_as(TENANT, job("small", **storage(size="107374182400"))))  # 100Gi
    denied(policy.apply_as(TENANT, job("cls", **storage(storageClassName="premium-nvme"))),
           "spec.checkpoint.storage.storageClassName: premium-nvme is not allowed "
           "(allowed: fast-ssd)", "policy.checkpointStorageClasses")
    allowed(policy.apply_as(TENANT, job("cls", **storage(storageClassName="fast-ssd"))))
    allowed(policy.apply_as(TENANT, job("default-class", **storage())))
    denied(policy.apply_as(TENANT, sweep("sw", [{"path": "checkpoint.storage.size",
                                                 "values": ["1Gi", "100Ti"]}])),
           "spec.parameters: checkpoint.storage.size may not be swept")


def test_checkpoint_size_default_bound(policy: Policy) -> None:
    denied(policy.apply_as(TENANT, job("huge", checkpoint={"storage": {"size": "2Ti"}})),
           "spec.checkpoint.storage.size: 2Ti is more than the largest allowed (1Ti)")
    allowed(policy.apply_as(TENANT, job("huge", checkpoint={"storage": {"size": "1Ti"}})))


# ---- the default trainer image: fully qualified, matched as a whole reference -----------------

def test_default_image_is_qualified_and_matched_whole(policy: Policy) -> None:
    repo = "localhost/finetune-operator/trainer"
    # the Docker Hub namesake of the old default, and the repository without a tag
    for bad in ("finetune-operator/trainer:9", "docker.io/finetune-operator/trainer:9", repo):
        denied(policy.apply_as(TENANT, job("bad", image=bad)),
               f"spec.image: {bad} does not start with an allowed prefix",
               f"is not the default trainer repository {repo} with a tag or digest")
    for ok in (f"{repo}:9", f"{repo}{DIGEST}", f"{repo}:9{DIGEST}"):
        allowed(policy.apply_as(TENANT, job("img", image=ok)))
