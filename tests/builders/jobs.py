"""Small factories for unit tests: jobs and settings with sensible defaults.

    from tests.builders.jobs import make_job, make_settings

    job = make_job(gpus=2, priority_class="finetune-high", nodes=2,
                   training={"maxSteps": 10}, dataset={"format": "alpaca"})

``make_job`` builds the raw object (camelCase, as the API server stores it) and parses it with
``FineTuneJob.from_body``, so the parse path is exercised too. ``job_body`` returns the raw dict.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from pydantic.alias_generators import to_camel

from finetune_api.job import API_VERSION, KIND, FineTuneJob
from finetune_operator.settings import OperatorSettings

DEFAULT_CREATED = "2026-01-01T00:00:00Z"
_UNSET: Any = object()


def job_uid(namespace: str, name: str) -> str:
    """A deterministic uid for a namespace/name (stable across test runs)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"finetune.dev/{namespace}/{name}"))


def job_body(
    name: str = "bot",
    namespace: str = "team-a",
    gpus: int = 2,
    priority_class: str | None = "finetune-high",
    nodes: int = 1,
    storage: dict[str, Any] | None = _UNSET,
    *,
    uid: str | None = None,
    created: str = DEFAULT_CREATED,
    generation: int = 1,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    **spec_overrides: Any,
) -> dict[str, Any]:
    """The raw FineTuneJob object. ``storage`` is ``checkpoint.storage`` (default
    ``{"size": "20Gi"}``; ``{"claimName": "shared"}`` for an existing claim; None leaves it to the
    model's default). ``spec_overrides`` are spec fields (snake_case or camelCase at the top
    level; nested dicts use the wire's camelCase names) deep-merged into the defaults, except
    that a ``source`` dict replaces the default source; a None value removes the field."""
    spec: dict[str, Any] = {
        "model": {
            "name": "tiny-llama",
            "source": {"pvc": {"claimName": "models", "path": "tiny-llama"}},
        },
        "dataset": {
            "source": {"configMap": {"name": "support-data", "key": "train.jsonl"}},
            "format": "messages",
        },
        "method": "lora",
        "training": {"maxSteps": 20, "epochs": 1},
        "resources": {"gpus": gpus, "nodes": nodes, "cpu": "4", "memory": "16Gi"},
        "checkpoint": {"intervalSteps": 10, "keep": 2},
    }
    if storage is _UNSET:
        spec["checkpoint"]["storage"] = {"size": "20Gi"}
    elif storage is not None:
        spec["checkpoint"]["storage"] = copy.deepcopy(storage)
    if priority_class is not None:
        spec["priorityClassName"] = priority_class
    for key, value in spec_overrides.items():
        camel = to_camel(key)
        if value is None:
            spec.pop(camel, None)
        elif isinstance(value, dict) and isinstance(spec.get(camel), dict):
            spec[camel] = _merge(spec[camel], value)
        else:
            spec[camel] = copy.deepcopy(value)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid if uid is not None else job_uid(namespace, name),
        "generation": generation,
        "creationTimestamp": created,
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": spec,
        "status": copy.deepcopy(status or {}),
    }


def make_job(
    name: str = "bot",
    namespace: str = "team-a",
    gpus: int = 2,
    priority_class: str | None = "finetune-high",
    nodes: int = 1,
    storage: dict[str, Any] | None = _UNSET,
    **kwargs: Any,
) -> FineTuneJob:
    """A parsed FineTuneJob; keyword arguments as for :func:`job_body`."""
    body = job_body(name, namespace, gpus, priority_class, nodes, storage, **kwargs)
    return FineTuneJob.from_body(body)


def make_settings(**overrides: Any) -> OperatorSettings:
    """Operator settings: the contract's defaults, with field overrides (snake_case)."""
    return OperatorSettings(**overrides)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif key != "source" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
