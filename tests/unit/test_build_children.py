"""build_children as a whole: PVC (created vs existing claim), the trainer's only credential
(a projected report token), the report endpoint in the config, headless Service."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from finetune_api.trainer_config import ReportConfig
from finetune_operator.jobs.build import Children, build_children
from tests.builders.jobs import make_job, make_settings

pytestmark = pytest.mark.unit


def _checkpoint_volume(pod: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == "checkpoints")


def test_created_pvc_is_kept_by_default_and_mounted() -> None:
    job = make_job(storage={"size": "50Gi", "storageClassName": "fast"})
    ch = build_children(job, make_settings(), 1, "finetune-high", None)
    assert ch.pvc is not None
    assert ch.pvc["metadata"]["name"] == "bot-checkpoints"
    # whenDeleted Retain (default): no owner, so deleting the job keeps the model
    assert "ownerReferences" not in ch.pvc["metadata"]
    assert ch.pvc["metadata"]["annotations"]["finetune.dev/job-uid"] == job.metadata.uid
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


def test_trainer_pods_get_no_api_credential_only_a_report_token() -> None:
    """No per-job ServiceAccount/Role/RoleBinding: the pod runs as the configured account with
    no API token mounted, and holds only a projected token for the operator's audience."""
    job = make_job(nodes=2)
    ch = build_children(job, make_settings(trainer_service_account="trainers",
                                           report_audience="reports.example"), 3, None, None)
    assert {m["kind"] for m in ch.all()} == {"PersistentVolumeClaim", "ConfigMap", "Service",
                                              "Pod"}
    for pod in ch.pods:
        spec = pod["spec"]
        assert spec["serviceAccountName"] == "trainers"
        assert spec["automountServiceAccountToken"] is False
        token = next(v for v in spec["volumes"] if v["name"] == "report-token")
        assert token["projected"]["sources"] == [{"serviceAccountToken": {
            "audience": "reports.example", "expirationSeconds": 3600, "path": "token"}}]
        mount = next(m for m in spec["containers"][0]["volumeMounts"]
                     if m["name"] == "report-token")
        assert mount == {"name": "report-token", "readOnly": True,
                         "mountPath": "/var/run/secrets/finetune.dev/report"}


def test_report_endpoint_travels_in_the_trainer_config() -> None:
    job = make_job()
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    report = ReportConfig(url="https://op.ops.svc:8443/v1/reports", ca_pem=pem)
    config = yaml.safe_load(build_children(job, make_settings(), 1, None, None, report)
                            .config_map["data"]["config.yaml"])
    assert config["report"] == {"url": "https://op.ops.svc:8443/v1/reports", "caPem": pem,
                                "tokenFile": "/var/run/secrets/finetune.dev/report/token"}
    bare = yaml.safe_load(build_children(job, make_settings(), 1, None, None)
                          .config_map["data"]["config.yaml"])
    assert "report" not in bare


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
        "PersistentVolumeClaim", "ConfigMap", "Service", "Pod", "Pod",
    ]
    names = [(o["kind"], o["metadata"]["name"]) for o in a.all()]
    assert len(set(names)) == len(names)


def test_attempt_must_be_one_based() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        build_children(make_job(), make_settings(), 0, None, None)


def test_created_pvc_with_when_deleted_delete_is_owned_by_the_job() -> None:
    job = make_job(storage={"size": "50Gi", "whenDeleted": "Delete"})
    ch = build_children(job, make_settings(), 1, None, None)
    assert ch.pvc is not None
    assert ch.pvc["metadata"]["ownerReferences"][0]["uid"] == job.metadata.uid
