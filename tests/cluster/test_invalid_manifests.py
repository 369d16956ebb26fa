"""The generated CRD on the real API server: every manifest of tests/builders/invalid_cases.py is
rejected by `kubectl apply` with an error naming the field; a valid one is stored with the
defaults the operator's models apply; `kubectl get ftj` prints the api.md columns."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api import FineTuneJobSpec
from tests.builders.invalid_cases import (
    CASES,
    TRANSITIONS,
    Case,
    Transition,
    names_field,
    patch_spec_in_phase,
    server_errors,
    valid_manifest,
)

from ..kube import Cluster

pytestmark = pytest.mark.cluster


def _apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest),
                           check=False)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_manifest_is_rejected_naming_the_field(
    cluster: Cluster, crd_installed: object, namespace: str, case: Case
) -> None:
    proc = _apply(cluster, namespace, case.manifest(namespace=namespace))
    assert proc.returncode != 0, f"{case.id}: accepted:\n{proc.stdout}"
    errors = server_errors(proc.stderr)
    assert names_field(errors, case.field), (
        f"{case.id}: error does not name {case.field}:\n{proc.stderr}"
    )
    name = case.manifest()["metadata"]["name"]
    assert cluster.get("finetunejob", name, namespace) is None


def test_valid_manifest_is_stored_with_the_models_defaults(
    cluster: Cluster, crd_installed: object, namespace: str
) -> None:
    manifest = valid_manifest(namespace=namespace)
    proc = _apply(cluster, namespace, manifest)
    assert proc.returncode == 0, proc.stderr
    stored = cluster.get("finetunejob", "support-bot", namespace)
    assert stored is not None
    expected = FineTuneJobSpec.model_validate(manifest["spec"]).to_wire()
    assert stored["spec"] == expected
    # a few defaults spelled out, so a failure reads well
    assert stored["spec"]["dataset"]["format"] == "messages"
    assert stored["spec"]["training"]["precision"] == "bf16"
    assert stored["spec"]["checkpoint"]["intervalSteps"] == 200
    assert stored["spec"]["lora"]["targetModules"] == ["all-linear"]


def test_minimal_manifest_gets_nested_defaults(
    cluster: Cluster, crd_installed: object, namespace: str
) -> None:
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "minimal", "namespace": namespace},
        "spec": {"model": {"name": "m", "source": {"hub": {"repo": "org/m"}}},
                 "dataset": {"source": {"configMap": {"name": "d", "key": "k"}},
                             "validationSplit": 0}},
    }
    proc = _apply(cluster, namespace, manifest)
    assert proc.returncode == 0, proc.stderr  # validationSplit: 0 (an integer) is fine
    stored = cluster.get("finetunejob", "minimal", namespace)
    assert stored is not None
    assert stored["spec"] == FineTuneJobSpec.model_validate(manifest["spec"]).to_wire()


def test_printer_columns_short_name_category_and_status_subresource(
    cluster: Cluster, crd_installed: object, namespace: str
) -> None:
    assert _apply(cluster, namespace, valid_manifest(namespace=namespace)).returncode == 0
    # a finished phase: an operator running on the shared cluster leaves it as written (a
    # "Running" job without pods would be requeued by it while this test reads the columns)
    status = {"status": {"phase": "Succeeded", "progress": {"summary": "120/300", "step": 120,
                                                            "loss": 0.83},
                         "preemptions": 2}}
    cluster.kubectl("patch", "finetunejob", "support-bot", "-n", namespace,
                    "--subresource=status", "--type=merge", "-p", json.dumps(status))
    out = cluster.kubectl("get", "ftj", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "PRIORITY", "GPUS", "PROGRESS", "LOSS",
                              "PREEMPTIONS", "AGE"]
    row = out[1].split()
    assert row[:7] == ["support-bot", "Succeeded", "finetune-normal", "1", "120/300", "0.83",
                       "2"]
    assert "support-bot" in cluster.kubectl("get", "finetune", "-n", namespace).stdout
    # the main resource ignores status; the status subresource ignores spec
    stored = cluster.get("finetunejob", "support-bot", namespace)
    assert stored is not None and stored["status"]["phase"] == "Succeeded"
    bad = cluster.kubectl("patch", "finetunejob", "support-bot", "-n", namespace,
                          "--subresource=status", "--type=merge", "-p",
                          json.dumps({"status": {"phase": "Exploded"}}), check=False)
    assert bad.returncode != 0 and "status.phase" in bad.stderr


@pytest.mark.parametrize("case", TRANSITIONS, ids=lambda c: c.id)
def test_spec_is_frozen_once_admitted(
    cluster: Cluster, crd_installed: object, namespace: str, case: Transition
) -> None:
    """CEL transition rules at the CRD's root (a spec rule cannot see status): only suspend,
    activeDeadlineSeconds, backoffLimit and ttlSecondsAfterFinished change once the job is
    admitted; the message names the field and says to suspend or recreate."""
    # no GPU quota: an operator running on the shared cluster keeps the job Queued instead of
    # admitting it (the test sets the phases itself)
    cluster.kubectl("create", "quota", "gpus", "-n", namespace, "--hard=requests.nvidia.com/gpu=0")
    assert _apply(cluster, namespace, valid_manifest(namespace=namespace)).returncode == 0
    proc, before, after = patch_spec_in_phase(cluster, namespace, "support-bot", case.phase,
                                              case.spec)
    if not case.field:
        assert proc.returncode == 0, proc.stderr
        assert after["spec"] != before["spec"]
        return
    assert proc.returncode != 0, f"{case.id}: accepted"
    assert names_field(server_errors(proc.stderr), case.field), proc.stderr
    assert f"{case.field} cannot change while the job is {case.phase}" in proc.stderr
    assert "set spec.suspend to true" in proc.stderr and "recreate" in proc.stderr
    assert after["spec"] == before["spec"]
    # the operator's status writes are not spec changes: still accepted
    cluster.kubectl("patch", "finetunejob", "support-bot", "-n", namespace,
                    "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"preemptions": 1}}))
