"""The CRD generated from the pydantic models: committed file up to date, structural schema,
bounded CEL inputs, printer columns, and server-side defaults that equal the models' defaults."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel

from finetune_api import FineTuneJobSpec, FineTuneJobStatus
from finetune_api import crd as crdmod
from finetune_api.base import ApiModel, cel
from tests.builders.invalid_cases import valid_manifest

pytestmark = pytest.mark.unit

CRD = crdmod.build_crd()
VERSION = CRD["spec"]["versions"][0]
ROOT = VERSION["schema"]["openAPIV3Schema"]
SPEC = ROOT["properties"]["spec"]
STATUS = ROOT["properties"]["status"]
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "nullable",
             "propertyNames", "definitions"}
# Per-expression static cost limit of the API server (k8s.io/apiserver/pkg/apis/cel).
STATIC_COST_LIMIT = 10_000_000


def walk(node: dict[str, Any], path: str = "",
         ancestors: tuple[dict[str, Any], ...] = ()) -> Iterator[tuple[str, dict[str, Any],
                                                                   tuple[dict[str, Any], ...]]]:
    yield path, node, ancestors
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}", (*ancestors, node))
    if "items" in node:
        yield from walk(node["items"], f"{path}[]", (*ancestors, node))
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}", (*ancestors, node))


# --- the committed file -------------------------------------------------------------------------

def test_committed_crd_is_what_the_models_generate() -> None:
    assert crdmod.CRD_PATH.exists(), "run `python -m finetune_api.crd --write`"
    messages: list[str] = []
    assert crdmod.check(out=messages.append), "\n".join(messages)


def test_render_is_deterministic_and_parses_back() -> None:
    first, second = crdmod.render(), crdmod.render()
    assert first == second
    assert yaml.safe_load(first) == CRD
    assert "&id" not in first and "*id" not in first  # no YAML anchors/aliases


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdmod.render().replace("maxLength: 1024", "maxLength: 1000", 1))
    messages: list[str] = []
    assert not crdmod.check(stale, out=messages.append)
    assert "--write" in messages[0] and "maxLength: 1000" in messages[0]
    assert crdmod.main(["--check", "--path", str(stale)]) == 1
    assert crdmod.main(["--write", "--path", str(stale)]) == 0
    assert crdmod.main(["--check", "--path", str(stale)]) == 0
    assert crdmod.main(["--check", "--path", str(tmp_path / "missing.yaml")]) == 1


# --- names, subresources, printer columns -------------------------------------------------------

def test_names_and_version() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "finetunejobs.finetune.dev"
    assert spec["group"] == "finetune.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {"kind": "FineTuneJob", "listKind": "FineTuneJobList",
                             "plural": "finetunejobs", "singular": "finetunejob",
                             "shortNames": ["ftj"], "categories": ["finetune"]}
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert VERSION["served"] and VERSION["storage"]
    assert VERSION["subresources"] == {"status": {}}


def _node_at(json_path: str) -> dict[str, Any]:
    node = ROOT
    for part in json_path.strip(".").split("."):
        if part == "creationTimestamp":
            return {"type": "string", "format": "date-time"}
        node = node["properties"][part]
    return node


def test_printer_columns_match_api_md() -> None:
    cols = VERSION["additionalPrinterColumns"]
    # NAME is always printed first by kubectl; AGE must be listed once columns are custom.
    assert [c["name"].upper() for c in cols] == [
        "PHASE", "PRIORITY", "GPUS", "PROGRESS", "LOSS", "PREEMPTIONS", "AGE"]
    assert {c["name"].upper(): c["jsonPath"] for c in cols} == {
        "PHASE": ".status.phase", "PRIORITY": ".spec.priorityClassName",
        "GPUS": ".spec.resources.gpus", "PROGRESS": ".status.progress.summary",
        "LOSS": ".status.progress.loss", "PREEMPTIONS": ".status.preemptions",
        "AGE": ".metadata.creationTimestamp"}
    for c in cols:
        if c["type"] == "date":
            continue
        assert _node_at(c["jsonPath"])["type"] == c["type"], c


# --- structural schema --------------------------------------------------------------------------

def test_schema_is_structural() -> None:
    assert ROOT["type"] == "object" and ROOT["required"] == ["spec"]
    for path, node, _ in walk(ROOT):
        assert not FORBIDDEN & node.keys(), f"{path}: {FORBIDDEN & node.keys()}"
        assert node.get("type") in {"object", "array", "string", "integer", "number",
                                    "boolean"}, f"{path}: no type"
        if node["type"] == "object":
            assert not ("properties" in node and "additionalProperties" in node), path
            assert node.get("additionalProperties") is not False, path
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True, f"{path}: {key} must be a boolean in OpenAPI v3.0"
        for key in ("minimum", "maximum"):
            if key in node:  # the API server truncates bounds for integer-valued inputs
                assert float(node[key]).is_integer(), f"{path}: fractional {key}"


def test_metadata_only_restricts_the_name() -> None:
    meta = ROOT["properties"]["metadata"]
    assert set(meta["properties"]) == {"name"}
    assert meta["properties"]["name"]["maxLength"] == crdmod.MAX_NAME_LENGTH <= 63


def test_every_spec_string_list_and_map_is_bounded() -> None:
    for path, node, _ in walk(SPEC, "spec"):
        if node["type"] == "string":
            assert "maxLength" in node, f"{path}: string without maxLength"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: list without maxItems"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: map without maxProperties"


def test_dict_fields_are_maps_with_typed_values() -> None:
    selector = SPEC["properties"]["resources"]["properties"]["nodeSelector"]
    assert selector["additionalProperties"]["type"] == "string"
    metrics = STATUS["properties"]["output"]["properties"]["metrics"]
    assert metrics["additionalProperties"] == {"type": "number"}


def test_enums_and_optional_fields() -> None:
    props = SPEC["properties"]
    assert props["method"]["enum"] == ["lora", "qlora", "full"]
    assert props["method"]["default"] == "lora"
    bits = dict(props["quantization"]["properties"]["bits"])
    assert bits.pop("description")  # every spec field has one (test_field_reference.py)
    assert bits == {"type": "integer", "enum": [4, 8], "default": 4}
    assert SPEC["required"] == ["model", "dataset"]
    assert "lora" not in SPEC["required"] and props["lora"]["type"] == "object"
    assert STATUS["properties"]["phase"]["enum"][0] == "Queued"


def test_fractional_bounds_become_cel() -> None:
    split = SPEC["properties"]["dataset"]["properties"]["validationSplit"]
    assert "maximum" not in split and split["minimum"] == 0
    assert split["x-kubernetes-validations"] == [
        {"rule": "double(self) < 0.5", "message": "dataset.validationSplit must be < 0.5"}]


# --- CEL rules ----------------------------------------------------------------------------------

def _rules() -> list[tuple[str, dict[str, Any], tuple[dict[str, Any], ...], dict[str, str]]]:
    return [(path, node, anc, rule) for path, node, anc in walk(ROOT)
            for rule in node.get("x-kubernetes-validations", [])]


def _chains(rule: str) -> list[list[str]]:
    """Field paths a rule reads: `self.a.b.startsWith(...)` reads ['a', 'b']."""
    out = []
    for m in re.finditer(r"self((?:\.[A-Za-z_]\w*)+)(\()?", rule):
        chain = m.group(1).split(".")[1:]
        if m.group(2):
            chain = chain[:-1]
        if chain:
            out.append(chain)
    return out


def _resolve(node: dict[str, Any], chain: list[str]) -> dict[str, Any] | None:
    for part in chain:
        props = node.get("properties", {})
        if part not in props:
            return None
        node = props[part]
    return node


def test_expected_rules_are_present() -> None:
    messages = " | ".join(r.get("message") or r["messageExpression"] for _, _, _, r in _rules())
    for words in ("model.source: exactly one", "dataset.source: exactly one",
                  "quantization is required when method is qlora", "lora must not be set",
                  "set epochs > 0 or maxSteps > 0", "path must be relative",
                  "set exactly one of size", "offloadParams needs stage 3",
                  "fp16 needs resources.gpus"):
        assert words in messages, words


def test_every_cel_touched_string_and_list_is_bounded() -> None:
    rules = _rules()
    assert len(rules) >= 15
    for path, node, ancestors, rule in rules:
        chains = _chains(rule["rule"])
        for chain in chains:
            target = _resolve(node, chain)
            assert target is not None, f"{path}: rule {rule['rule']!r} refers to unknown {chain}"
            if target["type"] == "string":
                assert "maxLength" in target, f"{path}.{'.'.join(chain)}: unbounded string"
            if target["type"] == "array":
                assert "maxItems" in target, f"{path}.{'.'.join(chain)}: unbounded list"
        if node["type"] == "string" and "self" in rule["rule"]:
            assert "maxLength" in node, path
        # evaluated once per element of every enclosing list/map: those must be bounded too
        cardinality = 1
        for anc in ancestors:
            if anc["type"] == "array":
                assert "maxItems" in anc, f"{path}: rule inside an unbounded list"
                cardinality *= anc["maxItems"]
            if anc["type"] == "object" and "additionalProperties" in anc:
                assert "maxProperties" in anc, f"{path}: rule inside an unbounded map"
                cardinality *= anc["maxProperties"]
        longest = max([1] + [(_resolve(node, c) or {}).get("maxLength", 1) for c in chains])
        assert cardinality * longest * 10 < STATIC_COST_LIMIT, f"{path}: {rule['rule']}"


def test_every_rule_message_names_a_field() -> None:
    for path, _node, _, rule in _rules():
        msg = rule.get("message") or rule["messageExpression"]  # the frozen-spec rules compute
        leaf = path.rsplit(".", 1)[-1]                            # theirs (the phase is in it)
        referenced = {c for chain in _chains(rule["rule"]) for c in chain}
        field_path = rule.get("fieldPath", "").strip(".").split(".")[-1]
        named = {leaf, field_path, *referenced} - {""}
        assert any(re.search(rf"\b{re.escape(n)}\b", msg) for n in named), (path, rule)


def test_rules_with_field_path_point_at_real_fields() -> None:
    for path, node, _, rule in _rules():
        if "fieldPath" in rule:
            chain = rule["fieldPath"].strip(".").split(".")
            assert _resolve(node, chain) is not None, (path, rule)


# --- defaults -----------------------------------------------------------------------------------

def apply_defaults(obj: Any, node: dict[str, Any]) -> Any:
    """The API server's structural defaulting: fill absent properties from `default`, then
    recurse into every property (so nested defaults of a defaulted object apply too)."""
    if isinstance(obj, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
        for name, value in obj.items():
            if name in node["properties"]:
                apply_defaults(value, node["properties"][name])
    elif isinstance(obj, dict) and isinstance(node.get("additionalProperties"), dict):
        for value in obj.values():
            apply_defaults(value, node["additionalProperties"])
    elif isinstance(obj, list) and "items" in node:
        for value in obj:
            apply_defaults(value, node["items"])
    return obj


@pytest.mark.parametrize("spec", [
    valid_manifest()["spec"],
    {"model": {"name": "m", "source": {"hub": {"repo": "o/m"}}},
     "dataset": {"source": {"pvc": {"claimName": "d"}}}},
    {"model": {"name": "m", "source": {"pvc": {"claimName": "m"}}},
     "dataset": {"source": {"hub": {"repo": "o/d"}}}, "method": "qlora", "quantization": {},
     "lora": {}, "distributed": {"deepspeed": {}}, "checkpoint": {"storage": {"claimName": "c"}},
     "resources": {"tolerations": [{"operator": "Exists"}]}},
], ids=["example", "minimal", "everything-empty"])
def test_server_defaults_equal_the_models_defaults(spec: dict[str, Any]) -> None:
    server = apply_defaults(copy.deepcopy(spec), SPEC)
    assert server == FineTuneJobSpec.model_validate(spec).to_wire()


def test_defaults_are_valid_for_the_models() -> None:
    for path, node, _ in walk(SPEC, "spec"):
        if "default" in node and node["type"] == "object" and "properties" in node:
            assert isinstance(node["default"], dict), path
    FineTuneJobStatus.model_validate(apply_defaults({}, STATUS))


# --- the converter refuses what a structural schema cannot express ----------------------------

class _Union(ApiModel):
    value: int | str = 1


class _FreeForm(ApiModel):
    data: dict[str, Any] = {}


class _Cel(ApiModel):
    model_config = {"json_schema_extra": cel(("self.a > 0", "a must be positive", ".a"))}
    a: int = 1
    kind: Literal["x", "y"] = "x"


@pytest.mark.parametrize("model", [_Union, _FreeForm], ids=["union", "free-form"])
def test_unsupported_constructs_raise(model: type[BaseModel]) -> None:
    with pytest.raises(crdmod.SchemaError):
        crdmod.structural(model)


def test_cel_and_literal_are_carried() -> None:
    node = crdmod.structural(_Cel)
    assert node["x-kubernetes-validations"] == [
        {"rule": "self.a > 0", "message": "a must be positive", "fieldPath": ".a"}]
    assert node["properties"]["kind"] == {"type": "string", "enum": ["x", "y"], "default": "x",
                                          "maxLength": crdmod.ENUM_MAX_LENGTH}
