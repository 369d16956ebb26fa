"""The chart's in-cluster console (docs/console.md "In the cluster"): off by default; in token
mode it holds no credential and no grant at all (every call is the forwarded user's token); in
impersonate mode it may impersonate and review access, nothing else, and only behind a proxy in
its own pod."""

from __future__ import annotations

from typing import Any

from tests.builders.chart import of_kind, one, render, render_fails

CONSOLE = "finetune-operator-console"
SIDECAR = {"name": "oauth2-proxy", "image": "proxy:1", "args": ["--upstream=http://127.0.0.1:8080"]}


def bindings_of(docs: list[dict[str, Any]], sa: str) -> list[dict[str, Any]]:
    return [b for b in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding")
            if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                   for s in b.get("subjects") or [])]


def test_off_by_default() -> None:
    docs = render()
    assert not [d for d in docs if "console" in d["metadata"]["name"]]


def test_token_mode_has_no_credential_and_no_grant() -> None:
    docs = render({"console": {"enabled": True, "namespaces": ["team-a", "team-b"]}})
    sa = one(docs, "ServiceAccount", CONSOLE)
    assert sa["automountServiceAccountToken"] is False
    assert bindings_of(docs, CONSOLE) == []
    pod = one(docs, "Deployment", CONSOLE)["spec"]["template"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == CONSOLE
    (c,) = pod["spec"]["containers"]
    assert c["args"][:2] == ["--mode=token", "--host=0.0.0.0"]
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    # the cluster's CA from the namespace's kube-root-ca.crt, no Secret of any kind
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["cluster-ca"] == {"name": "cluster-ca",
                                     "configMap": {"name": "kube-root-ca.crt"}}
    assert not [v for v in volumes.values() if "secret" in v or "projected" in v]
    # the operator's Service and NetworkPolicy never select the console's pod
    labels = pod["metadata"]["labels"]
    for svc in of_kind(docs, "Service"):
        sel = svc["spec"]["selector"]
        matches = all(labels.get(k) == v for k, v in sel.items())
        assert matches == (svc["metadata"]["name"] == CONSOLE), svc["metadata"]["name"]


def test_impersonate_mode_may_only_impersonate_and_review() -> None:
    docs = render({"console": {"enabled": True, "mode": "impersonate",
                               "proxy": {"sidecars": [SIDECAR], "port": 4180}}})
    (binding,) = bindings_of(docs, CONSOLE)
    role = one(docs, "ClusterRole", binding["roleRef"]["name"])
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
              for r in rule["resources"] for v in rule["verbs"]}
    assert grants == {("", "users", "impersonate"), ("", "groups", "impersonate"),
                      ("authorization.k8s.io", "subjectaccessreviews", "create")}
    pod = one(docs, "Deployment", CONSOLE)["spec"]["template"]["spec"]
    console, proxy = pod["containers"]
    assert "--host=127.0.0.1" in console["args"]  # reachable through the proxy only
    assert proxy["name"] == "oauth2-proxy"
    svc = one(docs, "Service", CONSOLE)
    assert svc["spec"]["ports"][0]["targetPort"] == 4180


def test_impersonate_mode_without_a_proxy_in_the_pod_is_refused() -> None:
    err = render_fails({"console": {"enabled": True, "mode": "impersonate"}})
    assert "console.proxy.sidecars" in err
    assert "console" in render_fails({"console": {"enabled": True, "mode": "admin"}})


def test_the_curves_prometheus_is_passed_when_set() -> None:
    url = "http://prometheus-operated.monitoring.svc:9090"
    docs = render({"console": {"enabled": True, "prometheus": {"url": url}}})
    (c,) = one(docs, "Deployment", CONSOLE)["spec"]["template"]["spec"]["containers"]
    assert f"--prometheus-url={url}" in c["args"]
    (c,) = one(render({"console": {"enabled": True}}), "Deployment",
               CONSOLE)["spec"]["template"]["spec"]["containers"]
    assert not [a for a in c["args"] if a.startswith("--prometheus-url")]
