"""`kubectl finetune list --queue` finds the operator's reports Service on a real API server,
with real RBAC, before any job was admitted (no trainer config exists): a tenant bound only to
the chart's user role and reached by the chart's queue-proxy Role gets the Service by name and
goes through the API server's service proxy. No operator runs here, so the proxy answers that no
pod is behind the Service: the note says so (and not that no trainer config exists).
tests/cluster/test_helm_install.py goes all the way to a running operator."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders.chart import RELEASE, one, render
from tests.builders.users import MakeNamespace, as_user, user_kubeconfig, user_role

from ..kube import Cluster, wait_for

pytestmark = pytest.mark.cluster
__all__ = ["user_role"]  # the fixture, imported for this module's tests


def test_list_queue_finds_the_chart_service_before_any_job_was_admitted(
        cluster: Cluster, crd_installed: Path, make_namespace: MakeNamespace, user_role: str,
        tmp_path: Path) -> None:
    team, release_ns = make_namespace(), make_namespace()
    cluster.kubectl("create", "rolebinding", "team", "-n", team, f"--clusterrole={user_role}",
                    f"--serviceaccount={team}:alice")
    me = user_kubeconfig(cluster, team, "alice", tmp_path / "alice.yaml")
    docs = render()
    service = one(docs, "Service", f"{RELEASE}-reports")
    for doc in (service, one(docs, "Role", f"{RELEASE}-queue-proxy")):
        doc["metadata"]["namespace"] = release_ns
        cluster.apply(doc)
    cluster.kubectl("apply", "-f", "-", input=f"""
apiVersion: finetune.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: waiting, namespace: {team}}}
spec:
  model: {{name: tiny, source: {{hub: {{repo: example/tiny}}}}}}
  dataset: {{source: {{configMap: {{name: data, key: train.jsonl}}}}}}
  resources: {{gpus: 0}}
""")
    flags = ("list", "--queue", "--operator-namespace", release_ns)

    # not bound by the queue-proxy RoleBinding yet: the note says what was looked for
    code, out, err = as_user(me, *flags)
    assert code == 0, err
    assert "note: exact queue positions unavailable (cannot find the operator's queue view" in out
    assert f"Service {release_ns}/{RELEASE}-reports (you may not get it)" in out, out
    assert "--operator-namespace NAMESPACE" in out, out

    binding = one(docs, "RoleBinding", f"{RELEASE}-queue-proxy")  # every authenticated user
    binding["metadata"]["namespace"] = release_ns
    cluster.apply(binding)
    want = f"the operator's Service {release_ns}/{RELEASE}-reports has no ready pod behind it"
    out = wait_for("the tenant to reach the Service through the proxy", lambda: (
        lambda o: o if want in o else None)(as_user(me, *flags)[1]), 30)
    assert "waiting" in out and "trainer config" not in out, out
    assert cluster.get("configmap", "waiting-config", team) is None  # nothing was admitted
