"""FineTuneJob manifests that must be rejected, shared by the unit test (pydantic models) and the
cluster test (the real API server with the generated CRD): one table, two validators, so the
models and the CRD cannot drift apart.

Each case is a patch on ``valid_manifest()`` and the field path (from the object root, list
indices as ``.0``) that the error must name. A field counts as named when the error mentions its
full path, or the path of the object it is reported on plus the rest of the path in the message
(e.g. ``spec.training: ... set epochs > 0 or maxSteps > 0`` names ``spec.training.epochs``).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

DELETE: Any = object()  # patch value: remove the key


def valid_manifest(name: str = "support-bot", namespace: str | None = None) -> dict[str, Any]:
    """A small valid FineTuneJob, close to the api.md example."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": meta,
        "spec": {
            "model": {
                "name": "Qwen/Qwen2.5-7B-Instruct",
                "source": {"pvc": {"claimName": "models", "path": "qwen2.5-7b"}},
            },
            "dataset": {
                "source": {"configMap": {"name": "support-data", "key": "train.jsonl"}},
                "validationSplit": 0.05,
            },
            "method": "lora",
            "lora": {"rank": 16, "alpha": 32},
            "training": {"epochs": 3},
            "resources": {"gpus": 1},
            "priorityClassName": "finetune-normal",
            "checkpoint": {"storage": {"size": "20Gi"}},
        },
    }


def patched(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `patch` into a copy of `base`; DELETE removes a key; non-dicts replace."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patched(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Case:
    id: str
    field: str  # e.g. "spec.lora.rank"
    patch: dict[str, Any]
    server_only: bool = False  # metadata checks: the spec models never see metadata
    notes: str = ""

    def manifest(self, name: str = "support-bot", namespace: str | None = None) -> dict[str, Any]:
        return patched(valid_manifest(name, namespace), self.patch)


def _spec(**patch: Any) -> dict[str, Any]:
    return {"spec": patch}


_HUB = {"repo": "Qwen/Qwen2.5-7B-Instruct"}
_PVC = {"claimName": "data"}

CASES: list[Case] = [
    # required fields and exactly-one sources
    Case("model-missing", "spec.model", _spec(model=DELETE)),
    Case("dataset-missing", "spec.dataset", _spec(dataset=DELETE)),
    Case("model-name-empty", "spec.model.name", _spec(model={"name": ""})),
    Case("model-source-two", "spec.model.source",
         _spec(model={"source": {"hub": _HUB}})),
    Case("model-source-none", "spec.model.source", _spec(model={"source": {"pvc": DELETE}})),
    Case("dataset-source-two", "spec.dataset.source",
         _spec(dataset={"source": {"pvc": _PVC}})),
    Case("dataset-source-none", "spec.dataset.source",
         _spec(dataset={"source": {"configMap": DELETE}})),
    Case("model-pvc-absolute-path", "spec.model.source.pvc.path",
         _spec(model={"source": {"pvc": {"path": "/etc/models"}}})),
    Case("dataset-pvc-dotdot-path", "spec.dataset.source.pvc.path",
         _spec(dataset={"source": {"configMap": DELETE,
                                   "pvc": {"claimName": "data", "path": "a/../../b"}}})),
    Case("model-pvc-claim-name", "spec.model.source.pvc.claimName",
         _spec(model={"source": {"pvc": {"claimName": "Models_PVC"}}})),
    Case("model-hub-repo-empty", "spec.model.source.hub.repo",
         _spec(model={"source": {"pvc": DELETE, "hub": {"repo": ""}}})),
    Case("hub-token-key-missing", "spec.model.source.hub.tokenSecretRef.key",
         _spec(model={"source": {"pvc": DELETE,
                                 "hub": {**_HUB, "tokenSecretRef": {"name": "hf"}}}})),
    Case("configmap-key-missing", "spec.dataset.source.configMap.key",
         _spec(dataset={"source": {"configMap": {"key": DELETE}}})),
    # dataset
    Case("dataset-format", "spec.dataset.format", _spec(dataset={"format": "csv"})),
    Case("validation-split-too-big", "spec.dataset.validationSplit",
         _spec(dataset={"validationSplit": 0.5})),
    Case("validation-split-negative", "spec.dataset.validationSplit",
         _spec(dataset={"validationSplit": -0.1})),
    Case("cutoff-len-zero", "spec.dataset.cutoffLen", _spec(dataset={"cutoffLen": 0})),
    # method, lora, quantization
    Case("method-unknown", "spec.method", _spec(method="prefix-tuning")),
    Case("lora-with-full", "spec.lora", _spec(method="full")),
    Case("qlora-without-quantization", "spec.quantization", _spec(method="qlora")),
    Case("quantization-with-lora", "spec.quantization", _spec(quantization={"bits": 4})),
    Case("quantization-bits", "spec.quantization.bits",
         _spec(method="qlora", quantization={"bits": 3})),
    Case("qlora-on-cpu", "spec.resources.gpus",
         _spec(method="qlora", quantization={"bits": 4}, resources={"gpus": 0})),
    Case("lora-rank-zero", "spec.lora.rank", _spec(lora={"rank": 0})),
    Case("lora-alpha-zero", "spec.lora.alpha", _spec(lora={"alpha": 0})),
    Case("lora-dropout-one", "spec.lora.dropout", _spec(lora={"dropout": 1.0})),
    Case("lora-target-modules-empty", "spec.lora.targetModules",
         _spec(lora={"targetModules": []})),
    Case("lora-unknown-field", "spec.lora.rnk", _spec(lora={"rnk": 8}),
         notes="kubectl's strict field validation names unknown fields"),
    Case("merge-adapter-with-full", "spec.output.mergeAdapter",
         _spec(method="full", lora=DELETE, output={"mergeAdapter": True})),
    # training
    Case("training-no-length", "spec.training.epochs",
         _spec(training={"epochs": 0, "maxSteps": 0})),
    Case("learning-rate-zero", "spec.training.learningRate",
         _spec(training={"learningRate": 0})),
    Case("batch-size-zero", "spec.training.batchSize", _spec(training={"batchSize": 0})),
    Case("warmup-ratio-one", "spec.training.warmupRatio", _spec(training={"warmupRatio": 1.0})),
    Case("precision-unknown", "spec.training.precision", _spec(training={"precision": "int8"})),
    Case("fp16-on-cpu", "spec.training.precision",
         _spec(training={"precision": "fp16"}, resources={"gpus": 0})),
    Case("lr-scheduler-unknown", "spec.training.lrScheduler",
         _spec(training={"lrScheduler": "step"})),
    # distributed
    Case("deepspeed-stage", "spec.distributed.deepspeed.stage",
         _spec(distributed={"deepspeed": {"stage": 4}})),
    Case("deepspeed-on-cpu", "spec.distributed.deepspeed",
         _spec(distributed={"deepspeed": {"stage": 2}}, resources={"gpus": 0})),
    Case("deepspeed-offload-params-stage2", "spec.distributed.deepspeed.offloadParams",
         _spec(distributed={"deepspeed": {"stage": 2, "offloadParams": True}})),
    # resources
    Case("gpus-negative", "spec.resources.gpus", _spec(resources={"gpus": -1})),
    Case("gpus-too-many", "spec.resources.gpus", _spec(resources={"gpus": 65})),
    Case("gpu-memory-too-small", "spec.resources.gpuMemory",
         _spec(resources={"gpuMemory": "1Gi"})),
    Case("gpu-memory-too-big", "spec.resources.gpuMemory",
         _spec(resources={"gpuMemory": "2Ti"})),
    Case("gpu-memory-on-cpu", "spec.resources.gpuMemory",
         _spec(resources={"gpus": 0, "gpuMemory": "20Gi"})),
    Case("nodes-zero", "spec.resources.nodes", _spec(resources={"nodes": 0})),
    Case("gpu-resource-name", "spec.resources.gpuResource",
         _spec(resources={"gpuResource": "NVIDIA GPU"})),
    Case("memory-quantity", "spec.resources.memory", _spec(resources={"memory": "lots"})),
    Case("node-selector-value", "spec.resources.nodeSelector.pool",
         _spec(resources={"nodeSelector": {"pool": "a b"}})),
    Case("toleration-exists-with-value", "spec.resources.tolerations.0.value",
         _spec(resources={"tolerations": [{"key": "gpu", "operator": "Exists",
                                           "value": "yes"}]})),
    Case("toleration-seconds-without-noexecute", "spec.resources.tolerations.0.tolerationSeconds",
         _spec(resources={"tolerations": [{"key": "gpu", "operator": "Equal", "value": "a",
                                           "effect": "NoSchedule",
                                           "tolerationSeconds": 30}]})),
    # priority, checkpoint, lifecycle
    Case("priority-class-name", "spec.priorityClassName",
         _spec(priorityClassName="System Critical")),
    Case("storage-size-and-claim", "spec.checkpoint.storage.size",
         _spec(checkpoint={"storage": {"claimName": "shared"}})),
    Case("storage-neither", "spec.checkpoint.storage.size",
         _spec(checkpoint={"storage": {"size": DELETE}})),
    Case("storage-class-with-claim", "spec.checkpoint.storage.storageClassName",
         _spec(checkpoint={"storage": {"size": DELETE, "claimName": "shared",
                                       "storageClassName": "fast"}})),
    Case("storage-delete-with-claim", "spec.checkpoint.storage.whenDeleted",
         _spec(checkpoint={"storage": {"size": DELETE, "claimName": "shared",
                                       "whenDeleted": "Delete"}})),
    Case("storage-when-deleted-unknown", "spec.checkpoint.storage.whenDeleted",
         _spec(checkpoint={"storage": {"whenDeleted": "Keep"}})),
    Case("checkpoint-keep-zero", "spec.checkpoint.keep", _spec(checkpoint={"keep": 0})),
    Case("checkpoint-interval-zero", "spec.checkpoint.intervalSteps",
         _spec(checkpoint={"intervalSteps": 0})),
    Case("backoff-limit-negative", "spec.backoffLimit", _spec(backoffLimit=-1)),
    Case("active-deadline-zero", "spec.activeDeadlineSeconds", _spec(activeDeadlineSeconds=0)),
    # every number has an upper bound (issue 19: 10**12 seconds overflowed a datetime)
    Case("active-deadline-over-a-year", "spec.activeDeadlineSeconds",
         _spec(activeDeadlineSeconds=10**12)),
    Case("ttl-over-a-year", "spec.ttlSecondsAfterFinished",
         _spec(ttlSecondsAfterFinished=31536001)),
    Case("max-grad-norm-huge", "spec.training.maxGradNorm",
         _spec(training={"maxGradNorm": 1e300})),
    Case("suspend-not-bool", "spec.suspend", _spec(suspend="maybe")),
    Case("image-too-long", "spec.image", _spec(image="r/" + "x" * 1100)),
    Case("image-not-a-reference", "spec.image", _spec(image="my image:latest")),
    Case("image-two-tags", "spec.image", _spec(image="registry.example/a:b:c")),
    # metadata (only the API server sees it)
    Case("name-too-long", "metadata.name", {"metadata": {"name": "a" * 64}}, server_only=True),
]


@dataclass(frozen=True)
class Transition:
    """A merge patch of ``spec`` on a stored ``valid_manifest()`` whose status.phase is `phase`:
    rejected naming `field` (CEL transition rules: spec frozen once admitted), or accepted when
    `field` is empty."""
    id: str
    phase: str
    spec: dict[str, Any]
    field: str = ""


_ADMITTED = ("Admitted", "Running", "Preempting", "Succeeded", "Failed")
TRANSITIONS: list[Transition] = [
    *(Transition(f"gpus-while-{p.lower()}", p, {"resources": {"gpus": 0}}, "spec.resources")
      for p in _ADMITTED),
    Transition("priority-while-running", "Running", {"priorityClassName": "finetune-low"},
               "spec.priorityClassName"),
    Transition("image-while-running", "Running", {"image": "evil.example/x:1"}, "spec.image"),
    Transition("model-while-running", "Running", {"model": {"name": "other"}}, "spec.model"),
    Transition("dataset-while-admitted", "Admitted", {"dataset": {"cutoffLen": 512}},
               "spec.dataset"),
    Transition("checkpoint-while-running", "Running", {"checkpoint": {"keep": 5}},
               "spec.checkpoint"),
    Transition("lora-removed-while-running", "Running", {"lora": None}, "spec.lora"),
    Transition("training-while-preempting", "Preempting", {"training": {"epochs": 9}},
               "spec.training"),
    # what stays editable once admitted
    Transition("suspend-while-running", "Running", {"suspend": True}),
    Transition("deadline-while-running", "Running", {"activeDeadlineSeconds": 3600}),
    Transition("backoff-while-running", "Running", {"backoffLimit": 7}),
    # before admission (or parked) everything may change
    Transition("gpus-while-queued", "Queued", {"resources": {"gpus": 2}}),
    Transition("gpus-while-suspended", "Suspended", {"resources": {"gpus": 2},
                                                     "priorityClassName": "finetune-low"}),
    Transition("gpus-without-status", "", {"resources": {"gpus": 2}}),
]


def patch_spec_in_phase(cluster: Any, namespace: str, name: str, phase: str,
                        spec: dict[str, Any], as_user: str | None = None,
                        ) -> tuple[subprocess.CompletedProcess[str], dict, dict]:
    """Set status.phase, then merge-patch `spec` (as `as_user` when given, by impersonation)
    against exactly that object (resourceVersion precondition). An operator running on the
    shared cluster may rewrite the status in between: then the patch conflicts and the pair is
    retried; the calls go through the API client, not kubectl, to keep that window short.
    `cluster` is tests.kube.Cluster. Returns (proc, before, after), proc as kubectl would
    report the spec patch (returncode, and the server's message in stderr)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    admin = client.CustomObjectsApi(cluster.api)
    user = admin
    if as_user:
        api = client.ApiClient(cluster.api.configuration)
        api.set_default_header("Impersonate-User", as_user)
        user = client.CustomObjectsApi(api)
    args = ("finetune.dev", "v1alpha1", namespace, "finetunejobs", name)
    seen, last = "", ""
    for _ in range(50):
        if phase:
            admin.patch_namespaced_custom_object_status(*args, {"status": {"phase": phase}})
        before: Any = admin.get_namespaced_custom_object(*args)
        seen = (before.get("status") or {}).get("phase", "")
        # "" (no status yet): a running operator may have queued the job meanwhile; both are
        # editable phases, so either tests the same rule
        if seen != phase and not (phase == "" and seen == "Queued"):
            continue
        body = {"metadata": {"resourceVersion": before["metadata"]["resourceVersion"]},
                "spec": spec}
        try:
            user.patch_namespaced_custom_object(*args, body)
            proc = subprocess.CompletedProcess([], 0, "patched", "")
        except ApiException as e:
            message = json.loads(e.body).get("message", "") if e.body else str(e)
            if e.status == 409:
                last = message
                continue
            proc = subprocess.CompletedProcess([], 1, "", message)
        after: Any = admin.get_namespaced_custom_object(*args)
        return proc, before, after
    raise AssertionError(f"could not patch {namespace}/{name} while in phase {phase!r} (last "
                         f"seen {seen!r}; {last}): something rewrites its status continuously")


def _norm(text: str) -> str:
    """`tolerations[0]` -> `tolerations.0`, so server and pydantic paths compare alike."""
    return re.sub(r"\[(\d+)\]", r".\1", text)


def names_field(reported: list[tuple[str, str]], field: str) -> bool:
    """Whether any (path, message) error names `field`: the full path in path or message, or a
    prefix of it as the path and the rest of the field in the message."""
    for path, message in reported:
        path, message = _norm(path), _norm(message)
        if field == path or field in message:
            return True
        if path and field.startswith(path + "."):
            rest = field[len(path) + 1:]
            if rest in message:
                return True
    return False


def server_errors(stderr: str) -> list[tuple[str, str]]:
    """(path, message) pairs from kubectl's stderr.

    Forms: `* spec.lora.rank: Invalid value: 0: ...`, `The FineTuneJob "x" is invalid:
    spec.model: Required value`, `strict decoding error: unknown field "spec.lora.rnk"`."""
    out: list[tuple[str, str]] = []
    for m in re.finditer(r"unknown field \"([^\"]+)\"", stderr):
        out.append((m.group(1), stderr))
    for line in stderr.replace(" is invalid: ", " is invalid:\n").splitlines():
        line = line.strip().removeprefix("* ").strip()
        found = re.match(r"^((?:metadata|spec|status)(?:[.\[][\w.\[\]/-]*)?): (.*)$", line)
        if found:
            out.append((found.group(1), found.group(2)))
    return out
