"""Run the real operator process against the local cluster, and drive what kwok cannot.

kwok pods never finish on their own, so tests play the kubelet's part where needed: they patch
a pod's status to a terminated container (exit code, reason, termination message) through the
status subresource, exactly as a kubelet reports it; the operator reads it like any other pod.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .kube import Cluster, short_id, wait_for

TEST_ENV = {
    "FINETUNE_ADMISSION_INTERVAL_SECONDS": "0.5",
    "FINETUNE_MIN_CYCLE_INTERVAL_SECONDS": "0.05",
    "FINETUNE_PROGRESS_WRITE_INTERVAL_SECONDS": "1",
    "FINETUNE_QUEUE_STATUS_INTERVAL_SECONDS": "1",
    "FINETUNE_QUEUE_STATUS_WRITES_PER_SECOND": "100",
    "FINETUNE_LEASE_RENEW_SECONDS": "2",
    "FINETUNE_UNSCHEDULABLE_GRACE_SECONDS": "3",
    # the tests' namespaces are made on the fly: the preempting band is allowed everywhere here
    # (the default grants it per namespace only)
    "FINETUNE_ALLOWED_PRIORITY_CLASSES":
        "finetune-critical,finetune-high,finetune-normal,finetune-low",
    "FINETUNE_BACKOFF_BASE_SECONDS": "1",
    "FINETUNE_MIN_RUNTIME_BEFORE_PREEMPTION_SECONDS": "0",
    "FINETUNE_AGING_RATE_PER_MINUTE": "100",
    "FINETUNE_AGING_CAP": "3000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    def __init__(self, cluster: Cluster, log_dir: Path, env: dict[str, str] | None = None):
        self.cluster, self.log_dir = cluster, log_dir
        # one leader identity per object, kept across its restarts (a restarted leader takes
        # the lease back at once); distinct objects never share it
        self.env = {**TEST_ENV, "POD_NAME": f"test-operator-{short_id()}", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.report_port = free_port()
        self.log_path = log_dir / f"operator-{short_id()}.log"

    def start(self, *, leader: bool = True, **extra_env: str) -> OperatorProcess:
        """Start the process; wait until it leads (leader=True) or just runs (a standby)."""
        self.log_path = self.log_dir / f"operator-{short_id()}.log"
        env = {**os.environ, **self.env, **extra_env}
        argv = [sys.executable, "-m", "finetune_operator",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--metrics-port={self.metrics_port}", f"--health-port={self.health_port}",
                f"--report-port={self.report_port}"]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        try:
            if leader:
                wait_for("the operator to acquire the leader lease", self._leading, 40)
            else:
                wait_for("the operator to start", lambda: self._alive() and
                         "Initial authentication" in self.log(tail=None), 40)
        except AssertionError:
            self.kill()
            raise
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()}")
        return True

    def _leading(self) -> bool:
        return self._alive() and self.leads()

    def leads(self) -> bool:
        return "acquired leadership" in self.log(tail=None)

    def log(self, tail: int | None = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if tail is None else text[-tail:]

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye — what a node crash or OOM does."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return str(r.read().decode())


# ------------------------------------------------------------------ manifests and kubelet's part


def ftj(name: str, gpus: int, priority_class: str, selector: dict[str, str],
        **spec: Any) -> dict:
    body: dict[str, Any] = {
        "model": {"name": "tiny", "source": {"hub": {"repo": "example/tiny"}}},
        "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}}},
        "resources": {"gpus": gpus, "nodeSelector": selector},
        "priorityClassName": priority_class,
        "training": {"maxSteps": 100},
    }
    body.update(spec)
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name}, "spec": body}


def job_status(cluster: Cluster, ns: str, name: str) -> dict:
    return (cluster.get("finetunejob", name, ns) or {}).get("status") or {}


def wait_phase(cluster: Cluster, ns: str, name: str, phase: str, timeout: float = 30) -> dict:
    return wait_for(f"{ns}/{name} phase {phase}", lambda: (
        lambda st: st if st.get("phase") == phase else None)(job_status(cluster, ns, name)),
        timeout)


def job_pods(cluster: Cluster, ns: str, name: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", ns, "-l", f"finetune.dev/job={name}", "-o",
                          "json").stdout
    return list(json.loads(out)["items"])


def finish_pod(cluster: Cluster, ns: str, pod: str, exit_code: int, reason: str,
               message: dict | str = "") -> None:
    """Report the trainer container as terminated, as the kubelet would."""
    msg = message if isinstance(message, str) else json.dumps(message)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [{
        "name": "trainer", "image": "finetune-operator/trainer:test", "imageID": "",
        "ready": False, "restartCount": 0, "started": False,
        "state": {"terminated": {"exitCode": exit_code, "reason": reason, "message": msg,
                                 "startedAt": now, "finishedAt": now}}}]}
    cluster.kubectl("patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))


def complete(cluster: Cluster, ns: str, name: str, step: int = 100) -> None:
    pods = [p for p in job_pods(cluster, ns, name) if p["status"].get("phase") == "Running"]
    assert pods, f"{ns}/{name} has no running pod to complete"
    finish_pod(cluster, ns, pods[0]["metadata"]["name"], 0, "Completed",
               {"reason": "Completed", "finalStep": step, "adapterPath": "output/adapter",
                "metrics": {"evalLoss": 0.5}})


def report_progress(cluster: Cluster, ns: str, pod: str, progress: dict,
                    expect: int | tuple[int, ...] = 204) -> int:
    """What the trainer does: POST the report to the operator over HTTPS (the URL and CA from
    the job's trainer config), with a projected ServiceAccount token bound to its own pod."""
    import ssl
    import tempfile
    import urllib.error
    import urllib.request

    import yaml

    obj = cluster.get("pod", pod, ns)
    assert obj is not None, f"pod {ns}/{pod} not found"
    job = obj["metadata"]["labels"]["finetune.dev/job"]
    cm = cluster.get("configmap", f"{job}-config", ns)
    assert cm is not None
    report = yaml.safe_load(cm["data"]["config.yaml"])["report"]
    token = pod_token(cluster, ns, obj)
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca:
        ca.write(report["caPem"])
        ca.flush()
        ctx = ssl.create_default_context(cafile=ca.name)
        req = urllib.request.Request(report["url"], data=json.dumps(progress).encode(),
                                     method="POST", headers={
                                         "Authorization": f"Bearer {token}",
                                         "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        except (ConnectionError, OSError) as e:  # refused before the body was read, closed
            code = getattr(e, "errno", None) or 0
    allowed = expect if isinstance(expect, tuple) else (expect,)
    assert code in allowed, f"report to {report['url']}: HTTP {code}, expected {expect}"
    return code


def pod_token(cluster: Cluster, ns: str, pod: dict, audience: str = "finetune.dev/operator"
              ) -> str:
    """A projected token as the kubelet mints it for the pod (TokenRequest, bound to it)."""
    sa = pod["spec"].get("serviceAccountName") or "default"
    return cluster.kubectl("create", "token", sa, "-n", ns, f"--audience={audience}",
                           "--bound-object-kind=Pod",
                           f"--bound-object-name={pod['metadata']['name']}",
                           f"--bound-object-uid={pod['metadata']['uid']}").stdout.strip()
