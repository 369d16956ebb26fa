"""Serve what was trained, for real: operator (serving on) + a local node agent + real tiny
trainings + the real serving runtime (``python -m finetune_server``, transformers on the CPU).

Two jobs train the tiny model; ``kubectl finetune serve`` creates a ModelServer for them; the
server is admitted under the namespace's GPU quota (its GPU shows in the ResourceQuota's usage
and a job that needs one more waits with QuotaExhausted), serves the base model and both
adapters to the ``openai`` client, streams through the API server's service proxy (``kubectl
finetune chat``), takes a third job's adapter without a restart once that job succeeds, and
frees its GPU when deleted.

The node agent runs pods as host processes; it reports the host's non-loopback address as the
pods' IP (``--pod-ip``), since the API server's service proxy refuses loopback endpoints.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_dev.devcluster.workloads import training_job
from finetune_dev.nodeagent.sources import routable_ip
from finetune_operator.cli import main as cli_main

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import OperatorProcess, job_status, wait_phase

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVER_CRD = ROOT / "crds" / "modelservers.finetune.dev.yaml"
RUN = 300  # seconds a tiny training, or the runtime's start, may take on 2 shared cores
BASE = "tiny-llama"  # training_job's model name: the base model's name in requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pod_ip() -> str:
    ip = routable_ip()
    if ip is None:
        pytest.skip("this host has no non-loopback IPv4 address: the API server's service "
                    "proxy refuses loopback pod IPs, which is all the node agent could report")
    return ip


@pytest.fixture(scope="module")
def serving_agent(cluster: Cluster, pod_ip: str) -> Iterator[Any]:
    from finetune_dev.nodeagent import start_agent

    a = start_agent(f"e2e-serve-{short_id()}", gpus=2, cfg=cluster.cfg,
                    extra_args=["--pod-ip", pod_ip])
    yield a
    a.stop()
    cluster.kubectl("delete", "node", a.node, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def serving_operator(cluster: Cluster, crd_installed: Any, priority_classes: Any,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SERVER_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modelservers.finetune.dev")
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator-serving"),
                         env={"FINETUNE_SERVING": "true"})
    op.start()
    yield op
    op.stop()


def _job(name: str, node: str) -> dict[str, Any]:
    body = training_job(name, gpus=0, priority_class="finetune-normal", node=node, max_steps=4,
                        interval_steps=4)
    body["spec"]["checkpoint"] = {"storage": {"claimName": "ckpt"}, "intervalSteps": 4}
    return body


def _server(cluster: Cluster, ns: str) -> dict[str, Any]:
    got = cluster.get("modelserver", "chat", ns)
    assert got is not None
    return got


def _status(cluster: Cluster, ns: str) -> dict[str, Any]:
    return dict((cluster.get("modelserver", "chat", ns) or {}).get("status") or {})


def _quota_used(cluster: Cluster, ns: str) -> str:
    q = json.loads(cluster.kubectl("get", "quota", "gpus", "-n", ns, "-o", "json").stdout)
    return str((q.get("status") or {}).get("used", {}).get("requests.nvidia.com/gpu", "0"))


def _metric(op: OperatorProcess, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(op.metrics())
            for s in family.samples if s.name == name]


def _writes(op: OperatorProcess) -> dict[tuple[str, str], float]:
    """The operator's API writes by (verb, resource), its Lease left out."""
    out = {}
    for d, n in _metric(op, "finetune_api_requests_total"):
        if d["verb"] in ("create", "patch", "update", "delete", "replace") and \
                d["resource"].split("/")[0].lower() not in ("lease", "leases", "tokenreviews",
                                                           "subjectaccessreviews"):
            out[(d["verb"], d["resource"])] = n
    return out


def _cycles(op: OperatorProcess) -> float:
    return sum(n for _, n in _metric(op, "finetune_scheduling_cycle_seconds_count"))


def _cli(cluster: Cluster, *argv: str) -> str:
    out = io.StringIO()
    rc = cli_main([*argv, "--kubeconfig", str(cluster.kubeconfig)], out=out)
    assert rc == 0, out.getvalue()
    return out.getvalue()


def test_serve_two_adapters_add_a_third_and_share_the_quota(
        cluster: Cluster, serving_operator: OperatorProcess, serving_agent: Any,
        train_ns: Any, pod_ip: str) -> None:
    from openai import OpenAI

    ns = train_ns(gpu_quota=1)
    node = serving_agent.node
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt"},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}}
    cluster.apply(claim, ns)
    cluster.apply([_job("ja", node), _job("jb", node)], ns)
    port = free_port()
    said = _cli(cluster, "serve", "ja", "jb", "--server", "chat", "--gpus", "1",
                "--runtime", "transformers", "--port", str(port),
                "--node-selector", f"kubernetes.io/hostname={node}", "-n", ns)
    assert "modelserver/chat created" in said

    def ready_with(names: list[str]) -> dict[str, Any] | None:
        st = _status(cluster, ns)
        return st if st.get("phase") == "Ready" and st.get("loadedAdapters") == names else None

    try:
        wait_phase(cluster, ns, "ja", "Succeeded", RUN)
        wait_phase(cluster, ns, "jb", "Succeeded", RUN)
        st = wait_for("server Ready with ja and jb", lambda: ready_with(["ja", "jb"]), RUN)
    except AssertionError as e:
        raise AssertionError(f"{e}\nserver status: {_status(cluster, ns)}\noperator log:\n"
                             f"{serving_operator.log(tail=3000)}\nagent log:\n"
                             f"{serving_agent.log_tail(60)}") from None
    assert st["url"] == f"http://chat.{ns}.svc:{port}"
    pod = st["pod"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["AdaptersReady"]["status"] == "True"

    # idle: a Ready server whose list did not change costs no write over many cycles
    writes_before, cycles_before = _writes(serving_operator), _cycles(serving_operator)
    wait_for("10 more scheduling cycles", lambda: _cycles(serving_operator) >= cycles_before + 10,
             60)
    assert _writes(serving_operator) == writes_before
    assert _status(cluster, ns)["pod"] == pod

    # the openai client: the base and each adapter
    client = OpenAI(base_url=f"http://{pod_ip}:{port}/v1", api_key="unused")
    models = sorted(m.id for m in client.models.list().data)
    assert models == sorted([BASE, "ja", "jb"])
    for model in (BASE, "ja", "jb"):
        got = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is the capital of Spain?"}],
            max_tokens=6, temperature=0.0)
        assert got.model == model
        assert got.usage is not None and got.usage.completion_tokens > 0
        assert got.choices[0].message.content is not None

    # the server's GPU is in the namespace's quota usage: a job needing one more waits
    assert _quota_used(cluster, ns) == "1"
    probe = training_job("probe", gpus=1, priority_class="finetune-normal", node=node,
                         max_steps=2)
    cluster.apply(probe, ns)
    waiting = wait_for("probe waiting on quota", lambda: (
        lambda s: s if any(c.get("reason") == "QuotaExhausted"
                           for c in s.get("conditions") or []) else None)(
        job_status(cluster, ns, "probe")), 60)
    assert waiting.get("phase") in (None, "Queued")
    rows = json.loads(_cli(cluster, "top", "-n", ns, "-o", "json"))
    row = next(r for r in rows if r["namespace"] == ns and r["gpuResource"] == "nvidia.com/gpu")
    # no job holds a GPU; the server's is the quota's one used GPU
    assert (row["allocated"], row["quotaUsed"], row["quotaFree"]) == (0, 1, 0)

    # chat through the API server's service proxy, streaming, as the kubeconfig's user
    answer = _cli(cluster, "chat", "chat", "--adapter", "ja", "-m", "Hello", "--max-tokens", "4",
                  "-n", ns)
    assert answer.strip()

    # a third job's adapter joins the running server once the job succeeds: no restart; one
    # command extends the server, waits for the adapter and asks it
    cluster.apply(_job("jc", node), ns)
    lines = _cli(cluster, "serve", "jc", "--server", "chat", "-m", "Hi", "--max-tokens", "4",
                 "--timeout", str(RUN), "-n", ns).splitlines()
    assert lines[0] == "modelserver/chat extended: + jc"
    assert lines[1].startswith("modelserver/chat: Ready; not loaded yet: jc"), lines
    assert lines[-2] == "modelserver/chat: Ready, serving ja, jb, jc" and lines[-1].strip(), lines
    assert job_status(cluster, ns, "jc").get("phase") == "Succeeded"
    assert (ready_with(["ja", "jb", "jc"]) or {}).get("pod") == pod
    got = client.chat.completions.create(
        model="jc", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert got.model == "jc"

    # unlisting an adapter unloads it
    spec = _server(cluster, ns)["spec"]
    spec["adapters"] = [a for a in spec["adapters"] if a["name"] != "jb"]
    cluster.kubectl("patch", "modelserver", "chat", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"adapters": spec["adapters"]}}))
    wait_for("jb unloaded", lambda: ready_with(["ja", "jc"]), 60)
    assert sorted(m.id for m in client.models.list().data) == sorted([BASE, "ja", "jc"])

    # deleting the server frees its GPU: the waiting job is admitted
    cluster.kubectl("delete", "modelserver", "chat", "-n", ns, "--wait=false")
    wait_for("quota freed", lambda: _quota_used(cluster, ns) == "0" or None, 120)
    wait_for("probe admitted", lambda: job_status(cluster, ns, "probe").get("phase") in (
        "Admitted", "Running", "Succeeded") or None, 120)
