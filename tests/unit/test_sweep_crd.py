"""The FineTuneSweep CRD generated from api/sweep.py: committed file current, field paths as an
enum from the FineTuneJobSpec model, apply-time rules present, any-typed values structural."""

from __future__ import annotations

import pytest

from finetune_api import crd as crdmod
from finetune_api.sweep import FIELD_PATHS, MAX_SWEEP_NAME

pytestmark = pytest.mark.unit

CRD = crdmod.build_sweep_crd()
ROOT = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC = ROOT["properties"]["spec"]


def test_committed_sweep_crd_is_what_the_models_generate() -> None:
    messages: list[str] = []
    assert crdmod.check(crdmod.SWEEP_CRD_PATH, out=messages.append,
                        build=crdmod.build_sweep_crd), "\n".join(messages)


def test_names_columns_and_name_limit() -> None:
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "FineTuneSweep", "finetunesweeps", ["fts"])
    version = CRD["spec"]["versions"][0]
    cols = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert cols["Best"] == ".status.best.name" and cols["Trials"] == ".status.summary"
    assert ROOT["properties"]["metadata"]["properties"]["name"]["maxLength"] == MAX_SWEEP_NAME


def test_parameter_paths_are_an_enum_of_the_job_spec_fields() -> None:
    param = SPEC["properties"]["parameters"]
    assert param["minItems"] == 1
    path = param["items"]["properties"]["path"]
    assert path["enum"] == list(FIELD_PATHS)
    assert SPEC["properties"]["maxParallel"]["minimum"] == 1
    values = param["items"]["properties"]["values"]
    assert values["minItems"] == 1
    assert values["items"] == {"x-kubernetes-preserve-unknown-fields": True}
    # exactly one of values/range: a property count (CEL cannot type the any-typed values)
    assert (param["items"]["minProperties"], param["items"]["maxProperties"]) == (2, 2)


def test_template_is_the_full_job_spec_schema_with_its_rules() -> None:
    job_spec = crdmod.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]
    template = SPEC["properties"]["template"]
    assert template["properties"].keys() == job_spec["properties"].keys()
    assert template["properties"]["lora"] == job_spec["properties"]["lora"]
    # fractional bounds become CEL rules whose message names the field under the template
    split = template["properties"]["dataset"]["properties"]["validationSplit"]
    assert "template.dataset.validationSplit" in split["x-kubernetes-validations"][0]["message"]
    assert template["x-kubernetes-validations"] == job_spec["x-kubernetes-validations"]
    rules = " ".join(r["rule"] for r in SPEC["x-kubernetes-validations"])
    assert "exists_one" in rules and "has(p.range)" in rules and "template.evaluation" in rules
