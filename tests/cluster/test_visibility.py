"""The visibility endpoint (issue 9/11): exact queue positions on demand over HTTPS, authorised
per namespace with the caller's own token (TokenReview + SubjectAccessReview)."""

from __future__ import annotations

import json
import ssl
import tempfile
import urllib.error
import urllib.request

import pytest
import yaml

from tests.builders.cli import cli

from ..kube import Cluster, wait_for
from ..operator_proc import OperatorProcess, ftj, wait_phase

pytestmark = pytest.mark.cluster


def _get(url: str, ca: str, token: str | None) -> tuple[int, dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(ca)
        f.flush()
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                     if token else {})
        try:
            with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=f.name),
                                        timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def test_queue_positions_per_namespace_with_the_callers_token(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes,
        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mine, theirs = make_namespace(), make_namespace()
    sel = gpu_nodes(1, 1)
    cluster.apply([ftj("running", 1, "finetune-normal", sel)], mine)
    wait_phase(cluster, mine, "running", "Running")
    cluster.apply([ftj("second", 1, "finetune-normal", sel)], mine)
    cluster.apply([ftj("third", 1, "finetune-normal", sel)], mine)
    cluster.apply([ftj("secret-model", 1, "finetune-high", sel)], theirs)
    for n in ("second", "third"):
        wait_phase(cluster, mine, n, "Queued")
    # a tenant's identity: a ServiceAccount that may list FineTuneJobs in its namespace only
    cluster.kubectl("create", "serviceaccount", "alice", "-n", mine)
    cluster.kubectl("create", "role", "ftj-reader", "-n", mine, "--verb=get,list",
                    "--resource=finetunejobs.finetune.dev")
    cluster.kubectl("create", "rolebinding", "alice", "-n", mine, "--role=ftj-reader",
                    f"--serviceaccount={mine}:alice")
    token = cluster.kubectl("create", "token", "alice", "-n", mine).stdout.strip()
    cm = cluster.get("configmap", "running-config", mine)
    assert cm is not None
    report = yaml.safe_load(cm["data"]["config.yaml"])["report"]
    base = report["url"].rsplit("/v1/", 1)[0]

    _, body = wait_for("both waiting jobs in the view", lambda: (
        lambda r: r if r[0] == 200 and len(r[1]["items"]) == 2 else None)(
        _get(f"{base}/v1/namespaces/{mine}/queue", report["caPem"], token)), 20)
    assert [(e["name"], e["position"]) for e in body["items"]] == [("second", 1), ("third", 2)]
    assert "clusterPosition" not in body["items"][0]  # no cluster-wide order for a tenant
    assert "secret-model" not in json.dumps(body)
    assert _get(f"{base}/v1/namespaces/{theirs}/queue", report["caPem"], token)[0] == 403
    assert _get(f"{base}/v1/queue", report["caPem"], token)[0] == 403
    assert _get(f"{base}/v1/namespaces/{mine}/queue", report["caPem"], None)[0] == 401
    assert _get(f"{base}/v1/namespaces/{mine}/queue", report["caPem"], "garbage")[0] == 403

    monkeypatch.setenv("FINETUNE_TOKEN", token)
    rc, out, err = cli(cluster, "list", "--queue", "-n", mine)
    assert rc == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert " 1 " in rows["second"] and " 2 " in rows["third"], out
