"""examples/: one FineTuneJob per method (LoRA, QLoRA, full, multi-GPU DeepSpeed, two nodes) plus
the sweep, each a complete manifest the models accept, named after its file and commented with how
to apply it. The API server's verdict (CRD schema, CEL rules, the chart's policy) is
tests/cluster/test_examples.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from finetune_api import FineTuneJobSpec
from finetune_api.sweep import FineTuneSweepSpec

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))
MODELS: dict[str, type[BaseModel]] = {"FineTuneJob": FineTuneJobSpec,
                                       "FineTuneSweep": FineTuneSweepSpec}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def jobs() -> dict[str, FineTuneJobSpec]:
    """file stem -> the spec of its FineTuneJob."""
    return {p.stem: FineTuneJobSpec.model_validate(d["spec"])
            for p in FILES for d in docs(p) if d["kind"] == "FineTuneJob"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_example_is_a_complete_valid_manifest(path: Path) -> None:
    found = docs(path)
    assert any(d["kind"] in MODELS for d in found), f"{path.name}: no FineTuneJob or sweep"
    for d in found:
        assert d["apiVersion"] == ("finetune.dev/v1alpha1" if d["kind"] in MODELS else "v1"), d
        assert "namespace" not in d["metadata"], (
            f"{path.name}: {d['metadata']['name']} names a namespace; examples are applied "
            "with -n <your namespace>")
        if d["kind"] in MODELS:
            MODELS[d["kind"]].model_validate(d["spec"])  # raises with the field on a bad spec
    header = path.read_text().split("\napiVersion:", 1)[0].splitlines()
    assert len(header) >= 3 and all(line.startswith("#") for line in header if line), (
        f"{path.name}: start with a comment that says what it shows and how to run it")
    if any(d["kind"] == "FineTuneJob" for d in found):
        assert f"#   kubectl apply -n team-a -f examples/{path.name}" in header, path.name


def test_one_job_per_method_named_after_its_file() -> None:
    found = jobs()
    names = {p.stem: d["metadata"]["name"] for p in FILES for d in docs(p)
             if d["kind"] == "FineTuneJob"}
    assert names == {stem: f"example-{stem}" for stem in found}
    assert found["lora"].method == "lora" and found["lora"].resources.total_gpus == 1
    assert found["qlora"].method == "qlora" and found["qlora"].quantization is not None
    assert found["full"].method == "full" and found["full"].resources.total_gpus == 1
    ds = found["deepspeed"]
    assert ds.distributed is not None and ds.distributed.deepspeed is not None
    assert ds.resources.nodes == 1 and ds.resources.gpus > 1
    two = found["two-node"]
    assert two.resources.nodes == 2 and two.checkpoint.storage.storage_class_name, (
        "a multi-node job needs a ReadWriteMany class: name one (with a comment)")


def test_the_sweep_example_is_kept() -> None:
    kinds = [d["kind"] for d in docs(EXAMPLES / "sweep.yaml")]
    assert kinds == ["ConfigMap", "FineTuneSweep"]
