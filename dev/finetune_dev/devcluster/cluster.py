"""Start and stop a real Kubernetes control plane on 127.0.0.1, without containers.

etcd, kube-apiserver (RBAC + default admission plugins incl. ResourceQuota and Priority),
kube-controller-manager (quota status, garbage collection, node lifecycle), kube-scheduler
(priority ordering and preemption) and kwok (fake nodes with GPU capacity) run as local
processes. State (PKI, etcd data, logs, kubeconfig, pids) lives in one directory outside the
checkout, so tests and the demo can reuse a running cluster.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune_dev.devcluster import build, provisioner, versions
from finetune_dev.devcluster.kubeconfig import write_kubeconfig
from finetune_dev.devcluster.pki import ensure_pki
from finetune_dev.devcluster.stages import STAGES, write_kwok_config

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
GPU_RESOURCE = "nvidia.com/gpu"


class ClusterError(RuntimeError):
    """A start/stop step failed; the message says which step, the log to read, what to do."""


@dataclass
class Ports:
    etcd: int = 23790
    etcd_peer: int = 23800
    apiserver: int = 16443
    controller_manager: int = 16257
    scheduler: int = 16259
    kwok: int = 16247

    def all(self) -> dict[str, int]:
        return asdict(self)


def default_ports() -> Ports:
    """The default ports, shifted by FINETUNE_CLUSTER_PORT_OFFSET (a second cluster beside the
    first: set it with FINETUNE_CLUSTER_DIR)."""
    offset = int(os.environ.get("FINETUNE_CLUSTER_PORT_OFFSET", "0"))
    return Ports(**{k: v + offset for k, v in Ports().all().items()})


@dataclass
class ClusterConfig:
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    ports: Ports = field(default_factory=default_ports)
    nodes: int = 2
    gpus_per_node: int = 8
    host: str = "127.0.0.1"
    kwok_stages: tuple[str, ...] = STAGES  # a benchmark may drop pod-complete
    extra_args: dict[str, list[str]] = field(default_factory=dict)  # component -> more flags

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.ports.apiserver}"


def default_state_dir() -> Path:
    env = os.environ.get("FINETUNE_CLUSTER_DIR")
    return Path(env) if env else versions.cache_root() / "cluster"


def _log(msg: str) -> None:
    print(f"[devcluster] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- state and processes


def _state_file(cfg: ClusterConfig) -> Path:
    return cfg.state_dir / "state.json"


def read_state(cfg: ClusterConfig) -> dict:
    try:
        return json.loads(_state_file(cfg).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(cfg: ClusterConfig, state: dict) -> None:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = _state_file(cfg).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_file(cfg))


def pid_alive(pid: int, binary: str | None = None) -> bool:
    """True if pid runs (and, when given, runs that binary: pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return binary is None or Path(cmdline).name == Path(binary).name


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _start(cfg: ClusterConfig, name: str, argv: list[str]) -> int:
    logs = cfg.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=cfg.state_dir)
    out.close()
    state = read_state(cfg)
    state.setdefault("pids", {})[name] = proc.pid
    _write_state(cfg, state)
    return proc.pid


def _log_tail(cfg: ClusterConfig, name: str, lines: int = 15) -> str:
    try:
        text = (cfg.state_dir / "logs" / f"{name}.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:])


def _wait(cfg: ClusterConfig, name: str, pid: int, ready: Callable[[], bool],
          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise ClusterError(
                f"{name} exited during start-up; log {cfg.state_dir}/logs/{name}.log ends with:\n"
                f"{_log_tail(cfg, name)}\nFix the cause (a port in use? run `down` first), retry."
            )
        if ready():
            return
        time.sleep(0.3)
    raise ClusterError(f"{name} not ready after {timeout:.0f}s; see "
                       f"{cfg.state_dir}/logs/{name}.log:\n{_log_tail(cfg, name)}")


def _ssl_context(cfg: ClusterConfig) -> ssl.SSLContext:
    pki = cfg.state_dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def api_get(cfg: ClusterConfig, path: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(cfg.server + path, context=_ssl_context(cfg),
                                    timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def api_ready(cfg: ClusterConfig) -> bool:
    return api_get(cfg, "/readyz")[0] == 200


def kubectl(cfg: ClusterConfig, *args: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(build.binary("kubectl")), f"--kubeconfig={cfg.kubeconfig}", *args]
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


# ---------------------------------------------------------------- component command lines


def _argv(cfg: ClusterConfig) -> Iterator[tuple[str, list[str]]]:
    p, h, s = cfg.ports, cfg.host, cfg.state_dir
    pki, kc = s / "pki", str(cfg.kubeconfig)
    yield "etcd", [
        str(build.binary("etcd")), "--name=finetune", f"--data-dir={s / 'etcd'}",
        f"--listen-client-urls=http://{h}:{p.etcd}", f"--advertise-client-urls=http://{h}:{p.etcd}",
        f"--listen-peer-urls=http://{h}:{p.etcd_peer}",
        f"--initial-advertise-peer-urls=http://{h}:{p.etcd_peer}",
        f"--initial-cluster=finetune=http://{h}:{p.etcd_peer}", "--unsafe-no-fsync",
        "--log-level=warn",
    ]
    yield "kube-apiserver", [
        str(build.binary("kube-apiserver")), f"--etcd-servers=http://{h}:{p.etcd}",
        f"--bind-address={h}", f"--advertise-address={h}", f"--secure-port={p.apiserver}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}", f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=Node,RBAC", "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=false", "--profiling=false", "--endpoint-reconciler-type=none",
        "--enable-admission-plugins=NodeRestriction",
    ]
    common = [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
              f"--authorization-kubeconfig={kc}", f"--bind-address={h}", "--leader-elect=false",
              "--profiling=false"]
    yield "kube-controller-manager", [
        str(build.binary("kube-controller-manager")), *common,
        f"--secure-port={p.controller_manager}",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        "--concurrent-gc-syncs=5", "--node-monitor-grace-period=40s",
    ]
    yield "kube-scheduler", [str(build.binary("kube-scheduler")), *common,
                             f"--secure-port={p.scheduler}"]
    yield "kwok", [
        str(build.binary("kwok")), f"--kubeconfig={kc}", f"--config={s / 'kwok.yaml'}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
        f"--server-address={h}:{p.kwok}", "--node-lease-duration-seconds=40",
        "--cidr=10.244.0.0/16", "--node-ip=10.244.0.1",
    ]


def _component_ready(cfg: ClusterConfig, name: str) -> bool:
    p = cfg.ports
    if name == "etcd":
        return port_open(cfg.host, p.etcd)
    if name == "kube-apiserver":
        return api_ready(cfg)
    port = {"kube-controller-manager": p.controller_manager, "kube-scheduler": p.scheduler,
            "kwok": p.kwok}[name]
    return port_open(cfg.host, port)


# ---------------------------------------------------------------- public operations


def running(cfg: ClusterConfig) -> dict[str, bool]:
    pids = read_state(cfg).get("pids", {})
    return {n: bool(pids.get(n)) and pid_alive(pids[n], n) for n in COMPONENTS}


def _provisioner_running(cfg: ClusterConfig) -> bool:
    pid = read_state(cfg).get("pids", {}).get("provisioner")
    return bool(pid) and pid_alive(pid)


def is_up(cfg: ClusterConfig) -> bool:
    return all(running(cfg).values()) and api_ready(cfg) and _provisioner_running(cfg)


def _start_provisioner(cfg: ClusterConfig) -> None:
    kubectl(cfg, "apply", "-f", "-", input=json.dumps(provisioner.storage_class()))
    pid = _start(cfg, "provisioner", [sys.executable, "-m",
                                      "finetune_dev.devcluster.provisioner",
                                      f"--kubeconfig={cfg.kubeconfig}",
                                      f"--state-dir={cfg.state_dir}"])
    register_extra(cfg, "provisioner", pid)


def up(cfg: ClusterConfig) -> None:
    """Build what is missing, start every component, create the GPU nodes, wait until ready."""
    started = time.monotonic()
    if is_up(cfg):
        _log(f"already running; kubeconfig {cfg.kubeconfig}")
        return
    if all(running(cfg).values()) and api_ready(cfg):
        _log("control plane running; starting the volume provisioner")
        _start_provisioner(cfg)
        return
    if any(running(cfg).values()):
        _log("a previous cluster is half running; stopping it first")
        down(cfg)
    busy = [f"{n}={port}" for n, port in cfg.ports.all().items() if port_open(cfg.host, port)]
    if busy:
        raise ClusterError(f"ports already in use on {cfg.host}: {', '.join(busy)}; stop what holds"
                           " them (`ss -ltnp`) or choose other ports, then retry")
    build.ensure_built()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_pki(cfg.state_dir / "pki")
    write_kubeconfig(cfg.kubeconfig, cfg.server, cfg.state_dir / "pki")
    write_kwok_config(cfg.state_dir / "kwok.yaml", cfg.kwok_stages)
    _write_state(cfg, {"config": {"ports": cfg.ports.all(), "nodes": cfg.nodes,
                                  "gpusPerNode": cfg.gpus_per_node}, "pids": {}})
    for name, argv in _argv(cfg):
        _log(f"starting {name}")
        pid = _start(cfg, name, argv + cfg.extra_args.get(name, []))
        _wait(cfg, name, pid, functools.partial(_component_ready, cfg, name), 90)
    _wait_default_serviceaccount(cfg)
    _start_provisioner(cfg)
    for i in range(cfg.nodes):
        apply_gpu_node(cfg, f"gpu-node-{i}", cfg.gpus_per_node)
    wait_nodes_ready(cfg, [f"gpu-node-{i}" for i in range(cfg.nodes)])
    from finetune_dev.devcluster import dra  # (dra builds on this module)

    shared = dra.add_dra_node(cfg, "gpu-shared-0", 2, "shared")
    mig = dra.add_dra_node(cfg, "gpu-mig-0", 1, "partitioned")
    _log(f"cluster up in {time.monotonic() - started:.1f}s: {cfg.nodes} node(s) x "
         f"{cfg.gpus_per_node} {GPU_RESOURCE}; DRA: {shared} (2 GPUs shared by memory, "
         f"DeviceClass {dra.SHARED_CLASS}), {mig} (1 GPU in MIG-style partitions, DeviceClass "
         f"{dra.PARTITION_CLASS}); export KUBECONFIG={cfg.kubeconfig}")


def _wait_default_serviceaccount(cfg: ClusterConfig, timeout: float = 60) -> None:
    """Pods cannot be created until the controller-manager made the `default` ServiceAccount."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_get(cfg, "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200:
            return
        time.sleep(0.5)
    raise ClusterError("the controller-manager did not create the default ServiceAccount in "
                       f"{timeout:.0f}s; see {cfg.state_dir}/logs/kube-controller-manager.log")


def node_manifest(name: str, gpus: int, labels: dict[str, str] | None = None,
                  taints: list[dict] | None = None) -> dict:
    cap = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "true",
                       **(labels or {})},
        },
        "spec": {"taints": taints or []},
        "status": {"capacity": cap, "allocatable": cap},
    }


def apply_gpu_node(cfg: ClusterConfig, name: str, gpus: int, labels: dict[str, str] | None = None,
                   taints: list[dict] | None = None) -> None:
    kubectl(cfg, "apply", "-f", "-", input=json.dumps(node_manifest(name, gpus, labels, taints)))


def wait_nodes_ready(cfg: ClusterConfig, names: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for n in list(pending):
            code, body = api_get(cfg, f"/api/v1/nodes/{n}")
            if code == 200:
                conds = json.loads(body).get("status", {}).get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                    pending.discard(n)
        time.sleep(0.3)
    if pending:
        raise ClusterError(f"nodes not Ready after {timeout:.0f}s: {sorted(pending)}; kwok manages "
                           f"them — see {cfg.state_dir}/logs/kwok.log")


def stop_pid(pid: int, binary: str | None, grace: float = 10.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL."""
    if not pid_alive(pid, binary):
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)


def down(cfg: ClusterConfig, keep_data: bool = False) -> None:
    """Stop every process this cluster started (extras first), free the ports, drop etcd data."""
    state = read_state(cfg)
    pids: dict[str, int] = state.get("pids", {})
    extras = [n for n in pids if n not in COMPONENTS]
    order = extras + [n for n in reversed(COMPONENTS) if n in pids]
    for name in order:
        binary = name if name in COMPONENTS else None
        if pid_alive(pids[name], binary):
            _log(f"stopping {name} (pid {pids[name]})")
            stop_pid(pids[name], binary)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        busy = [n for n, port in cfg.ports.all().items() if port_open(cfg.host, port)]
        if not busy:
            break
        time.sleep(0.2)
    else:
        raise ClusterError(f"ports still bound after stop: {busy}; check `ss -ltnp`")
    if not keep_data and (cfg.state_dir / "etcd").exists():
        subprocess.run(["rm", "-rf", str(cfg.state_dir / "etcd")], check=False)
    state["pids"] = {}
    _write_state(cfg, state)
    _log("cluster down")


def register_extra(cfg: ClusterConfig, name: str, pid: int) -> None:
    """Record a process (operator, node agent) so `down` stops it too."""
    state = read_state(cfg)
    state.setdefault("pids", {})[name] = pid
    _write_state(cfg, state)


def unregister_extra(cfg: ClusterConfig, name: str) -> None:
    """Forget a process recorded with register_extra (it stopped on its own)."""
    state = read_state(cfg)
    if state.get("pids", {}).pop(name, None) is not None:
        _write_state(cfg, state)


def status(cfg: ClusterConfig) -> dict:
    state = read_state(cfg)
    pids = state.get("pids", {})
    procs = {n: {"pid": pid, "running": pid_alive(pid, n if n in COMPONENTS else None)}
             for n, pid in pids.items()}
    info: dict = {"stateDir": str(cfg.state_dir), "kubeconfig": str(cfg.kubeconfig),
                  "server": cfg.server, "processes": procs, "apiReady": api_ready(cfg)}
    if info["apiReady"]:
        code, body = api_get(cfg, "/api/v1/nodes")
        if code == 200:
            info["nodes"] = {
                n["metadata"]["name"]: n.get("status", {}).get("allocatable", {}).get(GPU_RESOURCE)
                for n in json.loads(body)["items"]
            }
    return info


def restart_component(cfg: ClusterConfig, name: str, timeout: float = 90) -> None:
    """Stop one component (SIGTERM, then SIGKILL) and start it again with the same flags: the
    chaos suite restarts kube-apiserver and etcd under a running operator."""
    if name not in COMPONENTS:
        raise ClusterError(f"unknown component {name}; one of {', '.join(COMPONENTS)}")
    pid = read_state(cfg).get("pids", {}).get(name)
    if pid:
        stop_pid(pid, name)
    argv = dict(_argv(cfg))[name] + cfg.extra_args.get(name, [])
    _log(f"restarting {name}")
    new = _start(cfg, name, argv)
    _wait(cfg, name, new, functools.partial(_component_ready, cfg, name), timeout)
