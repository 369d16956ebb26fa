"""Build Kueue from the Go module proxy (cached, like the Kubernetes binaries) and run it out of
cluster against a local cluster: the scale benchmark's baseline (``benchmarks/scale``) and the
admission mode kueue tests (``tests/kueue``) both start it from here.

Recipe (see the shared notes on the Kueue baseline): CRDs from the module cache, namespace
``kueue-system``, a self-signed pair where Kueue insists on certificates even though nothing
calls it (webhook cert dir, ``/etc/kueue/metrics/certs``, hard-coded in v0.17.0's main), no
webhook configuration (Jobs are created suspended with the queue label), no leader election,
no internal cert management, the visibility server off (``VisibilityOnDemand=false``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from finetune_dev.devcluster import versions

VERSION = "v0.17.0"
MODULE = "sigs.k8s.io/kueue"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# client-go's line for a request its rate limiter held back (V(3) past 50 ms; past 1 s also at
# V(2) once a second and at info level once in 10 s)
THROTTLE_LINE = "Waited before sending request"
METRICS_CERTS = Path("/etc/kueue/metrics/certs")  # hard-coded in cmd/kueue/main.go


def bin_dir() -> Path:
    return versions.cache_root() / f"kueue-{VERSION}" / "bin"


def ensure_built() -> tuple[Path, float | None]:
    """The kueue binary, and the seconds its build took (None: it was already cached).

    The first build's time is kept next to the binary (build-seconds) for the report.
    """
    binary = bin_dir() / "kueue"
    if binary.exists():
        return binary, None
    bin_dir().mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(["go", "install", f"{MODULE}/cmd/kueue@{VERSION}"],
                          env={**os.environ, "GOBIN": str(bin_dir())}, cwd="/",
                          capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    if proc.returncode != 0 or not binary.exists():
        raise RuntimeError(f"building Kueue {VERSION} failed after {took:.0f}s:\n"
                           f"{proc.stderr[-3000:]}\nCheck the Go module proxy is reachable.")
    (bin_dir().parent / "build-seconds").write_text(f"{took:.0f}\n")
    return binary, took


def recorded_build_seconds() -> float | None:
    try:
        return float((bin_dir().parent / "build-seconds").read_text())
    except (FileNotFoundError, ValueError):
        return None


def module_dir() -> Path:
    out = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
                         capture_output=True, text=True, check=True, cwd="/",
                         env={**os.environ, "GOFLAGS": "-mod=mod"})
    return Path(json.loads(out.stdout)["Dir"])


def crd_dir() -> Path:
    return module_dir() / "config" / "components" / "crd" / "bases"


def _self_signed(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / "tls.crt").exists() and (dest / "tls.key").exists():
        return
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                    "-subj", "/CN=kueue", "-keyout", str(dest / "tls.key"),
                    "-out", str(dest / "tls.crt")], capture_output=True, check=True)


# Controller concurrency: v0.17.0's shipped manifests (Workload 5, LocalQueue and ClusterQueue 1)
# raised to what Kueue's maintainers ship since (kubernetes-sigs/kueue#12411, #12440: Workload 10,
# LocalQueue and ClusterQueue 5, "the current concurrency ... seems constraining"): a baseline
# configured as its maintainers now recommend (BENCHMARKS.md, "Scale").
CONCURRENCY = {
    "Job.batch": 5, "Pod": 5, "Workload.kueue.x-k8s.io": 10,
    "LocalQueue.kueue.x-k8s.io": 5, "Cohort.kueue.x-k8s.io": 1,
    "ClusterQueue.kueue.x-k8s.io": 5, "ResourceFlavor.kueue.x-k8s.io": 1}


def write_config(work: Path, ports: dict[str, int], qps: float, burst: int,
                 frameworks: tuple[str, ...] = ("batch/job",),
                 external: tuple[str, ...] = (),
                 extra: dict[str, Any] | None = None) -> Path:
    """Kueue's Configuration: the controller concurrency its maintainers ship now
    (``CONCURRENCY``), the client rate (the benchmark's variant: qps/burst as
    kube-controller-manager and kube-scheduler get here, or 50/100, Kueue's shipped default)
    and what running out of cluster needs (no leader election, no cert management, local
    ports). ``frameworks``: Kueue's built-in job
    integrations; ``external``: kinds whose Workloads an external controller manages
    (``integrations.externalFrameworks``, ``Kind.version.group``); ``extra``: more top-level
    settings (e.g. ``waitForPodsReady``)."""
    certs = work / "webhook-certs"
    _self_signed(certs)
    if not (METRICS_CERTS / "tls.crt").exists():
        _self_signed(METRICS_CERTS)
    cfg = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['health']}"},
        "metrics": {"bindAddress": f"127.0.0.1:{ports['metrics']}"},
        "webhook": {"port": ports["webhook"], "host": "127.0.0.1", "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "controller": {"groupKindConcurrency": dict(CONCURRENCY)},
        "clientConnection": {"qps": qps, "burst": burst},
        "integrations": {"frameworks": list(frameworks),
                         **({"externalFrameworks": list(external)} if external else {})},
        **(extra or {}),
    }
    path = work / "kueue-config.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


def start(binary: Path, kubeconfig: Path, config: Path, log: Path,
          log_level: str = "2") -> subprocess.Popen[bytes]:
    """Kueue in the background; log_level is zap's (info, or a number: the klog verbosity,
    2 shows client-side throttling past 1 s once a second, 3 every wait past 50 ms)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(binary), f"--config={config}", f"--kubeconfig={kubeconfig}",
             "--feature-gates=VisibilityOnDemand=false", f"--zap-log-level={log_level}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)})


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def main() -> None:
    """``python -m finetune_dev.kueue``: build (or find cached) the Kueue binary."""
    binary, took = ensure_built()
    print(f"kueue {VERSION}: {binary}" + (f" (built in {took:.0f}s)" if took else " (cached)"))


if __name__ == "__main__":
    main()
