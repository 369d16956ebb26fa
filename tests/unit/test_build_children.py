"""build_children as a whole: PVC (created vs existing claim), RBAC, headless Service."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator.build import Children, build_children
from finetune_operator.build.rbac import role_rules
from tests.factories import make_job, make_settings

pytestmark = pytest.mark.unit


def _checkpoint_volume(pod: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == "checkpoints")


def test_created_pvc_is_owned_and_mounted() -> None:
    job = make_job(storage={"size": "50Gi", "storageClassName": "fast"})
    ch = build_children(job, make_settings(), 1, "finetune-high", None)
    assert ch.pvc is not None
    assert ch.pvc["metadata"]["name"] == "bot-checkpoints"
    assert ch.pvc["metadata"]["ownerReferences"][0]["uid"] == job.metadata.uid
    assert ch.pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "fast",
    }
    assert _checkpoint_volume(ch.pods[0])["persistentVolumeClaim"] == {
        "claimName": "bot-checkpoints", "readOnly": False,
    }


def test_created_pvc_without_class_and_rwx_for_multi_node() -> None:
    ch = build_children(make_job(nodes=2), make_settings(), 1, None, None)
    assert ch.pvc is not None
    assert ch.pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "storageClassName" not in ch.pvc["spec"]


def test_existing_claim_is_mounted_whole_never_created() -> None:
    job = make_job(storage={"claimName": "shared-ckpt"})
    ch = build_children(job, make_settings(), 1, None, None)
    assert ch.pvc is None
    assert not any(o["kind"] == "PersistentVolumeClaim" for o in ch.all())
    pod = ch.pods[0]
    assert _checkpoint_volume(pod)["persistentVolumeClaim"] == {
        "claimName": "shared-ckpt", "readOnly": False,
    }
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"]
                 if m["name"] == "checkpoints")
    assert mount == {"name": "checkpoints", "mountPath": "/mnt/checkpoints", "readOnly": False}
    assert "subPath" not in mount
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_WORK_DIR"] == f"/mnt/checkpoints/finetune/team-a/bot/{job.metadata.uid}"


def test_rbac_allows_only_get_patch_on_the_attempts_pods() -> None:
    job = make_job(nodes=2)
    ch = build_children(job, make_settings(), 3, None, None)
    assert ch.service_account["metadata"]["name"] == "bot-trainer"
    assert ch.role["rules"] == [{
        "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"],
        "resourceNames": ["bot-a3-0", "bot-a3-1"],
    }]
    assert [p["metadata"]["name"] for p in ch.pods] == ch.role["rules"][0]["resourceNames"]
    assert role_rules(job, 4)[0]["resourceNames"] == ["bot-a4-0", "bot-a4-1"]
    rb = ch.role_binding
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": "bot-trainer"}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "bot-trainer",
                               "namespace": "team-a"}]
    for pod in ch.pods:
        assert pod["spec"]["serviceAccountName"] == "bot-trainer"


def test_headless_service_for_multi_node_only() -> None:
    single = build_children(make_job(nodes=1), make_settings(), 1, None, None)
    assert single.service is None
    job = make_job(nodes=2)
    ch = build_children(job, make_settings(), 5, None, None)
    svc = ch.service
    assert svc is not None
    assert svc["metadata"]["name"] == "bot-workers"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["ports"][0]["port"] == 29500
    for pod in ch.pods:
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
    old = build_children(job, make_settings(), 4, None, None).pods[0]
    assert not svc["spec"]["selector"].items() <= old["metadata"]["labels"].items()


def test_children_order_and_determinism() -> None:
    job = make_job(nodes=2)
    a = build_children(job, make_settings(), 1, "finetune-high", 12.0)
    b = build_children(job, make_settings(), 1, "finetune-high", 12.0)
    assert a == b
    assert isinstance(a, Children)
    assert [o["kind"] for o in a.all()] == [
        "PersistentVolumeClaim", "ConfigMap", "ServiceAccount", "Role", "RoleBinding",
        "Service", "Pod", "Pod",
    ]
    names = [(o["kind"], o["metadata"]["name"]) for o in a.all()]
    assert len(set(names)) == len(names)


def test_attempt_must_be_one_based() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        build_children(make_job(), make_settings(), 0, None, None)
