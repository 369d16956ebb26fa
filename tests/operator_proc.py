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
        # /metrics gets a certificate of its own here, so scrapes verify it with its CA
        from finetune_operator.http import tls

        self.metrics_tls = tls.generate(["127.0.0.1"], log_dir / f"metrics-tls-{short_id()}")
        self.env = {**TEST_ENV, "POD_NAME": f"test-operator-{short_id()}",
                    "FINETUNE_METRICS_TLS_CERT_FILE": self.metrics_tls.cert_file,
                    "FINETUNE_METRICS_TLS_KEY_FILE": self.metrics_tls.key_file, **(env or {})}
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
        """GET /metrics as Prometheus does: HTTPS, and the token of a ServiceAccount bound to
        the chart's metrics-reader ClusterRole."""
        code, text = self.get_metrics(metrics_reader_token(self.cluster))
        assert code == 200, f"GET /metrics: HTTP {code}: {text}"
        return text

    def get_metrics(self, token: str | None) -> tuple[int, str]:
        """(HTTP status, body) of GET /metrics with this bearer token (None: no header)."""
        import ssl
        import urllib.error
        import urllib.request

        ctx = ssl.create_default_context(cadata=self.metrics_tls.ca_pem)
        req = urllib.request.Request(f"https://127.0.0.1:{self.metrics_port}/metrics",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return int(r.status), str(r.read().decode())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")


# ------------------------------------------------------------------ who may scrape /metrics

CHART = Path(__file__).resolve().parent.parent / "charts" / "finetune-operator"
_TOKENS: dict[tuple[str, str, str], tuple[float, str]] = {}  # (cluster, ns, sa) -> (made, token)


def metrics_reader_role(cluster: Cluster) -> str:
    """Apply the chart's metrics-reader ClusterRole (rendered by helm: one source); its name."""
    import yaml

    from finetune_dev.devcluster import build

    out = subprocess.run([str(build.binary("helm")), "template", "ft", str(CHART),
                          "--show-only", "templates/rbac.yaml"],
                         capture_output=True, text=True, check=True).stdout
    role = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "ClusterRole"
                and d["metadata"]["name"].endswith("-metrics-reader"))
    cluster.apply(role)
    return str(role["metadata"]["name"])


def scraper_token(cluster: Cluster, namespace: str, name: str, reader: bool,
                  bind: bool = True) -> str:
    """A token of ServiceAccount namespace/name (made here), bound here to the chart's
    metrics-reader ClusterRole when ``reader`` and ``bind`` (not ``bind``: an installed chart
    binds it); waits until RBAC answers accordingly."""
    sa = f"system:serviceaccount:{namespace}:{name}"
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": namespace}})
    if reader and bind:
        role = metrics_reader_role(cluster)
        cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1",
                       "kind": "ClusterRoleBinding",
                       "metadata": {"name": f"{role}-{namespace}-{name}"},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                   "name": role},
                       "subjects": [{"kind": "ServiceAccount", "name": name,
                                     "namespace": namespace}]})
    want = "yes" if reader else "no"
    wait_for(f"RBAC to answer {want} for {sa} get /metrics", lambda: cluster.kubectl(
        "auth", "can-i", "get", "/metrics", f"--as={sa}", check=False).stdout.strip() == want, 30)
    return cluster.kubectl("create", "token", name, "-n", namespace).stdout.strip()


def metrics_reader_token(cluster: Cluster, namespace: str = "default",
                         name: str = "finetune-metrics-scraper") -> str:
    """What Prometheus presents: a metrics reader's token, renewed every 30 minutes."""
    key = (str(cluster.kubeconfig), namespace, name)
    made, token = _TOKENS.get(key, (0.0, ""))
    if not token or time.monotonic() - made > 1800:  # monotonic may start near 0 (boot)
        token = scraper_token(cluster, namespace, name, reader=True)
        _TOKENS[key] = (time.monotonic(), token)
    return token


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
    seen: dict = {}

    def reached() -> dict | None:
        seen["status"] = st = job_status(cluster, ns, name)
        return st if st.get("phase") == phase else None

    try:
        return wait_for(f"{ns}/{name} phase {phase}", reached, timeout)
    except AssertionError as e:  # say where it stood: phase, conditions, its pods
        pods = cluster.kubectl("get", "pods,pvc", "-n", ns, "-o", "wide", check=False).stdout
        events = cluster.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp",
                                 check=False).stdout
        raise AssertionError(f"{e}\nlast status: {json.dumps(seen.get('status'))}\n"
                             f"pods and claims in {ns}:\n{pods}\nevents:\n{events[-3000:]}"
                             ) from None


def admitted_soon(cluster: Cluster, ns: str, sel: dict[str, str]) -> None:
    """A fresh 1-GPU job in ``ns`` is admitted within 10 s (then deleted): no other tenant's
    input stalls the scheduling cycle."""
    name = f"probe-{short_id()}"
    cluster.apply(ftj(name, 1, "finetune-normal", sel), ns)
    wait_for(f"{ns}/{name} admitted within 10 s", lambda: job_status(cluster, ns, name)
             .get("phase") in ("Admitted", "Running"), 10)
    cluster.kubectl("delete", "finetunejob", name, "-n", ns, "--wait=false")


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
