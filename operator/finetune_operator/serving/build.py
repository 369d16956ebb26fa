"""Pure: a ModelServer's pod and Service, and where its adapters lie inside the pod.

The pod runs the runtime (``python -m finetune_server``, Dockerfile.server) with no adapter at
start: every adapter is loaded at run time (``serving/runner.py``), so the list can change
without a restart. Only what needs a new process changes the pod's name (a hash of the model,
runtime, resources, limits, port, image and the claims mounted): a new claim to mount restarts
the server; a new adapter on a claim already mounted does not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.labels import (
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    NAME_LABEL,
    PART_OF_LABEL,
    SERVER_APP_NAME,
    SERVER_LABEL,
)
from finetune_api.server import SERVER_KIND, ModelServer
from finetune_api.trainer_config import S3_CREDENTIAL_KEYS, S3_OPTIONAL_KEYS, s3_env_name
from finetune_operator.jobs.build.configmap import HUB_TOKEN_FILE, HUB_TOKEN_MOUNT
from finetune_operator.jobs.build.output import output_location
from finetune_operator.jobs.build.pod import (
    container_security_context,
    pod_security_context,
    preferred_node,
)
from finetune_operator.settings import OperatorSettings

MODEL_MOUNT = "/models"
# where the runtime downloads an s3 base model: the /tmp emptyDir, which holds the hub's cache
# too, so the node's ephemeral storage must have room for the model (docs/serving.md)
MODEL_DOWNLOAD_DIR = "/tmp/model"
ADAPTER_MOUNT = "/adapters"
CONTAINER = "server"
API_VERSION_OF_SERVER = "finetune.dev/v1alpha1"
# the pod's hash label: which spec the running process was started with
SPEC_HASH_LABEL = "finetune.dev/server-spec"


@dataclass(frozen=True)
class Located:
    """Where one adapter lies: the claim and the directory on it, and the path in the pod."""

    claim: str
    path: str  # relative to the claim's root

    @property
    def in_pod(self) -> str:
        return f"{ADAPTER_MOUNT}/{self.claim}/{self.path}".rstrip("/")


def job_adapter(job: FineTuneJob) -> Located:
    """A Succeeded job's adapter: its output claim and output/adapter directory."""
    out = job.status.output
    loc = output_location(job, out.adapter_path if out else "", "")
    path = loc.outputs[0] if out and out.adapter_path else f"{loc.directory}/output/adapter"
    return Located(loc.claim, path)


def gpu_resource(server: ModelServer, settings: OperatorSettings) -> str:
    return server.spec.resources.gpu_resource or settings.admission.gpu_resource


def service_name(server: ModelServer) -> str:
    return server.metadata.name


def url(server: ModelServer) -> str:
    ns = server.metadata.namespace
    return f"http://{service_name(server)}.{ns}.svc:{server.spec.port}"


def spec_hash(server: ModelServer, claims: tuple[str, ...], image: str) -> str:
    s = server.spec
    what = {"model": s.model.to_wire(), "runtime": s.runtime,
            "resources": s.resources.to_wire(), "limits": s.limits.to_wire(), "port": s.port,
            "priority": s.priority_class_name, "image": image, "claims": list(claims)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]


def pod_name(server: ModelServer, digest: str) -> str:
    return f"{server.metadata.name}-{digest}"


def labels(server: ModelServer) -> dict[str, str]:
    return {NAME_LABEL: SERVER_APP_NAME, INSTANCE_LABEL: server.metadata.name,
            MANAGED_BY_LABEL: MANAGED_BY_VALUE, PART_OF_LABEL: "finetune-operator",
            SERVER_LABEL: server.metadata.name}


def owner(server: ModelServer) -> dict[str, Any]:
    return {"apiVersion": API_VERSION_OF_SERVER, "kind": SERVER_KIND,
            "name": server.metadata.name, "uid": server.metadata.uid, "controller": True,
            "blockOwnerDeletion": True}


@dataclass(frozen=True)
class ModelInPod:
    """How the runtime gets its base model: its arguments (``--model`` and what goes with it),
    the environment (credentials: references to a Secret only, never a value), and the volume
    and mount (a claim: read-only)."""

    args: list[str]
    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]


def model_arg(server: ModelServer) -> ModelInPod:
    """pvc: the claim mounted at /models; hub: the repository id (the runtime downloads it into
    HF_HOME under /tmp); s3: ``s3://bucket/prefix`` with the store's endpoint and region, which
    the runtime downloads at start into /tmp (``finetune_server.fetch``), with the credentials of
    ``credentialsSecret`` as the trainer gets its model's (role ``model``, ``s3_env_name``); a
    hub ``tokenSecretRef`` is mounted as a file, as the trainer's is."""
    src = server.spec.model.source
    if src.pvc is not None:
        vol = {"name": "model", "persistentVolumeClaim": {"claimName": src.pvc.claim_name,
                                                          "readOnly": True}}
        mount = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
        return ModelInPod(["--model", f"{MODEL_MOUNT}/{src.pvc.path}".rstrip("/")], [],
                          [vol], [mount])
    if src.s3 is not None:
        s3 = src.s3
        args = ["--model", f"s3://{s3.bucket}/{s3.prefix.rstrip('/')}",
                "--s3-region", s3.region, "--s3-download-dir", MODEL_DOWNLOAD_DIR]
        if s3.endpoint:
            args += ["--s3-endpoint", s3.endpoint.rstrip("/")]
        env = [{"name": s3_env_name("model", key), "valueFrom": {"secretKeyRef": {
            "name": s3.credentials_secret, "key": key,
            **({"optional": True} if key in S3_OPTIONAL_KEYS else {})}}}
            for key in S3_CREDENTIAL_KEYS] if s3.credentials_secret else []
        return ModelInPod(args, env, [], [])
    assert src.hub is not None  # exactly one source (the schema)
    token = src.hub.token_secret_ref
    if token is None:
        return ModelInPod(["--model", src.hub.repo], [], [], [])
    # a gated or private repository: the token as a file, as the trainer gets it (never in the
    # environment or the spec); huggingface_hub, under both runtimes, reads HF_TOKEN_PATH
    vol = {"name": "hub-token", "secret": {
        "secretName": token.name, "items": [{"key": token.key, "path": HUB_TOKEN_FILE}],
        "defaultMode": 0o440}}
    mount = {"name": "hub-token", "mountPath": HUB_TOKEN_MOUNT, "readOnly": True}
    env = [{"name": "HF_TOKEN_PATH", "value": f"{HUB_TOKEN_MOUNT}/{HUB_TOKEN_FILE}"}]
    return ModelInPod(["--model", src.hub.repo], env, [vol], [mount])


def build_pod(server: ModelServer, settings: OperatorSettings, claims: tuple[str, ...],
              priority_class: str | None, node: str | None) -> dict[str, Any]:
    """The server's pod: ``claims`` are the adapter claims to mount (read-only)."""
    s = server.spec
    image = s.image or settings.cycle.server_image
    digest = spec_hash(server, claims, image)
    model = model_arg(server)
    volumes, mounts = list(model.volumes), list(model.mounts)
    for i, claim in enumerate(claims):
        volumes.append({"name": f"adapters-{i}", "persistentVolumeClaim": {
            "claimName": claim, "readOnly": True}})
        mounts.append({"name": f"adapters-{i}", "mountPath": f"{ADAPTER_MOUNT}/{claim}",
                       "readOnly": True})
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    command = ["python", "-m", "finetune_server", *model.args,
               "--served-model-name", s.model.name, "--runtime", s.runtime,
               "--host", "0.0.0.0", "--port", str(s.port),
               "--max-loras", str(s.limits.max_loras),
               "--max-lora-rank", str(s.limits.max_lora_rank)]
    if s.limits.max_model_len is not None:
        command += ["--max-model-len", str(s.limits.max_model_len)]
    res = s.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    tolerations = [t.to_wire() for t in res.tolerations]
    if res.gpus > 0:
        gpu = gpu_resource(server, settings)
        requests[gpu] = limits[gpu] = str(res.gpus)
        for key in dict.fromkeys([settings.admission.gpu_resource, gpu]):
            extra = {"key": key, "operator": "Exists", "effect": "NoSchedule"}
            if extra not in tolerations:
                tolerations.append(extra)
    container = {
        "name": CONTAINER, "image": image, "command": command,
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/hf"},
                *model.env],
        "ports": [{"name": "http", "containerPort": s.port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "readinessProbe": {"httpGet": {"path": "/health", "port": s.port},
                           "periodSeconds": 5},
        "securityContext": container_security_context(),
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "enableServiceLinks": False, "terminationGracePeriodSeconds": 30,
        "securityContext": pod_security_context(), "containers": [container],
        "volumes": volumes,
    }
    if pull := settings.trainer.trainer_image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in pull]
    if priority_class is not None:
        spec["priorityClassName"] = priority_class
    if res.node_selector:
        spec["nodeSelector"] = dict(res.node_selector)
    if tolerations:
        spec["tolerations"] = tolerations
    if node:
        spec["affinity"] = preferred_node(node)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name(server, digest), "namespace": server.metadata.namespace,
                         "labels": {**labels(server), SPEC_HASH_LABEL: digest},
                         "ownerReferences": [owner(server)]},
            "spec": spec}


def build_service(server: ModelServer) -> dict[str, Any]:
    """The server's Service: its in-cluster URL, and what ``kubectl finetune chat`` reaches
    through the API server's service proxy."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(server), "namespace": server.metadata.namespace,
                         "labels": labels(server), "ownerReferences": [owner(server)]},
            "spec": {"selector": {SERVER_LABEL: server.metadata.name},
                     "ports": [{"name": "http", "port": server.spec.port,
                                "targetPort": server.spec.port, "protocol": "TCP"}]}}
