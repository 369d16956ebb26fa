"""The generated ModelServer CRD on the real API server: every manifest of
tests/builders/server_cases.py is rejected by `kubectl apply` with an error naming the field;
a valid one is stored with the models' defaults; `kubectl get ms` prints the columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_api.server import ModelServerSpec
from tests.builders.invalid_cases import names_field, server_errors
from tests.builders.server_cases import SERVER_CASES, ServerCase, valid_server

from ..kube import Cluster

pytestmark = pytest.mark.cluster

CRD = Path(__file__).resolve().parents[2] / "crds" / "modelservers.finetune.dev.yaml"


@pytest.fixture(scope="module")
def server_crd(cluster: Cluster) -> Path:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modelservers.finetune.dev")
    return CRD


def _apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest),
                           check=False)


@pytest.mark.parametrize("case", SERVER_CASES, ids=lambda c: c.id)
def test_invalid_server_is_rejected_naming_the_field(
        cluster: Cluster, server_crd: Path, namespace: str, case: ServerCase) -> None:
    proc = _apply(cluster, namespace, case.manifest(namespace=namespace))
    assert proc.returncode != 0, f"{case.id}: accepted:\n{proc.stdout}"
    field = case.field.replace("[", ".").replace("]", "")
    errors = [(p.replace("[", ".").replace("]", ""), m) for p, m in server_errors(proc.stderr)]
    assert names_field(errors, field) or names_field(server_errors(proc.stderr), case.field), (
        f"{case.id}: error does not name {case.field}:\n{proc.stderr}")


def test_valid_server_is_stored_with_the_models_defaults(
        cluster: Cluster, server_crd: Path, namespace: str) -> None:
    manifest = valid_server(namespace=namespace)
    proc = _apply(cluster, namespace, manifest)
    assert proc.returncode == 0, proc.stderr
    stored = cluster.get("modelserver", "chat", namespace)
    assert stored is not None
    assert stored["spec"] == ModelServerSpec.model_validate(manifest["spec"]).to_wire()
    assert stored["spec"]["limits"]["maxLoras"] == 4 and stored["spec"]["runtime"] == "vllm"
    header = cluster.kubectl("get", "ms", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "RUNTIME", "GPUS", "ADAPTERS", "AGE"]


def test_an_s3_base_model_is_accepted(cluster: Cluster, server_crd: Path,
                                      namespace: str) -> None:
    """A server may read its base model from object storage (the runtime downloads it)."""
    manifest = valid_server("chat-s3", namespace=namespace)
    manifest["spec"]["model"]["source"] = {"s3": {
        "bucket": "models", "prefix": "base/tiny/", "endpoint": "http://s3.example:9000",
        "credentialsSecret": "s3-creds"}}
    proc = _apply(cluster, namespace, manifest)
    assert proc.returncode == 0, proc.stderr
    stored = cluster.get("modelserver", "chat-s3", namespace)
    assert stored is not None
    assert stored["spec"]["model"]["source"]["s3"]["prefix"] == "base/tiny/"
