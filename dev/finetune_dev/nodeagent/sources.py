"""What a pod's env and volumes read: ConfigMaps, Secrets and downward-API fields."""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

POD_IP = "127.0.0.1"  # every pod shares the host's network; nothing but loopback is offered
# The address reported as status.podIP (only: names, node address and hostIP stay loopback):
# the agent's --pod-ip, a non-loopback address of this host, so that the API server's service
# proxy (which refuses loopback endpoints) reaches a pod listening on every interface.
POD_IP_ENV = "FINETUNE_AGENT_POD_IP"


def pod_ip() -> str:
    return os.environ.get(POD_IP_ENV) or POD_IP


def routable_ip() -> str | None:
    """This host's address on its default route (no packet is sent), for ``--pod-ip``; None
    when it has only loopback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ip.startswith("127.") else ip


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a kubernetes-client method and return the JSON body as a plain dict (no models)."""
    resp = call(*args, _preload_content=False, **kwargs)
    return cast(dict[str, Any], json.loads(resp.data))


class NotReady(Exception):
    """Something the pod needs is missing (a ConfigMap, a key); the agent retries on resync."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Unsupported(Exception):
    """The pod asks for something the node agent cannot do; the pod is failed with this message."""


class Objects:
    """ConfigMap/Secret contents of one namespace, read once per pod start."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self._cache: dict[tuple[str, str], dict[str, bytes] | None] = {}

    def _read(self, kind: str, name: str) -> dict[str, bytes] | None:
        if (kind, name) not in self._cache:
            try:
                if kind == "ConfigMap":
                    cm = raw(self.core.read_namespaced_config_map, name, self.namespace)
                    data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
                    binary = cm.get("binaryData") or {}
                    data |= {k: base64.b64decode(v) for k, v in binary.items()}
                else:
                    s = raw(self.core.read_namespaced_secret, name, self.namespace)
                    data = {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}
                self._cache[kind, name] = data
            except ApiException as e:
                if e.status != 404:
                    raise
                self._cache[kind, name] = None
        return self._cache[kind, name]

    def data(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        """All keys of a ConfigMap or Secret; {} for a missing optional one."""
        data = self._read(kind, name)
        if data is None:
            if optional:
                return {}
            raise NotReady("ContainerCreating", f"{kind} {self.namespace}/{name} not found; "
                                                "create it (the agent retries)")
        return data

    def key(self, kind: str, ref: dict[str, Any]) -> str | None:
        """One key (configMapKeyRef/secretKeyRef); None when optional and missing."""
        optional = bool(ref.get("optional"))
        data = self.data(kind, ref["name"], optional)
        if ref["key"] not in data:
            if optional:
                return None
            raise NotReady("CreateContainerConfigError",
                           f"{kind} {self.namespace}/{ref['name']} has no key {ref['key']!r}")
        return data[ref["key"]].decode()


def field_value(pod: dict[str, Any], path: str) -> str:
    """A downward-API fieldRef: metadata.name/namespace/uid/labels/annotations, spec.nodeName,
    spec.serviceAccountName, status.podIP(s)/hostIP(s) (all 127.0.0.1)."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip(), "status.podIPs": pod_ip(),
        "status.hostIP": POD_IP, "status.hostIPs": POD_IP,
    }
    if path in simple:
        return str(simple[path])
    for kind in ("labels", "annotations"):
        values = meta.get(kind) or {}
        if path == f"metadata.{kind}":
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        prefix = f"metadata.{kind}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str(values.get(path[len(prefix):-2], ""))
    raise Unsupported(f"downward API fieldPath {path!r} is not supported by the node agent")


def resource_value(container: dict[str, Any], ref: dict[str, Any],
                   allocatable: dict[str, str]) -> str:
    """A resourceFieldRef (limits.cpu, requests.memory, ...): ceil(quantity / divisor);
    a missing limit falls back to the node's allocatable, as on a kubelet."""
    kind, _, resource = ref["resource"].partition(".")
    res = container.get("resources") or {}
    quantity = (res.get(kind) or {}).get(resource)
    if quantity is None and kind == "limits":
        quantity = allocatable.get(resource)
    if quantity is None:
        quantity = "0"
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    return str(math.ceil(parse_quantity(str(quantity)) / divisor))
