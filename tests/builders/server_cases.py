"""ModelServer manifests that must be rejected, shared by the unit test (pydantic models) and
the cluster test (the real API server with the generated CRD), as ``invalid_cases.py`` does for
FineTuneJobs: each case is a patch on ``valid_server()`` and the field its error must name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.builders.invalid_cases import DELETE, patched


def valid_server(name: str = "chat", namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "ModelServer", "metadata": meta,
            "spec": {"model": {"name": "tiny",
                               "source": {"pvc": {"claimName": "models", "path": "tiny"}}},
                     "adapters": [{"name": "support", "job": "support-bot"},
                                  {"name": "legal", "path": {"claimName": "ckpt",
                                                             "path": "legal/adapter"}}],
                     "resources": {"gpus": 1},
                     "priorityClassName": "finetune-normal"}}


@dataclass(frozen=True)
class ServerCase:
    id: str
    field: str
    patch: dict[str, Any]
    server_only: bool = False

    def manifest(self, name: str = "chat", namespace: str | None = None) -> dict[str, Any]:
        return patched(valid_server(name, namespace), self.patch)


def _spec(**patch: Any) -> dict[str, Any]:
    return {"spec": patch}


_ONE = [{"name": "a", "job": "x"}]
SERVER_CASES: list[ServerCase] = [
    ServerCase("model-missing", "spec.model", _spec(model=DELETE)),
    # an s3 base model is served (downloaded by the runtime); its fields are checked as a job's
    ServerCase("model-s3-prefix", "spec.model.source.s3.prefix", _spec(model={"source": {
        "pvc": DELETE, "s3": {"bucket": "models", "prefix": "tiny/../other"}}})),
    ServerCase("adapter-neither", "spec.adapters[0].job", _spec(adapters=[{"name": "a"}])),
    ServerCase("adapter-both", "spec.adapters[0].job", _spec(adapters=[
        {"name": "a", "job": "x", "path": {"claimName": "c", "path": "p"}}])),
    ServerCase("adapter-name", "spec.adapters[0].name", _spec(adapters=[
        {"name": "-bad name", "job": "x"}])),
    ServerCase("adapter-job-name", "spec.adapters[0].job", _spec(adapters=[
        {"name": "a", "job": "Not_A_Job"}])),
    ServerCase("adapter-duplicate", "spec.adapters", _spec(adapters=[
        {"name": "a", "job": "x"}, {"name": "a", "job": "y"}])),
    ServerCase("adapter-path-dotdot", "spec.adapters[0].path.path", _spec(adapters=[
        {"name": "a", "path": {"claimName": "c", "path": "../other"}}])),
    ServerCase("more-adapters-than-max-loras", "spec.adapters",
               _spec(limits={"maxLoras": 1})),
    ServerCase("max-loras-range", "spec.limits.maxLoras", _spec(limits={"maxLoras": 0})),
    ServerCase("max-model-len-range", "spec.limits.maxModelLen",
               _spec(limits={"maxModelLen": 8})),
    ServerCase("runtime-unknown", "spec.runtime", _spec(runtime="tgi")),
    ServerCase("vllm-without-gpu", "spec.runtime", _spec(resources={"gpus": 0})),
    ServerCase("gpus-range", "spec.resources.gpus", _spec(resources={"gpus": 9})),
    ServerCase("cpu-quantity", "spec.resources.cpu", _spec(resources={"cpu": "lots"})),
    ServerCase("port-range", "spec.port", _spec(port=80)),
    ServerCase("unknown-field", "spec.replicas", _spec(replicas=2)),
    ServerCase("name-too-long", "metadata.name", {"metadata": {"name": "x" * 60}},
               server_only=True),
]
