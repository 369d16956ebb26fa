"""Pure: ``submit`` flags (or a YAML file) -> a FineTuneJob manifest, validated client-side with
the same pydantic models the CRD is generated from, so a mistake is reported before the request
and names the flag to change."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from finetune_api.job import API_VERSION, KIND
from finetune_api.spec import FineTuneJobSpec
from finetune_operator.cli.errors import CliError

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_NAME = 63  # the CRD's limit: the name is also the children's finetune.dev/job label

# spec field path -> the submit flag that sets it (so a validation error can name the flag)
FLAG_OF: dict[str, str] = {
    "model.name": "--model", "model.source": "--model-pvc/--model-hub",
    "model.source.pvc": "--model-pvc", "model.source.hub": "--model-hub",
    "dataset.source": "--dataset-configmap/--dataset-pvc/--dataset-hub",
    "dataset.source.pvc": "--dataset-pvc", "dataset.source.configMap": "--dataset-configmap",
    "dataset.source.hub": "--dataset-hub", "dataset.format": "--dataset-format",
    "method": "--method", "lora.rank": "--lora-rank", "lora.alpha": "--lora-alpha",
    "lora": "--lora-rank/--lora-alpha", "quantization": "--quantization-bits",
    "quantization.bits": "--quantization-bits",
    "training.maxSteps": "--max-steps", "training.epochs": "--epochs",
    "training": "--max-steps/--epochs", "training.learningRate": "--learning-rate",
    "training.batchSize": "--batch-size",
    "training.gradientAccumulationSteps": "--gradient-accumulation-steps",
    "training.precision": "--precision", "resources.gpus": "--gpus", "resources.nodes": "--nodes",
    "resources.gpuResource": "--gpu-resource", "resources.cpu": "--cpu",
    "resources.memory": "--memory", "resources.nodeSelector": "--node-selector",
    "priorityClassName": "--priority", "checkpoint.storage": "--checkpoint-size/--checkpoint-claim",
    "checkpoint.storage.size": "--checkpoint-size",
    "checkpoint.storage.claimName": "--checkpoint-claim",
    "checkpoint.intervalSteps": "--checkpoint-interval", "backoffLimit": "--backoff-limit",
    "image": "--image", "output.mergeAdapter": "--merge-adapter",
}


@dataclass
class SubmitOptions:
    """The spec flags of ``kubectl finetune submit`` (None = not given: the server default)."""

    name: str | None = None
    namespace: str | None = None
    model: str | None = None
    model_pvc: str | None = None             # CLAIM:PATH
    model_hub: str | None = None             # REPO[@REVISION]
    dataset_configmap: str | None = None     # NAME:KEY
    dataset_pvc: str | None = None           # CLAIM:PATH
    dataset_hub: str | None = None           # REPO[@SPLIT]
    dataset_format: str | None = None
    method: str | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    quantization_bits: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    precision: str | None = None
    gpus: int | None = None
    nodes: int | None = None
    gpu_resource: str | None = None
    cpu: str | None = None
    memory: str | None = None
    node_selector: list[str] = field(default_factory=list)  # KEY=VALUE
    priority: str | None = None
    checkpoint_size: str | None = None
    checkpoint_claim: str | None = None
    checkpoint_interval: int | None = None
    suspend: bool = False
    backoff_limit: int | None = None
    image: str | None = None
    merge_adapter: bool = False
    set: list[str] = field(default_factory=list)  # PATH=VALUE (any spec field, camelCase path)

    def spec_flags_given(self) -> list[str]:
        """Names of the spec flags that were set (to refuse mixing them with -f)."""
        skip = {"name", "namespace"}
        out = []
        for k, v in vars(self).items():
            if k not in skip and v not in (None, False, []):
                out.append("--" + k.replace("_", "-"))
        return out


def split_pair(text: str, flag: str, what: str, sep: str = ":",
               optional_second: bool = False) -> tuple[str, str]:
    first, found, second = text.partition(sep)
    if not first or (not found and not optional_second) or (found and not second):
        raise CliError(f"{flag} wants {what}, got {text!r}")
    return first, second


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    node = tree
    keys = path.split(".")
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise CliError(f"--set {path}: {k} is not an object in the spec")
        node = nxt
    node[keys[-1]] = value


def manifest_from_options(o: SubmitOptions) -> dict[str, Any]:
    """Build the manifest from flags; only what was given is written (the API server defaults
    the rest). Raises CliError naming the flag to fix."""
    if not o.name:
        raise CliError("submit needs --name NAME (or -f FILE with a manifest)")
    spec: dict[str, Any] = {}
    # model
    if bool(o.model_pvc) == bool(o.model_hub):
        raise CliError("submit needs exactly one model source: --model-pvc CLAIM:PATH or "
                       "--model-hub REPO[@REVISION]")
    if o.model_pvc:
        claim, path = split_pair(o.model_pvc, "--model-pvc", "CLAIM:PATH", optional_second=True)
        source: dict[str, Any] = {"pvc": {"claimName": claim, "path": path}}
        default_name = path.rstrip("/").rsplit("/", 1)[-1] or claim
    else:
        repo, rev = split_pair(str(o.model_hub), "--model-hub", "REPO[@REVISION]", "@", True)
        source = {"hub": {"repo": repo, **({"revision": rev} if rev else {})}}
        default_name = repo
    spec["model"] = {"name": o.model or default_name, "source": source}
    # dataset
    given = [f for f, v in (("--dataset-configmap", o.dataset_configmap),
                            ("--dataset-pvc", o.dataset_pvc), ("--dataset-hub", o.dataset_hub))
             if v]
    if len(given) != 1:
        raise CliError("submit needs exactly one dataset source: --dataset-configmap NAME:KEY, "
                       "--dataset-pvc CLAIM:PATH or --dataset-hub REPO[@SPLIT]"
                       + (f" (got {', '.join(given)})" if given else ""))
    if o.dataset_configmap:
        name, key = split_pair(o.dataset_configmap, "--dataset-configmap", "NAME:KEY")
        dsource: dict[str, Any] = {"configMap": {"name": name, "key": key}}
    elif o.dataset_pvc:
        claim, path = split_pair(o.dataset_pvc, "--dataset-pvc", "CLAIM:PATH")
        dsource = {"pvc": {"claimName": claim, "path": path}}
    else:
        repo, split = split_pair(str(o.dataset_hub), "--dataset-hub", "REPO[@SPLIT]", "@", True)
        dsource = {"hub": {"repo": repo, **({"split": split} if split else {})}}
    spec["dataset"] = {"source": dsource}
    if o.dataset_format:
        spec["dataset"]["format"] = o.dataset_format
    # method
    if o.method:
        spec["method"] = o.method
    method = o.method or "lora"
    lora = {k: v for k, v in (("rank", o.lora_rank), ("alpha", o.lora_alpha)) if v is not None}
    if lora:
        if method == "full":
            raise CliError("--lora-rank/--lora-alpha do not apply to --method full; drop them "
                           "or use --method lora|qlora")
        spec["lora"] = lora
    if method == "qlora":
        spec["quantization"] = {"bits": o.quantization_bits or 4}
    elif o.quantization_bits is not None:
        raise CliError("--quantization-bits only applies to --method qlora")
    # training
    training = {k: v for k, v in (
        ("maxSteps", o.max_steps), ("epochs", o.epochs), ("learningRate", o.learning_rate),
        ("batchSize", o.batch_size), ("gradientAccumulationSteps", o.gradient_accumulation_steps),
        ("precision", o.precision)) if v is not None}
    if training:
        spec["training"] = training
    # resources
    selector: dict[str, str] = {}
    for item in o.node_selector:
        k, v = split_pair(item, "--node-selector", "KEY=VALUE", "=", optional_second=True)
        selector[k] = v
    resources: dict[str, Any] = {k: v for k, v in (
        ("gpus", o.gpus), ("nodes", o.nodes), ("gpuResource", o.gpu_resource), ("cpu", o.cpu),
        ("memory", o.memory)) if v is not None}
    if selector:
        resources["nodeSelector"] = selector
    if resources:
        spec["resources"] = resources
    if o.priority:
        spec["priorityClassName"] = o.priority
    # checkpoints
    if o.checkpoint_size and o.checkpoint_claim:
        raise CliError("set one of --checkpoint-size (the operator creates a PVC) or "
                       "--checkpoint-claim (an existing claim), not both")
    checkpoint: dict[str, Any] = {}
    if o.checkpoint_size:
        checkpoint["storage"] = {"size": o.checkpoint_size}
    if o.checkpoint_claim:
        checkpoint["storage"] = {"claimName": o.checkpoint_claim}
    if o.checkpoint_interval is not None:
        checkpoint["intervalSteps"] = o.checkpoint_interval
    if checkpoint:
        spec["checkpoint"] = checkpoint
    if o.suspend:
        spec["suspend"] = True
    if o.backoff_limit is not None:
        spec["backoffLimit"] = o.backoff_limit
    if o.image:
        spec["image"] = o.image
    if o.merge_adapter:
        spec["output"] = {"mergeAdapter": True}
    for item in o.set:
        path, _, raw = item.partition("=")
        if not _ or not path:
            raise CliError(f"--set wants PATH=VALUE (e.g. training.warmupRatio=0.03), got {item!r}")
        _put(spec, path.removeprefix("spec."), yaml.safe_load(raw) if raw else "")
    manifest: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND,
                                "metadata": {"name": o.name}, "spec": spec}
    if o.namespace:
        manifest["metadata"]["namespace"] = o.namespace
    validate_manifest(manifest, from_flags=True)
    return manifest


def load_manifest(text: str, source: str) -> dict[str, Any]:
    """One FineTuneJob from YAML/JSON text; CliError when it is not one."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise CliError(f"{source} is not valid YAML: {e}") from e
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise CliError(f"{source} must hold exactly one FineTuneJob object, found {len(docs)} "
                       "documents; submit them one at a time (or use kubectl apply -f)")
    doc: dict[str, Any] = docs[0]
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        raise CliError(f"{source}: expected apiVersion {API_VERSION}, kind {KIND}; got "
                       f"apiVersion {doc.get('apiVersion')!r}, kind {doc.get('kind')!r}")
    doc.pop("status", None)
    validate_manifest(doc, from_flags=False)
    return doc


def validate_manifest(manifest: dict[str, Any], *, from_flags: bool) -> None:
    """Name and spec checks of the CRD, done locally; the message names the field (and the
    flag that sets it, for manifests built from flags)."""
    meta = manifest.get("metadata") or {}
    name = str(meta.get("name") or "")
    if not name:
        raise CliError("metadata.name is required" + (": pass --name" if from_flags else ""))
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise CliError(f"name {name!r} is not valid: use at most {MAX_NAME} lowercase letters, "
                       "digits, '-' and '.', starting and ending with a letter or digit")
    try:
        FineTuneJobSpec.model_validate(manifest.get("spec") or {})
    except ValidationError as e:
        raise CliError(spec_error(e, from_flags)) from e


def spec_error(e: ValidationError, from_flags: bool) -> str:
    problems = []
    for err in e.errors()[:6]:
        path = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = f"spec.{path}" if path else "spec"
        flag = _flag_for(path) if from_flags else None
        problems.append(f"{where}: {msg}" + (f" (set with {flag})" if flag else ""))
    return "invalid FineTuneJob: " + "; ".join(problems)


def _flag_for(path: str) -> str | None:
    while path:
        if path in FLAG_OF:
            return FLAG_OF[path]
        path = path.rpartition(".")[0]
    return None
