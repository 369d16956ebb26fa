"""Names and ports of pods behind a headless Service, on agents whose pods all share one host's
network (every pod IP is 127.0.0.1).

A pod with ``spec.subdomain`` (a multi-node gang: ``<pod>.<job>-workers.<ns>.svc``) gets what a
kubelet and the cluster DNS would give it, as far as one loopback allows:

* **Names**: its own ``/etc/hosts`` (bind-mounted in its mount namespace): the host's entries,
  then 127.0.0.1 for its own hostname and FQDN (as a kubelet writes), for every pod the headless
  Service named by the subdomain selects when the pod starts (what the cluster DNS would answer
  for ``<hostname>.<subdomain>.<ns>.svc[.cluster.local]``), for the Service's own name, and the
  pod's ``hostAliases``.
* **Ports**: pods on one host would all listen on the same containerPort (two gangs' rank 0 on
  29500), so each Service port's targetPort gets a host port of its own, allocated once per
  (Service, selector) in a registry under the agents' shared root (every agent of the gang
  agrees; a new selector, e.g. the operator's next attempt, gets fresh ports). In every
  container's env values and arguments, a value equal to such a port (whole, or after ``=`` or
  ``:``) is replaced by its host port: ``MASTER_PORT=29500`` and ``--master-port=29500``
  become the gang's host port on every rank.

A Service that is missing or does not select the pod (yet) gives no peers and no port
translation, as the cluster DNS would have no record for it; the pod starts anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from finetune_dev.nodeagent.sources import POD_IP, raw

log = logging.getLogger("nodeagent")
HOST_HOSTS = Path("/etc/hosts")
CLUSTER_DOMAIN = "cluster.local"
# below the kernel's ephemeral range (32768-60999 by default): an OS-assigned port never lands
# on a gang's port between its allocation and its bind
PORT_RANGE = (20000, 32767)
REGISTRY_TTL = 7 * 24 * 3600.0  # allocations older than this are dropped (and reusable)


@dataclass(frozen=True)
class Network:
    hosts: str | None = None  # the pod's /etc/hosts; None: the host's own
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> host port


def fqdns(hostname: str, subdomain: str, namespace: str) -> list[str]:
    """What resolves to a pod with hostname + subdomain (short forms: the DNS search path)."""
    base = f"{hostname}.{subdomain}"
    return [f"{base}.{namespace}.svc.{CLUSTER_DOMAIN}", f"{base}.{namespace}.svc",
            f"{base}.{namespace}", base]


def selects(service: dict[str, Any], pod: dict[str, Any]) -> bool:
    selector = (service.get("spec") or {}).get("selector") or {}
    labels = pod["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def hosts_file(pod: dict[str, Any], peers: list[dict[str, Any]], service: str | None,
               host_hosts: str) -> str:
    """The pod's /etc/hosts (pure): the host's, then the pod's names, its peers', the Service's
    and its hostAliases. ``peers``: pods the Service selects (the pod itself may be among them)."""
    meta, spec = pod["metadata"], pod["spec"]
    ns = meta["namespace"]
    hostname = spec.get("hostname") or meta["name"]
    sub = spec.get("subdomain")
    lines = [host_hosts.rstrip("\n"), f"# finetune node agent: pod {ns}/{meta['name']}"]
    names = [*fqdns(hostname, sub, ns), hostname] if sub else [hostname]
    lines.append(f"{POD_IP}\t{' '.join(names)}")
    seen = set(names)
    for p in sorted(peers, key=lambda p: p["metadata"]["name"]):
        ps = p.get("spec") or {}
        if ps.get("subdomain") != sub or not sub:
            continue
        more = [n for n in fqdns(ps.get("hostname") or p["metadata"]["name"], sub, ns)
                if n not in seen]
        seen.update(more)
        if more:
            lines.append(f"{POD_IP}\t{' '.join(more)}")
    if service:
        svc = [f"{service}.{ns}.svc.{CLUSTER_DOMAIN}", f"{service}.{ns}.svc", f"{service}.{ns}"]
        lines.append(f"{POD_IP}\t{' '.join(n for n in svc if n not in seen)}")
    for alias in spec.get("hostAliases") or []:
        if alias.get("ip") and alias.get("hostnames"):
            lines.append(f"{alias['ip']}\t{' '.join(alias['hostnames'])}")
    return "\n".join(lines) + "\n"


def target_ports(service: dict[str, Any], pod: dict[str, Any]) -> list[int]:
    """The Service's TCP targetPorts as numbers (a name is looked up in the pod's ports)."""
    named = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"]
             for p in c.get("ports") or [] if p.get("name")}
    out = []
    for p in (service.get("spec") or {}).get("ports") or []:
        if p.get("protocol", "TCP") != "TCP":
            continue
        target = p.get("targetPort", p["port"])
        if isinstance(target, str):
            if target.isdigit():
                target = int(target)
            elif target in named:
                target = named[target]
            else:
                continue
        out.append(int(target))
    return sorted(set(out))


def _bindable(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def allocate(root: Path, key: str, ports: list[int], now: float | None = None,
             rng: random.Random | None = None) -> dict[int, int]:
    """Host ports for `ports` under `key`: the recorded ones, else fresh ones (free now, not
    recorded for another key), recorded. Safe between agents sharing `root` (a file lock)."""
    if not ports:
        return {}
    now = time.time() if now is None else now
    rng = rng or random.Random()
    d = Path(root) / "net"
    d.mkdir(parents=True, exist_ok=True)
    registry = d / "ports.json"
    with open(d / "ports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(registry.read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        data = {k: v for k, v in data.items() if now - v.get("at", 0) < REGISTRY_TTL}
        entry = data.get(key)
        if entry is None or sorted(map(int, entry["ports"])) != sorted(ports):
            taken = {hp for v in data.values() for hp in v["ports"].values()}
            mapping: dict[str, int] = {}
            for p in ports:
                for _ in range(1000):
                    hp = rng.randint(*PORT_RANGE)
                    if hp not in taken and _bindable(hp):
                        break
                else:
                    raise RuntimeError(f"no free port in {PORT_RANGE} for {key}")
                taken.add(hp)
                mapping[str(p)] = hp
            entry = data[key] = {"ports": mapping, "at": now}
            tmp = registry.with_name(".ports.json.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(registry)
    return {int(k): int(v) for k, v in entry["ports"].items()}


def _translate(value: str, ports: dict[int, int]) -> str:
    for p, hp in ports.items():
        s = str(p)
        if value == s:
            return str(hp)
        for sep in ("=", ":"):
            if value.endswith(sep + s):
                return value[:-len(s)] + str(hp)
    return value


def translate_env(env: dict[str, str], ports: dict[int, int]) -> dict[str, str]:
    return {k: _translate(v, ports) for k, v in env.items()} if ports else env


def translate_argv(argv: list[str], ports: dict[int, int]) -> list[str]:
    return [_translate(a, ports) for a in argv] if ports else argv


def prepare(core: client.CoreV1Api, pod: dict[str, Any], root: Path,
            host_hosts: Path = HOST_HOSTS) -> Network:
    """The pod's Network: nothing for a pod without subdomain or hostAliases."""
    meta, spec = pod["metadata"], pod["spec"]
    sub = spec.get("subdomain")
    if not sub and not spec.get("hostAliases"):
        return Network()
    ns = meta["namespace"]
    service: dict[str, Any] | None = None
    peers: list[dict[str, Any]] = []
    ports: dict[int, int] = {}
    if sub:
        try:
            service = raw(core.read_namespaced_service, sub, ns)
        except ApiException as e:
            if e.status != 404:
                raise
        if service is not None and selects(service, pod):
            selector = service["spec"]["selector"]
            peers = raw(core.list_namespaced_pod, ns, label_selector=",".join(
                f"{k}={v}" for k, v in sorted(selector.items())))["items"]
            key = "/".join([ns, sub, service["metadata"]["uid"],
                            json.dumps(selector, sort_keys=True)])
            ports = allocate(root, key, target_ports(service, pod))
        else:
            log.warning("%s/%s: headless Service %s %s; no peer names, no port translation",
                        ns, meta["name"], sub,
                        "not found" if service is None else "does not select this pod")
            service = None
    try:
        host = host_hosts.read_text()
    except FileNotFoundError:
        host = "127.0.0.1\tlocalhost\n"
    text = hosts_file(pod, peers, sub if service is not None else None, host)
    return Network(text, ports)
