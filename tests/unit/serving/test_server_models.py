"""The ModelServer models reject each case of tests/builders/server_cases.py naming the field
(the cluster test applies the same table to the real API server), and the generated CRD is
current."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from finetune_api.crd import SERVER_CRD_PATH, build_server_crd, check
from finetune_api.server import ModelServerSpec
from tests.builders.server_cases import SERVER_CASES, ServerCase, valid_server

pytestmark = pytest.mark.unit


def test_the_valid_server_parses() -> None:
    spec = ModelServerSpec.model_validate(valid_server()["spec"])
    assert (spec.runtime, spec.limits.max_loras, spec.port) == ("vllm", 4, 8000)


@pytest.mark.parametrize("case", [c for c in SERVER_CASES if not c.server_only],
                         ids=lambda c: c.id)
def test_invalid_server_is_rejected_naming_the_field(case: ServerCase) -> None:
    with pytest.raises(ValidationError) as e:
        ModelServerSpec.model_validate(case.manifest()["spec"])
    last = case.field.removeprefix("spec.").replace("[", ".").replace("]", "").split(".")[-1]
    assert last in str(e.value), f"{case.id}: {e.value}"


def test_generated_crd_is_current() -> None:
    assert check(SERVER_CRD_PATH, out=lambda _: None, build=build_server_crd)
