"""The FineTuneJob, FineTuneSweep and ModelServer CustomResourceDefinitions, generated from the
pydantic models.

The models in spec.py/status.py are the single source; this module turns their JSON schemas into
the *structural* OpenAPI v3 schema the API server requires:

- every ``$ref`` inlined, ``anyOf [X, null]`` replaced by X (optional = not in ``required``),
  ``title`` dropped, ``type`` on every node, ``additionalProperties`` only for maps;
- JSON-schema-2020 ``exclusiveMinimum: 0`` becomes OpenAPI's ``minimum: 0, exclusiveMinimum: true``;
- string enums get a ``maxLength`` so CEL cost estimates stay bounded;
- defaults are kept, including those from ``default_factory`` (as the full wire object), so the
  API server stores the same effective spec the operator parses;
- ``x-kubernetes-validations`` (CEL, see ``base.cel``) and descriptions are carried over.

Usage::

    python -m finetune_api.crd --write   # regenerate crds/finetunejobs.finetune.dev.yaml,
                                                  # crds/finetunesweeps.finetune.dev.yaml
                                                  # and crds/modelservers.finetune.dev.yaml
    python -m finetune_api.crd --check   # exit 1 when a committed file is stale

A node with ``x-kubernetes-preserve-unknown-fields: true`` and no type (a sweep parameter's
values: numbers, strings or booleans) is the one exception to "every node has a type".
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from finetune_api.job import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from finetune_api.server import (
    MAX_SERVER_NAME,
    SERVER_KIND,
    SERVER_PLURAL,
    SERVER_SHORT_NAMES,
    SERVER_SINGULAR,
    ModelServerSpec,
    ModelServerStatus,
)
from finetune_api.spec import EDITABLE_PHASES, MUTABLE_AFTER_ADMISSION, FineTuneJobSpec
from finetune_api.status import FineTuneJobStatus
from finetune_api.sweep import (
    MAX_SWEEP_NAME,
    SWEEP_KIND,
    SWEEP_PLURAL,
    SWEEP_SHORT_NAMES,
    SWEEP_SINGULAR,
    FineTuneSweepSpec,
    FineTuneSweepStatus,
)

CRD_NAME = f"{PLURAL}.{GROUP}"
ENUM_MAX_LENGTH = 64
CATEGORIES = ["finetune"]
# The job name is the value of its children's `finetune.dev/job` label (63 characters at most);
# child names (`<name>-config`, `<name>-a<attempt>-<rank>`) are shortened with a hash by
# build/names.py when needed, so only the label limit is enforced here.
MAX_NAME_LENGTH = 63

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / f"{CRD_NAME}.yaml"
HEADER = (
    "# Generated from the pydantic models in api/finetune_api/ by\n"
    "#   python -m finetune_api.crd --write\n"
    "# Do not edit by hand: change the models and regenerate (make crd).\n"
)

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Priority", "type": "string", "jsonPath": ".spec.priorityClassName"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "Preemptions", "type": "integer", "jsonPath": ".status.preemptions"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# Keywords a structural schema may carry (anything else pydantic emits is an error, so a new
# kind of field fails here instead of producing a CRD the API server rejects).
_KEY_ORDER = [
    "description", "type", "format", "enum", "default", "nullable",
    "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "required", "properties", "additionalProperties", "items",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
]
_DROPPED = {"title", "propertyNames"}


class SchemaError(ValueError):
    """A model uses a JSON-schema construct that a structural CRD schema cannot express."""


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also emit defaults that come from ``default_factory`` (pydantic leaves them out)."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return value.model_dump(by_alias=True, exclude_none=True, mode="json")
        return value


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as pydantic generates it (wire names, with factory defaults)."""
    return model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults
    )


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The model as a structural OpenAPI v3 schema node."""
    raw = json_schema(model)
    defs = raw.pop("$defs", {})
    return _convert(raw, defs, model.__name__)


def _resolve(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Inline $ref, and unwrap anyOf [X, null] / allOf [X]; siblings override the target."""
    node = dict(node)
    for _ in range(64):
        if "$ref" in node:
            ref = node.pop("$ref")
            name = ref.rsplit("/", 1)[-1]
            if not ref.startswith("#/$defs/") or name not in defs:
                raise SchemaError(f"{path}: unresolvable $ref {ref}")
            node = {**defs[name], **node}
        elif "anyOf" in node or "oneOf" in node:
            key = "anyOf" if "anyOf" in node else "oneOf"
            options = [o for o in node.pop(key) if o != {"type": "null"}]
            if len(options) != 1:
                raise SchemaError(
                    f"{path}: unions are not supported in a structural schema ({key} with "
                    f"{len(options)} non-null options); use one type and a CEL rule instead"
                )
            node = {**options[0], **node}
        elif "allOf" in node:
            options = node.pop("allOf")
            if len(options) != 1:
                raise SchemaError(f"{path}: allOf with {len(options)} schemas is not supported")
            node = {**options[0], **node}
        else:
            return node
    raise SchemaError(f"{path}: $ref cycle (recursive models cannot become a CRD schema)")


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs, path)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "default":
            if value is not None:
                out["default"] = value
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out["properties"] = {
                name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs, f"{path}{{}}")
            elif value is True:
                raise SchemaError(f"{path}: free-form objects are not supported; type the values")
            # False: unknown fields are pruned by the API server (and rejected by kubectl's
            # strict field validation); structural schemas may not say it explicitly.
        elif key == "x-kubernetes-validations":
            out[key] = [
                {k: rule[k] for k in ("rule", "messageExpression", "message", "fieldPath",
                                      "reason", "optionalOldSelf") if k in rule}
                for rule in value
            ]
        elif key in _KEY_ORDER:
            out[key] = copy.deepcopy(value)
        else:
            raise SchemaError(f"{path}: JSON-schema keyword {key!r} has no structural equivalent")
    if "type" not in out and out.get("x-kubernetes-preserve-unknown-fields") is True:
        return _ordered(out)  # any JSON value (structural schemas allow it untyped)
    if "type" not in out:
        enum = out.get("enum")
        if enum and all(isinstance(v, str) for v in enum):
            out["type"] = "string"
        elif enum and all(isinstance(v, int) and not isinstance(v, bool) for v in enum):
            out["type"] = "integer"
        else:
            raise SchemaError(f"{path}: no type (every node of a structural schema needs one)")
    if out["type"] == "object" and "properties" in out and "additionalProperties" in out:
        raise SchemaError(f"{path}: both properties and additionalProperties")
    if out["type"] == "string" and "enum" in out and "maxLength" not in out:
        # generous, so a wrong value gets one clear "Unsupported value" error, not also "Too long"
        out["maxLength"] = max(ENUM_MAX_LENGTH, *(len(v) for v in out["enum"]))
    if out["type"] == "number":
        _fractional_bounds_to_cel(out, path)
    return _ordered(out)


def _fractional_bounds_to_cel(node: dict[str, Any], path: str) -> None:
    """Move a non-integer minimum/maximum of a number into a CEL rule.

    The API server's OpenAPI validation compares an integer-valued input (JSON ``0``) with the
    bound truncated to an integer: ``validationSplit: 0`` against ``maximum: 0.5`` (exclusive)
    fails with "should be less than 0". CEL compares numbers as doubles, correctly.
    """
    field = path.split(".", 1)[-1]
    for key, flag, ops in (("minimum", "exclusiveMinimum", (">=", ">")),
                           ("maximum", "exclusiveMaximum", ("<=", "<"))):
        bound = node.get(key)
        if not isinstance(bound, float) or bound.is_integer():
            continue
        exclusive = bool(node.pop(flag, False))
        del node[key]
        op = ops[1] if exclusive else ops[0]
        node.setdefault("x-kubernetes-validations", []).append(
            {"rule": f"double(self) {op} {bound!r}", "message": f"{field} must be {op} {bound!r}"}
        )


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    return {k: node[k] for k in _KEY_ORDER if k in node}


def frozen_spec_rules() -> list[dict[str, Any]]:
    """Root-level CEL transition rules: once a job is admitted, every spec field outside
    MUTABLE_AFTER_ADMISSION keeps its value. At the root because a rule under ``spec`` cannot see
    ``status``; one rule per field so the message names it."""
    phases = ", ".join(f"'{p}'" for p in EDITABLE_PHASES)
    editable = (f"!has(oldSelf.status) || !has(oldSelf.status.phase) "
                f"|| oldSelf.status.phase in [{phases}]")
    names = [f.alias or n for n, f in FineTuneJobSpec.model_fields.items()]
    allowed = ", ".join(f"spec.{n}" for n in names if n in MUTABLE_AFTER_ADMISSION)
    rules = []
    for name in names:
        if name in MUTABLE_AFTER_ADMISSION:
            continue
        new, old = f"self.spec.{name}", f"oldSelf.spec.{name}"
        same = f"has({new}) == has({old}) && (!has({new}) || {new} == {old})"
        rules.append({
            "rule": f"{editable} || ({same})",
            "messageExpression": (
                f"'spec.{name} cannot change while the job is ' + oldSelf.status.phase + "
                f"' (only {allowed} may): set spec.suspend to true, change it once the job is "
                f"Suspended, then set spec.suspend to false; or delete and recreate the job'"),
            "fieldPath": f".spec.{name}",
            "reason": "FieldValueForbidden",
        })
    return rules


def root_schema() -> dict[str, Any]:
    return _root(FineTuneJobSpec, FineTuneJobStatus,
                 "What to fine-tune, on what data, with which resources.",
                 "An LLM fine-tuning job, queued under its namespace's GPU quota and "
                 "admitted by priority.",
                 MAX_NAME_LENGTH, "the name is the value of the children's finetune.dev/job label",
                 frozen_spec_rules())


def _root(spec_model: type[BaseModel], status_model: type[BaseModel], spec_doc: str, doc: str,
          max_name: int, name_doc: str,
          rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec = _ordered({"description": spec_doc, **structural(spec_model)})
    status = _ordered({"description": "Written only by the operator.",
                       **structural(status_model)})
    return _ordered({
        "description": doc,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "description": f"at most {max_name} characters: {name_doc}",
                        "type": "string",
                        "maxLength": max_name,
                    },
                },
            },
            "spec": spec,
            "status": status,
        },
        **({"x-kubernetes-validations": rules} if rules else {}),
    })


def build_crd() -> dict[str, Any]:
    """The FineTuneJob CustomResourceDefinition (apiextensions.k8s.io/v1) as a plain dict."""
    return _crd(CRD_NAME, KIND, PLURAL, SINGULAR, SHORT_NAMES, PRINTER_COLUMNS, root_schema())


# ---- FineTuneSweep (additive: the same generator, a second CRD) ------------------------------

SWEEP_CRD_NAME = f"{SWEEP_PLURAL}.{GROUP}"
SWEEP_CRD_PATH = REPO_ROOT / "crds" / f"{SWEEP_CRD_NAME}.yaml"
SWEEP_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Trials", "type": "string", "jsonPath": ".status.summary"},
    {"name": "Active", "type": "integer", "jsonPath": ".status.activeTrials"},
    {"name": "Metric", "type": "string", "jsonPath": ".spec.objective.metric"},
    {"name": "Best", "type": "string", "jsonPath": ".status.best.name"},
    {"name": "Value", "type": "number", "jsonPath": ".status.best.value"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def sweep_root_schema() -> dict[str, Any]:
    return _root(FineTuneSweepSpec, FineTuneSweepStatus,
                 "A template FineTuneJob spec and the search over its fields.",
                 "A hyper-parameter sweep: child FineTuneJobs (trials) from a template, a grid "
                 "or random search, ranked by one metric.",
                 MAX_SWEEP_NAME, "trials are named <sweep>-t<index>")


def build_sweep_crd() -> dict[str, Any]:
    """The FineTuneSweep CustomResourceDefinition as a plain dict."""
    return _crd(SWEEP_CRD_NAME, SWEEP_KIND, SWEEP_PLURAL, SWEEP_SINGULAR, SWEEP_SHORT_NAMES,
                SWEEP_PRINTER_COLUMNS, sweep_root_schema())


# ---- ModelServer (additive: the same generator, a third CRD) --------------------------------

SERVER_CRD_NAME = f"{SERVER_PLURAL}.{GROUP}"
SERVER_CRD_PATH = REPO_ROOT / "crds" / f"{SERVER_CRD_NAME}.yaml"
SERVER_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus"},
    {"name": "Adapters", "type": "string", "jsonPath": ".status.loadedAdapters"},
    {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def server_root_schema() -> dict[str, Any]:
    return _root(ModelServerSpec, ModelServerStatus,
                 "The base model, its adapters, the runtime and its resources.",
                 "An OpenAI-compatible server of a base model and LoRA adapters, admitted under "
                 "its namespace's GPU quota like a FineTuneJob.",
                 MAX_SERVER_NAME, "the server's Service and pod are named after it")


def build_server_crd() -> dict[str, Any]:
    """The ModelServer CustomResourceDefinition as a plain dict."""
    return _crd(SERVER_CRD_NAME, SERVER_KIND, SERVER_PLURAL, SERVER_SINGULAR, SERVER_SHORT_NAMES,
                SERVER_PRINTER_COLUMNS, server_root_schema())


# (path, builder) of every CRD this module generates.
TARGETS: list[tuple[Path, Callable[[], dict[str, Any]]]] = [
    (CRD_PATH, build_crd), (SWEEP_CRD_PATH, build_sweep_crd),
    (SERVER_CRD_PATH, build_server_crd)]


def _crd(name: str, kind: str, plural: str, singular: str, short_names: list[str],
         columns: list[dict[str, Any]], schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "finetune-operator",
                       "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [dict(c) for c in columns],
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: every node written out
        return True


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_representer)


def render(crd: dict[str, Any] | None = None) -> str:
    """Deterministic YAML: the dicts' own (stable) key order, no line folding."""
    body = yaml.dump(
        crd if crd is not None else build_crd(),
        Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1_000_000,
        allow_unicode=True,
    )
    return HEADER + body


def check(path: Path = CRD_PATH, out: Callable[[str], Any] = print,
          build: Callable[[], dict[str, Any]] = build_crd) -> bool:
    """True when the file at `path` is what the models generate; prints a diff hint otherwise."""
    want = render(build())
    have = path.read_text() if path.exists() else ""
    if have == want:
        return True
    diff = list(difflib.unified_diff(
        have.splitlines(), want.splitlines(), f"{path} (committed)", f"{path} (from the models)",
        lineterm="", n=2,
    ))
    shown = "\n".join(diff[:60]) + ("\n..." if len(diff) > 60 else "")
    out(f"{path} is out of date with the pydantic models ({len(diff)} diff lines):\n{shown}\n"
        "Regenerate it with `python -m finetune_api.crd --write` (or `make crd`) "
        "and commit the result.")
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune_api.crd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the CRD file")
    mode.add_argument("--check", action="store_true", help="exit 1 if the CRD file is stale")
    p.add_argument("--path", type=Path, default=None,
                   help=f"the FineTuneJob CRD only, at this path (default: {CRD_PATH} and "
                   f"{SWEEP_CRD_PATH})")
    args = p.parse_args(argv)
    targets = [(args.path, build_crd)] if args.path is not None else TARGETS
    if args.check:
        return 0 if all([check(path, build=build) for path, build in targets]) else 1
    if args.write:
        for path, build in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(build()))
            print(f"wrote {path}")
        return 0
    sys.stdout.write("---\n".join(render(build()) for _, build in targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
