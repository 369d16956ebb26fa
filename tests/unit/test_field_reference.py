"""The field reference: every spec field of the generated CRDs carries a description, so
`kubectl explain finetunejob.spec --recursive` (and finetunesweep.spec) reads as a reference.

Walks the committed files in crds/ and the chart's copies (what a cluster actually gets), not the
models: a description lost by the generator, or a stale file, fails here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
CHART_CRD_FILES = sorted((ROOT / "charts" / "finetune-operator" / "files" / "crds").glob("*.yaml"))
# Short enough to read in `kubectl explain`: a sentence or two, not a page.
MAX_DESCRIPTION = 400


def spec_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


def properties(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, schema) of every property below node: object fields, list items' fields and map
    values' fields included."""
    for name, sub in node.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from properties(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from properties(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from properties(node["additionalProperties"], f"{path}{{}}")


def test_the_crd_files_are_there() -> None:
    names = {p.name for p in CRD_FILES}
    assert {"finetunejobs.finetune.dev.yaml", "finetunesweeps.finetune.dev.yaml"} <= names
    assert {p.name for p in CHART_CRD_FILES} == names


@pytest.mark.parametrize("path", CRD_FILES + CHART_CRD_FILES,
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_every_spec_field_has_a_description(path: Path) -> None:
    spec = spec_schema(path)
    assert spec.get("description", "").strip(), "spec itself has no description"
    fields = list(properties(spec, "spec"))
    assert len(fields) > 50, f"only {len(fields)} fields under spec: the walk is broken"
    missing = [p for p, node in fields if not str(node.get("description", "")).strip()]
    assert not missing, (
        f"{path.name}: {len(missing)} of {len(fields)} spec fields have no description "
        f"(kubectl explain shows nothing for them): {', '.join(missing)}. Add "
        "Field(description=...) in api/finetune_api/ (what it does, units, "
        "default, bounds) and run `make crd`.")
    too_long = [f"{p} ({len(node['description'])})" for p, node in fields
                if len(node["description"]) > MAX_DESCRIPTION]
    assert not too_long, f"descriptions over {MAX_DESCRIPTION} characters: {too_long}"


def test_the_job_reference_covers_the_key_fields() -> None:
    """Spot checks that the text says what a reader needs: units, defaults, bounds."""
    spec = dict(properties(spec_schema(ROOT / "crds" / "finetunejobs.finetune.dev.yaml"),
                           "spec"))
    for path, words in {
        "spec.resources.gpus": ("per node", "default 1", "0 = a CPU job"),
        "spec.resources.nodes": ("gang", "ReadWriteMany"),
        "spec.training.batchSize": ("per GPU", "gradientAccumulationSteps"),
        "spec.training.maxSteps": ("optimizer steps", "epochs"),
        "spec.checkpoint.intervalSteps": ("default 200",),
        "spec.activeDeadlineSeconds": ("seconds", "no limit"),
        "spec.method": ("lora", "qlora", "full"),
        "spec.dataset.source.configMap": ("1 MiB",),
    }.items():
        text = spec[path]["description"]
        for word in words:
            assert word in text, f"{path}: {word!r} not in {text!r}"


def test_the_sweep_template_carries_the_job_reference() -> None:
    job = dict(properties(spec_schema(ROOT / "crds" / "finetunejobs.finetune.dev.yaml"), "spec"))
    sweep = dict(properties(spec_schema(ROOT / "crds" / "finetunesweeps.finetune.dev.yaml"),
                            "spec"))
    for path, node in job.items():
        twin = sweep[path.replace("spec.", "spec.template.", 1)]
        assert twin["description"] == node["description"], path
