"""Start the node agent: in this process (`run_agent`) or as a child process (`start_agent`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from kubernetes import client, config

from finetune_api.labels import AGENT_LABEL
from finetune_dev.devcluster import cluster as dc
from finetune_dev.nodeagent.agent import AgentConfig, NodeAgent
from finetune_dev.nodeagent.node import NodeSpec
from finetune_dev.nodeagent.paths import default_root
from finetune_dev.nodeagent.sources import raw


def run_agent(node: str, gpus: int, *, kubeconfig: Path | None = None, root: Path | None = None,
              cpu: str = "64", memory: str = "512Gi", pods: str = "110",
              labels: dict[str, str] | None = None,
              stop: threading.Event | None = None) -> None:
    """Run the agent in this process until `stop` is set (blocks). Uses the cluster's admin
    kubeconfig by default; pods reach the apiserver at the kubeconfig's host and port."""
    kc = kubeconfig or Path(os.environ.get("KUBECONFIG") or dc.ClusterConfig().kubeconfig)
    api = config.new_client_from_config(config_file=str(kc))
    url = urlparse(api.configuration.host)
    agent_root = Path(root or default_root()).resolve()
    cfg = AgentConfig(node=NodeSpec(node, gpus, cpu, memory, pods, dict(labels or {}),
                                    str(agent_root)),
                      root=agent_root,
                      api_host=url.hostname or "127.0.0.1", api_port=url.port or 443)
    NodeAgent(api, cfg).run(stop or threading.Event())


@dataclass
class AgentProcess:
    """A node agent running as a child process (its own session), registered with the cluster
    state so `devcluster down` stops it too."""

    node: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path
    cfg: dc.ClusterConfig

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM: the agent stops every pod gracefully, then exits. SIGKILL after timeout."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        dc.unregister_extra(self.cfg, f"nodeagent-{self.node}")
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the agent alone (its pods' processes survive, as after a crash)."""
        self.proc.kill()
        self.proc.wait()
        dc.unregister_extra(self.cfg, f"nodeagent-{self.node}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def start_agent(node: str, gpus: int, *, root: Path | None = None,
                cfg: dc.ClusterConfig | None = None, extra_args: list[str] | None = None,
                ready_timeout: float = 60.0) -> AgentProcess:
    """Start `python -m finetune_dev.nodeagent` for `node` and wait until its
    Node is Ready. Log: `<cluster state dir>/logs/nodeagent-<node>.log`."""
    cfg = cfg or dc.ClusterConfig()
    root = Path(root or default_root()).resolve()
    log = cfg.state_dir / "logs" / f"nodeagent-{node}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "finetune_dev.nodeagent", "--node", node,
            "--gpus", str(gpus), "--kubeconfig", str(cfg.kubeconfig), "--root", str(root),
            *(extra_args or [])]
    # before the agent starts: its Ready condition's lastTransitionTime (whole seconds, from its
    # own start) must count as "after since" even when it comes up within the same second
    since = datetime.now(UTC).replace(microsecond=0)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    agent = AgentProcess(node, root, proc, log, cfg)
    dc.register_extra(cfg, f"nodeagent-{node}", proc.pid)
    api = config.new_client_from_config(config_file=str(cfg.kubeconfig))
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            dc.unregister_extra(cfg, f"nodeagent-{node}")
            raise dc.ClusterError(f"node agent for {node} exited with {proc.returncode}; "
                                  f"{log} ends with:\n{agent.log_tail()}")
        if _ready(core, node, since):
            return agent
        time.sleep(0.3)
    agent.stop(10)
    raise dc.ClusterError(f"node {node} not Ready {ready_timeout:.0f}s after starting its agent; "
                          f"{log} ends with:\n{agent.log_tail()}")


def _ready(core: client.CoreV1Api, node: str, since: datetime) -> bool:
    """Ready as reported by an agent started at or after `since` (not a stale condition)."""
    try:
        n = raw(core.read_node, node)
    except client.ApiException:
        return False
    ours = (n["metadata"].get("labels") or {}).get(AGENT_LABEL) == "true"
    return ours and any(c["type"] == "Ready" and c["status"] == "True"
                        and datetime.fromisoformat(c["lastTransitionTime"]) >= since
                        for c in (n.get("status") or {}).get("conditions") or [])
