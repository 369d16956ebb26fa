"""The New job form, pure: the form's fields -> a FineTuneJob manifest (and the ConfigMap of an
uploaded dataset); defaults by model size; the format and the first records of an uploaded
dataset; and the API server's refusal (a ``Status``) -> an error next to each form field.

The form does no validation of its own beyond what it needs to build the manifest (a number is a
number): the server-side dry run (``dryRun=All``) is the one judge, so the CRD's schema and CEL
rules, the namespace's ValidatingAdmissionPolicy (priority bands, images, node selectors) and
the ResourceQuota speak with their own words, at the field they name."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from finetune_api.job import API_VERSION, KIND

UPLOAD_LIMIT = 512 * 1024  # bytes: a ConfigMap holds at most 1 MiB, the form keeps half
PREVIEW_RECORDS = 3
FIELDS = ("name", "namespace", "model_hub", "model_pvc", "dataset_cm", "dataset_pvc",
          "dataset_text", "format", "method", "gpus", "band", "max_steps", "learning_rate",
          "lora_rank", "extra")

# spec path prefix (longest first) -> the form field that sets it; the rest is "extra"
FIELD_OF_PATH: tuple[tuple[str, str], ...] = (
    ("metadata.name", "name"), ("metadata", "name"),
    ("spec.model.source.pvc", "model_pvc"), ("spec.model.source.hub", "model_hub"),
    ("spec.model", "model_hub"),
    ("spec.dataset.format", "format"), ("spec.dataset.source.pvc", "dataset_pvc"),
    ("spec.dataset.source.configMap", "dataset_cm"), ("spec.dataset", "dataset_cm"),
    ("spec.method", "method"), ("spec.quantization", "method"), ("spec.lora", "lora_rank"),
    ("spec.training.maxSteps", "max_steps"), ("spec.training.learningRate", "learning_rate"),
    ("spec.resources.gpus", "gpus"), ("spec.priorityClassName", "band"),
    ("priorityClassName", "band"),
)


@dataclass
class Form:
    """What was typed (strings as the browser sent them)."""

    values: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str:
        return self.values.get(key, "").strip()


@dataclass
class Built:
    manifest: dict[str, Any] | None
    configmap: dict[str, Any] | None  # the uploaded dataset, when there is one
    errors: dict[str, str]  # form field -> message ("" key: not about one field)


def model_size_b(model: str) -> float | None:
    """Billions of parameters named in a model id (``Qwen2.5-0.5B``, ``llama-3-70b``,
    ``135M``); None when it names none."""
    m = re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])", model.replace("-", " ")
                   .replace("_", " ").replace("/", " "))
    if not m:
        return None
    value, unit = m[-1]
    return float(value) / (1000.0 if unit in "mM" else 1.0)


def defaults_for(model: str) -> dict[str, Any]:
    """Sensible starting points by model size: LoRA on one GPU up to ~14B, QLoRA above (more
    GPUs past 40B); a full fine-tune's learning rate is 10x-20x lower."""
    size = model_size_b(model)
    if size is None or size <= 3:
        d = {"method": "lora", "gpus": 1, "lora_rank": 16, "learning_rate": 2e-4}
    elif size <= 14:
        d = {"method": "lora", "gpus": 1, "lora_rank": 16, "learning_rate": 1e-4}
    elif size <= 40:
        d = {"method": "qlora", "gpus": 2, "lora_rank": 16, "learning_rate": 1e-4}
    else:
        d = {"method": "qlora", "gpus": 4, "lora_rank": 16, "learning_rate": 1e-4}
    d["size"] = "?" if size is None else (f"{size * 1000:g}M" if size < 1 else f"{size:g}B")
    d["full_learning_rate"] = 1e-5
    return d


def detect_format(data: str) -> tuple[str | None, list[dict[str, Any]], str]:
    """(format, the first records, a problem): the dataset formats of the trainer
    (``messages``, ``sharegpt``, ``alpaca``, ``text``) from the first JSON Lines records (or a
    JSON array); format None and a problem when it is not one of them."""
    records: list[Any] = []
    stripped = data.lstrip()
    try:
        if stripped.startswith("["):
            loaded = json.loads(stripped)
            records = loaded if isinstance(loaded, list) else []
        else:
            for i, line in enumerate(stripped.splitlines()):
                if line.strip():
                    records.append(json.loads(line))
                if len(records) >= 50:
                    break
                if i > 5000:
                    break
    except ValueError as e:
        return None, [], f"not JSON Lines: {e}"
    records = [r for r in records if isinstance(r, dict)]
    if not records:
        return None, [], "no JSON object records found"
    keys = set(records[0])
    if "messages" in keys:
        fmt = "messages"
    elif "conversations" in keys:
        fmt = "sharegpt"
    elif {"instruction", "output"} <= keys:
        fmt = "alpaca"
    elif "text" in keys:
        fmt = "text"
    else:
        return None, records[:PREVIEW_RECORDS], ("records have none of the keys messages, "
                                                 "conversations, instruction+output or text")
    return fmt, records[:PREVIEW_RECORDS], ""


def _pair(value: str) -> tuple[str, str] | None:
    first, sep, second = value.partition(":")
    return (first.strip(), second.strip()) if sep and first.strip() and second.strip() else None


def _number(form: Form, key: str, kind: type, errors: dict[str, str]) -> Any:
    raw = form.get(key)
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        errors[key] = f"{raw!r} is not a {'whole number' if kind is int else 'number'}"
        return None


def upload_name(job: str) -> str:
    return f"{job}-dataset"[:253]


def build(form: Form, namespace: str) -> Built:
    """The manifest (and the uploaded dataset's ConfigMap) from the form; only what it needs to
    build them is checked here (a source given, numbers that are numbers)."""
    errors: dict[str, str] = {}
    name = form.get("name")
    if not name:
        errors["name"] = "a job needs a name (lowercase letters, digits and '-')"
    spec: dict[str, Any] = {}
    hub, pvc = form.get("model_hub"), form.get("model_pvc")
    if pvc:
        pair = _pair(pvc)
        if pair is None:
            errors["model_pvc"] = "write it as claim:path, e.g. models:qwen2.5-0.5b"
        else:
            spec["model"] = {"name": pair[1].rstrip("/").rsplit("/", 1)[-1] or pair[0],
                             "source": {"pvc": {"claimName": pair[0], "path": pair[1]}}}
    elif hub:
        repo, _, rev = hub.partition("@")
        spec["model"] = {"name": repo, "source": {"hub": {"repo": repo,
                                                          **({"revision": rev} if rev else {})}}}
    else:
        errors["model_hub"] = "pick a model: a hub id, or claim:path on a volume"
    configmap = None
    cm, dpvc, upload = form.get("dataset_cm"), form.get("dataset_pvc"), form.get("dataset_text")
    fmt = form.get("format")
    if upload:
        if len(upload.encode()) > UPLOAD_LIMIT:
            errors["dataset_text"] = (f"the file is {len(upload.encode()) // 1024} KiB; upload "
                                      f"at most {UPLOAD_LIMIT // 1024} KiB, or put it on a volume")
        detected, _, problem = detect_format(upload)
        if detected is None:
            errors["dataset_text"] = problem
        fmt = fmt or (detected or "")
        cm_name = upload_name(name or "job")
        spec["dataset"] = {"source": {"configMap": {"name": cm_name, "key": "train.jsonl"}}}
        configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": cm_name, "namespace": namespace,
                                  "labels": {"app.kubernetes.io/created-by": "finetune-console"}},
                     "data": {"train.jsonl": upload}}
    elif cm:
        pair = _pair(cm)
        if pair is None:
            errors["dataset_cm"] = "write it as name:key, e.g. data:train.jsonl"
        else:
            spec["dataset"] = {"source": {"configMap": {"name": pair[0], "key": pair[1]}}}
    elif dpvc:
        pair = _pair(dpvc)
        if pair is None:
            errors["dataset_pvc"] = "write it as claim:path, e.g. data:support/train.jsonl"
        else:
            spec["dataset"] = {"source": {"pvc": {"claimName": pair[0], "path": pair[1]}}}
    else:
        errors["dataset_cm"] = "pick a dataset: a ConfigMap, a volume file or an upload"
    if fmt and "dataset" in spec:
        spec["dataset"]["format"] = fmt
    method = form.get("method") or "lora"
    spec["method"] = method
    rank = _number(form, "lora_rank", int, errors)
    if rank is not None and method != "full":
        spec["lora"] = {"rank": rank}
    if method == "qlora":
        spec["quantization"] = {"bits": 4}
    training = {k: v for k, v in (
        ("maxSteps", _number(form, "max_steps", int, errors)),
        ("learningRate", _number(form, "learning_rate", float, errors))) if v is not None}
    if training:
        spec["training"] = training
    gpus = _number(form, "gpus", int, errors)
    if gpus is not None:
        spec["resources"] = {"gpus": gpus}
    if form.get("band"):
        spec["priorityClassName"] = form.get("band")
    extra = form.get("extra")
    if extra:
        try:
            more = yaml.safe_load(extra)
        except yaml.YAMLError as e:
            more = None
            errors["extra"] = f"not YAML: {e}"
        if more is not None and not isinstance(more, dict):
            errors["extra"] = "write spec fields as a YAML mapping, e.g. training: {epochs: 2}"
        elif isinstance(more, dict):
            _merge(spec, more)
    if errors:
        return Built(None, None, errors)
    manifest = {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return Built(manifest, configmap, {})


def _merge(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    for k, v in more.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def form_of(manifest: Mapping[str, Any]) -> dict[str, str]:
    """A form filled from a manifest ("Clone as new job"): the fields the form has, the rest of
    the spec as YAML in "extra"."""
    spec = dict(manifest.get("spec") or {})
    meta = manifest.get("metadata") or {}
    out: dict[str, str] = {"name": str(meta.get("name") or ""),
                           "namespace": str(meta.get("namespace") or "")}
    src = (spec.get("model") or {}).get("source") or {}
    if "pvc" in src:
        out["model_pvc"] = f"{src['pvc'].get('claimName')}:{src['pvc'].get('path', '')}"
    elif "hub" in src:
        rev = src["hub"].get("revision")
        out["model_hub"] = src["hub"].get("repo", "") + (f"@{rev}" if rev else "")
    ds = dict(spec.get("dataset") or {})
    dsrc = ds.pop("source", {}) or {}
    if "configMap" in dsrc:
        out["dataset_cm"] = f"{dsrc['configMap'].get('name')}:{dsrc['configMap'].get('key')}"
    elif "pvc" in dsrc:
        out["dataset_pvc"] = f"{dsrc['pvc'].get('claimName')}:{dsrc['pvc'].get('path')}"
    out["format"] = str(ds.pop("format", "") or "")
    out["method"] = str(spec.pop("method", "lora"))
    lora = dict(spec.pop("lora", {}) or {})
    if "rank" in lora:
        out["lora_rank"] = str(lora.pop("rank"))
    training = dict(spec.pop("training", {}) or {})
    for key, name in (("maxSteps", "max_steps"), ("learningRate", "learning_rate")):
        if key in training:
            out[name] = str(training.pop(key))
    resources = dict(spec.pop("resources", {}) or {})
    if "gpus" in resources:
        out["gpus"] = str(resources.pop("gpus"))
    out["band"] = str(spec.pop("priorityClassName", "") or "")
    spec.pop("model", None)
    spec.pop("quantization", None)
    rest: dict[str, Any] = {k: v for k, v in spec.items() if v not in (None, {}, [])}
    for key, value in (("dataset", ds), ("lora", lora), ("training", training),
                       ("resources", resources)):
        if value:
            rest[key] = value
    if rest:
        out["extra"] = yaml.safe_dump(rest, sort_keys=False)
    return out


def _form_field(path: str) -> str:
    path = path.removeprefix(".")
    if path.startswith(("resources", "training", "model", "dataset", "lora", "method",
                        "priorityClassName", "quantization")):
        path = "spec." + path
    for prefix, name in FIELD_OF_PATH:
        if path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "["):
            return name
    return "extra" if path.startswith("spec") else ""


_PATH_IN_MESSAGE = re.compile(r"\b(spec(?:\.[A-Za-z0-9\[\]]+)+|priorityClassName|metadata\.name)")


def field_errors(status: Mapping[str, Any]) -> dict[str, str]:
    """A refusal (the API server's ``Status``) -> form field -> its messages. A cause names its
    field (``spec.resources.gpus``); a message without causes (a ValidatingAdmissionPolicy,
    a quota, a webhook) goes to the first spec path it names, else to "" (the whole form)."""
    out: dict[str, list[str]] = {}
    causes = (status.get("details") or {}).get("causes") or []
    message = str(status.get("message") or "")
    for c in causes:
        f = str(c.get("field") or "")
        target = _form_field(f) if f else ""
        msg = str(c.get("message") or c.get("reason") or "")
        out.setdefault(target, []).append(f"{f}: {msg}" if f else msg)
    if not causes:
        m = _PATH_IN_MESSAGE.search(message)
        target = _form_field(m.group(1)) if m else ""
        out.setdefault(target, []).append(message)
    return {k: "; ".join(v) for k, v in out.items()}
