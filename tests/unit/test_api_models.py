"""Pydantic validation of the FineTuneJob spec: the table in tests/builders/invalid_cases.py (shared
with the cluster test against the real API server) and the defaults."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api import FineTuneJob, FineTuneJobSpec
from finetune_api.spec import LoraSpec, StorageSpec, Toleration
from tests.builders.invalid_cases import CASES, Case, names_field, valid_manifest

pytestmark = pytest.mark.unit

MODEL_CASES = [c for c in CASES if not c.server_only]


def _errors(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(["spec", *(str(p) for p in e["loc"])]), e["msg"]) for e in exc.errors()]


def test_table_is_big_enough() -> None:
    assert len(MODEL_CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def test_valid_manifest_is_valid() -> None:
    spec = FineTuneJobSpec.model_validate(valid_manifest()["spec"])
    assert spec.method == "lora" and spec.resources.gpus == 1


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.id)
def test_invalid_spec_is_rejected_naming_the_field(case: Case) -> None:
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate(case.manifest()["spec"])
    errors = _errors(info.value)
    assert names_field(errors, case.field), f"no error names {case.field}: {errors}"


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.id)
def test_parse_at_the_edge_rejects_the_same(case: Case) -> None:
    body = case.manifest()
    body["metadata"]["namespace"] = "team-a"
    with pytest.raises(ValidationError):
        FineTuneJob.from_body(body)


def test_names_field_is_not_vacuous() -> None:
    assert not names_field([("spec.lora.rank", "too small")], "spec.lora.alpha")
    assert not names_field([("spec.training", "something else")], "spec.training.epochs")
    assert names_field([("spec.training", "set epochs > 0")], "spec.training.epochs")
    assert names_field([("spec.resources.tolerations[0]", "value must be empty")],
                       "spec.resources.tolerations.0.value")


def _minimal() -> dict[str, Any]:
    return {
        "model": {"name": "m", "source": {"hub": {"repo": "org/m"}}},
        "dataset": {"source": {"configMap": {"name": "d", "key": "k"}}},
    }


def test_defaults() -> None:
    spec = FineTuneJobSpec.model_validate(_minimal())
    assert spec.method == "lora"
    assert spec.lora is None and spec.lora_or_default() == LoraSpec()
    assert spec.quantization is None and spec.distributed is None
    assert spec.dataset.format == "messages"
    assert spec.dataset.validation_split == 0.0 and spec.dataset.cutoff_len == 2048
    assert spec.model.source.hub is not None and spec.model.source.hub.revision == "main"
    assert spec.training.epochs == 3.0 and spec.training.max_steps == 0
    assert spec.training.precision == "bf16" and spec.training.lr_scheduler == "cosine"
    assert spec.resources.gpus == 1 and spec.resources.nodes == 1
    assert spec.resources.gpu_resource is None  # the operator's default applies
    assert spec.priority_class_name is None  # the operator's default applies
    assert spec.checkpoint.storage == StorageSpec(size="20Gi")
    assert spec.checkpoint.interval_steps == 200 and spec.checkpoint.keep == 2
    assert spec.suspend is False and spec.backoff_limit == 3
    assert spec.active_deadline_seconds is None and spec.image is None
    assert spec.output.merge_adapter is False


def test_wire_form_round_trips() -> None:
    spec = FineTuneJobSpec.model_validate(valid_manifest()["spec"])
    wire = spec.to_wire()
    assert "priorityClassName" in wire and "priority_class_name" not in wire
    assert FineTuneJobSpec.model_validate(wire) == spec


def test_qlora_with_quantization_and_gpu_is_valid() -> None:
    spec = FineTuneJobSpec.model_validate(
        {**_minimal(), "method": "qlora", "quantization": {}, "resources": {"gpus": 1}}
    )
    assert spec.quantization is not None and spec.quantization.bits == 4


def test_full_on_cpu_with_max_steps_only() -> None:
    spec = FineTuneJobSpec.model_validate(
        {**_minimal(), "method": "full", "training": {"epochs": 0, "maxSteps": 10,
                                                       "precision": "fp32"},
         "resources": {"gpus": 0}}
    )
    assert spec.lora_or_default() is None and spec.training.max_steps == 10


@pytest.mark.parametrize("tol", [
    {"operator": "Exists"},
    {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoExecute",
     "tolerationSeconds": 60},
])
def test_valid_tolerations(tol: dict[str, Any]) -> None:
    Toleration.model_validate(tol)


def test_existing_claim_storage() -> None:
    spec = FineTuneJobSpec.model_validate({**_minimal(), "checkpoint": {
        "storage": {"claimName": "shared"}}})
    assert spec.checkpoint.storage.claim_name == "shared"
    assert spec.checkpoint.storage.size is None
