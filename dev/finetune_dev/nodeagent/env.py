"""A container's environment, resolved the way a kubelet does (minus images and services)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from finetune_dev.nodeagent.sources import Objects, Unsupported, field_value, resource_value

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def interpreter_bin() -> str:
    """The agent's own environment's bin dir: `python` in a pod is this interpreter."""
    return str(Path(sys.executable).parent)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known names are replaced, `$$` escapes, others stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def base_env(pod: dict[str, Any], api_host: str, api_port: int, home: str) -> dict[str, str]:
    """What every container gets before its own env: PATH with the agent's interpreter first,
    HOSTNAME, HOME, and the in-cluster API address (loopback, the real apiserver port)."""
    return {
        "PATH": f"{interpreter_bin()}:{SYSTEM_PATH}",
        "HOSTNAME": pod["metadata"]["name"],
        "HOME": home,
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
        "KUBERNETES_PORT": f"tcp://{api_host}:{api_port}",
    }


def container_env(objects: Objects, pod: dict[str, Any], container: dict[str, Any],
                  base: dict[str, str], allocatable: dict[str, str]) -> dict[str, str]:
    """base, then envFrom (prefix honoured), then env (value with $(VAR) expansion, or valueFrom
    fieldRef / resourceFieldRef / configMapKeyRef / secretKeyRef). Raises NotReady when a
    referenced object or key is missing and not optional."""
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if field in src:
                ref = src[field]
                data = objects.data(kind, ref["name"], bool(ref.get("optional")))
                env |= {prefix + k: v.decode() for k, v in data.items()}
    for item in container.get("env") or []:
        value: str | None
        if "valueFrom" not in item:
            value = expand(item.get("value", ""), env)
        else:
            vf = item["valueFrom"]
            if "fieldRef" in vf:
                value = field_value(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                value = resource_value(container, vf["resourceFieldRef"], allocatable)
            elif "configMapKeyRef" in vf:
                value = objects.key("ConfigMap", vf["configMapKeyRef"])
            else:
                value = objects.key("Secret", vf["secretKeyRef"])
        if value is not None:
            env[item["name"]] = value
    return env


def container_argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """command + args with $(VAR) expansion. The image is ignored, so a container without a
    command has nothing to run."""
    if not container.get("command"):
        raise Unsupported(f"container {container['name']!r} has no command; the node agent ignores "
                          "images, so it cannot run an image's entrypoint. Set command (and args).")
    return [expand(a, env) for a in container["command"] + (container.get("args") or [])]
