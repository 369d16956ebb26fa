"""The operator image, built by `make images`, run under podman as the chart runs it: its
command, uid 1000, a read-only root file system with /tmp as the only writable place, no
capabilities; against the local cluster it takes the leader lease and serves /metrics and
/healthz."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import free_port, metrics_reader_token
from .conftest import PODMAN, SIZES, Image, podman

pytestmark = pytest.mark.image


def _get(port: int, path: str, token: str | None = None) -> str | None:
    """GET over plain HTTP, or with a token over HTTPS without verifying the certificate (the
    report channel's, made at start: what the chart's ServiceMonitor does by default)."""
    scheme, ctx = "http", None
    if token is not None:
        scheme, ctx = "https", ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return str(r.read().decode())
    except OSError:
        return None


# The operator image carries its product and the api only (issue 20): no training stack, no
# trainer, no dev tooling (local cluster, node agent, demos).
NOT_CARRIED = {"torch": "torch", "transformers": "transformers", "peft": "peft",
               "finetune_trainer": "finetune-trainer", "finetune_dev": "finetune-dev"}
CARRIED = {"finetune_api": "finetune-api", "finetune_operator": "finetune-operator",
           "kopf": "kopf", "kubernetes": "kubernetes"}


def test_carries_the_operator_and_the_api_only(operator_image: Image) -> None:
    operator_image.assert_carries_only(CARRIED, NOT_CARRIED,
                                       "Dockerfile.operator installs ./api ./operator only")


def test_help_answers(operator_image: Image) -> None:
    out = operator_image.run(operator_image.ref, "--help").stdout
    assert "usage: finetune-operator" in out and "--metrics-port" in out


def test_runs_as_the_chart_runs_it_and_leads(cluster: Cluster, crd_installed: Path,
                                             operator_image: Image, tmp_path: Path) -> None:
    namespace = f"img-{short_id()}"
    cluster.create_namespace(namespace)
    # the chart mounts a ServiceAccount; here the admin kubeconfig (readable by uid 1000)
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(cluster.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)
    metrics, health, reports = free_port(), free_port(), free_port()
    name = f"finetune-operator-test-{short_id()}"
    # the chart's command (finetune-operator), user, securityContext and /tmp emptyDir; its own
    # namespace for the lease and the watch, so it leads without touching other tests' jobs
    argv = ["run", "--rm", "--name", name, "--network", "host", "--user", "1000:1000",
            "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "-v", f"{kubeconfig}:/etc/finetune/kubeconfig:ro",
            "-e", "KUBECONFIG=/etc/finetune/kubeconfig", "-e", f"POD_NAME={name}",
            "-e", f"POD_NAMESPACE={namespace}", "-e", f"FINETUNE_NAMESPACES={namespace}",
            "-e", f"FINETUNE_METRICS_PORT={metrics}", "-e", f"FINETUNE_HEALTH_PORT={health}",
            "-e", f"FINETUNE_REPORT_PORT={reports}",
            "--entrypoint", '["finetune-operator"]', operator_image.ref]
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(PODMAN), *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def leading() -> bool:
            assert proc.poll() is None, f"operator exited {proc.returncode}:\n{log.read_text()}"
            return "acquired leadership" in log.read_text(errors="replace")

        wait_for("the operator in its image to acquire the leader lease", leading, 120)
        lease = cluster.get("lease", "finetune-operator-leader", namespace)
        assert lease is not None and lease["spec"]["holderIdentity"].startswith(name)
        token = metrics_reader_token(cluster)
        text = wait_for("/metrics", lambda: _get(metrics, "/metrics", token), 30)
        assert "finetune_" in text
        assert wait_for("/healthz", lambda: _get(health, "/healthz"), 30)
    finally:
        podman("stop", "--time", "20", name, check=False, timeout=60)
        proc.wait(60)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    # SIGTERM (podman stop): the operator releases the lease and exits cleanly
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_supply_chain_basics(operator_image: Image) -> None:
    cfg = operator_image.inspect()["Config"]
    assert cfg["User"] == "1000:1000"
    assert cfg["Entrypoint"] == ["finetune-operator"]
    out = operator_image.run("--entrypoint", "sh", operator_image.ref, "-c",
                             "for c in gcc g++ cc c++ make; do command -v $c; done; "
                             "echo ---; cat /opt/venv/pip-freeze.txt").stdout
    tools, freeze = out.split("---", 1)
    assert not tools.strip(), f"build tools in the runtime image: {tools}"
    assert "kopf==1.45.2" in freeze.split() and "torch" not in freeze
    size = operator_image.inspect()["Size"]
    biggest = max(operator_image.layers(), key=lambda h: h["size"])
    SIZES.append(f"{operator_image.ref}: {size / 1e6:.0f} MB; largest layer "
                 f"{biggest['size'] / 1e6:.0f} MB: {' '.join(biggest['CreatedBy'].split())[:90]}")
    assert size < 600e6, "the operator image has no torch/CUDA: it should stay small"
